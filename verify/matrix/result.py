"""A matrix run's results as data: `CellResult` per cell, `MatrixResult` for the run (its JSON schema and
HMAC); verify/render draws them."""

from __future__ import annotations

import hmac
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.errors import UsageError, VerifyError
from verify.matrix.detector_rows import detector_rows, detector_worst
from verify.render.rows import CheckRow, Group, pair_row

if TYPE_CHECKING:
    from verify.judge.compare import PairResult


SCHEMA = "backbone-verify/matrix"
SCHEMA_VERSION = 1
AGREE, DISAGREE, ERROR = "agree", "disagree", "error"
MAX_REPORT_BYTES = 1 << 30
"""A report is a few kB per cell; a file larger than this is not one (refused unread)."""
REPORT_KEY_ENV = "BACKBONE_VERIFY_REPORT_KEY"
"""A secret the shard jobs and the merge job share (a CI secret variable): with it set, every matrix report
carries an HMAC-SHA256 of its content, and `verify matrix merge` fails any report without a valid one.
Without it a merge checks that each report is consistent, not who wrote it."""


NULL_REASON = "null_reason"
"""Where verify/report.py json_safe says why a number beside it was written as null."""


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _texts(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _floor_record(value: Any) -> bool:
    """{per_output: {name: float or null}, ...}: the floors every renderer prints (a floor that was not finite is
    written as null, with why in `null_reason` beside it: verify/report.py json_safe)."""
    per_output = value.get("per_output", {}) if isinstance(value, dict) else None
    return isinstance(per_output, dict) and all(
        isinstance(v, str) if k == NULL_REASON else v is None or _finite(v) for k, v in per_output.items())


SHOWN_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "notes": (_texts, "a list of text"),
    "noise_floor": (_floor_record, "an object whose per_output floors are numbers"),
    "input": (lambda v: isinstance(v, dict), "an object"),
    "seconds": (_finite, "a finite number"),
    "computed_seconds": (_finite, "a finite number"),
    "cache": (lambda v: isinstance(v, dict) and all(isinstance(s, str) for s in v.values()),
              "an object of stage statuses"),
    "cache_stats": (lambda v: isinstance(v, dict), "an object"),
    "worker": (lambda v: isinstance(v, dict), "an object"),
    "error": (lambda v: v is None or isinstance(v, str), "text or null"),
    "detector": (lambda v: v is None or isinstance(v, dict), "an object or null"),
}
"""The cell fields that are shown but never judged (judge_cell re-derives the rest from what it finds): each
must be of the type its renderers read."""


INT64 = 1 << 63
"""No integer a report or a cached cell holds reaches this (counts, shapes, indices, seeds, sizes); JSON's do, and one
past a float (10**400) ended `verify matrix merge` in "unexpected OverflowError ... please report it", and a cached
cell holding it ended `verify matrix` the same way before any cell ran (sweep 28c)."""
MAX_DEPTH = 32
"""A report nests about 8 levels (a detector cell's stored detections the deepest); JSON's reader takes up to ~1000,
and a cell `input` nested 900 deep passed the merge's judging ("2 of 2 cells agree") and then ended it in "unexpected
RecursionError ... please report it" where it was written out (sweep 28c)."""


def out_of_bounds(data: Any) -> str | None:
    """Why `data` (parsed JSON: a report, or a cached cell) holds what nothing `verify matrix` writes (an integer past
    int64, nesting past MAX_DEPTH), naming where as `key.key[index]`; None where it holds neither. Walked with a
    stack, not recursion."""
    stack: list[tuple[str, Any, int]] = [("", data, 0)]
    while stack:
        where, value, depth = stack.pop()
        if isinstance(value, int) and not isinstance(value, bool) and not -INT64 <= value < INT64:
            return f"{where or 'the value'} holds an integer past int64"
        if isinstance(value, (Mapping, list)) and depth >= MAX_DEPTH:
            return f"{where if len(where) <= 120 else where[:120] + '...'} nests deeper than {MAX_DEPTH} levels"
        if isinstance(value, Mapping):
            stack += [(f"{where}.{key}" if where else str(key), item, depth + 1) for key, item in value.items()]
        elif isinstance(value, list):
            stack += [(f"{where}[{i}]", item, depth + 1) for i, item in enumerate(value)]
    return None


