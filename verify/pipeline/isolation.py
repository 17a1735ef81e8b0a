"""User code runs in a worker process, so its exit, crash or hang cannot become the tool's exit (issue 14, item 5).

`run_isolated(fn, ...)` calls `fn` in a fresh process (forked from a fork server that imported torch once) and
returns its result to this one. The worker sends its progress steps and then one message: the result, or the error
it raised. A worker that dies without that message (`os._exit(0)` in the user's factory or forward, a segfault, the
OOM killer) or that outlives the timeout is an `IsolatedRunError` here: exit 2 with one line, never 0, since no
verdict was computed.

`IsolatedSession(factory, ...)` keeps one object in a worker and relays calls to it: a runtime whose native code
can crash the interpreter (an AOTInductor package: verify/runtimes/aoti.py) runs there.

What comes back is unpickled with an allow-list: this project's data classes (dataclasses, enums; no
function), numpy arrays and plain builtins, never a dotted name: the worker
ran the user's code, so its message is data to read, not code to run.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import pickle
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from exporter.errors import UsageError, VerifyError, raised_by_tool
from verify.progress import NullProgress, Progress

USER_CODE_TIMEOUT = 1800.0
"""Seconds a run of the user's own code (--model) may take before its worker is stopped (--timeout)."""
EXPORT_PRELOAD = ("torch.onnx._internal.exporter._core", "torch.onnx._internal.exporter._compat",
                  "torch.onnx._internal.exporter._torchlib.ops", "torch.export._trace", "torch._functorch.aot_autograd",
                  "torch._functorch.partitioners", "torch._inductor.ir", "torch._inductor.sizevars",
                  "torch._export.passes.replace_set_grad_with_hop_pass", "sympy.combinatorics", "sympy.tensor.tensor",
                  "onnxscript.optimizer", "onnxscript.rewriter", "exporter.formats.onnx_warm")
"""What an export imports and builds on its first torch.export and ONNX translation in a process (torchlib's
operator table, the partitioner and its networkx, onnxscript's optimiser and the reference operators it folds
constants with): time every worker exporting a --model paid again (measured on a three-conv model: the first
export 0.34 s -> 0.04 s, the first ONNX translation 1.03 s -> 0.60 s by the imports alone). Names a torch
version lacks are skipped by multiprocessing's fork server, which ignores an ImportError in its preload."""
PROJECT_PRELOAD = ("verify.api", "verify.explain.equivalence", "verify.folder.write", "verify.folder.identity",
                   "verify.judge.file_floor", "exporter.serde_speed", "exporter.torch_state",
                   "verify.pipeline.preload", "verify.runtimes.eager",
                   "verify.runtimes.torchscript", "verify.runtimes.exported", "verify.runtimes.onnxruntime",
                   "exporter.weights")
"""This project's modules a worker's export imports (each imports its heavy packages inside functions, so a
worker would otherwise import them, and build the manifest's pydantic models, every time: 0.22 s of a worker's
0.68 s, measured over the suite's 159 workers). Not verify.pipeline.overlap: a fork server whose command line
names it would look like a background export child to whoever lists processes by their command line."""
PRELOAD = ("verify.pipeline.isolation", "torch", "torchvision", "onnx", "onnxruntime", *PROJECT_PRELOAD,
           *EXPORT_PRELOAD)
"""Imported once by the fork server that workers are forked from (none of them runs a thread before a fork):
a worker starts in ~0.1 s instead of the ~3 s of importing torch afresh. This module first: importing it there
ignores SIGINT (`_quiet_fork_server`) before the seconds of torch."""
POLL_SECONDS = 0.1
STOP_GRACE_SECONDS = 2.0
"""After SIGTERM to a worker, how long before SIGKILL."""
SAFE_MODULE_PREFIXES = ("verify.", "exporter.")
"""Modules whose *data classes* (dataclasses and enums, nothing callable otherwise) may come back."""
SAFE_GLOBALS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"), ("copyreg", "_reconstructor"), ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"), ("pathlib", "Path"), ("collections", "OrderedDict"),
})
"""Exact (module, name) pairs numpy arrays, paths and ordered dicts pickle through."""
SAFE_BUILTINS = frozenset({"set", "frozenset", "list", "dict", "tuple", "str", "bytes", "bytearray", "int",
                           "float", "complex", "bool", "slice", "range", "object"})


class IsolatedRunError(VerifyError):
    """The worker running user code ended without a result: no verdict (exit 2)."""


class _Unsafe(Exception):
    pass


