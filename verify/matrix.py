"""The matrix: backbone x norm x view cells from the registries (and the user's own models, `--model`), each
a pipeline cell (verify/pipeline/stages.py),
run in worker processes, cached, split into balanced shards for CI and merged back. Results are data
(`MatrixResult`, `CellResult`); verify/render draws them as a table, JSON, JUnit, Markdown and HTML."""

from __future__ import annotations

import contextlib
import datetime
import hmac
import math
import os
import pickle
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.errors import UsageError, VerifyError
from exporter.spec import ModelSpec
from verify.judge.trust import evidence_problems
from verify.pipeline.isolation import USER_CODE_TIMEOUT, IsolatedRunError, safe_loads
from verify.pipeline.stages import HIT, MISS, OFF, CellRequest, is_user_model

if TYPE_CHECKING:
    from exporter.export import ExportOptions
    from verify.api import RunSettings
    from verify.cache import Cache, CacheStats
    from verify.judge.compare import OutputComparison, PairResult, Tolerance
    from verify.pipeline.stages import CellPlan

SCHEMA = "backbone-verify/matrix"
SCHEMA_VERSION = 1
DEFAULT_VIEW = "body"
AGREE, DISAGREE, ERROR = "agree", "disagree", "error"
RERUN = "rerun"
"""A cell's cache status when its stored result would pass: a pass is earned in this run, so it ran again."""
RELATIVE_SLACK = 1e-6
"""How far two stored figures that one computation links (ratio and max_abs / floor) may drift in JSON."""
USER_MODEL_TIMEOUT_S = USER_CODE_TIMEOUT
"""A user model's cell is stopped after this long unless --timeout says otherwise (its code may hang)."""
REPORT_KEY_ENV = "BACKBONE_VERIFY_REPORT_KEY"
"""A secret the shard jobs and the merge job share (a CI secret variable): with it set, every matrix report
carries an HMAC-SHA256 of its content, and `verify matrix merge` fails any report without a valid one.
Without it a merge checks that each report is consistent, not who wrote it."""
SHARD_ENV = ("CI_NODE_INDEX", "CI_NODE_TOTAL", "JOB_COMPLETION_INDEX")
"""The CI variables `--shard` falls back on: GitLab's parallel jobs (1-based index and total) and Kubernetes
indexed jobs (0-based index; the total from --shard-count)."""
USER_MODEL_PARAMS_M = 25.0
"""A user model's size in the cost model: unknown without running the user's code, counted as a resnet50."""
PARAMS_M = {"resnet18": 11.7, "resnet34": 21.8, "resnet50": 25.6, "resnet101": 44.5, "resnet152": 60.2,
            "resnext50_32x4d": 25.0, "wide_resnet50_2": 68.9}
"""Parameters (millions) of torchvision's builders, the size in the cost model; a backbone registered
later is counted on the meta device (no memory, no weights)."""


class MatrixFailure(VerifyError):
    """A check the matrix failed (a merge that cannot show every cell, judged): exit 1, not a usage error."""

    exit_code = 1


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
        from verify.pipeline.stages import export_for

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
    from verify.pipeline.stages import request_dict

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


def _env_int(environ: Mapping[str, str], name: str, low: int) -> int:
    text = environ[name].strip()
    if not text.isdigit() or int(text) < low:
        raise UsageError(f"Bad ${name} {environ[name]!r}; expected a whole number >= {low} (set by the CI, "
                         "or unset it and pass --shard I/N)")
    return int(text)


def resolve_shard(text: str | None, count: int | None, environ: Mapping[str, str]) -> tuple[int, int] | None:
    """The shard to run: --shard I/N, else GitLab's CI_NODE_INDEX/CI_NODE_TOTAL (1-based), else a Kubernetes
    indexed job's JOB_COMPLETION_INDEX (0-based) of --shard-count; None: the whole matrix."""
    if count is not None and count < 1:
        raise UsageError(f"Bad --shard-count {count}; expected a number of shards >= 1")
    if text:
        shard = parse_shard(text)
        if count is not None and count != shard[1]:
            raise UsageError(f"--shard {text} and --shard-count {count} disagree; give one of them")
        return shard
    if environ.get("CI_NODE_INDEX", "").strip():
        if not environ.get("CI_NODE_TOTAL", "").strip():
            raise UsageError("$CI_NODE_INDEX is set without $CI_NODE_TOTAL; pass --shard I/N")
        index, total = _env_int(environ, "CI_NODE_INDEX", 1), _env_int(environ, "CI_NODE_TOTAL", 1)
        if index > total or (count is not None and count != total):
            raise UsageError(f"$CI_NODE_INDEX {index} of $CI_NODE_TOTAL {total} is not a shard"
                             + (f" of --shard-count {count}" if count is not None else "") + "; pass --shard I/N")
        return index, total
    if environ.get("JOB_COMPLETION_INDEX", "").strip():
        if count is None:
            raise UsageError("$JOB_COMPLETION_INDEX is set (a Kubernetes indexed job): pass --shard-count with "
                             "the job's completions, or --shard I/N")
        index = _env_int(environ, "JOB_COMPLETION_INDEX", 0) + 1
        if index > count:
            raise UsageError(f"$JOB_COMPLETION_INDEX {index - 1} is past --shard-count {count} (indices run from "
                             f"0 to {count - 1}); set --shard-count to the job's completions")
        return index, count
    if count is not None and count > 1:
        raise UsageError(f"--shard-count {count} without a shard index: pass --shard I/{count}, or run it as a "
                         "GitLab parallel job or a Kubernetes indexed job")
    return None


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
    trust: dict[str, Any] = field(default_factory=dict)
    """The evidence of the determinism and floor-bound guards: the problems are re-derived from it."""
    problems: list[str] = field(default_factory=list)
    """Why the cell cannot agree whatever its pairs say: the run's own problems (not deterministic, a floor
    rounding cannot explain) and what re-judging its stored numbers found (see `judge_cell`)."""

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
                "worker": self.worker, "shard": self.shard, "problems": self.problems,
                "trust": self.trust}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CellResult:
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def cached_copy(self) -> dict[str, Any]:
        return {k: v for k, v in self.to_dict().items() if k not in self.VOLATILE}


