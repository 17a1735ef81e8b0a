"""Hunt 21b: an attacker's pass over hunt 20b's watched trace (exporter/formats/torchscript.py `_traced_reads`). A model
that silences the trace's warnings reads its input's size, or values, through a channel that hands Python no tensor
(a stride, a byte count, a storage, a count of tensors, a formatted string, `torch.sym_int`): each was exported by
trace with exit 0, the file keeping the example's branch at every other size."""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch
from torch import nn

from tests.helpers import invoke, quiet_branch, quiet_branch_source, trace_context


def width_branch(width):
    """Negates its output when `width(x)` is below 16."""
    return quiet_branch(lambda x: width(x) >= 16)


WIDTHS = {  # each is the width of a contiguous 1x3xHxW input, read without a tensor of sizes reaching Python
    "stride": lambda x: x.stride(2),
    "nbytes": lambda x: x.nbytes // 4 // 3 // 32,
    "storage": lambda x: x.untyped_storage().nbytes() // 4 // 3 // 32,
    "unbind": lambda x: len(x.unbind(3)),
    "split": lambda x: len(x.split(1, dim=3)),
    "format": lambda x: int(format(x.shape[-1])),
    "repr": lambda x: int(repr(x.shape[-1]).removeprefix("tensor(").removesuffix(")")),
    "sym_int": lambda x: torch.sym_int(x.shape[-1]),
    "pickle": lambda x: len(pickle.dumps(x)) // 4 // 3 // 32,
}
VALUE_DOORS = {"storage", "pickle"}
"""Channels that hand Python the values too (a storage's bytes, a pickle's): refused as a read of values (hunt 22b)."""


def traced_computes_otherwise(model: nn.Module) -> bool:
    """Whether a trace of the model at 32 px (what the exported file keeps) computes otherwise than it at 8 px."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, torch.randn(1, 3, 32, 32), strict=False, check_trace=False)
    x = torch.randn(1, 3, 8, 8)
    return not torch.allclose(traced(x), model(x))


@pytest.mark.parametrize("channel", sorted(WIDTHS))
def test_a_size_read_that_hands_python_no_tensor_is_refused_a_dynamic_trace(channel):
    """Before: `_traced_reads` watched only the PYTHON_READS methods on a tensor of sizes, so each channel here said no
    read (set()), and `verify export --trace` of such a model exited 0 with a file claiming a dynamic width (the CLI
    test below). Now a call on the input that hands back a number, a storage, an iterator or a string is a read, and so
    is whatever Python sees that differs between the trace and one at twice the height and width."""
    from exporter.errors import ExportError
    from exporter.formats.torchscript import _traced_reads, refuse_traced_reads

    model = width_branch(WIDTHS[channel])
    assert traced_computes_otherwise(model)  # the file would be wrong at 8 px
    kinds = _traced_reads(trace_context(model))
    assert "values" in kinds if channel in VALUE_DOORS else kinds == {"sizes"}
    with pytest.raises(ExportError, match="read the input's values" if channel in VALUE_DOORS else
                       "read the input's size as a Python number"):
        refuse_traced_reads([], trace_context(model))


class Correct(nn.Module):
    """Reads its sizes only as a trace keeps them (tensors of sizes), its rank and flags: right at every size."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        n, c, h, w = y.shape
        r, g, b = x.unbind(1)  # a count of channels, not of a dynamic axis
        z = y.view(x.size(0), -1).view(n, c, h, w) + r.unsqueeze(1)
        return nn.functional.interpolate(z, scale_factor=2.0)[..., : z.shape[-1]] + x.dim() + float(x.is_contiguous())


def test_a_model_reading_sizes_as_a_trace_keeps_them_is_no_read():
    """The guard of the refusal above: shapes, a fixed count of channels, rank and flags differ at no size."""
    from exporter.formats.torchscript import _traced_reads, refuse_traced_reads

    assert not traced_computes_otherwise(Correct())
    assert _traced_reads(trace_context(Correct())) == set()
    refuse_traced_reads([], trace_context(Correct()))  # no ExportError


