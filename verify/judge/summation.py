"""Summation floors: what a layer that sums few values (a Linear, a conv or an average pool with few outputs a
channel) rounds in another runtime's order, per layer (`summation_floor`, `chain_summation_floor`: the layer verdict)
and per output of a user's model that such a layer computes (`summed_outputs`); floors lifted to them (`lifted`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from verify.judge.folding import _is_frozen_norm, fold_into, norm_scale
from verify.judge.noise_floor import CHANNEL_AXIS, FLOAT32_EPS, MIN_CHANNEL_ELEMENTS, NoiseFloor, channelled

if TYPE_CHECKING:
    import numpy as np
    import torch

    from exporter.artifacts import Artifact


def summation_floor(module: Any, value: Any) -> float | None:
    """A floor from what a layer sums, where its own float32 run is one summation order of few values, or of many
    values that another runtime sums in another order (None for other layers):

    - a Linear, or a conv with fewer than MIN_CHANNEL_ELEMENTS outputs a channel (a squeeze-excitation `fc1` on a
      1x1 map): half a float32 ulp (rounding to nearest) of its largest sum of |x w| + |b|. ONNX Runtime's Gemm
      rounded a correct Linear(512, 2)'s cancelling sums to 9.3x that run's error (150 seeds; at most 2.3x this
      floor; hunt 14a);
    - an average pool of n values a window: a float32 ulp of the window's mean |x| times sqrt(n), the spread of a
      sum rounded once per term. ONNX Runtime's GlobalAveragePool on mobilenet_v3_small's first squeeze-excitation
      (56x56 values a channel) was 73x torch's own error in a channel and 11 ulp of its mean |x|: a correct ONNX
      file's layer at 8.4x its floor."""
    found = _summation_floors(module, value, pools_with_few_outputs=False)
    return None if found is None else float(found.max())


def chain_summation_floor(conv: Any, norm: Any, value: Any) -> np.ndarray | None:
    """`summation_floor` of a conv judged together with the norm after it (the layer verdict's unit where an exporter
    folded the norm into the conv): a runtime computes either the folded conv, whose sums are of |x w s| and its
    folded bias, or the conv then the norm, which scales the conv's rounding by |s|: per output channel (a channel's
    rounding is of its own sums) the larger of the two (None where the conv alone has none, or the norm is not a plain
    norm with fixed statistics, or is hooked). Without it such a unit on a 1x1 map had only its float32 runs: a
    correct export's conv of mobilenet_v3_small at 32 px reached 4.21x its floor (sweep 19e), where the same conv
    judged alone has its summation floor."""
    import copy

    import numpy as np
    import torch
    from torchvision.ops.misc import FrozenBatchNorm2d

    plain_norms = (torch.nn.BatchNorm2d, FrozenBatchNorm2d)
    if not isinstance(conv, torch.nn.Conv2d) or not _is_frozen_norm(norm) \
            or not any(isinstance(norm, base) and type(norm).forward is base.forward for base in plain_norms) \
            or hooked(norm):
        return None
    plain = _summation_floors(conv, value, pools_with_few_outputs=False)
    if plain is None:
        return None
    folded, norm64 = copy.deepcopy(conv).double(), copy.deepcopy(norm).double()
    fold_into(folded, norm64)
    fused = _summation_floors(folded, value, pools_with_few_outputs=False)
    with torch.no_grad():
        carried = plain * norm_scale(norm64).abs().numpy()
    return carried if fused is None else np.maximum(carried, fused)


