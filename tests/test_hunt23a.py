"""Hunt 23a: a user's model whose float64 oracle computes another function than its float32 run. Hunt 22b's model
multiplies by 1.0005 only where x.dtype is float64 (and its TorchScript file by 1.001 only in float32): the float64-only
term lifted the model's floor and the file's own (guard 3) alike, and `verify export --format torchscript` exited 0 for
a file 0.1 % off (6,800x the conv's real floor). Every run of the float64 oracle is now held to the torch calls of a
float32 run of the same input (exporter/user_model.py `watch_float64`, verify/judge/trust.py `function_problems`)."""

from __future__ import annotations

import json

import pytest
import torch

from exporter.user_model import UserModelSpec, build_user_model
from tests.helpers import invoke
from verify.judge.trust import OTHER_FUNCTION, evidence_problems, function_problems, function_record

SHAPE = (1, 3, 32, 32)
MODELS = '''
import torch
import torch.nn.functional as F
from torch import nn


class Conv(nn.Module):
    def __init__(self, how="plain"):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.register_buffer("one", torch.ones(1))
        self.register_buffer("off", torch.full((1,), 1.0005))
        self.how, self.calls = how, 0

    def forward(self, x):
        self.calls += 1
        y = self.conv(x)
        if self.how == "branch" and x.dtype == torch.float64:  # hunt 22b's model
            y = y * 1.0005
        if self.how == "branch" and torch.jit.is_scripting() and x.dtype == torch.float32:
            y = y * 1.001
        if self.how == "constant":
            y = y * (1.0005 if x.dtype == torch.float64 else 1.0)
        if self.how == "buffer":
            y = y * (self.off if x.dtype == torch.float64 else self.one)
        if self.how == "later" and x.dtype == torch.float64 and self.calls > 3:  # after the build's runs
            y = y * 1.0005
        if self.how == "float32" and x.dtype == torch.float32:
            y = y * 1.0005
        return y


class OwnCall(Conv):
    def __call__(self, x):
        y = super().__call__(x)
        return y * 1.0005 if x.dtype == torch.float64 else y


class Hooks(Conv):
    def forward(self, x):
        if x.dtype == torch.float64:  # a hook that runs once, after the module's other hooks
            handle = []
            handle.append(self.register_forward_hook(lambda module, args, y: (handle[0].remove(), y * 1.0005)[1]))
        return self.conv(x)


class Attention(nn.Module):
    """What runs other kernels in float32 than in float64 and is one function: fast paths, finfo masking, casts."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.patch = nn.Conv2d(3, 16, 8, 8)
        self.mha = nn.MultiheadAttention(16, 2, batch_first=True)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.qkv = nn.Linear(16, 48)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = t + self.mha(t, t, t, need_weights=False)[0]
        q, k, v = self.qkv(self.encoder(t)).chunk(3, -1)
        s = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
        keep = torch.ones(s.shape[-2:], dtype=torch.bool).tril()
        s = s.masked_fill(~keep, torch.finfo(s.dtype).min)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True) + s.softmax(-1) @ v
        o = torch.softmax(o.float(), -1).to(o.dtype) / o.abs().amax().item()
        return o * 2 if o.mean() > 0 else o


def make(how="plain"):
    return Conv(how)


def branch():
    return Conv("branch")


def constant():
    return Conv("constant")


def buffer():
    return Conv("buffer")


def later():
    return Conv("later")


def float32():
    return Conv("float32")


def own_call():
    return OwnCall()


def hooks():
    return Hooks()


def attention():
    return Attention()
'''


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    source = tmp_path_factory.mktemp("hunt23a") / "models.py"
    source.write_text(MODELS)
    return source


def built_and_run(source, factory: str, runs: int = 3):
    """The user model built as every command builds it, and its float64 oracle run on `runs` more inputs."""
    built = build_user_model(UserModelSpec.parse(f"{source}:{factory}"), 0, SHAPE)
    model64 = built.float64()
    with torch.inference_mode():
        for seed in range(1, runs + 1):
            model64(torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed)).double())
    return built


