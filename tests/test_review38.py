"""Review 38: a user's model reaching past its worker. A factory that forked a `setsid` grandchild (outside the
worker's process group, so `stop_group` missed it) left it running after `verify` exited: it rewrote `--json`'s
report 6 s later (`verify export --model` exit 0, then the report file held what the grandchild wrote). Each worker is
now the subreaper of what its code forks and ends its whole tree before it replies; the parent ends it too when it
stops a worker (a timeout), and the fork server adopts what a worker that died by itself (`os._exit`) left, which the
parent ends once that worker is gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import process_gone, still_running
from verify.pipeline.isolation import descendants, end_descendants

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="subreapers and /proc are Linux's")

GONE_S = 5.0
"""How long an escaped grandchild may take to be gone after the call that ran its factory returned (with the fix it is
dead when the call returns; without it, it sleeps 60 s)."""


LEAVER = textwrap.dedent("""
    import os, time

    def _escape(marker):
        # a grandchild in a session of its own: outside the worker's process group, its parent gone
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.closerange(0, 3)  # holding no pipe of the caller's: only its being alive is measured
                with open(marker + ".tmp", "w") as f:
                    f.write(str(os.getpid()))
                os.replace(marker + ".tmp", marker)
                time.sleep(60)
            os._exit(0)
        os.wait()
        while not os.path.exists(marker):
            time.sleep(0.01)

    def returns(marker, progress=None):
        _escape(marker)
        return "done"

    def exits(marker, progress=None):
        _escape(marker)
        os._exit(0)

    def hangs(marker, progress=None):
        _escape(marker)
        time.sleep(60)
""")


@linux_only
def test_nothing_a_models_code_forks_outlives_its_worker(tmp_path: Path) -> None:
    """Before: the grandchild of each factory (a result, `os._exit`, a hang stopped by the timeout) was alive after
    `run_isolated` returned or raised, free to write into the reports and folders after the verdict."""
    (tmp_path / "leaver.py").write_text(LEAVER)
    markers = {name: tmp_path / f"{name}.pid" for name in ("returns", "exits", "hangs")}
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from verify.pipeline import isolation
        import leaver
        isolation.PRELOAD = ("verify.pipeline.isolation",)  # a light fork server: the processes, not torch, are tested
        for name, marker in {({k: str(v) for k, v in markers.items()})!r}.items():
            try:
                print(name, isolation.run_isolated(getattr(leaver, name), marker, what="m", timeout=2))
            except isolation.IsolatedRunError as exc:
                print(name, "IsolatedRunError", exc.exit_code)
    """)
    # before the fix the grandchildren held the captured pipe: the run timed out
    _run_and_find_none_left(script, markers, ["returns done", "exits IsolatedRunError 2", "hangs IsolatedRunError 2"],
                            timeout=30)


def _run_and_find_none_left(script: str, markers: dict[str, Path], said: list[str], timeout: float) -> None:
    """Run `script`; it prints `said`, every grandchild wrote its pid to its marker, and none is left running."""
    try:
        result = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1],
                                capture_output=True, text=True, timeout=timeout)
        pids = {name: int(marker.read_text()) for name, marker in markers.items() if marker.exists()}
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.split("\n")[:len(said)] == said, result.stdout
        assert set(pids) == set(markers)
        assert still_running(pids, GONE_S) == set()
    finally:
        for marker in markers.values():
            if marker.exists() and not process_gone(int(marker.read_text())):
                os.kill(int(marker.read_text()), signal.SIGKILL)


@linux_only
def test_end_descendants_ends_the_whole_tree_below_a_process_and_nothing_else() -> None:
    """Three generations below a child end; the child itself and this process do not."""
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import os, sys, time
        if os.fork() == 0:
            if os.fork() == 0:
                os.write(1, b"r")
                time.sleep(60)
            os.write(1, b"r")
            time.sleep(60)
        os.write(1, b"r")
        time.sleep(60)
    """)], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        assert child.stdout.read(3) == b"rrr"  # one byte from each of the three generations: all forked
        below = descendants(child.pid)
        assert len(below) == 2 and os.getpid() not in below
        assert end_descendants(child.pid) == below
        assert still_running({str(pid): pid for pid in below}, GONE_S) == set() and child.poll() is None
    finally:
        child.kill()
        child.wait()


CELL_LEAVER = textwrap.dedent("""
    # a matrix worker imports this module when it unpickles its job: its cell is then the leaver's, not an export
    import leaver
    from verify.matrix import workers

    class Job:
        def __init__(self, how, marker):
            self.how, self.marker, self.timeout = how, marker, None

    def execute_cell(job, lookup=True):
        return getattr(leaver, job.how)(job.marker)

    workers.execute_cell = execute_cell
""")


@linux_only
def test_nothing_a_matrix_cells_code_forks_outlives_its_worker(tmp_path: Path) -> None:
    """Before: `verify matrix --model` of a factory forking a `setsid` grandchild exited 0, and 6 s later the
    grandchild overwrote the `--json` report with its own pass (the matrix's workers are not `run_isolated`'s)."""
    (tmp_path / "leaver.py").write_text(LEAVER)
    (tmp_path / "cell_leaver.py").write_text(CELL_LEAVER)
    markers = {name: tmp_path / f"{name}.pid" for name in ("returns", "exits")}
    script = textwrap.dedent(f"""
        import pickle, sys
        sys.path.insert(0, {str(tmp_path)!r})
        from verify.pipeline import isolation
        isolation.PRELOAD = ("verify.pipeline.isolation",)  # a light fork server: the processes, not torch, are tested
        from verify.matrix import workers
        import cell_leaver
        for name, marker in {({k: str(v) for k, v in markers.items()})!r}.items():
            worker = workers._Worker.start(isolation.worker_context(), 1)
            worker.give(cell_leaver.Job(name, marker))
            if name == "exits":
                worker.process.join(20)
                print(name, "exit code", worker.process.exitcode)
            else:
                print(name, pickle.loads(worker.conn.recv_bytes()))
            worker.stop()
    """)
    _run_and_find_none_left(script, markers, ["returns done", "exits exit code 0"], timeout=60)
