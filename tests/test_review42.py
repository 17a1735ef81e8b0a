"""Review 42: hunt 35's `require_faithful_copy`, sweep 49's re-run writes and det 49's refusal, attacked as a user and
as an attacker. Each test failed before its fix:

- torch's own copies were refused as bad ones: a torch.fx.symbolic_trace or torch.export(...).module() model ("returns
  a GraphModuleImpl, not a GraphModuleImpl"), a torch.jit.trace one ("returns a RecursiveScriptModule, not a
  TopLevelTracedModule"), a quantized model ("shares the tensor conv.bias", a computed state-dict tensor), all verified
  before hunt 35;
- a `__deepcopy__` returning the same class passed when it changed what the forward reads outside the state dict (a
  float, a plain tensor attribute, a hook): the copy was verified in the caller's place, a 1 %-off forward passed;
- a layer re-run's in-place write into its feed (`x.add_`) changed the reference's own value where it was float32 (a
  module returning float32 in the float64 run): the next file judged on the same reference had a correct layer named;
- a detector-like name of unprintable characters echoed ten characters each, and the CLI cut the refusal before what
  to do."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from exporter.artifacts import Artifact, ArtifactMeta
from exporter.errors import UsageError
from exporter.families.detectors import REFUSAL_BUDGET, unknown_model
from exporter.formats.eager import EagerFormat
from exporter.user_model import COPY_HOW, COPY_WHY, ModuleSpec, build_user_model, require_faithful_copy
from verify.explain.rerun import isolate_eager, isolate_fx, record_reference
from verify.explain.tracers import Side
from verify.judge.compare import AUTO_FACTOR

SHAPE = (1, 3, 8, 8)


def _example() -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))


def _small() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()).eval()


def _quantized() -> nn.Module:
    from torch.ao import quantization

    model = nn.Sequential(quantization.QuantStub(), nn.Conv2d(3, 4, 3), quantization.DeQuantStub()).eval()
    model.qconfig = quantization.get_default_qconfig("fbgemm")
    quantization.prepare(model, inplace=True)
    model(_example())
    return quantization.convert(model, inplace=True)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("make", [
    lambda: torch.fx.symbolic_trace(_small()),
    lambda: torch.export.export(_small(), (_example(),)).module(),
    lambda: torch.jit.trace(_small(), _example()),
    _quantized,
], ids=["symbolic_trace", "export_module", "jit_trace", "quantized"])
def test_torchs_own_copies_are_faithful(make):
    module = make()
    require_faithful_copy(module, copy.deepcopy(module), "m", COPY_WHY)
    built = build_user_model(ModuleSpec.of(module, _example()))  # both checks: the plugin's copy and the oracle's
    assert built.model is not module


class _Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.scale, self.gain = nn.Conv2d(3, 4, 3, padding=1), 1.01, torch.full((4, 1, 1), 1.01)
        self.conv.register_forward_hook(_off)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * self.scale * self.gain


def _off(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
    return out * 1.01


def _float(copied: _Scaled) -> None:
    copied.scale = 1.0


def _tensor(copied: _Scaled) -> None:
    copied.gain = torch.ones(4, 1, 1)


def _hook(copied: _Scaled) -> None:
    copied.conv._forward_hooks.clear()


@pytest.mark.parametrize(("edit", "named"), [(_float, "scale"), (_tensor, "gain"), (_hook, "conv._forward_hooks")])
def test_a_copy_that_changes_what_the_forward_reads_is_refused(edit, named):
    """The same class, the same state dict: before, the copy (a correct model) was verified in the caller's place."""
    module = _Scaled()
    require_faithful_copy(module, copy.deepcopy(module), "m", COPY_WHY)  # an untouched copy holds
    copied = copy.deepcopy(module)
    edit(copied)
    with pytest.raises(UsageError, match=rf"copy.deepcopy holds another {named}\b") as refused:
        require_faithful_copy(module, copied, "m", COPY_WHY)
    assert "\n" not in str(refused.value) and str(refused.value).endswith(COPY_HOW)


class _Upcast(nn.Module):
    """Returns float32 even in the float64 run: the reference records this module's output in float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * 1.0).float()


class _AddsInPlace(nn.Module):
    """Writes into its input, then returns in the dtype of its buffer (float64 in the reference, float32 else)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("anchor", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.add_(1.0)
        return (x * 2).type_as(self.anchor)


class _Writes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.pre, self.mid, self.head = nn.Conv2d(3, 4, 3, padding=1), _Upcast(), _AddsInPlace(), \
            nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mid(self.pre(self.conv(x))))


@pytest.fixture(scope="module")
def written():
    model = _Writes().eval()
    side = Side(Artifact(EagerFormat.name, ArtifactMeta(spec="review42")), model, copy.deepcopy(model).double())
    return record_reference(side, _example().numpy())


def _two_files(ref, isolate, candidate) -> list[list[str]]:
    """Each layer named by two files judged on one reference (the layer verdict shares it between files)."""
    recorded = {key: value.clone() for key, value in ref.outputs.items()}
    named = [[layer.module for layer in isolate(ref, candidate, AUTO_FACTOR).named] for _ in range(2)]
    assert all(torch.equal(value, ref.outputs[key]) for key, value in recorded.items())
    return named


def test_a_reruns_write_into_its_feed_leaves_the_reference_as_recorded(written):
    """Before: the second .pt2 judged on the reference had `pre` named at 5.2e6x its floor (its recorded value +1)."""
    program = torch.export.export(_Writes().eval(), (_example(),)).module()
    assert _two_files(written, isolate_fx, program) == [[], []]


def test_an_eager_leafs_write_into_its_input_leaves_the_reference_as_recorded(written):
    candidate = Side(Artifact(EagerFormat.name, ArtifactMeta(spec="review42b")), _Writes().eval(), None)
    assert _two_files(written, isolate_eager, candidate) == [[], []]


@pytest.mark.parametrize("typed", ["rcnn" + "\U000e0001" * 36, "\U000e0001" * 40],
                         ids=["detector_like", "backbone_like"])
def test_a_refusal_echoing_unprintable_characters_still_says_what_to_do(typed):
    """Before: forty tag characters were echoed as 402 escapes: the line past the CLI's limit, cut before the end."""
    text = str(unknown_model(typed, ["resnet18"]))
    assert "\n" not in text and len(text) <= REFUSAL_BUDGET
    assert text.endswith("verify export --help") or text.endswith(")")
