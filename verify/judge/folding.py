"""The folded float32 copy: each norm with fixed statistics that follows a convolution folded into it, as graph
optimisers fold it (`folded_float32`, `fold_into`): a second rounding sample for the channel floors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def folded_float32(model: torch.nn.Module, example: torch.Tensor | None,
                   call: Callable[[torch.nn.Module], Any] | None = None,
                   checked: bool = False) -> torch.nn.Module | None:
    """A float32 copy of `model` with each norm that directly follows a convolution folded into it,
    in float32, as graph optimisers do (ONNX Runtime's basic level, TensorRT, torch.compile's freezing).
    Folding rounds differently, so a correct folded runtime must not read as a bug; None when the
    model has nothing to fold. Pairs are found by running it: the norm's input is the conv's output; on
    `example`'s first sample, or by `call(model)` (a detector takes a list of images). `checked` (a user's
    model, whose code the pairs cannot see through): None unless the same folds in float64 compute what the
    model computes (`_folds_faithfully`)."""
    import copy

    import torch

    original = model
    model = copy.deepcopy(model).float().eval()
    names = {id(m): n for n, m in model.named_modules()}
    produced: dict[int, tuple[torch.nn.Module, torch.Tensor]] = {}
    pairs: list[tuple[torch.nn.Module, torch.nn.Module]] = []

    def after_conv(module, args, output):
        produced[id(output)] = (module, output)  # the tensor is kept alive, so its id stays unique

    def before_norm(module, args):
        found = produced.get(id(args[0])) if args else None
        if found is not None and found[1] is args[0]:
            pairs.append((found[0], module))

    convs = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)  # a transposed conv's weight is (in, out): not folded
    hooks = [m.register_forward_hook(after_conv) for m in model.modules() if isinstance(m, convs)]
    hooks += [m.register_forward_pre_hook(before_norm) for m in model.modules() if _is_frozen_norm(m)]
    try:
        with torch.inference_mode():
            model(example[:1].float()) if call is None else call(model)
    finally:
        for hook in hooks:
            hook.remove()
        produced.clear()
    if not pairs:
        return None
    named = [(names[id(conv)], names[id(norm)]) for conv, norm in pairs]
    if checked and (example is None or not _folds_faithfully(original, named, example)):
        return None
    _fold_named(model, named)
    return model


def _fold_named(model: torch.nn.Module, pairs: list[tuple[str, str]]) -> None:
    """Each (conv, norm) of `pairs`, named in `model`, folded: the norm into the conv, the norm then an Identity."""
    import torch

    for conv, norm in pairs:
        fold_into(model.get_submodule(conv), model.get_submodule(norm))
        model.set_submodule(norm, torch.nn.Identity())


FAITHFUL_FOLD = 1e-9
"""How far, relative to the output's largest magnitude, the model with its norms folded may compute from the model,
both in float64, for the folds to stand for it: folding is exact algebra, off by float64 rounding (~1e-15) alone."""


def _folds_faithfully(model: torch.nn.Module, pairs: list[tuple[str, str]], example: torch.Tensor) -> bool:
    """Whether folding `pairs` leaves what `model` computes on `example`'s first sample unchanged, in float64. A
    conv's output read by more than its norm (`bn(y) + y`), one norm module called after a conv and elsewhere, or a
    forward reading a norm's statistics itself: each computed something else folded (stop 49: off by the output's
    own magnitude, or an AttributeError on the Identity), and its run was taken for a rounding sample of the floors."""
    import copy

    import torch
    from torch.utils._pytree import tree_leaves

    try:
        reference = copy.deepcopy(model).double().eval()
        folded = copy.deepcopy(reference)
        _fold_named(folded, pairs)
        x = example[:1].double()
        with torch.inference_mode():
            want = [t for t in tree_leaves(reference(x)) if isinstance(t, torch.Tensor)]
            got = [t for t in tree_leaves(folded(x)) if isinstance(t, torch.Tensor)]
    except Exception:  # noqa: BLE001 - a model that cannot run folded gives no sample
        return False
    if len(want) != len(got) or any(a.shape != b.shape for a, b in zip(want, got)):
        return False
    for a, b in zip(want, got):
        if a.is_floating_point() and a.numel():
            scale = float(a.abs().max())
            if not (b - a).abs().max() <= FAITHFUL_FOLD * scale:
                return False
        elif not torch.equal(a, b):
            return False
    return True


def norm_scale(norm: torch.nn.Module) -> torch.Tensor:
    """What a norm with fixed statistics multiplies each channel by: weight / sqrt(running_var + eps)."""
    import torch

    weight = norm.weight if norm.weight is not None else torch.ones_like(norm.running_var)
    return weight * (norm.running_var + norm.eps).rsqrt()


def fold_into(conv: torch.nn.Module, norm: torch.nn.Module) -> None:
    """Fold `norm` (fixed statistics) into `conv`, in place, in the conv's dtype, as graph optimisers do: a conv or a
    Linear (output channels on the weight's axis 0), or a transposed conv (weight (in, out / groups, *kernel): each
    group's output channels on axis 1; dynamo folds a ConvTranspose2d's norm into it, hunt 31)."""
    import torch

    with torch.no_grad():
        scale = norm_scale(norm)
        bias = norm.bias if norm.bias is not None else torch.zeros_like(scale)
        weight = conv.weight
        if isinstance(conv, torch.nn.modules.conv._ConvTransposeNd):
            groups, per = conv.groups, weight.shape[1]
            weight.copy_((weight.reshape(groups, -1, per, *weight.shape[2:])
                          * scale.reshape(groups, 1, per, *[1] * (weight.dim() - 2))).reshape(weight.shape))
        else:
            weight.mul_(scale.reshape(-1, *[1] * (weight.dim() - 1)))
        shift = bias - norm.running_mean * scale
        conv.bias = torch.nn.Parameter(shift if conv.bias is None else conv.bias * scale + shift)


def _is_frozen_norm(module: torch.nn.Module) -> bool:
    """A norm with fixed statistics: BatchNorm in eval mode, or torchvision's FrozenBatchNorm2d."""
    return all(hasattr(module, a) for a in ("running_mean", "running_var", "eps", "weight", "bias")) \
        and not module.training and getattr(module, "running_var", None) is not None
