"""The matrix: backbone x norm x view cells from the registries (and the user's own models, `--model`), each
a pipeline cell (verify/pipeline.py),
run in worker processes, cached, split into balanced shards for CI and merged back. Results are data
(`MatrixResult`, `CellResult`); verify/render draws them as a table, JSON, JUnit, Markdown and HTML."""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.errors import UsageError, VerifyError
from exporter.spec import ModelSpec
from verify.pipeline import HIT, MISS, OFF, CellRequest, is_user_model

if TYPE_CHECKING:
    from exporter.export import ExportOptions
    from verify.api import RunSettings
    from verify.cache import Cache, CacheStats
    from verify.compare import PairResult
    from verify.pipeline import CellPlan

SCHEMA = "backbone-verify/matrix"
SCHEMA_VERSION = 1
DEFAULT_VIEW = "body"
AGREE, DISAGREE, ERROR = "agree", "disagree", "error"
USER_MODEL_PARAMS_M = 25.0
"""A user model's size in the cost model: unknown without running the user's code, counted as a resnet50."""
PARAMS_M = {"resnet18": 11.7, "resnet34": 21.8, "resnet50": 25.6, "resnet101": 44.5, "resnet152": 60.2,
            "resnext50_32x4d": 25.0, "wide_resnet50_2": 68.9}
"""Parameters (millions) of torchvision's builders, the size in the cost model; a backbone registered
later is counted on the meta device (no memory, no weights)."""


# The request ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MatrixRequest:
    backbones: tuple[str, ...]
    norms: tuple[str, ...]
    views: tuple[str, ...]
    settings: RunSettings
    export: ExportOptions
    runtimes: tuple[str, ...] | None = None
    models: tuple[str, ...] = ()
    """The user's own models (`file.py:factory` or `package.module:factory`), one row each after the backbones."""

    @classmethod
    def create(cls, backbones: Sequence[str] | None = None, norms: Sequence[str] | None = None,
               views: Sequence[str] | None = None, settings: RunSettings | None = None,
               export: ExportOptions | None = None, runtimes: Sequence[str] | None = None,
               models: Sequence[str] | None = None) -> MatrixRequest:
        """Every registered backbone x norm and the body view unless chosen (none when only --model is given),
        and each of `models`; names and model sources checked here, nothing imported."""
        from exporter.backbones import BACKBONES, VIEWS
        from exporter.norms import NORMS
        from exporter.user_model import UserModelSpec
        from verify.api import RunSettings
        from verify.runtimes import RUNTIMES

        users = tuple(str(UserModelSpec.parse(text)) for text in dict.fromkeys(models or ()))
        every = () if users and not backbones else BACKBONES.names()
        chosen = (tuple(dict.fromkeys(backbones or every)), tuple(dict.fromkeys(norms or NORMS.names())),
                  tuple(dict.fromkeys(views or (DEFAULT_VIEW,))))
        for registry, names in zip((BACKBONES, NORMS, VIEWS), chosen):
            for name in names:
                registry.get(name)
        for name in runtimes or ():
            RUNTIMES.get(name)
        from verify.pipeline import export_for

        settings = settings or RunSettings()
        return cls(*chosen, settings, export or export_for(runtimes, settings.runtime.device),
                   tuple(dict.fromkeys(runtimes)) if runtimes else None, users)

    def cells(self) -> list[CellRequest]:
        """Backbone-major, then norm, then view: the order of the table's rows; then the user's models."""
        from exporter.user_model import UserModelSpec

        return [CellRequest(ModelSpec(b, n, v), self.settings, self.export, self.runtimes)
                for b in self.backbones for n in self.norms for v in self.views] + \
            [CellRequest(UserModelSpec.parse(m), self.settings, self.export, self.runtimes) for m in self.models]

    def settings_dict(self) -> dict[str, Any]:
        """What every cell shares, as plain data (recorded in each report; part of the fingerprint)."""
        from verify.cache import canonical

        return {"backbones": list(self.backbones), "norms": list(self.norms), "views": list(self.views),
                "models": list(self.models),
                "run": canonical(self.settings), "export": self.export.to_dict(),
                "runtimes": list(self.runtimes) if self.runtimes else None,
                "tolerance_text": self.settings.tolerance.describe()}


