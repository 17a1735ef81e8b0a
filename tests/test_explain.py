"""`verify explain`: equivalence, structural diff, first divergence, for torch models and ONNX."""

import copy
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from exporter.backbones import build_model
from exporter.export import ExportOptions, export_model
from exporter.formats.eager import eager_artifact
from exporter.formats.onnx import OnnxOptions
from exporter.spec import ModelSpec
from exporter.weights import load_weights
from verify.cli import app
from verify.explain.equivalence import explain_artifacts
from verify.explain.localize import EQUIVALENCE_RTOL, localise
from verify.explain.tracers import OnnxTracer, Side, fx_module_path, jit_scopes, module_calls
from verify.inputs import make_input
from verify.judge.compare import Tolerance

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


def with_the_conv_off(clean, out):
    """The dynamo ONNX file `clean` with output channel CONV_CHANNEL of CONV_TARGET's weight scaled by CONV_FACTOR,
    opened, instead of exporting the model so changed (4-5 s of dynamo translation each): that export writes the same
    nodes and metadata and differs in this one initializer alone, which the exporter keeps under the conv's name.
    Bit for bit the same where the norm stays a node of its own (frozen); where the exporter folds the norm into the
    conv (batch) the folded weight is scaled, so each value of that channel may round differently (at most 2 float32
    steps apart, against the 1 % change; measured on resnet18 at SHAPE in both norms)."""
    import onnx
    from onnx import numpy_helper

    from exporter.formats import open_artifact

    model = onnx.load(str(clean))
    weight, = [t for t in model.graph.initializer if t.name == f"{CONV_TARGET}.weight"]
    value = torch.from_numpy(numpy_helper.to_array(weight).copy())
    value[CONV_CHANNEL] *= CONV_FACTOR  # as torch scales the module's weight before an export
    weight.CopyFrom(numpy_helper.from_array(value.numpy(), weight.name))
    onnx.save(model, str(out))
    return open_artifact(out)


def assert_the_bad_conv_is_localised(spec: str, good, bad):
    """`good` (the dynamo ONNX of `spec`) explains as equivalent to its source model, `bad` (CONV_TARGET's
    channel CONV_CHANNEL off by CONV_FACTOR) diverges first at that conv."""
    clean, x = built(spec), make_input(SHAPE, 0)
    result = explain_artifacts(good, eager_artifact(clean, SHAPE), x)
    assert result.equivalent and result.how == "float32-floor"

    result = explain_artifacts(bad, eager_artifact(clean, SHAPE), x)
    assert not result.equivalent
    assert result.first_divergence == CONV_TARGET


def test_onnx_against_its_source_model(files):
    """An ONNX export of a model with one conv channel 1 % off is localised to that conv, through the ONNX
    graph's intermediate values; BatchNorm kept by the exporter here (`files` holds this very pair: the dynamo
    ONNX of SMALL_SPEC and of CONV_TARGET off), folded by it in the frozen case below."""
    assert_the_bad_conv_is_localised(SMALL_SPEC, files[0]["onnx"], files[0]["bad_conv"])


def test_onnx_of_a_frozen_norm_against_its_source_model(default_export, tmp_path):
    """The frozen norm's clean dynamo ONNX is the suite's `verify export` of it (tests/conftest.py default_export:
    resnet18:frozen:body at SHAPE, the same synthetic weights); the one with a conv off is that file edited
    (`with_the_conv_off`: here bit for bit the export of the model so changed)."""
    from exporter.formats import open_artifact

    spec = "resnet18:frozen:body"
    assert default_export.name == spec.replace(":", "-")
    assert_the_bad_conv_is_localised(spec, open_artifact(default_export / "model.onnx"),
                                     with_the_conv_off(default_export / "model.onnx", tmp_path / "model.onnx"))


def test_legacy_exporter_names_map_back_too(tmp_path):
    clean, broken = built("resnet18:frozen:body"), built("resnet18:frozen:body")
    with torch.no_grad():
        broken.model.get_submodule("layer2.0.downsample.0").weight[5] *= 1.01
    x = make_input(SHAPE, 0)
    bad = export_model(broken, eager_artifact(clean, SHAPE).meta, torch.from_numpy(x), tmp_path,
                       ExportOptions(format_options=(OnnxOptions(exporter="torchscript"),)), "onnx")
    result = explain_artifacts(bad, eager_artifact(clean, SHAPE), x)
    assert result.first_divergence == "layer2.0.downsample.0"


def test_torchscript_artifact_is_equivalent_in_float64(default_export):
    """The TorchScript file of the suite's `verify export` of resnet18:frozen:body at SHAPE (default_export)."""
    from exporter.formats import open_artifact

    model = built("resnet18:frozen:body")
    assert default_export.name == "resnet18-frozen-body"
    result = explain_artifacts(open_artifact(default_export / "model.pt"), eager_artifact(model, SHAPE),
                               make_input(SHAPE, 0))
    assert result.equivalent and result.how == "float64"


