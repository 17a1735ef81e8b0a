"""A detector cell judged again from the numbers it stored, never from its `verdict`: after NMS, every pair is
recomputed from each run's stored detections with the functions `verify export -b <detector>` judges by
(verify/detect/match.py: the floor from eager float32 vs float64, `compare_detections` with the model's
post-processing constants and the oracle's NMS candidates); before NMS, each stored pair is judged again like a
backbone's (verify/matrix/judging.py `judge_pair`); every run the matrix asked for must be there."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

from verify.detect.check import AFTER_NMS_ONLY, EAGER, ORACLE, RUNTIMES
from verify.detect.match import Detections, Rules, compare_detections, measure_detection_floor
from verify.matrix.judging import JUDGED, judge_cell, judge_pair
from verify.matrix.result import AGREE, DISAGREE, ERROR, CellResult

if TYPE_CHECKING:
    from verify.detect.match import DetectionPair
    from verify.judge.compare import Tolerance



LEVELS = ("before_nms", "proposals", "after_nms")
"""A detector cell's judged levels, as its numbers store them."""
RPN_KIND = "fasterrcnn"
"""The detector kind (exporter/families/detectors.py) whose RPN proposals the export pairs run by run."""


class Malformed(ValueError):
    """Stored numbers that cannot be judged."""


def judge_detector_cell(cell: CellResult, tolerance: Tolerance, formats: Sequence[str], images: int) -> CellResult:
    """The cell with its verdict derived from its stored numbers: `formats` and `images` are what the matrix asked
    for (not what the cell claims). Agree only when every run is there and every pair at both levels passes."""
    error = None if cell.error is None else (str(cell.error) or "the cell failed to run")
    own = [str(p) for p in cell.problems if not str(p).startswith(JUDGED)] \
        if isinstance(cell.problems, list) else ["malformed problems"]
    data = cell.detector if isinstance(cell.detector, Mapping) else {}
    if error:
        kept = _unjudged(data) if isinstance(cell.detector, Mapping) else None
        return replace(cell, pairs=[], detector=kept, verdict=ERROR, error=error, problems=own)
    try:
        judged, reasons = _judge(data, tolerance, [RUNTIMES[f] for f in formats], images, cell.backbone)
    except (Malformed, KeyError, TypeError, ValueError, OverflowError) as exc:  # overflow: a label past int64
        judged, reasons = _unjudged(data), [f"the detector cell's numbers cannot be judged ({exc}); rerun the cell"]
    found = own + [f"{JUDGED}{text}" for text in reasons if f"{JUDGED}{text}" not in own]
    return replace(cell, pairs=[], detector=judged, verdict=DISAGREE if found else AGREE, problems=found)


def _unjudged(data: Mapping[str, Any]) -> dict[str, Any]:
    """A cell's numbers that were not judged, without the levels every renderer reads as judged pairs: what a shard
    stored there may have any shape (a forged `proposals: [1]` ended the merge with an AttributeError)."""
    return {**data, **{key: [] for key in LEVELS}, "refusals": {}}


def judge_result(cell: CellResult, tolerance: Tolerance, detector: tuple[tuple[str, ...], int] | None,
                 runtimes: int | None = None) -> CellResult:
    """Any cell judged as what the matrix made it: `detector` (its formats and image count) for a detector cell,
    None for a backbone's or a user model's (whose stored `detector` numbers, if any, are dropped)."""
    if detector is None:
        return judge_cell(replace(cell, detector=None), tolerance, runtimes)
    return judge_detector_cell(cell, tolerance, *detector)


def _judge(data: Mapping[str, Any], tolerance: Tolerance, labels: list[str],
           images: int, detector: str) -> tuple[dict[str, Any], list[str]]:
    reasons = [] if tolerance.mode == "auto" else ["a detector is judged on the oracle's floor (auto mode) only"]
    refusals = data.get("refusals") or {}
    if not isinstance(refusals, Mapping):
        raise Malformed("refusals")
    reasons += [f"export {fmt}: {why}" for fmt, why in refusals.items()]
    after, floor, why = _after_nms(data, tolerance.factor, labels, images, registered_rules(detector))
    reasons += why
    dense, why = _before_nms(data.get("before_nms"), tolerance, [lb for lb in labels if lb not in AFTER_NMS_ONLY])
    reasons += why
    proposals = data.get("proposals") or []
    if not isinstance(proposals, list) or not all(isinstance(p, Mapping) for p in proposals):
        raise Malformed("proposals")
    stored = {(check.get("a"), check.get("b")) for check in proposals}
    absent = [f"{a} vs {b}" for a, b in proposal_pairs(detector, labels) if (a, b) not in stored]
    if absent:
        reasons.append(f"proposals: no pairing stored for {', '.join(absent)}; the export pairs them, so a cell "
                       "without them was not judged as it was run (rerun the cell)")
    for check in proposals:
        lone = check.get("unexplained")
        if not isinstance(lone, list) or lone:
            reasons.append(f"proposals {check.get('a')} vs {check.get('b')}: "
                           f"{len(lone) if isinstance(lone, list) else 'no count of'} proposals in one run only that "
                           "rounding does not explain")
    return {**data, "before_nms": dense, "after_nms": [p.to_dict() for p in after],
            "floor": floor.to_dict() if floor else None}, reasons