def cell_id(request: CellRequest) -> str:
    """Stable across runs and machines: the spec's slug and a hash of everything the cell is asked to do."""
    from verify.cache import digest
    from verify.pipeline import request_dict

    return f"{request.spec.slug}-{digest(request_dict(request))[:10]}"


def fingerprint(settings: dict[str, Any], ids: Sequence[str]) -> str:
    """Identifies one matrix: its settings and its cells. Shards merge only when theirs are equal."""
    from verify.cache import digest

    return digest({"settings": settings, "cells": list(ids)})[:16]


# Cost model and shards ------------------------------------------------------------------------
def backbone_params(name: str) -> float:
    if name in PARAMS_M:
        return PARAMS_M[name]
    import torch
    from torch import nn

    from exporter.backbones import get_backbone_builder

    with torch.device("meta"):
        model = get_backbone_builder(name)(norm_layer=nn.BatchNorm2d)
    return sum(p.numel() for p in model.parameters()) / 1e6


def cell_cost(request: CellRequest) -> float:
    """Expected relative cost: building, exporting (each format) and running all grow with the
    backbone's size. Only the ordering matters (shards, ETA), not the unit."""
    size = USER_MODEL_PARAMS_M if is_user_model(request.spec) else backbone_params(request.spec.backbone)
    return size * (2 + len(request.export.formats))


def assign_shards(ids: Sequence[str], costs: Sequence[float], count: int) -> list[int]:
    """Greedy longest-processing-time: the costliest cell first, each to the least-loaded shard; ties
    broken by cell id and shard number, so every shard job computes the same split. 1-based."""
    loads = [0.0] * count
    shard = [0] * len(ids)
    for index in sorted(range(len(ids)), key=lambda i: (-costs[i], ids[i])):
        target = min(range(count), key=lambda s: (loads[s], s))
        loads[target] += costs[index]
        shard[index] = target + 1
    return shard


def parse_shard(text: str) -> tuple[int, int]:
    """`I/N` with 1 <= I <= N."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise UsageError(f"Bad --shard {text!r}; expected I/N, e.g. 1/4") from None
    if count < 1 or not 1 <= index <= count:
        raise UsageError(f"Bad --shard {text!r}; I must be between 1 and N, e.g. 1/4")
    return index, count


# Results --------------------------------------------------------------------------------------
@dataclass
class CellResult:
    id: str
    backbone: str
    norm: str
    view: str
    verdict: str
    """agree, disagree or error."""
    pairs: list[dict[str, Any]] = field(default_factory=list)
    """Each pair as `verify export --json` writes it (a, b, kind, passed, outputs)."""
    noise_floor: dict[str, Any] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    input: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    """Wall time in this run (a cached cell: the lookup)."""
    computed_seconds: float = 0.0
    """Wall time when the result was computed."""
    cache: dict[str, str] = field(default_factory=dict)
    """Stage -> hit / miss / off (`result`, `weights`, `export:<format>`)."""
    cache_stats: dict[str, dict[str, int]] = field(default_factory=dict)
    worker: dict[str, Any] = field(default_factory=dict)
    """pid, torch threads and the worker's peak RSS (MiB) after this cell."""
    shard: int | None = None

    VOLATILE = ("seconds", "cache", "cache_stats", "worker", "shard")
    """Fields that describe this run, not the result (left out of the cached copy)."""

    @property
    def spec(self) -> str:
        """backbone:norm:view, or a user model's source:factory (its row has no norm or view)."""
        return f"{self.backbone}:{self.norm}:{self.view}" if self.norm else self.backbone

    @property
    def passed(self) -> bool:
        return self.verdict == AGREE

    def pair_results(self) -> list[PairResult]:
        return [pair_from_dict(p) for p in self.pairs]

    @property
    def worst_ratio(self) -> float | None:
        ratios = [p.worst.ratio for p in self.pair_results() if p.outputs and p.worst.ratio is not None]
        return max(ratios) if ratios else None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "backbone": self.backbone, "norm": self.norm, "view": self.view,
                "spec": self.spec, "verdict": self.verdict, "passed": self.passed, "error": self.error,
                "worst_ratio": self.worst_ratio, "pairs": self.pairs, "noise_floor": self.noise_floor,
                "runs": self.runs, "notes": self.notes, "input": self.input, "seconds": self.seconds,
                "computed_seconds": self.computed_seconds, "cache": self.cache, "cache_stats": self.cache_stats,
                "worker": self.worker, "shard": self.shard}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CellResult:
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def cached_copy(self) -> dict[str, Any]:
        return {k: v for k, v in self.to_dict().items() if k not in self.VOLATILE}


