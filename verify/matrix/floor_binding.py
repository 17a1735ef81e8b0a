"""In auto mode a stored pair divides by floors: they must be the floors its cell recorded (`noise_floor.detail`, the
pooled floors every pair was judged on), and those no larger than the floors its trust evidence holds (what the floor
bound judged). Without this chain an edit of a pair's `floor`, `channel_floor` and `ratio` alone passed a failing cell,
and so did a `channel_floor` set to null (the per-output ratio, hiding a failing channel) or to the channel's floor
where the worst element lay in the channel's bulk (hiding an export that shifts everything but the peaks)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from verify.judge.noise_floor import CHANNEL_AXIS, channelled

if TYPE_CHECKING:
    from verify.judge.compare import Tolerance
    from verify.judge.noise_floor import NoiseFloor
    from verify.matrix.result import CellResult

SLACK = 1e-6
"""How far two stored figures one computation links may drift through JSON (judging.RELATIVE_SLACK)."""


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) else None


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= SLACK * max(abs(a), abs(b))


def _recorded(cell: CellResult) -> tuple[dict[str, Any], list[Mapping[str, Any]] | None]:
    """The cell's recorded floors (`noise_floor.detail`) and its evidence's per-input floors (None: no usable
    evidence, which `evidence_problems` reports)."""
    record = cell.noise_floor if isinstance(cell.noise_floor, Mapping) else {}
    detail = record.get("detail")
    inputs = cell.trust.get("inputs") if isinstance(cell.trust, Mapping) else None
    usable = isinstance(inputs, list) and inputs and all(isinstance(i, Mapping) for i in inputs)
    return (dict(detail) if isinstance(detail, Mapping) else {}), (inputs if usable else None)


def _parse(name: str, data: Any, inputs: Sequence[Mapping[str, Any]] | None) -> tuple[NoiseFloor | None, str | None]:
    """`name`'s recorded floor, checked against the evidence: its value and its bulk floors at most what the
    evidence's inputs measured (pooled floors are their largest), and a bulk wherever an input measured one."""
    from exporter.errors import UsageError
    from verify.judge.noise_floor import NoiseFloor

    try:
        floor = NoiseFloor.from_dict(data) if isinstance(data, dict) else None
    except UsageError:
        floor = None
    if floor is None:
        return None, f"{name}: no usable recorded noise floor (noise_floor.detail) to judge its figures by"
    if floor.channels is not None and (floor.channels > floor.value * (1 + SLACK)).any():
        return None, f"{name}: a recorded channel floor is above the output's floor (edited numbers)"
    if inputs is None:
        return floor, None
    measured = [i[name] for i in inputs if isinstance(i.get(name), Mapping)]
    values = [_number(m.get("floor")) for m in measured]
    if not measured or any(v is None for v in values):
        return None, f"{name}: its floor is in no input of the determinism and floor evidence (edited numbers)"
    if floor.value > max(values) * (1 + SLACK):
        return None, (f"{name}: the recorded floor {floor.value:.3g} is above the largest the evidence measured "
                      f"({max(values):.3g}), which the floor bound judged (edited numbers)")
    bulks = [_number(m.get("bulk_floor")) if "bulk_floor" in m else v for m, v in zip(measured, values)]
    if any("bulk_floor" in m for m in measured):
        if floor.bulk is None or any(b is None for b in bulks):
            return None, f"{name}: the evidence measured a floor away from its peaks, the record holds none " \
                         "(edited numbers)"
        if float(floor.bulk.max()) > max(bulks) * (1 + SLACK):
            return None, f"{name}: a recorded floor away from its peaks is above what the evidence measured " \
                         "(edited numbers)"
    return floor, None


def _ints(value: Any, length: int) -> list[int] | None:
    return list(value) if isinstance(value, list) and len(value) == length and all(
        isinstance(i, int) and not isinstance(i, bool) for i in value) else None


