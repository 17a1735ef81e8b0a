"""SSD300-VGG16 judged whole (exporter/families/detectors.py `ssd300_vgg16`): its VGG-16 body is drawn from the build's
seed, its heads' one convolution a level (`module_list.<level>`, not SSDlite's `module_list.<level>.1`) are its dense
tensors, every image is resized to its own 300 px, a checkpoint's class count is read from its first class conv, and
`--model` returning one is sent to `-b ssd300_vgg16 --weights`. The registration is read on the meta device (no
weights); the export, the judgement and the seeded errors run on an SSD of the same layout (torchvision's VGG feature
extractor with its L2 norm, dilated fc6 and extras, SSD300's head and anchors) at TINY px: the real one costs about a
minute on this machine (measured in README's detector section)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn
from torchvision.models.detection import ssd300_vgg16
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD, SSDFeatureExtractorVGG

from exporter.backbones import BACKBONES
from exporter.errors import UsageError
from exporter.families.detectors import (
    ANCHOR_MODULES,
    DETECTORS,
    MIN_DETECTIONS,
    SSD_HEADS,
    Detector,
    build_detector,
    calibration_image,
    checkpoint_classes,
    class_key,
    dense_modules,
    detect,
    missing_dense_modules,
    resized_size,
    ssd_level_convs,
    unknown_model,
)
from tests.helpers import DETECTOR_ONNX as ONNX
from tests.helpers import DETECTOR_SCRIPTED as SCRIPTED
from tests.helpers import judged_with_onnx_channel_off
from verify.detect.export import export_detector
from verify.detect.goldens import class_width_problem
from verify.detect.report import DetectorReport
from verify.detect.verdict import RUNTIMES, judge_detector

NAME = "ssd300_vgg16"
LEVELS = 6
"""SSD300's feature levels (conv4_3, fc7, conv8_2 .. conv11_2), one head conv each."""
TINY = 68
"""The tiny SSD's fixed size: the smallest whose extras still end in a 1 x 1 level (34, 17, 9, 5, 3, 1 px)."""
TINY_VGG = (8, "keep", 8, "keep", 16, "pool", 512, "pool", "pool")
"""A VGG-16 feature config with SSD300's five max pools, the first two keeping the size (so TINY px give SSD300's six
levels) and conv4_3's 512 channels (the extractor's L2 norm and fc6 take 512)."""
TINY_CLASSES = 11
"""Its class count, background included: SSD's post-processing (traced into the ONNX graph) loops over the classes."""
HEAD_CONV = "head.classification_head.module_list.1.weight"
"""The class conv of the second level (fc7): one conv a level, no `.1`."""


def _tiny_vgg() -> nn.Sequential:
    layers, channels = [], 3
    for item in TINY_VGG:
        if isinstance(item, int):
            conv = nn.Conv2d(channels, item, kernel_size=3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's VGG draws
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.ReLU(inplace=True)]
            channels = item
        else:
            layers.append(nn.MaxPool2d(2, 2) if item == "pool" else nn.MaxPool2d(1, 1))
    return nn.Sequential(*layers)


def _tiny_ssd(weights=None, weights_backbone=None, num_classes: int = TINY_CLASSES, **options) -> SSD:
    """SSD300's layout at TINY px, built as `ssd300_vgg16` builds its own (its anchors, means and scales)."""
    assert weights is None and weights_backbone is None
    anchors = DefaultBoxGenerator([[2], [2, 3], [2, 3], [2, 3], [2], [2]],
                                  scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05])
    return SSD(SSDFeatureExtractorVGG(_tiny_vgg(), highres=False), anchors, (TINY, TINY), num_classes,
               image_mean=[0.48235, 0.45882, 0.40784], image_std=[1.0 / 255.0] * 3, **options)


