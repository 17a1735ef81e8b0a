"""Hunt 16b: the layer verdict (`--layers`, verify/explain/rerun.py) on users' own models that the suite's backbones do
not contain: a module called twice in a row, a conv and norm under the user's own names, a dynamic batch's shape
arithmetic under a conv's scope, a layer after a module whose output is a tuple."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import HEAD_MODEL, ONE_CHANNEL_ERROR, invoke, scaled_onnx_weight
from verify.judge.compare import AUTO_FACTOR

MODELS = '''
import torch
from torch import nn


class Twice(nn.Module):
    """One conv called twice in a row (nothing between the two calls tells them apart in a dynamo ONNX graph), then a
    third time after a functional op."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return self.conv(torch.relu(self.conv(self.conv(self.stem(x)))))


class Named(nn.Module):
    """A conv and its BatchNorm under names no registered family maps to each other, then a flatten of a dynamic
    batch (dynamo computes its size under the scope of the conv before it)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.act = nn.ReLU()
        self.proj = nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.c = nn.Conv2d(16, 4, 1)
        with torch.no_grad():
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.2, 0.2)
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        return torch.flatten(self.c(self.bn(self.proj(self.act(self.stem(x))))), 1)


class Attention(nn.Module):
    """A Linear after nn.MultiheadAttention, whose output is a tuple (no tensor the reference records)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, stride=4)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.proj = nn.Linear(16, 16)

    def forward(self, x):
        t = self.stem(x).flatten(2).transpose(1, 2)
        t, _ = self.attn(t, t, t)
        return self.proj(t)


class TwiceHead(Twice):
    """Twice's conv called twice in a row, then a 1x1 head."""

    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.conv(self.conv(self.stem(x))))


def twice():
    return Twice()


def twice_head():
    return TwiceHead()


def named():
    return Named()


class Flipped(Attention):
    """Attention's keys and values a flip of its queries, computed outside every module: `attn` reads three tensors,
    two of them no recorded call's output, so it cannot be re-run on the reference's values alone."""

    def forward(self, x):
        t = self.stem(x).flatten(2).transpose(1, 2)
        t, _ = self.attn(t, t.flip(1), t.flip(1))
        return self.proj(t)


def attention():
    return Attention()


def flipped():
    return Flipped()
