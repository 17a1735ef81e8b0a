"""The laned graph: a `torch.export` trace of a user's model with its norms, sums and means replaced by laned float32
code (verify/judge/lanes.py), run beside the held float32 run; its error lifts the floors (`graph_bounds`, bounded by
GRAPH_LIFT_LIMIT and GRAPH_LIFT_SCALE), merged with the heads' summation floors (`floor_bounds`, `merged_bounds`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from verify.judge.lanes import STATISTICS_LANES, _affine, _lane_normalised, inductor_lanes, inductor_sum, lane_sum
from verify.judge.measure import _error, _finite_or, _Scale
from verify.judge.noise_floor import CHANNEL_AXIS, FLOAT32_EPS, channelled
from verify.judge.summation import summed_outputs

if TYPE_CHECKING:
    import numpy as np

    from exporter.artifacts import Artifact

GRAPH_OPS = frozenset({
    "conv1d", "conv2d", "convolution", "linear", "addmm", "mm", "bmm", "matmul", "t", "add", "sub", "rsub", "mul",
    "div", "neg", "abs", "relu", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "hardtanh",
    "elu", "leaky_relu", "mish", "softplus", "clamp", "exp", "sqrt", "rsqrt", "softmax", "_softmax", "log_softmax",
    "mean", "sum", "group_norm", "layer_norm", "instance_norm", "batch_norm", "_native_batch_norm_legit_no_training",
    "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "upsample_nearest2d", "upsample_bilinear2d",
    "constant_pad_nd", "pad", "dropout", "permute", "view", "reshape", "flatten", "transpose", "contiguous", "clone",
    "alias", "detach", "cat", "stack", "split", "split_with_sizes", "chunk", "slice", "select", "squeeze",
    "unsqueeze", "expand", "unflatten"})
"""The ATen operators a laned graph may hold (`laned_graph`): continuous maps of their inputs, shapes fixed at the
trace (and their in-place forms: `add_`). A comparison, a cast, a rounding, an index read from data or an operator
of the model's own would let a graph that equals the model's float32 run bit for bit answer another summation order
with another function."""


REDUCTIONS = ("group_norm", "layer_norm", "instance_norm", "sum", "mean", "adaptive_avg_pool2d")
"""The reductions a replaced graph may sum otherwise (`reduction_size`): `laned_graph` replaces all but the pool,
`inductor_graph` the sums, means and the pool to one value (hunt 29: Inductor sums it as a mean)."""


GRAPH_LIFT_LIMIT = 128.0
"""The most a laned graph's error lifts an output's floor (`graph_bounds`), as a multiple of the held float32 run's
per-output floor. The graph runs none of the model's code, but the model chose it when traced and may have seen every
feed by then: roots baked at each feed's float32 values (`k * (y - a)`, exact on the held run's values) leave the plain
run's bits untouched and answer the laned sums with anything. Measured (sweep 28b): a correct layer_norm over C, H, W
needs more than 64 at 224 px (its 256 px second shape failed at 5.1x under 64, passes at 2.6x under 128); a 0.1 %
one-channel weight error after a GroupNorm is 2093x its lifted floor at 32 px: on a floor lifted this far, still 16x,
beyond AUTO_FACTOR (5). The flat cap alone was the model's to reach (review 27): `GRAPH_LIFT_SCALE` bounds it too."""


GRAPH_LIFT_SCALE = 1 / 128
"""The most a laned graph's error lifts an output's floor, in ulps of max|output| per STATISTICS_LANES elements of
the graph's largest replaced reduction (`graph_bounds`): one lane of n / 8 sequential float32 adds rounds at most
n / 8 ulps of its terms. A bound from the graph's shapes, not from its values: a model that cancels large terms in a
small sum (`[M, -M, c / 2, c / 2]` over 16 rows: exact in torch's order and float64, ulp(M) off in lanes) reached the
flat cap, 128x its held floor, where a 0.01 % one-channel weight error passed at 2.6x (review 27); that sum now lifts
at most 1/64 ulp (the bug: 578x). Measured: a correct GroupNorm(1, 64) or layer_norm over C, H, W needs 4e-4 to
7e-4 ulps per 8 elements at 32-96 px, 1.3e-3 at 224 px (150x its held floor, capped at 128x): a margin of 6x. Left:
n is the graph's own, so a model that also sums 2**20 elements (a 1024 x 1024 expand times 0) gets the flat cap back
at 32 px."""


