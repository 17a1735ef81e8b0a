"""One detector cell run: `verify_detector`, the path `verify export -b <detector>` takes (same exports, runs and
judging), its report kept as the numbers its verdict needs (each run's detections, the oracle's NMS candidates and
those recorded under a lower score threshold,
the model's post-processing constants, the judged before-NMS pairs; for Faster R-CNN each run's RPN proposals, the
oracle's RPN NMS inputs and the RPN's constants; for Mask R-CNN each run's mask-head logits of each detection's label
and a runtime's own pasted masks, verify/matrix/mask_numbers.py; for Keypoint R-CNN each run's keypoints, keypoint
scores and heatmap logits, verify/matrix/keypoint_numbers.py), then judged again from them
(verify/matrix/detector_judging.py). Never cached: run every time, as a user model's cell is."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from verify.detect.verdict import EAGER, ORACLE
from verify.matrix.detector_judging import judge_detector_cell
from verify.matrix.detectors import detector_formats
from verify.matrix.judging import kept_disagreement
from verify.matrix.keypoint_numbers import keypoint_numbers
from verify.matrix.mask_numbers import mask_numbers
from verify.matrix.result import AGREE, DISAGREE, CellResult
from verify.pipeline.stages import OFF

if TYPE_CHECKING:
    from pathlib import Path

    from verify.detect.match import Detections
    from verify.detect.report import DetectorReport
    from verify.matrix.cell import CellJob


def run_detector_cell(job: CellJob, folder: Path | None = None) -> CellResult:
    """Verify the job's detector as `verify export -b` does (dynamic ONNX, the matrix's seed, weights and factor)
    and judge the cell again from the numbers it keeps; a disagreement the report found is never undone. Its files
    are written into `folder` (the cell's, which a killed worker's cleanup removes), else a temporary folder."""
    import warnings

    from verify.detect.check import verify_detector

    start = time.perf_counter()
    spec, settings = job.request.spec, job.request.settings
    formats = detector_formats(job.request.export.formats)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation, once per call
        report = verify_detector(spec.name, spec.norm, spec.shape, settings.weights, settings.seed, formats,
                                 factor=settings.tolerance.factor, dynamic=True, out=folder)
    result = CellResult(job.id, *spec.row, AGREE if report.passed else DISAGREE,
                        input={"shape": list(spec.shape), "image_sizes": report.image_sizes()},
                        computed_seconds=round(time.perf_counter() - start, 3), cache={"result": OFF},
                        problems=list(report.problems), detector=detector_numbers(report))
    judged = judge_detector_cell(result, settings.tolerance, formats, spec.shape[0])
    return kept_disagreement(judged, _failed(report)) if result.verdict == DISAGREE else judged


def _failed(report: DetectorReport) -> list[str]:
    """What failed in the export's own judgement: each failing pair's verdict, the layers, no detection pair."""
    failed = [f"before NMS {pair.a} vs {pair.b}" for pair in report.dense if not pair.passed]
    failed += [f"proposals {check.verdict()}" for check in report.proposals if not check.passed]
    failed += [f"after NMS {pair.verdict()}" for pair in report.detections if not pair.passed]
    failed += [f"layers of {check.candidate}" for check in report.layers if not check.passed]
    return failed + ([] if report.detections else ["no after-NMS pair judged"])


def detector_numbers(report: DetectorReport) -> dict[str, Any]:
    """What judging the cell again needs, as plain data: float64 values written as JSON numbers read back exactly."""
    oracle = report.references.get(ORACLE)
    sizes = [tuple(image.shape[-2:]) for image in report.images] if report.images else []
    return {"detector": report.name, "norm": report.norm, "weights": report.weights,
            "weights_sha256": report.weights_sha256, "classes": report.classes, "shape": list(report.shape),
            "formats": list(report.formats),
            "dynamic": report.dynamic, "rules": asdict(report.judging.rules) if report.judging else None,
            "runs": {label: [{**_plain(found), **(mask_numbers(label, found, sizes[i]) if i < len(sizes) else {}),
                              **keypoint_numbers(label, found, _eager(report, i))}
                             for i, found in enumerate(per_image)] for label, per_image in report.boxes.items()},
            "candidates": [_plain(found) for found in oracle.candidates] if oracle is not None else [],
            "below_threshold": [_plain(found) for found in oracle.below_threshold] if oracle is not None else [],
            "rpn_rules": asdict(report.judging.rpn) if report.judging and report.judging.rpn else None,
            "proposal_boxes": {label: [boxes.tolist() for boxes in per_image]
                               for label, per_image in report.proposal_boxes.items()},
            "rpn_candidates": [_plain(found) for found in oracle.rpn_candidates] if oracle is not None else [],
            "before_nms": [pair.to_dict() for pair in report.dense],
            "proposals": [check.to_dict() for check in report.proposals],
            "after_nms": [pair.to_dict() for pair in report.detections],
            "floor": report.floor.to_dict() if report.floor else None, "refusals": dict(report.refusals),
            "seconds": {k: round(v, 3) for k, v in report.seconds.items()}}


def _eager(report: DetectorReport, image: int) -> Detections | None:
    eager = report.boxes.get(EAGER) or []
    return eager[image] if image < len(eager) else None


def _plain(found: Detections) -> dict[str, list[Any]]:
    return {"boxes": found.boxes.tolist(), "scores": found.scores.tolist(), "labels": found.labels.tolist()}