class _SafeUnpickler(pickle.Unpickler):
    """Only this project's classes, numpy arrays and plain builtins come back from a worker."""

    def find_class(self, module: str, name: str) -> Any:
        import dataclasses
        import enum

        if "." in name:  # pickle protocol 4 resolves dotted names: `verify.cache` + `os.system` is os.system
            raise _Unsafe(f"{module}.{name}")
        if (module == "builtins" and name in SAFE_BUILTINS) or (module, name) in SAFE_GLOBALS \
                or (module.startswith("numpy") and name.endswith("DType")):
            return super().find_class(module, name)
        if module.startswith(SAFE_MODULE_PREFIXES):
            found = super().find_class(module, name)
            if isinstance(found, type) and (dataclasses.is_dataclass(found) or issubclass(found, enum.Enum)):
                return found
        raise _Unsafe(f"{module}.{name}")


def safe_loads(data: bytes) -> Any:
    """Unpickle a worker's message, refusing any class outside the allow-list."""
    try:
        return _SafeUnpickler(io.BytesIO(data)).load()
    except _Unsafe as exc:
        raise IsolatedRunError(f"The worker running your model sent back an object of type {exc}, which is not "
                               "a result of this tool; no verdict") from None


def _send(conn: Any, message: Any) -> None:
    """Send to the parent; a parent that is gone (stopped by SIGTERM or Ctrl-C) ends this worker quietly."""
    import os

    try:
        conn.send_bytes(pickle.dumps(message))
    except (BrokenPipeError, EOFError, OSError):
        os._exit(1)


class _RelayProgress:
    """The worker's progress: each step's start and end sent to the parent, which shows them."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @contextlib.contextmanager
    def step(self, description: str) -> Iterator[None]:
        _send(self.conn, ("start", description))
        try:
            yield
        except BaseException:
            _send(self.conn, ("end", False))
            raise
        _send(self.conn, ("end", True))


def worker_context() -> Any:
    """multiprocessing's fork-server context, its server importing PRELOAD once: workers forked from it start in
    ~0.1 s, with none of the parent's threads or state (a worker takes the caller's place with `adopt`)."""
    import multiprocessing

    global _EXIT_HOOKED

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))
    if not _EXIT_HOOKED:  # registered after multiprocessing's own exit hook, so it runs before it
        import atexit

        atexit.register(_resume_at_exit)
        _EXIT_HOOKED = True
    return context


_EXIT_HOOKED = False


START_TRIES = 5
"""How many times a worker's start is tried: the fork server it is forked from may be dying (a user's model killed it,
`os.kill(os.getppid(), SIGKILL)`: multiprocessing starts another only once the dead one is reaped, and asked
meanwhile it answers EOF or refuses the connection, which aborted every later cell of a matrix with "unexpected
EOFError")."""
START_RETRY_S = 0.2


SERVER_WATCH_S = 0.2
"""While a worker starts, how often the fork server is checked for a stop (a start waits on the server's answer)."""


def server_pid() -> int | None:
    """The pid of multiprocessing's fork server in this process, None before it started."""
    import sys

    forkserver = sys.modules.get("multiprocessing.forkserver")
    server = getattr(forkserver, "_forkserver", None)
    return getattr(server, "_forkserver_pid", None)


def resume_stopped_server() -> int | None:
    """SIGCONT to the fork server if something (a user model's code: `os.kill(os.getppid(), SIGSTOP)`) stopped it:
    a stopped server neither answers a start (the start waited for ever) nor reports a worker's exit (every
    `join` waited for ever, `is_alive` stayed True). Its pid if it was stopped, else None."""
    import os
    import signal

    pid = server_pid()
    from exporter.fsio import process_stopped

    if not process_stopped(pid):
        return None
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGCONT)  # type: ignore[arg-type]
    return pid


def stopped_server_error(pid: int, what: str) -> IsolatedRunError:
    return IsolatedRunError(f"{what} stopped the fork server (pid {pid}) that starts this tool's worker processes "
                            "(a signal such as SIGSTOP to its parent process): resumed it; no verdict, not a pass. "
                            "A model must not signal its parent")


def _resume_at_exit() -> None:
    """At exit, before multiprocessing joins its daemonic children (untimed: for ever, the server stopped)."""
    with contextlib.suppress(Exception):
        resume_stopped_server()


PR_SET_CHILD_SUBREAPER = 36
"""Linux prctl(2) option: orphans among this process's descendants become its children, not init's."""