def laned_graph(artifact: Artifact, feed: dict[str, np.ndarray]) -> tuple[Any, Any] | None:
    """(plain, laned): `torch.export` graphs of a user's model, the second with each GroupNorm, LayerNorm,
    InstanceNorm (batch statistics), sum and mean computed by the laned float32 code (`lanes.lane_sum`) on the
    same inputs. The graph runs no Python of the model's, so unlike `laned_float32` nothing the model computes can
    tell the laned run from its own: `graph_bounds` may lift floors beyond the held run. None for a registered
    backbone (no trace: it pays nothing), a file, a model torch.export cannot trace, with no such reduction, or with
    an operator outside GRAPH_OPS."""
    return _replaced_graph(artifact, feed, _laned_ops(), GRAPH_MIN_REDUCTION, STATISTICS_LANES)


def inductor_graph(artifact: Artifact, feed: dict[str, np.ndarray]) -> tuple[Any, Any] | None:
    """(plain, modelled): as `laned_graph`, the second computing the model's convolutions on channels-last inputs
    and weights and its sums and means in Inductor's order (`lanes.inductor_sum`), as an AOTInductor package compiled
    for the CPU computes them: Inductor makes every conv graph channels-last where oneDNN runs (`decide_layout_opt`),
    so a spatial mean after a conv is one sequential float32 accumulator per channel, ~sqrt(n / 8) times less exact
    than ATen's cascade and than the 8-laned graph (aoti46: a correct conv + mean(2, 3) + Linear head failed its AOTI
    file at 6.7x). Traced at any reduction size (the AOTI export pays a trace and a compile anyway). Norms are left
    to ATen: Inductor's Welford statistics are not modelled. None where `laned_graph` gives none, for every reason
    but the size."""
    return _replaced_graph(artifact, feed, _inductor_ops(), 2, 1)


def _replaced_graph(artifact: Artifact, feed: dict[str, np.ndarray], ops: dict[Any, Callable[..., Any]],
                    least: int, lanes: int) -> tuple[Any, Any] | None:
    """(plain, replaced): the model's `torch.export` graph, and a copy with `ops` replaced, where one of its
    reductions sums at least `least` elements (`laned_graph`, `inductor_graph`); `lanes` accumulators share each
    replaced reduction at most (`reduced_size` per lane: GRAPH_LIFT_SCALE)."""
    import copy
    import warnings

    import torch

    built = artifact.built
    if built is None or getattr(built.spec, "registered", True) or len(feed) != 1:
        return None
    example = torch.from_numpy(next(iter(feed.values())).copy())
    names = {target._overloadpacket.__name__ for target in ops} & set(REDUCTIONS)
    if largest_reduction(built.model, example, names) < least:  # no trace (1.5 s in a fresh process) for it
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plain = torch.export.export(copy.deepcopy(built.model).float().eval(), (example,), strict=False).module()
        laned = copy.deepcopy(plain)
    except Exception:  # noqa: BLE001 - a model torch.export cannot trace keeps the capped sample
        return None
    nodes = [n for n in laned.graph.nodes if n.op == "call_function"]
    replaced = [n for n in nodes if n.target in ops and n.target._overloadpacket.__name__ in names]
    if not replaced or not all(_graph_op(n.target) for n in nodes) or not _plain_tensors(plain):
        return None
    sizes = [_reduced_size(n) for n in replaced]
    if max(sizes, default=0) < least:
        return None
    for node in nodes:
        node.target = ops.get(node.target, node.target)
    laned.recompile()
    laned.reduced_size = max(sizes) * STATISTICS_LANES // lanes  # read by `graph_bounds`: GRAPH_LIFT_SCALE
    return plain, laned


