"""A slow export (the dynamo ONNX translation: single-threaded Python, most of a cold export) in a child process,
while this process exports and runs the other formats: on two cores the two halves overlap
(bench/bench_export.py, bench/results/export-cpu.log).

The child is a fresh interpreter (`python -m verify.pipeline.overlap`), never a fork of this process, whose OpenMP
and torch threads have run, and it never re-imports the caller's main script (multiprocessing's spawn and fork
server do). It reads the built model as bytes this process wrote (torch.save) from a pipe, traces and exports it
into a private temporary folder and sends back each artifact's metadata as it is done; `wait` moves a file into the
export folder only once it is complete, so a failure or an interrupt leaves nothing half-written there. Formats that
share the export's `torch.export` trace (the `.pt2`: `Format.rides_along`) are exported in the same child from that
one trace, first, so the parent neither traces the model a second time nor waits for the ONNX translation to run
them. The child starts before the model is built (its imports overlap the build), and while it lives this process
runs on a core fewer, so the two never contend for one (BackgroundExport). The child exits when this process goes
(its stdin, a lifeline, closes), removing its temporary folder (a SIGKILLed parent cannot), and `cancel` (or this
process's exit) stops it. Only this project's registered backbones go to a child: a user's model (--model) is
exported in its own worker, serially.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.errors import ExportError, UsageError, VerifyError
from exporter.weights import Weights
from verify.pipeline.isolation import STOP_GRACE_SECONDS, safe_loads

if TYPE_CHECKING:
    from exporter.artifacts import Artifact
    from exporter.export import ExportOptions
    from exporter.formats import ExportContext

MODE_ENV = "BACKBONE_VERIFY_EXPORT_OVERLAP"
"""`auto` (default): a background export where a core is free; `on`: wherever two cores are usable; `off`: every
format exported in this process, one after the other."""
MODES = ("auto", "on", "off")
MIN_CPUS = 2
"""Below this many usable cores a child only competes with this process for the one there is."""
MIN_IDLE_CPUS = 0.75
"""In mode auto, about a core's worth of idle capacity (usable cores minus the load average) for the child."""
CHILD_THREADS = 1
"""The child's torch threads: translation is Python, so the other core stays with this process's runs."""
CHILD_IMPORTS = ("torch", "torchvision", "onnx", "onnxscript", "torch.onnx", "exporter.export",
                 "torch.export._trace", "torch._functorch.aot_autograd", "torch._functorch.partitioners",
                 "torch._inductor.codecache", "onnxscript.function_libs.torch_lib.ops",
                 "torch.onnx._internal.exporter._registration", "torch.onnx._internal.exporter._core")
"""What the child imports before it waits for its job, while this process imports and builds the model. The last
seven are what the first trace and the first ONNX translation would import on their way (torch.export's tracer,
AOT autograd, the torchlib registry): 0.35 s here, in the 0.75 s the child waited for a ResNet-50 idle, instead of
0.56 s on the critical path (the trace 2.2 -> 1.8 s, the translation 7.4 -> 7.1 s, two runs each; a module another
torch lacks is skipped). A whole cold `verify export` of ResNet-50 measured 18.9 s against 19.1 s without them (three
alternated runs each): within the noise, since the parent's work beside the child is as long."""
CHILD_NICE = 0
"""Added to the child's niceness. It was 5, so that this process's runs came before the child's export where other
jobs share the cores (under load, 5 against 0 was within the noise: cold 63.7 and 70.1 s against 65.1 and 73.7 s).
Since the `.pt2` loads in a thread beside the oracle, this process itself uses both cores at times, and the child
(the critical path of a cold export) lost to it: idle, its ONNX file came 0.8 s later at 5 than at 0 (cold resnet50,
two runs each: 18.42 and 18.30 s against 17.47 and 17.68 s into the run). In mode auto the child starts only where
a core is idle anyway."""
POLL_SECONDS = 0.05
STDERR_FILE = "child.stderr"
"""The child's stderr, inside its temporary folder: its last line explains a child that died without a word."""


def overlap_mode() -> str:
    mode = os.environ.get(MODE_ENV, "").strip().lower() or "auto"
    if mode not in MODES:
        raise UsageError(f"{MODE_ENV}={mode!r} is not one of {', '.join(MODES)}; unset it or choose one")
    return mode


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


IDLE_SAMPLE_SECONDS = 0.2
"""How long idle capacity is sampled (/proc/stat) before choosing: the last minute's load average, used before,
still counted a verify run that had just ended, so back-to-back exports on an idle machine ran serially."""
PROC_STAT = Path("/proc/stat")