def pair_from_dict(data: dict[str, Any]) -> PairResult:
    """A pair as written to JSON, back to the comparator's result (so `worst` is decided one way)."""
    from verify.compare import OutputComparison, PairResult

    fields = set(OutputComparison.__dataclass_fields__)
    outputs = [OutputComparison(**{k: v for k, v in o.items() if k in fields}) for o in data.get("outputs", [])]
    return PairResult(data["a"], data["b"], outputs, data.get("kind", "runtime"))


def pair_name(pair: PairResult | dict[str, Any]) -> str:
    a, b = (pair["a"], pair["b"]) if isinstance(pair, dict) else (pair.a, pair.b)
    return f"{a} vs {b}"


@dataclass
class MatrixResult:
    settings: dict[str, Any]
    fingerprint: str
    matrix: list[dict[str, str]]
    """Every cell of the matrix ({id, spec}) in row order, including those other shards run."""
    cells: list[CellResult] = field(default_factory=list)
    shard: dict[str, int] | None = None
    """{index, count} for a shard report; None for a whole or merged one."""
    merged: list[dict[str, Any]] = field(default_factory=list)
    """For a merged report: each shard's index, count, seconds and jobs."""
    versions: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    jobs: int = 1
    cache: dict[str, Any] = field(default_factory=dict)
    """dir, and hits / misses / corrupt / stores per kind."""
    created: str = ""

    @property
    def factor(self) -> float:
        from verify.compare import AUTO_FACTOR

        return float(self.settings.get("run", {}).get("tolerance", {}).get("factor") or AUTO_FACTOR)

    @property
    def counts(self) -> dict[str, int]:
        return {v: sum(c.verdict == v for c in self.cells) for v in (AGREE, DISAGREE, ERROR)}

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.cells)

    @property
    def exit_code(self) -> int:
        counts = self.counts
        return 2 if counts[ERROR] else 1 if counts[DISAGREE] else 0

    def pair_columns(self) -> list[str]:
        """Every pair name in order of first appearance, runtime pairs before each run vs the oracle."""
        return [name for name, _, _ in self.pair_sides()]

    def pair_sides(self) -> list[tuple[str, str, str]]:
        """(name, a, b) for every column of the matrix."""
        seen: dict[str, tuple[int, str, str]] = {}
        for cell in self.cells:
            for pair in cell.pairs:
                seen.setdefault(pair_name(pair), (int(pair.get("kind") == "oracle"), pair["a"], pair["b"]))
        ordered = sorted(seen, key=lambda name: seen[name][0])  # stable: first-seen order within a kind
        return [(name, seen[name][1], seen[name][2]) for name in ordered]

    def summary(self) -> str:
        counts = self.counts
        head = f"{counts[AGREE]} of {len(self.cells)} cells agree"
        extra = [f"{counts[DISAGREE]} disagree"] if counts[DISAGREE] else []
        extra += [f"{counts[ERROR]} failed to run"] if counts[ERROR] else []
        where = f" (shard {self.shard['index']}/{self.shard['count']} of {len(self.matrix)})" if self.shard else ""
        return head + (", " + ", ".join(extra) if extra else "") + where

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "command": "matrix",
                "passed": self.passed, "exit_code": self.exit_code, "summary": self.summary(),
                "counts": self.counts, "fingerprint": self.fingerprint, "shard": self.shard, "merged": self.merged,
                "settings": self.settings, "matrix": self.matrix, "pair_columns": self.pair_columns(),
                "cells": [c.to_dict() for c in self.cells], "versions": self.versions, "seconds": self.seconds,
                "jobs": self.jobs, "cache": self.cache, "created": self.created}

    @classmethod
    def from_dict(cls, data: Any, source: object = "report") -> MatrixResult:
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise UsageError(f"{source} is not a `verify matrix --json` report (no schema {SCHEMA!r})")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise UsageError(f"{source} has matrix schema version {data.get('schema_version')}; this verify "
                             f"reads version {SCHEMA_VERSION}: rerun the shards with the same verify")
        try:
            return cls(settings=data["settings"], fingerprint=data["fingerprint"], matrix=list(data["matrix"]),
                       cells=[CellResult.from_dict(c) for c in data["cells"]], shard=data.get("shard"),
                       merged=list(data.get("merged") or []), versions=dict(data.get("versions") or {}),
                       seconds=float(data.get("seconds") or 0.0), jobs=int(data.get("jobs") or 1),
                       cache=dict(data.get("cache") or {}), created=str(data.get("created") or ""))
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"{source} is a malformed matrix report ({type(exc).__name__}: {exc})") from None