def _quiet_fork_server() -> None:
    """In multiprocessing's fork server, importing this module (PRELOAD's first) ignores SIGINT: the server sets
    that itself only after its preload, so a Ctrl-C to the terminal's process group during the seconds of
    importing torch printed the server's KeyboardInterrupt traceback under this tool's one line (interrupt28).
    The parent stops workers itself; anywhere else this does nothing."""
    import signal
    import sys

    main = getattr(sys.modules.get("multiprocessing.forkserver"), "main", None)
    frame = sys._getframe(1)
    while frame is not None and main is not None:
        if frame.f_code is main.__code__:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            import atexit
            import os
            import warnings

            # what a worker that died (`os._exit` in a factory) left running comes here, for `end_orphans`; the
            # server reaps it and would warn of a pid it never forked
            with contextlib.suppress(OSError, AttributeError):
                import ctypes

                ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
            warnings.filterwarnings("ignore", message="forkserver: waitpid returned unexpected pid")

            # registered first, so run last: the server's exit (this tool's process gone) skips the interpreter's
            # teardown of torch (~1-3 s), after which its workers die with it (`die_with_parent`)
            atexit.register(os._exit, 0)
            return
        frame = frame.f_back


_quiet_fork_server()


def _ensure_server() -> None:
    """Start the fork server (again, if it died) with SIGINT ignored, from the main thread: an ignored signal stays
    ignored across exec, so the server's own start, before its preload, is covered too. From another thread
    `_quiet_fork_server` covers it from its first import on."""
    import signal
    import threading
    from multiprocessing import forkserver

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        forkserver.ensure_running()
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, previous)


def _start_watched(process: Any) -> int | None:
    """`process.start()`, the fork server watched meanwhile and resumed if it is (or gets) stopped; its pid then."""
    import threading

    resumed: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.wait(SERVER_WATCH_S):
            pid = resume_stopped_server()
            if pid is not None:
                resumed.append(pid)

    first = resume_stopped_server()
    _ensure_server()
    watcher = threading.Thread(target=watch, name="verify-forkserver-watch", daemon=True)
    watcher.start()
    try:
        with _STARTING:  # `end_orphans` never reads the fork server's children between a fork and its registration
            process.start()
    finally:
        done.set()
        watcher.join()
    return first if first is not None else (resumed[0] if resumed else None)


def start_process(context: Any, **kwargs: Any) -> Any:
    """`context.Process(**kwargs)` started, tried again (a new one each time) while the fork server is dying; an
    IsolatedRunError (exit 2, one line) when it never starts, or when the fork server was found stopped (resumed,
    but some code run before, a user model's, stopped it)."""
    for attempt in range(START_TRIES):
        process = context.Process(**kwargs)
        try:
            stopped = _start_watched(process)
        except (EOFError, OSError) as exc:
            failure = exc
            time.sleep(START_RETRY_S * (attempt + 1))
            continue
        if stopped is not None:
            _stop(process)
            raise stopped_server_error(stopped, "Code run earlier (a --model's?)")
        return process
    raise IsolatedRunError(f"No worker process could be started ({type(failure).__name__}: {failure}): the fork server "
                           "that starts them stopped (did a model's code signal its parent process?); rerun")


def caller_place() -> tuple[dict[str, str], str, list[str]]:
    """This process's environment, folder and import path, for a worker to `adopt`."""
    import os
    import sys

    return dict(os.environ), os.getcwd(), list(sys.path)


def _worker(conn: Any, fn: Callable[..., Any], args: tuple, kwargs: dict, threads: int | None,
            where: tuple[dict[str, str], str, list[str]]) -> None:
    """The worker's body: take the caller's environment, folder and import path (a fork server started earlier
    has its own), run `fn` with a relaying progress, send its result or its error, then exit."""
    from verify.judge.file_witness import PRIVATE_TMP

    adopt(where, threads, conn)
    hold(where[0].get(PRIVATE_TMP))
    try:
        message = ("result", fn(*args, progress=_RelayProgress(conn), **kwargs))
    except BaseException as exc:  # noqa: B036 - anything the user's code raised is reported, then we exit
        message = _error_message(exc, "your model's code")
    end_descendants()  # before the reply: once it is read, the parent goes on to publish the folder and the reports
    _send(conn, message)
    conn.close()


PR_SET_PDEATHSIG = 1
"""Linux prctl(2) option: the signal a process gets when the thread that forked it ends."""
DESCENDANT_PASSES = 100
"""How many times `end_descendants` looks again for children forked while it stopped their parents."""


