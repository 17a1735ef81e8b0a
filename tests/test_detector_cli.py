"""`verify export -b <detector>` exports ONNX for any image size unless --static, as a backbone export does
(verify/cli/detector.py): a folder of images of two sizes is judged at their own sizes; with --static or
--shape every image is resized to one size first."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from exporter.families.detectors import MIN_DETECTIONS, calibration_image
from verify.cli import app
from verify.cli.detector import DEFAULT_SHAPE
from verify.detect import check

NAME = "fasterrcnn_mobilenet_v3_large_320_fpn"
SIZES = ((320, 320), (320, 480))
"""Two sizes the 320 model's transform keeps as they are (its short side is 320, its long side at most 640)."""


def _size(hw) -> str:
    return "x".join(map(str, hw))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two 8-bit PNG images of the calibration kind (tens of detections each), of two sizes."""
    folder = tmp_path_factory.mktemp("detector-images")
    for seed, (h, w) in enumerate(SIZES):
        array = calibration_image(seed, (3, h, w)).permute(1, 2, 0).numpy()
        Image.fromarray(np.round(array * 255).astype(np.uint8)).save(folder / f"image{seed}.png")
    return folder


def _export(tmp_path, *extra):
    return CliRunner().invoke(app, ["export", "-b", NAME, "--out", str(tmp_path / "out"), *extra])


def test_two_image_sizes_are_judged_at_their_own_sizes(tmp_path, images):
    result = _export(tmp_path, "--input", str(images), "--format", "onnx", "--json", str(tmp_path / "r.json"))
    report = json.loads((tmp_path / "r.json").read_text())
    assert result.exit_code == 0, result.output
    assert report["passed"] and report["dynamic"]
    assert report["image_sizes"] == [_size(hw) for hw in SIZES]
    assert all(min(pair["matched_per_image"]) >= MIN_DETECTIONS for pair in report["after_nms"])
    assert report["before_nms"] and all(p["passed"] for p in report["proposals"])
    files = [Path(path) for path in report["files"].values()]  # the published folder's, not the staging folder's
    assert files and all(path.is_file() and path.parent.parent == tmp_path / "out" for path in files), files


class _Stop(Exception):
    """Raised by the stand-in verify_detector: the test reads what the command passed, nothing is built."""


@pytest.mark.parametrize("extra, dynamic, sizes", [
    ([], True, [_size(hw) for hw in SIZES]),
    (["--static"], False, [_size(DEFAULT_SHAPE[2:])] * len(SIZES)),
    (["--shape", "1x3x320x320"], True, [_size(DEFAULT_SHAPE[2:])] * len(SIZES)),
])
def test_static_or_a_shape_resizes_every_image_to_one_size(tmp_path, images, monkeypatch, extra, dynamic, sizes):
    seen = {}

    def stand_in(*args, images=None, dynamic=None, **kwargs):
        seen.update(dynamic=dynamic, sizes=[_size(image.shape[-2:]) for image in images])
        raise _Stop

    monkeypatch.setattr(check, "verify_detector", stand_in)
    result = _export(tmp_path, "--input", str(images), *extra)
    assert "_Stop" in result.output  # the command reached verify_detector
    assert seen == {"dynamic": dynamic, "sizes": sizes}
