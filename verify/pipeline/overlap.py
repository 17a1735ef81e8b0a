"""A slow export (the dynamo ONNX translation: single-threaded Python, most of a cold export) in a child process,
while this process exports and runs the other formats: on two cores the two halves overlap
(bench/bench_export.py, bench/results/export-cpu.log).

The child is a fresh interpreter (`python -m verify.pipeline.overlap`), never a fork of this process, whose OpenMP
and torch threads have run, and it never re-imports the caller's main script (multiprocessing's spawn and fork
server do). It reads the built model as bytes this process wrote (torch.save) from a pipe, traces and exports it
into a private temporary folder and sends back the artifact's metadata; `wait` moves the file into the export
folder only once it is complete, so a failure or an interrupt leaves nothing half-written there. The child exits
when this process goes (its stdin, a lifeline, closes), removing its temporary folder (a SIGKILLed parent cannot),
and `cancel` (or this process's exit) stops it. Only this
project's registered backbones go to a child: a user's model (--model) is exported in its own worker, serially.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import threading
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


def idle_cpus() -> float:
    """Usable cores minus last minute's load average: about how many a child would have to itself."""
    try:
        return usable_cpus() - os.getloadavg()[0]
    except OSError:
        return 0.0


def can_overlap(user_model: bool) -> bool:
    """Whether a background export can help here: a registered backbone (a user's model is never pickled into
    another process), two usable cores, and (mode auto) about one of them idle: on a busy machine (a test suite
    on every core, other jobs) the child's ~3 s of imports would only slow everyone down."""
    mode = overlap_mode()
    if user_model or mode == "off" or usable_cpus() < MIN_CPUS:
        return False
    return mode == "on" or idle_cpus() >= MIN_IDLE_CPUS


class BackgroundExport:
    """One format of the context's model exported in a child process; `wait(folder)` is its artifact there."""

    def __init__(self, context: ExportContext, fmt: str, options: ExportOptions) -> None:
        """Start the child; NotPicklable (nothing started) when the model cannot be handed to it."""
        from multiprocessing.connection import Connection

        self.fmt = fmt
        model = _model_bytes(context)  # here, before this process touches the model again
        self.tmp = Path(tempfile.mkdtemp(prefix=f"verify-{fmt}-export-"))
        example = context.example.detach().cpu().contiguous().numpy()
        job = pickle.dumps((model, example, context.meta, context.dynamic, fmt, options))
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
        # the pipe holds 64 KiB: the job goes from a thread while the child starts and this process works on
        self._writer = threading.Thread(target=self._write, args=(job,), daemon=True)
        self._writer.start()

    def _write(self, job: bytes) -> None:
        try:
            self._send.send_bytes(job)
        except BaseException as exc:  # noqa: B036 - reported by wait(), in the main thread
            self._write_error = exc

    def wait(self, folder: Path) -> Artifact:
        """The child's artifact, its file moved into `folder`; ExportError (one line) if the child failed."""
        try:
            artifact = self._receive_artifact()
            assert artifact.path is not None
            dest = folder / artifact.path.name
            shutil.move(str(self.tmp / artifact.path.name), dest)
            return replace(artifact, path=dest)
        finally:
            self.cancel()

    def cancel(self) -> None:
        """Stop the child (if still running) and remove its temporary folder."""
        self._finalizer()

    def _receive_artifact(self) -> Artifact:
        while True:
            if self._receive.poll(POLL_SECONDS):
                try:
                    kind, payload = safe_loads(self._receive.recv_bytes())
                except EOFError:
                    break
                if kind == "result":
                    return payload
                name, message = payload
                from exporter import errors

                cls = getattr(errors, name, None)
                raise (cls if isinstance(cls, type) and issubclass(cls, VerifyError) else ExportError)(message)
            if self.process.poll() is not None and not self._receive.poll(0):
                break
        self.process.wait()
        said = _last_line(self.tmp / STDERR_FILE) or (str(self._write_error) if self._write_error else "")
        raise ExportError(f"The background {self.fmt} export ended (exit code {self.process.returncode}) without a "
                          f"result{': ' + said if said else ''}; set {MODE_ENV}=off to export in this process")


def _last_line(path: Path) -> str:
    with contextlib.suppress(OSError):
        lines = path.read_text(errors="replace").strip().splitlines()
        return lines[-1][:300] if lines else ""
    return ""


class NotPicklable(Exception):
    """The built model cannot be written for a child (a lambda, a local class...): export it here instead."""


def _model_bytes(context: ExportContext) -> bytes:
    """The built model as torch.save bytes, without the weights' second copy (the model holds them)."""
    import torch

    built = context.built
    light = replace(built, weights=Weights(built.weights.source, {}), exact=None)
    buffer = io.BytesIO()
    try:
        torch.save(light, buffer)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise NotPicklable(str(exc)) from exc
    return buffer.getvalue()


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

    def __missing__(self, fmt: str) -> Artifact:
        if fmt not in self.pending:
            raise KeyError(fmt)
        background, folder, done = self.pending.pop(fmt)
        artifact = background.wait(folder)
        done(artifact)
        self[fmt] = artifact
        return artifact

    def cancel(self) -> None:
        for background, _, _ in self.pending.values():
            background.cancel()
        self.pending.clear()


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
    """Read the job, export it, send ("result", artifact) or ("error", (class name, one line))."""
    import signal
    from multiprocessing.connection import Connection

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop: it sends SIGTERM
    threading.Thread(target=_die_with_parent, args=(tmp,), daemon=True).start()
    receive, send = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    model, example, meta, dynamic, fmt, options = pickle.loads(receive.recv_bytes())  # the parent's own bytes
    try:
        message: tuple[str, Any] = ("result", _export_here(model, example, meta, dynamic, fmt, options, tmp))
    except VerifyError as exc:
        message = ("error", (type(exc).__name__, str(exc)))
    except Exception as exc:
        said = (str(exc).strip().splitlines() or [""])[0]
        message = ("error", ("ExportError", f"The background {fmt} export failed: {type(exc).__name__} ({said}); "
                             f"set {MODE_ENV}=off to export in this process (VERIFY_DEBUG=1 for a traceback)"))
    with contextlib.suppress(BrokenPipeError, EOFError, OSError):
        send.send_bytes(pickle.dumps(message))
    send.close()


def _export_here(model: bytes, example: Any, meta: Any, dynamic: bool, fmt: str, options: ExportOptions,
                 tmp: Path) -> Artifact:
    import torch

    from exporter.export import export_model
    from exporter.formats import ExportContext

    torch.set_num_threads(CHILD_THREADS)
    # bytes the parent wrote a moment ago from a registered backbone it built: no user's file is unpickled here
    built = torch.load(io.BytesIO(model), weights_only=False)
    context = ExportContext(built, torch.from_numpy(example), meta, dynamic=dynamic)
    artifact = export_model(built, meta, context.example, tmp, options, fmt, context)
    return replace(artifact, built=None)


if __name__ == "__main__":
    child_main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