def _children_by_parent() -> dict[int, list[int]]:
    """Every process this user can see, by its parent's pid (from /proc/<pid>/stat; empty where there is no /proc)."""
    import os

    children: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as stat:
                    fields = stat.read().rpartition(b")")[2].split()
                children.setdefault(int(fields[1]), []).append(int(name))
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
    return children


def descendants(root: int) -> set[int]:
    """The pids below `root` in the process tree (a worker made a subreaper by `adopt` holds every orphan of its own
    descendants, `setsid` or double fork included)."""
    return below({root})


def below(roots: set[int]) -> set[int]:
    """The pids below any of `roots` in the process tree, from one read of /proc."""
    children, found, todo = _children_by_parent(), set(), list(roots)
    while todo:
        for pid in children.get(todo.pop(), ()):
            if pid not in found:
                found.add(pid)
                todo.append(pid)
    return found


def end_descendants(root: int | None = None) -> set[int]:
    """SIGKILL every process below `root` (this process by default), each SIGSTOPped first so that none forks
    another while the tree is read: what a user's code left running (review 38: a `setsid` grandchild outside the
    worker's process group rewrote `--json`'s report 6 s after `verify` exited). The pids ended."""
    import os
    import signal

    root = os.getpid() if root is None else root
    stopped = _stop_all(lambda: descendants(root))
    for pid in stopped:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return stopped


def die_with_parent(conn: Any = None) -> None:
    """In a worker: SIGKILL once this tool's process is gone, so a `kill -9` of `verify` leaves no worker running the
    user's code and writing into folders and caches after it (review 37: one kept running ~14 s, its factory to the
    end). The worker's parent is the fork server, which exits when the last copy of its alive pipe closes: the
    caller's, and each worker's (multiprocessing hands every worker one; closed here, no worker starts children).
    So: PR_SET_PDEATHSIG (Linux; elsewhere nothing), then that copy closed, then the caller checked through `conn`
    (its far end closed: the caller died before the signal was armed)."""
    import os
    import select
    import signal
    import sys

    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
            # what the user's code forks and orphans stays below this worker, where `end_descendants` finds it
            libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    forkserver = getattr(sys.modules.get("multiprocessing.forkserver"), "_forkserver", None)
    alive = getattr(forkserver, "_forkserver_alive_fd", None)
    if alive is not None:
        with contextlib.suppress(OSError):
            os.close(alive)
        forkserver._forkserver_alive_fd = None
    if conn is None:
        return
    with contextlib.suppress(OSError, ValueError, AttributeError):
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLOUT)
        if any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0)):
            os._exit(1)


SETTINGS_PREFIX = "BACKBONE_VERIFY_"
"""This tool's settings in the environment ($BACKBONE_VERIFY_SAMPLES, _LAYERS, _NO_CACHE, ...): in a worker they are the
caller's, whatever the user's code sets."""


class _PinnedEnviron(os._Environ):  # type: ignore[name-defined,misc]
    """os.environ in a worker: this tool's settings cannot be changed by the code it runs (review 37: a factory
    setting BACKBONE_VERIFY_SAMPLES=1 had its model judged on one input, not the caller's 8, and exit 0)."""

    def _refuse(self, key: object) -> None:
        if isinstance(key, str) and key.startswith(SETTINGS_PREFIX):
            raise UsageError(f"your model's code changed ${key}, this tool's own setting, while this tool ran it: set "
                             "it before running verify, not in the model; no verdict, not a pass")

    def __setitem__(self, key: str, value: str) -> None:
        if self.get(key) != value:
            self._refuse(key)
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self._refuse(key)
        super().__delitem__(key)


def pin_settings() -> None:
    """In a worker, after it took the caller's environment: this tool's settings fixed (`_PinnedEnviron`)."""
    if type(os.environ) is os._Environ:  # type: ignore[attr-defined]
        os.environ.__class__ = _PinnedEnviron


def adopt(where: tuple[dict[str, str], str, list[str]], threads: int | None, conn: Any = None) -> None:
    """In a worker: dead with this tool's process (`die_with_parent`); the caller's environment, folder, import path
    and torch threads (a fork server started earlier has its own); SIGINT left to the parent, which stops a worker
    with SIGTERM; stdout onto stderr."""
    import os
    import signal
    import sys
    import tempfile

    die_with_parent(conn)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # what the user's code prints goes to stderr: stdout carries only this tool's lines (verdicts, CI annotations)
    with contextlib.suppress(OSError, ValueError, AttributeError):
        sys.stdout.flush()
        os.dup2(2, 1)
        sys.stdout = open(1, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace",
                          closefd=False)
    _ADOPTED_STREAMS.update(stdout=sys.stdout, stderr=sys.stderr)
    with contextlib.suppress(OSError):  # a group of its own: what the user's code forks is stopped with it (`_stop`)
        os.setpgid(0, 0)
    environ, cwd, path = where
    os.environ.clear()
    os.environ.update(environ)
    pin_settings()
    tempfile.tempdir = None  # the fork server's cached temporary folder: TMPDIR may name another one now
    os.chdir(cwd)
    sys.path[:] = path
    if threads:
        import torch

        torch.set_num_threads(threads)