'''
COMMON = ("--shape", "1x3x32x32", "--samples", "1", "--layers")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = tmp_path_factory.mktemp("hunt16b") / "user_models.py"
    path.write_text(MODELS)
    return path


def export(models, tmp_path, factory: str, *extra: str) -> tuple[int, dict, str]:
    report = tmp_path / f"{factory}.json"
    result = invoke("export", "--model", f"{models}:{factory}", *COMMON, "--out", tmp_path / "out", "--overwrite",
                    "--json", report, *extra)
    return result.exit_code, json.loads(report.read_text()), result.output


def checks(report: dict) -> dict[str, dict]:
    return {check["candidate"].rsplit("/", 1)[-1]: check for check in report["layers"]}


def calls(check: dict, module: str) -> list[int]:
    return sorted(layer["call"] for layer in check["layers"] if layer["module"] == module)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_a_module_called_twice_in_a_row_is_never_judged_as_its_first_call(models, tmp_path, exporter):
    """Before (measured): `self.conv(self.conv(x))` exported to ONNX (either exporter; the legacy one names the second
    call `conv_1`, which was read as `conv` again) was one run of two convs judged against the first call's value:
    the correct file failed `--layers`, "1 of 2 layers of model.onnx differ on their own: conv 4152255x its own
    floor" (exit 1, no folder written), and `verify reduce` wrote a "reproducing" piece of it. The .pt2's run of both
    calls was judged as the second call, on one conv's floor (1.56x). After: every file re-runs each call alone (the
    dynamo ONNX graph records no call identity: a run of the same ops twice, each on the last one's value, is split
    where the model's count of calls confirms it)."""
    code, report, output = export(models, tmp_path, "twice", "--format", "onnx", "--format", "pt2",
                                  "--onnx-exporter", exporter)
    assert all(pair["passed"] for pair in report["pairs"]), "the outputs agree: the files are correct"
    found = checks(report)
    assert set(found) == {"model.onnx", "model.pt2"}, found  # every file's layers re-run, not one of them
    assert code == 0 and all(check["passed"] for check in found.values()), output
    for name, check in found.items():
        assert calls(check, "conv") == [0, 1, 2] and not check["skipped"], (name, check)
        assert max(layer["ratio"] for layer in check["layers"]) <= AUTO_FACTOR


def test_a_run_is_split_into_calls_only_where_it_repeats_itself():
    """`repeats`: [Conv, Conv] chained is two calls; two convs that read the same value, or a Mul after a Conv, are one
    run that is not split (and a module whose calls stay merged is listed as not re-run, merged_calls)."""
    from collections import Counter

    from onnx import helper

    from verify.explain.rerun import merged_calls, repeats

    chained = [helper.make_node("Conv", ["x", "w"], ["a"]), helper.make_node("Conv", ["a", "w"], ["b"])]
    parallel = [helper.make_node("Conv", ["x", "w"], ["a"]), helper.make_node("Conv", ["x", "w"], ["b"])]
    mixed = [helper.make_node("Conv", ["x", "w"], ["a"]), helper.make_node("Mul", ["a", "w"], ["b"])]
    assert repeats(chained, [0, 1]) == 2
    assert repeats(parallel, [0, 1]) == 1 and repeats(mixed, [0, 1]) == 1
    assert merged_calls(Counter(conv=1, stem=1), Counter(conv=2, stem=1)) == {"conv"}
    assert merged_calls(Counter(conv=2), None) == set()


def seeded(path, name: str, out, channel: int = 1, error: float = 1e-3) -> None:
    scaled_onnx_weight(path, out, name, channel, error)


def test_user_named_conv_and_norm_and_a_conv_before_a_dynamic_flatten_are_rerun(models, tmp_path):
    """Before (measured, dynamo ONNX): the Conv under `bn`'s scope (the norm folded into `proj`) found no family
    partner, so its layer had no floor and was listed as not re-run; the conv `c` before a dynamic batch's flatten
    ended its run at the flatten's shape arithmetic (dynamo puts it under `c`'s scope), so `c` was not re-run
    either: `--layers` passed with "1 of ... layers" judged, and a weight error in `c` or `proj` was never named by
    it. After: every module's layer is re-run, and a one-channel error in either is named."""
    code, report, output = export(models, tmp_path, "named", "--format", "onnx")
    assert code == 0, output
    (check,) = report["layers"]
    judged = {layer["module"] for layer in check["layers"]}
    assert {"stem", "act", "proj", "c"} <= judged and not check["skipped"], check
    proj = next(layer for layer in check["layers"] if layer["module"] == "proj")
    assert proj["fused_with"] == ["bn"]
    folder = next(p.parent for p in (tmp_path / "out").rglob("model.onnx"))
    for name, module in (("c.weight", "c"), ("proj.weight", "proj")):
        bad = tmp_path / f"bad_{module}.onnx"
        seeded(folder / "model.onnx", name, bad)
        report_path = tmp_path / f"bad_{module}.json"
        result = invoke("compare", bad, f"{models}:named", *COMMON, "--json", report_path)
        (check,) = json.loads(report_path.read_text())["layers"]
        assert result.exit_code == 1 and check["named"][:1] == [module], check["named"]


def test_a_layer_after_a_module_returning_a_tuple_is_rerun(models, tmp_path):
    """Before (measured): the Linear after nn.MultiheadAttention read attention's output, a call the reference
    records no tensor for, so in the ONNX and .pt2 files it was "not re-run" ("2 not re-run (attn, proj)", one layer
    judged). After: its input is the reference's own recorded input to `proj` (as for a functional op before a
    module), and it is judged. Since hunt 33 attention itself is re-run too (judged on its output, fed through the
    file's own Transpose from the stem's recorded output): nothing is skipped."""
    code, report, output = export(models, tmp_path, "attention", "--format", "onnx", "--format", "pt2", "--static")
    assert code == 0, output
    assert set(checks(report)) == {"model.onnx", "model.pt2"}, report.get("layers")
    for name, check in checks(report).items():
        assert calls(check, "proj") == [0] and calls(check, "attn") == [0], (name, check)
        assert check["skipped"] == [], (name, check)


def test_reduce_claims_nothing_of_a_layer_it_did_not_rerun(models, tmp_path):
    """Before (measured, stop 33): `verify reduce model.onnx user_models.py:attention` on the attention model's
    dynamo ONNX file (`attn` not re-run then) printed "nothing to reduce: no layer differs on its own", exit 0:
    a claim on a layer never compared. Now it says which layers were not re-run, writes no piece, and exits 2 (as it
    does for layers that could not run). Attention fed one tensor is re-run since hunt 33: `flipped` reads three."""
    code, _, output = export(models, tmp_path, "flipped", "--format", "onnx", "--static")
    assert code == 0, output
    folder = next(p.parent for p in (tmp_path / "out").rglob("model.onnx"))
    result = invoke("reduce", folder / "model.onnx", f"{models}:flipped", "--shape", "1x3x32x32",
                    "--out", tmp_path / "piece")
    assert result.exit_code == 2 and "not re-run (attn)" in result.output, result.output
    assert "nothing to reduce" not in result.output and not (tmp_path / "piece" / "piece.onnx").exists()


def test_shape_arithmetic_is_no_layers_value():
    """The nodes that compute only a shape are found, and a data node reading a shape is not one of them."""
    from onnx import helper

    from verify.explain.rerun import shape_nodes

    nodes = [helper.make_node("Conv", ["x", "w"], ["y"]), helper.make_node("Shape", ["y"], ["s"]),
             helper.make_node("Constant", [], ["k"], value=helper.make_tensor("k", 7, [1], [2])),
             helper.make_node("Div", ["s", "k"], ["d"]), helper.make_node("Reshape", ["y", "d"], ["r"])]
    assert shape_nodes(nodes, {"w"}) == {1, 3}
    assert np.isfinite(AUTO_FACTOR)


SHUFFLENET = '''
import torchvision


