"""Mask R-CNN in `verify matrix` (verify/matrix/mask_numbers.py, detector_cell.py, detector_judging.py): a cell stores
each run's mask-head logits of each detection's label (and a runtime's own pasted masks, as what differs from
torchvision's paste of them), the matrix and its merge judge the masks again from them with the export's functions,
a stored mask floor or logits edited in one pair never merges into exit 0, a seeded mask-head error fails the cell,
and a kind whose per-detection outputs a cell does not store is refused. One Mask R-CNN registered at 64 px (as in
tests/test_masks44.py), one in-process matrix run for the module; the 320 px run is measured in the report."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from exporter.errors import UsageError
from exporter.families.detectors import DETECTORS, MASK_LOGITS, Detector
from tests.helpers import DETECTOR_ONNX as ONNX
from tests.helpers import (
    ONE_CHANNEL_ERROR,
    TINY_DETECTOR,
    forged_detector_merge_fails,
    scaled_onnx_weight,
    small_roi_pool,
    tiny_rcnn_options,
)
from verify.cli import app
from verify.detect.export import DEFAULT_FORMATS, FILE_NAMES
from verify.detect.report import DetectorReport, Judging
from verify.detect.verdict import EAGER, ORACLE, RUNTIMES, judge_runs
from verify.judge.compare import AUTO_FACTOR, Tolerance
from verify.matrix import AGREE, DISAGREE, load_result, merge_results
from verify.matrix.detector_cell import detector_numbers
from verify.matrix.detector_judging import judge_detector_cell
from verify.matrix.detectors import CELL_KINDS, DETECTOR_VIEW, DetectorSpec
from verify.matrix.mask_numbers import LOGITS_KEY, MASKS_KEY, REDERIVED, attach_masks, pack, run_dtype, unpack
from verify.matrix.proposal_judging import detections_of, registered_detector
from verify.matrix.result import CellResult
from verify.render.detections import MASK_HEADER, detector_markdown

TINY = TINY_DETECTOR
TINY_MASK = Detector("maskrcnn_tiny_matrix", "maskrcnn", None, ("batch", "frozen"),
                     tiny_rcnn_options(mask_roi_pool=small_roi_pool()), builder="maskrcnn_resnet50_fpn")
"""torchvision's Mask R-CNN at TINY px, its mask head on 7 x 7 RoIs and MIN_DETECTIONS detections."""
SPEC = f"{TINY_MASK.name}:{TINY_MASK.default_norm}:{DETECTOR_VIEW}"


@pytest.fixture(scope="module")
def mask_matrix(module_tmp):
    """`verify matrix -b <the tiny Mask R-CNN> --format onnx` as shard 1/1, in-process (the ONNX file alone: its traced
    paste is the one that is not torchvision's); verify_detector spied on, and the cell's ONNX file copied with a 0.1 %
    error in the detected class's channel of the mask predictor before its folder goes."""
    from verify.detect import check

    where = module_tmp("mask-matrix")
    made = []

    def spy(*args, _real=check.verify_detector, **kwargs):
        report = _real(*args, **kwargs)
        labels = report.references[ORACLE].detections[0].labels
        scaled_onnx_weight(report.files[ONNX], where / FILE_NAMES[ONNX], f"{MASK_LOGITS}.weight",
                           int(np.bincount(labels).argmax()), ONE_CHANNEL_ERROR)
        made.append(report)
        return report

    with DETECTORS.adding(TINY_MASK.name, TINY_MASK), pytest.MonkeyPatch.context() as patch:
        patch.setattr(check, "verify_detector", spy)
        result = CliRunner().invoke(app, ["matrix", "-b", TINY_MASK.name, "--norm", TINY_MASK.default_norm,
                                          "--detector-shape", f"1x3x{TINY}x{TINY}", "--format", ONNX, "--no-cache",
                                          "--shard", "1/1",
                                          "--json", str(where / "m.json"), "--markdown", str(where / "m.md"),
                                          "--junit", str(where / "m.xml")])
        report = load_result(where / "m.json")
        yield SimpleNamespace(result=result, calls=made, path=where / "m.json", report=report, seeded=where /
                              FILE_NAMES[ONNX], cell=next(c for c in report.cells if c.view == DETECTOR_VIEW))


def test_a_mask_rcnn_cell_stores_its_mask_logits_and_agrees_judged_again(mask_matrix):
    """The cell's after-NMS pairs, masks included, recomputed from its stored numbers, are the export report's own,
    number for number; each run stores its logits, a runtime also its own masks; the rows read the mask ratios."""
    assert mask_matrix.result.exit_code == 0, mask_matrix.result.output
    (report,) = mask_matrix.calls
    numbers = mask_matrix.cell.detector
    assert mask_matrix.cell.verdict == AGREE and report.passed
    assert numbers["after_nms"] == json.loads(json.dumps([d.to_dict() for d in report.detections]))
    assert all(p["floor"]["masks"] == report.floor.masks and p["worst_mask_head_ratio"] <= AUTO_FACTOR
               for p in numbers["after_nms"])
    for label, images in numbers["runs"].items():
        logits = unpack(images[0][LOGITS_KEY], run_dtype(label), label)
        assert np.array_equal(logits, report.boxes[label][0].mask_logits)
        assert (MASKS_KEY in images[0]) is (label not in REDERIVED)
    runtime = RUNTIMES[ONNX]  # its own traced paste, rebuilt bit for bit from what differs from torchvision's
    found = detections_of(numbers["runs"][runtime])
    attach_masks(runtime, found, numbers["runs"][runtime], (TINY, TINY))
    own = report.boxes[runtime][0].masks
    assert found[0].masks.dtype == own.dtype and np.array_equal(found[0].masks.view(np.uint32), own.view(np.uint32))
    assert f"ok   {SPEC}  after NMS {RUNTIMES[ONNX]} vs {ORACLE}" in mask_matrix.result.output
    rows = [row.detail for row in mask_matrix.cell.rows() if row.kind == "after NMS"]
    assert rows and all(", mask " in text and "mask head" in text for text in rows), rows
    for kind in ("md", "xml"):  # every output draws the rows
        assert all(text in mask_matrix.path.with_suffix(f".{kind}").read_text() for text in rows)
    page = detector_markdown(report)  # the export's own page: the mask columns and floors
    assert all(f"| {header} |" in page or f"| {header}" in page for header in MASK_HEADER), page
    assert f"masks {report.floor.masks:.3g}, mask head {report.floor.mask_head:.3g}" in page