def pair_from_dict(data: dict[str, Any]) -> PairResult:
    """A pair as written to JSON, back to the comparator's result (so `worst` is decided one way)."""
    from verify.judge.compare import OutputComparison, PairResult

    fields = set(OutputComparison.__dataclass_fields__)
    outputs = [OutputComparison(**{k: v for k, v in o.items() if k in fields}) for o in data.get("outputs", [])]
    return PairResult(data["a"], data["b"], outputs, data.get("kind", "runtime"))


def pair_name(pair: PairResult | Mapping[str, Any]) -> str:
    a, b = (pair.get("a"), pair.get("b")) if isinstance(pair, Mapping) else (pair.a, pair.b)
    return f"{a} vs {b}"


# Re-judging -----------------------------------------------------------------------------------
# A verdict is never read back: every cell's is derived again from its stored numbers under the tolerance
# of this run (a matrix run) or of the matrix the report claims to be (a merge). The stored `verdict` and
# `passed` fields are overwritten, so the table, JSON, JUnit, Markdown and HTML all show what was derived.
def tolerance_from(data: Any) -> Tolerance:
    """The tolerance recorded in a report's settings (`run.tolerance`)."""
    from verify.judge.compare import Tolerance

    if not isinstance(data, Mapping):
        raise MatrixFailure("The report records no tolerance (settings.run.tolerance); rerun the matrix")
    fields = set(Tolerance.__dataclass_fields__)
    try:
        return Tolerance(**{k: v for k, v in data.items() if k in fields})
    except (TypeError, VerifyError) as exc:
        raise MatrixFailure(f"The report's tolerance cannot judge anything ({exc}); rerun the matrix") from None


def _number(data: Mapping[str, Any], key: str, positive: bool = False) -> float | None:
    """A finite number (>= 0, or > 0 with `positive`), else None: a null, a string or a NaN judges nothing."""
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value) if (value > 0 if positive else value >= 0) else None


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= RELATIVE_SLACK * max(abs(a), abs(b))


def _shape_problem(output: Mapping[str, Any]) -> str | None:
    shape_a, shape_b, total = output.get("shape_a"), output.get("shape_b"), output.get("total")
    if not isinstance(shape_a, list) or shape_a != shape_b \
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape_b):
        return "shapes differ or are missing"
    if not isinstance(total, int) or isinstance(total, bool) or total != math.prod(shape_b) or total == 0:
        return f"element count {total!r} does not match the shape {shape_b}"
    if output.get("nonfinite") != 0:
        return "NaN or Inf elements (or no count of them)"
    return None


def _auto_problem(output: Mapping[str, Any], factor: float) -> str | None:
    """Auto mode: the worst channel's max |a-b| over its own floor, at most `factor`; the figures one
    computation links must agree (ratio >= max_abs / floor, and <= max_abs / the worst channel's floor)."""
    floor, ratio, max_abs = _number(output, "floor", True), _number(output, "ratio"), _number(output, "max_abs")
    if floor is None or ratio is None or max_abs is None:
        return "no floor, ratio or max |a-b| to judge by"
    output_ratio = max_abs / floor
    if ratio < output_ratio * (1 - RELATIVE_SLACK):
        return f"ratio {ratio:.3g} is below max |a-b| / floor = {output_ratio:.3g} (edited numbers)"
    if output.get("channel_floor") is None:
        if not _close(ratio, output_ratio):
            return f"ratio {ratio:.3g} is not max |a-b| / floor = {output_ratio:.3g} (edited numbers)"
    else:
        channel_floor = _number(output, "channel_floor", True)
        if channel_floor is None or channel_floor > floor * (1 + RELATIVE_SLACK) \
                or ratio > max_abs / channel_floor * (1 + RELATIVE_SLACK):
            return "the worst channel's floor contradicts the output's figures (edited numbers)"
    return None if ratio <= factor else f"{ratio:.3g}x the floor, over the factor {factor:g}"


