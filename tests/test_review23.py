"""Review 23: stop 38's newest verdict paths, by an attacker and a user.

- `verify explain` took hunt 26b's float32-floor path (a saved file's float64 run within CONSTANT_ROUNDING_RTOL of its
  model's) where one output's float64 difference was NaN: `max()` kept the other output's 5e-7, exit 0.
- Hunt 26b's rule let a traced file whose constant was 2^-21 relative off (six float32 ulps, a real edit) pass at
  3.2x the floor: the two float64 runs must now also differ by no more than CONSTANT_ROUNDING_FLOOR float32 floors.
- `verify artifact --rebuild`'s default layer verdict is best effort: an unsigned folder's ONNX file with a one-channel
  error its outputs let pass and its module scopes stripped was a skipped note, exit 0. An unsigned folder's file whose
  layers cannot be re-run now fails; a signed folder's is a note, named by its file (it was named by the note's first
  words: "layer verdict not reached (run by default; --layers requires it): layers")."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from tests.helpers import ONE_CHANNEL_ERROR, invoke, linked_copy, onnx_only, rehash, rewrite, scaled_onnx_channel
from verify.cli import app
from verify.explain.localize import CONSTANT_ROUNDING_RTOL, EQUIVALENCE_RTOL

NAN_MODEL = '''
import torch
from torch import nn


class Two(nn.Module):
    def __init__(self, scale: float, nan: bool):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.scale = scale
        self.nan = nan

    def forward(self, x):
        y = self.conv(x)
        w = y * 2.0
        if self.nan and x.dtype == torch.float64:  # one element of output1 NaN, in the float64 run only
            w = torch.where(torch.arange(w.numel()).reshape(w.shape) == 5, torch.full_like(w, float("nan")), w)
        return y * self.scale, w


def good():
    torch.manual_seed(0)
    return Two(0.1, False).eval()


def bad():
    torch.manual_seed(0)
    return Two(0.1 * (1 + 2 ** -22), True).eval()


class Const(nn.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.scale = scale

    def forward(self, x):
        return self.conv(x) * x.new_tensor(self.scale)


def const():
    torch.manual_seed(0)
    return Const(0.1).eval()


def edited():
    torch.manual_seed(0)
    return Const(0.1 * (1 + 2 ** -21)).eval()
'''


@pytest.fixture
def models(tmp_path):
    import importlib.util

    path = tmp_path / "m.py"
    path.write_text(NAN_MODEL)
    spec = importlib.util.spec_from_file_location("review23_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return path, module


def _explain(tmp_path, a: str, b: str) -> tuple[int, dict, str]:
    report = tmp_path / "e.json"
    result = CliRunner().invoke(app, ["explain", a, b, "--shape", "1x3x32x32", "--json", str(report)])
    return result.exit_code, json.loads(report.read_text()) if report.exists() else {}, result.output


def test_worst_float64_difference_is_infinite_with_a_nan():
    from verify.explain.equivalence import worst_difference

    half = CONSTANT_ROUNDING_RTOL / 2
    assert worst_difference({"a": {"max_rel": half}, "b": {"max_rel": float("nan")}}) == float("inf")
    assert worst_difference({"a": {"max_rel": float("nan")}, "b": {"max_rel": half}}) == float("inf")
    assert worst_difference({"a": {"max_rel": half}, "b": {"max_rel": EQUIVALENCE_RTOL}}) == half


def test_explain_a_nan_float64_output_is_not_float32_rounding(models, tmp_path):
    """B (scripted) is A with its output0 constant 2^-22 relative off and one element of output1 NaN in its float64
    run only: the NaN beside a difference inside CONSTANT_ROUNDING_RTOL made explain judge on the float32 floor and say
    "equivalent within float32 rounding", exit 0. A float64 run with a NaN the other lacks is another function."""
    import warnings

    path, module = models
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(module.bad()).save(str(tmp_path / "bad.pt"))
    code, found, output = _explain(tmp_path, f"{path}:good", str(tmp_path / "bad.pt"))
    assert code == 1, output
    assert found.get("how") == "float64" and found.get("float64_note") is None, found


def test_explain_a_constant_edited_beyond_its_rounding_is_another_function(models, tmp_path):
    """A trace of the model with its constant 0.1 x (1 + 2^-21): 4.6e-7 relative in float64, inside
    CONSTANT_ROUNDING_RTOL, and 3.2x the floor in float32, so it was "equivalent within float32 rounding", exit 0. Its
    float64 runs differ by about 3 float32 floors, where the constant's own rounding (the model traced) moves 0.1."""
    import warnings

    path, module = models
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("const", "edited"):
            torch.jit.trace(getattr(module, name)(), torch.randn(1, 3, 32, 32)).save(str(tmp_path / f"{name}.pt"))
    code, found, output = _explain(tmp_path, f"{path}:const", str(tmp_path / "edited.pt"))
    assert EQUIVALENCE_RTOL < found["float64_difference"]["output0"]["max_rel"] <= CONSTANT_ROUNDING_RTOL
    assert code == 1 and found["how"] == "float64" and found["float64_note"] is None, output
    from verify.explain.localize import CONSTANT_ROUNDING_FLOOR

    code, found, output = _explain(tmp_path, f"{path}:const", str(tmp_path / "const.pt"))  # its own trace still is
    assert code == 0 and found["how"] == "float32-floor", output
    assert f"{CONSTANT_ROUNDING_FLOOR:g}x" in found["float64_note"]


