"""The float64 reference and the noise floors it measures.

Running the eager model in float64 gives outputs whose own rounding error is ~1e-9 of float32's,
so |eager fp32 - eager fp64| is the float32 error of this model on this input: its noise floor.
At a reduced precision (TF32, bf16, fp16) the floor is |eager at that precision - eager fp64|.

Floors are per channel where an output has one (NCHW, axis 1): rounding is largest in the channels
with the largest activations, so one floor per output hides an error confined to a quiet channel.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from verify.judge.precision import EPS, describe

if TYPE_CHECKING:
    import numpy as np
    import torch

    from exporter.artifacts import Artifact
    from verify.runtimes import RuntimeOptions

FLOAT32_EPS = EPS["fp32"]
CHANNEL_AXIS = 1
"""Outputs with 4 dimensions are NCHW; their floors are per channel."""
MIN_CHANNEL_ELEMENTS = 16
"""A channel gets its own floor only with at least this many non-zero reference elements: a channel a
ReLU has (nearly) zeroed shows its rounding in a handful of elements, too few to measure it from, and
keeps its output's floor."""
CHANNEL_FLOOR_SHARE = 0.2
"""A channel's floor is at least this share of its output's floor: where a channel's elements are few or
correlated (deep layers, constant images) its own maximum underestimates its rounding. Calibrated with
bench/calibrate_auto.py (bench/results/calibrate-cpu-perchannel.log)."""
PEAK_FACTOR = 16.0
"""An element more than this many times its group's typical magnitude (a channel's, or a channel-less output's
BULK_QUANTILE of its non-zero |fp64|) is a peak: a mask value, a sentinel, a border. Its rounding (u x its
magnitude) says nothing of the other elements', so the rest of its group, the bulk, keeps a floor of its own
(`NoiseFloor.bulk`); peaks are judged on the group's floor over every element, as before. 16 is above the
spread of a normal activation (its maximum is ~3-4.5 sigma, its 90th percentile 1.6 sigma): a model without
outliers has no peak and is judged as before."""
BULK_QUANTILE = 0.9
"""The typical magnitude of a group: this quantile of its non-zero finite |fp64| (a ReLU's zeros left out); where it
falls among exact copies of the group's maximum (a mask value over a tenth or more of it), of its other elements."""

BATCH_MAX_ELEMENTS = 8 * 3 * 128 * 128
"""The float64 oracle runs the feeds as one batch only while their inputs hold at most this many values together;
larger feeds run one by one. Measured on one core (bench/oracle_batch.py, bench/results/oracle-batch-cpu.log): the
batch of 8 is 1.3-3.5x faster than 8 single runs at 32-64 px, where a run is mostly per-call overhead, and
even at 112 px; at 160-224 px its float64 activations outgrow the caches and 8 single runs take 0.63-0.88x
the batch's time on ResNets (ResNet-50 at 224 px: 1.57 s against 1.99 s), 1.17x on MobileNetV3-Large. Inside a cold
`verify export` of ResNet-50, beside its background export, the oracle stage took 5.7 s batched and 5.9 s one by
one (two rounds each): no gain measurable there, where the other core's work sets the pace."""