GRAPH_MIN_REDUCTION = 8192
"""The fewest elements one output of a norm, sum or mean must reduce for `laned_graph` to trace a model. Below it the
capped laned copy (`laned_float32`) is the sample, as before sweep 28b: every correct model sweep 28b measured that
needed the graph reduced 65536 elements (GroupNorm(1, 64), layer_norm over C, H, W at 32 px); GroupNorm(8, 64) at 32
px (8192), InstanceNorm2d, channel LayerNorms (64 to 768) and spatial means (4 to 1024) passed without it. The trace
costs about 1.5 s in a fresh process (torch.export's first call), which every user model paid, 0.06 s after: the
suite's user-model exports spent about 100 s on it (fresh-clone CI: 10:25 against 8:45). A model that hides its
reductions from this run only loses the lift."""


def largest_reduction(model: Any, example: Any, names: Collection[str] = REDUCTIONS) -> int:
    """The most elements one output of a reduction named in `names` (REDUCTIONS: the ones the graph replaces) reduces
    in one float32 run of a copy of `model` on `example` (`reduction_size` of each call, read by a TorchFunctionMode);
    0 where the run fails. A run costs far less than a trace, and only decides whether to trace: the lift itself is
    the graph's."""
    import copy

    import torch

    class Reductions(torch.overrides.TorchFunctionMode):
        largest = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            made = func(*args, **kwargs)
            given = args[0] if args else kwargs.get("input")
            try:
                name = getattr(func, "__name__", "")
                size = reduction_size(name, given, args[1] if len(args) > 1 else
                                      next((v for k, v in kwargs.items() if k != "input"), None), made) \
                    if name in names else 0
                self.largest = max(self.largest, size)
            except Exception:  # noqa: BLE001 - an argument of another form: not counted
                pass
            return made

    mode = Reductions()
    try:
        with torch.inference_mode(), mode:
            copy.deepcopy(model).float().eval()(example)
    except Exception:  # noqa: BLE001 - a model this run fails: no trace either
        return 0
    return mode.largest


def _reduced_size(node: Any) -> int:
    """The elements one output of a replaced reduction sums, from the trace's shapes (0 where they are unknown)."""
    return reduction_size(node.target._overloadpacket.__name__, node.args[0].meta.get("val"),
                          node.args[1] if len(node.args) > 1 else None, node.meta.get("val"))


def reduction_size(name: str, given: Any, second: Any, made: Any) -> int:
    """The elements one output of a group_norm / layer_norm / instance_norm / sum / mean / adaptive_avg_pool2d reduces:
    from its input `given`, its second argument (groups, normalized shape) and its output `made` (0 for any other op,
    or where they are not tensors). Read alike from a traced node (`_reduced_size`) and from a call
    (`largest_reduction`)."""
    import math

    import torch

    if name not in REDUCTIONS \
            or not isinstance(given, torch.Tensor) or not isinstance(made, torch.Tensor) or not given.dim():
        return 0
    shape = tuple(int(d) for d in given.shape)
    if name == "group_norm":
        return math.prod(shape[1:]) // max(int(second), 1)
    if name == "layer_norm":
        return math.prod(int(d) for d in second)
    if name == "instance_norm":
        return math.prod(shape[2:])
    return math.prod(shape) // max(made.numel(), 1)


def _graph_op(target: Any) -> bool:
    import operator

    import torch

    return target is operator.getitem or isinstance(target, torch._ops.OpOverload) \
        and target.namespace == "aten" and target._overloadpacket.__name__.rstrip("_") in GRAPH_OPS  # add_ too


def _plain_tensors(module: Any) -> bool:
    """Every weight, buffer and constant of the graph a plain tensor: a subclass's `__torch_function__` is Python
    of the model's, run in the graph."""
    import torch

    tensors = [*module.parameters(), *module.buffers()]
    tensors += [getattr(module, n.target) for n in module.graph.nodes if n.op == "get_attr" and "." not in n.target
                and hasattr(module, n.target)]
    return all(type(t) in (torch.Tensor, torch.nn.Parameter) for t in tensors if isinstance(t, torch.Tensor))


