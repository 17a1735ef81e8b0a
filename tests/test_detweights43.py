"""Users' own fine-tuned detectors (detweights 43): `--weights` with a checkpoint of a registered detector fine-tuned
to other classes builds it with the class count its head was trained with (it was "4 of another shape" keys), as a
plain state dict or a torchvision reference-script checkpoint ({"model", "optimizer", "args", ...}); every other misfit
is still refused in one line; images that judge nothing say to pass images the model detects things in; and a
torchvision detector given as `--model` says how to verify it whole (it was "output 'output0' is a dict")."""

from __future__ import annotations

import argparse

import pytest
import torch

from exporter.errors import UsageError
from exporter.families.detectors import CLASS_KEYS, build_detector, calibration_image
from exporter.user_model import UserModelSpec, build_user_model
from tests.helpers import NAME
from verify.detect.eager_runs import run_eager
from verify.detect.match import Detections
from verify.detect.proposals import ProposalCheck
from verify.detect.report import DetectorReport, Judging, Run
from verify.detect.verdict import EAGER, INPUT_HINT, ORACLE, _reference_off_its_oracle, judge_runs
from verify.judge.compare import AUTO_FACTOR, Tolerance

CLASSES = 5


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A fine-tuned NAME's state dict (its heads as torchvision initialises them), saved plain and as torchvision's
    detection reference script saves its checkpoints."""
    import torchvision.models.detection as detection

    torch.manual_seed(0)
    state = getattr(detection, NAME)(weights=None, weights_backbone=None, num_classes=CLASSES).state_dict()
    folder = tmp_path_factory.mktemp("detweights43")
    plain, nested = folder / "ft.pt", folder / "checkpoint.pth"
    torch.save(state, plain)
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    torch.save({"model": state, "optimizer": optimizer.state_dict(), "epoch": 25,
                "lr_scheduler": torch.optim.lr_scheduler.MultiStepLR(optimizer, [16, 22]).state_dict(),
                "args": argparse.Namespace(model=NAME, lr=0.02, data_path="/data/coco", amp=False)}, nested)
    return state, plain, nested


@pytest.fixture(scope="module")
def fine_tuned(checkpoints):
    return build_detector(NAME, weights=str(checkpoints[1]))


def test_the_class_count_is_read_from_a_plain_checkpoint(checkpoints, fine_tuned):
    state = checkpoints[0]
    assert fine_tuned.classes == CLASSES and fine_tuned.weights == f"file:{checkpoints[1].name}"
    own = fine_tuned.model.state_dict()  # the frozen norms keep no num_batches_tracked
    loaded = [key for key in state if not key.endswith("num_batches_tracked")]
    assert all(torch.equal(own[key], state[key]) for key in loaded) and len(loaded) == len(own)


def test_a_reference_script_checkpoint_loads_as_the_plain_one(checkpoints, fine_tuned):
    """torchvision's references save {"model", "optimizer", "lr_scheduler", "args": Namespace, "epoch"}: the
    Namespace was refused as code."""
    nested = build_detector(NAME, weights=str(checkpoints[2]))
    assert nested.classes == CLASSES
    assert all(torch.equal(a, b) for a, b in zip(nested.model.state_dict().values(),
                                                 fine_tuned.model.state_dict().values(), strict=True))


def test_another_misfit_is_still_a_one_line_refusal(checkpoints, tmp_path):
    """The box regression sized for another class count than the classifier: not a fine-tuned head, refused."""
    state = dict(checkpoints[0])
    key = "roi_heads.box_predictor.bbox_pred.weight"
    state[key] = torch.zeros(4 * (CLASSES + 1), state[key].shape[1])
    path = tmp_path / "misfit.pt"
    torch.save(state, path)
    with pytest.raises(UsageError) as caught:
        build_detector(NAME, weights=str(path))
    message = str(caught.value)
    assert f"is not a {NAME} checkpoint: 1 of another shape (e.g. {key})" in message and "\n" not in message
    assert CLASS_KEYS["fasterrcnn"] not in message


def test_images_with_no_detection_fail_and_ask_for_other_images(fine_tuned):
    """The background class made certain: nothing above the score threshold, so nothing after NMS is judged; the
    eager runs judged as verify_detector judges them (the repeat guard and rounding samples left out: they judge no
    detection either)."""
    import copy

    built = copy.deepcopy(fine_tuned)
    with torch.no_grad():
        built.model.roi_heads.box_predictor.cls_score.bias[0] = 100.0
    image = calibration_image(0)
    report = DetectorReport(built.name, built.norm, built.weights, (1, *image.shape), (), AUTO_FACTOR,
                            images=[image.numpy()], classes=built.classes)
    judge_runs(report, Judging.of(built), [image], run_eager(built, [image], False), run_eager(built, [image], True),
               {}, Tolerance())
    assert not report.passed and report.exit_code == 1 and not report.detections
    assert report.unjudgeable.endswith(INPUT_HINT) and "no detection" in report.unjudgeable
    assert report.summary().startswith(f"{NAME}:{built.norm} ({CLASSES} classes, {built.weights[5:]}) fails: "
                                       f"{report.unjudgeable}")
    assert report.to_dict()["classes"] == CLASSES and "\n" not in report.summary()


def test_a_torchvision_detector_as_a_model_is_sent_to_the_whole_detector_path(tmp_path):
    factory = tmp_path / "det.py"
    factory.write_text(
        "import torch\nfrom torchvision.models.detection import FasterRCNN\n"
        "def make():\n"
        "    body = torch.nn.Conv2d(3, 8, 3)\n"
        "    body.out_channels = 8\n"
        "    return FasterRCNN(body, num_classes=5, min_size=64, max_size=64)\n")
    with pytest.raises(UsageError) as caught:
        build_user_model(UserModelSpec.parse(f"{factory}:make"))
    message = str(caught.value)
    assert "returns a torchvision FasterRCNN detector" in message and "--weights" in message
    assert NAME in message and "retinanet" not in message and "\n" not in message


@pytest.mark.parametrize("a", [EAGER, "onnxruntime"])
def test_only_eager_off_its_own_oracle_blames_the_images(a):
    """Untrained heads (the 5-class checkpoint above, measured: every proposal 0.5, every detection 0.2066) leave
    rounding to order ties, and eager float32 fails against its own float64 oracle; the summary leads with that. A
    runtime off the oracle while eager agrees is the export's own failure, never blamed on the images."""
    import numpy as np

    report = DetectorReport(NAME, "frozen", "file:ft.pt", (1, 3, 320, 320), (), AUTO_FACTOR, classes=CLASSES)
    report.proposals = [ProposalCheck(EAGER, ORACLE), ProposalCheck(a, ORACLE, [99], [100], unexplained=["lone"])]
    oracle = Run([Detections.of({"boxes": np.zeros((2, 4)), "scores": [0.2066, 0.2067], "labels": [1, 2]})])
    _reference_off_its_oracle(report, oracle)
    if a != EAGER:
        assert report.unjudgeable is None and INPUT_HINT not in report.summary()
        return
    assert report.unjudgeable.endswith(INPUT_HINT) and "(proposals; its 2 detections score 0.2066 to 0.2067)" in \
        report.unjudgeable
    assert report.summary() == f"{report.label} fails: {report.unjudgeable} (+1 more)"
