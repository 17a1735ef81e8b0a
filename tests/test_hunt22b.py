"""Hunt 22b: what hunt 21b, review 18 and sweep 21c left for users' models. The watched trace (exporter/formats/
torchscript.py `_traced_reads`) passed every `is_*` flag and `data_ptr` as metadata and a storage as a size: a size read
through a layout flag whose value is the same at every size the tool traces and judges, and a value read through an
address, a storage or `is_nonzero`, each exported by trace with exit 0, the file keeping the example's branch. A norm
that saves a value its loading skips kept uninitialised memory (exporter/backbones.py `loaded_as_given`)."""

from __future__ import annotations

import ctypes
import warnings

import pytest
import torch
from torch import nn

from tests.helpers import quiet_branch, trace_context


def traced_differs(model: nn.Module, example: torch.Tensor, other: torch.Tensor) -> bool:
    """Whether a trace of the model at `example` (what the exported file keeps) differs from it at `other`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example, strict=False, check_trace=False)
    with torch.no_grad():
        return not torch.allclose(traced(other), model(other))


SATURATED = {  # True at 32 px (the example), 64 px (the second trace and the judged second shape), False at 128 px
    "is_contiguous": lambda x: x[..., :64].is_contiguous(),
    "is_same_size": lambda x: x[..., :64].is_same_size(x),
}


@pytest.mark.parametrize("flag", sorted(SATURATED))
def test_a_size_read_through_a_layout_flag_is_refused_a_dynamic_trace(flag):
    """Before: `_watched_run` passed every `is_*` flag as metadata, so a branch on `x[..., :64].is_contiguous()` (a
    size read whose value is the same at the example's 32 px, the second trace's 64 px and the judged second shape
    2x3x64x64) said no read: `verify export --trace` exited 0 and its model.pt computed y at 128 px where the model
    computes -y. A layout flag of a tensor other than the input as it came is now a size read; a static trace keeps it
    right."""
    from exporter.errors import ExportError
    from exporter.formats.torchscript import _traced_reads, other_size, refuse_traced_reads

    model = quiet_branch(SATURATED[flag]).eval()
    ctx = trace_context(model)
    same = [SATURATED[flag](t) for t in (ctx.example, other_size(ctx.example), torch.randn(2, 3, 64, 64))]
    assert same == [True, True, True]  # no size the tool traces or judges shows it
    assert traced_differs(model, ctx.example, torch.randn(1, 3, 128, 128))
    assert _traced_reads(ctx) == {"sizes"}
    with pytest.raises(ExportError, match="read the input's size as a Python number"):
        refuse_traced_reads([], ctx)
    refuse_traced_reads([], trace_context(model, dynamic=False))  # right at the example's size: no ExportError


VALUE_DOORS = {  # y when the input's first value (or its mean) is above a threshold no judged input reaches
    "is_nonzero": lambda x: x.abs().max().gt(1000).is_nonzero(),
    "data_ptr": lambda x: abs(ctypes.c_float.from_address(x.contiguous().data_ptr()).value) > 1000,
    "untyped_storage": lambda x: abs(ctypes.c_float.from_address(x.untyped_storage().data_ptr()).value) > 1000,
}


@pytest.mark.parametrize("door", sorted(VALUE_DOORS))
def test_a_value_read_through_an_address_a_storage_or_a_flag_is_refused_a_static_trace(door):
    """Before: `is_nonzero` passed as a flag, `data_ptr` as metadata and a storage as a size only, so a static export by
    trace of a model branching on its input's values through any of them exited 0 (the file computing -y on a 0..2000
    input where the model computes y). Each is now a read of values, refused whatever the export."""
    from exporter.errors import ExportError
    from exporter.formats.torchscript import _traced_reads, refuse_traced_reads

    model = quiet_branch(VALUE_DOORS[door]).eval()
    ctx = trace_context(model, dynamic=False)
    assert traced_differs(model, ctx.example, torch.full((1, 3, 32, 32), 2000.0))
    assert _traced_reads(ctx) == {"values"}
    with pytest.raises(ExportError, match="read the input's values"):
        refuse_traced_reads([], ctx)


class Flagged(nn.Module):
    """Asks its input's own layout and every tensor's kind: right at every size, a read of nothing."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x if x.is_contiguous() else x.contiguous())
        kinds = y.is_floating_point() + y.is_cuda + y.is_leaf + y.is_quantized + y.is_complex() + y.is_signed()
        return y * float(kinds)