def _summation_floors(module: Any, value: Any, pools_with_few_outputs: bool) -> np.ndarray | None:
    """`summation_floor` per output channel (axis 1 of the layer's output; one value for a Linear's output or an
    output of one channel), None for other layers or none to measure. With `pools_with_few_outputs`, a pool, like a
    conv, only where it gives fewer than MIN_CHANNEL_ELEMENTS outputs a channel (a global pool)."""
    import math

    import torch

    pools = (torch.nn.AdaptiveAvgPool1d, torch.nn.AdaptiveAvgPool2d, torch.nn.AvgPool1d, torch.nn.AvgPool2d)
    if not _own_forward(module):
        return None  # a subclass computing something else than the sum its weights describe bounds nothing here
    with torch.no_grad():
        if isinstance(module, pools):
            means = module(value.double().abs())
            if not means.numel() or pools_with_few_outputs and means[0, 0].numel() >= MIN_CHANNEL_ELEMENTS:
                return None
            window = value[0, 0].numel() / max(means[0, 0].numel(), 1)
            return FLOAT32_EPS * math.sqrt(window) * _per_channel_max(means)
        if isinstance(module, torch.nn.Linear):
            bias = module.bias.double().abs() if module.bias is not None else None
            terms = torch.nn.functional.linear(value.double().abs(), module.weight.double().abs(), bias)
            return FLOAT32_EPS / 2 * terms.max().reshape(1).numpy() if terms.numel() else None
        if isinstance(module, torch.nn.Conv2d) and module.padding_mode == "zeros":
            def conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
                return torch.nn.functional.conv2d(x, weight, bias, module.stride, module.padding, module.dilation,
                                                  module.groups)

            shape = conv(value.to("meta"), module.weight.to("meta"), None).shape  # the shape alone, computing nothing
            if math.prod(shape[2:]) >= MIN_CHANNEL_ELEMENTS:  # many outputs a channel: their own spread is the floor
                return None
            terms = conv(value.double().abs(), module.weight.double().abs(),
                         module.bias.double().abs() if module.bias is not None else None)
            return FLOAT32_EPS / 2 * _per_channel_max(terms) if terms.numel() else None
    return None


def _own_forward(module: Any) -> bool:
    """Whether `module` computes what its class in torch computes: a subclass that overrides `forward` (a Linear
    whose forward scales, or ignores, its weights) may hold weights and inputs that bound nothing it returns, so
    its summation floor would be one the model chose for itself."""
    import torch

    bounded = (torch.nn.AdaptiveAvgPool1d, torch.nn.AdaptiveAvgPool2d, torch.nn.AvgPool1d, torch.nn.AvgPool2d,
               torch.nn.Linear, torch.nn.Conv2d)
    if hooked(module):
        return False
    if isinstance(module, torch.nn.Conv2d) and type(module)._conv_forward is not torch.nn.Conv2d._conv_forward:
        return False  # Conv2d.forward computes through _conv_forward: overriding it is another forward (hunt 21b)
    return any(isinstance(module, base) and type(module).forward is base.forward for base in bounded)


def hooked(module: Any) -> bool:
    """Whether a forward hook of the model's own (on the module, or global) may make the module return another tensor
    than its class computes (`register_forward_hook(lambda m, i, o: o * 1e-4)`; hunt 21b): the layer verdict's own
    hooks are removed before any floor is measured."""
    from torch.nn.modules import module as torch_module

    return bool(getattr(module, "_forward_hooks", None) or getattr(module, "_forward_pre_hooks", None)
                or torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks)


def _per_channel_max(values: torch.Tensor) -> np.ndarray:
    """The largest value of each channel (axis 1) of a layer's float64 output, over every other axis."""
    flat = values.transpose(0, 1).reshape(values.shape[1], -1) if values.dim() > 1 else values.reshape(1, -1)
    return flat.amax(dim=1).numpy()