def test_explain_needs_both_or_neither():
    result = runner.invoke(app, ["explain", "resnet18:frozen:body"])
    assert result.exit_code == 2
    assert "Give both A and B" in result.stderr


# ---------------------------------------------------------------- first divergence for every pair of sides

SMALL_SPEC = "resnet18:batch:body"
BN_TARGET, BN_CHANNEL = "layer2.1.bn1", 7
CONV_TARGET, CONV_CHANNEL = "layer3.1.conv2", 3
CONV_FACTOR = 1.01


@pytest.fixture(scope="module")
def files(module_tmp, batch_body_export):
    """The clean model as .pt2 and dynamo ONNX (one torch.export trace) and as TorchScript: the suite's
    `verify_export` of SMALL_SPEC (tests/conftest.py batch_body_export, the same weights and SHAPE); as legacy
    ONNX; the same model with one conv channel 1 % off as dynamo ONNX (that file edited: `with_the_conv_off`); and
    the clean model in memory with one BatchNorm running-variance entry 1 % off."""
    from exporter.formats import get_format, open_artifact

    report, made = batch_body_export
    assert report.settings["spec"] == SMALL_SPEC and report.input["shape"] == list(SHAPE)
    folder = module_tmp("explain-pairs")
    x = make_input(SHAPE, 0)
    clean = built(SMALL_SPEC)
    bad_bn = copy.deepcopy(clean)
    with torch.no_grad():
        bad_bn.model.get_submodule(BN_TARGET).running_var[BN_CHANNEL] *= 1.01
    meta = eager_artifact(clean, SHAPE).meta
    example = torch.from_numpy(x)
    found = {fmt: open_artifact(made / get_format(fmt).filename) for fmt in ("pt2", "onnx", "torchscript")}
    (folder / "legacy").mkdir()
    found["legacy"] = export_model(clean, meta, example, folder / "legacy",
                                   ExportOptions(format_options=(OnnxOptions(exporter="torchscript"),)), "onnx")
    (folder / "bad").mkdir()
    found["bad_conv"] = with_the_conv_off(found["onnx"].path, folder / "bad" / found["onnx"].path.name)
    found["bad_bn"] = eager_artifact(bad_bn, SHAPE)
    return found, x


def test_pt2_against_eager_names_the_perturbed_running_variance(files):
    """The ExportedProgram's FX nodes, run in float64 and mapped to modules through their
    nn_module_stack, against the eager model with one running-variance entry 1 % off."""
    found, x = files
    result = explain_artifacts(found["pt2"], found["bad_bn"], x)
    assert not result.equivalent and result.how == "float64"
    assert result.first_divergence == BN_TARGET
    assert result.divergence["judged"] == "float64" and result.divergence["max_rel"] > EQUIVALENCE_RTOL
    # parameters and buffers keep their names in the program, its placeholder modules lose their classes
    assert [(d.module, d.kind) for d in result.structural_differences] == [(BN_TARGET, "value")]
    assert "running_var: 1 of" in result.divergence_text()


def test_torchscript_against_eager_is_read_through_its_graph(files):
    """ScriptModules refuse forward hooks; the inlined graph's module hierarchy stands in."""
    found, x = files
    result = explain_artifacts(found["torchscript"], found["bad_bn"], x)
    assert result.first_divergence == BN_TARGET and result.divergence["judged"] == "float64"




def test_a_file_side_takes_the_view_prefix_that_lines_it_up():
    """A saved FPN backbone names its modules `body.layer1...`, the eager side's are canonical
    (`layer1...`): the file side takes the prefix under which the two line up, and no other."""
    from exporter.artifacts import Artifact, ArtifactMeta
    from verify.explain.sides import line_up

    model = built(SMALL_SPEC)
    wrapper = torch.nn.Module()
    wrapper.body = model.model  # what the FPN view's file holds
    eager = Side(eager_artifact(model, SHAPE), model.model, model.model, model.view.prefix)
    for module, expected in ((wrapper, "body."), (model.model, "")):
        saved = Side(Artifact("torchscript", ArtifactMeta(), path=Path("model.pt")), module, module)
        line_up([saved, eager])
        assert saved.prefix == expected and eager.prefix == model.view.prefix

def test_two_onnx_files_one_with_a_perturbed_conv(files, tmp_path):
    found, _ = files
    out = tmp_path / "e.json"
    result = runner.invoke(app, ["explain", str(found["onnx"].path), str(found["bad_conv"].path),
                                 "--shape", "1x3x64x64", "--json", str(out)])
    assert result.exit_code == 1, result.output
    assert f"first divergence: {CONV_TARGET}" in result.stdout
    data = json.loads(out.read_text())
    assert data["how"] == "float32-floor" and data["first_divergence"] == CONV_TARGET
    assert data["divergence"]["judged"] == "float32-floor"
    assert data["divergence"]["ratio"] > Tolerance().factor
    # the dynamo exporter computes a BatchNorm inside its conv's node, recorded under the norm
    assert set(data["divergence"]["fused_with"]) <= {CONV_TARGET.replace("conv", "bn")}