def graph_bounds(graph: tuple[Any, Any] | None, artifact: Artifact, feed: dict[str, np.ndarray],
                 fp32: Mapping[str, np.ndarray], fp64: Mapping[str, np.ndarray]) -> dict[str, float | np.ndarray]:
    """Each output's error against float64 in the laned graph's float32 run (`laned_graph`), per channel where it has
    channels, at most GRAPH_LIFT_LIMIT x the held run's floor: floors are lifted to it (`lifted`), as to a head's
    summation floor. Only where the plain graph's float32
    run is `fp32` (the held run) bit for bit on this feed, so the laned one is the model's function summed otherwise;
    {} where it is not, where no graph was made, or where torch's function or dispatch modes are on (Python that sees
    every operator)."""
    import numpy as np
    import torch

    from verify.runtimes.torch_common import to_numpy_outputs

    if graph is None or _modes_on():
        return {}
    names = artifact.meta.output_names
    x = torch.from_numpy(next(iter(feed.values())).copy())
    try:
        with torch.inference_mode():
            plain = to_numpy_outputs(graph[0].forward(x.clone()), names)  # forward: no module hook runs
            if set(plain) != set(fp32) or not all(_same_bits(plain[k], fp32[k]) for k in plain):
                return {}
            laned = to_numpy_outputs(graph[1].forward(x.clone()), names)
    except Exception:  # noqa: BLE001 - a graph that does not run on this feed lifts nothing
        return {}
    bounds: dict[str, float | np.ndarray] = {}
    for name, ref in fp64.items():
        run = laned.get(name)
        if run is None or run.shape != ref.shape or not np.issubdtype(run.dtype, np.floating) or not ref.size:
            continue
        ref = ref.astype(np.float64)
        err = np.minimum(_error(run, ref), _lift_limit(graph[1], fp32.get(name), ref))
        by_channel = channelled(err.shape)
        bounds[name] = np.moveaxis(err, CHANNEL_AXIS, 0).reshape(err.shape[1], -1).max(axis=1) if by_channel \
            else float(err.max())
    return bounds


def _lift_limit(laned: Any, run: np.ndarray | None, ref: np.ndarray) -> float:
    """The most the laned graph lifts an output's floor: GRAPH_LIFT_LIMIT x its held floor, and GRAPH_LIFT_SCALE
    ulps of max|output| per STATISTICS_LANES elements of the graph's largest replaced reduction, the smaller."""
    import numpy as np

    per_lane = getattr(laned, "reduced_size", 0) / STATISTICS_LANES
    scale = GRAPH_LIFT_SCALE * per_lane * FLOAT32_EPS * float(np.abs(_finite_or(ref, 0.0)).max(initial=0.0))
    return min(GRAPH_LIFT_LIMIT * _held_floor(run, ref), scale)


def _held_floor(run: np.ndarray | None, ref: np.ndarray) -> float:
    """The held float32 run's per-output floor (`_Scale.floor`'s `value`), 0 where it has no such output."""
    if run is None or run.shape != ref.shape:
        return 0.0
    return _Scale(ref, "fp32").floor([_error(run, ref)])[0]


def floor_bounds(artifact: Artifact, feed: dict[str, np.ndarray], fp32: Mapping[str, np.ndarray],
                 fp64: Mapping[str, np.ndarray], inductor: bool = False) -> dict[str, float | np.ndarray]:
    """What each output's floor on `feed` is lifted to (`lifted`): its head's summation floor (`summed_outputs`) and
    the laned graph's error (`graph_bounds`, traced at this feed's shape), the larger of the two; with `inductor` (a
    file compiled by Inductor is judged) the error of the graph in Inductor's order too (`inductor_graph`). For a
    floor measured off the oracle's own inputs (a dynamic file's second shape: verify/pipeline/stages.py)."""
    modelled = graph_bounds(inductor_graph(artifact, feed), artifact, feed, fp32, fp64) if inductor else {}
    return merged_bounds(summed_outputs(artifact, feed, fp32),
                         graph_bounds(laned_graph(artifact, feed), artifact, feed, fp32, fp64), modelled)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    import numpy as np

    return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a.view(np.uint8), b.view(np.uint8)))


def _modes_on() -> bool:
    """A torch function or dispatch mode is on: a model's Python that every operator of the graph would call."""
    import torch
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    return bool(torch.overrides._get_current_function_mode_stack() or _get_current_dispatch_mode_stack())


