"""Hunt 20a: the box decoding of the detectors without an RPN (RetinaNet, SSDlite), judged before NMS.
Their decoding was judged after NMS only, and anchors an ONNX file alters after its anchor generator's scope only
through the detections: SSDlite's level-2 anchors 5 % off between the generator and the decoding exited 0 (the level's
candidates are all suppressed or outranked by the final NMS on the judged image). Each runtime's final-NMS inputs
(decoded boxes, scores, classes) are now paired with eager's and the float64 oracle's, as the RPN's proposals are,
and judged on their own float32 floor; a candidate in one run only passes only as a named rounding borderline
(verify/detect/nms_inputs.py)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from exporter.families.detectors import ANCHOR_MODULES, build_detector, calibration_image
from exporter.manifest import GOLDENS_NAME
from tests.helpers import edit_goldens, linked_copy, strip_signature
from verify.detect.export import export_detector
from verify.detect.folder import detector_integrity
from verify.detect.match import Detections
from verify.detect.nms_inputs import BOXES, SCORES, NmsBands, block_lows, onnx_nms_inputs, unexplained
from verify.detect.onnx_graph import onnx_scope_outputs, onnx_scopes
from verify.detect.report import DetectorReport
from verify.detect.verdict import EAGER, ORACLE, RUNTIMES, _judge, judge_detector, judge_runs
from verify.folder.checks import CheckReport
from verify.judge.compare import AUTO_FACTOR, Tolerance

SSD = "ssdlite320_mobilenet_v3_large"
ANCHORS = f"{ANCHOR_MODULES['ssd']}#0"
ANCHOR_ERROR = 1.05
LEVEL = 2
"""An SSDlite level whose candidates reach no final detection on the suite's image (seed 0)."""
ONNX = RUNTIMES["onnx"]


@pytest.fixture(scope="module")
def ssd(module_tmp):
    """SSDlite (synthetic weights) exported to legacy ONNX and judged on one 320x320 image: (built, report, file)."""
    built = build_detector(SSD)
    image = calibration_image(0)
    path = module_tmp("ssd20a") / "detector.onnx"
    export_detector(built, image, ["onnx"], path.parent)
    return built, judge_detector(built, [image], {"onnx": path}), path