_ADOPTED_STREAMS: dict[str, Any] = {}
"""The worker's sys.stdout and sys.stderr as `adopt` left them: what the user's code may close or replace."""
STREAM_FAILURES = ((ValueError, "closed file"), (AttributeError, "has no attribute 'write'"),
                   (AttributeError, "has no attribute 'flush'"))
"""What writing to a closed, None or replaced standard stream raises (io's and Python's own texts)."""


def _stream_trouble(exc: BaseException) -> str | None:
    """What the user's code did to this worker's sys.stdout or sys.stderr (closed it, set it to None, replaced it),
    when a write to such a stream is what raised `exc` (anywhere in its chain of causes); else None. torch.export
    wraps the failed write in its own error, and its advice ('export with --static') was not the cause (review 39)."""
    import sys

    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    if not any(isinstance(e, kind) and text in str(e) for e in chain for kind, text in STREAM_FAILURES):
        return None
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name, None)
        if stream is None:
            return f"set sys.{name} to None"
        if getattr(stream, "closed", False) is True:
            return f"closed sys.{name}"
        if name in _ADOPTED_STREAMS and stream is not _ADOPTED_STREAMS[name]:
            return f"replaced sys.{name} (with {type(stream).__name__})"
    return None


def stream_trouble_message(exc: BaseException, whose: str) -> str | None:
    """One line saying that `whose` code closed or replaced a standard stream of this worker and a write to it raised
    `exc` (`_stream_trouble`), else None: in `run_isolated`'s workers and in a matrix worker's `--model` cell."""
    did = _stream_trouble(exc)
    if did is None:
        return None
    root = exc
    while root.__cause__ is not None or root.__context__ is not None:
        root = root.__cause__ or root.__context__
    said = (str(root).strip().splitlines() or [""])[-1]
    return (f"{whose} {did} in its worker process, and a write to it then raised {type(root).__name__} ({said}) "
            "before any verdict: no verdict, not a pass; leave sys.stdout and sys.stderr as they are (write to a file "
            "of your own)")


def _error_message(exc: BaseException, whose: str) -> tuple[str, tuple[str, int, str]]:
    """An error raised in a worker, as the message the parent raises again: this tool's errors as they are, a bug
    of its own code as the CLI reports one, anything else one line naming `whose` code raised it. A write to a
    standard stream that `whose` code closed or replaced is named as that, whoever's code wrote."""
    trouble = stream_trouble_message(exc, whose)
    if trouble is not None:
        return "error", ("IsolatedRunError", 2, trouble)
    if isinstance(exc, VerifyError):
        return "error", (type(exc).__name__, exc.exit_code, str(exc))
    said = (str(exc).strip().splitlines() or [""])[-1]
    if raised_by_tool(exc):
        return "error", ("IsolatedRunError", 2, f"unexpected {type(exc).__name__} in this tool's own code: {said} "
                                                "(not your model's; please report it)")
    return "error", ("IsolatedRunError", 2, f"{type(exc).__name__} ({said}) raised by {whose} before any "
                                             "verdict: no verdict, not a pass")