def idle_cpus() -> float:
    """About how many usable cores a child would have to itself: the idle share of the cores this process may run
    on over the last IDLE_SAMPLE_SECONDS (this process's own work counts as busy); where /proc/stat cannot be read,
    usable cores minus the last minute's load average."""
    before = _cpu_ticks()
    if before is not None:
        time.sleep(IDLE_SAMPLE_SECONDS)
        after = _cpu_ticks()
        if after is not None and after[1] > before[1] and after[2] == before[2]:
            idle_share = (after[0] - before[0]) / (after[1] - before[1])
            return min(usable_cpus(), idle_share * after[2])
    try:
        return usable_cpus() - os.getloadavg()[0]
    except OSError:
        return 0.0


def _cpu_ticks() -> tuple[int, int, int] | None:
    """(idle, total) clock ticks since boot (idle and iowait are idle) and how many cores they count: the `cpuN`
    lines of the cores this process may run on when it may not run on all of them (a cpuset: idle cores it cannot
    use are no help), else the `cpu` line of them all."""
    try:
        rows = {fields[0]: [int(value) for value in fields[1:]]
                for fields in (line.split() for line in PROC_STAT.read_text().splitlines())
                if fields and fields[0].startswith("cpu")}
    except (OSError, ValueError):
        return None
    allowed = [f"cpu{core}" for core in _affinity()]
    per_core = len(rows) - 1
    names = allowed if allowed and len(allowed) < per_core and all(n in rows for n in allowed) else ["cpu"]
    if any(len(rows.get(name, ())) < 5 for name in names):
        return None
    cores = len(names) if names != ["cpu"] else (os.cpu_count() or 1)
    return (sum(rows[n][3] + rows[n][4] for n in names), sum(sum(rows[n][:8]) for n in names), cores)


def _affinity() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return []


def can_overlap(user_model: bool) -> bool:
    """Whether a background export can help here: a registered backbone (a user's model is never pickled into
    another process), two usable cores, and (mode auto) about one of them idle: on a busy machine (a test suite
    on every core, other jobs) the child's ~3 s of imports would only slow everyone down."""
    mode = overlap_mode()
    if user_model or mode == "off" or usable_cpus() < MIN_CPUS:
        return False
    return mode == "on" or idle_cpus() >= MIN_IDLE_CPUS