def _after_nms(data: Mapping[str, Any], factor: float, labels: list[str], images: int,
               rules: Rules) -> tuple[list[DetectionPair], Any, list[str]]:
    """The after-NMS pairs `verify export` judges (eager vs the oracle, each runtime vs the oracle and vs eager),
    recomputed from the stored detections under the detector's own post-processing constants (`rules`): the
    stored ones must be those, since they decide which unmatched detection rounding explains."""
    runs = data.get("runs")
    if not isinstance(runs, Mapping):
        raise Malformed("no detections recorded")
    found = {label: _detections(runs[label]) for label in (EAGER, ORACLE, *labels) if label in runs}
    missing = [label for label in (EAGER, ORACLE, *labels) if label not in found]
    reasons = [f"no {label} detections recorded" for label in missing]
    if EAGER in missing or ORACLE in missing:
        return [], None, reasons
    eager, oracle = found[EAGER], found[ORACLE]
    if len(eager) != images or len(oracle) != images:
        return [], None, reasons + [f"{len(eager)} and {len(oracle)} images recorded for eager and eager fp64, "
                                    f"{images} judged"]
    floor = measure_detection_floor(eager, oracle)
    if floor is None:
        return [], None, reasons + ["eager float32 and float64 share no detection: no floor to judge on"]
    if _rules(data.get("rules")) != rules:
        reasons.append("the stored post-processing constants are not the detector's ("
                       f"{', '.join(f'{k} {v:g}' for k, v in asdict(rules).items())})")
    candidates = _detections(data.get("candidates"))
    if len(candidates) != images:
        raise Malformed(f"{len(candidates)} images of NMS candidates, {images} judged")
    pairs = [compare_detections(EAGER, eager, ORACLE, oracle, floor, rules, candidates, factor)]
    for label in labels:
        if label in found:
            pairs += [compare_detections(label, found[label], ref, reference, floor, rules, candidates, factor)
                      for ref, reference in ((ORACLE, oracle), (EAGER, eager))]
    return pairs, floor, reasons + [pair.verdict() for pair in pairs if not pair.passed]


def _before_nms(stored: Any, tolerance: Tolerance, labels: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Each stored dense pair judged again; they must be each ONNX run against the oracle and against eager, each
    over the same tensors."""
    if not isinstance(stored, list) or not all(isinstance(p, Mapping) for p in stored):
        raise Malformed("before-NMS pairs")
    judged, reasons = [], []
    for pair in stored:
        result, why = judge_pair(pair, tolerance)
        judged.append(result)
        reasons += [f"before NMS {text}" for text in why]
    keys = sorted((str(p.get("a")), str(p.get("b")), str(p.get("kind"))) for p in stored)
    expected = sorted([(label, ORACLE, "oracle") for label in labels] + [(label, EAGER, "runtime") for label in labels])
    if keys != expected:
        reasons.append("the before-NMS pairs are not each ONNX run against eager and eager fp64, once each")
    names = {tuple(sorted(str(o.get("name")) for o in p["outputs"])) for p in judged}
    if len(names) > 1 or (judged and not next(iter(names))):
        reasons.append("the before-NMS pairs do not all compare the same tensors")
    return judged, reasons


def _detections(stored: Any) -> list[Detections]:
    """One Detections per image from their JSON form; anything but finite boxes and scores and whole labels fails."""
    import numpy as np

    if not isinstance(stored, list):
        raise Malformed("detections are not a list of images")
    found = []
    for image in stored:
        if not isinstance(image, Mapping):
            raise Malformed("an image's detections")
        labels = np.asarray(image["labels"], dtype=np.float64).reshape(-1)
        one = Detections.of(image)
        if not (len(one.boxes) == len(one.scores) == len(labels)) or not np.isfinite(one.boxes).all() \
                or not np.isfinite(one.scores).all() or not np.array_equal(labels, one.labels):
            raise Malformed("detections with unequal lengths, non-finite values or fractional labels")
        found.append(one)
    return found


def proposal_pairs(name: str, labels: list[str]) -> list[tuple[str, str]]:
    """The proposal pairings `verify export -b name` records (verify/detect/check.py `_Rows`): for a detector with
    an RPN, eager against the oracle and each run that shows its proposals against both; none otherwise. What a
    stored cell must hold comes from here, never from the cell."""
    from exporter.families.detectors import DETECTORS

    if DETECTORS.get(name).kind != RPN_KIND:
        return []
    shown = [label for label in labels if label not in AFTER_NMS_ONLY]
    return [(EAGER, ORACLE), *[(label, ref) for label in shown for ref in (ORACLE, EAGER)]]


@functools.cache
def registered_rules(name: str) -> Rules:
    """The post-processing constants `verify_detector` builds `name` with, read from torchvision's builder on the
    meta device (no weights allocated: 0.06-0.26 s a detector, against seconds for a real build)."""
    import torch
    import torchvision.models.detection as detection

    from exporter.families.detectors import DETECTORS, BuiltDetector

    detector = DETECTORS.get(name)
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = getattr(detection, name)(weights=None, weights_backbone=None, **detector.options)
    built = BuiltDetector(model, detector, detector.default_norm, "")
    return Rules(built.score_thresh, built.nms_thresh, built.detections_per_img)


def _rules(stored: Any) -> Rules:
    if not isinstance(stored, Mapping):
        raise Malformed("no post-processing constants recorded")
    score, nms, cap = stored.get("score_thresh"), stored.get("nms_thresh"), stored.get("detections_per_img")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (score, nms)) \
            or not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
        raise Malformed("post-processing constants")
    return Rules(float(score), float(nms), cap)