@dataclass(frozen=True, eq=False)
class NoiseFloor:
    """The noise floor of one output at one precision."""

    value: float
    """Per output: max |run - fp64|, at least one ulp (at this precision) of the output's scale."""
    channels: np.ndarray | None = None
    """Per channel (axis 1 of an NCHW output): max over N, H, W of |run - fp64|, at least
    max(CHANNEL_FLOOR_SHARE x `value`, one ulp of the output's scale); `value` where the channel has
    fewer than MIN_CHANNEL_ELEMENTS non-zero elements. None for outputs without channels."""
    precision: str = "fp32"
    float32: float | None = None
    """The float32 per-output floor, when `precision` is not fp32: verdicts quote both ratios."""
    rms: np.ndarray | None = None
    """Per channel: RMS of |run - fp64| (recorded for calibration and reports; verdicts use `channels`)."""
    ignored: int = 0
    """Non-finite elements left out of the measurement (a NaN in the reference itself)."""
    bulk: np.ndarray | None = None
    """Per group (each channel; one group for an output without channels): the floor of the elements at most
    `bulk_limits` in magnitude, measured on those elements alone (never above the group's floor). None where no
    element is a peak (PEAK_FACTOR): then every element is judged on the group's floor."""
    bulk_limits: np.ndarray | None = None
    """Per group: the magnitude up to which an element is judged on `bulk` (PEAK_FACTOR x its typical magnitude)."""

    def __post_init__(self) -> None:
        """Fail closed: a floor of zero, NaN or Inf (a tampered manifest, a bad caller) judges nothing."""
        import numpy as np

        from exporter.errors import UsageError

        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)) \
                or not (math.isfinite(self.value) and self.value > 0):
            raise UsageError(f"A noise floor must be a finite number > 0, got {self.value!r}")
        if self.channels is not None and not (np.isfinite(self.channels).all() and (self.channels > 0).all()):
            raise UsageError("Per-channel noise floors must be finite numbers > 0")
        if self.precision not in EPS:
            raise UsageError(f"Unknown precision {self.precision!r} for a noise floor; use one of {', '.join(EPS)}")
        if (self.bulk is None) != (self.bulk_limits is None) or self.bulk is not None and not (
                self.bulk.shape == self.bulk_limits.shape == (self.groups,)
                and np.isfinite(self.bulk).all() and (self.bulk > 0).all()
                and (self.bulk <= self.group_floors * (1 + 1e-12)).all()
                and np.isfinite(self.bulk_limits).all() and (self.bulk_limits >= 0).all()):
            raise UsageError("Bulk noise floors must come with their limits, one per channel (or one per output), "
                             "finite, > 0 and at most the channel's floor")

    @property
    def groups(self) -> int:
        """How many groups the floor has: its channels, or 1 (the whole output)."""
        return 1 if self.channels is None else int(self.channels.shape[0])

    @property
    def group_floors(self) -> np.ndarray:
        """Each group's floor over all its elements: `channels`, or `value` as one group."""
        import numpy as np

        return np.asarray([self.value]) if self.channels is None else self.channels

    def in_bulk(self, magnitude: np.ndarray) -> np.ndarray | None:
        """Where `magnitude` (an output's shape) is within its group's bulk limit; None without a bulk floor or where
        the shape does not fit the groups. NaN is not in the bulk."""
        if self.bulk is None or not magnitude.size:
            return None
        if self.channels is not None:
            if magnitude.ndim != 4 or magnitude.shape[CHANNEL_AXIS] != self.groups:
                return None
            return magnitude <= self.bulk_limits.reshape(1, -1, 1, 1)
        return magnitude <= self.bulk_limits.reshape((1,) * magnitude.ndim)

    def element_floors(self, actual: np.ndarray, desired: np.ndarray) -> np.ndarray | None:
        """Each element's floor where the bulk rule applies (`bulk`), in the outputs' shape; None where it does not
        (no peak was measured, or the shape does not fit: the caller uses the group floors). An element is judged
        on its group's bulk floor when the smaller of its two magnitudes is within the group's limit: a side that
        drops a peak is judged on the tighter floor, never a side that invents one."""
        import numpy as np

        if self.bulk is None or actual.shape != desired.shape:  # no peak: no per-element work (every comparison)
            return None
        with np.errstate(invalid="ignore"):
            magnitude = np.minimum(np.abs(actual.astype(np.float64)), np.abs(desired.astype(np.float64)))
            mask = self.in_bulk(magnitude)
        if mask is None:
            return None
        shape = (1, -1, 1, 1) if self.channels is not None else (1,) * magnitude.ndim
        return np.where(mask, self.bulk.reshape(shape), self.group_floors.reshape(shape))

    @classmethod
    def of(cls, value: NoiseFloor | float | None) -> NoiseFloor | None:
        """Accept a plain per-output float (manifests record those) as a floor without channels."""
        if value is None or isinstance(value, NoiseFloor):
            return value
        return cls(float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | float) -> NoiseFloor:
        """Read back `to_dict()`, or a plain per-output float (what older manifests record); anything
        malformed (a null, a NaN, a string) is refused rather than judged against."""
        import numpy as np

        from exporter.errors import UsageError

        if not isinstance(data, dict):
            return cls.of(data)
        try:
            channels = data.get("channels")
            if channels is not None:
                if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in channels):
                    raise TypeError("channels")
                channels = np.asarray(channels, dtype=np.float64)
            float32 = data.get("float32")
            bulk, limits = (_numbers(data.get(key)) for key in ("bulk", "bulk_limits"))
            return cls(data["value"], channels, data.get("precision", "fp32"),
                       None if float32 is None else float(float32), bulk=bulk, bulk_limits=limits)
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"Malformed noise floor record ({exc}); re-export the artifact") from None

    def channel_floor(self, channel: int | None) -> float:
        return self.value if channel is None or self.channels is None else float(self.channels[channel])

    def combine(self, other: NoiseFloor | None) -> NoiseFloor:
        """The larger floor of two measurements, channel by channel where both have channels."""
        import numpy as np

        if other is None:
            return self
        channels = None
        if self.channels is not None and other.channels is not None and self.channels.shape == other.channels.shape:
            channels = np.maximum(self.channels, other.channels)
        bulk = limits = None
        if (channels is not None or self.channels is None and other.channels is None) \
                and (self.bulk is not None or other.bulk is not None):
            # the larger bulk floor, up to the smaller limit: an element either measurement called a peak is judged
            # on the larger group floor (a floor without peaks is a bulk floor reaching every magnitude)
            sides = [(f.bulk, f.bulk_limits) if f.bulk is not None else (f.group_floors, None) for f in (self, other)]
            bulk = np.maximum(sides[0][0], sides[1][0])
            limits = np.minimum(*[lim for _, lim in sides if lim is not None]) if all(
                lim is not None for _, lim in sides) else next(lim for _, lim in sides if lim is not None)
        float32 = max((f.value if f.precision == "fp32" else f.float32 for f in (self, other)
                       if f.precision == "fp32" or f.float32 is not None), default=None)
        precision = max(self.precision, other.precision, key=lambda p: EPS.get(p, 0.0))  # the coarser one
        return replace(self, value=max(self.value, other.value), channels=channels, precision=precision,
                       float32=float32 if precision != "fp32" else None, rms=None,
                       ignored=self.ignored + other.ignored, bulk=bulk, bulk_limits=limits)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: every number finite, or null with the reason beside it."""
        data: dict[str, Any] = {"value": _finite(self.value), "precision": self.precision}
        if self.float32 is not None:
            data["float32"] = _finite(self.float32)
        if self.channels is not None:
            data["channels"] = [_finite(v) for v in self.channels.tolist()]
            worst = int(self.channels.argmin())
            data["quietest_channel"] = {"channel": worst, "floor": _finite(float(self.channels[worst]))}
        if self.bulk is not None:
            data["bulk"] = [_finite(v) for v in self.bulk.tolist()]
            data["bulk_limits"] = [_finite(v) for v in self.bulk_limits.tolist()]
        if self.ignored:
            data["ignored_nonfinite"] = self.ignored
        nulls = [k for k, v in data.items() if v is None] + \
            [k for k in ("channels", "bulk", "bulk_limits") if None in (data.get(k) or [])]
        if nulls:
            data["null_reason"] = f"{', '.join(nulls)}: not finite (a NaN or Inf in the measurement)"
        return data

    def describe(self) -> str:
        return f"{describe(self.precision)} noise floor"


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _numbers(values: Any) -> np.ndarray | None:
    """A list of plain numbers as a float64 array (None for None); anything else is refused (TypeError)."""
    import numpy as np

    if values is None:
        return None
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise TypeError("bulk")
    return np.asarray(values, dtype=np.float64)


def measure_floor(run: np.ndarray, fp64: np.ndarray, precision: str = "fp32", float32: float | None = None,
                  samples: Sequence[np.ndarray] = ()) -> NoiseFloor | None:
    """The floor of one output: `run` (at `precision`) against its float64 reference. `samples` are
    other valid evaluations at the same precision (e.g. with norms folded into convolutions): their
    rounding joins the channel floors, which never exceed the per-output floor of `run`."""
    import numpy as np

    if run.shape != fp64.shape or fp64.size == 0:
        return None
    ref = fp64.astype(np.float64)
    err = _error(run, ref)
    if not (np.issubdtype(run.dtype, np.floating) and np.issubdtype(fp64.dtype, np.floating)):
        # an index or a mask is judged exactly (verify/judge/compare.py DISCRETE_NOTE), its flips in the pairs: as a
        # floor one flip was a whole index, refused as "not a noise floor; is the model random?" (sweep 27b)
        err = np.zeros_like(err)
    ignored = int((~np.isfinite(run.astype(np.float64) - ref)).sum())
    scale = _Scale(ref, precision)
    errors = [err] + ([_error(s, ref) for s in samples if s.shape == ref.shape] if scale.by_channel else [])
    value, channels = scale.floor(errors)
    if channels is not None:
        rms = np.sqrt((err ** 2).mean(axis=scale.axes))
        floor = NoiseFloor(value, channels, precision, float32, rms, ignored)
        return _with_bulk(floor, scale.magnitude, errors, scale.axes, scale.active) or floor
    floor = NoiseFloor(value, None, precision, float32, None, ignored)
    return _with_bulk(floor, scale.magnitude, [err], tuple(range(ref.ndim)), None) or floor


class _Scale:
    """What a floor's bounds read from the float64 reference alone (its magnitude, one ulp of its scale, each
    channel's non-zero count): measured once for every evaluation judged against it."""

    def __init__(self, ref: np.ndarray, precision: str) -> None:
        import numpy as np

        self.precision = precision
        self.magnitude = _finite_or(np.abs(ref), 0.0)
        self.ulp = EPS[precision] * float(self.magnitude.max(initial=0.0))
        self.by_channel = ref.ndim == 4 and ref.shape[CHANNEL_AXIS] > 1
        self.axes = tuple(a for a in range(ref.ndim) if a != CHANNEL_AXIS)
        self.active = np.count_nonzero(self.magnitude, axis=self.axes) if self.by_channel else None

    def floor(self, errors: Sequence[np.ndarray]) -> tuple[float, np.ndarray | None]:
        """(per-output floor, per-channel floors) of the first error, the others (samples) joining the channels:
        NoiseFloor's `value` and `channels` rules."""
        import numpy as np

        value = max(float(errors[0].max(initial=0.0)), self.ulp) or EPS[self.precision]
        if not self.by_channel:
            return value, None
        own = np.max([e.max(axis=self.axes) for e in errors], axis=0)
        least = max(CHANNEL_FLOOR_SHARE * value, self.ulp, np.finfo(np.float64).tiny)
        return value, np.where(self.active >= MIN_CHANNEL_ELEMENTS, np.clip(own, least, value), value)


