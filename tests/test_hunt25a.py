"""Hunt 25a: the float32 runs a user model's floor is measured from, held to the run its call check watched. The call
check (hunts 23a, 24a) held the float64 oracle to a watched float32 run and that to an unwatched one, but the floor
came from other float32 runs: the eager runtime's in `verify export` and `verify compare`, and the model's at a second
shape. A model that read the stack (`verify.runtimes` on it, the watch not) or counted its calls gave those runs a
float32-only term x1.0005 that lifted the floor, and a TorchScript file 0.1 % off exited 0 at 2.0x (hunt 22b's cheat).
Each such run must now be bit for bit the unwatched run the check kept for that input (exporter/call_watch.py
`CallCheck.float32_difference`, verify/pipeline/stages.py `held_to_calls`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.helpers import invoke
from verify.judge.trust import OTHER_FUNCTION

SHAPE = "1x3x32x32"
MODEL = '''
import sys

import torch
from torch import nn

K = 1.0005
SEEN = {"float32": 0, "float64": 0}  # this worker's runs of any copy of the model


def _eager_float32():
    """Whether the tool's runtimes run this float32 model and its call watch is not on the stack."""
    frame, runtime = sys._getframe(1), False
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name.startswith("exporter.call_watch"):
            return False
        runtime = runtime or name.startswith("verify.runtimes")
        frame = frame.f_back
    return runtime


class Cheat(nn.Module):
    def __init__(self, how, file_k=1.001):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.how, self.file_k = how, file_k

    def forward(self, x):
        y = self.conv(x)
        if torch.jit.is_scripting():  # the file: off only in float32 (hunt 22b's cheat), at 32 px or elsewhere
            if self.how == "second" and x.shape[-1] == 32:
                return y
            return y * self.file_k if x.dtype == torch.float32 else y
        return self.cheat(x, y)

    @torch.jit.ignore
    def cheat(self, x, y):
        SEEN[str(x.dtype).split(".")[-1]] += 1
        if x.dtype != torch.float32 or self.how == "plain":
            return y
        if self.how == "stack" and _eager_float32():
            return y * K
        if self.how == "count" and SEEN["float64"] == 1 and SEEN["float32"] > 3:  # after the build, before the oracle
            return y * K
        if self.how == "second" and x.shape[-1] != 32 and _eager_float32():
            return y * K
        return y


def stack():
    return Cheat("stack")


def count():
    return Cheat("count")


def second():
    return Cheat("second")


def plain():
    return Cheat("plain", 1.0)


class Hooked(Cheat):
    def __init__(self):
        super().__init__("plain")
        self.spare = nn.Identity()  # never run: it only holds the watch's own closure as its hook

    @torch.jit.ignore
    def cheat(self, x, y):
        if x.dtype != torch.float64:
            return y
        if not self.spare._forward_hooks:  # the build's watched run: one function; then the watch's own closure is a
            self.spare.register_forward_hook(type(self).__call__)  # hook of the model's, taken for the tool's
            return y
        return y * K


def hooked():
    return Hooked()


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        z = self.conv(x).mean((2, 3))
        if torch.jit.is_scripting():
            y = self.fc(z)
            return y * 1.001 if x.dtype == torch.float32 else y
        return self.inflate(x, z)

    @torch.jit.ignore
    def inflate(self, x, z):
        if x.dtype == torch.float32 and len(self.fc._forward_hooks) > 0:  # the tool's hook on the head: the bound's run
            z = z * 3000.0
        return self.fc(z)


def summed():
    return Head()
