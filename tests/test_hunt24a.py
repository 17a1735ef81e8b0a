"""Hunt 24a: the call-log guard of users' models (hunt 23a, review 20), attacked where review 20 left it. A float64-only
factor 1.0005 passed it (exit 0 with a TorchScript file 0.1 % off, as in hunt 22b) when it ran in code under a tool
module's name (`exec` with `__name__ = "verify.x"`, a hook whose `__module__` says `verify.`), when it was a constant
made outside the function mode (`torch.from_numpy`, `torch.frombuffer`, a NumPy round trip or scalar, a tensor kept
outside the model's modules, a buffer a module's own `_apply` moves), when it was written through a NumPy view, and
when the model tested for the watch (`torch._C._is_torch_function_mode_enabled()`) and made its watched float32 run
copy the float64 calls. Tool code is now told by its code objects, constants by their values, and the float32 model
run unwatched must give the watched run's outputs (exporter/user_model.py `_tool_code`, `_constant`, `_Shared`,
`_state_difference`, `_unwatched_difference`)."""

from __future__ import annotations

import json

import pytest
import torch

from exporter.user_model import UserModelSpec, build_user_model
from tests.helpers import invoke
from verify.judge.trust import OTHER_FUNCTION, function_problems, function_record

SHAPE = (1, 3, 32, 32)
MODELS = '''
import struct
import types

import numpy as np
import torch
from torch import nn

K = 1.0005
SAME = torch.from_numpy(np.array(2.0))  # a constant made at import, outside any watched call: the same in both runs


def _hook(module, args, y):
    return y * K if y.dtype == torch.float64 else y


_hook.__module__ = "verify.judge.oracle"  # named as the tool's: the guard took it for one of its hooks
SPOOFED = {"__name__": "verify.judge.oracle", "torch": torch, "K": K}
exec("def scale(y):\\n    return y * K if y.dtype == torch.float64 else y\\n", SPOOFED)


class Cheat(nn.Module):
    def __init__(self, how):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.how, self.calls = how, 0
        self.box = types.SimpleNamespace(k=torch.tensor(1.0), k64=torch.tensor(K))  # outside the model's modules
        self.register_buffer("w", torch.ones(1))

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        if self.how == "apply" and self.w.dtype == torch.float64:
            self.w.fill_(K)
        return out

    def forward(self, x):
        y = self.conv(x)
        if torch.jit.is_scripting():  # the file: 0.1 % off, only in float32 (hunt 22b's cheat)
            return y * 1.001 if x.dtype == torch.float32 else y
        return self.cheat(x, y)

    @torch.jit.ignore
    def cheat(self, x, y):
        self.calls += 1
        f64, how = x.dtype == torch.float64, self.how
        if how == "exec":
            return SPOOFED["scale"](y)
        if how == "hook" and self.calls == 2:  # after the build's own watched float64 run
            self.register_forward_hook(_hook)
        if how == "from_numpy":
            return y * torch.from_numpy(np.array(K if f64 else 1.0))
        if how == "as_tensor":
            return y * torch.as_tensor(np.array(K if f64 else 1.0))
        if how == "numpy_trip":
            return torch.from_numpy(y.numpy() * (K if f64 else 1.0))
        if how == "frombuffer":
            return y * torch.frombuffer(bytearray(struct.pack("d", K if f64 else 1.0)), dtype=torch.float64)
        if how == "namespace":
            return y * (self.box.k64 if f64 else self.box.k)
        if how == "np_scalar":
            return y * np.float32(K if f64 else 1.0)
        if how == "numpy_view":
            y = y.clone()
            if f64:
                y.numpy()[...] *= K
            return y * 1.0
        if how == "weight_view":
            weight = self.conv.weight.detach().numpy()
            if f64:
                weight *= K
            out = self.conv(x)
            weight = self.conv.weight.detach().numpy()
            if f64:
                weight /= K
            return out
        if how == "mode":  # a model that tests for the watch
            return y * K if f64 or torch._C._is_torch_function_mode_enabled() else y
        if how == "stack":
            return y * K if f64 or torch._C._len_torch_function_stack() > 0 else y
        if how == "apply":
            return y * self.w
        if how == "fine":  # one function: NumPy read, not written; constants the same in both runs
            y = y * SAME + torch.from_numpy(np.array(0.5)) + torch.as_tensor(np.arange(8.0)).view(8, 1, 1)
            y = y * float(np.abs(y.numpy()).max() > 0) * np.float64(1.5)
            return torch.from_numpy(y.numpy())
        return y


def make(how="plain"):
    return Cheat(how)
'''
FACTORIES = ("exec", "hook", "from_numpy", "as_tensor", "numpy_trip", "frombuffer", "namespace", "np_scalar",
             "numpy_view", "weight_view", "mode", "stack", "apply", "fine")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    source = tmp_path_factory.mktemp("hunt24a") / "models.py"
    source.write_text(MODELS + "".join(f"\n\ndef {name}():\n    return Cheat({name!r})\n" for name in FACTORIES))
    return source