VGG_CONV = f"backbone.features.{[i for i, m in enumerate(_tiny_vgg()) if isinstance(m, nn.Conv2d)][-1]}.weight"
"""The tiny VGG's conv4_3 (512 channels): its L2-normed output is the first level, the rest of the body runs on it."""
TINY_SSD = Detector("ssd300_tiny", "ssd", None, ("batch",), dict(DETECTORS.get(NAME).options), builder=_tiny_ssd,
                    image_size=TINY)


@pytest.fixture(scope="module")
def registered():
    """torchvision's SSD300-VGG16 as the registration builds it, on the meta device: its layout, no weights."""
    with torch.device("meta"):
        return ssd300_vgg16(weights=None, weights_backbone=None, **DETECTORS.get(NAME).options).eval()


def test_ssd300_is_registered_with_one_head_conv_a_level_and_its_own_size(registered):
    detector = DETECTORS.get(NAME)
    assert detector.kind == "ssd" and detector.body_backbone is None
    dense = dense_modules(registered, detector.kind)
    convs = [f"{head}.module_list.{level}" for head in SSD_HEADS for level in range(LEVELS)]
    assert dense == [*convs, ANCHOR_MODULES["ssd"]]
    assert all(isinstance(registered.get_submodule(name), nn.Conv2d) for name in convs)
    assert missing_dense_modules([f"{name}#0" for name in dense], detector.kind) == []
    assert missing_dense_modules([f"{convs[0]}#0"], detector.kind) == sorted([SSD_HEADS[1], ANCHOR_MODULES["ssd"]])
    size = registered.transform.fixed_size
    assert all(resized_size(detector, *shape) == size for shape in ((320, 320), (240, 400), (300, 300)))


def test_a_folder_level_of_another_class_width_is_named(registered):
    """A folder's class count is checked at every level's class conv over its box conv's anchors (only level 1, whose
    name ends in `.1` as SSDlite's do, was)."""
    classes = registered.head.classification_head.num_columns
    shapes = {f"{name}#0": [1, conv.out_channels, 2, 2] for head in SSD_HEADS
              for name, conv in ssd_level_convs(registered, head)}
    assert class_width_problem(shapes, classes) == ""
    level = f"{SSD_HEADS[0]}.module_list.3#0"
    anchors = shapes[level][1] // classes
    shapes[level] = [1, anchors * (classes + 1), 2, 2]
    assert level in class_width_problem(shapes, classes)


def test_ssd300_is_a_detector_name_and_model_no_longer_refused_as_unjudged():
    from verify.cli.options import _backbone_or_detector

    assert _backbone_or_detector(NAME) == NAME
    said = str(unknown_model(NAME.upper(), BACKBONES.names()))
    assert f"did you mean {NAME!r}?" in said


def test_an_ssd300_model_is_sent_to_its_registered_name_with_weights():
    from exporter.user_model import _refuse_detector

    with pytest.raises(UsageError) as caught:
        _refuse_detector(SSD.__new__(SSD), "det.py:make")
    said = str(caught.value)
    assert NAME in said and "--weights det.pt" in said and "not verified yet" not in said and "\n" not in said


def test_a_fine_tuned_ssd300_checkpoint_gives_its_class_count(registered, tmp_path):
    """The class count is read from the first class conv, `module_list.0` (SSDlite's key, `module_list.0.1`, is not
    in an SSD300 checkpoint: every fine-tuned one was refused as misshapen)."""
    key = class_key(registered, "ssd")
    assert key == f"{SSD_HEADS[0]}.module_list.0.weight" and key in registered.state_dict()
    anchors = registered.state_dict()[key].shape[0] // registered.head.classification_head.num_columns
    state = {key: torch.zeros(anchors * 12, *registered.state_dict()[key].shape[1:])}
    assert checkpoint_classes(registered, DETECTORS.get(NAME), state, tmp_path / "ft12.pt") == 12


