"""`verify explain`: equivalence, structural diff, first divergence, for torch models and ONNX."""

import json

import pytest
import torch
from typer.testing import CliRunner

from exporter.artifacts import eager_artifact
from exporter.backbones import build_model
from exporter.export import ExportOptions, export_model
from exporter.formats.onnx import OnnxOptions
from exporter.spec import ModelSpec
from exporter.weights import load_weights
from verify.cli import app
from verify.explain import explain_artifacts
from verify.inputs import make_input

SHAPE = (1, 3, 64, 64)
runner = CliRunner()


def built(spec: str):
    spec = ModelSpec.parse(spec)
    return build_model(spec, load_weights("synthetic", spec.backbone))


def explain_models(a, b, x=None):
    x = make_input(SHAPE, 0) if x is None else x
    return explain_artifacts(eager_artifact(a, SHAPE), eager_artifact(b, SHAPE), x)


def test_seed_question_is_equivalent_rounding_only(tmp_path):
    result = runner.invoke(app, ["explain", "--shape", "1x3x64x64", "--json", str(tmp_path / "e.json")])
    assert result.exit_code == 0, result.output
    assert "equivalent" in result.stdout and "rounding" in result.stdout
    data = json.loads((tmp_path / "e.json").read_text())
    assert data["a"] == "resnet50:batch:trunk" and data["b"] == "resnet50:frozen:body"
    assert data["equivalent"] is True and data["first_divergence"] is None
    assert data["outputs"] == ["layer4"]
    assert data["float64_difference"]["layer4"]["max_rel"] < 1e-12
    assert 0 < data["float32_difference"]["layer4"] < 4 * data["noise_floor"]["B"]["layer4"]
    kinds = {(d["kind"], d["a"], d["b"]) for d in data["structural_differences"]}
    assert kinds == {("type", "BatchNorm2d", "FrozenBatchNorm2d")}


def test_eps0_is_not_equivalent_and_diverges_at_the_stem_norm(tmp_path):
    result = runner.invoke(app, ["explain", "resnet50:batch:body", "resnet50:frozen-eps0:body",
                                 "--shape", "1x3x64x64", "--json", str(tmp_path / "e.json")])
    assert result.exit_code == 1, result.output
    assert "not equivalent" in result.stdout
    assert "first divergence: bn1" in result.stdout and "bn1: eps 1e-05 vs 0" in result.stdout
    data = json.loads((tmp_path / "e.json").read_text())
    assert data["equivalent"] is False and data["first_divergence"] == "bn1"
    assert {"equivalent", "float32_difference", "noise_floor", "first_divergence",
            "structural_differences"} <= set(data)


def test_one_perturbed_running_variance_is_localised_exactly():
    a, b = built("resnet50:frozen:body"), built("resnet50:frozen:body")
    target = "layer3.4.bn2"
    with torch.no_grad():
        b.model.get_submodule(target).running_var[17] *= 1.01
    result = explain_models(a, b)
    assert not result.equivalent
    assert result.first_divergence == target
    values = [d for d in result.structural_differences if d.kind == "value"]
    assert [d.module for d in values] == [target]
    assert "1 of 256 values differ" in values[0].detail
    assert target in result.divergence_text() and "running_var" in result.divergence_text()


def test_train_mode_is_reported_as_the_likely_false_alarm():
    a, b = built("resnet18:batch:body"), built("resnet18:batch:body")
    b.model.train()
    result = explain_models(a, b)
    assert not result.equivalent
    assert result.train_mode["B"] and not result.train_mode["A"]
    assert "train mode" in result.headline() and "model.eval()" in result.headline()
    assert any(d.kind == "mode" for d in result.structural_differences)
    assert result.first_divergence == "bn1"
    # explaining never changed the caller's model
    assert b.model.training
    torch.testing.assert_close(b.model.bn1.running_var, a.model.bn1.running_var)


def test_fused_is_equivalent_and_the_fold_is_named():
    result = explain_models(built("resnet18:batch:body"), built("resnet18:fused:body"))
    assert result.equivalent
    folded = [d for d in result.structural_differences if d.kind == "folded"]
    assert len(folded) == 20 and str(folded[0]) == "bn1: BatchNorm2d(eps=1e-05) vs folded into conv1"


def test_different_weights_are_values_not_structure():
    a = build_model(ModelSpec("resnet18", "frozen", "body"), load_weights("synthetic", "resnet18", seed=0))
    b = build_model(ModelSpec("resnet18", "frozen", "body"), load_weights("synthetic", "resnet18", seed=1))
    result = explain_models(a, b)
    assert not result.equivalent
    assert result.first_divergence == "conv1"
    assert {d.kind for d in result.structural_differences} == {"value"}


@pytest.mark.parametrize("norm", ["frozen", "batch"])
def test_onnx_against_its_source_model(norm, tmp_path):
    """An ONNX export of a model with one conv channel 1 % off is localised to that conv,
    through the ONNX graph's intermediate values (BN folded by the exporter or not)."""
    spec = f"resnet18:{norm}:body"
    clean, broken = built(spec), built(spec)
    target = "layer3.1.conv2"
    with torch.no_grad():
        broken.model.get_submodule(target).weight[3] *= 1.01
    x = make_input(SHAPE, 0)
    meta = eager_artifact(clean, SHAPE).meta
    good = export_model(clean, meta, torch.from_numpy(x), tmp_path, ExportOptions(), "onnx")
    result = explain_artifacts(good, eager_artifact(clean, SHAPE), x)
    assert result.equivalent and result.how == "float32-floor"

    (tmp_path / "bad").mkdir()
    bad = export_model(broken, meta, torch.from_numpy(x), tmp_path / "bad", ExportOptions(), "onnx")
    result = explain_artifacts(bad, eager_artifact(clean, SHAPE), x)
    assert not result.equivalent
    assert result.first_divergence == target


def test_legacy_exporter_names_map_back_too(tmp_path):
    clean, broken = built("resnet18:frozen:body"), built("resnet18:frozen:body")
    with torch.no_grad():
        broken.model.get_submodule("layer2.0.downsample.0").weight[5] *= 1.01
    x = make_input(SHAPE, 0)
    bad = export_model(broken, eager_artifact(clean, SHAPE).meta, torch.from_numpy(x), tmp_path,
                       ExportOptions(format_options=(OnnxOptions(exporter="torchscript"),)), "onnx")
    result = explain_artifacts(bad, eager_artifact(clean, SHAPE), x)
    assert result.first_divergence == "layer2.0.downsample.0"


def test_torchscript_artifact_is_equivalent_in_float64(tmp_path):
    model = built("resnet18:frozen:body")
    x = make_input(SHAPE, 0)
    ts = export_model(model, eager_artifact(model, SHAPE).meta, torch.from_numpy(x), tmp_path,
                      ExportOptions(), "torchscript")
    result = explain_artifacts(ts, eager_artifact(model, SHAPE), x)
    assert result.equivalent and result.how == "float64"


def test_explain_needs_both_or_neither():
    result = runner.invoke(app, ["explain", "resnet18:frozen:body"])
    assert result.exit_code == 2
    assert "Give both A and B" in result.stderr