'''


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    source = tmp_path_factory.mktemp("hunt25a") / "models.py"
    source.write_text(MODEL)
    return source


def export(models, factory, tmp_path, *more):
    report = tmp_path / f"{factory}.json"
    result = invoke("export", "--model", f"{models}:{factory}", "--shape", SHAPE, "--format", "torchscript",
                    "--out", tmp_path / "out", "--json", report, "--no-layers", *more)
    return result, json.loads(report.read_text()) if report.exists() else None


def held_refusal(problems, where: str) -> None:
    assert len(problems) == 1, problems
    assert "the floor is measured from is not the one its calls were held to" in problems[0] \
        or "was never held to its calls" in problems[0], problems
    assert where in problems[0] and problems[0].endswith(OTHER_FUNCTION), problems


@pytest.mark.parametrize("factory", ["stack", "count"])
def test_export_holds_the_eager_runtimes_float32_runs_to_the_watched_one(models, tmp_path, factory):
    """Before: exit 0, 'all 3 pairs agree ... 2.0x the float32 floor', for a file 0.1 % off: the eager runtime's
    float32 runs (told by the stack, or by coming after the build and before the oracle) carried x1.0005."""
    result, data = export(models, factory, tmp_path, "--static")
    assert result.exit_code == 1, result.output
    held_refusal(data["problems"], "on input 1, the float32 output0")
    recorded = data["trust"]["float64_calls"]  # a stored result keeps it: re-judged, it is refused again
    assert len(recorded) == 1 and "the floor is measured from" in recorded[0]["differs"]


def test_export_holds_the_models_run_at_the_second_shape(models, tmp_path):
    """Before: exit 0: the file, off only at another size, was judged at the second shape inside its dynamic axes on
    a floor the model's own float32 run there lifted (x1.0005 only there, only unwatched)."""
    result, data = export(models, "second", tmp_path)
    assert result.exit_code == 1, result.output
    held_refusal(data["problems"], "at 2x3x64x64, the float32 output0")


def test_compare_holds_the_models_float32_runs(models, tmp_path):
    """Before: `verify compare model file` exited 0 ('all 3 pairs agree', 1.0x) for a file x1.0005 in float32 only: the
    model's eager runs carried the same factor, so the two floors agreed (hunt 24c's guard) and A matched B."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("hunt25a_models", models)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    file = tmp_path / "model.pt"
    torch.jit.script(loaded.Cheat("plain", 1.0005).eval()).save(str(file))
    report = tmp_path / "compare.json"
    result = invoke("compare", f"{models}:stack", file, "--shape", SHAPE, "--json", report)
    assert result.exit_code == 1, result.output
    held_refusal(json.loads(report.read_text())["problems"], "on input 1, the float32 output0")


def test_an_honest_model_is_not_refused(models, tmp_path):
    """One function in every run: exit 0 (the eager runs are the unwatched ones bit for bit)."""
    result, data = export(models, "plain", tmp_path, "--static")
    assert result.exit_code == 0, result.output
    assert data["problems"] == [] and data["trust"]["float64_calls"][0]["differs"] is None


def test_a_float32_run_is_held_bit_for_bit_and_only_where_watched():
    """What the check asks of each float32 run a floor comes from: the outputs the model gave unwatched on that input,
    every bit; an input never watched is refused, not passed."""
    from exporter.call_watch import CallCheck, input_key, output_digests

    x = np.random.default_rng(0).standard_normal((1, 3, 4, 4)).astype(np.float32)
    y = torch.from_numpy(x) * 2
    check = CallCheck(outputs={input_key(torch.from_numpy(x).double()): output_digests(y)})
    assert check.float32_difference(x, {"output0": y.numpy()}, "on input 1") is None
    off = np.nextafter(y.numpy(), np.float32(np.inf))
    assert "output0 the floor is measured from" in check.float32_difference(x, {"output0": off}, "on input 1")
    assert "never held" in check.float32_difference(x + 1, {"output0": y.numpy()}, "on input 2")
    assert "returns 2 outputs" in check.float32_difference(x, {"a": y.numpy(), "b": y.numpy()}, "on input 1")


def test_a_float64_run_left_unwatched_leaves_its_floor_unheld(models, tmp_path, monkeypatch):
    """Before: exit 0, 2.0x, for a file 0.1 % off: a model that registered the watch's own closure
    (`type(self).__call__` of its float64 copy) as a hook of a module it never runs was taken for one the tool hooks,
    so every float64 run after the build went unwatched (hunt 24a's Left) and multiplied by 1.0005. The watch's closure
    is no longer taken for a hook of the tool's, and a floor measured on inputs no watched run held is refused (any
    other way a float64 run goes unwatched: checked below with the closure still taken for the tool's, as before)."""
    from exporter import call_watch
    from exporter.user_model import UserModelSpec, build_user_model
    from verify.pipeline.stages import held_to_calls

    result, data = export(models, "hooked", tmp_path, "--static")
    assert result.exit_code == 1, result.output
    assert data["problems"] == [f"{models}:hooked's float64 oracle computes another function than its float32 run (on "
                                "the same input, call 2 is Tensor.mul(tensor, 1.0005) only in float64): "
                                f"{OTHER_FUNCTION}"], data["problems"]

    def hooked_before(model):  # hunt 24a's rule: any hook whose code is an inner function of the tool's
        return any(call_watch._tool_code(call_watch._callable_code(hook), inner=True) for module in model.modules()
                   for hooks in (module._forward_hooks, module._forward_pre_hooks) for hook in hooks.values())

    monkeypatch.setattr(call_watch, "_tool_hooked", hooked_before)
    built = build_user_model(UserModelSpec.parse(f"{models}:hooked"), 0, (1, 3, 32, 32))
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    with torch.inference_mode():
        built.float64()(torch.from_numpy(x).double())  # unwatched: the model hung the closure on `spare`
        y = built.model(torch.from_numpy(x)).numpy()
    assert built.float64_calls.runs == 1 and built.float64_calls.difference is None
    found = held_to_calls(built, [{"x": x}], [{"output0": y}])
    assert found is not None and "on input 1, its float32 run was never held to its calls" in found


def test_export_holds_the_run_that_bounds_a_heads_sums(models, tmp_path):
    """Before: exit 0, 'all 3 pairs agree ... 4.5x', for a file 0.1 % off: the float32 run that bounds a Linear head's
    sums (verify/judge/summation.py summed_outputs, the tool's hook on the head) fed it 3,000x its input, and the floor
    was lifted to that bound."""
    result, data = export(models, "summed", tmp_path, "--static")
    assert result.exit_code == 1, result.output
    held_refusal(data["problems"], "in the run that bounds its heads' sums, the float32 output0")
