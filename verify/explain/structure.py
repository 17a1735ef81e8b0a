"""Module-by-module structural diff of two torch models (eager or TorchScript).

Names are canonical: a view's own prefix (`body.` in the FPN backbone) is stripped, so a trunk,
a body and an FPN backbone line up on `conv1`, `bn1`, `layer3.1.bn2`, ...
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

NORM_TYPES = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "FrozenBatchNorm2d", "GroupNorm", "LayerNorm",
              "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "SyncBatchNorm")
"""Module types whose maths a norm's statistics or mode decide; every dimension torch has (r2plus1d_18's BatchNorm3d
was not one, and the layer verdict judged its folded conv as the norm alone: sweep 29)."""
SKIPPED_TENSORS = ("num_batches_tracked",)


@dataclass
class StructuralDifference:
    module: str
    kind: str
    """type | folded | eps | affine | track_running_stats | mode | value | shape | only_in"""
    a: str
    b: str
    detail: str = ""

    def __str__(self) -> str:
        text = {
            "type": f"{self.module}: {self.a} vs {self.b}",
            "folded": f"{self.module}: {self.a} vs {self.b}",
            "mode": f"{self.module or 'model'}: {self.a} mode vs {self.b} mode",
            "only_in": f"{self.module}: only in {self.a or self.b}",
        }.get(self.kind, f"{self.module}: {self.kind} {self.a} vs {self.b}")
        return f"{text} ({self.detail})" if self.detail else text

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "text": str(self)}


def canonical_modules(model: nn.Module, prefix: str) -> dict[str, nn.Module]:
    modules = {}
    for name, module in model.named_modules():
        if not name:
            continue
        modules[name.removeprefix(prefix) if prefix and name.startswith(prefix) else name] = module
    return modules


def type_name(module: Any) -> str:
    return getattr(module, "original_name", None) or type(module).__name__


def fold_partner(name: str, modules: dict[str, Any] | None = None, family: str | None = None) -> str:
    """The convolution a folded norm followed, by the family's mapping (`layer1.0.bn2` -> `layer1.0.conv2`,
    MobileNetV3's `4.block.0.1` -> `4.block.0.0`). Without `family`: the first family whose mapping
    names a convolution present in `modules` (any family's name if `modules` is not given)."""
    from exporter.families import FAMILIES

    names = [family] if family else FAMILIES.names()
    candidates = [p for p in (FAMILIES.get(n).fold_partner(name) for n in names) if p]
    for partner in candidates:
        if modules is None or "Conv" in type_name(modules.get(partner)):
            return partner
    return candidates[0] if candidates else ""


def _norm_text(module: Any) -> str:
    kind = type_name(module)
    eps = getattr(module, "eps", None)
    return f"{kind}(eps={eps:g})" if eps is not None else kind


def mode_changes_maths(module: Any) -> bool:
    """Whether train/eval mode changes what `module` computes: dropout, a BatchNorm (batch statistics), an
    InstanceNorm that tracks running statistics; never LayerNorm, GroupNorm, FrozenBatchNorm2d or a default
    InstanceNorm (review 28: a train-mode InstanceNorm3d or LayerNorm was named "the most common false alarm")."""
    kind = type_name(module)
    if "Dropout" in kind:
        return True
    if kind not in NORM_TYPES:
        return False
    return "BatchNorm" in kind and kind != "FrozenBatchNorm2d" or \
        kind.startswith("InstanceNorm") and bool(getattr(module, "track_running_stats", False))


def train_mode_modules(model: nn.Module, prefix: str = "") -> list[str]:
    """Modules whose train/eval mode changes the maths (mode_changes_maths), left in train mode."""
    return [name for name, m in canonical_modules(model, prefix).items() if m.training and mode_changes_maths(m)]


def structural_diff(a: nn.Module, a_prefix: str, b: nn.Module, b_prefix: str,
                    family: str | None = None) -> list[StructuralDifference]:
    """Differences module by module; `family` (the backbones' family, when known) names fold partners."""
    diffs: list[StructuralDifference] = []
    mods_a, mods_b = canonical_modules(a, a_prefix), canonical_modules(b, b_prefix)
    folded_convs: set[str] = set()

    for side, mods, other in (("A", mods_a, mods_b), ("B", mods_b, mods_a)):
        tops = sorted({name.split(".")[0] for name in mods if name not in other} - {n.split(".")[0] for n in other})
        for top in tops:
            count = sum(1 for n in mods if n == top or n.startswith(top + "."))
            diffs.append(StructuralDifference(top, "only_in", side if side == "A" else "", side if side == "B"
                                              else "", f"{count} modules"))

    for name in [n for n in mods_a if n in mods_b]:
        ma, mb = mods_a[name], mods_b[name]
        ta, tb = type_name(ma), type_name(mb)
        if ta != tb:
            if "Identity" in (ta, tb) and (ta in NORM_TYPES or tb in NORM_TYPES):
                partner = fold_partner(name, mods_a if ta == "Identity" else mods_b, family)
                folded_convs.add(partner)
                text = f"folded into {partner}"
                diffs.append(StructuralDifference(name, "folded", text if ta == "Identity" else _norm_text(ma),
                                                  text if tb == "Identity" else _norm_text(mb)))
            else:
                diffs.append(StructuralDifference(name, "type", ta, tb))
        for attr in ("eps", "affine", "track_running_stats"):
            va, vb = getattr(ma, attr, None), getattr(mb, attr, None)
            if va is not None and vb is not None and va != vb:
                diffs.append(StructuralDifference(name, attr, f"{va:g}" if isinstance(va, float) else str(va),
                                                  f"{vb:g}" if isinstance(vb, float) else str(vb)))
        if ma.training != mb.training and (ta in NORM_TYPES or tb in NORM_TYPES) and \
                (mode_changes_maths(ma) or mode_changes_maths(mb)):
            diffs.append(StructuralDifference(name, "mode", "train" if ma.training else "eval",
                                              "train" if mb.training else "eval",
                                              "BatchNorm in train mode normalises with batch statistics"))
    diffs.extend(_value_diffs(a, a_prefix, b, b_prefix, folded_convs))
    return diffs


def _tensors(model: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    found = {}
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if name.rsplit(".", 1)[-1] in SKIPPED_TENSORS:
            continue
        found[name.removeprefix(prefix) if prefix and name.startswith(prefix) else name] = tensor.detach()
    return found


def _value_diffs(a: nn.Module, a_prefix: str, b: nn.Module, b_prefix: str,
                 folded_convs: set[str]) -> list[StructuralDifference]:
    import torch

    diffs = []
    ta, tb = _tensors(a, a_prefix), _tensors(b, b_prefix)
    for name in [n for n in ta if n in tb]:
        module = name.rsplit(".", 1)[0]
        if module in folded_convs:
            continue  # a folded conv's weights differ by construction
        x, y = ta[name].double().cpu(), tb[name].double().cpu()
        if x.shape != y.shape:
            diffs.append(StructuralDifference(module, "shape", str(tuple(x.shape)), str(tuple(y.shape)),
                                              name))
            continue
        if torch.equal(x, y):
            continue
        differ = int((x != y).sum())
        scale = float(y.abs().max()) or 1.0
        diffs.append(StructuralDifference(
            module, "value", "A", "B",
            f"{name}: {differ} of {x.numel()} values differ, max rel {float((x - y).abs().max()) / scale:.1e}"))
    for side, mine, other in (("A", ta, tb), ("B", tb, ta)):
        other_modules = {n.rsplit(".", 1)[0] for n in other}
        for name in mine:
            module = name.rsplit(".", 1)[0]
            if name not in other and module in other_modules and module not in folded_convs:
                diffs.append(StructuralDifference(module, "only_in", side if side == "A" else "",
                                                  side if side == "B" else "", name))
    return diffs
