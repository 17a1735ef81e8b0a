"""Cells in worker processes forked from the fork server (verify/pipeline/isolation.py): the cores shared, a dead
or overdue worker failing its cell only, a user model's cell in a worker of its own."""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from verify.matrix.cell import CELL_FOLDER_PREFIX, CellJob, execute_cell
from verify.matrix.result import ERROR, CellResult
from verify.pipeline.isolation import (
    IsolatedRunError,
    adopt,
    caller_place,
    end_descendants,
    end_orphans,
    resume_stopped_server,
    safe_loads,
    start_process,
    stop_group,
    stopped_server_error,
    worker_context,
)


def worker_threads(jobs: int) -> int:
    """Torch threads per worker so that `jobs` workers share the cores without oversubscribing them."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, jobs))


WAIT_CAP_S = 3600.0
"""The longest one wait for the workers lasts: a far deadline (a timeout of weeks) is waited for in such steps, since
the OS's wait takes at most ~24 days (a longer one raised OverflowError after the workers had started)."""
WORKER_STOP_S = 2.0
"""How long an idle worker gets to exit after the matrix is done before it is killed."""


def _worker_main(conn: Any, threads: int, where: tuple[dict[str, str], str, list[str]]) -> None:
    """A worker process: run the cells sent to it, one at a time, until told to stop (None) or the
    parent goes away. Ctrl-C is the parent's to handle: it stops the workers itself."""
    adopt(where, threads, conn)  # the parent's environment, folder and path (the fork server has its own); gone if
    # the parent already is
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        result = execute_cell(job, lookup=False)
        end_descendants()  # what a user model's code forked and left running ends before its cell is reported
        conn.send_bytes(pickle.dumps(result))


@dataclass
class _Worker:
    process: Any
    conn: Any
    job: CellJob | None = None
    deadline: float | None = None

    @classmethod
    def start(cls, context: Any, threads: int) -> _Worker:
        parent, child = context.Pipe()
        try:
            process = start_process(context, target=_worker_main, args=(child, threads, caller_place()), daemon=True,
                                    name="verify-matrix-worker")
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        return cls(process, parent)

    def give(self, job: CellJob) -> None:
        self.job = job
        self.deadline = None if job.timeout is None else time.monotonic() + job.timeout
        self.conn.send(job)

    def kill(self) -> None:
        if self.process.is_alive():
            end_descendants(self.process.pid)  # while the worker, their subreaper, lives (review 38)
            self.process.kill()
        self.process.join(WORKER_STOP_S)
        stop_group(self.process.pid)  # what a user model's code forked in it, left running (it holds our stderr)
        end_orphans()  # and what the fork server adopted from a worker that ended by itself
        self.conn.close()
        remove_cell_folders(self.process.pid)

    def stop(self) -> None:
        """Ask an idle worker to exit; kill it if it does not."""
        if self.process.is_alive():
            with contextlib.suppress(OSError, ValueError):
                self.conn.send(None)
            self.process.join(WORKER_STOP_S)
        self.kill()


def remove_cell_folders(pid: int | None) -> None:
    """The temporary folders a killed worker left (its own prefix and pid only; nothing else is touched)."""
    import glob
    import shutil

    if pid is None:
        return
    for folder in glob.glob(os.path.join(tempfile.gettempdir(), f"{CELL_FOLDER_PREFIX}{pid}-*")):
        if os.path.isdir(folder) and not os.path.islink(folder):
            shutil.rmtree(folder, ignore_errors=True)


def _failed(job: CellJob, reason: str) -> CellResult:
    return CellResult(job.id, *job.request.spec.row, ERROR, shard=job.shard, error=reason)


def _collect(worker: _Worker) -> CellResult | None:
    """The worker's result if one is ready; a failed cell if the worker died or ran past its deadline."""
    job = worker.job
    assert job is not None
    if worker.conn.poll():
        try:
            result = safe_loads(worker.conn.recv_bytes())  # the worker ran user code: data back, never code
        except (EOFError, OSError):
            result = None
        except IsolatedRunError as exc:
            return _failed(job, str(exc))
        if isinstance(result, CellResult) and result.id == job.id:
            stopped = resume_stopped_server()  # a model's later forward may have stopped it (hunt 19f): no pass
            if stopped is not None:
                return _failed(job, str(stopped_server_error(stopped, "This cell's model (or one run beside it)")))
            return result
        if result is not None:  # another cell's result, or no result at all: the matrix waited for it until the
            worker.kill()        # cell's timeout, or for ever without one
            return _failed(job, "the worker sent back something other than this cell's result; rerun the cell alone")
    if not worker.process.is_alive() or worker.conn.closed:
        worker.process.join(WORKER_STOP_S)
        code = worker.process.exitcode
        what = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        return _failed(job, f"the worker process {what} before reporting a verdict (the model's code ended the "
                            "process, it crashed, or it ran out of memory); rerun the cell alone to see why")
    if worker.deadline is not None and time.monotonic() > worker.deadline:
        worker.kill()
        return _failed(job, f"stopped after {job.timeout:g} s (--timeout): the model's code did not finish; "
                            "fix what hangs, or pass a larger --timeout")
    return None


def run_in_workers(work: list[CellJob], jobs: int, finish: Callable[[CellResult], None]) -> None:
    """Each cell in a worker process forked from the fork server (never from this process: torch and fork do
    not mix; the server imported torch and started no thread), at most `jobs` at once, the
    cores divided between them. A worker that dies or runs past its cell's timeout fails that cell only;
    a user model's cell gets a fresh worker, used once. On any exception (Ctrl-C, SIGTERM) every worker is
    killed at once."""
    from collections import deque
    from multiprocessing.connection import wait

    context = worker_context()
    threads = worker_threads(jobs)
    queue, idle, busy = deque(work), [], []
    try:
        while queue or busy:
            while queue and len(busy) < jobs:
                job = queue.popleft()
                reuse = idle and not job.request.spec.runs_user_code
                worker = idle.pop() if reuse else _Worker.start(context, threads)
                worker.give(job)
                busy.append(worker)
            deadlines = [w.deadline for w in busy if w.deadline is not None]
            wait([w.conn for w in busy] + [w.process.sentinel for w in busy],
                 timeout=min(WAIT_CAP_S, max(0.0, min(deadlines) - time.monotonic()) + 0.05) if deadlines else None)
            for worker in list(busy):
                result = _collect(worker)
                if result is None:
                    continue
                busy.remove(worker)
                once = worker.job is not None and worker.job.request.spec.runs_user_code
                worker.job = None
                if once or not worker.process.is_alive():
                    worker.stop()
                else:
                    idle.append(worker)
                finish(result)
    except BaseException:
        for worker in busy + idle:
            worker.kill()
        raise
    for worker in idle:
        worker.stop()
