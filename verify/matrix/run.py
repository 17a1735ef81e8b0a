"""`verify matrix`: the plan (every cell checked before any work), then each cell in this process or in
workers, each result judged again here."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.errors import UsageError
from verify.matrix.cell import CellJob, execute_cell, lookup_cell
from verify.matrix.detector_judging import judge_result
from verify.matrix.detectors import detector_formats, is_detector_cell
from verify.matrix.judging import kept_disagreement
from verify.matrix.merge import runtime_count
from verify.matrix.request import MatrixRequest, cell_id, fingerprint
from verify.matrix.result import DISAGREE, CellResult, MatrixResult, verify_identity
from verify.matrix.shards import assign_shards, cell_cost
from verify.matrix.workers import run_in_workers
from verify.pipeline.isolation import USER_CODE_TIMEOUT
from verify.pipeline.stages import HIT, CellRequest

if TYPE_CHECKING:
    from verify.judge.compare import Tolerance


USER_MODEL_TIMEOUT_S = USER_CODE_TIMEOUT
"""A user model's cell is stopped after this long unless --timeout says otherwise (its code may hang)."""


@dataclass
class MatrixPlan:
    request: MatrixRequest
    cells: list[CellRequest]
    ids: list[str]
    costs: list[float]
    selected: list[int]
    """Indices into `cells` this run executes (its shard, or all)."""
    shard: tuple[int, int] | None
    settings: dict[str, Any]
    fingerprint: str


def plan_matrix(request: MatrixRequest, shard: tuple[int, int] | None = None) -> MatrixPlan:
    """Every cell checked (names, options, runtimes against formats, the input) before any work."""
    from verify.pipeline.stages import plan_cell

    cells = request.cells()
    shared = [cell for cell in cells if not is_detector_cell(cell)]
    if shared:
        plan_cell(shared[0])  # the options all cells share; specs were checked by MatrixRequest.create
    ids = [cell_id(c) for c in cells]
    costs = [cell_cost(c) for c in cells]
    selected = list(range(len(cells)))
    if shard is not None:
        owner = assign_shards(ids, costs, shard[1])
        selected = [i for i in selected if owner[i] == shard[0]]
    refuse_key_beside_user_code([cells[i] for i in selected])
    settings = request.settings_dict()
    return MatrixPlan(request, cells, ids, costs, selected, shard, settings, fingerprint(settings, ids))


def refuse_key_beside_user_code(cells: list[CellRequest]) -> None:
    """A run whose cells run a user's code is refused while $BACKBONE_VERIFY_REPORT_KEY is set (review 37): that code
    runs as this job's user and reads the key (its worker's environment, /proc/<pid>/environ of this process), so it
    could sign a report of passes nobody earned, as `--sign-key` is refused with `--model` for a folder."""
    import os

    from verify.matrix.result import REPORT_KEY_ENV

    users = [str(cell.spec) for cell in cells if cell.spec.runs_user_code]
    if users and os.environ.get(REPORT_KEY_ENV):
        raise UsageError(f"${REPORT_KEY_ENV} is set and this run runs your code ({users[0]}), which could read the "
                         "key and sign a report it did not earn; run --model cells in a job without the key (their "
                         "shards then merge unsigned)")


CellDone = Callable[[CellResult, float], None]


def run_matrix(request: MatrixRequest, jobs: int = 1, shard: tuple[int, int] | None = None,
               cache_dir: Path | None = None, on_start: Callable[[MatrixPlan], None] | None = None,
               on_done: CellDone | None = None, timeout: float | None = None) -> MatrixResult:
    """Run the matrix (or one shard of it) with `jobs` worker processes; `cache_dir` None runs uncached.
    A user model's cell always runs in a worker of its own, stopped after `timeout` seconds
    (USER_MODEL_TIMEOUT_S unless given); `timeout` also bounds every cell run in a worker.
    `on_done(cell, cost)` is called as each cell finishes (for a progress display)."""
    if timeout is not None:  # before any cell: a timeout that is no number, or never ends, is refused
        from verify.bounds import require_number

        require_number("timeout", timeout, 0.0, low_open=True)
    start = time.perf_counter()
    plan = plan_matrix(request, shard)
    if on_start is not None:
        on_start(plan)
    work = [CellJob(plan.cells[i], plan.ids[i], str(cache_dir) if cache_dir else None, shard[0] if shard else None,
                    timeout=_timeout_for(plan.cells[i], timeout)) for i in plan.selected]
    cost = {plan.ids[i]: plan.costs[i] for i in plan.selected}
    jobs = max(1, int(jobs))
    results: dict[str, CellResult] = {}

    def finish(cell: CellResult) -> None:
        results[cell.id] = cell
        if on_done is not None:
            on_done(cell, cost[cell.id])

    from verify.cache import CacheStats
    from verify.report import versions

    lookups = CacheStats()
    pending = []
    for job in work:  # stored failures first, in this process: they need no worker
        cached, found = lookup_cell(job, lookups)
        if cached is not None:
            finish(cached)
        else:
            pending.append(replace(job, found=found))
    isolated = [job for job in pending if jobs > 1 or job.timeout is not None or job.request.spec.runs_user_code]
    for job in pending:
        if job not in isolated:
            finish(execute_cell(job, lookup=False))
    if isolated:
        run_in_workers(isolated, min(jobs, len(isolated)), finish)
    stats = CacheStats()
    stats.add(lookups)
    for cell in results.values():
        if cell.cache.get("result") != HIT:  # a hit's lookup is already in `lookups`
            stats.add(cell.cache_stats)
    tolerance = request.settings.tolerance
    kinds = {job.id: _judged_as(job.request) for job in work}
    # what the merge holds each backbone or user-model cell to: a result missing a run never agrees
    runs = runtime_count(plan.settings) if any(kind is None for kind in kinds.values()) else None
    return MatrixResult(
        settings=plan.settings, fingerprint=plan.fingerprint,
        matrix=[{"id": i, "spec": str(c.spec)} for i, c in zip(plan.ids, plan.cells)],
        cells=[_final(results[job.id], tolerance, kinds[job.id], runs) for job in work],
        shard={"index": shard[0], "count": shard[1]} if shard else None,
        versions={**versions(), **verify_identity()}, seconds=round(time.perf_counter() - start, 3), jobs=jobs,
        cache={"dir": str(cache_dir) if cache_dir else None, **stats.to_dict()},
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


def _timeout_for(request: CellRequest, timeout: float | None) -> float | None:
    if timeout is not None:
        return float(timeout)
    return USER_MODEL_TIMEOUT_S if request.spec.runs_user_code else None


def _judged_as(request: CellRequest) -> tuple[tuple[str, ...], int] | None:
    """A detector cell's formats and image count (what judging it again holds it to); None for other cells."""
    return (detector_formats(request.export.formats), request.spec.shape[0]) if is_detector_cell(request) else None


def _final(cell: CellResult, tolerance: Tolerance, detector: tuple[tuple[str, ...], int] | None,
           runs: int | None = None) -> CellResult:
    """What the run reports: every cell judged again here, whichever process computed it (a worker's
    result is data that came over a pipe), held to the `runs` its settings choose (as `verify matrix merge` holds
    it); a disagreement already found is never undone."""
    judged = judge_result(cell, tolerance, detector, runs)
    return kept_disagreement(judged, [str(p) for p in cell.problems] if isinstance(cell.problems, list) else []) \
        if cell.verdict == DISAGREE else judged