@pytest.fixture
def stripped(default_export, tmp_path, monkeypatch):
    """The suite's unsigned default folder, its ONNX file with one channel of CULPRIT_LAYER off by 1e-5 (its outputs
    agree: tests/test_layers.py BELOW_ROUNDING) and every node's module scopes removed, rehashed into the manifest."""
    import onnx

    from verify.judge.layers import LAYERS_ENV

    monkeypatch.delenv(LAYERS_ENV, raising=False)  # the layer verdict on by default, as outside the suite
    folder = linked_copy(default_export, tmp_path)
    scaled_onnx_channel(default_export / "model.onnx", tmp_path / "bad.onnx", ONE_CHANNEL_ERROR / 100)
    model = onnx.load(str(tmp_path / "bad.onnx"))
    for node in model.graph.node:
        kept = [p for p in node.metadata_props if p.key not in ("pkg.torch.onnx.name_scopes", "namespace")]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
        if node.name.startswith("/"):  # the legacy exporter's scoped names
            node.name = node.name.rsplit("/", 1)[-1]
    onnx.save(model, str(tmp_path / "bad.onnx"))
    rewrite(folder / "model.onnx", (tmp_path / "bad.onnx").read_bytes())
    rehash(folder, "model.onnx")
    return onnx_only(folder)


def test_unsigned_folder_file_with_no_layer_re_run_fails_by_default(stripped, tmp_path):
    """Before: the ONNX file's layer check was a skipped note ("no candidate layer maps back to a reference module"),
    its outputs agreed, exit 0. The folder is unsigned: a file whose layers this run cannot re-run fails."""
    result = invoke("artifact", stripped, "--rebuild", "--json", tmp_path / "a.json")
    assert result.exit_code == 1, result.output
    from verify.folder.layers import UNSIGNED_UNREACHED

    found = {c["name"]: c for c in json.loads((tmp_path / "a.json").read_text())["checks"]}
    layers = found["model.onnx: layers"]
    assert not layers["passed"] and not layers.get("skipped") and UNSIGNED_UNREACHED in layers["message"]
    assert all(c["passed"] for name, c in found.items() if name != "model.onnx: layers"), "outputs let it pass"


def _isolation(candidate: str, layers: bool):
    from verify.judge.layers import Isolation, LayerError

    check = Isolation("model", candidate, 5.0, note="" if layers else "no candidate layer maps back")
    if layers:  # re-run, within its floor, but one layer could not run alone
        check.layers = [LayerError("conv", 0, 1.0, 1e-7, 1e-7)]
        check.unrunnable = ["other"]
    return check


@pytest.mark.parametrize("signed", [True, False])
def test_default_layer_verdict_names_each_file(signed):
    """A signed folder: each file the default verdict could not judge is a skipped check `<file>: layers` (it was named
    `layer verdict not reached (run by default; --layers requires it): layers`, or `isolated: layers`). Unsigned: each
    is a failed check, saying why."""
    from verify.folder.checks import CheckReport
    from verify.folder.layers import UNSIGNED_UNREACHED, add_layer_checks, folder_best_effort

    art = SimpleNamespace(signature_verified=signed)
    checks, notes = folder_best_effort(art, [_isolation("model.onnx", False), _isolation("model.pt2", True)])
    report = CheckReport("artifact")
    add_layer_checks("folder", report, checks, notes, asked=False)
    assert [(c.name, c.passed, c.skipped) for c in report.checks] == [
        ("model.onnx: layers", signed, signed), ("model.pt2: layers", signed, signed)]
    assert all((UNSIGNED_UNREACHED in c.message) != signed for c in report.checks)