def _output_problem(output: Mapping[str, Any], floor: NoiseFloor) -> str | None:
    """The output's floor, worst channel and ratio against its recorded floor: the floor is the recorded one; an
    output with channels names its worst channel and that channel's floor (or its bulk floor); and the ratio is at
    least the worst element's |a-b| over the floor that element is judged on (its bulk's, where within the limit)."""
    value, max_abs, ratio = (_number(output.get(k)) for k in ("floor", "max_abs", "ratio"))
    shape = output.get("shape_b")
    if value is None or max_abs is None or ratio is None or not isinstance(shape, list):
        return None  # judge_output already refuses it
    if not _close(value, floor.value):
        return f"its floor {value:.3g} is not the recorded {floor.value:.3g} (edited numbers)"
    grouped = channelled(shape)
    if grouped != (floor.channels is not None) or grouped and shape[CHANNEL_AXIS] != floor.groups:
        return "its recorded floor does not fit its shape (a floor per channel for an NCHW or NCDHW output, else one)"
    if max_abs == 0:
        return None if ratio == 0 else "a ratio over the floor without any difference (edited numbers)"
    index, a, b = _ints(output.get("worst_index"), len(shape)), _number(output.get("worst_a")), \
        _number(output.get("worst_b"))
    if index is None or a is None or b is None or not all(0 <= i < n for i, n in zip(index, shape)):
        return "no worst element (index and both values) to check its ratio by"
    group = index[CHANNEL_AXIS] if grouped else 0
    worst_floor = float(floor.group_floors[group])
    if floor.bulk is not None and min(abs(a), abs(b)) <= floor.bulk_limits[group]:
        worst_floor = float(floor.bulk[group])
    if ratio < max_abs / worst_floor * (1 - SLACK):
        return (f"ratio {ratio:.3g} is below the worst element's |a-b| over its recorded floor "
                f"({max_abs / worst_floor:.3g}; edited numbers)")
    channel, channel_floor = output.get("channel"), _number(output.get("channel_floor"))
    if grouped:
        if not isinstance(channel, int) or isinstance(channel, bool) or not 0 <= channel < floor.groups:
            return "no worst channel where the output has channels (edited numbers)"
        allowed = [float(floor.channels[channel])] + ([float(floor.bulk[channel])] if floor.bulk is not None else [])
    else:
        if channel is not None:
            return "a worst channel where the output has none (edited numbers)"
        if floor.bulk is None:
            return None  # judging._auto_problem holds the ratio to max_abs / floor
        allowed = [floor.value, float(floor.bulk[0])]
    if channel_floor is None or not any(_close(channel_floor, f) for f in allowed):
        return "its worst channel's floor is none of the floors recorded for that channel (edited numbers)"
    return None


def floor_binding_problems(cell: CellResult, tolerance: Tolerance) -> list[str]:
    """Why the stored pairs' floors are not the cell's recorded floors (auto mode only: the other modes judge
    without a floor)."""
    if tolerance.mode != "auto" or not isinstance(cell.pairs, list):
        return []
    detail, inputs = _recorded(cell)
    floors: dict[str, tuple[NoiseFloor | None, str | None]] = {}
    problems: list[str] = []
    for pair in cell.pairs:
        outputs = pair.get("outputs") if isinstance(pair, Mapping) else None
        for output in outputs if isinstance(outputs, list) else []:
            if not isinstance(output, Mapping):
                continue
            name = str(output.get("name"))
            if name not in floors:
                floors[name] = _parse(name, detail.get(name), inputs)
                if floors[name][1]:
                    problems.append(floors[name][1])
            floor = floors[name][0]
            why = _output_problem(output, floor) if floor is not None else None
            if why:
                problems.append(f"{pair.get('a')} vs {pair.get('b')} {name}: {why}")
    return problems


def output_set_problems(cell: CellResult, tolerance: Tolerance) -> list[str]:
    """Every output the cell measured a floor for (its evidence's inputs; in auto mode its recorded floors too) is in
    its pairs: an output deleted from every pair hid its failure (the pairs still all compared the same outputs)."""
    if not isinstance(cell.pairs, list):
        return []
    compared = {str(output.get("name")) for pair in cell.pairs if isinstance(pair, Mapping)
                for output in (pair.get("outputs") if isinstance(pair.get("outputs"), list) else [])
                if isinstance(output, Mapping)}
    if not compared:
        return []  # judging._pair_set_problem says so
    detail, inputs = _recorded(cell)
    measured = {str(name) for outputs in inputs or [] for name in outputs}
    if tolerance.mode == "auto":
        measured |= {str(name) for name in detail}
    missing = sorted(measured - compared)
    return [f"{', '.join(missing)}: measured, but compared in no pair (edited numbers)"] if missing else []