def run_isolated(fn: Callable[..., Any], *args: Any, what: str, timeout: float | None = USER_CODE_TIMEOUT,
                 progress: Progress | None = None, **kwargs: Any) -> Any:
    """`fn(*args, progress=..., **kwargs)` in a worker process; its result, or its error raised again here.
    `what` names the user code in messages (e.g. the --model text)."""
    from verify.judge.file_witness import PRIVATE_TMP

    progress = progress or NullProgress()
    context = worker_context()
    receive, send = context.Pipe(duplex=False)
    # the worker's private folders (guard 3's witness) go in one this process removes: a worker stopped on Ctrl-C
    # or SIGKILLed runs no cleanup of its own (review 34: one /tmp/verify-witness-* left per interrupted witness)
    private = private_folder(WORKER_PREFIX)
    environ, cwd, path = caller_place()
    where = (dict(environ, **{PRIVATE_TMP: private}), cwd, path)
    try:
        worker = start_process(context, target=_worker, args=(send, fn, args, kwargs, _threads(), where), daemon=True)
    except BaseException:
        receive.close()
        release(private)
        raise
    finally:
        send.close()
    deadline = math.inf if not timeout else time.monotonic() + timeout
    steps: list[contextlib.AbstractContextManager[None]] = []
    try:
        while True:
            if receive.poll(POLL_SECONDS):
                try:
                    kind, payload = safe_loads(receive.recv_bytes())
                except EOFError:
                    break  # the worker is gone; its exit code says how
                if kind == "start":
                    step = progress.step(payload)
                    step.__enter__()
                    steps.append(step)
                elif kind == "end":
                    _close_step(steps, payload)
                else:
                    _close_all(steps)
                    return _result(kind, payload)
            elif not worker.is_alive() and not receive.poll(0):
                break
            if time.monotonic() > deadline:
                _close_all(steps)
                raise IsolatedRunError(f"{what} did not finish within --timeout {timeout:g} s (a model that hangs "
                                       "or is slower than that); its worker was stopped: raise --timeout if it "
                                       "is only slow")
        worker.join(STOP_GRACE_SECONDS)
        _close_all(steps)
        code = worker.exitcode
        how = f"exit code {code}" if code is not None and code >= 0 else f"signal {-code}" if code else "no exit code"
        raise IsolatedRunError(f"{what} ended the worker process running it ({how}) before any verdict: does the "
                               "model call sys.exit/os._exit, or crash the interpreter? No verdict, not a pass")
    finally:
        resumed = _stop(worker)
        receive.close()
        release(private)
        if resumed is not None:  # what the model did outranks its result (or its own error)
            raise stopped_server_error(resumed, what)


def _serve(conn: Any, factory: Callable[..., Any], args: tuple, threads: int | None,
           where: tuple[dict[str, str], str, list[str]]) -> None:
    """A session worker's body: build one object with `factory(*args)`, then answer (method, args) calls on it
    until the parent closes the pipe."""
    adopt(where, threads, conn)
    hold(where[0].get("TMPDIR"))
    try:
        target = factory(*args)
        _send(conn, ("result", None))
    except BaseException as exc:  # noqa: B036 - reported to the parent, which raises it
        _send(conn, _error_message(exc, "the isolated code"))
        return
    while True:
        try:
            method, call_args = pickle.loads(conn.recv_bytes())  # from the parent, which started this worker
        except (EOFError, OSError):
            return
        try:
            message = ("result", getattr(target, method)(*call_args))
        except BaseException as exc:  # noqa: B036
            message = _error_message(exc, "the isolated code")
        _send(conn, message)


class IsolatedSession:
    """One object built and used in a worker process (`factory(*args)` there; `call(method, *args)` here): code
    that can crash the interpreter (a native library, a compiled package) ends the worker, and this process
    raises `IsolatedRunError` naming `what` and the signal, instead of dying with it. Replies are unpickled
    with the same allow-list as `run_isolated`'s."""

    def __init__(self, factory: Callable[..., Any], *args: Any, what: str) -> None:
        self.what = what
        context = worker_context()
        self.conn, child = context.Pipe(duplex=True)
        # The worker's own temporary folder, removed with it: a stopped worker runs no destructor, and native
        # loaders leave their extracted files behind (measured: one /tmp/aotinductor_* per AOTInductor load).
        self.tmp = private_folder(SESSION_PREFIX)
        environ, cwd, path = caller_place()
        where = (dict(environ, TMPDIR=self.tmp), cwd, path)
        try:
            self.worker = start_process(context, target=_serve, args=(child, factory, args, _threads(), where),
                                        daemon=True)
        except BaseException:
            self.conn.close()
            release(self.tmp)
            raise
        finally:
            child.close()
        # a session dropped without close() stops its worker and removes its folder too
        self._finalizer = weakref.finalize(self, _stop_and_clean, self.worker, self.tmp)
        try:
            self._reply()
        except BaseException:
            self.close()
            raise

    def call(self, method: str, *args: Any) -> Any:
        try:
            self.conn.send_bytes(pickle.dumps((method, args)))
        except (BrokenPipeError, OSError):
            return self._died()
        return self._reply()

    def _reply(self) -> Any:
        while True:
            if self.conn.poll(POLL_SECONDS):
                try:
                    kind, payload = safe_loads(self.conn.recv_bytes())
                except EOFError:
                    return self._died()
                return _result(kind, payload)
            if not self.worker.is_alive() and not self.conn.poll(0):
                return self._died()

    def _died(self) -> Any:
        self.worker.join(STOP_GRACE_SECONDS)
        code = self.worker.exitcode
        self.close()
        how = f"exit code {code}" if code is not None and code >= 0 else f"signal {-code}" if code else "no exit code"
        raise IsolatedRunError(f"{self.what} ended the worker process running it ({how}): no verdict, not a pass")

    def close(self) -> None:
        self._finalizer()
        self.conn.close()


