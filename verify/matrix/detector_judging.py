"""A detector cell judged again from the numbers it stored, never from its `verdict`: after NMS, every pair is
recomputed from each run's stored detections with the functions `verify export -b <detector>` judges by
(verify/detect/match.py: the floor from eager float32 vs float64, `compare_detections` with the model's
post-processing constants, the oracle's NMS candidates and those under a lower score threshold; Mask R-CNN's masks
from each run's stored mask logits and a runtime's stored masks, verify/matrix/mask_numbers.py; Keypoint R-CNN's
keypoints, keypoint scores and heatmap logits, verify/matrix/keypoint_numbers.py), each stored pair
bound to the recomputed one (dense_binding.py `after_nms_disagreements`); before NMS, each
stored pair is judged again like a backbone's (verify/matrix/judging.py `judge_pair`); the proposal pairings are
recomputed from the stored proposals (verify/matrix/proposal_judging.py); every run the matrix asked for must be
there."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

from verify.detect.match import Detections, Rules, compare_detections, measure_detection_floor
from verify.detect.verdict import AFTER_NMS_ONLY, EAGER, ORACLE, RUNTIMES, size_scales
from verify.matrix.dense_binding import after_nms_disagreements, floor_disagreements, level_problems
from verify.matrix.judging import JUDGED, judge_cell, judge_pair
from verify.matrix.keypoint_numbers import attach_all, head_shape
from verify.matrix.mask_numbers import attach_masks
from verify.matrix.proposal_judging import Malformed, detections_of, judge_proposals, registered_detector
from verify.matrix.result import AGREE, DISAGREE, ERROR, CellResult

if TYPE_CHECKING:
    from verify.detect.match import DetectionPair
    from verify.judge.compare import Tolerance



NMS_JUDGED_KINDS = frozenset({"fasterrcnn", "maskrcnn", "keypointrcnn", "retinanet", "fcos", "ssd"})
"""The detector kinds whose cells judge the final NMS's inputs (`final_nms.boxes`, `final_nms.scores`) before NMS
(hunt 20a: RetinaNet and SSDlite; hunt 21a: Faster R-CNN): a cell without them lost that judgement (hunt 21b)."""
LEVELS = ("before_nms", "proposals", "after_nms")
"""A detector cell's judged levels, as its numbers store them."""


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
    from verify.matrix.detectors import unstored_outputs

    unstored = unstored_outputs(detector)
    if unstored:  # outputs a cell does not store: never a pass, nor judged on its boxes alone
        return _unjudged(data), [*reasons, unstored]
    refusals = data.get("refusals") or {}
    if not isinstance(refusals, Mapping):
        raise Malformed("refusals")
    reasons += [f"export {fmt}: {why}" for fmt, why in refusals.items()]
    from verify.detect.goldens import CLASSES

    classes = stored_classes(data)
    after, floor, why = _after_nms(data, tolerance.factor, labels, images, detector,
                                   CLASSES if classes is None else classes)
    reasons += why + after_nms_disagreements(data.get("after_nms"), [p.to_dict() for p in after])
    dense, why = _before_nms(data.get("before_nms"), tolerance, [lb for lb in labels if lb not in AFTER_NMS_ONLY],
                             detector)
    reasons += why + _class_width(dense, classes, detector)
    proposals, why = judge_proposals(data, tolerance, labels, images, detector, dense)
    reasons += why
    return {**data, "before_nms": dense, "proposals": proposals, "after_nms": [p.to_dict() for p in after],
            "floor": floor.to_dict() if floor else None}, reasons


def stored_classes(data: Mapping[str, Any]) -> int | None:
    """The class count the cell's detector was built with, as the cell stored it beside its name and weights (a
    fine-tuned checkpoint's, verify/matrix/detector_cell.py `detector_numbers`); None for a cell stored before it was
    (its labels are below torchvision's default, CLASSES). Not an int within the manifest's bounds: Malformed (it
    bounds every stored label)."""
    from exporter.detector_manifest import MAX_CLASSES, MIN_CLASSES

    if "classes" not in data:
        return None
    classes = data["classes"]
    if not isinstance(classes, int) or isinstance(classes, bool) or not MIN_CLASSES <= classes <= MAX_CLASSES:
        raise Malformed(f"the class count {classes!r} (an int from {MIN_CLASSES} to {MAX_CLASSES})")
    return classes