def merged_bounds(*bounds: Mapping[str, float | np.ndarray]) -> dict[str, float | np.ndarray]:
    """The larger of several bounds of each output (`summed_outputs`, `graph_bounds`), per channel where both have
    the same channels, else their largest value."""
    import numpy as np

    out: dict[str, float | np.ndarray] = {}
    for each in bounds:
        for name, bound in each.items():
            if name not in out:
                out[name] = bound
                continue
            a, b = np.asarray(out[name], dtype=np.float64), np.asarray(bound, dtype=np.float64)
            out[name] = np.maximum(a, b) if a.shape == b.shape and a.ndim else float(max(a.max(), b.max()))
    return out


def _laned_ops() -> dict[Any, Callable[..., Any]]:
    """The ATen operators `laned_graph` replaces, each by its laned float32 evaluation."""
    import torch

    aten = torch.ops.aten
    return {aten.group_norm.default: _laned_group_norm, aten.layer_norm.default: _laned_layer_norm,
            aten.instance_norm.default: _laned_instance_norm, aten.sum.default: _laned_sum,
            aten.sum.dim_IntList: _laned_sum, aten.mean.default: _laned_mean, aten.mean.dim: _laned_mean}


def _laned_group_norm(x: Any, groups: int, weight: Any = None, bias: Any = None, eps: float = 1e-5, *_: Any) -> Any:
    import torch

    if x.dtype != torch.float32 or x.dim() < 2 or not x.numel():
        return torch.ops.aten.group_norm.default(x, groups, weight, bias, eps)
    out = _lane_normalised(x.reshape(x.shape[0], groups, -1), eps).reshape(x.shape)
    return _affine(out, weight, bias, (1, -1, *[1] * (x.dim() - 2)))


def _laned_layer_norm(x: Any, shape: Sequence[int], weight: Any = None, bias: Any = None, eps: float = 1e-5,
                      *_: Any) -> Any:
    import torch

    if x.dtype != torch.float32 or not x.numel():
        return torch.ops.aten.layer_norm.default(x, shape, weight, bias, eps)
    kept = x.dim() - len(shape)
    out = _lane_normalised(x.reshape(*x.shape[:kept], -1), eps).reshape(x.shape)
    return _affine(out, weight, bias, tuple(shape))


def _laned_instance_norm(x: Any, weight: Any, bias: Any, mean: Any, var: Any, batch_statistics: bool,
                         momentum: float, eps: float, *rest: Any) -> Any:
    import torch

    if not batch_statistics or x.dtype != torch.float32 or x.dim() < 3 or not x.numel():
        return torch.ops.aten.instance_norm.default(x, weight, bias, mean, var, batch_statistics, momentum, eps,
                                                    *rest)
    out = _lane_normalised(x.reshape(x.shape[0], x.shape[1], -1), eps).reshape(x.shape)
    return _affine(out, weight, bias, (1, -1, *[1] * (x.dim() - 2)))


def _laned_sum(x: Any, dim: Any = None, keepdim: bool = False, dtype: Any = None) -> Any:
    """aten.sum with the reduced axes summed by `lane_sum` (float32 only; torch's own sum otherwise)."""
    import torch

    if dim is not None and not isinstance(dim, (list, tuple)):
        dim, keepdim, dtype = None, False, dim  # aten.sum.default(x, dtype)
    axes = sorted({d % x.dim() for d in dim}) if dim else list(range(x.dim()))
    if x.dtype != torch.float32 or dtype not in (None, torch.float32) or not x.numel() or not axes:
        return torch.sum(x, dim=axes or None, keepdim=keepdim, dtype=dtype) if axes else torch.sum(x, dtype=dtype)
    kept = [d for d in range(x.dim()) if d not in axes]
    moved = x.permute(*kept, *axes).reshape(*[x.shape[d] for d in kept], -1)
    total = lane_sum(moved, STATISTICS_LANES).squeeze(-1)
    if keepdim:
        total = total.reshape([1 if d in axes else x.shape[d] for d in range(x.dim())])
    return total


def _laned_mean(x: Any, dim: Any = None, keepdim: bool = False, dtype: Any = None) -> Any:
    import math

    import torch

    if dim is not None and not isinstance(dim, (list, tuple)):
        dim, keepdim, dtype = None, False, dim
    axes = sorted({d % x.dim() for d in dim}) if dim else list(range(x.dim()))
    if x.dtype != torch.float32 or dtype not in (None, torch.float32) or not x.numel():
        return torch.ops.aten.mean.dim(x, axes, keepdim, dtype=dtype) if axes else torch.mean(x, dtype=dtype)
    return _laned_sum(x, axes, keepdim) / math.prod(x.shape[d] for d in axes)