def summed_outputs(artifact: Artifact, feed: dict[str, np.ndarray], outputs: Mapping[str, np.ndarray] | None = None
                   ) -> dict[str, float | np.ndarray]:
    """Each output of a user's model that a layer summing few values computes directly (its head: a Linear, a conv
    or an average pool with fewer than MIN_CHANNEL_ELEMENTS outputs a channel, as on a 1x1 map), with that layer's
    summation floor on this input (`summation_floor`), per output channel where the output has channels (an array;
    a float otherwise): another runtime sums in another order, and on the few values of a head the one float32 run
    measured is no estimate of that (a correct dynamo ONNX export of a model ending in Linear(256, 10) failed at
    6.0x its floor on one input: hunt 16b; one ending in a global pool and a 1x1 Conv2d(512, 10), 5.4x: hunt 17a).
    A head the model maps in place afterwards keeps the bound scaled by a scale (`_kept`), or carried through any
    other map by the float64 model run with the head's values moved by it (`_mapped_bound`: four more runs, only there).
    {} for a file, a registered backbone or a model without such a layer. Runs the float32 model once more, on a
    copy of the feed, unless its float32 `outputs` on that feed show no output can be such a head (no Linear in the
    model, and every output with at least MIN_CHANNEL_ELEMENTS values a channel, as a backbone's feature maps)."""
    import numpy as np
    import torch

    from verify.runtimes.torch_common import output_tensors

    built = artifact.built
    if built is None or getattr(built.spec, "registered", True) or len(feed) != 1:
        return {}
    model = built.model
    summing = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.AdaptiveAvgPool1d, torch.nn.AdaptiveAvgPool2d,
               torch.nn.AvgPool1d, torch.nn.AvgPool2d)  # what `_summation_floors` bounds
    heads = [m for m in model.modules() if isinstance(m, summing)]
    if not heads:
        return {}
    many = [np.ndim(value) >= 3 and math.prod(np.shape(value)[2:]) >= MIN_CHANNEL_ELEMENTS
            for value in (outputs or {}).values()]
    if outputs is not None and all(many) and not any(isinstance(m, torch.nn.Linear) for m in heads):
        return {}  # a conv's or pool's few values a channel would show in the outputs' own shapes
    if torch.nn.modules.module._global_forward_hooks:
        return {}  # a model's global hook may replace what a layer returns before this one sees it
    made: dict[int, tuple[Any, Any, Any, Any, int]] = {}
    calls: dict[int, int] = {}

    def hook(module, args, output):
        calls[id(module)] = call = calls.get(id(module), 0) + 1
        if isinstance(output, torch.Tensor) and args and isinstance(args[0], torch.Tensor):
            # the layer's own value, kept: a model that changes it in place afterwards (`logits /= 1000`,
            # `y.sigmoid_()`) returns the same tensor holding other values than the ones this layer's sums bound
            made[id(output)] = (output, module, args[0].detach().double(), output.detach().clone(), call)

    # first of the layer's hooks, so that a model's own hook replacing the output leaves another tensor returned
    handles = [m.register_forward_hook(hook, prepend=True) for m in heads]
    try:
        with torch.inference_mode():  # as the runtimes run it: a model keeping a tensor it made there updates it here
            result = model(torch.from_numpy(next(iter(feed.values())).copy()))
    finally:
        for handle in handles:
            handle.remove()
    check = getattr(built, "float64_calls", None)
    if check is not None and check.difference is None:  # this float32 run bounds the floor too (hunt 25a)
        from verify.runtimes.torch_common import to_numpy_outputs

        check.difference = check.float32_difference(next(iter(feed.values())), to_numpy_outputs(
            result, artifact.meta.output_names), "in the run that bounds its heads' sums", unheld=False)
    bounds: dict[str, float | np.ndarray] = {}
    for name, tensor in output_tensors(result, artifact.meta.output_names):
        found = made.get(id(tensor))
        if found is None or found[0] is not tensor:
            continue
        scale = _kept(found[3], tensor)
        channels = _summation_floors(found[1], found[2], pools_with_few_outputs=True)
        if channels is None or not (channels > 0).any():
            continue
        if scale is None:  # mapped in place otherwise (`y.sigmoid_()`, `y.clamp_(-1, 1)`): measure how it moves
            channels = _mapped_bound(artifact, feed, name, found[1], found[4], channels)
            if channels is None or not (channels > 0).any():
                continue
        else:
            channels = channels * scale
        by_channel = channelled(tensor.shape) and channels.shape == (tensor.shape[CHANNEL_AXIS],)
        bounds[name] = channels if by_channel else float(channels.max())
    return bounds


MAPPED_RUNS_SEED = 0
"""The seed of the signs `_mapped_bound` moves a head's values by (fixed: the same floor on every run)."""