@pytest.mark.parametrize(("factory", "found"), [
    ("branch", "call 2 is Tensor.mul(tensor, 1.0005) only in float64"),
    ("constant", "call 2 is Tensor.mul(tensor, 1.0005) in float64, Tensor.mul(tensor, 1.0) in float32"),
    ("buffer", "call 2 is Tensor.mul(tensor, tensor off) in float64, Tensor.mul(tensor, tensor one) in float32"),
    ("later", "call 2 is Tensor.mul(tensor, 1.0005) only in float64"),
    ("float32", "call 2 is Tensor.mul(tensor, 1.0005) only in float32"),
    ("own_call", "call 2 is Tensor.mul(tensor, 1.0005) only in float64"),
    ("hooks", "call 2 is Tensor.mul(tensor, 1.0005) only in float64"),
])
def test_an_oracle_that_calls_other_functions_than_the_float32_run_is_found(models, factory, found):
    """Before: nothing compared what the two precisions compute; a term in float64 only (or other numbers, another
    buffer, only from the oracle's third run on, in a `__call__` of the model's own or in a hook it adds while it runs)
    lifted the floor under the floor bound. `later` passes the build's own float64 run and is found on the oracle's."""
    built = built_and_run(models, factory)
    assert built.float64_calls.difference == f"on the same input, {found}"
    problems = function_problems(function_record(built))
    assert len(problems) == 1 and problems[0].endswith(OTHER_FUNCTION) and found in problems[0]


@pytest.mark.parametrize("factory", ["make", "attention"])
def test_one_function_in_both_precisions_is_not_refused(models, factory):
    """MultiheadAttention, TransformerEncoder and SDPA (fast paths that differ by dtype below the Python level),
    `torch.finfo(s.dtype).min` masking, a float32 cast, a value read with .item() and a branch on the data: the
    same calls in both precisions on every input."""
    built = built_and_run(models, factory)
    assert built.float64_calls.runs == 4 and built.float64_calls.difference is None
    assert function_problems(function_record(built)) == []


def test_torchvision_models_are_not_refused():
    """A user's torchvision model, as tests/test_sweep21c.py writes them: the same calls in both precisions."""
    from exporter.user_model import ModuleSpec

    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    for module in (torchvision.models.mobilenet_v3_small(num_classes=10),
                   torchvision.models.efficientnet_b0(num_classes=10)):
        built = build_user_model(ModuleSpec.of(module), 0, SHAPE)
        with torch.inference_mode():
            built.float64()(torch.rand(SHAPE, generator=torch.Generator().manual_seed(1)).double())
        assert built.float64_calls.runs == 2 and built.float64_calls.difference is None


def trust_record(calls) -> dict:
    """A stored result's trust evidence that passes every other guard, with `calls` as its float64 call check."""
    return {"device": "cpu", "computes_in": "fp32", "k": 100, "mode": "auto",
            "inputs": [{"output0": {"floor": 1e-7, "precision": "fp32", "scale": 1.0}}],
            "repeats": [{"label": "eager", "differences": {"output0": 0.0}, "mutated": []}], "float64_calls": calls}


def test_a_stored_result_is_re_judged_on_its_float64_call_check():
    """The check is evidence a stored result keeps (the matrix re-judges from it): a recorded difference is refused,
    a malformed record is no evidence, and a clean one passes."""
    differs = [{"model": "m.py:make", "runs": 9, "differs": "on the same input, call 2 is mul(tensor) only in float64"}]
    assert evidence_problems(trust_record(differs)) == function_problems(differs) != []
    assert evidence_problems(trust_record([{"model": "m.py:make", "runs": 9, "differs": None}])) == []
    for bad in ([{"model": "m.py:make", "runs": -1, "differs": None}], [{"runs": 1}], {"differs": 1}, 3):
        assert evidence_problems(trust_record(bad))[0].startswith("no usable float64 call evidence"), bad
    assert evidence_problems({**trust_record([]), "mode": "rtol"}) == []
    never = evidence_problems(trust_record([{"model": "m.py:make", "runs": 0, "differs": None}]))
    assert len(never) == 1 and "never held to its float32 run's calls" in never[0], "a check that never ran passes none"


def test_export_refuses_hunt_22bs_model_and_an_explicit_tolerance_judges_it(models, tmp_path):
    """Before: `verify export --format torchscript` exited 0, '2.0x the floor', for a file 0.1 % off. Now not judged
    on the floor (no folder), and judged with --rtol/--atol as every guard on the floor leaves it."""
    out, report = tmp_path / "out", tmp_path / "r.json"
    result = invoke("export", "--model", f"{models}:branch", "--shape", "1x3x32x32", "--format", "torchscript",
                    "--out", out, "--json", report, "--no-layers", "--static")
    assert result.exit_code == 1, result.output
    problems = json.loads(report.read_text())["problems"]
    assert len(problems) == 1 and "float64 oracle computes another function" in problems[0], problems
    assert not out.exists()
    result = invoke("export", "--model", f"{models}:branch", "--shape", "1x3x32x32", "--format", "torchscript",
                    "--out", out, "--rtol", "0.01", "--atol", "1e-4", "--no-layers", "--static")
    assert result.exit_code == 0, result.output


def test_compare_refuses_a_model_whose_oracle_is_another_function(models):
    result = invoke("compare", f"{models}:later", f"{models}:make", "--shape", "1x3x32x32")
    assert result.exit_code == 1, result.output
    assert "float64 oracle computes another function" in result.output