def _explicit_problem(output: Mapping[str, Any], tolerance: Tolerance) -> str | None:
    """decimal: max |a-b| < 1.5 x 10^-decimal. allclose: max |a-b| <= atol, or the recorded least atol at this
    rtol within atol (what else the stored numbers cannot show fails: rerun the matrix)."""
    max_abs = _number(output, "max_abs")
    if max_abs is None:
        return "no max |a-b| to judge by"
    if tolerance.mode == "decimal":
        bound = 1.5 * 10.0 ** -(tolerance.decimal or 0)
        return None if max_abs < bound else f"max |a-b| {max_abs:.3g} is not below {bound:.1e}"
    if max_abs <= tolerance.atol:
        return None
    needed = str(output.get("needed") or "")
    head, _, rtol = needed.partition(" at rtol=")
    try:
        least = float(head.removeprefix("atol>="))
    except ValueError:
        least = math.inf
    if rtol == f"{tolerance.rtol:g}" and math.isfinite(least) and least <= tolerance.atol:
        return None
    return f"max |a-b| {max_abs:.3g} is not within rtol={tolerance.rtol:g}, atol={tolerance.atol:g}"


def judge_output(output: Any, tolerance: Tolerance) -> str | None:
    """Why a stored output comparison fails under `tolerance`, or None when its numbers pass."""
    if not isinstance(output, Mapping):
        return "not an output comparison"
    problem = _shape_problem(output)
    if problem is None:
        problem = _auto_problem(output, tolerance.factor) if tolerance.mode == "auto" \
            else _explicit_problem(output, tolerance)
    return problem


def _pair_key(pair: Mapping[str, Any]) -> tuple[str, frozenset[str]]:
    return str(pair.get("kind")), frozenset((str(pair.get("a")), str(pair.get("b"))))


def _pair_set_problem(cell: CellResult, tolerance: Tolerance, runtimes: int | None) -> str | None:
    """Every pair of runs, and each run against the oracle (required in auto mode), exactly once, each over
    the same outputs: a pair or output left out of a stored result cannot hide a failure."""
    if not cell.pairs:
        return "no pairs were judged"
    if not all(isinstance(p, Mapping) for p in cell.pairs) or not all(isinstance(r, Mapping) for r in cell.runs):
        return "malformed pairs or runs"
    labels = [str(run.get("label")) for run in cell.runs]
    if len(set(labels)) != len(labels) or (runtimes is not None and len(labels) != runtimes):
        return f"{len(labels)} runs recorded, {runtimes if runtimes is not None else 'distinct'} expected"
    keys = [_pair_key(p) for p in cell.pairs]
    runtime = {("runtime", frozenset((a, b))) for i, a in enumerate(labels) for b in labels[i + 1:]}
    oracle = {("oracle", frozenset((label, "oracle"))) for label in labels}
    has_oracle = tolerance.mode == "auto" or any(kind == "oracle" for kind, _ in keys)
    if len(set(keys)) != len(keys) or set(keys) != runtime | (oracle if has_oracle else set()):
        return "the pairs are not every pair of its runs" + (" and the oracle" if has_oracle else "")
    names = [tuple(sorted(str(o.get("name")) if isinstance(o, Mapping) else "" for o in p.get("outputs") or []))
             for p in cell.pairs]
    if not names[0] or any(n != names[0] for n in names) or len(set(names[0])) != len(names[0]):
        return "its pairs do not all compare the same outputs"
    return None


FLOAT_FIELDS = ("max_abs", "max_rel", "mean_abs", "worst_a", "worst_b", "floor", "ratio", "channel_floor",
                "output_ratio", "float32_ratio", "allowed")
INT_FIELDS = ("mismatched", "nonfinite", "total")


def _comparison(output: Mapping[str, Any], passed: bool) -> OutputComparison:
    """A stored output as the comparator's result, every field of its type (anything else dropped), with
    `passed` as judged here: what every renderer reads, so none of them sees a stored verdict."""
    from verify.judge.compare import OutputComparison
    from verify.judge.precision import EPS

    def number(key: str) -> float | None:
        value = output.get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
            and math.isfinite(value) else None

    def integers(key: str) -> list[int] | None:
        value = output.get(key)
        return list(value) if isinstance(value, list) and all(
            isinstance(i, int) and not isinstance(i, bool) for i in value) else None

    ints = {key: value if isinstance(value := output.get(key), int) and not isinstance(value, bool) else 0
            for key in INT_FIELDS}
    channel = output.get("channel")
    return OutputComparison(
        name=str(output.get("name")), shape_a=integers("shape_a") or [], shape_b=integers("shape_b") or [],
        passed=passed, reason=str(output.get("reason") or ""), worst_index=integers("worst_index"),
        channel=channel if isinstance(channel, int) and not isinstance(channel, bool) else None,
        precision=output.get("precision") if output.get("precision") in EPS else "fp32",
        needed=str(output.get("needed") or ""), **ints, **{key: number(key) for key in FLOAT_FIELDS})