def worst_floor(runs: Sequence[np.ndarray], fp64: np.ndarray) -> NoiseFloor | None:
    """The float32 floor of several valid evaluations of one output, each measured as `measure_floor` measures it
    alone: the largest per-output floor and, per channel, the largest channel floor. Only what a verdict reads
    (`value`, `channels`): no RMS and no bulk, and the reference's magnitude read once for all (a layer verdict
    measures this for every layer of a model)."""
    import numpy as np

    runs = [run for run in runs if run.shape == fp64.shape]
    if not runs or fp64.size == 0:
        return None
    ref = np.asarray(fp64, dtype=np.float64)  # read only: no copy of a float64 reference
    scale = _Scale(ref, "fp32")
    floors = [scale.floor([_error(run, ref)]) for run in runs]
    channels = [c for _, c in floors if c is not None]
    return NoiseFloor(max(v for v, _ in floors), np.maximum.reduce(channels) if channels else None)


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
        by_channel = tensor.dim() == 4 and tensor.shape[CHANNEL_AXIS] > 1 and channels.shape == (tensor.shape[1],)
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
    if moved.ndim == 4 and moved.shape[CHANNEL_AXIS] > 1:
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


def _typical(rows: np.ndarray) -> np.ndarray:
    """Each row's typical magnitude: the BULK_QUANTILE of its non-zero elements (numpy's linear quantile), NaN
    with fewer than MIN_CHANNEL_ELEMENTS of them. One sort of all rows (a loop of np.quantile is 10-100x slower)."""
    import numpy as np

    ordered = np.sort(rows, axis=1)  # magnitudes: the zeros come first
    count = (rows != 0).sum(axis=1)
    position = BULK_QUANTILE * np.maximum(count - 1, 0)  # among the non-zero elements, as `_no_peak` counts them
    below = np.floor(position)
    low = np.minimum(rows.shape[1] - count + below.astype(np.intp), rows.shape[1] - 1)  # a row of zeros: NaN below
    high = np.minimum(low + 1, rows.shape[1] - 1)
    share = position - below
    index = np.arange(rows.shape[0])
    a, b = ordered[index, low], ordered[index, high]
    # numpy's own interpolation (`_lerp`): never below `a`, so a row whose quantile is a tie of x stays <= 16x
    typical = np.where(share >= 0.5, b - (b - a) * (1 - share), a + (b - a) * share)
    return np.where(count >= MIN_CHANNEL_ELEMENTS, typical, np.nan)