def load_result(path: Path) -> MatrixResult:
    import json

    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"Report {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"Cannot read {path} as JSON: {exc}") from None
    return MatrixResult.from_dict(data, path)


# Running --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CellJob:
    request: CellRequest
    id: str
    cache_dir: str | None
    shard: int | None = None


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
    from verify.pipeline import plan_cell

    cells = request.cells()
    if cells:
        plan_cell(cells[0])  # the options all cells share; specs were checked by MatrixRequest.create
    ids = [cell_id(c) for c in cells]
    costs = [cell_cost(c) for c in cells]
    selected = list(range(len(cells)))
    if shard is not None:
        owner = assign_shards(ids, costs, shard[1])
        selected = [i for i in selected if owner[i] == shard[0]]
    settings = request.settings_dict()
    return MatrixPlan(request, cells, ids, costs, selected, shard, settings, fingerprint(settings, ids))


def worker_threads(jobs: int) -> int:
    """Torch threads per worker so that `jobs` workers share the cores without oversubscribing them."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, jobs))


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _peak_rss_mib() -> float:
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def _result_key(job: CellJob, cache: Cache | None) -> tuple[CellPlan, str | None]:
    from verify.pipeline import plan_cell, request_content

    plan = plan_cell(job.request)
    content = request_content(job.request, plan) if cache is not None else None
    return plan, (cache.key("result", content) if cache is not None and content is not None else None)


def row(spec: Any) -> tuple[str, str, str]:
    """A cell's row: (backbone, norm, view); a user model is (source:factory, "", "")."""
    return (str(spec), "", "") if is_user_model(spec) else (spec.backbone, spec.norm, spec.view)


def _blank(job: CellJob) -> CellResult:
    return CellResult(job.id, *row(job.request.spec), ERROR, shard=job.shard)


def lookup_cell(job: CellJob, stats: CacheStats) -> CellResult | None:
    """The cell's result from the cache, without running anything (and without importing torch)."""
    from verify.cache import Cache

    if not job.cache_dir:
        return None
    start = time.perf_counter()
    cache = Cache(Path(job.cache_dir))
    try:
        _, key = _result_key(job, cache)
        entry = cache.load("result", key) if key is not None else None
    except VerifyError:
        entry = None  # the cell itself will fail and say why
    stats.add(cache.stats)
    if entry is None:
        return None
    result = replace(CellResult.from_dict(entry.data), id=job.id, cache={"result": HIT}, shard=job.shard,
                     cache_stats=cache.stats.to_dict(), worker={"pid": os.getpid(), "peak_rss_mib": _peak_rss_mib()})
    result.seconds = round(time.perf_counter() - start, 3)
    return result


