"""Stop 49, the whole detector tried as a new user and on its open items (det49): the `-b` refusal that names the
detectors fits the CLI's one line however many are registered and whatever was typed."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

from exporter.families.detectors import DETECTORS, unknown_model
from exporter.messages import MAX_MESSAGE
from tests.helpers import invoke

EXTRA = ("fasterrcnn_resnet101_fpn_custom", "retinanet_resnext101_32x8d_fpn", "ssd512_vgg16_bn")
"""Detectors a future stop might register: the refusal listed every name in full, 399 of the CLI's 400 characters
for a 7-character name at stop 49."""


@contextlib.contextmanager
def _more_detectors():
    template = DETECTORS.get(DETECTORS.names()[0])
    with contextlib.ExitStack() as stack:
        for name in EXTRA:
            stack.enter_context(DETECTORS.adding(name, dataclasses.replace(template, name=name)))
        yield


@pytest.mark.parametrize("typed, closest", [("yolo_v8", None), ("fasterrcnn_resnet101", EXTRA[0]),
                                            ("my_custom_ssd_detector_" + "x" * 80, None)])
def test_the_detector_refusal_fits_one_line_with_more_detectors_registered(typed, closest):
    """Before: `verify export -b my_custom_ssd_detector` was cut mid-list ("ssdlite320_mobilenet_v3_l … (47 more
    characters)") with today's twelve; one more detector cut it for every name. Past REFUSAL_BUDGET the line names the
    closest detectors, each family's count and where every name is listed (the help, which lists each of them)."""
    with _more_detectors():
        result = invoke("export", "-b", typed)
        line = result.output.strip()
        assert result.exit_code == 2 and "\n" not in line, result.output
        assert len(line) <= MAX_MESSAGE and "more characters" not in line, (len(line), line)
        assert "verify export --help" in line and f"{len(DETECTORS.names())} detectors" in line, line
        if closest:
            assert closest in line.partition("closest: ")[2].partition(";")[0].split(", "), line
    shown = " ".join(invoke("export", "--help").output.split())  # the help is built at import, as registrations are
    assert all(name in shown for name in DETECTORS.names()), shown


def test_every_detector_is_named_in_full_where_the_line_has_room():
    """The full list stays where it fits (today's twelve for a short name), each name as typed."""
    from exporter.families.detectors import REFUSAL_BUDGET

    said = str(unknown_model("ssd", []))
    assert len(said) <= REFUSAL_BUDGET and all(name in said for name in DETECTORS.names()), said


def test_a_failed_run_on_a_flat_image_says_the_flat_image_may_be_the_cause():
    """Before: a black 320x320 image failed a correct fasterrcnn_mobilenet_v3_large_320_fpn ONNX file (a proposal in
    one run only, its float32 objectness scores tied at 1.0; boxes 36558x the floor) and a grey one at 6.0x, every layer
    within 5x, with no word of why. Each flat image (a plain colour too) gets a note with what to do; one with content
    none."""
    import torch

    from verify.detect.verdict import FLAT_IMAGE_HINT, flat_notes

    textured = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    red = torch.zeros(3, 8, 8)
    red[0] = 1.0
    images = [torch.zeros(3, 8, 8), textured, torch.full((3, 8, 8), 0.5), red, textured.clone().fill_(0.25)]
    notes = flat_notes(images)
    assert [note.split()[1] for note in notes] == ["0", "2", "3", "4"], notes
    assert all(FLAT_IMAGE_HINT in note and "\n" not in note for note in notes), notes
    edge = torch.full((3, 8, 8), 0.5)
    edge[1, 7, 7] = 0.5 + 2 ** -10  # one pixel off: content, however little
    assert flat_notes([edge]) == []


def _bn_head_detector(stats: tuple[float, float]):
    """A Faster R-CNN registered at TINY_DETECTOR px on a two-conv backbone, with torchvision's v2 box head (a conv with
    BatchNorm2d, in a Sequential) passed built, its norm's statistics set to `stats` by the registration."""
    from torch import nn
    from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead

    from exporter.families.detectors import Detector
    from tests.helpers import tiny_rcnn_options

    head = FastRCNNConvFCHead((CHANNELS, 7, 7), [16], [1024], norm_layer=nn.BatchNorm2d)
    head[0][1].running_mean.fill_(stats[0])
    head[0][1].running_var.fill_(stats[1])
    return Detector("det49_bn_head", "fasterrcnn", None, ("batch",), tiny_rcnn_options(box_head=head),
                    builder=_small_faster_rcnn)