class BackgroundExport:
    """A child process that imports what exporting needs as soon as it starts (before the model is built: the two
    overlap), then exports the formats `send` hands it, from one trace; `wait(name, folder)` is one's artifact
    there. `fmt` names it (its temporary folder, `verify-<fmt>-export-*`). While it lives this process runs on
    CHILD_THREADS torch threads fewer: the child has that core to itself (two busy processes on two cores left this
    process's OpenMP threads waiting for each other: eager's runs took 6.0 s beside the child, 1.9 s without it)."""

    def __init__(self, fmt: str, take_core: bool = True) -> None:
        """Start the child; it waits for its job after its imports. `take_core=False` leaves this process its
        threads until `take_core()` (a child started before torch's state is saved for the cell)."""
        from multiprocessing.connection import Connection

        self.fmt = fmt
        self.formats: tuple[str, ...] = ()
        self._received: dict[str, Artifact] = {}
        self._waiting: set[str] = set()
        self._failure: tuple[str, str] | None = None
        self._ended = False
        self.tmp = Path(tempfile.mkdtemp(prefix=f"verify-{fmt}-export-"))
        child_reads, parent_writes = os.pipe()
        parent_reads, child_writes = os.pipe()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if isinstance(p, str) and p)}
        try:
            with open(self.tmp / STDERR_FILE, "wb") as stderr:
                self.process = subprocess.Popen(
                    child_command(child_reads, child_writes, self.tmp), stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL, stderr=stderr, pass_fds=(child_reads, child_writes), env=env)
        except BaseException:
            for fd in (parent_reads, parent_writes):
                os.close(fd)
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        finally:
            os.close(child_reads)
            os.close(child_writes)
        self._receive = Connection(parent_reads, writable=False)
        self._send = Connection(parent_writes, readable=False)
        self._finalizer = weakref.finalize(self, _discard, self.process, self.tmp, self._send, self._receive)
        self._write_error: BaseException | None = None
        self._threads: int | None = None
        """This process's torch threads before the child took a core; None before it takes one or once given back."""
        if take_core:
            self.take_core()

    def take_core(self) -> None:
        """Run this process's torch on CHILD_THREADS threads fewer while the child lives (once; never after
        `cancel`)."""
        if self._threads is None and self._finalizer.alive:
            self._threads = _yield_core()

    def send(self, context: ExportContext, options: ExportOptions, formats: tuple[str, ...]) -> None:
        """Hand the child the context's model and `formats` to export in that order; NotPicklable (nothing sent)
        when the model cannot be written for it."""
        model = _model_bytes(context)  # here, before this process touches the model again
        example = context.example.detach().cpu().contiguous().numpy()
        job = pickle.dumps((example, context.meta, context.dynamic, formats, options, context.shapes))
        self.formats, self._waiting = formats, set(formats)
        # the pipe holds 64 KiB: the job goes from a thread while the child reads it and this process works on; the
        # model's bytes as a message of their own, not pickled into the job (a copy of ~100 MB on each side)
        threading.Thread(target=self._write, args=((job, model),), daemon=True).start()

    def _write(self, job: tuple[bytes | memoryview, ...]) -> None:
        try:
            for message in job:
                self._send.send_bytes(message)
        except BaseException as exc:  # noqa: B036 - reported by wait(), in the main thread
            self._write_error = exc

    def wait(self, fmt: str, folder: Path) -> Artifact:
        """The child's artifact of `fmt`, its file moved into `folder`; ExportError (one line) if the child failed.
        The child is stopped once every format was waited for, or on a failure."""
        try:
            artifact = self._artifact(fmt)
            assert artifact.path is not None
            dest = folder / artifact.path.name
            shutil.move(str(self.tmp / artifact.path.name), dest)
        except BaseException:
            self.cancel()
            raise
        self._waiting.discard(fmt)
        if not self._waiting:
            self.cancel()
        return replace(artifact, path=dest)

    def cancel(self) -> None:
        """Stop the child (if still running), remove its temporary folder and take its core back."""
        self._finalizer()
        if self._threads is not None:
            import torch

            torch.set_num_threads(self._threads)
            self._threads = None

    def ready(self, fmt: str) -> bool:
        """Whether waiting for `fmt` would return or raise at once: its file is written, or the child failed."""
        self._drain(0)
        return fmt in self._received or self._failure is not None or self._ended

    def _drain(self, timeout: float) -> None:
        """Take what the child sends within `timeout`: artifacts kept by format, its failure kept to be raised."""
        while self._failure is None and not self._ended and self._receive.poll(timeout):
            try:
                kind, payload = safe_loads(self._receive.recv_bytes())
            except EOFError:
                self._ended = True
                break
            if kind == "result":
                self._received[payload.format] = payload
            else:
                self._failure = payload
            timeout = 0
        if not self._ended and self.process.poll() is not None and not self._receive.poll(0):
            self._ended = True

    def _artifact(self, fmt: str) -> Artifact:
        while fmt not in self._received and self._failure is None and not self._ended:
            self._drain(POLL_SECONDS)
        if fmt in self._received:
            return self._received.pop(fmt)
        if self._failure is not None:
            from exporter import errors

            name, message = self._failure
            cls = getattr(errors, name, None)
            raise (cls if isinstance(cls, type) and issubclass(cls, VerifyError) else ExportError)(message)
        self.process.wait()
        said = _last_line(self.tmp / STDERR_FILE) or (str(self._write_error) if self._write_error else "")
        raise ExportError(f"The background {fmt} export ended (exit code {self.process.returncode}) without a "
                          f"result{': ' + said if said else ''}; set {MODE_ENV}=off to export in this process")


def _last_line(path: Path) -> str:
    with contextlib.suppress(OSError):
        lines = path.read_text(errors="replace").strip().splitlines()
        return lines[-1][:300] if lines else ""
    return ""


class NotPicklable(Exception):
    """The built model cannot be written for a child (a lambda, a local class...): export it here instead."""


def _model_bytes(context: ExportContext) -> bytes | memoryview:
    """The built model as torch.save bytes (a view of the buffer torch wrote, not a copy of it), without the weights'
    second copy (the model holds them)."""
    import torch

    built = context.built
    light = replace(built, weights=Weights(built.weights.source, {}), exact=None)
    buffer = io.BytesIO()
    try:
        torch.save(light, buffer)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise NotPicklable(str(exc)) from exc
    return buffer.getbuffer()