def _no_peak(rows: np.ndarray) -> np.ndarray:
    """Per row, True where no element can exceed PEAK_FACTOR x the row's typical magnitude (`_typical`): at least as
    many elements are within 1/PEAK_FACTOR of the row's maximum as lie at or above its quantile's lower index, so
    the quantile itself is. A sufficient test (False may still have no peak), one pass instead of a sort."""
    import numpy as np

    top = rows.max(axis=1, initial=0.0)
    return _loud_enough(rows, top, _need(np.count_nonzero(rows, axis=1)))


def _need(count: np.ndarray) -> np.ndarray:
    """How many of a row's `count` non-zero elements lie at or above its quantile's lower index."""
    import numpy as np

    return count - np.floor(BULK_QUANTILE * np.maximum(count - 1, 0))


def _loud_enough(rows: np.ndarray, top: np.ndarray, need: np.ndarray) -> np.ndarray:
    """`_no_peak` with each row's maximum and `_need` given."""
    import numpy as np

    least = top / PEAK_FACTOR  # rounds below float64's normal range: then the next float up, so 16 x least >= top
    least = np.where(least * PEAK_FACTOR < top, np.nextafter(least, np.inf), least)
    return (np.count_nonzero(rows >= least[:, None], axis=1) >= need) | (top == 0)


def _no_peak_nor_mask(flat: np.ndarray, rows: np.ndarray) -> bool:
    """Every row of `rows` (and `flat`, the same elements as one row) passes `_no_peak` and has no `_mask_value`:
    then `_typical_below_mask` is `_typical` and no element is a peak. One pass fewer than both tests on both."""
    import numpy as np

    top = rows.max(axis=1, initial=0.0)
    count = np.count_nonzero(rows, axis=1)
    need = _need(count)
    ties = np.count_nonzero(rows == top[:, None], axis=1)
    if ((top > 0) & (ties >= need)).any() or not _loud_enough(rows, top, need).all():
        return False
    if flat is rows:
        return True
    whole = top.max(initial=0.0)
    flat_need = _need(np.asarray([count.sum()]))
    return not (whole > 0 and ties[top == whole].sum() >= flat_need[0]) \
        and bool(_loud_enough(flat, np.asarray([whole]), flat_need)[0])


def _mask_value(rows: np.ndarray) -> np.ndarray:
    """Per row, True where BULK_QUANTILE falls among copies of the row's maximum (exactly equal magnitudes, as
    `masked_fill` or a constant border writes them): a mask over a tenth or more of the row would be its own typical
    magnitude, and no element of it a peak."""
    import numpy as np

    top = rows.max(axis=1, initial=0.0)
    return (top > 0) & (np.count_nonzero(rows == top[:, None], axis=1) >= _need(np.count_nonzero(rows, axis=1)))


def _typical_below_mask(rows: np.ndarray) -> np.ndarray:
    """`_typical`, except that a row whose quantile falls on copies of its maximum (`_mask_value`) gets the typical
    magnitude of its other elements, where MIN_CHANNEL_ELEMENTS of them are non-zero: a mask value is a peak however
    much of the row it covers (a constant row, or one mostly masked, keeps `_typical`)."""
    import numpy as np

    typical = _typical(rows)
    masked = _mask_value(rows)
    if masked.any():
        chosen = rows[masked]
        below = _typical(np.where(chosen == chosen.max(axis=1, keepdims=True), 0.0, chosen))
        typical[masked] = np.where(np.isnan(below), typical[masked], below)
    return typical