class FormattedValue(nn.Module):
    """Divides by 255 when its input's peak (read through a string, no warning) is above 50."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        peak = float(str(x.abs().max()).removeprefix("tensor(").removesuffix(")"))
        return self.conv(x / 255.0 if peak > 50 else x)


def test_a_value_read_through_a_string_is_refused_a_static_trace():
    """Before: `str(x.abs().max())` under a trace handed the value to Python with no warning and no watched method:
    `_traced_reads` said set() and a static export by trace exited 0, the file keeping the example's branch (x for a
    0..1 example, x where the model computes x / 255 on a 0..255 input). Now a string a call on the input hands back is
    a read of its values, refused whatever the export."""
    from exporter.errors import ExportError
    from exporter.formats.torchscript import _traced_reads, refuse_traced_reads

    model = FormattedValue().eval()
    ctx = trace_context(model, dynamic=False)
    ctx.example = torch.rand(1, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, ctx.example, strict=False, check_trace=False)
    x = torch.rand(1, 3, 32, 32) * 255
    assert not torch.allclose(traced(x), model(x))
    assert _traced_reads(ctx) == {"values"}
    with pytest.raises(ExportError, match="read the input's values"):
        refuse_traced_reads([], ctx)


STRIDED = quiet_branch_source("x.stride(2)")


def test_a_branch_on_a_stride_is_refused_by_verify_export(tmp_path):
    """Before: exit 0, "all pairs agree" (the second shape 2x3x64x64 is above the threshold too), and a folder whose
    model.pt claims a dynamic width and computes y at 8 px where the model computes -y. Now exit 2, no folder."""
    path = tmp_path / "strided.py"
    path.write_text(STRIDED)
    result = invoke("export", "--model", f"{path}:make", "--shape", "1x3x32x32", "--samples", "1", "--trace",
                    "--format", "torchscript", "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "read the input's size as a Python number" in result.output and not (tmp_path / "out").exists()


def _dense_pairs(detector: str, drop: str | None) -> list[dict]:
    """A detector cell's before-NMS pairs as a shard stores them, every tensor within rounding (eager and ONNX Runtime
    the float32 rounding of the float64 oracle), without the tensors named `drop`."""
    import math

    import numpy as np

    from exporter.families.detectors import ANCHOR_MODULES, DETECTORS, dense_modules
    from verify.detect.nms_inputs import BOXES, SCORES
    from verify.detect.verdict import EAGER, ORACLE, RUNTIMES
    from verify.judge.compare import Tolerance, compare_outputs
    from verify.judge.measure import measure_floors

    rng = np.random.default_rng(0)
    names = [f"{m}#0" for m in dense_modules(None, DETECTORS.get(detector).kind)] + [BOXES, SCORES]
    # the anchors: one row an anchor, as many as the regression's levels cover (verify/matrix/dense_binding.py)
    anchors, level = f"{ANCHOR_MODULES[DETECTORS.get(detector).kind]}#0", (1, 4, 6, 6)
    oracle = {n: rng.standard_normal((math.prod(level) // 4, 4) if n == anchors else level) for n in names if n != drop}
    eager = {n: v.astype(np.float32) for n, v in oracle.items()}
    floors, tolerance, ort = measure_floors(eager, oracle), Tolerance(), RUNTIMES["onnx"]
    return [compare_outputs(ort, eager, ref, side, tolerance, floors, kind).to_dict()
            for ref, side, kind in ((ORACLE, oracle, "oracle"), (EAGER, eager, "runtime"))]


@pytest.mark.parametrize("drop", ["final_nms.boxes", "final_nms.scores"])
def test_a_matrix_cell_without_the_final_nms_inputs_fails_the_merge(drop):
    """Before: a RetinaNet cell whose shard cut `final_nms.*` (hunt 20a's decoded candidates) out of every before-NMS
    pair alike still compared the same tensors, held every head and the anchors, and its before-NMS level gave no
    reason to fail (a decoding bug judged after NMS only, as before hunt 20a). Now the missing tensor is named."""
    from verify.detect.verdict import RUNTIMES
    from verify.judge.compare import Tolerance
    from verify.matrix.detector_judging import _before_nms

    detector, labels = "retinanet_resnet50_fpn", [RUNTIMES["onnx"]]
    judged, reasons = _before_nms(_dense_pairs(detector, None), Tolerance(), labels, detector)
    assert reasons == [] and all(p["passed"] for p in judged)  # the complete cell passes
    judged, reasons = _before_nms(_dense_pairs(detector, drop), Tolerance(), labels, detector)
    assert all(p["passed"] for p in judged)
    assert any(f"leave out {drop}" in r for r in reasons), reasons


class ScaledConv(nn.Conv2d):
    """Computes with its weight and bias times 1e-4 (through `_conv_forward`, which Conv2d.forward calls): the weight
    it declares bounds nothing it returns."""

    def _conv_forward(self, input, weight, bias):  # noqa: A002 - torch's own name
        return super()._conv_forward(input, weight * 1e-4, None if bias is None else bias * 1e-4)


def _hooked_conv() -> nn.Conv2d:
    conv = nn.Conv2d(8, 8, 1)
    conv.register_forward_hook(lambda module, args, out: out * 1e-4)
    return conv


@pytest.mark.parametrize("make", [ScaledConv, lambda *a: _hooked_conv()], ids=["_conv_forward", "forward hook"])
def test_a_conv_computing_otherwise_than_its_weights_gets_no_summation_floor(make):
    """Before: `_own_forward` compared only `forward`, so a conv on a 1x1 map that computes through an overridden
    `_conv_forward`, or whose own forward hook returns another tensor, got a summation floor from the weights it
    declares: 1e-3 of its whole output (some 8000 float32 ulps), a floor the model chose for itself under which
    `--layers` passes a layer 0.5 % off. Now neither gets one, alone or with its folded norm."""
    from verify.judge.summation import chain_summation_floor, summation_floor

    torch.manual_seed(0)
    conv, x = make(8, 8, 1).eval(), torch.randn(1, 8, 1, 1)
    assert summation_floor(conv, x) is None
    assert chain_summation_floor(conv, nn.BatchNorm2d(8).eval(), x) is None
    plain = nn.Conv2d(8, 8, 1).eval()
    assert summation_floor(plain, x) is not None  # the guard: a plain conv keeps its floor
    hooked_norm = nn.BatchNorm2d(8).eval()
    hooked_norm.register_forward_hook(lambda module, args, out: out * 1e-4)
    assert chain_summation_floor(plain, nn.BatchNorm2d(8).eval(), x) is not None
    assert chain_summation_floor(plain, hooked_norm, x) is None


@pytest.mark.parametrize("channel", ["stride", "unbind", "nbytes"])
def test_a_large_example_is_traced_again_at_half_its_size_and_the_read_still_found(channel):
    """The second trace of `_traced_reads` ran at twice the example's height and width whatever its size (a user
    tracing a 1024 px input paid a trace at 2048 px: four times the work and memory). From HALVED_FROM on it runs at
    half of each, and a size read is still found."""
    from exporter.formats.torchscript import HALVED_FROM, _traced_reads, other_size

    large = torch.randn(1, 3, HALVED_FROM, HALVED_FROM + 8)
    assert tuple(other_size(large).shape[-2:]) == (HALVED_FROM // 2, (HALVED_FROM + 8) // 2)
    assert tuple(other_size(large[..., :8, :8]).shape[-2:]) == (16, 16)
    ctx = trace_context(width_branch(WIDTHS[channel]))
    ctx.example = large
    assert _traced_reads(ctx) == {"sizes"}
    ctx.built.model = Correct().eval()
    assert _traced_reads(ctx) == set()
