"""The laned float32 sample: norms whose statistics are summed by STATISTICS_LANES sequential float32 accumulators,
as a vectorised runtime sums them (`lane_sum`, `lane_statistics`, `laned_float32`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from verify.judge.summation import hooked

if TYPE_CHECKING:
    import torch

STATISTICS_LANES = 8
"""The float32 accumulators a norm's statistics are summed in by `lane_statistics`, each adding its share of the
values in sequence: ONNX Runtime's CPU InstanceNormalization (what both ONNX exporters make of GroupNorm) sums a
group's values and squared deviations with Eigen's packet reduction, 8 float32 lanes with AVX2. Its error on a
correct GroupNorm(8, 64) correlates 0.93 with this evaluation's (4 lanes 0.43, 16 lanes -0.70; sweep 24d); torch's
own kernel sums by cascade, ~sqrt(n / 8) times more exactly, so its float32 run alone was no estimate of it."""


def lane_sum(values: Any, lanes: int) -> Any:
    """float32 sums over the last axis, `lanes` accumulators each adding every `lanes`-th value in sequence, then
    added together (a vectorised reduction's order), keeping the axis."""
    import numpy as np
    import torch

    count = values.shape[-1] // lanes
    body = values[..., :count * lanes].reshape(*values.shape[:-1], count, lanes)
    if count:  # NumPy's accumulate adds in sequence, in the array's own precision (torch's cumsum accumulates wider)
        total = torch.from_numpy(np.add.accumulate(body.detach().numpy(), axis=-2)[..., -1, :])
    else:
        total = torch.zeros(*values.shape[:-1], lanes, dtype=values.dtype)
    return (total.sum(-1) + values[..., count * lanes:].sum(-1)).unsqueeze(-1)


def lane_statistics(norm: Any, start: Any) -> Any:
    """A GroupNorm's or LayerNorm's output with its mean and variance summed in float32 by STATISTICS_LANES
    sequential accumulators (two passes: the mean, then the squared deviations), another runtime's order; None for
    other layers, a subclass or a hooked norm (its forward may compute something else than these statistics)."""
    import torch

    torch_norm = any(isinstance(norm, base) and type(norm).forward is base.forward
                     for base in (torch.nn.GroupNorm, torch.nn.LayerNorm))
    if not torch_norm or hooked(norm) or not start.is_floating_point() or start.dim() < 2:
        return None
    if isinstance(norm, torch.nn.GroupNorm):
        values, weight_shape = start.reshape(start.shape[0], norm.num_groups, -1), (1, -1, *[1] * (start.dim() - 2))
    else:
        kept = start.dim() - len(norm.normalized_shape)
        values, weight_shape = start.reshape(*start.shape[:kept], -1), tuple(norm.normalized_shape)
    if not values.shape[-1]:
        return None
    out = _lane_normalised(values, norm.eps).reshape(start.shape)
    return _affine(out, norm.weight, norm.bias, weight_shape)


def _lane_normalised(values: Any, eps: float) -> Any:
    """(values - mean) / sqrt(variance + eps) over the last axis, both statistics summed by `lane_sum`."""
    import torch

    count = values.shape[-1]
    mean = lane_sum(values, STATISTICS_LANES) / count
    spread = values - mean
    variance = lane_sum(spread * spread, STATISTICS_LANES) / count
    return spread * torch.rsqrt(variance + eps)


def _affine(out: Any, weight: Any, bias: Any, shape: tuple[int, ...]) -> Any:
    if weight is not None:
        out = out * weight.reshape(shape)
    if bias is not None:
        out = out + bias.reshape(shape)
    return out


def laned_float32(model: torch.nn.Module) -> torch.nn.Module | None:
    """A float32 copy of `model` whose GroupNorms and LayerNorms (torch's forward, unhooked) compute their statistics
    as `lane_statistics` does: a second rounding sample for the channel floors, as `folded_float32` is for norms with
    fixed statistics. Each norm stays the module it was (its type, weights and attributes: a model that reads
    `self.norm.weight` reads it still); only its `forward` is replaced. None when the model has no such norm."""
    import copy
    import functools

    import torch

    def laned(module: torch.nn.Module) -> bool:
        return not hooked(module) and any(isinstance(module, base) and type(module).forward is base.forward
                                          for base in (torch.nn.GroupNorm, torch.nn.LayerNorm))

    if not any(laned(m) for m in model.modules()):  # before any copy: a registered backbone has none
        return None
    model = copy.deepcopy(model).float().eval()
    norms = [m for m in model.modules() if laned(m)]
    for norm in norms:
        norm.forward = functools.partial(_laned_forward, norm)
    return model if norms else None


def _laned_forward(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = lane_statistics(norm, x)
    return type(norm).forward(norm, x) if out is None else out


def inductor_lanes() -> int:
    """The float32 lanes of the vector instructions Inductor compiles for on this machine (`pick_vec_isa`: 16 with
    AVX-512, 8 with AVX2), 1 where it emits scalar code."""
    try:
        from torch._inductor.cpu_vec_isa import pick_vec_isa

        isa = pick_vec_isa()
        return max(int(isa.nelements()), 1) if isa else 1
    except Exception:  # noqa: BLE001 - an Inductor without this helper: its scalar order
        return 1


def inductor_sum(values: Any, axes: list[int], lanes: int) -> Any:
    """float32 sums of `values` over `axes` (dropped), in the order Inductor's CPU code sums them (read from its
    generated C++, torch 2.14): it vectorises along the dimension innermost in memory, so a reduction that includes it
    is summed in `lanes` accumulators (each adding every `lanes`-th value in sequence, then added together), and one
    over outer dimensions only (a spatial mean of a channels-last conv's output) in one accumulator per output, adding
    the values in sequence in memory order."""
    order = sorted(range(values.dim()), key=lambda d: (-values.stride(d), d))  # outermost first, as in memory
    kept = [d for d in order if d not in axes]
    summed = [d for d in order if d in axes]
    inner = order[-1] in axes and values.shape[order[-1]] > 1
    moved = values.permute(*kept, *summed).reshape(*[values.shape[d] for d in kept], -1)
    total = lane_sum(moved, lanes if inner else 1).squeeze(-1)
    # back to the kept dimensions' logical order
    logical = sorted(range(len(kept)), key=lambda i: kept[i])
    return total.permute(*logical) if len(kept) > 1 else total