def _class_width(dense: Sequence[Mapping[str, Any]], classes: int | None, detector: str) -> list[str]:
    """The heads judged before NMS are as wide as the stored class count (a cell stored without one: at most CLASSES):
    Faster R-CNN's class logits, one column a class, and RetinaNet's, FCOS's and SSDlite's class heads, their anchors'
    classes a location (verify/detect/goldens.py `class_width_problem`), so that an edited count cannot widen the
    label bound unnoticed."""
    from verify.detect.goldens import CLASSES, class_width_problem

    for pair in dense:
        outputs = [o for o in pair.get("outputs") or [] if isinstance(o, Mapping)]
        wrong = class_width_problem({str(o.get("name")): o.get("shape_b") for o in outputs}, classes)
        if wrong:
            recorded = f"records {classes} classes" if classes is not None else f"records none (at most {CLASSES})"
            return [f"the before-NMS {wrong}, but the cell {recorded} of {detector} (edited numbers); rerun the cell"]
    return []


def _after_nms(data: Mapping[str, Any], factor: float, labels: list[str], images: int,
               detector: str, classes: int) -> tuple[list[DetectionPair], Any, list[str]]:
    """The after-NMS pairs `verify export` judges (eager vs the oracle, each runtime vs the oracle and vs eager),
    recomputed from the stored detections under the detector's own post-processing constants: the stored ones
    must be those, since they decide which unmatched detection rounding explains; so must the stored NMS inputs
    (`_replayed`, every label below `classes`), whose largest coordinate and label widen every NMS band."""
    rules = registered_rules(detector)
    runs = data.get("runs")
    if not isinstance(runs, Mapping):
        raise Malformed("no detections recorded")
    found = {label: detections_of(runs[label]) for label in (EAGER, ORACLE, *labels) if label in runs}
    built = registered_detector(detector)
    masked, keyed = built.masks, built.keypoints  # the registry's kind decides, never what the cell holds
    if masked:
        size = _image_size(data.get("shape"), images)
        for label, per_image in found.items():
            attach_masks(label, per_image, runs[label], size)
    if keyed:
        attach_all(found, runs, head_shape(built))
    missing = [label for label in (EAGER, ORACLE, *labels) if label not in found]
    reasons = [f"no {label} detections recorded" for label in missing]
    if EAGER in missing or ORACLE in missing:
        return [], None, reasons
    eager, oracle = found[EAGER], found[ORACLE]
    if len(eager) != images or len(oracle) != images:
        return [], None, reasons + [f"{len(eager)} and {len(oracle)} images recorded for eager and eager fp64, "
                                    f"{images} judged"]
    size = _image_size(data.get("shape"), images)
    scales = size_scales(detector, [size] * images)  # the keypoints' argmax cells are in the detector's own frame
    floor = measure_detection_floor(eager, oracle, scales)
    if floor is None:
        return [], None, reasons + ["eager float32 and float64 share no detection: no floor to judge on"]
    if masked and floor.masks is None:  # never a Mask R-CNN judged on its boxes alone
        reasons.append(f"eager float32 and its float64 oracle store no mask logits for every detection of {detector}: "
                       "its masks cannot be judged; rerun the cell")
    if keyed and floor.keypoints is None:  # never a Keypoint R-CNN judged on its boxes alone
        reasons.append(f"eager float32 and its float64 oracle store no keypoints, keypoint scores and heatmap logits "
                       f"for every detection of {detector}: its keypoints cannot be judged; rerun the cell")
    if _rules(data.get("rules")) != rules:
        reasons.append("the stored post-processing constants are not the detector's ("
                       f"{', '.join(f'{k} {v:g}' for k, v in asdict(rules).items())})")
    candidates = detections_of(data.get("candidates"))
    if len(candidates) != images:
        raise Malformed(f"{len(candidates)} images of NMS candidates, {images} judged")
    if "below_threshold" not in data:
        raise Malformed("no NMS inputs below the score threshold recorded (a cell stored before they were)")
    below = detections_of(data.get("below_threshold"))
    if len(below) != images:
        raise Malformed(f"{len(below)} images of NMS inputs below the score threshold, {images} judged")
    reasons += _replayed(candidates, oracle, rules, detector, size, classes)
    reasons += _below_replayed(below, candidates, rules, detector, size, classes)
    # a detection in one run only is a cap or NMS borderline only if the float64 model proposed it (hunt 18b), and a
    # score threshold one only if it had it under a lower threshold (hunt 19d)
    pairs = [compare_detections(EAGER, eager, ORACLE, oracle, floor, rules, candidates, factor, scales, below)]
    for label in labels:
        if label in found:
            pairs += [compare_detections(label, found[label], ref, reference, floor, rules, candidates, factor, scales,
                                         below) for ref, reference in ((ORACLE, oracle), (EAGER, eager))]
    return pairs, floor, reasons + [pair.verdict() for pair in pairs if not pair.passed]