def _discard(process: subprocess.Popen, tmp: Path, *connections: Any) -> None:
    """SIGTERM, SIGKILL after a grace period, then the pipes and the temporary folder: nothing outlives it."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for connection in connections:
        connection.close()
    if process.stdin is not None:
        process.stdin.close()
    shutil.rmtree(tmp, ignore_errors=True)


class ArtifactsInFlight(dict):
    """Artifacts by format, as a dict; one still exporting in the background is waited for when it is first
    looked up (its runtime's turn), so this process runs everything else meanwhile. `cancel` stops them all."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pending: dict[str, tuple[BackgroundExport, Path, Callable[[Artifact], None]]] = {}

    def expect(self, fmt: str, background: BackgroundExport, folder: Path, done: Callable[[Artifact], None]) -> None:
        """`fmt` will be `background`'s artifact in `folder`; `done(artifact)` runs when it is there."""
        self.pending[fmt] = (background, folder, done)

    def collect_ready(self) -> None:
        """Take every artifact whose export is over (raising its failure), without waiting for any."""
        for fmt, (background, _, _) in list(self.pending.items()):
            if background.ready(fmt):
                self[fmt]  # noqa: B018 - the lookup collects it

    def in_flight(self, fmt: str) -> bool:
        """Whether `fmt` is still exporting in the background (looking it up would wait for it)."""
        return fmt in self.pending

    def __missing__(self, fmt: str) -> Artifact:
        if fmt not in self.pending:
            raise KeyError(fmt)
        background, folder, done = self.pending.pop(fmt)
        try:
            artifact = background.wait(fmt, folder)
        except BaseException:
            self.cancel()
            raise
        done(artifact)
        self[fmt] = artifact
        return artifact

    def cancel(self) -> None:
        for background, _, _ in self.pending.values():
            background.cancel()
        self.pending.clear()


def _yield_core() -> int:
    """Run this process's torch on CHILD_THREADS threads fewer (at least one); the number it ran on."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads - CHILD_THREADS))
    RAN_ON.add(torch.get_num_threads())
    return threads


RAN_ON: set[int] = set()
"""The torch thread counts this process ran on beside a child (`_yield_core`): a matrix cell's worker record lists
them with its own count (hunt 32: it said `threads: 2` for a cell whose runs were on one thread beside the child),
emptied at each cell's start (verify/matrix/cell.py)."""


# The child ------------------------------------------------------------------------------------
def child_command(read_fd: int, write_fd: int, tmp: Path) -> list[str]:
    """The child's command line: its two pipe ends and the temporary folder it exports into."""
    return [sys.executable, "-m", __name__, str(read_fd), str(write_fd), str(tmp)]


def _die_with_parent(tmp: Path) -> None:
    """Block until stdin closes (the parent exited, or was killed), then remove `tmp` (a parent killed by SIGKILL
    cannot) and exit at once."""
    with contextlib.suppress(OSError):
        while os.read(0, 4096):  # the raw descriptor: a buffered reader's lock would stall the exit
            pass
    shutil.rmtree(tmp, ignore_errors=True)
    os._exit(1)


def child_main(read_fd: int, write_fd: int, tmp: Path) -> None:
    """Read the job, export each format, sending ("result", artifact) as each is written, or ("error", (class name,
    one line)) and stop."""
    import signal
    from multiprocessing.connection import Connection

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop: it sends SIGTERM
    with contextlib.suppress(OSError):
        os.nice(CHILD_NICE)
    threading.Thread(target=_die_with_parent, args=(tmp,), daemon=True).start()
    for name in CHILD_IMPORTS:
        with contextlib.suppress(ImportError):  # a missing exporter dependency is the export's own error, later
            importlib.import_module(name)
    receive, send = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    example, meta, dynamic, formats, options, shapes = pickle.loads(receive.recv_bytes())  # the parent's own bytes
    model = receive.recv_bytes()  # the model as torch.save wrote it there
    fmt = formats[0]
    try:
        export = _exporter(model, example, meta, dynamic, options, tmp, shapes)
        for fmt in formats:
            _send(send, ("result", export(fmt)))  # the parent may run it while the next one exports
        message: tuple[str, Any] | None = None
    except VerifyError as exc:
        message = ("error", (type(exc).__name__, str(exc)))
    except Exception as exc:
        said = (str(exc).strip().splitlines() or [""])[0]
        message = ("error", ("ExportError", f"The background {fmt} export failed: {type(exc).__name__} ({said}); "
                             f"set {MODE_ENV}=off to export in this process (VERIFY_DEBUG=1 for a traceback)"))
    if message is not None:
        _send(send, message)
    send.close()


def _send(send: Any, message: tuple[str, Any]) -> None:
    with contextlib.suppress(BrokenPipeError, EOFError, OSError):
        send.send_bytes(pickle.dumps(message))


def _exporter(model: bytes, example: Any, meta: Any, dynamic: bool, options: ExportOptions,
              tmp: Path, shapes: tuple[tuple[int, ...], ...] = ()) -> Callable[[str], Artifact]:
    """The model loaded, and a function that exports one format of it into `tmp`; one context, so one trace."""
    import torch

    from exporter.export import export_model
    from exporter.formats import ExportContext

    torch.set_num_threads(CHILD_THREADS)
    # bytes the parent wrote a moment ago from a registered backbone it built: no user's file is unpickled here
    built = torch.load(io.BytesIO(model), weights_only=False)
    context = ExportContext(built, torch.from_numpy(example), meta, dynamic=dynamic, shapes=shapes)

    def export(fmt: str) -> Artifact:
        return replace(export_model(built, meta, context.example, tmp, options, fmt, context), built=None)

    return export


if __name__ == "__main__":
    child_main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