def _inductor_ops() -> dict[Any, Callable[..., Any]]:
    """The ATen operators `inductor_graph` replaces: convolutions by channels-last ones, sums and means by
    `lanes.inductor_sum` at this machine's vector width."""
    import torch

    aten, lanes = torch.ops.aten, inductor_lanes()

    def summed(x: Any, dim: Any = None, keepdim: bool = False, dtype: Any = None) -> Any:
        return _ordered_sum(x, dim, keepdim, dtype, lanes)

    def mean(x: Any, dim: Any = None, keepdim: bool = False, dtype: Any = None) -> Any:
        return _ordered_mean(x, dim, keepdim, dtype, lanes)

    def pooled(x: Any, size: Sequence[int]) -> Any:
        return _ordered_pool(x, size, lanes)

    return {aten.sum.default: summed, aten.sum.dim_IntList: summed, aten.mean.default: mean, aten.mean.dim: mean,
            aten.adaptive_avg_pool2d.default: pooled, aten.conv2d.default: _channels_last_conv2d}


def _channels_last_conv2d(x: Any, weight: Any, *rest: Any) -> Any:
    """aten.conv2d on channels-last input and weight (Inductor's layout for oneDNN; other kernels, other rounding)."""
    import torch

    if x.dim() != 4 or weight.dim() != 4:
        return torch.ops.aten.conv2d.default(x, weight, *rest)
    last = torch.channels_last
    return torch.ops.aten.conv2d.default(x.contiguous(memory_format=last), weight.contiguous(memory_format=last),
                                         *rest)


def _ordered_sum(x: Any, dim: Any, keepdim: bool, dtype: Any, lanes: int) -> Any:
    """aten.sum with the reduced axes summed by `lanes.inductor_sum` (float32 only; torch's own sum otherwise)."""
    import torch

    if dim is not None and not isinstance(dim, (list, tuple)):
        dim, keepdim, dtype = None, False, dim  # aten.sum.default(x, dtype)
    axes = sorted({d % x.dim() for d in dim}) if dim else list(range(x.dim()))
    if x.dtype != torch.float32 or dtype not in (None, torch.float32) or not x.numel() or not axes:
        return torch.sum(x, dim=axes or None, keepdim=keepdim, dtype=dtype) if axes else torch.sum(x, dtype=dtype)
    total = inductor_sum(x, axes, lanes)
    if keepdim:
        total = total.reshape([1 if d in axes else x.shape[d] for d in range(x.dim())])
    return total


def _ordered_mean(x: Any, dim: Any, keepdim: bool, dtype: Any, lanes: int) -> Any:
    """`_ordered_sum` divided by the count (Inductor divides by n, it does not multiply by 1 / n)."""
    import math

    import torch

    if dim is not None and not isinstance(dim, (list, tuple)):
        dim, keepdim, dtype = None, False, dim
    axes = sorted({d % x.dim() for d in dim}) if dim else list(range(x.dim()))
    if x.dtype != torch.float32 or dtype not in (None, torch.float32) or not x.numel():
        return torch.ops.aten.mean.dim(x, axes, keepdim, dtype=dtype) if axes else torch.mean(x, dtype=dtype)
    return _ordered_sum(x, axes, keepdim, None, lanes) / math.prod(x.shape[d] for d in axes)


def _ordered_pool(x: Any, size: Sequence[int], lanes: int) -> Any:
    """aten.adaptive_avg_pool2d to one value a channel as Inductor computes it: a mean over H and W (`_ordered_mean`:
    ATen's kernel means it by cascade, Inductor in one sequential accumulator a channel after a channels-last conv;
    hunt 29: a conv + adaptive_avg_pool2d(1) failed its AOTI file at 30x). Other sizes are ATen's: both sum each window
    in sequence."""
    import torch

    if x.dim() not in (3, 4) or [int(s) for s in size] != [1, 1]:
        return torch.ops.aten.adaptive_avg_pool2d.default(x, size)
    return _ordered_mean(x, [-2, -1], True, None, lanes)
