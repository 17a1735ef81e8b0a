"""One matrix cell: its stored failure from the cache (re-judged), else the pipeline cell run, judged again
from its numbers and stored; every failure becomes an `error` cell."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.errors import VerifyError
from verify.matrix.detector_cell import run_detector_cell
from verify.matrix.detectors import is_detector_cell
from verify.matrix.floor_binding import floor_binding_problems
from verify.matrix.judging import judge_cell, kept_disagreement
from verify.matrix.result import AGREE, DISAGREE, ERROR, CellResult
from verify.pipeline.overlap import RAN_ON
from verify.pipeline.stages import HIT, MISS, OFF, CellRequest

if TYPE_CHECKING:
    from verify.cache import Cache, CacheStats
    from verify.pipeline.stages import CellPlan


RERUN = "rerun"
"""A cell's cache status when its stored result would pass: a pass is earned in this run, so it ran again."""


@dataclass(frozen=True)
class CellJob:
    request: CellRequest
    id: str
    cache_dir: str | None
    shard: int | None = None
    found: bool = False
    """Its result was in the cache and would pass: it runs again (cache status RERUN)."""
    timeout: float | None = None
    """Seconds the cell may run in a worker process before it is stopped (None: no bound)."""


def _peak_rss_mib() -> float:
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def _result_key(job: CellJob, cache: Cache | None) -> tuple[CellPlan, str | None]:
    from verify.pipeline.stages import plan_cell, request_content

    plan = plan_cell(job.request)
    content = request_content(job.request, plan) if cache is not None else None
    return plan, (cache.key("result", content) if cache is not None and content is not None else None)


def _blank(job: CellJob) -> CellResult:
    return CellResult(job.id, *job.request.spec.row, ERROR, shard=job.shard)


def lookup_cell(job: CellJob, stats: CacheStats) -> tuple[CellResult | None, bool]:
    """(the cell's stored result when, judged again from its numbers under this run's tolerance, it fails;
    else None, whether a result was stored): a stored result that would pass is run again (RERUN), since
    its numbers may have been edited. Runs nothing (and imports no torch)."""
    from verify.cache import Cache

    if not job.cache_dir or is_detector_cell(job.request):  # a detector cell is never taken from the cache
        return None, False
    start = time.perf_counter()
    cache = Cache(Path(job.cache_dir))
    try:
        plan, key = _result_key(job, cache)
        entry = cache.load("result", key) if key is not None else None
    except VerifyError:
        entry = None  # the cell itself will fail and say why
    stats.add(cache.stats)
    if entry is None:
        return None, False
    judged = _stored_failure(entry.data, job, len(plan.runtimes))
    if judged is None:
        return None, True
    judged.cache, judged.cache_stats = {"result": HIT}, cache.stats.to_dict()
    judged.worker = {"pid": os.getpid(), "peak_rss_mib": _peak_rss_mib()}
    judged.seconds = round(time.perf_counter() - start, 3)
    return judged, True


def _stored_failure(data: Any, job: CellJob, runtimes: int) -> CellResult | None:
    """A stored cell judged under this run's tolerance, when that verdict is a disagreement: a cached
    failure may stand (it can only fail the run), a cached pass never does (its numbers may be edited)."""
    try:
        stored = CellResult.from_dict(data)
    except (TypeError, AttributeError):
        return None
    backbone, norm, view = job.request.spec.row
    stored = replace(stored, id=job.id, backbone=backbone, norm=norm, view=view, error=None, shard=job.shard)
    if floor_binding_problems(stored, job.request.settings.tolerance):
        return None  # figures that are not its own floors: no result this tool stored, so computed again
    judged = judge_cell(stored, job.request.settings.tolerance, runtimes)
    return judged if judged.verdict == DISAGREE else None