def test_an_absent_coco_checkpoint_is_refused_in_one_line(tmp_path):
    path = tmp_path / "ssd300_vgg16_coco-b556d3b4.pth"
    with pytest.raises(UsageError) as caught:
        build_detector(NAME, weights=str(path))
    said = str(caught.value)
    assert str(path) in said and NAME in said and "--weights synthetic" in said and "\n" not in said


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny SSD registered, built, exported (TorchScript, whose own pieces give its level convs, and legacy ONNX)
    and judged on its calibration image."""
    image = calibration_image(0, (3, TINY, TINY))
    with DETECTORS.adding(TINY_SSD.name, TINY_SSD):
        built = build_detector(TINY_SSD.name)
        files, refusals = export_detector(built, image, [SCRIPTED, ONNX], tmp_path_factory.mktemp("ssd300"))
        assert not refusals, refusals
        yield built, [image], judge_detector(built, [image], files)


def test_the_tiny_ssd300_is_calibrated_to_detect(tiny):
    built, images, _ = tiny
    found = detect(built.model, images[0])
    assert len(found["scores"]) >= MIN_DETECTIONS and len(found["labels"].unique()) > 1


def test_a_correct_export_agrees_with_every_level_conv_judged(tiny):
    built, _, report = tiny
    assert report.exit_code == 0, report.summary()
    pairs = [pair for pair in report.dense if pair.a == RUNTIMES[ONNX]]
    assert pairs and all(pair.passed for pair in pairs)
    for pair in pairs:  # every level's head conv found in the graph (a tensor not found fails as missing) and judged
        assert set(built.dense_modules) <= {output.name.partition("#")[0] for output in pair.outputs}
    assert all(pair.passed and min(pair.matched_per_image) >= MIN_DETECTIONS for pair in report.detections)


def _seeded(built, images, report: DetectorReport, name: str, tmp_path) -> DetectorReport:
    weight = numpy_helper.to_array(next(i for i in onnx.load(report.files[ONNX]).graph.initializer
                                        if i.name == name))
    channel = int(np.abs(weight).reshape(len(weight), -1).sum(axis=1).argmax())
    return judged_with_onnx_channel_off(built, images, report, name, channel, tmp_path)


@pytest.mark.parametrize("name", [VGG_CONV, HEAD_CONV])
def test_a_one_channel_error_in_the_onnx_file_fails(tiny, tmp_path, name):
    built, images, report = tiny
    judged = _seeded(built, images, report, name, tmp_path)
    assert judged.exit_code == 1, judged.summary()


def test_a_matrix_cell_holds_every_ssd300_level_and_a_level_left_out_is_named(registered):
    """A matrix cell's stored dense shapes are held to every level of both heads: SSD300's level convs have no `.1`
    (SSDlite's do), and only its level 1 was found (a level left out passed unseen)."""
    from verify.matrix.dense_binding import level_problems

    sizes = (38, 19, 10, 5, 3, 1)  # SSD300's six maps at 300 px
    shapes = {f"{name}#0": [1, conv.out_channels, side, side] for head in SSD_HEADS
              for (name, conv), side in zip(ssd_level_convs(registered, head), sizes, strict=True)}
    anchors = sum(conv.out_channels // 4 * side * side
                  for (_, conv), side in zip(ssd_level_convs(registered, SSD_HEADS[1]), sizes, strict=True))
    shapes[f"{ANCHOR_MODULES['ssd']}#0"] = [anchors, 4]
    assert level_problems(shapes, "ssd", ANCHOR_MODULES["ssd"]) == []
    cut = {name: shape for name, shape in shapes.items() if not name.startswith(f"{SSD_HEADS[1]}.module_list.4")}
    assert any("cover" in problem for problem in level_problems(cut, "ssd", ANCHOR_MODULES["ssd"]))
    cut = {name: shape for name, shape in shapes.items() if not name.startswith(f"{SSD_HEADS[0]}.module_list.4")}
    assert any("other levels" in problem for problem in level_problems(cut, "ssd", ANCHOR_MODULES["ssd"]))