def _refuse_out_of_bounds(data: Any, what: str) -> None:
    why = out_of_bounds(data)
    if why is not None:
        raise TypeError(f"{what} {why}, which nothing `verify matrix` writes")


class MatrixFailure(VerifyError):
    """A check the matrix failed (a merge that cannot show every cell, judged): exit 1, not a usage error."""

    exit_code = 1


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
    detector: dict[str, Any] | None = None
    """A whole detector's cell (verify/matrix/detector_cell.py): the numbers its verdict is judged again from, and
    both levels' pairs as judged; None for a backbone's or a user model's cell."""

    _parsed: list[PairResult] | None = field(default=None, init=False, repr=False, compare=False)
    """`pairs` as the comparator's results, parsed once (`dataclasses.replace` starts a copy without it)."""

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
        """The pairs as typed results, parsed once for every renderer and row."""
        if self._parsed is None:
            self._parsed = [pair_from_dict(p) for p in self.pairs]
        return self._parsed

    def dense_results(self) -> list[PairResult]:
        """A detector cell's before-NMS pairs as typed results (none for other cells)."""
        stored = self.detector.get("before_nms") if isinstance(self.detector, Mapping) else None
        return [pair_from_dict(p) for p in stored] if isinstance(stored, list) else []

    @property
    def worst_ratio(self) -> float | None:
        if isinstance(self.detector, Mapping):
            return detector_worst(self.detector, self.dense_results())
        ratios = [p.worst.ratio for p in self.pair_results() if p.outputs and p.worst.ratio is not None]
        return max(ratios) if ratios else None

    def rows(self) -> list[CheckRow]:
        """One row per pair (the message led by the cell's spec), an error row for a cell that did not run,
        and a failing `verdict` row when the cell fails and no pair row says why."""
        group, classname = Group(self.spec, self.id, self.seconds), f"matrix.{self.spec}"
        if self.error:
            return [CheckRow(group, "error", "run cell", "error", self.error, classname=classname)]
        rows = detector_rows(group, classname, self.spec, self.detector, self.dense_results()) \
            if isinstance(self.detector, Mapping) else \
            [pair_row(group, classname, pair, self.spec) for pair in self.pair_results()]
        if not rows or not self.passed and all(row.passed for row in rows):
            why = "; ".join([*map(str, self.problems), *self.notes]) or (
                "no pairs were judged" if not rows else f"verdict {self.verdict}")
            rows.append(CheckRow(group, "verdict", "verdict", "failure", f"{self.spec}: {why}", classname=classname))
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "backbone": self.backbone, "norm": self.norm, "view": self.view,
                "spec": self.spec, "verdict": self.verdict, "passed": self.passed, "error": self.error,
                "worst_ratio": self.worst_ratio, "pairs": self.pairs, "noise_floor": self.noise_floor,
                "runs": self.runs, "notes": self.notes, "input": self.input, "seconds": self.seconds,
                "computed_seconds": self.computed_seconds, "cache": self.cache, "cache_stats": self.cache_stats,
                "worker": self.worker, "shard": self.shard, "problems": self.problems,
                "trust": self.trust, **({"detector": self.detector} if self.detector is not None else {})}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CellResult:
        """TypeError naming the field when one that is shown but never judged (notes, floors, times...) is not
        of its type: every renderer reads them, and a report's or cache entry's content is whatever was written."""
        known = {name for name, f in cls.__dataclass_fields__.items() if f.init}
        _refuse_out_of_bounds(data, "cell field")  # a cache entry's too (verify/matrix/cell.py _stored_failure)
        for name, (fits, what) in SHOWN_FIELDS.items():
            if name in data and not fits(data[name]):
                raise TypeError(f"cell field {name!r} is not {what}")
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

    def rows(self) -> list[CheckRow]:
        """Every cell's rows, in row order."""
        return [row for cell in self.cells for row in cell.rows()]

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
        why = out_of_bounds(data)  # before its HMAC is computed over it
        if why is not None:
            raise UsageError(f"{source} is a malformed matrix report ({why}, which nothing `verify matrix` writes); "
                             "merge reports exactly as written")
        key = os.environ.get(REPORT_KEY_ENV, "")
        authentic = None if not key else isinstance(data.get("hmac"), str) and hmac.compare_digest(
            data["hmac"].encode("utf-8", "replace"),  # bytes: compare_digest refuses non-ASCII text
            report_mac({k: v for k, v in data.items() if k != "hmac"}, key).encode())
        try:
            return cls(settings=data["settings"], fingerprint=data["fingerprint"], matrix=list(data["matrix"]),
                       cells=[CellResult.from_dict(c) for c in data["cells"]], shard=data.get("shard"),
                       merged=list(data.get("merged") or []), versions=dict(data.get("versions") or {}),
                       seconds=_report_seconds(data.get("seconds")), jobs=int(data.get("jobs") or 1),
                       cache=dict(data.get("cache") or {}), created=str(data.get("created") or ""),
                       authentic=authentic)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise UsageError(f"{source} is a malformed matrix report ({type(exc).__name__}: {exc})") from None