def execute_cell(job: CellJob, lookup: bool = True) -> CellResult:
    """Run one cell (or, when `lookup`, take a stored failure from the cache); every failure becomes an
    `error` cell, so one broken cell never stops the matrix. The verdict is derived from the numbers."""
    import gc

    from verify.cache import Cache, CacheStats

    start = time.perf_counter()
    RAN_ON.clear()
    cache = Cache(Path(job.cache_dir)) if job.cache_dir else None
    if lookup:
        stored, found = lookup_cell(job, CacheStats())
        if stored is not None:
            return stored
        job = replace(job, found=found)
    result = _blank(job)
    try:
        result = _run_detector(job) if is_detector_cell(job.request) else _run_and_store(job, cache, start)
    except VerifyError as exc:
        _reraise_interrupt(exc)
        result.error, result.verdict = _user_stream(job, exc) or str(exc), ERROR  # even after a verdict: never a pass
    except Exception as exc:  # a bug or an unforeseen failure: this cell fails, the others still run
        _reraise_interrupt(exc)
        lines = str(exc).strip().splitlines() or [""]
        result.error = _user_stream(job, exc) or f"unexpected {type(exc).__name__}: {lines[-1]}"
        result.verdict = ERROR
    gc.collect()
    result.seconds = round(time.perf_counter() - start, 3)
    result.cache_stats = cache.stats.to_dict() if cache is not None else {}
    result.worker = {"pid": os.getpid(), "threads": _torch_threads(), "peak_rss_mib": _peak_rss_mib()}
    if RAN_ON - {result.worker["threads"]}:  # part of the cell ran on fewer threads, beside a background export
        result.worker["threads_beside_export"] = min(RAN_ON)
    result.shard = job.shard
    return result


def _user_stream(job: CellJob, exc: BaseException) -> str | None:
    """A `--model` cell whose code closed or replaced its worker's stdout or stderr, said as that (review 39: torch's
    own advice, "export with --static", was not the cause)."""
    if not job.request.spec.runs_user_code:
        return None
    from verify.pipeline.isolation import stream_trouble_message

    return stream_trouble_message(exc, "your model's code")


def _run_detector(job: CellJob) -> CellResult:
    """A detector cell's files in the cell's folder, which a killed worker's cleanup removes (workers.py)."""
    with tempfile.TemporaryDirectory(prefix=f"{CELL_FOLDER_PREFIX}{os.getpid()}-") as folder:
        return run_detector_cell(job, Path(folder))


def _run_and_store(job: CellJob, cache: Cache | None, start: float) -> CellResult:
    """Run the cell's stages, judge the pairs again from the numbers they wrote, and store the result."""

    from verify.pipeline.stages import run_cell

    plan, key = _result_key(job, cache)
    with tempfile.TemporaryDirectory(prefix=f"{CELL_FOLDER_PREFIX}{os.getpid()}-") as folder:
        outcome = run_cell(job.request, Path(folder), cache, plan=plan)
    report = outcome.report
    result = CellResult(
        job.id, *job.request.spec.row, AGREE if report.passed else DISAGREE,
        pairs=[p.to_dict() for p in report.pairs], noise_floor=report.floor_dict(),
        runs=[vars(r) for r in report.runs], notes=list(report.notes), input=report.input,
        computed_seconds=round(time.perf_counter() - start, 3),
        cache={"result": RERUN if job.found else MISS if key else OFF, **outcome.cache},
        problems=[str(p) for p in getattr(report, "problems", [])], trust=dict(report.trust))
    judged = judge_cell(result, job.request.settings.tolerance, len(plan.runtimes))
    if result.verdict == DISAGREE:  # the arrays' own verdict is the finer one, kept with its reason
        judged = kept_disagreement(judged, [f"{pair.a} vs {pair.b}" for pair in report.pairs if not pair.passed]
                                   + [f"layers of {check.candidate}" for check in getattr(report, "layers", [])
                                      if not check.passed])
    if cache is not None and key is not None:
        cache.store("result", key, data=judged.cached_copy())
    return judged


def _reraise_interrupt(exc: BaseException) -> None:
    """A Ctrl-C or SIGTERM that a library wrapped in its own error stops the matrix, not only this cell."""
    from exporter.errors import interrupt_in

    stop = interrupt_in(exc)
    if stop is not None:
        raise stop


def _torch_threads() -> int | None:
    import sys

    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


CELL_FOLDER_PREFIX = "verify-matrix-"
"""A cell's temporary folder: `verify-matrix-<worker pid>-...` in the system's temporary folder."""
