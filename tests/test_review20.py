"""Review 20 (hunt 23a's call-log guard, by a user and an attacker). A user's float64 buffer passed on as
`.to(x.dtype)` (or a float32 parameter's `.float()`, a `.type_as(y)`) is the tensor itself in the run whose dtype it
already has and a new, unnamed one in the other: `verify export` refused a correct model ("computes another function").
A constant picked by x.dtype out of a list attribute was one unnamed tensor in both runs: a float64-only factor passed.
Conversions now keep their tensor's name, and tensors in a module's lists, tuples and dicts are named
(exporter/user_model.py `CONVERSIONS`, `_name_tensors`). A number made by arithmetic from `.item()` or
`torch.finfo(x.dtype)` stays refused (it could carry any float32-only term), and the refusal now says what to write
instead (verify/judge/trust.py `OTHER_FUNCTION`)."""

from __future__ import annotations

import pytest
import torch

from exporter.user_model import UserModelSpec, build_user_model
from verify.judge.trust import OTHER_FUNCTION, function_problems, function_record

SHAPE = (1, 3, 32, 32)
MODELS = '''
import torch
from torch import nn


class Own(nn.Module):
    def __init__(self, how):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.how = how
        self.register_buffer("w64", torch.linspace(0.5, 1.5, 4, dtype=torch.float64).view(4, 1, 1))
        self.register_buffer("w32", torch.linspace(0.5, 1.5, 4).view(4, 1, 1))
        self.scale = nn.Parameter(torch.full((4, 1, 1), 0.5))
        self.ks = [torch.tensor(1.0), torch.tensor(1.0005)]
        self.by = {"plain": torch.tensor(1.0), "off": torch.tensor(1.0005)}

    def forward(self, x):
        y = self.conv(x)
        if self.how == "float64_buffer":  # a buffer kept in float64 on purpose, used in the input's dtype
            return y * self.w64.to(y.dtype)
        if self.how == "casts":
            return y * self.w32.type_as(y) + self.scale.float() * self.w64.to(device=y.device, dtype=y.dtype)
        if self.how == "list":
            return y * self.ks[x.dtype == torch.float64]
        if self.how == "dict":
            return y * self.by["off" if x.dtype == torch.float64 else "plain"]
        norm = y.norm(dim=1, keepdim=True)
        if self.how == "finfo_number":  # refused: the number passed is another in each run (a user writes it)
            return y / norm.clamp(min=torch.finfo(y.dtype).eps * 10)
        if self.how == "finfo_tensor":  # what the refusal says to write instead
            return y / norm.clamp(min=torch.tensor(torch.finfo(y.dtype).eps) * 10)
        if self.how == "item_number":
            return y / (y.abs().max().item() + 1e-6)
        if self.how == "item_tensor":
            return y / (y.abs().max() + 1e-6)
        return y


def float64_buffer():
    return Own("float64_buffer")


def casts():
    return Own("casts")


def finfo_number():
    return Own("finfo_number")


def finfo_tensor():
    return Own("finfo_tensor")


def item_number():
    return Own("item_number")


def item_tensor():
    return Own("item_tensor")


def list_constant():
    return Own("list")


def dict_constant():
    return Own("dict")
'''


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    source = tmp_path_factory.mktemp("review20") / "models.py"
    source.write_text(MODELS)
    return source


def built_and_run(source, factory: str):
    built = build_user_model(UserModelSpec.parse(f"{source}:{factory}"), 0, SHAPE)
    with torch.inference_mode():
        built.float64()(torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)).double())
    return built


@pytest.mark.parametrize("factory", ["float64_buffer", "casts"])
def test_a_tensor_converted_to_the_inputs_dtype_is_one_function(models, factory):
    """Before: 'call 3 is Tensor.mul(tensor, tensor w64) in float64, Tensor.mul(tensor, tensor) in float32', and
    `verify export` refused the model."""
    built = built_and_run(models, factory)
    assert built.float64_calls.runs == 2 and built.float64_calls.difference is None
    assert function_problems(function_record(built)) == []


@pytest.mark.parametrize(("factory", "found"), [
    ("list_constant", "Tensor.mul(tensor, tensor ks.1) in float64, Tensor.mul(tensor, tensor ks.0) in float32"),
    ("dict_constant", "Tensor.mul(tensor, tensor by.off) in float64, Tensor.mul(tensor, tensor by.plain) in float32"),
])
def test_a_constant_chosen_by_dtype_from_a_container_attribute_is_found(models, factory, found):
    """Before: both runs multiplied by an unnamed tensor: no difference, and a float64-only factor lifted the floor."""
    built = built_and_run(models, factory)
    assert built.float64_calls.difference is not None and found in built.float64_calls.difference
    problems = function_problems(function_record(built))
    assert len(problems) == 1 and found in problems[0]


@pytest.mark.parametrize(("refused", "advised"), [("finfo_number", "finfo_tensor"), ("item_number", "item_tensor")])
def test_a_refused_python_number_is_told_what_to_write_and_that_passes(models, refused, advised):
    """Before: the refusal said only 'no branch on x.dtype, no loop until a tolerance', neither of which such a model
    has. Now it names the number made from .item() or torch.finfo and the tensor to keep; written so, one function."""
    problems = function_problems(function_record(built_and_run(models, refused)))
    assert len(problems) == 1 and problems[0].endswith(OTHER_FUNCTION), problems
    assert ".item() or torch.finfo(x.dtype)" in OTHER_FUNCTION and "torch.tensor(torch.finfo(x.dtype).eps)" \
        in OTHER_FUNCTION
    built = built_and_run(models, advised)
    assert built.float64_calls.difference is None and function_problems(function_record(built)) == []


def test_a_static_detector_export_of_an_array_takes_the_arrays_own_shape(tmp_path, monkeypatch):
    """Before: `verify export -b <detector> --static --input two.npy` (2x3x64x64) exited 2, "--shape asks
    1x3x320x320; drop --shape or pass a matching array", with no --shape given. An array is not resized: with no
    --shape its own shape is the export's, as for a backbone's --input .npy (a stand-in `verify_detector` here: the
    size the command passes it)."""
    import numpy as np

    from tests.helpers import invoke
    from verify.detect import check

    images = tmp_path / "two.npy"
    np.save(images, np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32))
    seen = []

    def stand_in(name, norm, size, *args, **kwargs):
        seen.append((tuple(size), len(kwargs["images"])))
        raise SystemExit(3)

    monkeypatch.setattr(check, "verify_detector", stand_in)
    result = invoke("export", "-b", "fasterrcnn_mobilenet_v3_large_320_fpn", "--static", "--input", images,
                    "--out", tmp_path / "out")
    assert result.exit_code == 3, result.output
    assert seen == [((2, 3, 64, 64), 2)]
    result = invoke("export", "-b", "fasterrcnn_mobilenet_v3_large_320_fpn", "--static", "--input", images,
                    "--shape", "1x3x320x320", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "--shape asks 1x3x320x320" in result.stderr, "a --shape given still binds"
