"""A verdict is never read back: every cell's is derived again from its stored numbers under the tolerance of this run
(a matrix run) or of the matrix the report claims to be (a merge). The stored `verdict` and `passed` fields are
overwritten, so the table, JSON, JUnit, Markdown and HTML all show what was derived."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from exporter.errors import VerifyError
from exporter.user_model import is_user_model_text
from verify.judge.compare import DISCRETE_NOTE
from verify.judge.file_floor import unrecorded_problems
from verify.judge.trust import evidence_problems, unrecorded_calls
from verify.matrix.floor_binding import floor_binding_problems, output_set_problems
from verify.matrix.result import AGREE, DISAGREE, ERROR, CellResult, MatrixFailure, pair_name

if TYPE_CHECKING:
    from verify.judge.compare import OutputComparison, Tolerance


RELATIVE_SLACK = 1e-6
"""How far two stored figures that one computation links (ratio and max_abs / floor) may drift in JSON."""


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


def _mismatch_problem(output: Mapping[str, Any]) -> str | None:
    """The stored count of elements out of tolerance, counted under the tolerance judged by here (a cache key and a
    report's settings hold it): any at all is a failure, whatever the other figures say."""
    mismatched, total = output.get("mismatched"), output.get("total")
    if not isinstance(mismatched, int) or isinstance(mismatched, bool) or not 0 <= mismatched <= total:
        return f"no count of the elements out of tolerance (got {mismatched!r})"
    return f"{mismatched} of {total} elements out of tolerance (edited numbers)" if mismatched else None


def _discrete_problem(output: Mapping[str, Any], max_abs: float) -> str | None:
    """An output the comparator judged exactly (an integer or boolean one: auto mode's `allowed` is 0 for it alone,
    verify/judge/compare.py DISCRETE_NOTE) is judged exactly again: any difference fails, whatever its ratio to a
    floor that is one float32 ulp of its largest value (an int64 id near 2**24 has a floor of 2: a whole index), and
    whatever its float64 copies say (int64 values past 2**53 one apart are equal there: its count holds them)."""
    mismatched = output.get("mismatched")
    counted = isinstance(mismatched, int) and not isinstance(mismatched, bool) and mismatched > 0
    if max_abs == 0 and not counted:
        return None
    count = f"{mismatched} of {output.get('total')} elements" if counted else f"elements up to {max_abs:g} apart"
    return f"{count} of this integer or boolean output differ, judged exactly: {DISCRETE_NOTE}"


def _auto_problem(output: Mapping[str, Any], factor: float) -> str | None:
    """Auto mode: the worst channel's max |a-b| over its own floor, at most `factor`; the figures one
    computation links must agree (ratio >= max_abs / floor, and <= max_abs / the worst channel's floor). An output
    the comparator judged exactly (`allowed` 0) is judged exactly (`_discrete_problem`)."""
    floor, ratio, max_abs = _number(output, "floor", True), _number(output, "ratio"), _number(output, "max_abs")
    if floor is None or ratio is None or max_abs is None:
        return "no floor, ratio or max |a-b| to judge by"
    if _number(output, "allowed") == 0:
        return _discrete_problem(output, max_abs) or (None if ratio == 0 else "a ratio over the floor without any "
                                                      "difference (edited numbers)")
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
    return problem or _mismatch_problem(output)


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
    recorded = cell.trust.get("mode") if isinstance(cell.trust, Mapping) else None
    if not error and recorded is not None and recorded != tolerance.mode:  # the guards it skips are the matrix's
        guards.append(f"its guard evidence was recorded under the {recorded!r} tolerance, and the matrix judges it "
                      f"under {tolerance.mode!r}: edited evidence, not judged")
    guards += [] if error else unrecorded_problems(  # and guard 3's evidence cut out is itself a problem
        cell.trust, is_user_model_text(str(cell.spec)),
        [run.get("label", "") for run in cell.runs if isinstance(run, Mapping)] if isinstance(cell.runs, list) else [])
    guards += [] if error else unrecorded_calls(cell.trust, is_user_model_text(str(cell.spec)))
    guards += [] if error else floor_binding_problems(cell, tolerance) + output_set_problems(cell, tolerance)
    found = own + [f"{JUDGED}{text}" for text in ([structure] if structure else []) + reasons + guards
                   if f"{JUDGED}{text}" not in own]
    verdict = ERROR if error else DISAGREE if found else AGREE
    return replace(cell, pairs=pairs, verdict=verdict, error=error, problems=found)


JUDGED = "re-judged: "
"""Marks the problems `judge_cell` found, so judging a judged cell again finds the same, not twice."""
RUN_FOUND = "its run judged it a disagreement that its stored numbers do not show: "
"""Leads the problem `kept_disagreement` adds (a cell's own problem, kept when its numbers are judged again)."""


def kept_disagreement(judged: CellResult, failed: Sequence[str]) -> CellResult:
    """A disagreement the run's own judgement found (`failed`: what failed, e.g. a pair's verdict or a layer) that
    judging the cell's stored numbers again does not find: kept, with why as one of the cell's own problems. Without
    it the cell read "disagree" with no problem listed, and `verify matrix merge`, which reads no stored verdict,
    judged the same numbers into an agreement (the shard exit 1, its merge exit 0)."""
    if judged.verdict != AGREE:
        return judged
    why = "; ".join(str(f) for f in failed if str(f)) or "no failing comparison named"
    problem = f"{RUN_FOUND}{why}"
    own = list(judged.problems) if isinstance(judged.problems, list) else []
    return replace(judged, verdict=DISAGREE, problems=own + ([problem] if problem not in own else []))
