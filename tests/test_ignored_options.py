"""An option the command would not apply is refused in one line before any work, never silently ignored: a registered
model's options beside --model, a backbone's --view for a whole detector; and `explain` of two detectors judges the
image --input names."""

from __future__ import annotations

import numpy as np
import pytest

from exporter.errors import UsageError
from tests.helpers import invoke

DETECTOR = "fasterrcnn_mobilenet_v3_large_320_fpn"
TINY = "tests/data/tiny.py:make"


@pytest.mark.parametrize("given", [["-b", "resnet18"], ["--norm", "batch"], ["--view", "fpn"]])
def test_a_registered_models_option_beside_model_is_refused(tmp_path, given):
    out = tmp_path / "out"
    result = invoke("export", "--model", TINY, *given, "--out", out)
    assert result.exit_code == 2, result.output
    flag = "--backbone" if given[0] == "-b" else given[0]
    assert f"{flag} applies to a registered backbone" in result.output and "drop" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()


def test_a_backbone_view_for_a_whole_detector_is_refused(tmp_path):
    out = tmp_path / "out"
    result = invoke("export", "-b", DETECTOR, "--view", "fpn", "--out", out)
    assert result.exit_code == 2, result.output
    assert "--view is not supported for a whole detector" in result.output and not out.exists()


def _png(path, height: int, width: int) -> None:
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)


def test_explain_of_two_detectors_judges_the_input_image(tmp_path, monkeypatch):
    """The image reaches the explanation as given (not the seeded one), named by its file; a folder of two images
    is refused, as explain judges one."""
    import verify.detect.explain as detect_explain

    seen = []

    def stop(a, b, weights, seed, shape, factor, image=None):
        seen.append(image)
        raise UsageError("stopped before building the detectors")

    monkeypatch.setattr(detect_explain, "explain_detectors", stop)
    _png(tmp_path / "street.png", 96, 128)
    result = invoke("explain", f"{DETECTOR}:frozen", f"{DETECTOR}:batch", "--input", tmp_path / "street.png")
    assert result.exit_code == 2 and "stopped before building" in result.output, result.output
    array, label = seen[0]
    assert array.shape == (3, 96, 128) and label == "street.png"

    folder = tmp_path / "two"
    folder.mkdir()
    _png(folder / "a.png", 64, 64)
    _png(folder / "b.png", 64, 64)
    result = invoke("explain", f"{DETECTOR}:frozen", f"{DETECTOR}:batch", "--input", folder)
    assert result.exit_code == 2 and "holds 2: pass one" in result.output, result.output
    assert len(seen) == 1


def test_a_matrix_detector_shape_resized_to_nothing_is_refused_before_any_cell(tmp_path):
    result = invoke("matrix", "-b", DETECTOR, "--detector-shape", "1x3x5x4000", "--no-cache",
                    "--json", tmp_path / "m.json")
    assert result.exit_code == 2, result.output
    assert "becomes 0x" in result.output and not (tmp_path / "m.json").exists()