class LocalSession:
    """`IsolatedSession`'s interface over an object in this process: for a process that is already a watched
    worker (a matrix cell's, a user model's), which multiprocessing forbids to start children of its own and
    whose parent already turns its crash into one line."""

    def __init__(self, factory: Callable[..., Any], *args: Any, what: str) -> None:
        self.what = what
        self.target = factory(*args)

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.target, method)(*args)

    def close(self) -> None:
        self.target = None


def session(factory: Callable[..., Any], *args: Any, what: str) -> IsolatedSession | LocalSession:
    """`factory(*args)` in a worker of its own, or here when this process is itself a daemonic worker."""
    import multiprocessing

    if multiprocessing.current_process().daemon:
        return LocalSession(factory, *args, what=what)
    return IsolatedSession(factory, *args, what=what)


def _result(kind: str, payload: Any) -> Any:
    if kind == "result":
        return payload
    name, exit_code, message = payload
    from exporter import errors

    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, VerifyError):
        raise cls(message)
    error = IsolatedRunError(message)
    error.exit_code = exit_code if exit_code in (1, 2) else 2
    raise error


def _close_step(steps: list, ok: bool) -> None:
    if not steps:
        return
    step = steps.pop()
    if ok:
        step.__exit__(None, None, None)
    else:
        with contextlib.suppress(IsolatedRunError):
            failure = IsolatedRunError("step failed")
            step.__exit__(IsolatedRunError, failure, None)


def _close_all(steps: list) -> None:
    while steps:
        _close_step(steps, False)


def _stop(worker: Any) -> int | None:
    """SIGTERM, then SIGKILL after a grace period: a worker never outlives its parent's call; then every process
    left in its group (what the user's code forked, holding this tool's stdout open and the pipe behind it).
    Every wait is bounded: a worker's exit is reported by the fork server, which a model may have stopped
    (resumed here; its pid is returned then, else None)."""
    resumed = resume_stopped_server() if worker.is_alive() else None
    if worker.is_alive() and worker.pid is not None:
        end_descendants(worker.pid)  # while the worker, their subreaper, lives: once it is gone they are init's
    if worker.is_alive():
        worker.terminate()
        worker.join(STOP_GRACE_SECONDS)
    if worker.is_alive():
        worker.kill()
        worker.join(STOP_GRACE_SECONDS)
    if worker.is_alive():  # stopped again meanwhile, or a worker SIGKILL cannot end
        again = resume_stopped_server()
        resumed = resumed if again is None else again
        worker.join(STOP_GRACE_SECONDS)
    stop_group(worker.pid)
    end_orphans()
    return resumed


def end_orphans() -> set[int]:
    """SIGKILL what the fork server adopted (its children that are no worker of this process): the descendants a
    worker that ended by itself left running (review 38: a `setsid` grandchild of a factory that then called
    `os._exit` outlived it and wrote into the folders after `verify` exited); their trees are stopped, pass after pass,
    before the kill. One read of the server's children: a process that keeps cloning itself beside the worker
    (`clone(CLONE_PARENT)`, then exit) can be missed (review 40); reading again and again stopped and killed pids its
    thousands of clones had left as zombies, which the server reaps and the system gives to others (a suite run hung
    30 s), so it is left open. The pids ended."""
    import multiprocessing

    server = server_pid()
    if server is None:
        return set()
    with _STARTING:  # a worker another thread is starting is the server's child before it is one of ours
        workers = {child.pid for child in multiprocessing.active_children()}
        orphans = {pid for pid in children_of(server) - workers if not _zombie(pid)}
        stopped = orphans | _stop_all(lambda: below(orphans)) if orphans else set()  # one /proc read a pass
        return {pid for pid in stopped if _end(pid)}