def _level_rows(report) -> list[int]:
    """Anchors per SSD level, from the regression head's per-level outputs (4 values an anchor)."""
    dense = report.references[EAGER].dense
    return [dense[f"head.regression_head.module_list.{level}.1#0"].size // 4 for level in range(6)]


def _anchors_scaled_after_their_generator(path, rows, level, factor, out):
    """The ONNX file with one level's anchors times `factor` between the generator's scope and the decoding: the value
    the scope hands out (what is judged as the anchors) stays as it was."""
    model = onnx.load(str(path))
    anchors, = onnx_scope_outputs(model, onnx_scopes(ANCHOR_MODULES["ssd"], 0))
    scale = np.ones((sum(rows), 1), np.float32)
    scale[sum(rows[:level]):sum(rows[:level + 1])] = factor
    model.graph.initializer.append(numpy_helper.from_array(scale, "seeded_scale"))
    for node in model.graph.node:
        if not node.name.startswith("/anchor_generator/"):
            node.input[:] = ["seeded_anchors" if name == anchors else name for name in node.input]
    nodes = list(model.graph.node)
    at = max(i for i, node in enumerate(nodes) if anchors in node.output) + 1
    nodes.insert(at, helper.make_node("Mul", [anchors, "seeded_scale"], ["seeded_anchors"], name="/seeded/Mul"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(out))
    return out


def _judged(report, files):
    """`files` judged against the fixture's own eager runs of its image."""
    judged = DetectorReport(SSD, report.norm, report.weights, report.shape, tuple(files), AUTO_FACTOR,
                            images=report.images)
    inputs = [torch.as_tensor(image) for image in report.images]
    judge_runs(judged, report.judging, inputs, report.references[EAGER], report.references[ORACLE], files,
               Tolerance())
    return judged


def test_a_correct_ssdlite_export_judges_its_decoded_candidates(ssd):
    _, report, _ = ssd
    assert report.passed, report.summary()
    eager, oracle = report.references[EAGER], report.references[ORACLE]
    assert len(eager.candidates) == len(oracle.candidates) == 1 and len(oracle.candidates[0]) > 0
    assert len(report.dense) == 2
    for pair in report.dense:
        judged = {o.name: o for o in pair.outputs if o.name in (BOXES, SCORES)}
        assert set(judged) == {BOXES, SCORES} and all(o.passed for o in judged.values()), pair.verdict()
        assert judged[BOXES].shape_a[0] == len(oracle.candidates[0])  # every candidate paired
    assert BOXES in report.floors and SCORES in report.floors


def test_anchors_altered_after_their_generator_fail_on_the_decoded_candidates(ssd, tmp_path):
    _, report, path = ssd
    seeded = _anchors_scaled_after_their_generator(path, _level_rows(report), LEVEL, ANCHOR_ERROR,
                                                   tmp_path / "seeded.onnx")
    judged = _judged(report, {"onnx": seeded})
    assert all(p.passed for p in judged.detections), "after NMS cannot see it: no detection comes from that level"
    assert judged.exit_code == 1
    for pair in judged.dense:
        anchors = next(o for o in pair.outputs if o.name == ANCHORS)
        assert anchors.passed, "the generator's own output is right: the decoding reads other anchors"
        assert not pair.passed and pair.worst.where.startswith(BOXES), pair.verdict()
    assert all("\n" not in p for p in judged.problems)


def test_a_runtime_that_shows_no_candidates_fails_as_missing(ssd):
    _, report, _ = ssd
    eager, oracle = report.references[EAGER], report.references[ORACLE]
    blind = replace(eager, candidates=[])  # what an ONNX graph whose NMS inputs are not found gives
    judged = DetectorReport(SSD, report.norm, report.weights, report.shape, ("onnx",), AUTO_FACTOR,
                            images=report.images)
    _judge(judged, report.judging, eager, oracle, {ONNX: blind}, Tolerance())
    assert judged.exit_code == 1
    for pair in judged.dense:
        missing = [o for o in pair.outputs if o.name in (BOXES, SCORES)]
        assert missing and all(not o.passed and "missing" in o.reason for o in missing), pair.verdict()


def test_references_without_float32_candidates_are_never_judged_without_them(ssd):
    _, report, _ = ssd
    eager, oracle = report.references[EAGER], report.references[ORACLE]
    judged = DetectorReport(SSD, report.norm, report.weights, report.shape, ("onnx",), AUTO_FACTOR,
                            images=report.images)
    _judge(judged, report.judging, replace(eager, candidates=[]), oracle, {ONNX: eager}, Tolerance())
    assert judged.exit_code == 1
    assert any("float32" in p and "final-NMS inputs" in p and "export it again" in p for p in judged.problems)


def test_the_graphs_final_nms_inputs_are_found(ssd):
    _, _, path = ssd
    model = onnx.load(str(path))
    found = onnx_nms_inputs(model)
    assert found is not None and len(set(found)) == 3
    made = {out: node for node in model.graph.node for out in node.output}
    assert made["scores"].input[0] == found[1] and made["labels"].input[0] == found[2]


# A candidate in one run only: a rounding borderline, named, or a failure ----------------------------------------------

BANDS = NmsBands(boxes=1e-3, scores=1e-6)
THRESH = 0.05


def _found(rows):
    boxes = np.array([r[0] for r in rows], dtype=np.float64).reshape(-1, 4)
    return Detections(boxes, np.array([r[1] for r in rows], dtype=np.float64), np.array([r[2] for r in rows]))


def _rows(found):
    return [(box.tolist(), float(score), int(label)) for box, score, label in
            zip(found.boxes, found.scores, found.labels, strict=True)]


REFERENCE = _found([([0, 0, 10, 10], 0.9, 1), ([20, 20, 40, 40], 0.5, 1), ([50, 50, 90, 90], 0.3, 1),
                    ([0, 0, 30, 30], 0.8, 2), ([60, 0, 90, 30], 0.2, 2)])
"""Two sorted blocks (a level's or a class's top-k): cuts at 0.3 and 0.2."""


def test_block_lows_are_each_sorted_blocks_last_score():
    assert block_lows(REFERENCE.scores).tolist() == [0.3, 0.3, 0.3, 0.2, 0.2]


def test_a_swap_at_a_top_k_cut_passes_and_a_moved_candidate_fails():
    swapped = _found([([0, 0, 10, 10], 0.9, 1), ([20, 20, 40, 40], 0.5, 1), ([100, 100, 140, 140], 0.3 + 1e-7, 3),
                      ([0, 0, 30, 30], 0.8, 2), ([60, 0, 90, 30], 0.2, 2)])
    assert unexplained([([2], [2])], [swapped], [REFERENCE], THRESH, None, BANDS) == []
    far = _found([([0, 0, 10, 10], 0.9, 1), ([20, 20, 40, 40], 0.5, 1), ([100, 100, 140, 140], 0.3 + 1e-3, 3),
                  ([0, 0, 30, 30], 0.8, 2), ([60, 0, 90, 30], 0.2, 2)])
    assert len(unexplained([([2], [2])], [far], [REFERENCE], THRESH, None, BANDS)) == 2
    moved = _found([([40, 0, 50, 10], 0.9, 1), *_rows(REFERENCE)[1:]])
    problems = unexplained([([0], [0])], [moved], [REFERENCE], THRESH, None, BANDS)
    assert len(problems) == 2 and all("\n" not in p for p in problems)
    assert "run candidate of class 1, score 0.9" in problems[0]


def test_a_lone_candidate_at_the_score_threshold_must_be_a_recorded_float64_one():
    near = _found([*_rows(REFERENCE), ([5, 5, 25, 25], THRESH + 1e-7, 4)])
    below = [_found([([5, 5, 25, 25], THRESH - 1e-7, 4)])]
    assert unexplained([([5], [])], [near], [REFERENCE], THRESH, below, BANDS) == []
    elsewhere = [_found([([45, 5, 65, 25], THRESH - 1e-7, 4)])]
    assert len(unexplained([([5], [])], [near], [REFERENCE], THRESH, elsewhere, BANDS)) == 1


# A detector folder keeps eager float32's final-NMS inputs ------------------------------------------------------------

def test_a_folder_without_float32_candidates_is_refused_in_one_line(detector_export, tmp_path):
    _, signed, result, _ = detector_export
    assert result.exit_code == 0, result.output
    folder = strip_signature(linked_copy(signed, tmp_path))
    with np.load(folder / GOLDENS_NAME) as data:
        keys = [k for k in data.files if k.startswith("float32.") and ".candidates." in k]
    assert keys, "the export writes eager float32's final-NMS inputs"
    edit_goldens(folder, lambda arrays: [arrays.pop(k) for k in keys])
    report = CheckReport("artifact")
    art = detector_integrity(folder, report)
    found = {c.name: c for c in report.checks}[f"{GOLDENS_NAME}: content"]
    assert not art.sound and not found.passed
    assert "float32" in found.message and "export it again" in found.message and "\n" not in found.message
