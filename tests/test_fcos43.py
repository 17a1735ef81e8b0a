"""FCOS (stop 43) through `verify matrix` and `verify matrix merge`: a detector cell's stored before-NMS pairs are
bound to each other (one floor per dense tensor in both pairs of an ONNX run) and to the anchors (the heads' levels
tile them). Before: an FCOS shard whose failing `bbox_ctrness` level had its floor raised in that pair only, or that
level cut out of both pairs, merged to exit 0. The pairs here carry the shapes of torchvision's FCOS at 64 px (its
head and anchor generator hooked, untrained: only shapes are read); the whole 320-px cells are measured in README."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from exporter.families.detectors import DETECTORS, dense_modules
from tests.helpers import tiny_fcos_detector
from verify.detect.export import DEFAULT_FORMATS
from verify.detect.nms_inputs import BOXES, SCORES
from verify.detect.verdict import AFTER_NMS_ONLY, EAGER, ORACLE, RUNTIMES
from verify.judge.compare import Tolerance
from verify.matrix.detector_judging import _before_nms, registered_rules

TINY = 64
CTRNESS = "head.regression_head.bbox_ctrness"
LABELS = [RUNTIMES[f] for f in DEFAULT_FORMATS if RUNTIMES[f] not in AFTER_NMS_ONLY]
TOLERANCE = Tolerance()


@pytest.fixture(scope="module")
def fcos():
    """(name, {tensor: shape}) of an FCOS registered at TINY px, its dense tensors' shapes from one forward."""
    import torchvision.models.detection as detection

    detector = tiny_fcos_detector(TINY)
    with DETECTORS.adding(detector.name, detector):
        torch.manual_seed(0)
        model = detection.fcos_resnet50_fpn(weights=None, weights_backbone=None, **detector.options).eval()
        shapes: dict[str, list[int]] = {}

        def record(module, args, out, name):
            out = out[0] if isinstance(out, (list, tuple)) else out
            calls = sum(key.partition("#")[0] == name for key in shapes)
            shapes[f"{name}#{calls}"] = list(out.shape)

        hooks = [model.get_submodule(m).register_forward_hook(lambda mod, a, out, m=m: record(mod, a, out, m))
                 for m in dense_modules(None, detector.kind)]
        with torch.inference_mode():
            model([torch.rand(3, TINY, TINY)])
        for hook in hooks:
            hook.remove()
        yield detector.name, {**shapes, BOXES: [10, 4], SCORES: [10]}


def _output(name: str, shape: list[int], ratio: float = 1.0) -> dict:
    floor = 1e-6
    max_abs = 0.0 if name.startswith("anchor") else ratio * floor
    return {"name": name, "shape_a": shape, "shape_b": shape, "total": math.prod(shape), "nonfinite": 0,
            "mismatched": 0, "max_abs": max_abs, "floor": floor, "ratio": max_abs / floor, "channel_floor": None,
            "allowed": TOLERANCE.factor * floor}


def _pairs(shapes: dict[str, list[int]]) -> list[dict]:
    return [{"a": label, "b": ref, "kind": kind, "outputs": [_output(n, s) for n, s in shapes.items()]}
            for label in LABELS for ref, kind in ((ORACLE, "oracle"), (EAGER, "runtime"))]


def _reasons(name: str, pairs: list[dict]) -> list[str]:
    return _before_nms(pairs, TOLERANCE, LABELS, name)[1]


def test_correct_fcos_pairs_are_judged_as_they_are(fcos):
    name, shapes = fcos
    assert sum(s[-1] * s[-2] for n, s in shapes.items() if n.startswith(CTRNESS)) == shapes["anchor_generator#0"][0]
    assert _reasons(name, _pairs(shapes)) == []


def test_a_centerness_failure_hidden_by_a_floor_raised_in_its_pair_only_fails(fcos):
    name, shapes = fcos
    pairs = _pairs(shapes)
    level = f"{CTRNESS}#2"
    runtime = next(p for p in pairs if p["kind"] == "runtime")
    failing = next(o for o in runtime["outputs"] if o["name"] == level)
    failing.update(_output(level, shapes[level], ratio=TOLERANCE.factor + 1))
    assert any(level in r and "factor" in r for r in _reasons(name, copy.deepcopy(pairs)))  # failing as stored
    failing["floor"] *= TOLERANCE.factor + 1  # the edit: this pair's floor raised until its ratio passes
    failing["ratio"] = failing["max_abs"] / failing["floor"]
    assert [r for r in _reasons(name, pairs) if level in r and "two floors" in r]


@pytest.mark.parametrize("cut", [f"{CTRNESS}#2", "#2"], ids=["centerness-level", "every-head-level"])
def test_a_level_cut_out_of_both_pairs_fails(fcos, cut):
    name, shapes = fcos
    kept = {n: s for n, s in shapes.items() if not n.endswith(cut) or n.startswith("anchor")}
    assert len(kept) < len(shapes)
    reasons = _reasons(name, _pairs(kept))
    assert [r for r in reasons if "level" in r and "rerun the cell" in r], reasons


def test_a_detector_registered_under_a_builder_of_another_name_has_its_rules_read(fcos):
    """Its rules come from its builder (`Detector.builder`), as `build_detector` builds it: before, an AttributeError
    (torchvision has no `fcos_tiny`)."""
    name, _ = fcos
    rules = registered_rules(name)
    assert rules.detections_per_img == DETECTORS.get(name).options["detections_per_img"]
    assert rules.score_thresh == registered_rules(DETECTORS.get(name).builder).score_thresh


def test_a_failed_before_nms_pair_names_its_tensor_in_the_line_and_the_folder_check():
    """`verify artifact` on an FCOS folder with a 0.1 % error seeded in its centerness conv said only "before NMS:
    onnxruntime vs eager fp64: differs at float32 precision (574.7x the float32 floor)"; the judge knew the tensor
    (`head.regression_head.bbox_ctrness#3`) and only the JSON said it. A passing row's line stays as it was."""
    from verify.detect.folder import _row_check
    from verify.detect.report import DetectorRow

    tensor, text = "head.regression_head.bbox_ctrness#3", "differs at float32 precision (574.7x the float32 floor)"
    failed = DetectorRow("before NMS", "onnxruntime", "eager fp64", False, "differs", text, worst=tensor, ratio=574.7)
    passed = DetectorRow("before NMS", "onnxruntime", "eager fp64", True, "agrees", "agrees", worst=tensor, ratio=1.2)
    assert failed.named_text == f"{tensor}: {text}" and passed.named_text == passed.text
    check = _row_check("fcos", failed)
    assert tensor in str(check) and not check.passed