SUBNORMAL_MODEL = '''
import torch
from torch import nn


class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


class Subnormal(Plain):
    """Channel 3 times a number created in float32: 1e-42 is a subnormal there, 1.0005e-42, so the factor is 1.0005
    in a float32 run and 1.0 where the creation is made in float64."""

    def forward(self, x):
        factor = torch.full((1, 1, 1, 1), 1e-42, dtype=torch.float32) * 1e21 * 1e21
        mask = torch.zeros((1, 8, 1, 1), dtype=torch.float32)
        mask[:, 3] = 1.0
        return self.conv(x) * (1.0 + mask * (factor - 1.0))


def plain():
    torch.manual_seed(0)
    return Plain().eval()


def subnormal():
    torch.manual_seed(0)
    return Subnormal().eval()
'''


def test_a_pt2_creation_keeps_its_float32_values_in_the_float64_run(tmp_path):
    """Hunt 26b made a .pt2's float32 creations in float64, values and all: a subnormal constant then scaled one channel
    by 1.0005 in the float32 run only, the file's own floor took it in, and `verify compare file.pt2 correct.onnx`
    agreed at 1.0x, exit 0. Each creation is now made as traced and cast to float64: the float64 run computes on the
    float32 run's values."""
    import importlib.util
    import warnings

    from verify.runtimes.torch_common import created_in_float64

    path = tmp_path / "m.py"
    path.write_text(SUBNORMAL_MODEL)
    spec = importlib.util.spec_from_file_location("review23_subnormal", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    x = torch.randn(1, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(module.subnormal(), (x,)), str(tmp_path / "sub.pt2"))
        torch.onnx.export(module.plain(), (x,), str(tmp_path / "plain.onnx"), input_names=["input"],
                          output_names=["output0"], dynamo=False)
    loaded = torch.export.load(str(tmp_path / "sub.pt2")).module()
    float32 = loaded(x)[0, 3] / module.plain()(x)[0, 3]
    double = loaded.double()
    assert created_in_float64(double) == 2  # the full and the zeros
    float64 = double(x.double())[0, 3] / module.plain().double()(x.double())[0, 3]
    assert abs(float(float32.mean()) - float(float64.mean())) < 1e-6 and float(float64.mean()) > 1 + 1e-4
    result = invoke("compare", tmp_path / "sub.pt2", tmp_path / "plain.onnx", "--shape", "1x3x32x32",
                    "--samples", "1")
    assert result.exit_code == 1, result.output


BATCH_BRANCH = '''
import torch
from torch import nn


class Branch(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y * 2 if x.shape[0] == 1 else y


def make():
    torch.manual_seed(0)
    return Branch().eval()
'''


def test_an_example_of_batch_two_is_judged_at_batch_one_as_its_record_claims():
    """Review 23: torch.export's least batch (2) is read as 1, and the second shape was batch + 1, so no run saw the
    batch every deployment starts with."""
    from exporter.artifacts import LEAST_DYNAMIC_SIZE
    from verify.inputs import second_shape

    axes = {"0": "batch", "2": "height", "3": "width"}
    assert second_shape((2, 3, 32, 32), axes, {"0": [LEAST_DYNAMIC_SIZE, None]}) == (1, 3, 64, 64)
    assert second_shape((1, 3, 32, 32), axes) == (2, 3, 64, 64)  # batch 1 itself: another batch, as before
    bounded = LEAST_DYNAMIC_SIZE + 1  # a least the file bounds itself is not torch's: batch 1 is not claimed
    assert second_shape((bounded + 1, 3, 32, 32), axes, {"0": [bounded, None]}) == (bounded + 2, 3, 64, 64)


def test_a_model_branching_on_batch_one_exported_at_batch_two_fails_there(tmp_path):
    """Before: exported at --shape 2x3x32x32, its .pt2 (traced at 2) computed the other branch at batch 1 and the
    export exited 0, the batch recorded as dynamic; now the file is judged at batch 1 and the batch is named."""
    (tmp_path / "branch.py").write_text(BATCH_BRANCH)
    result = invoke("export", "--model", f"{tmp_path / 'branch.py'}:make", "--shape", "2x3x32x32", "--format", "pt2",
                    "--out", tmp_path / "out", "--no-cache")
    assert result.exit_code == 1, result.output
    assert "at 1x3x64x64, inside the dynamic axes it declares" in result.output
    assert "its batch does not hold" in " ".join(result.output.split())