def _with_bulk(floor: NoiseFloor, magnitude: np.ndarray, errors: Sequence[np.ndarray], axes: tuple[int, ...],
               active: np.ndarray | None) -> NoiseFloor | None:
    """`floor` with the floors of its groups' bulk (PEAK_FACTOR), or None where no element is a peak. Each group's
    bulk floor is the largest error on its bulk elements, at least CHANNEL_FLOOR_SHARE of the output's bulk floor
    and one ulp of the bulk's magnitude (the group floor's own lower bounds, taken over the bulk), at most the group
    floor; a channel with too few elements to measure keeps the output's bulk floor."""
    import numpy as np

    flat = magnitude.reshape(1, -1)
    rows = flat if floor.channels is None else \
        np.moveaxis(magnitude, CHANNEL_AXIS, 0).reshape(magnitude.shape[CHANNEL_AXIS], -1)
    if _no_peak_nor_mask(flat, rows):  # the common case, without sorting (~2x faster)
        return None
    whole = float(_typical_below_mask(flat)[0])
    if math.isnan(whole):
        return None
    if floor.channels is None:
        limits = np.asarray([PEAK_FACTOR * whole])
        shape: tuple[int, ...] = (1,) * magnitude.ndim
    else:
        typical = _typical_below_mask(rows)
        limits = PEAK_FACTOR * np.where(np.isnan(typical), whole, typical)
        shape = (1, -1, 1, 1)
    in_bulk = magnitude <= limits.reshape(shape)
    if in_bulk.all():
        return None
    own = np.max([np.where(in_bulk, e, 0.0).max(axis=axes) for e in errors], axis=0).reshape(-1)
    bulk_scale = float(np.where(in_bulk, magnitude, 0.0).max())
    ulp = EPS[floor.precision] * bulk_scale
    output_bulk = max(float(np.where(in_bulk, errors[0], 0.0).max()), ulp) or EPS[floor.precision]
    least = max(CHANNEL_FLOOR_SHARE * output_bulk, ulp, np.finfo(np.float64).tiny)
    groups = floor.group_floors
    if floor.channels is None:
        bulk = np.asarray([output_bulk])
    else:
        bulk = np.where(active >= MIN_CHANNEL_ELEMENTS, np.clip(own, least, output_bulk), output_bulk)
    return replace(floor, bulk=np.minimum(bulk, groups), bulk_limits=limits)


