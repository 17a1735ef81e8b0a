"""Sweep 27d (bench/seeded_ops.py): a layer that runs on the model's own values and returns another shape (an
exporter's MaxPool ceil_mode, a ReduceMean's axes) is named as differing, with both shapes, not as a layer that
'could not run'."""

from __future__ import annotations

import json

import onnx
from onnx import helper

from tests.conftest import SMALL, SMALL_SHAPE
from tests.helpers import invoke

SPEC = f"{SMALL}:frozen:body"
SHAPE = "x".join(map(str, SMALL_SHAPE))


def test_a_layer_returning_another_shape_is_named_with_both_shapes(default_export, tmp_path):
    model = onnx.load(str(default_export / "model.onnx"))
    pool = next(node for node in model.graph.node if node.op_type == "MaxPool")
    kept = [a for a in pool.attribute if a.name != "ceil_mode"]
    del pool.attribute[:]
    pool.attribute.extend([*kept, helper.make_attribute("ceil_mode", 1)])  # 64 px: 16x16 -> 17x17, a valid graph
    del model.graph.value_info[:]
    bad = tmp_path / "ceil.onnx"
    onnx.save(model, str(bad))
    report = tmp_path / "report.json"
    result = invoke("compare", SPEC, bad, "--shape", SHAPE, "--samples", "1", "--layers", "--json", report)
    assert result.exit_code == 1, result.output
    check = json.loads(report.read_text())["layers"][0]
    assert check["reshaped"] == {"maxpool": {"shape": [1, 64, 17, 17], "reference": [1, 64, 16, 16]}}
    text = " ".join(result.output.split())
    assert "differ on their own" in text and "maxpool 1x64x17x17 where" in text and "could not run" not in text


def test_compare_of_a_model_against_a_file_runs_the_layer_verdict_by_default(default_export, tmp_path, monkeypatch):
    """Sweep 27d: `verify compare MODEL FILE` judged the outputs alone unless --layers, and six real ONNX bugs of a
    convnext at torchvision's init (outputs 1.00x) passed it, exit 0. A model against a file now runs the layer
    verdict by default, as `verify export` does: one channel of CULPRIT_LAYER off by 1e-5 (below the outputs' floor,
    tests/test_layers.py) fails there, and --no-layers gives the outputs' verdict alone."""
    from tests.helpers import CULPRIT_LAYER, ONE_CHANNEL_ERROR, scaled_onnx_channel
    from verify.judge.layers import LAYERS_ENV

    monkeypatch.delenv(LAYERS_ENV, raising=False)  # the default outside the suite
    bad = tmp_path / "bad.onnx"
    scaled_onnx_channel(default_export / "model.onnx", bad, ONE_CHANNEL_ERROR / 100)
    args = ("compare", SPEC, bad, "--shape", SHAPE, "--samples", "1")
    default = invoke(*args, "--json", tmp_path / "d.json")
    assert default.exit_code == 1, default.output
    (check,) = json.loads((tmp_path / "d.json").read_text())["layers"]
    assert check["named"] and check["named"][0].startswith(CULPRIT_LAYER), check["named"]  # the layer, named first
    outputs_only = invoke(*args, "--no-layers", "--json", tmp_path / "n.json")
    assert outputs_only.exit_code == 0, outputs_only.output  # the outputs alone let it through
    assert not json.loads((tmp_path / "n.json").read_text()).get("layers")
