"""Review 37: the trust claims, attacked on variants no earlier round tried. A `kill -9` of `verify` mid-run left its
worker running the user's code to the end (measured: 18.1 s after the kill, the factory's remaining sleep), free to
write into the folders and caches the next run reads: multiprocessing hands every worker a copy of the fork server's
alive pipe, so the server never saw its parent go and the worker never saw its parent (the server) go. Each worker now
closes that copy and asks to be SIGKILLed when its parent ends (PR_SET_PDEATHSIG), and the server skips the
interpreter's teardown on its way out: the worker is dead 0.11-0.14 s after the kill. And a factory that set
$BACKBONE_VERIFY_SAMPLES=1 in its worker had its model judged on one seeded input instead of the caller's 8 (exit 0):
this tool's settings are now the caller's in a worker, and code that changes them ends in one line, exit 2."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.helpers import process_gone, still_running
from verify.inputs import SAMPLES_ENV
from verify.pipeline.isolation import PR_SET_PDEATHSIG, SETTINGS_PREFIX, die_with_parent

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")

WORKER_GONE_S = 10.0
"""How long the killed caller's worker may take to die (measured 0.11-0.14 s; without the fix it never does in this
time: it sleeps 120 s)."""


@linux_only
def test_a_worker_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    """Before: after `kill -9` of the caller, its worker (and the fork server) ran the user's code to its end."""
    (tmp_path / "napper.py").write_text(textwrap.dedent("""
        import os, sys, time

        def nap(marker, progress=None):
            with open(marker + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(marker + ".tmp", marker)
            time.sleep(120)
    """))
    marker = tmp_path / "worker.pid"
    caller = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from verify.pipeline import isolation
        import napper
        isolation.PRELOAD = ("verify.pipeline.isolation",)  # a light fork server: the trust, not torch, is tested
        isolation.run_isolated(napper.nap, {str(marker)!r}, what="nap", timeout=None)
    """)], cwd=Path(__file__).resolve().parents[1])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert caller.poll() is None and time.monotonic() < deadline, "the worker never started"
            time.sleep(0.05)
        worker = int(marker.read_text())
        caller.send_signal(signal.SIGKILL)
        caller.wait()
        assert still_running({"worker": worker}, WORKER_GONE_S) == set(), "it outlived the process that started it"
    finally:
        if caller.poll() is None:
            caller.kill()
        if marker.exists() and not process_gone(int(marker.read_text())):
            os.kill(int(marker.read_text()), signal.SIGKILL)


@linux_only
def test_a_worker_whose_caller_is_already_gone_ends_and_asks_for_its_parents_signal() -> None:
    """The caller may die before the signal is armed: the worker sees its pipe's far end closed and ends (exit 1);
    one whose caller lives is armed with SIGKILL and goes on."""
    import ctypes
    import multiprocessing

    for caller_alive in (False, True):
        receive, send = multiprocessing.Pipe(duplex=False)
        if not caller_alive:
            receive.close()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit code
            code = 3
            try:
                die_with_parent(send)
                armed = ctypes.c_int(0)
                ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG + 1, ctypes.byref(armed), 0, 0, 0)  # PR_GET_PDEATHSIG
                code = 0 if armed.value == signal.SIGKILL else 4
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == (0 if caller_alive else 1)
        send.close()
        if caller_alive:
            receive.close()


def test_a_models_code_cannot_change_this_tools_settings_in_its_worker(tmp_path: Path) -> None:
    """Before: `os.environ["BACKBONE_VERIFY_SAMPLES"] = "1"` in a factory took effect in the worker, which then drew
    one seeded input, not the caller's count (`verify export --model` exit 0, judged on 1 input of 8)."""
    (tmp_path / "setter.py").write_text(textwrap.dedent(f"""
        import os

        def keep_other(progress=None):
            os.environ["MY_OWN_SETTING"] = "1"  # the model's own variables are its business
            del os.environ["MY_OWN_SETTING"]
            return os.environ.get({SAMPLES_ENV!r})

        def set_ours(progress=None):
            os.environ[{SAMPLES_ENV!r}] = "1"

        def clear_all(progress=None):
            os.environ.clear()
    """))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from verify.pipeline import isolation
        import setter
        isolation.PRELOAD = ("verify.pipeline.isolation",)
        print(isolation.run_isolated(setter.keep_other, what="m"))
        for fn in (setter.set_ours, setter.clear_all):
            try:
                isolation.run_isolated(fn, what="m")
            except Exception as exc:
                print(type(exc).__name__, exc.exit_code, exc)
    """)], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120,
        env={**os.environ, SAMPLES_ENV: "8"})
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and len(lines) == 3, result.stderr[-2000:]
    assert lines[0] == "8"
    assert SAMPLES_ENV in lines[1]  # clear_all names whichever of this tool's settings it deleted first
    for line in lines[1:]:
        assert line.startswith("UsageError 2 ") and f"${SETTINGS_PREFIX}" in line and "not a pass" in line, line


def test_a_matrix_that_runs_a_users_code_is_refused_while_the_report_key_is_set(monkeypatch: pytest.MonkeyPatch):
    """Before: `verify matrix --model` with $BACKBONE_VERIFY_REPORT_KEY set exited 0 and the factory read the key (its
    worker's environment, /proc/<pid>/environ): code under test could sign shard reports it did not earn."""
    from exporter.errors import UsageError
    from tests.data import tiny
    from verify.matrix import REPORT_KEY_ENV, MatrixRequest
    from verify.matrix.run import plan_matrix

    users = MatrixRequest.create(["resnet18"], ["frozen"], models=[f"{tiny.__file__}:make"])
    monkeypatch.delenv(REPORT_KEY_ENV, raising=False)
    plan_matrix(users)  # without the key: planned
    monkeypatch.setenv(REPORT_KEY_ENV, "s3cret")
    plan_matrix(MatrixRequest.create(["resnet18"], ["frozen"]))  # no user code: the key may sign it
    with pytest.raises(UsageError, match=REPORT_KEY_ENV):
        plan_matrix(users)
