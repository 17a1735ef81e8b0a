"""Hunt 36: passes nobody earned from files. An ONNX file has no float64 run, so `verify compare` measures its floor
from the spread of ONNX Runtime's optimisation levels, on the file itself: a file that rounds its output below float32
(three ops, Veltkamp's split: t = x * (2^8 + 1); x - ... = t - (t - x)) turns each level's rounding difference into
a jump of its coarse step, lifts its own floor ~20x, and the pair is judged on the coarser floor of the two."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import invoke

SHAPE = "1x3x16x16"
WEIGHT_ERROR = 3e-5
"""One output channel of the last conv scaled by 1 + this: alone, 37.5x its channel's floor (measured)."""
ROUNDING_BITS = 8
"""The file's output rounded to 24 - 8 mantissa bits: its spread floor 19.6x the other side's (pooled, measured)."""


def _tiny_make():
    spec = importlib.util.spec_from_file_location("hunt36_tiny", Path(__file__).parent / "data" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make


def _edited(src: Path, dst: Path, error: float, bits: int) -> Path:
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    if error:
        init = next(i for i in graph.initializer if numpy_helper.to_array(i).ndim == 4
                    and numpy_helper.to_array(i).shape[0] == 32)
        weight = numpy_helper.to_array(init).copy()
        weight[5] *= 1 + error
        init.CopyFrom(numpy_helper.from_array(weight, init.name))
    if bits:
        graph.initializer.append(numpy_helper.from_array(np.array(2.0 ** bits + 1, np.float32), "split"))
        name = graph.output[0].name
        producer = next(n for n in graph.node if name in n.output)
        producer.output[list(producer.output).index(name)] = "exact"
        graph.node.extend([helper.make_node("Mul", ["exact", "split"], ["scaled"]),
                           helper.make_node("Sub", ["scaled", "exact"], ["excess"]),
                           helper.make_node("Sub", ["scaled", "excess"], [name])])
    onnx.save(model, str(dst))
    return dst


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The tiny model traced (a file that runs in float64) and exported by the legacy exporter, then edited."""
    import torch

    folder = tmp_path_factory.mktemp("hunt36")
    model = _tiny_make()().eval()
    x = torch.randn(1, 3, 16, 16)
    traced = folder / "tiny.pt"
    torch.jit.trace(model, x).save(str(traced))
    exported = folder / "tiny.onnx"
    torch.onnx.export(model, (x,), str(exported), dynamo=False, input_names=["input"], output_names=["output0"])
    return {"traced": traced,
            "error": _edited(exported, folder / "error.onnx", WEIGHT_ERROR, 0),
            "rounded": _edited(exported, folder / "rounded.onnx", WEIGHT_ERROR, ROUNDING_BITS)}


def test_the_weight_error_alone_fails(files):
    result = invoke("compare", files["error"], files["traced"], "--shape", SHAPE)
    assert result.exit_code == 1, result.output
    assert "1 of 2 pairs disagree" in result.output


def test_a_file_rounding_its_output_does_not_lift_the_pair_floor(files):
    from verify.judge.file_floor import FLOOR_AGREEMENT

    result = invoke("compare", files["rounded"], files["traced"], "--shape", SHAPE)
    assert result.exit_code == 1, result.output
    assert f"{FLOOR_AGREEMENT:g}x" in result.output and "spread" in result.output