def judge_pair(pair: Mapping[str, Any], tolerance: Tolerance) -> tuple[dict[str, Any], list[str]]:
    """The pair rebuilt from its numbers with `passed` (its own and each output's) derived under
    `tolerance`, and why it fails."""
    from verify.judge.compare import PairResult

    stored = pair.get("outputs")
    outputs, reasons = [], []
    for output in stored if isinstance(stored, list) else []:
        problem = judge_output(output, tolerance)
        if not isinstance(output, Mapping):
            reasons.append(f"{pair_name(pair)}: {problem}")
            continue
        outputs.append(_comparison(output, problem is None))
        if problem is not None:
            reasons.append(f"{pair_name(pair)} {output.get('name')}: {problem}")
    kind = "oracle" if pair.get("kind") == "oracle" else "runtime" if pair.get("kind") == "runtime" else "?"
    judged = PairResult(str(pair.get("a")), str(pair.get("b")), outputs, kind).to_dict()
    judged["passed"] = bool(outputs) and not reasons
    return judged, reasons if outputs else reasons + [f"{pair_name(pair)}: no outputs were compared"]


def judge_cell(cell: CellResult, tolerance: Tolerance, runtimes: int | None = None) -> CellResult:
    """The cell with its verdict derived from its numbers under `tolerance` (its stored verdict is not read):
    error when it failed to run, agree only when its pairs are complete, each passes, and no problem stands."""
    error = None if cell.error is None else (str(cell.error) or "the cell failed to run")
    pairs, reasons = [], []
    for pair in cell.pairs if isinstance(cell.pairs, list) else []:
        if not isinstance(pair, Mapping):
            reasons.append(f"a pair that is not a comparison ({type(pair).__name__})")
            continue
        judged, why = judge_pair(pair, tolerance)
        pairs.append(judged)
        reasons += why
    own = [str(p) for p in cell.problems if not str(p).startswith(JUDGED)] \
        if isinstance(cell.problems, list) else ["malformed problems"]
    structure = _pair_set_problem(replace(cell, pairs=pairs), tolerance, runtimes) \
        if isinstance(cell.pairs, list) and isinstance(cell.runs, list) else "malformed pairs or runs"
    guards = [] if error else evidence_problems(cell.trust)  # re-derived: an emptied `problems` list hides nothing
    found = own + [f"{JUDGED}{text}" for text in ([structure] if structure else []) + reasons + guards
                   if f"{JUDGED}{text}" not in own]
    verdict = ERROR if error else DISAGREE if found else AGREE
    return replace(cell, pairs=pairs, verdict=verdict, error=error, problems=found)


JUDGED = "re-judged: "
"""Marks the problems `judge_cell` found, so judging a judged cell again finds the same, not twice."""


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
    authentic: bool | None = None
    """Read back with $BACKBONE_VERIFY_REPORT_KEY set: whether its HMAC holds (None: no key to check with)."""

    @property
    def factor(self) -> float:
        from verify.judge.compare import AUTO_FACTOR

        return float(self.settings.get("run", {}).get("tolerance", {}).get("factor") or AUTO_FACTOR)

    @property
    def counts(self) -> dict[str, int]:
        return {v: sum(c.verdict == v for c in self.cells) for v in (AGREE, DISAGREE, ERROR)}

    @property
    def passed(self) -> bool:
        """Only a run that judged at least one cell, and every cell agreeing, passes."""
        return bool(self.cells) and all(c.passed for c in self.cells)

    @property
    def exit_code(self) -> int:
        counts = self.counts
        return 2 if counts[ERROR] else 1 if counts[DISAGREE] or not self.cells else 0

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
        extra += ["no cell judged: nothing to pass"] if not self.cells else []
        where = f" (shard {self.shard['index']}/{self.shard['count']} of {len(self.matrix)})" if self.shard else ""
        return head + (", " + ", ".join(extra) if extra else "") + where

    def to_dict(self) -> dict[str, Any]:
        data = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "command": "matrix",
                "passed": self.passed, "exit_code": self.exit_code, "summary": self.summary(),
                "counts": self.counts, "fingerprint": self.fingerprint, "shard": self.shard, "merged": self.merged,
                "settings": self.settings, "matrix": self.matrix, "pair_columns": self.pair_columns(),
                "cells": [c.to_dict() for c in self.cells], "versions": self.versions, "seconds": self.seconds,
                "jobs": self.jobs, "cache": self.cache, "created": self.created}
        key = os.environ.get(REPORT_KEY_ENV, "")
        return {**data, "hmac": report_mac(data, key)} if key else data

    @classmethod
    def from_dict(cls, data: Any, source: object = "report") -> MatrixResult:
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise UsageError(f"{source} is not a `verify matrix --json` report (no schema {SCHEMA!r})")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise UsageError(f"{source} has matrix schema version {data.get('schema_version')}; this verify "
                             f"reads version {SCHEMA_VERSION}: rerun the shards with the same verify")
        key = os.environ.get(REPORT_KEY_ENV, "")
        authentic = None if not key else isinstance(data.get("hmac"), str) and hmac.compare_digest(
            data["hmac"], report_mac({k: v for k, v in data.items() if k != "hmac"}, key))
        try:
            return cls(settings=data["settings"], fingerprint=data["fingerprint"], matrix=list(data["matrix"]),
                       cells=[CellResult.from_dict(c) for c in data["cells"]], shard=data.get("shard"),
                       merged=list(data.get("merged") or []), versions=dict(data.get("versions") or {}),
                       seconds=float(data.get("seconds") or 0.0), jobs=int(data.get("jobs") or 1),
                       cache=dict(data.get("cache") or {}), created=str(data.get("created") or ""),
                       authentic=authentic)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UsageError(f"{source} is a malformed matrix report ({type(exc).__name__}: {exc})") from None


