"""A detector cell's proposal pairings (Faster R-CNN, Mask R-CNN) judged again from the numbers it stored, never from
its stored pairings: each run's RPN proposals per image, the oracle's float64 RPN candidates (the RPN NMS's inputs) and
the RPN's constants, which must be the registered detector's. Each pairing `verify export -b` records is recomputed with
the export's own functions (verify/detect/proposals.py `pair_boxes`, `check_proposals`, `derive_bands`) on bands derived
here: the floor of eager's paired proposal boxes against the oracle's, measured again, and the RPN objectness logits'
floors the before-NMS pairs are judged on. The paired boxes of each ONNX run are judged as a dense tensor on that
floor, and a stored pairing must be the recomputed one."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from verify.detect.match import Detections
from verify.detect.proposals import (
    LOGITS,
    PROPOSALS,
    Bands,
    ProposalCheck,
    RpnRules,
    check_proposals,
    derive_bands,
    explain_unpaired,
    pair_boxes,
)
from verify.detect.report import Judging
from verify.detect.verdict import AFTER_NMS_ONLY, EAGER, ORACLE

if TYPE_CHECKING:
    import numpy as np

    from exporter.families.detectors import BuiltDetector
    from verify.judge.compare import Tolerance

def rpn_kind(kind: str) -> bool:
    """Whether detectors of `kind` have the RPN whose proposals the export pairs run by run (exporter/families/
    detectors.py RCNN_KINDS: Faster R-CNN and those built on it, Mask R-CNN's included; verify/detect/verdict.py pairs
    every detector with per-proposal tensors and RPN rules)."""
    from exporter.families.detectors import RCNN_KINDS

    return kind in RCNN_KINDS
STORED_SLACK = 1e-9
"""How far a stored before-NMS figure of the proposal boxes may sit from the one recomputed (both float64 from the
same numbers: equal unless edited)."""


class Malformed(ValueError):
    """Stored numbers that cannot be judged."""


def proposal_pairs(name: str, labels: list[str]) -> list[tuple[str, str]]:
    """The proposal pairings `verify export -b name` records (verify/detect/verdict.py `_Rows`): for a detector with
    an RPN, eager against the oracle and each run that shows its proposals against both; none otherwise. What a
    stored cell must hold comes from here, never from the cell."""
    from exporter.families.detectors import DETECTORS

    if not rpn_kind(DETECTORS.get(name).kind):
        return []
    shown = [label for label in labels if label not in AFTER_NMS_ONLY]
    return [(EAGER, ORACLE), *[(label, ref) for label in shown for ref in (ORACLE, EAGER)]]


@functools.cache
def registered_detector(name: str) -> BuiltDetector:
    """`name` as `verify_detector` builds it, on the meta device and in eval mode (the RPN's test-time cap): its
    constants, no weights allocated (0.06-0.26 s a detector, against seconds for a real build)."""
    import torch

    from exporter.families.detectors import DETECTORS, BuiltDetector, detector_builder

    detector = DETECTORS.get(name)
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = detector_builder(detector)(weights=None, weights_backbone=None, **detector.options).eval()
    return BuiltDetector(model, detector, detector.default_norm, "")


def judge_proposals(data: Mapping[str, Any], tolerance: Tolerance, labels: list[str], images: int, detector: str,
                    dense: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Each pairing `proposal_pairs` requires, recomputed from the stored numbers (`dense`: the before-NMS pairs as
    judged), and why the cell fails at this level."""
    required = proposal_pairs(detector, labels)
    if not required:
        return [], []
    stored = data.get("proposals") or []
    if not isinstance(stored, list) or not all(isinstance(p, Mapping) for p in stored):
        raise Malformed("proposals")
    built = registered_detector(detector)
    rules = Judging.of(built).rpn
    reasons = [] if _rpn_rules(data.get("rpn_rules")) == rules else [
        "the stored RPN constants are not the detector's (" + ", ".join(f"{k} {v:g}" for k, v in asdict(rules).items())
        + ")"]
    side = float(built.model.transform.max_size)
    boxes = _proposal_boxes(data.get("proposal_boxes"), images, side)
    candidates = _candidates(data.get("rpn_candidates"), images, side,
                             len(built.model.rpn.anchor_generator.sizes))
    missing = sorted({label for pair in required for label in pair if label not in boxes})
    if missing:
        return [], reasons + [f"proposals: no proposals recorded for {', '.join(missing)}"]
    reasons += _rpn_replayed(candidates, boxes[ORACLE], rules)
    first, bands, floor = _reference_pairing(boxes, candidates, rules, dense, tolerance.factor)
    checks = [first]
    for a, b in required[1:]:
        check, mine, theirs = check_proposals(a, b, boxes[a], boxes[b], candidates, rules, bands)
        checks.append(check)
        reasons += _paired_boxes(a, b, mine, theirs, floor, tolerance, dense)
    reasons += [f"proposals {check.verdict()}" for check in checks if not check.passed]
    reasons += _stored_problems(stored, checks)
    return [check.to_dict() for check in checks], reasons


def _rpn_replayed(candidates: Sequence[Detections], proposals: Sequence[np.ndarray], rules: RpnRules) -> list[str]:
    """The RPN's NMS and cap replayed in float64 on the oracle's stored RPN candidates must give exactly its stored
    proposals, as a detector folder's `postprocess` check does: a candidate added at the NMS threshold of a proposal
    an ONNX run lost made that loss an `RPN NMS` borderline, and the cell agreed."""
    import numpy as np

    from verify.detect.proposals import kept_order

    for image, (found, kept) in enumerate(zip(candidates, proposals, strict=True)):
        keep = kept_order(found, rules.nms_thresh)[:rules.post_nms_top_n] if len(found) else np.zeros(0, int)
        if (len(found) and float(found.scores.min()) < rules.score_thresh) or not np.array_equal(found.boxes[keep],
                                                                                                 kept):
            return [f"proposals: the stored RPN candidates of image {image} do not give eager fp64's stored proposals "
                    "under the detector's own RPN threshold, NMS threshold and cap (edited numbers); rerun the cell"]
    return []


def _reference_pairing(boxes: Mapping[str, list[np.ndarray]], candidates: list[Detections], rules: RpnRules,
                       dense: Sequence[Mapping[str, Any]], factor: float) -> tuple[ProposalCheck, Bands, float | None]:
    """Eager against the oracle, as `_Rows.floors` does it: pair, measure the floor of the paired boxes again,
    derive the bands from it and the logits' floors, then explain the unpaired proposals on them. Returns the
    check, the bands and the boxes' floor (None when no proposal pairs)."""
    import numpy as np

    from verify.judge.measure import measure_floor

    check = ProposalCheck(EAGER, ORACLE)
    mine, theirs, lone = pair_boxes(check, boxes[EAGER], boxes[ORACLE])
    measured = measure_floor(np.concatenate(mine), np.concatenate(theirs))
    floor = measured.value if measured is not None else None
    bands = derive_bands({**_logit_floors(dense), **({PROPOSALS: floor} if floor is not None else {})}, factor)
    explain_unpaired(check, lone, boxes[EAGER], boxes[ORACLE], candidates, rules, bands)
    return check, bands, floor


def _logit_floors(dense: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The RPN objectness logits' floors, as the before-NMS pairs are judged on them (the least where pairs
    differ): the one stored figure the score band takes, no more trusted than the before-NMS level itself."""
    floors: dict[str, float] = {}
    for pair in dense:
        for output in pair.get("outputs") or []:
            name, value = output.get("name"), output.get("floor")
            if isinstance(name, str) and name.startswith(LOGITS) and isinstance(value, float) and value > 0:
                floors[name] = min(value, floors.get(name, math.inf))
    return floors


def _paired_boxes(a: str, b: str, mine: list[np.ndarray], theirs: list[np.ndarray], floor: float | None,
                  tolerance: Tolerance, dense: Sequence[Mapping[str, Any]]) -> list[str]:
    """The paired boxes of `a` and `b` judged as the dense tensor `PROPOSALS` on the floor measured again; the
    stored before-NMS comparison of them must give the same figures."""
    import numpy as np

    from verify.judge.compare import compare_outputs

    if floor is None:
        return [f"proposals {a} vs {b}: eager and eager fp64 pair no proposal, so there is no floor to judge the "
                "paired boxes on"]
    result = compare_outputs(a, {PROPOSALS: np.concatenate(mine)}, b, {PROPOSALS: np.concatenate(theirs)},
                             tolerance, {PROPOSALS: floor}).outputs[0]
    reasons = [] if result.passed else [f"proposals {a} vs {b}: the paired boxes differ by {result.ratio:.3g}x "
                                        f"the floor, over the factor {tolerance.factor:g}"]
    stored = [o for p in dense if (p.get("a"), p.get("b")) == (a, b) for o in p.get("outputs") or []
              if o.get("name") == PROPOSALS]
    if len(stored) != 1 or not all(_same(stored[0].get(key), getattr(result, key)) for key in ("max_abs", "floor")):
        reasons.append(f"before NMS {a} vs {b}: its comparison of the proposal boxes is not the one the stored "
                       "boxes give (edited numbers); rerun the cell")
    return reasons


def _same(stored: Any, recomputed: float | None) -> bool:
    return isinstance(stored, float) and recomputed is not None and \
        abs(stored - recomputed) <= STORED_SLACK * max(abs(stored), abs(recomputed))


def _stored_problems(stored: list[Mapping[str, Any]], checks: list[ProposalCheck]) -> list[str]:
    """A required pairing missing from the shard, or stored other than recomputed (an emptied `unexplained` list,
    edited counts): the shard was not what its numbers say."""
    found = {(p.get("a"), p.get("b")): p for p in stored}
    absent = [f"{c.a} vs {c.b}" for c in checks if (c.a, c.b) not in found]
    reasons = [f"proposals: no pairing stored for {', '.join(absent)}; the export pairs them, so a cell without "
               "them was not judged as it was run (rerun the cell)"] if absent else []
    return reasons + [f"proposals {c.a} vs {c.b}: the stored pairing is not the one its stored boxes give "
                      "(edited numbers); rerun the cell" for c in checks
                      if (c.a, c.b) in found and found[(c.a, c.b)] != json.loads(json.dumps(c.to_dict()))]


def _rpn_rules(stored: Any) -> RpnRules:
    if not isinstance(stored, Mapping):
        raise Malformed("no RPN constants recorded")
    nms, cap, score = stored.get("nms_thresh"), stored.get("post_nms_top_n"), stored.get("score_thresh")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (nms, score)) \
            or not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
        raise Malformed("RPN constants")
    return RpnRules(float(nms), cap, float(score))


def _proposal_boxes(stored: Any, images: int, side: float) -> dict[str, list[np.ndarray]]:
    """Each run's proposals per image as N x 4 float64 arrays: numbers only, finite and inside the RPN's image
    (0 to the transform's largest side: the RPN clips every box to it)."""
    if not isinstance(stored, Mapping) or not all(isinstance(v, list) for v in stored.values()):
        raise Malformed("no proposal boxes recorded")
    found = {}
    for label, per_image in stored.items():
        if len(per_image) != images:
            raise Malformed(f"{len(per_image)} images of {label} proposals, {images} judged")
        found[str(label)] = [_box_array(image, side) for image in per_image]
    return found


def _box_array(image: Any, side: float) -> np.ndarray:
    import numpy as np

    if isinstance(image, list) and not image:
        return np.zeros((0, 4))
    try:
        array = np.asarray(image if isinstance(image, list) else None)
    except ValueError:  # rows of several lengths
        array = np.asarray(None)
    if array.dtype.kind not in "iuf" or array.ndim != 2 or array.shape[1] != 4 or not _inside(array, side):
        raise Malformed(f"proposal boxes that are not N x 4 finite numbers within the {side:g}-pixel image")
    return array.astype(np.float64)


def _inside(array: np.ndarray, side: float) -> bool:
    import numpy as np

    return bool(np.isfinite(array).all()) and (not array.size or (array.min() >= 0 and array.max() <= side))


def _candidates(stored: Any, images: int, side: float, levels: int) -> list[Detections]:
    """The oracle's RPN NMS inputs per image: boxes inside the image, scores as the sigmoid gives them (0 to 1),
    levels of the RPN's feature maps; a candidate far outside would widen the NMS band explain_lone allows."""
    found = detections_of(stored)
    if len(found) != images:
        raise Malformed(f"{len(found)} images of RPN candidates, {images} judged")
    for one in found:
        if not (_inside(one.boxes, side) and _inside(one.scores, 1.0) and _inside(one.labels, levels - 1)):
            raise Malformed("RPN candidates outside the image, with scores outside 0 to 1, or of no RPN level")
    return found


PLAIN = ("boxes", "scores", "labels")
"""What `detections_of` reads of an image: a stored `masks` or `keypoints` there (any shape) was read as an object
array by `Detections.of`; a kind's own per-detection numbers are attached by their modules (mask_numbers.py,
keypoint_numbers.py), checked, for that kind only."""


def detections_of(stored: Any) -> list[Detections]:
    """One Detections per image from their JSON form (boxes, scores and labels only); anything but finite boxes and
    scores and whole labels fails."""
    import numpy as np

    if not isinstance(stored, list):
        raise Malformed("detections are not a list of images")
    found = []
    for image in stored:
        if not isinstance(image, Mapping):
            raise Malformed("an image's detections")
        labels = np.asarray(image["labels"], dtype=np.float64).reshape(-1)
        one = Detections.of({key: image[key] for key in PLAIN})  # per-detection arrays: attached by their kind only
        if not (len(one.boxes) == len(one.scores) == len(labels)) or not np.isfinite(one.boxes).all() \
                or not np.isfinite(one.scores).all() or not np.array_equal(labels, one.labels):
            raise Malformed("detections with unequal lengths, non-finite values or fractional labels")
        found.append(one)
    return found