def test_the_inputs_own_layout_and_kind_flags_are_no_read():
    """The guard of both refusals: the input's own `is_contiguous` (it comes contiguous at every size) and the kind
    flags of any tensor depend on no size and no value."""
    from exporter.formats.torchscript import _traced_reads, refuse_traced_reads

    assert _traced_reads(trace_context(Flagged())) == set()
    refuse_traced_reads([], trace_context(Flagged()))  # no ExportError


# A norm that saves a value its loading skips -----------------------------------------------------------------------
def _twos_weights():
    """Weights of resnet18's shapes, every value 2 (built on the meta device: no init drawn)."""
    from exporter.backbones import build_classifier
    from exporter.weights import Weights

    with torch.device("meta"):
        shapes = build_classifier("resnet18", None).state_dict()
    return Weights("twos", {key: torch.full(value.shape, 2, dtype=value.dtype) for key, value in shapes.items()})


def test_a_norm_that_skips_loading_a_value_it_saves_is_built_with_its_own_init(monkeypatch):
    """Before: a norm whose state dict saves running_var but whose `_load_from_state_dict` skips it (the checkpoint's is
    not its to take) passed `holds_values_outside_state` (every tensor it keeps is saved), was built on the meta
    device, and kept the memory `to_empty` gave it: here `Weights twos give bn1 a running_var of -6.4e+34` (exit 2,
    blamed on the weights), in another run zeros or whatever was there, into every export and the oracle alike. Now a
    load that leaves a saved value other than the weights' gets the model built with its own init (running_var 1)."""
    from dataclasses import replace

    from torchvision.ops.misc import FrozenBatchNorm2d

    from exporter.backbones import build_model
    from exporter.norms import NORMS
    from exporter.spec import ModelSpec

    class Unloaded(FrozenBatchNorm2d):
        def _load_from_state_dict(self, state_dict, prefix, metadata, strict, missing, unexpected, errors):
            kept = {key: value for key, value in state_dict.items() if key != prefix + "running_var"}
            super()._load_from_state_dict(kept, prefix, metadata, strict, missing, unexpected, errors)
            missing.remove(prefix + "running_var")

    monkeypatch.setitem(NORMS._items, "frozen", replace(NORMS.get("frozen"), make_layer=lambda: Unloaded))
    built = build_model(ModelSpec("resnet18", "frozen", "body"), _twos_weights())
    variances = [m.running_var for m in built.model.modules() if isinstance(m, Unloaded)]
    assert variances and all(torch.equal(v, torch.ones_like(v)) for v in variances)
    means = [m.running_mean for m in built.model.modules() if isinstance(m, Unloaded)]
    assert all(torch.equal(m, torch.full_like(m, 2.0)) for m in means)  # what it loads is still the weights'


def test_an_uninitialised_build_holds_nan_until_loaded():
    """The guard: the meta build's storage is NaN (integers their least value), so a value no load sets can never
    equal the weights' by the memory's chance; a plain load sets every value it saves."""
    from exporter.backbones import build_classifier, loaded_as_given

    model = build_classifier("resnet18", None, initialise=False)
    assert all(bool(p.isnan().all()) for p in model.parameters())
    assert all(int(b.max()) == torch.iinfo(b.dtype).min for b in model.buffers() if not b.is_floating_point())
    state = _twos_weights().state_dict
    assert not loaded_as_given(model, state)
    model.load_state_dict(state)
    assert loaded_as_given(model, state)


# A .pt2 expression too deep for Python's parser --------------------------------------------------------------------
@pytest.mark.parametrize("depth", [3_000, 9_000])
def test_an_expression_too_deep_to_parse_is_refused_as_no_expression(depth):
    """Before: the scan (`_check_program`, the .pt2 integrity check of every folder, signed or not) caught the parser's
    RecursionError (3,000 unary minus signs) but not its MemoryError (9,000, still under MAX_EXPRESSION): a crafted
    `model.pt2` ended the check with a MemoryError instead of refusing the file. Both are now "is not an expression"."""
    from pathlib import Path

    from exporter.errors import ArtifactError
    from exporter.formats.pt2 import MAX_EXPRESSION, _check_program

    text = "-" * depth + "s0"
    assert len(text) <= MAX_EXPRESSION  # the length cap does not bound the depth
    with pytest.raises(ArtifactError, match="is not an expression"):
        _check_program(Path("model.pt2"), {"graph": [{"expr_str": text}]})
    _check_program(Path("model.pt2"), {"graph": [{"expr_str": "-" * 100 + "s0"}]})  # shallow: read
