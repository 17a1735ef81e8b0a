"""Hunt 36: passes nobody earned from files. An ONNX file has no float64 run, so `verify compare` measures its floor
from the spread of ONNX Runtime's optimisation levels, on the file itself: a file that rounds its output below float32
(three ops, Veltkamp's split: t = x * (2^8 + 1); x - ... = t - (t - x)) turns each level's rounding difference into
a jump of its coarse step, lifts its own floor ~20x, and the pair is judged on the coarser floor of the two."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import invoke, rounding_onnx, tiny_make

SHAPE = "1x3x16x16"
WEIGHT_ERROR = 3e-5
"""One output channel of the last conv scaled by 1 + this: alone, 37.5x its channel's floor (measured)."""
ROUNDING_BITS = 8
"""The file's output rounded to 24 - 8 mantissa bits: its spread floor 19.6x the other side's (pooled, measured)."""
SMALL_ERROR = 1.5e-5
"""Review 43: half the error above, alone 9.6x its channel's floor (measured)."""
FEW_BITS = 4
"""Review 43: 4 bits of rounding lift the spread floor 2.04x, inside what correct files measure (0.77-2.13x)."""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The tiny model traced (a file that runs in float64) and exported by the legacy exporter, then edited."""
    import torch

    folder = tmp_path_factory.mktemp("hunt36")
    model = tiny_make()().eval()
    x = torch.randn(1, 3, 16, 16)
    traced = folder / "tiny.pt"
    torch.jit.trace(model, x).save(str(traced))
    exported = folder / "tiny.onnx"
    torch.onnx.export(model, (x,), str(exported), dynamo=False, input_names=["input"], output_names=["output0"])
    return {"traced": traced,
            "error": rounding_onnx(exported, folder / "error.onnx", WEIGHT_ERROR, 0),
            "rounded": rounding_onnx(exported, folder / "rounded.onnx", WEIGHT_ERROR, ROUNDING_BITS),
            "slightly": rounding_onnx(exported, folder / "slightly.onnx", SMALL_ERROR, FEW_BITS)}


def test_the_weight_error_alone_fails(files):
    result = invoke("compare", files["error"], files["traced"], "--shape", SHAPE)
    assert result.exit_code == 1, result.output
    assert "1 of 2 pairs disagree" in result.output


def test_a_file_rounding_its_output_does_not_lift_the_pair_floor(files):
    result = invoke("compare", files["rounded"], files["traced"], "--shape", SHAPE)
    assert result.exit_code == 1, result.output
    # judged on the float64 side's floor (review 43), the rounding fails the pair itself; where a pair agrees, the
    # spread's bound (`_compare_spread_floors`, FLOOR_AGREEMENT) still refuses a lifted floor
    assert "1 of 2 pairs disagree" in result.output, result.output


def test_a_file_rounding_a_little_lifts_no_pair_floor(files):
    """Review 43: a lift too small for the floor-agreement bound hid an error that fails alone at 9.6x (4.8x, exit 0):
    a file without a float64 run facing one is judged on the float64 side's floor alone."""
    result = invoke("compare", files["slightly"], files["traced"], "--shape", SHAPE)
    assert result.exit_code == 1, result.output
    assert "1 of 2 pairs disagree" in result.output and "pairs judged on B's alone" in " ".join(result.output.split())


def test_the_spread_bound_refuses_a_lifted_floor_where_the_pair_agrees():
    """`_compare_spread_floors` guards a pair that agrees: a file side's spread floor over FLOOR_AGREEMENT x the float64
    side's own is not judged; at the bound it is."""
    from types import SimpleNamespace

    from verify.api import _compare_spread_floors
    from verify.judge.file_floor import FLOOR_AGREEMENT
    from verify.judge.noise_floor import NoiseFloor
    from verify.judge.oracle import Oracle

    sides = [SimpleNamespace(path=Path("file.onnx")), SimpleNamespace(path=Path("model.pt"))]
    runs = [SimpleNamespace(label="onnxruntime"), SimpleNamespace(label="torchscript")]
    float64 = [Oracle({"out": np.zeros(2)}, {"out": NoiseFloor(1e-6)}, "eager(float64) vs eager")]

    def spread(value):
        return [[Oracle({}, {"out": NoiseFloor(value)}, "spread")], float64]

    assert not _compare_spread_floors(sides, runs, spread(FLOOR_AGREEMENT * 1e-6))
    (line,) = _compare_spread_floors(sides, runs, spread(FLOOR_AGREEMENT * 1.01e-6))
    assert line.startswith("file.onnx (onnxruntime)") and f"{FLOOR_AGREEMENT:g}x" in line and "Not judged" in line