def _before_nms(stored: Any, tolerance: Tolerance, labels: list[str], detector: str
                ) -> tuple[list[dict[str, Any]], list[str]]:
    """Each stored dense pair judged again; they must be each ONNX run against the oracle and against eager, each
    over the same tensors, which hold every head of the detector and its anchors (as a folder's manifest must)."""
    from exporter.families.detectors import ANCHOR_MODULES, DETECTORS, missing_dense_modules, per_proposal_modules
    from verify.detect.nms_inputs import BOXES, SCORES

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
    missing = missing_dense_modules({name for group in names for name in group}, DETECTORS.get(detector).kind) \
        if judged else []
    if missing:  # hunt 19a's anchors, or a head, cut out of every pair alike: that part was never judged (review 18)
        reasons.append(f"the before-NMS pairs leave out {missing[0]}, a dense tensor of {detector}, which every "
                       "cell judges (edited numbers); rerun the cell")
    kind = DETECTORS.get(detector).kind
    lost = [name for name in (BOXES, SCORES) if kind in NMS_JUDGED_KINDS and judged
            and not any(held.partition("@")[0] == name for group in names for held in group)]
    if lost:  # hunt 20a's decoded candidates cut out of every pair alike: the decoding judged after NMS only again
        reasons.append(f"the before-NMS pairs leave out {lost[0]}, the final NMS's inputs of {detector}, which every "
                       "cell judges (edited numbers); rerun the cell")
    if judged and not missing and len(names) == 1:  # FCOS's centerness level cut out, or its floor raised in one pair
        reasons += floor_disagreements(stored, per_proposal_modules(kind))
        shapes = {str(o.get("name")): o.get("shape_b") for o in stored[0]["outputs"] if isinstance(o, Mapping)}
        reasons += level_problems(shapes, kind, ANCHOR_MODULES[kind])
    return judged, reasons


def _image_size(shape: Any, images: int) -> tuple[int, int]:
    """H x W of the cell's synthetic images, from its stored N x 3 x H x W (what the candidates are scaled back to)."""
    if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                 and v >= 1 for v in shape) and shape[0] == images):
        raise Malformed(f"the image shape {shape!r}, for {images} images")
    return shape[2], shape[3]