def verify_identity() -> dict[str, str]:
    """This verify's version and a digest of its source (verify/cache.py `environment`), recorded in a report's
    `versions`: a merge judges a shard's numbers by its own rules, so they must be numbers this verify measured."""
    from verify.cache import environment

    env = environment()
    return {"backbone-verify": env["backbone-verify"], "verify-source": env["source"][:16]}


def _report_seconds(value: Any) -> float:
    seconds = float(value or 0.0)
    if not math.isfinite(seconds):
        raise ValueError(f"seconds {value!r} is not a finite number")
    return seconds


def report_mac(data: dict[str, Any], key: str) -> str:
    """HMAC-SHA256 of a report's content as the strict JSON writer writes it and a reader reads it back (so the
    reader computes the same: a NaN is null with its `null_reason` on both sides)."""
    import hashlib
    import json

    from verify.cache import canonical_json
    from verify.report import json_safe

    body = canonical_json(json_safe(json.loads(json.dumps(data, default=str))))
    return hmac.new(key.encode(), body.encode(), hashlib.sha256).hexdigest()


def _not_strict(token: str) -> None:
    raise ValueError(f"{token} is not strict JSON (the writer stores a number that is not finite as null)")


def _once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) < len(pairs):  # the HMAC covers the copy kept here; a reader keeping the other sees another report
        seen: set[str] = set()
        twice = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise ValueError(f"key {twice!r} appears twice in one object (readers would disagree on it)")
    return found


def load_result(path: Path) -> MatrixResult:
    """A `verify matrix --json` report back as a typed `MatrixResult`: strict JSON (a bare NaN or Infinity
    token is refused, as the writer never writes one; so is a key twice in one object), schema and HMAC checked
    by `MatrixResult.from_dict`."""
    import json

    from exporter.fsio import require_regular_file

    # a FIFO would block, a device stream forever
    require_regular_file(Path(path), "Report", hint="; give the file `verify matrix --json` wrote")
    try:
        if Path(path).stat().st_size > MAX_REPORT_BYTES:
            raise UsageError(f"Report {path} is {Path(path).stat().st_size} bytes, far more than a matrix report; "
                             "give the file `verify matrix --json` wrote")
        data = json.loads(Path(path).read_text(), parse_constant=_not_strict, object_pairs_hook=_once)
    except FileNotFoundError:
        raise UsageError(f"Report {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"Cannot read {path} as JSON: {exc}") from None
    except RecursionError:  # a report is a few levels deep; Python's reader recurses per level
        raise UsageError(f"Cannot read {path} as JSON: it nests deeper than a JSON reader goes") from None
    return MatrixResult.from_dict(data, path)