def execute_cell(job: CellJob, lookup: bool = True) -> CellResult:
    """Run one cell (or take its result from the cache when `lookup`); every failure becomes an
    `error` cell, so one broken cell never stops the matrix."""
    import gc
    import tempfile

    from verify.cache import Cache
    from verify.pipeline import run_cell

    start = time.perf_counter()
    cache = Cache(Path(job.cache_dir)) if job.cache_dir else None
    result = _blank(job)
    try:
        plan, key = _result_key(job, cache)
        entry = cache.load("result", key) if lookup and cache is not None and key is not None else None
        if entry is not None:
            result = replace(CellResult.from_dict(entry.data), id=job.id, cache={"result": HIT})
        else:
            with tempfile.TemporaryDirectory(prefix="verify-matrix-") as folder:
                outcome = run_cell(job.request, Path(folder), cache, plan=plan)
            report = outcome.report
            result = CellResult(
                job.id, *row(job.request.spec), AGREE if report.passed else DISAGREE,
                pairs=[p.to_dict() for p in report.pairs],
                noise_floor=report.floor_dict(),
                runs=[vars(r) for r in report.runs], notes=list(report.notes), input=report.input,
                computed_seconds=round(time.perf_counter() - start, 3),
                cache={"result": MISS if key else OFF, **outcome.cache})
            if cache is not None and key is not None:
                cache.store("result", key, data=result.cached_copy())
            del outcome
    except VerifyError as exc:
        _reraise_interrupt(exc)
        result.error, result.verdict = str(exc), ERROR  # even after a verdict was reached: never a pass
    except Exception as exc:  # a bug or an unforeseen failure: this cell fails, the others still run
        _reraise_interrupt(exc)
        lines = str(exc).strip().splitlines() or [""]
        result.error, result.verdict = f"unexpected {type(exc).__name__}: {lines[-1]}", ERROR
    _release_memory(cache is not None)
    gc.collect()
    result.seconds = round(time.perf_counter() - start, 3)
    result.cache_stats = cache.stats.to_dict() if cache is not None else {}
    result.worker = {"pid": os.getpid(), "threads": _torch_threads(), "peak_rss_mib": _peak_rss_mib()}
    result.shard = job.shard
    return result


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


def _release_memory(cached: bool) -> None:
    """With the disk cache on, the next cell reads weights from it: drop the in-memory copies so a
    worker holds one cell's model at a time."""
    if cached:
        from exporter import weights

        clear = getattr(getattr(weights, "_synthetic_state_dict", None), "cache_clear", None)
        if clear is not None:
            clear()


CellDone = Callable[[CellResult, float], None]