def report_mac(data: dict[str, Any], key: str) -> str:
    """HMAC-SHA256 of a report's content as JSON writes and reads it back (so the reader computes the same)."""
    import hashlib
    import json

    from verify.cache import canonical_json

    body = canonical_json(json.loads(json.dumps(data, default=str)))
    return hmac.new(key.encode(), body.encode(), hashlib.sha256).hexdigest()


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
    found: bool = False
    """Its result was in the cache and would pass: it runs again (cache status RERUN)."""
    timeout: float | None = None
    """Seconds the cell may run in a worker process before it is stopped (None: no bound)."""


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
    from verify.pipeline.stages import plan_cell, request_content

    plan = plan_cell(job.request)
    content = request_content(job.request, plan) if cache is not None else None
    return plan, (cache.key("result", content) if cache is not None and content is not None else None)


def row(spec: Any) -> tuple[str, str, str]:
    """A cell's row: (backbone, norm, view); a user model is (source:factory, "", "")."""
    return (str(spec), "", "") if is_user_model(spec) else (spec.backbone, spec.norm, spec.view)


def _blank(job: CellJob) -> CellResult:
    return CellResult(job.id, *row(job.request.spec), ERROR, shard=job.shard)


def lookup_cell(job: CellJob, stats: CacheStats) -> tuple[CellResult | None, bool]:
    """(the cell's stored result when, judged again from its numbers under this run's tolerance, it fails;
    else None, whether a result was stored): a stored result that would pass is run again (RERUN), since
    its numbers may have been edited. Runs nothing (and imports no torch)."""
    from verify.cache import Cache

    if not job.cache_dir:
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
    stored = replace(stored, id=job.id, backbone=row(job.request.spec)[0], norm=row(job.request.spec)[1],
                     view=row(job.request.spec)[2], error=None, shard=job.shard)
    judged = judge_cell(stored, job.request.settings.tolerance, runtimes)
    return judged if judged.verdict == DISAGREE else None


def execute_cell(job: CellJob, lookup: bool = True) -> CellResult:
    """Run one cell (or, when `lookup`, take a stored failure from the cache); every failure becomes an
    `error` cell, so one broken cell never stops the matrix. The verdict is derived from the numbers."""
    import gc

    from verify.cache import Cache, CacheStats

    start = time.perf_counter()
    cache = Cache(Path(job.cache_dir)) if job.cache_dir else None
    if lookup:
        stored, found = lookup_cell(job, CacheStats())
        if stored is not None:
            return stored
        job = replace(job, found=found)
    result = _blank(job)
    try:
        result = _run_and_store(job, cache, start)
    except VerifyError as exc:
        _reraise_interrupt(exc)
        result.error, result.verdict = str(exc), ERROR  # even after a verdict was reached: never a pass
    except Exception as exc:  # a bug or an unforeseen failure: this cell fails, the others still run
        _reraise_interrupt(exc)
        lines = str(exc).strip().splitlines() or [""]
        result.error, result.verdict = f"unexpected {type(exc).__name__}: {lines[-1]}", ERROR
    gc.collect()
    result.seconds = round(time.perf_counter() - start, 3)
    result.cache_stats = cache.stats.to_dict() if cache is not None else {}
    result.worker = {"pid": os.getpid(), "threads": _torch_threads(), "peak_rss_mib": _peak_rss_mib()}
    result.shard = job.shard
    return result