def _zombie(pid: int) -> bool:
    """Whether `pid` has exited and waits to be reaped (or is gone): nothing to stop; its pid may soon be another's."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def _stop_all(find: Callable[[], set[int]]) -> set[int]:
    """SIGSTOP every pid `find` gives, pass after pass until it gives no new one (at most DESCENDANT_PASSES): a process
    stopped forks no other, and one that moved (forked, then exited) is found at its new pid. The pids stopped."""
    import signal

    stopped: set[int] = set()
    for _ in range(DESCENDANT_PASSES):
        found = find() - stopped
        if not found:
            break
        for pid in found:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGSTOP)
        stopped |= found
    return stopped


def children_of(pid: int) -> set[int]:
    """The children of `pid` (a single-threaded process: the fork server), read in one file where Linux has it
    (/proc/PID/task/PID/children: microseconds, so a process that keeps moving is caught), else from every /proc
    entry."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as listing:
            return {int(child) for child in listing.read().split()}
    except (OSError, ValueError):
        return set(_children_by_parent().get(pid, ()))


_STARTING = threading.Lock()
"""Held while a worker starts and while `end_orphans` reads the fork server's children: a worker forked by the server
but not yet registered in `multiprocessing.active_children()` (another thread's start) would read as an orphan."""


def _end(pid: int) -> bool:
    """SIGKILL to `pid`; whether it was sent."""
    import signal

    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        return False
    return True


def stop_group(pid: int | None) -> None:
    """SIGKILL to every process left in the group of a worker that `adopt` made a group leader, once the worker has
    ended: what the user's code forked (a helper it left running holds this tool's stdout and stderr open, so a
    `verify ... | tee` waits for it, and it may still write to the cache or the folders after the verdict)."""
    import os
    import signal

    if pid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):  # no group: the worker forked nothing
            os.killpg(pid, signal.SIGKILL)


WORKER_PREFIX, SESSION_PREFIX = "verify-worker-", "verify-session-"
"""The temporary folders a worker is given (`run_isolated`'s for guard 3's witness, a session's TMPDIR), each named
PREFIX + the owner's pid + "-" + mkdtemp's suffix, and held (a shared flock) by the owner and its worker while they
live: a folder whose owner was SIGKILLed (floor 35: `kill -9` of `verify` left an empty /tmp/verify-worker-*) is
removed by the next run that makes one (`sweep_stale`)."""
_HELD: dict[str, int] = {}
"""The folders this process holds (`hold`) and the descriptor holding each, closed when it is removed (`release`)."""
_SWEPT: set[str] = set()
"""The temporary folders this process swept already: once each (a scan of /tmp per worker would cost every cell)."""


def private_folder(prefix: str) -> str:
    """A new temporary folder named for this process and held by it (`hold`), after the stale ones are swept."""
    import os
    import tempfile

    sweep_stale(tempfile.gettempdir())
    folder = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-")
    hold(folder)
    return folder


def hold(folder: str | None) -> None:
    """A shared flock on `folder` until `release` (or however this process ends: the kernel drops it): a live owner
    or worker keeps `sweep_stale` away, in any PID namespace (a pid alone is another process's there)."""
    import fcntl
    import os

    if not folder or folder in _HELD:
        return
    with contextlib.suppress(OSError):  # no folder or no flock here: its owner's pid alone decides
        fd = os.open(folder, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_DIRECTORY", 0))
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise
        _HELD[folder] = fd


def release(folder: str) -> None:
    """Remove `folder` and let go of it (`hold`)."""
    import os
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    fd = _HELD.pop(folder, None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def sweep_stale(tmp: str) -> list[str]:
    """Remove, once a process for each temporary folder, the worker folders (WORKER_PREFIX, SESSION_PREFIX) of this
    user whose owner is dead and that nobody holds (`hold`); the removed folders' paths."""
    import fcntl
    import os
    import shutil
    import stat

    if tmp in _SWEPT:
        return []
    _SWEPT.add(tmp)
    removed = []
    try:
        entries = list(os.scandir(tmp))
    except OSError:
        return []
    for entry in entries:
        prefix = next((p for p in (WORKER_PREFIX, SESSION_PREFIX) if entry.name.startswith(p)), None)
        pid = entry.name[len(prefix):].split("-", 1)[0] if prefix else ""
        # ASCII digits only: `verify-worker-²-x` or a pid past any C long crashed every run's sweep (review 36)
        if not (pid.isascii() and pid.isdigit()) or int(pid) == os.getpid() or _pid_alive(int(pid)):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                continue
            fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | getattr(os, "O_DIRECTORY", 0))
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # held: its owner or its worker lives (in another PID namespace, perhaps)
        else:
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
        finally:
            os.close(fd)
    return removed


def _pid_alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    except OverflowError:  # no process has it: not a folder any run of this tool made, so not one to remove
        return True
    return True


def _stop_and_clean(worker: Any, folder: str) -> None:
    _stop(worker)
    release(folder)


def _threads() -> int | None:
    import sys

    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None
