"""Native code that can crash the interpreter runs in a worker (verify/pipeline/isolation.py IsolatedSession):
its crash is one error line in this process, never this process's death. The AOTInductor runtime holds its
package there (verify/runtimes/aoti.py); measured on an H200 under torch 2.11, loading one segfaulted."""

import os
import signal

import numpy as np
import pytest

from exporter.errors import UsageError
from verify.pipeline.isolation import IsolatedRunError, IsolatedSession, session


class Native:
    """Stands in for a loaded native library: it answers, raises, or crashes the process it lives in."""

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self.pid = os.getpid()

    def run(self, array: np.ndarray) -> dict[str, np.ndarray]:
        return {"y": array * self.scale}

    def where(self) -> int:
        return self.pid

    def refuse(self) -> None:
        raise UsageError("a usage error raised in the worker")

    def crash(self) -> None:
        os.kill(os.getpid(), signal.SIGSEGV)

    def leave_a_file(self) -> str:
        """What a native loader does: extract into the temporary folder, cleaned only by a destructor."""
        import tempfile

        folder = tempfile.mkdtemp(prefix="extracted_")
        with open(os.path.join(folder, "model.so"), "wb") as f:
            f.write(b"\0")
        return folder


def native(scale: float) -> Native:
    return Native(scale)


def crashes_while_loading(scale: float) -> Native:
    os.kill(os.getpid(), signal.SIGSEGV)
    return Native(scale)


def test_calls_are_answered_in_another_process_and_its_errors_come_back_as_they_are():
    session = IsolatedSession(native, 2.0, what="the test library")
    try:
        x = np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)
        np.testing.assert_array_equal(session.call("run", x)["y"], x * 2)
        assert session.call("where") != os.getpid()
        with pytest.raises(UsageError, match="raised in the worker"):
            session.call("refuse")
        np.testing.assert_array_equal(session.call("run", x)["y"], x * 2)  # still serving after an error
    finally:
        session.close()


@pytest.mark.parametrize("when", ["loading", "running"])
def test_a_crash_is_one_line_naming_the_signal_not_this_process_dying(when):
    factory = crashes_while_loading if when == "loading" else native
    with pytest.raises(IsolatedRunError) as caught:
        session = IsolatedSession(factory, 1.0, what="the test library")
        session.call("crash")
    message = str(caught.value)
    assert f"signal {int(signal.SIGSEGV)}" in message and "the test library" in message
    assert "\n" not in message and "not a pass" in message


def test_a_process_that_is_already_a_watched_worker_keeps_the_object_itself(monkeypatch):
    """A daemonic worker (a matrix cell's) may not start children; its own death is already its cell's error."""
    import multiprocessing
    from types import SimpleNamespace

    monkeypatch.setattr(multiprocessing, "current_process", lambda: SimpleNamespace(daemon=True))
    here = session(native, 3.0, what="the test library")
    assert here.call("where") == os.getpid()
    np.testing.assert_array_equal(here.call("run", np.ones((1, 1, 1, 1), np.float32))["y"], [[[[3.0]]]])


@pytest.mark.parametrize("end", ["close", "crash", "dropped"])
def test_what_the_worker_extracts_is_removed_when_it_ends(end):
    """A stopped worker runs no destructor: its private temporary folder goes with it, however it ends."""
    import gc

    session = IsolatedSession(native, 1.0, what="the test library")
    folder = session.call("leave_a_file")
    assert os.path.isdir(folder) and os.path.commonpath([folder, session.tmp]) == session.tmp
    if end == "close":
        session.close()
    elif end == "crash":
        with pytest.raises(IsolatedRunError):
            session.call("crash")
    else:
        del session
        gc.collect()
    assert not os.path.exists(folder)