def _run_and_store(job: CellJob, cache: Cache | None, start: float) -> CellResult:
    """Run the cell's stages, judge the pairs again from the numbers they wrote, and store the result."""

    from verify.pipeline.stages import run_cell

    plan, key = _result_key(job, cache)
    with tempfile.TemporaryDirectory(prefix=f"{CELL_FOLDER_PREFIX}{os.getpid()}-") as folder:
        outcome = run_cell(job.request, Path(folder), cache, plan=plan)
    report = outcome.report
    result = CellResult(
        job.id, *row(job.request.spec), AGREE if report.passed else DISAGREE,
        pairs=[p.to_dict() for p in report.pairs], noise_floor=report.floor_dict(),
        runs=[vars(r) for r in report.runs], notes=list(report.notes), input=report.input,
        computed_seconds=round(time.perf_counter() - start, 3),
        cache={"result": RERUN if job.found else MISS if key else OFF, **outcome.cache},
        problems=[str(p) for p in getattr(report, "problems", [])], trust=dict(report.trust))
    judged = judge_cell(result, job.request.settings.tolerance, len(plan.runtimes))
    if result.verdict == DISAGREE and judged.verdict == AGREE:  # the arrays' own verdict is the finer one
        judged = replace(judged, verdict=DISAGREE)
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


CellDone = Callable[[CellResult, float], None]