CHANNELS = 32
"""The small backbone's channels: its one feature map's, which the box head pools."""


class _OneLevel(torch.nn.Module):
    """A backbone's one feature map as torchvision's detectors take several: {"0": map}."""

    def __init__(self, body: torch.nn.Module) -> None:
        super().__init__()
        self.body, self.out_channels = body, CHANNELS

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"0": self.body(x)}


def _small_faster_rcnn(weights=None, weights_backbone=None, num_classes: int = 91, **options):
    """torchvision's Faster R-CNN on two strided convs, one level (drawn in milliseconds)."""
    from torch import nn
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    assert weights is None and weights_backbone is None
    backbone = _OneLevel(nn.Sequential(nn.Conv2d(3, CHANNELS, 3, 2, 1), nn.ReLU(),
                                       nn.Conv2d(CHANNELS, CHANNELS, 3, 2, 1)))
    anchors = AnchorGenerator(((8, 16, 32),), ((0.5, 1.0, 2.0),))
    return FasterRCNN(backbone, num_classes, rpn_anchor_generator=anchors,
                      box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2), **options)


def test_a_registered_heads_batch_norms_are_calibrated_from_the_seed():
    """Before: `_calibrate_norms` set every module but the norms to eval with `eval()`, which also set each norm inside
    a Sequential: the RoI heads' norms (torchvision's v2 box and mask heads: 4 and 8 BatchNorm2d, and any registered
    head's) never ran in train mode and kept the statistics `reset_parameters` gives (0 and 1). Now every BatchNorm2d
    outside the loaded body has seen the calibration image, and what the registration set is never read."""
    import torch
    from torch import nn

    from exporter.families.detectors import DETECTORS, build_detector

    registered = (5.0, 9.0)
    with DETECTORS.adding("det49_bn_head", _bn_head_detector(registered)):
        model = build_detector("det49_bn_head").model
    norm = model.roi_heads.box_head[0][1]
    assert isinstance(norm, nn.BatchNorm2d) and int(norm.num_batches_tracked) > 0
    for stats, reset in ((norm.running_mean, 0.0), (norm.running_var, 1.0)):
        assert not torch.all(stats == reset) and not torch.all(stats == registered[reset == 1.0]), stats


@pytest.mark.parametrize("shape", ["1x3x2x2", "1x1x{side}x{side}"])
def test_a_bad_detector_shape_names_the_detectors_own_size(shape):
    """Before: `verify export -b ssd300_vgg16 --shape 1x3x2x2` said "pass --shape 1x3x320x320" (every detector's
    320), and a 1-channel shape said what was wrong and not what to give. Now both name the detector's own size."""
    from exporter.families.detectors import IMAGE_SIZE

    name = next(n for n in DETECTORS.names() if DETECTORS.get(n).image_size != IMAGE_SIZE)
    side = DETECTORS.get(name).image_size
    result = invoke("export", "-b", name, "--shape", shape.format(side=side))
    assert result.exit_code == 2 and "\n" not in result.output.strip(), result.output
    assert f"pass --shape 1x3x{side}x{side}" in result.output, result.output


def test_a_pass_with_an_image_no_run_detects_in_says_so():
    """Before: two images, the second with no detection in any run (a blank image, real weights), passed with "at least
    0 detections matched per image" and no word of which image matched nothing. Now the summary names it; one image
    with detections everywhere adds nothing."""
    import numpy as np

    from tests.helpers import DETECTION_FLOOR, DETECTION_RULES, detection_grid
    from verify.detect.match import Detections, compare_detections
    from verify.detect.report import DetectorReport
    from verify.judge.compare import AUTO_FACTOR

    empty = Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))
    cases = (([detection_grid(5), empty], "image 1 has no detection in any run"), ([detection_grid(5)], None))
    for images, named in cases:
        report = DetectorReport("det", "batch", "synthetic:0", (len(images), 3, 64, 64), (), AUTO_FACTOR)
        report.detections = [compare_detections("run", images, "ref", images, DETECTION_FLOOR, DETECTION_RULES)]
        summary = report.summary()
        assert report.passed and " agrees" in summary, summary
        assert (named in summary) if named else "no detection" not in summary, summary
