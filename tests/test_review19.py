"""Review 19 of stop 36's change (an attacker's review): where the layer verdict's floor of a layer could be one the
model chose for itself, or its reference another layer's value, so that a layer 0.1 % off in one channel passed
`--layers` (verify/explain/rerun.py: the reversed-sum run, the folded-norm unit, the record's shared values), a
dead channel dropped a file's layer verdict, the report listed as judged a file with no layer re-run, and the watched
trace missed a size read of a model that cannot run at half its example. Each failed on stop 36's code."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from verify.explain.rerun import Reference, Unit, judge, own_floor, record_reference
from verify.explain.tracers import Side
from verify.judge.compare import AUTO_FACTOR

ERROR = 1e-3
"""A 0.1 % error in one output channel's weights."""


class OwnWeightConv(nn.Conv2d):
    """Computes with its own weight, not `_conv_forward`'s argument (a masked or quantised conv's habit): the same
    values as torch's conv, as Conv2d.forward passes it self.weight."""

    def _conv_forward(self, input, weight, bias):  # noqa: A002 - torch's own name
        return super()._conv_forward(input, self.weight, bias)


def _weight_norm_conv() -> nn.Conv2d:
    """torch.nn.utils.weight_norm: a forward pre-hook recomputes `weight` from weight_g and weight_v on every call."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return nn.utils.weight_norm(nn.Conv2d(16, 8, 3, padding=1))


@pytest.mark.parametrize("make", [lambda: OwnWeightConv(16, 8, 3, padding=1), _weight_norm_conv],
                         ids=["_conv_forward reading self.weight", "weight_norm pre-hook"])
def test_a_conv_computing_with_its_own_weight_keeps_a_floor_of_its_own_rounding(make):
    """Before: the reversed-sum run passed the flipped weight to `_conv_forward` (stop 36: no copy of the module), or
    flipped a copy's weight that weight_norm's pre-hook then recomputed: either ran the flipped input by the unflipped
    weight, and that run's distance from the layer's output (2.07, the output's own size) was the layer's floor. A
    conv 0.1 % off in one channel passed at 0.0007x; a plain conv with the same error is 1963x. Measured end to end:
    `verify compare` of such a model's ONNX file with conv2's channel 5 scaled by 1 + 1e-5 printed "every one of 2
    layers ... is within 5x its own float32 floor" where the plain model's file names conv2 at 35x. Now a subclass's
    `_conv_forward` runs on a copy whose weight is flipped, and a run whose weight a pre-hook recomputed is left out."""
    torch.manual_seed(0)
    with torch.no_grad():
        conv = make().eval()
        x = torch.randn(1, 16, 8, 8, dtype=torch.float64)
        conv(x.float())  # a pre-hook's weight is set by a call, as in the reference's own run
        weight, bias = conv.weight.detach().clone(), conv.bias.detach().clone()
        want = nn.functional.conv2d(x, weight.double(), bias.double(), padding=1)
        ref = Reference(None, {("c", 0): x}, {("c", 0): want}, x, {"c": conv}, {("c", 0)})
        weight[3] *= 1 + ERROR
        got = nn.functional.conv2d(x.float(), weight, bias, padding=1).numpy()
    layer = judge(ref, Unit("c", 0, [], {}, None), got)
    assert layer is not None and layer.ratio > AUTO_FACTOR, layer
    assert layer.floor < 1e-5 * float(want.abs().max()), "a floor of float32 rounding, not of the output's size"


class SharedNorm(nn.Module):
    """One eval-mode norm after each of two convs: the same module, called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        with torch.no_grad():
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.running_mean.normal_(0, 0.3)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.normal_(0, 0.2)

    def forward(self, x):
        return self.bn(self.conv2(torch.relu(self.bn(self.conv1(x)))))


def test_a_norm_shared_by_two_convs_is_never_judged_against_the_other_convs_value():
    """The legacy ONNX exporter folds the shared norm into both convs; each folded conv is a unit (norm, the conv's
    call), and conv2's call 0 was judged against the norm's call 0, which read conv1's output: its floor was the
    distance between the two (2.68), and a 0.1 % channel error in conv2's folded weight passed at 1.0x. Measured end to
    end: `verify compare` of the legacy ONNX file with conv2's folded weight so scaled: the layer verdict "every one
    of 2 layers ... within 5x" (conv2 fused with bn: ratio 1.00, max_abs 3.33, floor 2.68). Now a fused unit whose
    norm call read another conv's output has no floor (not judged, listed as skipped), never a pass."""
    torch.manual_seed(0)
    model = SharedNorm().eval()
    side = Side(None, model, copy.deepcopy(model).double())
    ref = record_reference(side, torch.randn(1, 3, 16, 16).numpy())
    assert ref.producers[("bn", 1)] == ("conv2", 0)  # what the model ran: the norm's second call read conv2
    with torch.no_grad():
        folded = copy.deepcopy(model.conv2)
        scale = model.bn.weight / (model.bn.running_var + model.bn.eps).sqrt()
        folded.weight.mul_(scale.reshape(-1, 1, 1, 1))
        folded.weight[5] *= 1 + ERROR
        shift = model.bn.bias - model.bn.running_mean * scale
        got = (folded(ref.inputs[("conv2", 0)].float()) + shift.reshape(1, -1, 1, 1)).numpy()
    layer = judge(ref, Unit("bn", 0, [], {}, None, fused_with=["conv2"]), got)
    assert layer is None or layer.ratio > AUTO_FACTOR, layer
    first = judge(ref, Unit("bn", 0, [], {}, None, fused_with=["conv1"]),
                  model.bn(model.conv1(torch.from_numpy(np.asarray(ref.x)).float())).detach().numpy())
    assert first is not None and first.ratio <= AUTO_FACTOR, "the norm's own call after conv1 is still judged"


class WrittenThroughData(nn.Module):
    """conv1's output scaled in place through `.data` (a legacy idiom), which bumps no version counter."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        y = self.conv1(x)
        y.data.mul_(2)
        return self.conv2(y)


def test_a_value_written_past_its_version_counter_is_recorded_as_the_layer_read_it():
    """Stop 36 shares a producer's recorded output as the next call's input where the tensor's version counter has not
    moved; a write through `.data` (or a numpy view) moves none. Before: conv2's recorded input was conv1's output
    unscaled, its own floor the distance of conv2 on that from conv2 on what it read (1.24, half the output's size),
    under which any error of conv2 passes. Now shared only where it is also equal (else a copy, as before stop 36)."""
    torch.manual_seed(0)
    model = WrittenThroughData().eval()
    side = Side(None, model, copy.deepcopy(model).double())
    ref = record_reference(side, torch.randn(1, 3, 8, 8).numpy())
    assert torch.equal(ref.inputs[("conv2", 0)], 2 * ref.outputs[("conv1", 0)])
    floor = own_floor(ref, Unit("conv2", 0, [], {}, None))
    assert floor is not None and floor.value < 1e-5 * float(ref.outputs[("conv2", 0)].abs().max())


class LargeKernelBranch(nn.Module):
    """Needs at least 40 px (a 40x40 kernel, no padding) and negates its output below 48 px of width, read as a count of
    tensors with the trace's warnings silenced (hunt 21b's `unbind` channel)."""

    def __init__(self, branch: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 40)
        self.branch = branch

    def forward(self, x):
        warnings.simplefilter("ignore")
        y = self.conv(x)
        return y if not self.branch or len(x.unbind(3)) >= 48 else -y


def test_a_model_that_cannot_run_at_half_its_example_is_traced_again_at_twice():
    """Stop 36 traces a 64 px example again at half its size (HALVED_FROM): this model fails there, the failed trace
    proved nothing, and its size read escaped. Measured: `verify export --model bigkernel.py:make --shape 1x3x64x64
    --trace --format torchscript` exited 0 ("all 3 pairs agree"; the second shape 2x3x96x96 is above the threshold),
    and the file computed y at 44 px where the model computes -y (3.8 apart, the output's size 1.9). Now the second
    trace runs at twice the example where it fails at half; a model without the read is still no read."""
    from exporter.formats.torchscript import HALVED_FROM, _traced_reads
    from tests.helpers import trace_context

    ctx = trace_context(LargeKernelBranch())
    ctx.example = torch.randn(1, 3, HALVED_FROM, HALVED_FROM)
    assert _traced_reads(ctx) == {"sizes"}
    ctx.built.model = LargeKernelBranch(branch=False).eval()
    assert _traced_reads(ctx) == set()


def _dead_channel_reference(size: int) -> tuple[Reference, nn.Conv2d, nn.BatchNorm2d, torch.Tensor]:
    """A conv and an eval-mode norm whose channel 0 is dead (weight 0, variance 0, eps 0: 0 x 1/sqrt(0) is NaN there, in
    the model and in any export of it; a model returning the other channels outputs finite values), on a size x size
    map."""
    torch.manual_seed(0)
    conv, norm = nn.Conv2d(8, 4, 1).eval(), nn.BatchNorm2d(4, eps=0.0).eval()
    with torch.no_grad():
        norm.running_var.uniform_(0.5, 2.0)
        norm.running_var[0], norm.weight[0] = 0.0, 0.0
        x = torch.randn(1, 8, size, size, dtype=torch.float64)
        mid = nn.functional.conv2d(x, conv.weight.double(), conv.bias.double())
        want = nn.functional.batch_norm(mid, norm.running_mean.double(), norm.running_var.double(),
                                        norm.weight.double(), norm.bias.double(), False, 0.0, 0.0)
    return Reference(None, {("c", 0): x}, {("c", 0): mid, ("n", 0): want}, x, {"c": conv, "n": norm},
                     {("c", 0)}), conv, norm, x


@pytest.mark.parametrize("size", [1, 8], ids=["1x1 map: the chain's summation floor", "8x8 map"])
def test_a_dead_channel_the_file_computes_alike_keeps_the_layer_verdict(size):
    """Before, on a 1x1 map: the chain summation floor of the dead channel was NaN and NoiseFloor raised "Per-channel
    noise floors must be finite numbers > 0": `verify export --model dead.py:make --static` (a stem, a global pool, this
    conv and norm, the output without channel 0) exited 0 with the note "model.onnx: its layers were not checked"
    (every layer of the file unjudged: any layer bug passed on the outputs alone), and with --layers exited 1 "no layer
    verdict was reached". On a larger map: the NaN the file computes where the model does was an infinite error, and
    the correct export failed by default ("fc (computed with bn) infx its own floor (channel 0)", exit 1). Now the same
    NaN on both sides agrees, a dead channel has no summation floor, and a 1 % error in another channel is named."""
    ref, conv, norm, x = _dead_channel_reference(size)
    unit = Unit("n", 0, [], {}, None, fused_with=["c"])
    with torch.no_grad():
        right = nn.Sequential(conv, norm)(x.float()).numpy()
        broken = copy.deepcopy(conv)
        broken.weight[2] *= 1.01
        wrong = nn.Sequential(broken, norm)(x.float()).numpy()
    assert np.isnan(right[:, 0]).all() and np.isfinite(right[:, 1:]).all()
    layer = judge(ref, unit, right)
    assert layer is not None and layer.ratio <= AUTO_FACTOR, layer
    layer = judge(ref, unit, wrong)
    assert layer is not None and layer.ratio > AUTO_FACTOR and layer.channel == 2, layer


def test_the_reports_layer_verdict_lists_as_judged_only_files_with_a_layer_judged():
    """Before: `verify export --model functional.py:make --format onnx --static --layers` (a model whose ops are all
    functional: no layer maps back to a module) printed "model.onnx: no layer was re-run ... so its layers were not
    judged" and exited 1, while its report JSON said layer_verdict {"run": "asked", "judged": ["model.onnx"],
    "not_judged": []}. Now a file whose check re-ran no layer is not judged (verify/pipeline/stages.py
    `layer_verdict`, which finish_cell writes)."""
    from types import SimpleNamespace

    from verify.judge.layers import Isolation, LayerError
    from verify.pipeline.stages import layer_verdict

    files = [SimpleNamespace(path=None, label=name) for name in ("model.onnx", "model.pt2")]
    none_rerun = Isolation("eager", "model.onnx", AUTO_FACTOR, note="no candidate layer maps back to a module")
    rerun = Isolation("eager", "model.pt2", AUTO_FACTOR, layers=[LayerError("conv", 0, 1.0, 1e-7, 1e-7)])
    assert layer_verdict(True, [none_rerun, rerun], files) == {"run": "asked", "judged": ["model.pt2"],
                                                                "not_judged": ["model.onnx"]}
    assert layer_verdict(False, [rerun], files)["run"] == "default"
