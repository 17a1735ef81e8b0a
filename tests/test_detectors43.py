"""More whole detectors (exporter/families/detectors.py): `-b <name>` that is no backbone names the detectors too, a
torchvision detector not registered says why, and FCOS (centerness, its own post-processing) is calibrated to detect
and its TorchScript file's own pieces give its centerness and final-NMS inputs as eager does. The whole exports at
320 px (about 30 s each) are measured in README's detector section, not here: this module builds one FCOS at 64 px."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from exporter.backbones import BACKBONES
from exporter.errors import UsageError
from exporter.families.detectors import (
    DENSE_CANDIDATES,
    DETECTORS,
    MIN_DETECTIONS,
    build_detector,
    calibration_image,
    detect,
)
from tests.helpers import DETECTOR_SCRIPTED as SCRIPTED
from tests.helpers import ONE_CHANNEL_ERROR, tiny_fcos_detector
from verify.cli import app
from verify.detect.eager_runs import run_eager
from verify.detect.export import export_detector
from verify.detect.scripted_runs import _script_image_list, _script_nms_inputs, _script_pieces, load_scripted
from verify.detect.verdict import judge_detector
from verify.matrix.detectors import split_detectors

TINY = 64
"""FCOS's transform size here: its five levels still give DENSE_CANDIDATES anchor x class scores to calibrate."""
CTRNESS = "head.regression_head.bbox_ctrness"


def _refusal(name: str) -> str:
    result = CliRunner().invoke(app, ["export", "-b", name])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize("name", ["fcos_resnet50", "ssd512_vgg16"])
def test_a_detector_name_not_registered_is_refused_naming_every_detector(name):
    """Every detector in full while the list fits the line (exporter/families/detectors.py REFUSAL_BUDGET); past it,
    where every name is listed (det 49: one more detector registered would have cut the list mid-name)."""
    from exporter.families.detectors import REFUSAL_BUDGET

    line = _refusal(name)
    assert "…" not in line, "the list was cut to fit the line"
    if len(f"No detector {name!r}: {', '.join(DETECTORS.names())}") <= REFUSAL_BUDGET:
        assert all(detector in line for detector in DETECTORS.names()), line
    else:
        assert "verify export --help" in line and f"{len(DETECTORS.names())} detectors" in line, line


def test_an_unknown_backbone_names_the_backbones_and_the_detector_families():
    line = _refusal("vgg16")
    assert f"Unknown backbone 'vgg16'; choose one of: {', '.join(BACKBONES.names())}" in line
    assert all(f"{name.partition('_')[0]}_*" in line for name in DETECTORS.names()), line
    with pytest.raises(UsageError, match="fasterrcnn_\\*"):  # the matrix's -b refuses it the same way
        split_detectors(["resnet18", "vgg16"])


@pytest.mark.parametrize("name", ["fcos_resnet50_fpn", "retinanet_resnet50_fpn_v2"])
def test_the_new_detectors_are_accepted_by_export_and_the_matrix(name):
    from verify.cli.options import _backbone_or_detector

    assert _backbone_or_detector(name) == name
    assert split_detectors(["resnet18", name]) == (["resnet18"], [name])


@pytest.fixture(scope="module")
def tiny_fcos():
    """torchvision's FCOS at TINY px, its norms calibrated on the image (no synthetic body: that costs seconds)."""
    detector = tiny_fcos_detector(TINY)
    with DETECTORS.adding(detector.name, detector):
        yield build_detector(detector.name), calibration_image(0, (3, TINY, TINY))


def test_fcos_is_calibrated_to_detect_with_its_centerness(tiny_fcos):
    built, image = tiny_fcos
    model = built.model
    seen = {}
    hooks = [model.get_submodule(m).register_forward_hook(lambda mod, a, out, m=m: seen.setdefault(m, []).append(out))
             for m in ("head.classification_head.cls_logits", CTRNESS)]
    try:
        found = detect(model, image)
    finally:
        for hook in hooks:
            hook.remove()
    logits = torch.cat([t.flatten(2) for t in seen["head.classification_head.cls_logits"]], dim=2)
    centre = torch.cat([t.flatten(2) for t in seen[CTRNESS]], dim=2)
    scores = (logits.sigmoid() * centre.sigmoid()).sqrt()  # FCOS.postprocess_detections's score
    assert int((scores > built.score_thresh).sum()) >= DENSE_CANDIDATES
    assert len(found["scores"]) >= MIN_DETECTIONS
    assert float(found["scores"].min()) > built.score_thresh
    sides = found["boxes"][:, 2:] - found["boxes"][:, :2]
    assert float(sides.min()) > 0 and len(found["labels"].unique()) > 1


@pytest.fixture(scope="module")
def scripted_file(tiny_fcos, tmp_path_factory):
    """The tiny FCOS's TorchScript file, as `verify export -b` writes it."""
    built, image = tiny_fcos
    files, refusals = export_detector(built, image, [SCRIPTED], tmp_path_factory.mktemp("fcos"))
    assert not refusals, refusals
    return files[SCRIPTED]


def test_fcos_scripted_pieces_give_eager_centerness_and_final_nms_inputs(tiny_fcos, scripted_file):
    built, image = tiny_fcos
    assert CTRNESS in built.dense_modules
    eager = run_eager(built, [image], float64=False)
    _script_image_list()
    scripted = load_scripted(scripted_file)
    with torch.inference_mode():
        _, out = scripted([image])
        tensors, proposals, _ = _script_pieces(scripted, image, built.dense_modules)
        candidates = _script_nms_inputs(scripted, image, out[0])  # replays the file's NMS: its own detections
    assert proposals is None
    for name, value in eager.per_image[0].items():
        np.testing.assert_allclose(tensors[name].numpy(), value, rtol=0, atol=1e-5 * max(1.0, np.abs(value).max()),
                                   err_msg=name)
    assert {name.partition("#")[0] for name in tensors} == set(built.dense_modules)
    ref = eager.candidates[0]
    assert len(candidates) == len(ref) > len(out[0]["scores"])  # every candidate, not only the kept ones
    order, ref_order = np.lexsort(candidates.boxes.T), np.lexsort(ref.boxes.T)
    np.testing.assert_allclose(candidates.scores[order], ref.scores[ref_order], rtol=1e-5)
    np.testing.assert_array_equal(candidates.labels[order], ref.labels[ref_order])


def test_a_seeded_centerness_error_in_the_scripted_fcos_is_caught(tiny_fcos, scripted_file, tmp_path):
    """A 0.1 % error in the centerness weights of one channel of the TorchScript file: exit 1, the centerness judged
    (found, and beyond its floor)."""
    built, image = tiny_fcos
    model = torch.jit.load(str(scripted_file))
    weight = model.head.regression_head.bbox_ctrness.weight  # a scripted module has no get_submodule
    with torch.no_grad():
        weight[int(weight.abs().flatten(1).sum(1).argmax())] *= 1 + ONE_CHANNEL_ERROR
    model.save(str(tmp_path / "tampered.pt"))
    report = judge_detector(built, [image], {SCRIPTED: tmp_path / "tampered.pt"})
    assert report.exit_code == 1
    named = [problem for problem in report.problems if CTRNESS in problem]
    assert named and not any("missing" in problem for problem in named), report.problems
