"""A detector cell's rows (verify/render/rows.py `CheckRow`), from its judged numbers: one per before-NMS pair,
proposal pairing and after-NMS pair (matched count, unmatched explained by rounding and unexplained, worst ratio),
and one per refused export. Every renderer of the matrix draws these."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from verify.render.rows import CheckRow, Group, pair_row

if TYPE_CHECKING:
    from verify.judge.compare import PairResult

BEFORE, PROPOSALS, AFTER, EXPORT = "before NMS", "proposals", "after NMS", "export"
"""The row kinds of a detector cell: its levels, and a refused export."""


WORST = (("box", "worst_box_ratio"), ("score", "worst_score_ratio"), ("mask", "worst_mask_ratio"),
         ("mask head", "worst_mask_head_ratio"), ("keypoints", "worst_keypoint_ratio"),
         ("keypoint score", "worst_keypoint_score_ratio"), ("keypoint head", "worst_keypoint_head_ratio"))
"""An after-NMS pair's worst ratios as its row names them; the masks' only in a Mask R-CNN's pairs and the keypoints'
only in a Keypoint R-CNN's (their JSON keys are absent elsewhere, verify/detect/match.py `DetectionPair.to_dict`)."""
WORST_ALWAYS = ("worst_box_ratio", "worst_score_ratio")


def _count(value: Any) -> int:
    return len(value) if isinstance(value, list) else 0


def _total(value: Any) -> int:
    return sum(v for v in value if isinstance(v, int)) if isinstance(value, list) else 0


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def after_nms_text(pair: Mapping[str, Any]) -> str:
    """`50 of 50 detections matched, 0 unmatched explained by rounding, 0 unexplained; worst box 0.8x, score 1.7x the
    floor` (a Mask R-CNN's: `..., score 1.7x, mask 1.3x, mask head 0.8x the floor`, a Keypoint R-CNN's: `..., keypoints
    0.8x, keypoint score 1.4x, keypoint head 1.2x (worst: left_elbow) the floor`, as the export's rows read), then
    the first borderline case named (the row's name says which pair)."""
    shown = [(name, _number(pair.get(key))) for name, key in WORST if key in pair or key in WORST_ALWAYS]
    worst = ", ".join(f"{name} {'-' if value is None else f'{value:.1f}x'}" for name, value in shown)
    if isinstance(pair.get("worst_keypoint"), str):
        worst += f" (worst: {pair['worst_keypoint']})"
    text = (f"{_total(pair.get('matched_per_image'))} of "
            f"{_total(pair.get('reference_per_image'))} detections matched, {_count(pair.get('borderline'))} unmatched "
            f"explained by rounding, {_count(pair.get('unexplained'))} unexplained; worst {worst} the floor")
    borderline = pair.get("borderline")
    if isinstance(borderline, list) and borderline and isinstance(borderline[0], Mapping):
        text += f"; borderline: {borderline[0].get('text')}"
    pasted = pair.get("paste_borderline")
    if isinstance(pasted, list) and pasted:
        text += f"; {len(pasted)} mask(s) pasted at other pixels by rounding (mask head judged)"
    moved = pair.get("argmax_borderline")
    if isinstance(moved, list) and moved:
        text += (f"; {len(moved)} keypoint(s) whose argmax rounding moved to a nearly equal maximum (keypoint head "
                 "judged)")
    return text


def after_nms_ratio(pair: Mapping[str, Any]) -> float | None:
    ratios = [r for _, key in WORST if (r := _number(pair.get(key))) is not None]
    return max(ratios) if ratios else None


def detector_rows(group: Group, classname: str, spec: str, data: Mapping[str, Any],
                  dense: list[PairResult]) -> list[CheckRow]:
    """The rows of a judged detector cell (`dense`: its before-NMS pairs as the comparator's results)."""
    rows = [replace(pair_row(group, classname, pair, spec), kind=BEFORE, name=f"{BEFORE} {pair.a} vs {pair.b}")
            for pair in dense]
    for check in data.get("proposals") or []:
        passed = check.get("unexplained") == []
        text = (f"{_total(check.get('paired_per_image'))} of "
                f"{_total(check.get('reference_per_image'))} proposals paired, {_count(check.get('borderline'))} "
                f"explained by rounding, {_count(check.get('unexplained'))} unexplained")
        rows.append(CheckRow(group, PROPOSALS, f"{PROPOSALS} {check.get('a')} vs {check.get('b')}",
                             "passed" if passed else "failure",
                             text if passed else f"{spec} {check.get('a')} vs {check.get('b')}: {text}",
                             classname=classname))
    for pair in data.get("after_nms") or []:
        passed = pair.get("passed") is True
        text = after_nms_text(pair) if passed else f"{spec} {pair.get('verdict')}"
        where = f"image {pair.get('worst_image')}" if pair.get("worst_image") is not None else ""
        rows.append(CheckRow(group, AFTER, f"{AFTER} {pair.get('a')} vs {pair.get('b')}",
                             "passed" if passed else "failure", text, where, after_nms_ratio(pair),
                             classname=classname))
    refusals = data.get("refusals")
    for fmt, why in (refusals.items() if isinstance(refusals, Mapping) else []):
        rows.append(CheckRow(group, EXPORT, f"{EXPORT} {fmt}", "failure", f"{spec} {fmt}: {why}", classname=classname))
    return rows


def detector_worst(data: Mapping[str, Any], dense: list[PairResult]) -> float | None:
    """The worst ratio to the floor over both levels."""
    ratios = [p.worst.ratio for p in dense if p.outputs and p.worst.ratio is not None]
    after = [p for p in data.get("after_nms") or [] if isinstance(p, Mapping)]
    ratios += [r for p in after if (r := after_nms_ratio(p)) is not None]
    return max(ratios) if ratios else None
