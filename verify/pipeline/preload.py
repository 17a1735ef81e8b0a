"""Loads done in a thread while this process runs something else.

A .pt2 load is seconds of pure-Python deserialisation (sympy shape expressions, dataclass decoding); the other
runtimes and the float64 oracle spend theirs in torch and ONNX Runtime kernels, which release the GIL. So a
runtime that declares `loads_in_background` is loaded in a thread as soon as its file is there, and its runs
wait for that load only when its turn comes. Only the load moves: its runs, and every verdict, stay in the
caller's thread. A failed load raises, when taken, what the same load raises in the caller.

A thread that waits for the GIL gets it after the holder's switch interval (5 ms by default): beside a busy load,
every torch operator of the caller's would wait that long to resume. The interval is cut to
`SWITCH_INTERVAL_S` while a load runs, and the caller holds such loads back while its own torch runs are ahead.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from exporter.artifacts import Artifact
    from verify.runtimes import Runtime, RuntimeOptions

SWITCH_INTERVAL_S = 0.0005
"""The interpreter's switch interval while a load runs: the longest the caller's thread waits to resume."""
_interval_lock = threading.Lock()
_interval_users: list[float] = []
"""The interval each running load found (the first one's is restored when the last ends)."""


def _cut_interval() -> None:
    import sys

    with _interval_lock:
        _interval_users.append(sys.getswitchinterval())
        sys.setswitchinterval(min(SWITCH_INTERVAL_S, _interval_users[0]))


def _restore_interval() -> None:
    import sys

    with _interval_lock:
        first = _interval_users[0]
        _interval_users.pop()
        if not _interval_users:
            sys.setswitchinterval(first)


@dataclass
class _Load:
    thread: threading.Thread
    result: list
    """[the loaded runtime, its load's seconds] once done, or [the exception it raised]."""


class Preloads:
    """Background loads by runtime name: `start` one, ask whether it is `loading`, `take` its runtime."""

    def __init__(self, options: RuntimeOptions) -> None:
        self.options = options
        self.loads: dict[str, _Load] = {}

    def wants(self, runtime: str) -> bool:
        """Whether `runtime` loads in the background and has not been started."""
        from verify.runtimes import runtime_class

        return runtime not in self.loads and runtime_class(runtime).loads_in_background

    def start(self, runtime: str, artifact: Artifact) -> None:
        result: list = []
        thread = threading.Thread(target=self._load, args=(runtime, artifact, result), name=f"load {runtime}",
                                  daemon=True)  # a stopped run does not wait for a load nobody will take
        self.loads[runtime] = _Load(thread, result)
        _cut_interval()  # restored by the thread when it ends, however it ends
        try:
            thread.start()
        except BaseException:
            _restore_interval()
            raise

    def loading(self, runtime: str) -> bool:
        load = self.loads.get(runtime)
        return load is not None and load.thread.is_alive()

    def take(self, runtime: str) -> tuple[Runtime, float] | None:
        """The loaded runtime and its load's seconds (waiting for it), or None when it was never started."""
        load = self.loads.pop(runtime, None)
        if load is None:
            return None
        load.thread.join()
        if isinstance(load.result[0], BaseException):
            raise load.result[0]
        return load.result[0], load.result[1]

    def _load(self, runtime: str, artifact: Artifact, result: list) -> None:
        import time

        from verify.runtimes import make_runtime

        start = time.perf_counter()
        try:
            result[:] = [make_runtime(runtime, self.options).load(artifact), time.perf_counter() - start]
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread by `take`
            result[:] = [exc]
        finally:
            _restore_interval()