def make():
    return torchvision.models.shufflenet_v2_x0_5(weights=None)
'''


def test_a_legacy_onnx_files_shared_biases_and_unpaired_conv_names_pass_a_correct_shufflenet(tmp_path):
    """Before (measured): torchvision's shufflenet_v2_x0_5 (not a registered backbone) exported by the legacy ONNX
    exporter: its outputs agree, and `--layers` failed the correct file, "35 of 46 layers of model.onnx differ on
    their own: stage3.4.branch2.2 42x its own floor" (exit 1). The exporter writes an `Identity` of an initializer
    where folded norms' biases are equal; that bias was read as a value from outside every layer, so each folded conv
    was not re-run and the ReLU after it was fed the conv's value without its norm; and `branch2.5` (a conv) was paired
    with `branch2.4` (a norm) by the family name mapping. After: every conv is re-run with its norm, within its
    floor."""
    source = tmp_path / "shuffle.py"
    source.write_text(SHUFFLENET)
    report = tmp_path / "report.json"
    result = invoke("export", "--model", f"{source}:make", *COMMON, "--format", "onnx", "--onnx-exporter",
                    "torchscript", "--out", tmp_path / "out", "--json", report)
    (check,) = json.loads(report.read_text())["layers"]
    assert result.exit_code == 0 and check["passed"] and not check["named"], result.output
    judged = {layer["module"]: layer["fused_with"] for layer in check["layers"]}
    assert judged.get("stage2.0.branch2.5") == ["stage2.0.branch2.6"], judged


def test_reduce_writes_no_piece_of_a_correct_file_with_a_module_called_twice(models, tmp_path):
    """Before (measured): `verify reduce model.onnx user_models.py:twice` on the correct dynamo ONNX file wrote
    piece.onnx and said "reproduces: piece.onnx alone under ONNX Runtime is 4152255x its float32 floor" (exit 1): a
    piece of two convs checked against the first call's value. After: every call is judged alone, nothing differs."""
    code, _, output = export(models, tmp_path, "twice", "--format", "onnx")
    assert code == 0, output
    folder = next(p.parent for p in (tmp_path / "out").rglob("model.onnx"))
    result = invoke("reduce", folder / "model.onnx", f"{models}:twice", "--shape", "1x3x32x32",
                    "--out", tmp_path / "piece")
    assert result.exit_code == 0 and "nothing to reduce" in result.output, result.output
    assert not (tmp_path / "piece" / "piece.onnx").exists()


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_explain_never_names_a_module_called_twice_for_the_layer_after_it(models, tmp_path, exporter):
    """Before (measured): with only `head`'s weight off (one channel, 1e-3), `verify explain model.onnx
    user_models.py:twice_head` named "first divergence: conv (... 2352x its float32 floor)": the graph's one run of
    both conv calls (dynamo; the legacy exporter's `conv_1` was read as `conv` again) was compared with the first
    call's value. After: the legacy file's calls are told apart and `head` is named; in the dynamo file `conv` is not
    compared, and the line says so."""
    code, _, output = export(models, tmp_path, "twice_head", "--format", "onnx", "--onnx-exporter", exporter)
    assert code == 0, output
    folder = next(p.parent for p in (tmp_path / "out").rglob("model.onnx"))
    bad = tmp_path / "bad.onnx"
    seeded(folder / "model.onnx", "head.weight", bad, channel=2)
    report = tmp_path / "explain.json"
    result = invoke("explain", bad, f"{models}:twice_head", "--shape", "1x3x32x32", "--json", report)
    data = json.loads(report.read_text())
    assert result.exit_code == 1 and data["first_divergence"] == "head", result.output
    assert data["divergence"]["uncompared"] == ([] if exporter == "torchscript" else ["conv"])


def test_a_user_models_linear_head_is_judged_on_its_summation_floor(tmp_path):
    """A user's model whose output is a Linear's (10 values): on one input, the float32 floor measured on those few
    values was below what another runtime's summation order gives. Before (hunt 16b): a correct dynamo ONNX export,
    `--samples 1 --seed 0`, "onnxruntime vs eager output0 6.0x floor", 4 of 10 pairs disagree, exit 1. Now each output
    a Linear computes directly is judged on at least that Linear's summation floor (verify/judge/summation.py
    summed_outputs, the layer verdict's rule), the exported files' own floors (guard 3) lifted the same; an export
    whose head is off by ONE_CHANNEL_ERROR in one output's weights still fails."""
    import onnx
    from onnx import numpy_helper

    source = tmp_path / "head.py"
    source.write_text(HEAD_MODEL)
    report = tmp_path / "r.json"
    result = invoke("export", "--model", f"{source}:make", "--shape", "1x3x32x32", "--samples", "1", "--seed", "0",
                    "--static", "--out", tmp_path / "out", "--no-cache", "--json", report)  # a Linear: 32x32 only
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["passed"]

    folder = tmp_path / "out" / "head-make"
    model = onnx.load(str(folder / "model.onnx"))
    weight = next(t for t in model.graph.initializer if 10 in numpy_helper.to_array(t).shape
                  and numpy_helper.to_array(t).ndim == 2)  # the head's (10, 256), or transposed for a MatMul
    edited = numpy_helper.to_array(weight).copy()
    (edited[3] if edited.shape[0] == 10 else edited[:, 3])[...] *= np.float32(1 + ONE_CHANNEL_ERROR)
    weight.CopyFrom(numpy_helper.from_array(edited, weight.name))
    onnx.save(model, str(tmp_path / "bad.onnx"))
    result = invoke("compare", tmp_path / "bad.onnx", f"{source}:make", "--shape", "1x3x32x32", "--samples", "1",
                    "--seed", "0")
    assert result.exit_code == 1, result.output


def test_summation_floors_lift_only_outputs_a_linear_computes_directly():
    """The bound applies to an output that is a Linear's own result, never to one computed after it (a bias added, a
    softmax): those are other functions, whose rounding the Linear's bound does not describe."""
    import torch

    from exporter.artifacts import ArtifactMeta
    from verify.judge.summation import summation_floor, summed_outputs

    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(8, 4)

        def forward(self, x):
            y = self.fc(x.flatten(1))
            return {"logits": y, "shifted": y + 1}

    class Built:
        spec = type("Spec", (), {"registered": False})()
        model = Two().eval()

    artifact = type("A", (), {"built": Built, "meta": ArtifactMeta(output_names=["logits", "shifted"])})()
    x = np.random.default_rng(0).standard_normal((1, 2, 2, 2)).astype(np.float32)
    bounds = summed_outputs(artifact, {"input": x})
    assert set(bounds) == {"logits"}
    assert bounds["logits"] == summation_floor(Built.model.fc, torch.from_numpy(x).flatten(1).double())