def test_the_merge_judges_the_masks_again_and_agrees(mask_matrix):
    merged = merge_results([load_result(mask_matrix.path)], ["shard"])
    assert merged.exit_code == 0, merged.summary()
    cell = next(c for c in merged.cells if c.view == DETECTOR_VIEW)
    assert cell.detector["after_nms"] == mask_matrix.cell.detector["after_nms"]


def _cell(data: dict) -> dict:
    return next(c for c in data["cells"] if c["view"] == DETECTOR_VIEW)["detector"]


def _logit_edited(data: dict) -> None:
    """One ONNX Runtime detection's mask logit moved by a thousand of its floors (the stored figures left alone)."""
    stored = _cell(data)["runs"][RUNTIMES[ONNX]][0]
    logits = unpack(stored[LOGITS_KEY], run_dtype(RUNTIMES[ONNX]), "")
    floor = _cell(data)["after_nms"][0]["floor"]["mask_head"]
    logits[0, 0, 0] += 1e3 * floor
    stored[LOGITS_KEY] = pack(logits, run_dtype(RUNTIMES[ONNX]))


def _floor_raised(data: dict) -> None:
    pair = next(p for p in _cell(data)["after_nms"] if p["a"] == RUNTIMES[ONNX])
    pair["floor"]["masks"] *= 10


def _masks_dropped(data: dict) -> None:
    _cell(data)["runs"][RUNTIMES[ONNX]][0].pop(MASKS_KEY)


def _oracle_logits_dropped(data: dict) -> None:
    _cell(data)["runs"][ORACLE][0].pop(LOGITS_KEY)


def _residual_garbled(data: dict) -> None:
    _cell(data)["runs"][RUNTIMES[ONNX]][0][MASKS_KEY]["xor_zlib"] = "bm90IHpsaWI="


@pytest.mark.parametrize("forge, named", [(_logit_edited, "mask head"), (_floor_raised, "floor of masks"),
                                          (_masks_dropped, "gives no masks"), (_oracle_logits_dropped, "no mask"),
                                          (_residual_garbled, "residual")])
def test_edited_mask_numbers_never_merge_into_exit_0(mask_matrix, forge, named, tmp_path):
    """The shard still says agree; the merge judges its numbers again and fails it (exit 1), saying why."""
    forged_detector_merge_fails(mask_matrix.path, forge, named, tmp_path)


def test_a_seeded_mask_head_error_in_the_cells_onnx_file_fails_the_cell(mask_matrix):
    """The cell's own ONNX file with the detected class's channel of the mask predictor 0.1 % off, run and judged as
    the cell judges, its numbers stored and judged again: a disagreement naming the mask head."""
    (report,) = mask_matrix.calls
    judged = DetectorReport(report.name, report.norm, report.weights, report.shape, (ONNX,), AUTO_FACTOR,
                            images=report.images)
    judged.classes = report.classes
    judge_runs(judged, Judging.of(registered_detector(TINY_MASK.name)), [torch.from_numpy(i) for i in report.images],
               report.references[EAGER], report.references[ORACLE], {ONNX: mask_matrix.seeded}, Tolerance())
    cell = CellResult("c", TINY_MASK.name, report.norm, DETECTOR_VIEW, AGREE, detector=detector_numbers(judged),
                      input={"shape": list(report.shape)})
    judged_cell = judge_detector_cell(cell, Tolerance(), (ONNX,), 1)
    assert judged_cell.verdict == DISAGREE
    assert any("mask head logits" in p for p in judged_cell.problems), judged_cell.problems


def test_a_kind_whose_outputs_a_cell_does_not_store_is_refused_in_one_line(mask_matrix):
    """Every registered detector of a kind outside CELL_KINDS (none named here) is refused before any work, and a
    shard's cell of one is a disagreement; a Mask R-CNN is taken."""
    DetectorSpec(TINY_MASK.name, TINY_MASK.default_norm, (1, 3, TINY, TINY)).validate()
    other = Detector("detector_of_other_outputs", "some_other_kind", None, ("batch",), {},
                     builder="fasterrcnn_resnet50_fpn")
    refused = [d.name for d in (DETECTORS.get(n) for n in DETECTORS.names()) if d.kind not in CELL_KINDS]
    with DETECTORS.adding(other.name, other):
        for name in [*refused, other.name]:
            with pytest.raises(UsageError, match="does not store the per-detection outputs") as caught:
                DetectorSpec(name, DETECTORS.get(name).default_norm).validate()
            assert "\n" not in str(caught.value) and f"verify export -b {name}" in str(caught.value)
        cell = CellResult("c", other.name, "batch", DETECTOR_VIEW, AGREE, detector={})
        judged = judge_detector_cell(cell, Tolerance(), DEFAULT_FORMATS, 1)
    assert judged.verdict == DISAGREE
    assert any("does not store the per-detection outputs" in p for p in judged.problems), judged.problems