def _replayed(candidates: Sequence[Detections], oracle: Sequence[Detections], rules: Rules, detector: str,
              size: tuple[int, int], classes: int) -> list[str]:
    """The oracle's stored final-NMS inputs as a detector gives them (boxes inside the transform's image, scores 0 to
    1, labels among the classes; else Malformed), and the model's NMS and cap replayed on them in float64 giving
    exactly its stored detections (boxes scaled back to the `size` image), as a detector folder's `postprocess`
    check does. One candidate of label 10**12, or one box at 1e9 px, made every NMS band so wide that a run which
    lost 22 of 50 detections agreed; one candidate box moved to IoU 0.4999 from a kept one made its loss `NMS`."""
    import numpy as np

    from exporter.families.detectors import DETECTORS, resized_size
    from verify.detect.goldens import BOX_SLACK
    from verify.detect.proposals import kept_order, moved_boxes

    resized = resized_size(DETECTORS.get(detector), *size)
    side = float(max(resized))
    for image, (found, kept) in enumerate(zip(candidates, oracle, strict=True)):
        boxes = found.boxes
        if len(found) and not (boxes.min() >= -BOX_SLACK and boxes.max() <= side + BOX_SLACK
                               and found.scores.min() >= 0.0 and found.scores.max() <= 1.0
                               and found.labels.min() >= 0 and found.labels.max() < classes):
            raise Malformed(f"NMS candidates of image {image} outside the {side:g}-pixel image, with scores outside 0 "
                            f"to 1, or of labels outside 0 to {classes - 1}")
        keep = kept_order(found, rules.nms_thresh)[:rules.detections_per_img] if len(found) else np.zeros(0, int)
        if (len(found) and float(found.scores.min()) <= rules.score_thresh) or not (
                np.array_equal(found.scores[keep], kept.scores) and np.array_equal(found.labels[keep], kept.labels)):
            return [f"the stored NMS candidates of image {image} do not give eager fp64's stored detections under the "
                    "detector's own score threshold, NMS threshold and cap (edited numbers); rerun the cell"]
        if moved_boxes(found, kept, rules, size, resized):
            return [f"the stored NMS candidates of image {image}, scaled back to the image, are not eager fp64's "
                    "stored detection boxes (edited numbers); rerun the cell"]
    return []


def _below_replayed(below: Sequence[Detections], candidates: Sequence[Detections], rules: Rules, detector: str,
                   size: tuple[int, int], classes: int) -> list[str]:
    """The oracle's stored final-NMS inputs under a lower score threshold as a detector gives them (else Malformed),
    all above that threshold and, above the detector's own, exactly its stored candidates (verify/detect/verdict.py
    `below_threshold_mismatch`): they decide which `score threshold` borderline the float64 model had."""
    from exporter.families.detectors import DETECTORS, resized_size
    from verify.detect.goldens import BOX_SLACK
    from verify.detect.verdict import below_threshold_mismatch

    side = float(max(resized_size(DETECTORS.get(detector), *size)))
    for image, (found, kept) in enumerate(zip(below, candidates, strict=True)):
        if len(found) and not (found.boxes.min() >= -BOX_SLACK and found.boxes.max() <= side + BOX_SLACK
                               and found.scores.min() >= 0.0 and found.scores.max() <= 1.0
                               and found.labels.min() >= 0 and found.labels.max() < classes):
            raise Malformed(f"NMS inputs below the score threshold of image {image} outside the {side:g}-pixel image, "
                            f"with scores outside 0 to 1, or of labels outside 0 to {classes - 1}")
        wrong = below_threshold_mismatch(found, kept, rules.score_thresh)
        if wrong:
            return [f"the stored NMS inputs of image {image} under a lower score threshold {wrong} (edited numbers); "
                    "rerun the cell"]
    return []


def registered_rules(name: str) -> Rules:
    """The post-processing constants `verify_detector` builds `name` with, read from torchvision's builder on the
    meta device (proposal_judging.py `registered_detector`)."""
    built = registered_detector(name)
    return Rules(built.score_thresh, built.nms_thresh, built.detections_per_img)


def _rules(stored: Any) -> Rules:
    if not isinstance(stored, Mapping):
        raise Malformed("no post-processing constants recorded")
    score, nms, cap = stored.get("score_thresh"), stored.get("nms_thresh"), stored.get("detections_per_img")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (score, nms)) \
            or not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
        raise Malformed("post-processing constants")
    return Rules(float(score), float(nms), cap)