def run_matrix(request: MatrixRequest, jobs: int = 1, shard: tuple[int, int] | None = None,
               cache_dir: Path | None = None, on_start: Callable[[MatrixPlan], None] | None = None,
               on_done: CellDone | None = None, timeout: float | None = None) -> MatrixResult:
    """Run the matrix (or one shard of it) with `jobs` worker processes; `cache_dir` None runs uncached.
    A user model's cell always runs in a worker of its own, stopped after `timeout` seconds
    (USER_MODEL_TIMEOUT_S unless given); `timeout` also bounds every cell run in a worker.
    `on_done(cell, cost)` is called as each cell finishes (for a progress display)."""
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
    isolated = [job for job in pending if jobs > 1 or job.timeout is not None or is_user_model(job.request.spec)]
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
    return MatrixResult(
        settings=plan.settings, fingerprint=plan.fingerprint,
        matrix=[{"id": i, "spec": str(c.spec)} for i, c in zip(plan.ids, plan.cells)],
        cells=[_final(results[job.id], tolerance) for job in work],
        shard={"index": shard[0], "count": shard[1]} if shard else None,
        versions=versions(), seconds=round(time.perf_counter() - start, 3), jobs=jobs,
        cache={"dir": str(cache_dir) if cache_dir else None, **stats.to_dict()},
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


def _timeout_for(request: CellRequest, timeout: float | None) -> float | None:
    if timeout is not None:
        return float(timeout)
    return USER_MODEL_TIMEOUT_S if is_user_model(request.spec) else None


def _final(cell: CellResult, tolerance: Tolerance) -> CellResult:
    """What the run reports: every cell judged again here, whichever process computed it (a worker's
    result is data that came over a pipe); a disagreement already found is never undone."""
    judged = judge_cell(cell, tolerance)
    return replace(judged, verdict=DISAGREE) if cell.verdict == DISAGREE and judged.verdict == AGREE else judged


# Workers ---------------------------------------------------------------------------------------
WORKER_STOP_S = 2.0
"""How long an idle worker gets to exit after the matrix is done before it is killed."""


def _worker_main(conn: Any, threads: int) -> None:
    """A worker process: run the cells sent to it, one at a time, until told to stop (None) or the
    parent goes away. Ctrl-C is the parent's to handle: it stops the workers itself."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _init_worker(threads)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        conn.send_bytes(pickle.dumps(execute_cell(job, lookup=False)))


@dataclass
class _Worker:
    process: Any
    conn: Any
    job: CellJob | None = None
    deadline: float | None = None

    @classmethod
    def start(cls, context: Any, threads: int) -> _Worker:
        parent, child = context.Pipe()
        process = context.Process(target=_worker_main, args=(child, threads), daemon=True,
                                  name="verify-matrix-worker")
        process.start()
        child.close()
        return cls(process, parent)

    def give(self, job: CellJob) -> None:
        self.job = job
        self.deadline = None if job.timeout is None else time.monotonic() + job.timeout
        self.conn.send(job)

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(WORKER_STOP_S)
        self.conn.close()
        remove_cell_folders(self.process.pid)

    def stop(self) -> None:
        """Ask an idle worker to exit; kill it if it does not."""
        if self.process.is_alive():
            with contextlib.suppress(OSError, ValueError):
                self.conn.send(None)
            self.process.join(WORKER_STOP_S)
        self.kill()


CELL_FOLDER_PREFIX = "verify-matrix-"
"""A cell's temporary folder: `verify-matrix-<worker pid>-...` in the system's temporary folder."""


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
    return CellResult(job.id, *row(job.request.spec), ERROR, shard=job.shard, error=reason)


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
            return result
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
    """Each cell in a spawned worker process (torch and fork do not mix), at most `jobs` at once, the
    cores divided between them. A worker that dies or runs past its cell's timeout fails that cell only;
    a user model's cell gets a fresh worker, used once. On any exception (Ctrl-C, SIGTERM) every worker is
    killed at once."""
    import multiprocessing
    from collections import deque
    from multiprocessing.connection import wait

    context = multiprocessing.get_context("spawn")
    threads = worker_threads(jobs)
    queue, idle, busy = deque(work), [], []
    try:
        while queue or busy:
            while queue and len(busy) < jobs:
                job = queue.popleft()
                reuse = idle and not is_user_model(job.request.spec)
                worker = idle.pop() if reuse else _Worker.start(context, threads)
                worker.give(job)
                busy.append(worker)
            deadlines = [w.deadline for w in busy if w.deadline is not None]
            wait([w.conn for w in busy] + [w.process.sentinel for w in busy],
                 timeout=max(0.0, min(deadlines) - time.monotonic()) + 0.05 if deadlines else None)
            for worker in list(busy):
                result = _collect(worker)
                if result is None:
                    continue
                busy.remove(worker)
                once = worker.job is not None and is_user_model(worker.job.request.spec)
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


# Merging shards -------------------------------------------------------------------------------
# A shard report is evidence, not a verdict: its matrix (cell ids and fingerprint) is recomputed from the
# settings it records, each shard must hold exactly the cells the split gives it, and every cell is judged
# again from its numbers. What it cannot show (a cell missing, foreign, doubled; a matrix without cells)
# fails the merge (exit 1); reports that cannot be read are usage errors (exit 2).
@dataclass(frozen=True)
class ExpectedCell:
    id: str
    spec: str
    row: tuple[str, str, str]
    cost: float


def expected_cells(settings: Any) -> list[ExpectedCell]:
    """Every cell the recorded settings define, with the id and cost `verify matrix` gives it."""
    from exporter.user_model import UserModelSpec
    from verify.cache import canonical, digest

    try:
        backbones, norms, views, models = ([str(x) for x in settings[k]] for k in ("backbones", "norms", "views",
                                                                                   "models"))
        shared = {"settings": settings["run"], "export": settings["export"], "runtimes": settings["runtimes"]}
        formats = len(settings["export"]["formats"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise MatrixFailure(f"The report's settings do not define a matrix ({type(exc).__name__}: {exc}); rerun "
                            "the matrix") from None
    specs: list[Any] = [ModelSpec(b, n, v) for b in backbones for n in norms for v in views]
    specs += [UserModelSpec(*text.rpartition(":")[::2]) for text in models]
    cells = []
    for spec in specs:
        user = is_user_model(spec)
        try:
            size = USER_MODEL_PARAMS_M if user else backbone_params(spec.backbone)
        except VerifyError as exc:
            raise MatrixFailure(f"The report's matrix names {spec}, which this verify cannot build ({exc})") from None
        ident = f"{spec.slug}-{digest({'spec': canonical(spec), **shared})[:10]}"
        cells.append(ExpectedCell(ident, str(spec), row(spec), size * (2 + formats)))
    return cells


def check_report(report: MatrixResult, name: str) -> list[ExpectedCell]:
    """The report's matrix and fingerprint, recomputed from its settings: a report whose cells or fingerprint
    do not follow from the settings it records (relabelled, edited or from elsewhere) fails."""
    expected = expected_cells(report.settings)
    if not expected:
        raise MatrixFailure(f"{name} describes a matrix without cells: nothing was verified")
    ids = [cell.id for cell in expected]
    claimed = [entry.get("id") if isinstance(entry, Mapping) else None for entry in report.matrix]
    if claimed != ids or [e.get("spec") for e in report.matrix] != [c.spec for c in expected]:
        raise MatrixFailure(f"{name} lists cells its own settings do not give ({len(claimed)} listed, "
                            f"{len(ids)} expected); merge reports exactly as `verify matrix --json` wrote them")
    if report.fingerprint != fingerprint(report.settings, ids):
        raise MatrixFailure(f"{name} has fingerprint {report.fingerprint!r}, but its settings and cells give "
                            f"{fingerprint(report.settings, ids)}; merge reports exactly as written")
    return expected


def _shard_of(report: MatrixResult, name: str) -> tuple[int, int] | None:
    if report.shard is None:
        return None
    try:
        index, count = report.shard["index"], report.shard["count"]
    except (KeyError, TypeError):
        index = count = None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (index, count)) or not 1 <= index <= count:
        raise MatrixFailure(f"{name} has no valid shard (got {report.shard!r}); merge reports exactly as written")
    return index, count


def _split(reports: Sequence[MatrixResult], names: Sequence[str]) -> int:
    """The shard count all reports share; refuses whole reports among shards and a shard given twice."""
    shards = [_shard_of(r, n) for r, n in zip(reports, names)]
    if any(s is None for s in shards):
        if len(reports) > 1:
            raise MatrixFailure("Only shard reports (--shard I/N) can be merged; a whole-matrix report is "
                                "already whole: give it alone")
        return 1
    count = shards[0][1]
    seen: dict[int, str] = {}
    for name, (index, total) in zip(names, shards):
        if total != count:
            raise MatrixFailure(f"{name} is shard {index}/{total}, the others are of {count}; merge shards of "
                                "one split")
        if index in seen:
            raise MatrixFailure(f"{name} and {seen[index]} are both shard {index}/{count}; give each shard once")
        seen[index] = name
    return count


def _gather(reports: Sequence[MatrixResult], names: Sequence[str], expected: list[ExpectedCell],
            count: int) -> dict[str, CellResult]:
    """Each cell once, in the report of the shard the split gives it; rows taken from the matrix."""
    by_id = {cell.id: cell for cell in expected}
    owner = dict(zip([c.id for c in expected], assign_shards([c.id for c in expected],
                                                             [c.cost for c in expected], count)))
    cells: dict[str, CellResult] = {}
    for name, report in zip(names, reports):
        index = report.shard["index"] if report.shard else 1
        for cell in report.cells:
            ident = cell.id if isinstance(cell.id, str) else repr(cell.id)
            if ident not in by_id:
                raise MatrixFailure(f"{name} holds cell {ident!r}, which is not a cell of this matrix; merge "
                                    "reports exactly as written")
            if ident in cells:
                raise MatrixFailure(f"Cell {by_id[ident].spec} ({ident}) appears more than once ({name})")
            if owner[ident] != index:
                raise MatrixFailure(f"{name} (shard {index}/{count}) holds cell {by_id[ident].spec}, which the "
                                    f"split gives to shard {owner[ident]}/{count}")
            backbone, norm, view = by_id[ident].row
            cells[ident] = replace(cell, id=ident, backbone=backbone, norm=norm, view=view, shard=report.shard
                                   and index)
    missing = [cell for cell in expected if cell.id not in cells]
    if missing:
        shards = sorted({owner[c.id] for c in missing})
        raise MatrixFailure(f"{len(missing)} of {len(expected)} cells missing: "
                            f"{', '.join(f'{c.spec} ({c.id})' for c in missing)}; rerun "
                            f"{'shard' if count > 1 else 'the matrix'}"
                            f"{' ' + ', '.join(f'{i}/{count}' for i in shards) if count > 1 else ''} and merge "
                            "every shard's report")
    return cells


def merge_results(reports: Sequence[MatrixResult], sources: Sequence[object] | None = None) -> MatrixResult:
    """Join shard reports of one matrix into its whole report, every cell judged again from its numbers under
    the matrix's tolerance; anything that keeps it from showing every cell judged exactly once fails."""
    if not reports:
        raise UsageError("Give the shard reports to merge (verify matrix --shard I/N --json ...)")
    names = [str(s) for s in (sources or [f"report {i + 1}" for i in range(len(reports))])]
    if os.environ.get(REPORT_KEY_ENV):
        for name, report in zip(names, reports):
            if report.authentic is not True:
                raise MatrixFailure(f"{name} carries no valid HMAC for ${REPORT_KEY_ENV}: it was edited after it "
                                    f"was written, or its job ran without the key; set the same ${REPORT_KEY_ENV} "
                                    "in every shard job and rerun them")
    first = reports[0]
    expected = check_report(first, names[0])
    for name, report in zip(names[1:], reports[1:]):
        if (report.fingerprint, report.settings, report.matrix) != (first.fingerprint, first.settings, first.matrix):
            raise MatrixFailure(f"{name} is from a different matrix or settings than {names[0]} (fingerprint "
                                f"{report.fingerprint} vs {first.fingerprint}); merge only shards of one run")
        if report.versions != first.versions:
            changed = sorted(k for k in {*report.versions, *first.versions}
                             if report.versions.get(k) != first.versions.get(k))
            raise UsageError(f"{name} ran with other library versions than {names[0]} ({', '.join(changed)}); "
                             "run every shard in the same environment")
    count = _split(reports, names)
    cells = _gather(reports, names, expected, count)
    tolerance = tolerance_from((first.settings.get("run") or {}).get("tolerance"))
    runtimes = first.settings.get("runtimes")
    runs = len(runtimes) if isinstance(runtimes, list) else None
    from verify.cache import CacheStats

    stats = CacheStats()
    for report in reports:
        with contextlib.suppress(AttributeError, TypeError, ValueError):
            stats.add(report.cache)
    ordered = sorted(reports, key=lambda r: r.shard["index"] if r.shard else 1)
    return MatrixResult(
        settings=first.settings, fingerprint=first.fingerprint, matrix=first.matrix,
        cells=[judge_cell(cells[c.id], tolerance, runs) for c in expected], shard=None,
        merged=[{"index": r.shard["index"] if r.shard else 1, "count": count, "seconds": r.seconds, "jobs": r.jobs,
                 "cells": len(r.cells)} for r in ordered],
        versions=first.versions, seconds=max(r.seconds for r in reports), jobs=max(r.jobs for r in reports),
        cache={"dir": None, **stats.to_dict()},
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