def run_matrix(request: MatrixRequest, jobs: int = 1, shard: tuple[int, int] | None = None,
               cache_dir: Path | None = None, on_start: Callable[[MatrixPlan], None] | None = None,
               on_done: CellDone | None = None) -> MatrixResult:
    """Run the matrix (or one shard of it) with `jobs` worker processes; `cache_dir` None runs uncached.
    `on_done(cell, cost)` is called as each cell finishes (for a progress display)."""
    start = time.perf_counter()
    plan = plan_matrix(request, shard)
    if on_start is not None:
        on_start(plan)
    work = [CellJob(plan.cells[i], plan.ids[i], str(cache_dir) if cache_dir else None, shard[0] if shard else None)
            for i in plan.selected]
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
    for job in work:  # cached cells first, in this process: a warm run starts no worker
        cached = lookup_cell(job, lookups)
        if cached is not None:
            finish(cached)
        else:
            pending.append(job)
    if len(pending) <= 1 or jobs == 1:
        for job in pending:
            finish(execute_cell(job, lookup=False))
    else:
        _run_parallel(pending, min(jobs, len(pending)), finish)
    stats = CacheStats()
    stats.add(lookups)
    for cell in results.values():
        if cell.cache.get("result") != HIT:  # a hit's lookup is already in `lookups`
            stats.add(cell.cache_stats)
    return MatrixResult(
        settings=plan.settings, fingerprint=plan.fingerprint,
        matrix=[{"id": i, "spec": str(c.spec)} for i, c in zip(plan.ids, plan.cells)],
        cells=[results[job.id] for job in work],
        shard={"index": shard[0], "count": shard[1]} if shard else None,
        versions=versions(), seconds=round(time.perf_counter() - start, 3), jobs=jobs,
        cache={"dir": str(cache_dir) if cache_dir else None, **stats.to_dict()},
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


def _run_parallel(work: list[CellJob], jobs: int, finish: Callable[[CellResult], None]) -> None:
    """One cell per worker at a time; workers are spawned (torch and fork do not mix) with the
    cores divided between them."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker,
                             initargs=(worker_threads(jobs),)) as pool:
        futures = {pool.submit(execute_cell, job, False): job for job in work}
        try:
            for future in as_completed(futures):
                job = futures[future]
                try:
                    finish(future.result())
                except BrokenProcessPool:
                    finish(CellResult(job.id, *row(job.request.spec), ERROR, shard=job.shard,
                                      error="the worker process died (killed, or out of memory); "
                                            "rerun with fewer --jobs"))
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


# Merging shards -------------------------------------------------------------------------------
def merge_results(reports: Sequence[MatrixResult], sources: Sequence[object] | None = None) -> MatrixResult:
    """Join shard reports of one matrix into its whole report; refuse reports of other matrices,
    settings or library versions, overlapping shards, and a set with a shard missing."""
    if not reports:
        raise UsageError("Give the shard reports to merge (verify matrix --shard I/N --json ...)")
    names = [str(s) for s in (sources or [f"report {i + 1}" for i in range(len(reports))])]
    first = reports[0]
    for name, report in zip(names, reports):
        if report.fingerprint != first.fingerprint:
            raise UsageError(f"{name} is from a different matrix or settings than {names[0]} (fingerprint "
                             f"{report.fingerprint} vs {first.fingerprint}); merge only shards of one run")
        if report.versions != first.versions:
            changed = sorted(k for k in {*report.versions, *first.versions}
                             if report.versions.get(k) != first.versions.get(k))
            raise UsageError(f"{name} ran with other library versions than {names[0]} ({', '.join(changed)}); "
                             "run every shard in the same environment")
    if any(r.shard is None for r in reports) and len(reports) > 1:
        raise UsageError("Only shard reports (--shard I/N) can be merged; a whole-matrix report is already whole")
    count = first.shard["count"] if first.shard else 1
    seen: dict[int, str] = {}
    for name, report in zip(names, reports):
        if report.shard is None:
            continue
        if report.shard["count"] != count:
            raise UsageError(f"{name} is shard {report.shard['index']}/{report.shard['count']}, the others are "
                             f"of {count}; merge shards of one split")
        if report.shard["index"] in seen:
            raise UsageError(f"{name} and {seen[report.shard['index']]} are both shard "
                             f"{report.shard['index']}/{count}; give each shard once")
        seen[report.shard["index"]] = name
    missing = [i for i in range(1, count + 1) if i not in seen] if first.shard else []
    if missing:
        raise UsageError(f"Shard{'s' if len(missing) > 1 else ''} {', '.join(f'{i}/{count}' for i in missing)} "
                         "missing; merge every shard's report")
    cells: dict[str, CellResult] = {}
    for name, report in zip(names, reports):
        for cell in report.cells:
            if cell.id in cells:
                raise UsageError(f"Cell {cell.spec} ({cell.id}) appears in more than one report ({name})")
            cells[cell.id] = cell
    order = [entry["id"] for entry in first.matrix]
    unknown = sorted(set(cells) - set(order))
    absent = [i for i in order if i not in cells]
    if unknown or absent:
        raise UsageError(f"The shards do not hold exactly the matrix's cells ({len(absent)} missing, "
                         f"{len(unknown)} unknown); rerun the missing shards")
    from verify.cache import CacheStats

    stats = CacheStats()
    for report in reports:
        stats.add(report.cache)
    return MatrixResult(
        settings=first.settings, fingerprint=first.fingerprint, matrix=first.matrix,
        cells=[cells[i] for i in order], shard=None,
        merged=[{"index": r.shard["index"] if r.shard else 1, "count": count, "seconds": r.seconds, "jobs": r.jobs,
                 "cells": len(r.cells)} for r in sorted(reports, key=lambda r: r.shard["index"] if r.shard else 1)],
        versions=first.versions, seconds=max(r.seconds for r in reports), jobs=max(r.jobs for r in reports),
        cache={"dir": None, **stats.to_dict()},
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