def test_onnx_files_of_both_exporters_line_up_module_by_module(files):
    """The legacy exporter names the fused node after the conv, dynamo after the norm: matched,
    and a clean pair stays within the floor at every module."""
    found, x = files
    result = explain_artifacts(found["legacy"], found["bad_conv"], x)
    assert result.first_divergence == CONV_TARGET
    sides = [Side(found["legacy"]), Side(found["onnx"])]
    counts = [len(OnnxTracer().trace(side, x).values) for side in sides]
    clean = localise(*sides, x, Tolerance().factor)
    assert clean.divergence is None
    assert counts[0] == counts[1] and f"none of the {counts[0]} module values" in clean.note


def test_pt2_against_a_perturbed_onnx_file(files, tmp_path):
    found, _ = files
    result = runner.invoke(app, ["explain", str(found["pt2"].path), str(found["bad_conv"].path),
                                 "--shape", "1x3x64x64"])
    assert result.exit_code == 1, result.output
    assert f"first divergence: {CONV_TARGET}" in result.stdout


def test_a_graph_without_module_scopes_says_why(files, tmp_path):
    import onnx

    found, _ = files
    model = onnx.load(str(found["onnx"].path))
    for i, node in enumerate(model.graph.node):
        del node.metadata_props[:]
        node.name = f"node{i}"
    onnx.save(model, str(tmp_path / "scopeless.onnx"))
    out = tmp_path / "e.json"
    result = runner.invoke(app, ["explain", str(tmp_path / "scopeless.onnx"), str(found["bad_conv"].path),
                                 "--shape", "1x3x64x64", "--json", str(out)])
    assert result.exit_code == 1, result.output
    assert "first divergence: not available" in result.stdout
    data = json.loads(out.read_text())
    assert data["first_divergence"] is None
    assert "share no module value" in data["divergence_note"]


def test_a_format_no_tracer_reads_gets_a_reason():
    """Formats that run neither in float64 under torch nor as a graph with scopes (AOTInductor's
    compiled code) have no localiser: the note says so and lists what can be read."""
    from exporter.artifacts import Artifact, ArtifactMeta
    from exporter.formats import file_formats
    from verify.explain.tracers import TRACERS, tracer_for
    from verify.runtimes import runtimes_for

    unread = [fmt for fmt in file_formats() if not runtimes_for(fmt, float64=True)
              and tracer_for(Side(Artifact(fmt, ArtifactMeta(), path=Path(f"model.{fmt}")))) is None]
    if not unread:
        pytest.skip("every registered format has a module tracer")
    model = built(SMALL_SPEC)
    eager = Side(eager_artifact(model, SHAPE), model.model, model.float64(), model.view.prefix)
    for fmt in unread:
        found = localise(Side(Artifact(fmt, ArtifactMeta(), path=Path(f"model.{fmt}"))), eager,
                         make_input(SHAPE, 0), Tolerance().factor)
        assert found.divergence is None
        assert found.note.startswith(f"first divergence: not available for {fmt} vs eager because no tracer")
        assert f"model.{fmt}" in found.note and all(TRACERS.get(n).reads in found.note for n in TRACERS)


@pytest.mark.parametrize("raw", ["layer1.0.conv1", "L['self'].layer1[0].conv1", "layer1.0.conv1@1",
                                 "L['self']._modules['layer1']._modules['0']._modules['conv1']",
                                 "_export_root.layer1.0.conv1"])
def test_fx_module_paths_of_every_spelling_are_dotted(raw):
    assert fx_module_path(raw) == "layer1.0.conv1"


def test_a_module_call_is_a_run_of_ops_inside_its_scope():
    block = [("b", "b")]
    ops = [("conv", block + [("b.conv", "b.conv")]), ("relu", block + [("b.relu", "b.relu")]),
           ("conv2", block + [("b.conv2", "b.conv2")]), ("add", block), ("const", None),
           ("relu2", block + [("b.relu", "b.relu")]), ("top", []),
           ("again", [("k", "m")]), ("again2", [("k@1", "m")])]
    assert module_calls(ops) == [("b.conv", 0, "conv"), ("b.relu", 0, "relu"), ("b.conv2", 0, "conv2"),
                                 ("b.relu", 1, "relu2"), ("b", 0, "relu2"), ("m", 0, "again"), ("m", 1, "again2")]


def test_torchscript_module_hierarchy_becomes_paths():
    hierarchy = "layer4(Sequential).1(BasicBlock).relu(ReLU).UNKNOWN_INSTANCE(UNKNOWN_TYPE)"
    assert [path for _, path in jit_scopes(hierarchy)] == ["layer4", "layer4.1", "layer4.1.relu"]
    assert [path for _, path in jit_scopes("conv1(Conv2d).SELF(Conv2d)")] == ["conv1"]