def _error(run: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """|run - ref|, with non-finite elements (a NaN in the reference itself) counted as 0."""
    import numpy as np

    with np.errstate(invalid="ignore"):  # inf - inf: a NaN, counted as 0 below
        err = np.asarray(np.subtract(run, ref, dtype=np.float64))  # a 0-d output's difference is a numpy scalar
    return _finite_or(np.abs(err, out=err), 0.0)


def _finite_or(values: np.ndarray, fill: float) -> np.ndarray:
    """`values` (float, changed in place) with every non-finite element set to `fill`. One pass where all are finite
    (the common case: the maximum of an array holding a NaN or an infinity is not finite), as a layer verdict
    measures this for every layer of a model."""
    import numpy as np

    if values.size and not np.isfinite(values.max()):
        values[~np.isfinite(values)] = fill
    return values


def measure_floors(run: dict[str, np.ndarray], fp64: dict[str, np.ndarray], precision: str = "fp32",
                   float32: dict[str, NoiseFloor] | None = None,
                   samples: Sequence[dict[str, np.ndarray]] = ()) -> dict[str, NoiseFloor]:
    """Every output's floor; `float32` (the float32 floors) is quoted beside a reduced precision's."""
    floors = {}
    for name, ref in fp64.items():
        if name not in run:
            continue
        fp32 = (float32 or {}).get(name)
        floor = measure_floor(run[name], ref, precision, fp32.value if fp32 is not None else None,
                              [s[name] for s in samples if name in s])
        if floor is not None:
            floors[name] = floor
    return floors


def folded_float32(model: torch.nn.Module, example: torch.Tensor | None,
                   call: Callable[[torch.nn.Module], Any] | None = None) -> torch.nn.Module | None:
    """A float32 copy of `model` with each norm that directly follows a convolution folded into it,
    in float32, as graph optimisers do (ONNX Runtime's basic level, TensorRT, torch.compile's freezing).
    Folding rounds differently, so a correct folded runtime must not read as a bug; None when the
    model has nothing to fold. Pairs are found by running it: the norm's input is the conv's output; on
    `example`'s first sample, or by `call(model)` (a detector takes a list of images)."""
    import copy

    import torch

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

    hooks = [m.register_forward_hook(after_conv) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
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
    for conv, norm in pairs:
        fold_into(conv, norm)
        model.set_submodule(names[id(norm)], torch.nn.Identity())
    return model


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
    InstanceNorm (batch statistics), sum and mean computed by this module's laned float32 code (`lane_sum`) on the
    same inputs. The graph runs no Python of the model's, so unlike `laned_float32` nothing the model computes can
    tell the laned run from its own: `graph_bounds` may lift floors beyond the held run. None for a registered
    backbone (no trace: it pays nothing), a file, a model torch.export cannot trace, with no such reduction, or with
    an operator outside GRAPH_OPS."""
    import copy
    import warnings

    import torch

    built = artifact.built
    if built is None or getattr(built.spec, "registered", True) or len(feed) != 1:
        return None
    example = torch.from_numpy(next(iter(feed.values())).copy())
    if largest_reduction(built.model, example) < GRAPH_MIN_REDUCTION:  # no trace (1.5 s in a fresh process) for it
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plain = torch.export.export(copy.deepcopy(built.model).float().eval(), (example,), strict=False).module()
        laned = copy.deepcopy(plain)
    except Exception:  # noqa: BLE001 - a model torch.export cannot trace keeps the capped sample
        return None
    ops = _laned_ops()
    nodes = [n for n in laned.graph.nodes if n.op == "call_function"]
    if not any(n.target in ops for n in nodes) or not all(_graph_op(n.target) for n in nodes) \
            or not _plain_tensors(plain):
        return None
    sizes = [_reduced_size(n) for n in nodes if n.target in ops]
    for node in nodes:
        node.target = ops.get(node.target, node.target)
    laned.recompile()
    laned.reduced_size = max(sizes)  # read by `graph_bounds`: GRAPH_LIFT_SCALE
    return plain, laned


GRAPH_MIN_REDUCTION = 8192
"""The fewest elements one output of a norm, sum or mean must reduce for `laned_graph` to trace a model. Below it the
capped laned copy (`laned_float32`) is the sample, as before sweep 28b: every correct model sweep 28b measured that
needed the graph reduced 65536 elements (GroupNorm(1, 64), layer_norm over C, H, W at 32 px); GroupNorm(8, 64) at 32
px (8192), InstanceNorm2d, channel LayerNorms (64 to 768) and spatial means (4 to 1024) passed without it. The trace
costs about 1.5 s in a fresh process (torch.export's first call), which every user model paid, 0.06 s after: the
suite's user-model exports spent about 100 s on it (fresh-clone CI: 10:25 against 8:45). A model that hides its
reductions from this run only loses the lift."""


def largest_reduction(model: Any, example: Any) -> int:
    """The most elements one output of a group_norm, layer_norm, instance_norm, sum or mean reduces in one float32
    run of a copy of `model` on `example` (`reduction_size` of each call, read by a TorchFunctionMode); 0 where the
    run fails. A run costs far less than a trace, and only decides whether to trace: the lift itself is the graph's."""
    import copy

    import torch

    class Reductions(torch.overrides.TorchFunctionMode):
        largest = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            made = func(*args, **kwargs)
            given = args[0] if args else kwargs.get("input")
            try:
                size = reduction_size(getattr(func, "__name__", ""), given, args[1] if len(args) > 1 else
                                      next((v for k, v in kwargs.items() if k != "input"), None), made)
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
    """The elements one output of a group_norm / layer_norm / instance_norm / sum / mean reduces: from its input
    `given`, its second argument (groups, normalized shape) and its output `made` (0 for any other op, or where they
    are not tensors). Read alike from a traced node (`_reduced_size`) and from a call (`largest_reduction`)."""
    import math

    import torch

    if name not in ("group_norm", "layer_norm", "instance_norm", "sum", "mean") \
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
        by_channel = err.ndim == 4 and err.shape[CHANNEL_AXIS] > 1
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
                 fp64: Mapping[str, np.ndarray]) -> dict[str, float | np.ndarray]:
    """What each output's floor on `feed` is lifted to (`lifted`): its head's summation floor (`summed_outputs`) and
    the laned graph's error (`graph_bounds`, traced at this feed's shape), the larger of the two. For a floor measured
    off the oracle's own inputs (a dynamic file's second shape: verify/pipeline/stages.py)."""
    return merged_bounds(summed_outputs(artifact, feed, fp32),
                         graph_bounds(laned_graph(artifact, feed), artifact, feed, fp32, fp64))


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


def norm_scale(norm: torch.nn.Module) -> torch.Tensor:
    """What a norm with fixed statistics multiplies each channel by: weight / sqrt(running_var + eps)."""
    import torch

    weight = norm.weight if norm.weight is not None else torch.ones_like(norm.running_var)
    return weight * (norm.running_var + norm.eps).rsqrt()


def fold_into(conv: torch.nn.Module, norm: torch.nn.Module) -> None:
    """Fold `norm` (fixed statistics) into `conv`, in place, in the conv's dtype, as graph optimisers do."""
    import torch

    with torch.no_grad():
        scale = norm_scale(norm)
        bias = norm.bias if norm.bias is not None else torch.zeros_like(scale)
        conv.weight.mul_(scale.reshape(-1, *[1] * (conv.weight.dim() - 1)))
        shift = bias - norm.running_mean * scale
        conv.bias = torch.nn.Parameter(shift if conv.bias is None else conv.bias * scale + shift)


def _is_frozen_norm(module: torch.nn.Module) -> bool:
    """A norm with fixed statistics: BatchNorm in eval mode, or torchvision's FrozenBatchNorm2d."""
    return all(hasattr(module, a) for a in ("running_mean", "running_var", "eps", "weight", "bias")) \
        and not module.training and getattr(module, "running_var", None) is not None


def noise_floors(fp32: dict[str, np.ndarray], fp64: dict[str, np.ndarray]) -> dict[str, float]:
    """Per-output float32 floors as plain floats (the figure manifests record)."""
    return {name: floor.value for name, floor in measure_floors(fp32, fp64).items()}


@dataclass
class Oracle:
    outputs: dict[str, np.ndarray]
    """float64 outputs."""
    noise: dict[str, NoiseFloor]
    """The floor of each output (per channel where it has channels), at `precision`."""
    source: str
    """How the floor was measured."""
    precision: str = "fp32"
    float32: dict[str, NoiseFloor] = field(default_factory=dict)
    """The float32 floors (the same as `noise` at fp32)."""
    summed: dict[str, float | np.ndarray] = field(default_factory=dict)
    """The summation floors its float32 floors were lifted to (`summed_outputs`, and the laned graph's error:
    `graph_bounds`; per channel where an array): a file's own floors (guard 3) are lifted the same, as both measure one
    function's rounding, and an export folder records them (its goldens cannot re-derive them)."""
    samples: list[dict[str, np.ndarray]] | None = None
    """The float32 rounding samples (`folded_samples`) `float32` was measured with, where this oracle measured it:
    the goldens keep them, so the artifact folder neither folds the model again nor runs it (None: not measured
    here)."""

    @property
    def floors(self) -> dict[str, float]:
        """Per-output floors as plain floats, at `precision`."""
        return {name: floor.value for name, floor in self.noise.items()}


def measure_oracle(artifact: Artifact, inputs: dict[str, np.ndarray], fp32_outputs: dict[str, np.ndarray] | None,
                   options: RuntimeOptions | None = None) -> Oracle | None:
    """Run `artifact` in float64 on CPU and measure the float32 floor against `fp32_outputs` (float32
    on the CPU; None: run them here); with `options` at a reduced precision, also run the reference at
    that precision (on its device) and measure that precision's floor, which the verdicts then use."""
    found = measure_oracles(artifact, [inputs], [fp32_outputs], options)
    return None if found is None else found[0]


def measure_oracles(artifact: Artifact, feeds: Sequence[dict[str, np.ndarray]],
                    fp32_outputs: Sequence[dict[str, np.ndarray] | None], options: RuntimeOptions | None = None,
                    batch: bool = False, between: Callable[[], None] | None = None) -> list[Oracle] | None:
    """`measure_oracle` on every feed, each floor measured on its own input. With `batch` (a model whose samples
    do not depend on each other: a registered backbone) the float64 reference runs once over all feeds as one
    batch (its rounding is ~1e-9 of float32's: no floor can tell); every float32 evaluation runs feed by feed,
    as the runtimes being judged do, since a batch may take other kernels that round otherwise. `between` is called
    after the float64 runs and after each input's floors (the caller starts work that became possible meanwhile)."""
    from verify.runtimes import RuntimeOptions, make_runtime, runtimes_for

    between = between or (lambda: None)

    names = runtimes_for(artifact.format, float64=True)
    if not names:
        return None
    runtime = make_runtime(names[0], RuntimeOptions(dtype="float64")).load(artifact)
    fp64 = (_batched_run(runtime, feeds) if batch and len(feeds) > 1 and _eval_mode(artifact) else None) \
        or [runtime.run(feed) for feed in feeds]
    between()
    precision = options.precision if options is not None else "fp32"
    reduced = make_runtime(names[0], replace(options, dtype="float32")).load(artifact) \
        if options is not None and precision != "fp32" else None
    runner, folded, laned = None, folded_model(artifact, feeds[0]), laned_model(artifact)
    graph = laned_graph(artifact, feeds[0])
    oracles = []
    for feed, reference, fp32 in zip(feeds, fp64, fp32_outputs):
        if fp32 is None:
            runner = make_runtime(names[0]).load(artifact) if runner is None else runner
            fp32 = runner.run(feed)
        laned_bounds = graph_bounds(graph, artifact, feed, fp32, reference)
        # the graph's laned run, where it holds, is the laned copy's sample made without the model's code
        samples = _folded_run(folded, artifact, feed) + ([] if laned_bounds else _laned_run(laned, artifact, feed))
        summed = merged_bounds(summed_outputs(artifact, feed, fp32), laned_bounds)
        float32 = lifted(measure_floors(fp32, reference, samples=samples), summed)
        if reduced is None:
            oracles.append(Oracle(reference, float32, f"{runtime.label} vs {names[0]}", "fp32", float32, summed,
                                  samples))
        else:
            noise = measure_floors(reduced.run(feed), reference, precision, float32)
            oracles.append(Oracle(reference, noise, f"{runtime.label} vs {reduced.label}", precision, float32,
                                  summed, samples))
        between()
    return oracles


def _eval_mode(artifact: Artifact) -> bool:
    """A model in memory with no module in train mode (batch statistics would mix the samples of a batch)."""
    model = getattr(artifact.built, "model", None)
    return model is not None and not any(module.training for module in model.modules())


def _batched_run(runtime: Any, feeds: Sequence[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]] | None:
    """`runtime` run once on the feeds concatenated along axis 0, split back per feed; None when the feeds are
    not one array each of one shape and name, hold more than BATCH_MAX_ELEMENTS values together (one by one is
    faster there), or an output is not split by sample along axis 0."""
    import numpy as np

    arrays = [next(iter(feed.values())) for feed in feeds]
    if any(len(feed) != 1 for feed in feeds) or len({tuple(feed) for feed in feeds}) != 1 \
            or len({a.shape for a in arrays}) != 1 or arrays[0].ndim < 1 \
            or sum(a.size for a in arrays) > BATCH_MAX_ELEMENTS:
        return None
    size = arrays[0].shape[0]
    outputs = runtime.run({next(iter(feeds[0])): np.concatenate(arrays, axis=0)})
    if any(v.ndim < 1 or v.shape[0] != size * len(feeds) for v in outputs.values()):
        return None
    return [{name: value[i * size:(i + 1) * size] for name, value in outputs.items()} for i in range(len(feeds))]


def pooled_floors(per_input: Sequence[dict[str, NoiseFloor]]) -> dict[str, NoiseFloor]:
    """Each output's floor over several inputs: per channel, and per output, the largest measured on any of them
    (`NoiseFloor.combine`); the verdict on every input is judged on it (README, "Evidence per verdict")."""
    pooled: dict[str, NoiseFloor] = {}
    for floors in per_input:
        for name, floor in floors.items():
            pooled[name] = floor.combine(pooled.get(name))
    return pooled


def pooled_source(source: str, count: int) -> str:
    """How pooled floors were measured: `source`, and over how many inputs."""
    return source if count == 1 else f"{source}, each channel's largest over {count} inputs"


def folded_samples(artifact: Artifact, inputs: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """The model with its norms folded into its convolutions, run in float32: a second rounding sample
    for the channel floors (only for a model in memory; a file is run as it is)."""
    return _folded_run(folded_model(artifact, inputs), artifact, inputs) \
        + _laned_run(laned_model(artifact), artifact, inputs)


def laned_model(artifact: Artifact) -> torch.nn.Module | None:
    """`laned_float32` of the model in memory (None for a file, or with no GroupNorm/LayerNorm)."""
    return None if artifact.built is None else laned_float32(artifact.built.model)


def _laned_run(laned: torch.nn.Module | None, artifact: Artifact,
               inputs: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """`_folded_run` of the laned copy; [] where the model fails so (code that calls a norm with what its statistics
    cannot take): no sample, the floor as measured."""
    try:
        return _folded_run(laned, artifact, inputs)
    except Exception:  # noqa: BLE001 - a sample the model cannot give widens nothing
        return []


def folded_model(artifact: Artifact, inputs: dict[str, np.ndarray]) -> torch.nn.Module | None:
    """`folded_float32` of the model in memory (None for a file, or with nothing to fold)."""
    import torch

    if artifact.built is None:
        return None
    return folded_float32(artifact.built.model, torch.from_numpy(next(iter(inputs.values()))))


def _folded_run(folded: torch.nn.Module | None, artifact: Artifact,
                inputs: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    import torch

    from verify.runtimes.torch_common import to_numpy_outputs

    if folded is None:
        return []
    with torch.inference_mode():
        return [to_numpy_outputs(folded(torch.from_numpy(next(iter(inputs.values())))), artifact.meta.output_names)]


def spread_floor(outputs: list[dict[str, np.ndarray]]) -> dict[str, NoiseFloor]:
    """Without a float64 run (an ONNX file alone), estimate the floor as the largest spread
    between several valid float32 evaluations of the same graph (e.g. ORT optimisation levels)."""
    import numpy as np

    floors: dict[str, NoiseFloor] = {}
    base = {k: v.astype(np.float64) for k, v in outputs[0].items()}
    for other in outputs[1:]:
        for name, floor in measure_floors(other, base).items():
            floors[name] = floor.combine(floors.get(name))
    return floors


def oracle_or_spread(artifact: Artifact, inputs: dict[str, np.ndarray], fp32: dict[str, np.ndarray] | None,
                     options: RuntimeOptions | None = None) -> Oracle:
    """The float64 oracle where a runtime can run `artifact` in float64; otherwise (an ONNX file)
    no reference outputs, and the float32 floor from the spread of the runtime's alternative settings
    (e.g. ONNX Runtime's graph optimisation levels)."""
    from verify.runtimes import default_runtime, make_runtime

    oracle = measure_oracle(artifact, inputs, fp32, options)
    if oracle is not None:
        return oracle
    name = artifact.path.name if artifact.path else artifact.label
    runner = default_runtime(artifact.format)
    if fp32 is None:
        fp32 = make_runtime(runner).load(artifact).run(inputs)
    others = [make_runtime(runner, alt).load(artifact).run(inputs) for alt in make_runtime(runner).alternatives()]
    if not others:
        return Oracle({}, {}, f"{name}: no float64 run and no alternative settings to measure a floor")
    floors = spread_floor([fp32, *others])
    return Oracle({}, floors, f"{name}: spread of {runner}'s alternative settings", "fp32", floors)


def channel_floors_sha256(floors: dict[str, NoiseFloor]) -> str:
    """A digest of every per-channel floor (float64 bytes, outputs by name): the manifest records it, and
    `verify artifact` re-derives the floors from the goldens and must find the same digest."""
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    for name in sorted(floors):
        channels = floors[name].channels
        digest.update(name.encode() + b"\0")
        if channels is not None:
            digest.update(np.ascontiguousarray(channels, dtype=np.float64).tobytes())
    return digest.hexdigest()