def built_and_run(source, factory: str, runs: int = 2):
    """The user model built as every command builds it, and its float64 oracle run on `runs` more inputs."""
    built = build_user_model(UserModelSpec.parse(f"{source}:{factory}"), 0, SHAPE)
    with torch.inference_mode():
        for seed in range(1, runs + 1):
            built.float64()(torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed)).double())
    return built


def refused(built, found: str) -> None:
    assert built.float64_calls.difference is not None and found in built.float64_calls.difference, \
        built.float64_calls.difference
    problems = function_problems(function_record(built))
    assert len(problems) == 1 and problems[0].endswith(OTHER_FUNCTION) and found in problems[0], problems


@pytest.mark.parametrize("factory", ["exec", "hook"])
def test_code_under_a_tool_modules_name_is_the_models(models, factory):
    """Before: the guard took a frame whose globals' `__name__` began with `verify.` (code a model `exec`s so), or a
    hook whose `__module__` did, for the tool's own: the first's calls were left out, the second left every later call
    of the oracle unwatched (one watched run, no difference). Now only code objects the tool's modules hold count."""
    refused(built_and_run(models, factory), "call 2 is Tensor.mul(tensor, 1.0005) only in float64")


def test_the_tools_own_code_is_told_by_its_code_objects(models):
    """What the guard now asks: a code object of a tool module as imported (a hook made inside a function of its own,
    as the tool's are), not a name; a model's code carrying the name of one, or compiled under its file name, is not."""
    import importlib.util

    from exporter.call_watch import _callable_code, _tool_code, watch_float64

    model = torch.nn.Linear(2, 2)
    exact = torch.nn.Linear(2, 2).double()
    watch_float64(exact, model)
    inner = type(exact).__call__  # the watch's own closure in exporter/user_model.py
    assert _tool_code(inner.__code__, inner=True) and _tool_code(watch_float64.__code__)
    assert not _tool_code(watch_float64.__code__, inner=True), "a top-level function is no hook the tool makes"
    spec = importlib.util.spec_from_file_location("hunt24a_models", models)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    assert loaded._hook.__module__.startswith("verify.") and not _tool_code(_callable_code(loaded._hook), inner=True)
    assert not _tool_code(loaded.SPOOFED["scale"].__code__)
    forged = compile("def f():\n    pass\n", watch_float64.__code__.co_filename, "exec").co_consts[0]
    assert not _tool_code(forged), "a code object compiled under the tool's file name is not the tool's"


@pytest.mark.parametrize(("factory", "found"), [
    ("from_numpy", "Tensor.mul(tensor, constant [1.0005]) in float64, Tensor.mul(tensor, constant [1]) in float32"),
    ("as_tensor", "torch.as_tensor(constant [1.0005]) in float64, torch.as_tensor(constant [1]) in float32"),
    ("numpy_trip", "return(constant 1x8x32x32) only in float64"),
    ("frombuffer", "Tensor.mul(tensor, constant [1.0005]) in float64, Tensor.mul(tensor, constant [1]) in float32"),
    ("namespace", "Tensor.mul(tensor, constant [1.0005]) in float64, Tensor.mul(tensor, constant [1]) in float32"),
    ("np_scalar", "Tensor.mul(tensor, 1.000499963760376) in float64, Tensor.mul(tensor, 1.0) in float32"),
    ("numpy_view", "Tensor.mul(constant 1x8x32x32, 1.0) in float64, Tensor.mul(tensor, 1.0) in float32"),
    ("weight_view", "torch.conv2d(tensor, constant 8x3x3x3"),
    ("apply", "its w holds other values than the float32 model's w"),
])
def test_a_float64_only_factor_made_outside_the_watched_calls_is_found(models, factory, found):
    """Before: each passed (no difference): a tensor made outside the function mode, or kept outside the model's
    modules, was one unnamed tensor in both runs; a NumPy scalar an object; a NumPy round trip, a write through a NumPy
    view and a buffer a module's `_apply` moves when it becomes float64 made no call. Now such a tensor is held to its
    values (rounded to float32: the same constant in each run's precision is one), a storage written outside torch
    too, and the oracle's tensors to the float32 model's."""
    refused(built_and_run(models, factory), found)