def _mapped_bound(artifact: Artifact, feed: dict[str, np.ndarray], name: str, head: Any, call: int,
                  channels: np.ndarray) -> np.ndarray | None:
    """The summation bound `channels` (per channel of the head's output, or one value) of a head whose tensor the
    model then maps in place by something other than a scale (`y.sigmoid_()`, `y.add_(b)`, `y.clamp_(lo, hi)`), as it
    reaches output `name`: the float64 model run with that call of the head moving each value by +-its bound (random
    signs), and per element the smaller of the two moves of the output (0 where the map drops the layer's values:
    `y.mul_(0).add_(z)`; the bound x the slope where it is elementwise and smooth). None where the float64 model
    cannot be run so, or is not deterministic: the output keeps its measured floor. Per channel of the output where it
    has channels (as `summed_outputs`), else one value."""
    import numpy as np
    import torch

    from verify.runtimes.torch_common import output_tensors

    built = artifact.built
    model = built.model
    path = next((n for n, m in model.named_modules() if m is head), None)
    try:
        model64 = built.float64() if hasattr(built, "float64") else None
        if model64 is None:
            import copy

            model64 = copy.deepcopy(model).double()
        head64 = model64.get_submodule(path) if path is not None else None
    except Exception:  # noqa: BLE001 - no float64 model to run: no bound
        return None
    if head64 is None:
        return None
    x = torch.from_numpy(next(iter(feed.values())).copy()).double()
    state: dict[str, Any] = {"sign": 0.0, "call": 0}

    def move(module, args, output):
        state["call"] += 1
        if state["sign"] == 0.0 or state["call"] != call or not isinstance(output, torch.Tensor) \
                or not output.is_floating_point():
            return None
        bound = torch.as_tensor(channels, dtype=output.dtype)
        if output.dim() > 1 and bound.numel() == output.shape[1]:
            bound = bound.reshape(1, -1, *[1] * (output.dim() - 2))
        else:
            bound = bound.max()
        generator = torch.Generator().manual_seed(MAPPED_RUNS_SEED)  # the same signs up and down
        signs = torch.randint(0, 2, output.shape, generator=generator).to(output.dtype) * 2 - 1
        return output + state["sign"] * signs * bound

    def run(sign: float) -> np.ndarray | None:
        state.update(sign=sign, call=0)
        with torch.inference_mode():
            result = model64(x.clone())
        found = dict(output_tensors(result, artifact.meta.output_names)).get(name)
        return None if not isinstance(found, torch.Tensor) else found.detach().double().numpy().copy()

    handle = head64.register_forward_hook(move, prepend=True)
    try:
        base, again, up, down = run(0.0), run(0.0), run(1.0), run(-1.0)
    except Exception:  # noqa: BLE001 - the model refuses to run so: no bound
        return None
    finally:
        handle.remove()
    runs = (base, again, up, down)
    if any(r is None or r.shape != runs[0].shape for r in runs) or not np.array_equal(base, again, equal_nan=True):
        return None  # not one function of its input (a random op): no move can be read from it
    with np.errstate(invalid="ignore"):
        moved = np.minimum(np.abs(up - base), np.abs(down - base))
    moved = np.where(np.isfinite(moved), moved, 0.0)
    if channelled(moved.shape):
        return _per_channel_max(torch.from_numpy(moved))
    return np.asarray([moved.max(initial=0.0)])


def _kept(made: torch.Tensor, returned: torch.Tensor) -> float | None:
    """How much of the values a head layer made the tensor the model returns still holds, as the factor its summation
    floor scales by: 1 where each element is the layer's or zero (an in-place ReLU after the head,
    `F.relu(y, inplace=True)`, moves no value the bound is for), |c| where the model scaled it in place by one number
    c (`logits /= temperature`: the bound scales with it), None where it mapped it otherwise (`y.sigmoid_()`): such
    an output's bound is measured through the map (`_mapped_bound`)."""
    import torch

    if torch.equal(made, returned) or torch.equal(torch.where(returned == 0, returned, made), returned):
        return 1.0
    if not made.is_floating_point() or not made.numel():
        return None
    made64, returned64 = made.double(), returned.double()
    peak = int(made64.abs().argmax())
    if made64.reshape(-1)[peak] == 0:
        return None
    scale = float(returned64.reshape(-1)[peak] / made64.reshape(-1)[peak])
    eps = torch.finfo(made.dtype).eps
    close = (returned64 - made64 * scale).abs() <= 2 * eps * (returned64.abs() + abs(scale) * made64.abs())
    return abs(scale) if bool(close.all()) and scale != 0 else None


def lifted(floors: dict[str, NoiseFloor], bounds: Mapping[str, float | np.ndarray]) -> dict[str, NoiseFloor]:
    """`floors` with each bounded output's floor (per output, per channel, its bulk) at least its bound: one bound
    for the whole output, or one per channel (`summed_outputs`), each channel's its own and the output's their
    largest."""
    import numpy as np

    out = dict(floors)
    for name, bound in bounds.items():
        floor = out.get(name)
        if floor is None:
            continue
        each = np.asarray(bound, dtype=np.float64).reshape(-1)
        if each.size != 1 and (floor.channels is None or each.shape != floor.channels.shape):
            each = np.asarray([each.max()])  # a per-channel bound where the floor has no such channels
        groups = each if floor.channels is not None else np.asarray([each.max()])
        out[name] = replace(floor, value=max(floor.value, float(each.max())),
                            channels=None if floor.channels is None else np.maximum(floor.channels, each),
                            bulk=None if floor.bulk is None else np.maximum(floor.bulk, groups))
    return out