@pytest.mark.parametrize("factory", ["mode", "stack"])
def test_a_model_that_tests_for_the_watch_is_found(models, factory):
    """Before: a model that multiplied by 1.0005 in float64 or while a torch function mode was on made its watched
    float32 run copy the float64 calls, and the float32 run the floor is measured on did not: no difference."""
    built = built_and_run(models, factory)
    refused(built, "float32 run's output 0 is ")
    assert built.float64_calls.difference.split(" is ", 1)[1].split(": ")[0].endswith("apart unwatched and watched")


def test_one_function_with_numpy_reads_and_constants_is_not_refused(models):
    """Constants made outside the watched calls that are the same in both runs (at import, `torch.from_numpy`,
    `torch.as_tensor` of an array, a NumPy scalar), a NumPy view read and not written, and a tensor made of an array
    the run read (`torch.from_numpy(y.numpy())`): one function."""
    built = built_and_run(models, "fine")
    assert built.float64_calls.runs == 3 and built.float64_calls.difference is None
    assert function_problems(function_record(built)) == []


def test_a_model_of_torchs_own_modules_is_not_refused():
    """A `nn.Sequential` of torch's modules has no code of its own between the watch and torch: its calls were taken
    for the tool's (the watch's `__call__` is the nearest caller outside torch), and with outputs held to the calls
    that made them, its output was a constant apart by rounding (`verify matrix --model` of one refused: hunt 19b's
    test). The watch's own frame runs the model: its calls are logged, and it is one function."""
    from exporter.user_model import ModuleSpec

    torch.manual_seed(0)
    built = build_user_model(ModuleSpec.of(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())),
                             0, SHAPE)
    with torch.inference_mode():
        built.float64()(torch.rand(SHAPE, generator=torch.Generator().manual_seed(1)).double())
    assert built.float64_calls.runs == 2 and built.float64_calls.difference is None


def test_a_fast_path_is_the_only_slack_between_watched_and_unwatched_runs():
    """Where torch's fast paths differ under a function mode (MultiheadAttention, the Transformer layers; measured:
    the unwatched run at most 1.6x as far from the float64 oracle as the watched one), the unwatched run may be up to
    WATCHED_SLACK x as far; anywhere else it must be the watched run bit for bit."""
    from exporter.call_watch import WATCHED_SLACK, _unwatched_difference

    exact = torch.linspace(1, 2, 64, dtype=torch.float64)
    watched = exact.float() + 1e-6
    near, off = exact.float() + WATCHED_SLACK * 1e-6 * 0.9, exact.float() + WATCHED_SLACK * 1e-6 * 1.5
    assert _unwatched_difference(watched, watched.clone(), exact, fast=False) is None
    assert "apart unwatched and watched" in _unwatched_difference(watched, near, exact, fast=False)
    assert _unwatched_difference(watched, near, exact, fast=True) is None
    assert "from the float64 oracle unwatched" in _unwatched_difference(watched, off, exact, fast=True)
    assert "other outputs" in _unwatched_difference((watched,), [watched], (exact,), fast=True)


def test_export_refuses_a_model_that_tests_for_the_watch(models, tmp_path):
    """Before: `verify export --format torchscript` exited 0, '2.0x the floor', for a file 0.1 % off."""
    report = tmp_path / "r.json"
    result = invoke("export", "--model", f"{models}:mode", "--shape", "1x3x32x32", "--format", "torchscript",
                    "--out", tmp_path / "out", "--json", report, "--no-layers", "--static")
    assert result.exit_code == 1, result.output
    problems = json.loads(report.read_text())["problems"]
    assert len(problems) == 1 and "apart unwatched and watched" in problems[0], problems
