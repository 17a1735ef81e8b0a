"""The float64 reference and the noise floors it measures.

Running the eager model in float64 gives outputs whose own rounding error is ~1e-9 of float32's,
so |eager fp32 - eager fp64| is the float32 error of this model on this input: its noise floor.
At a reduced precision (TF32, bf16, fp16) the floor is |eager at that precision - eager fp64|.

Floors are per channel where an output has one (NCHW or NCDHW, axis 1): rounding is largest in the channels
with the largest activations, so one floor per output hides an error confined to a quiet channel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from verify.judge.folding import folded_float32
from verify.judge.graph_lift import graph_bounds, inductor_graph, laned_graph, merged_bounds
from verify.judge.lanes import laned_float32
from verify.judge.measure import measure_floors
from verify.judge.noise_floor import NoiseFloor
from verify.judge.summation import lifted, summed_outputs

if TYPE_CHECKING:
    import numpy as np
    import torch

    from exporter.artifacts import Artifact
    from verify.runtimes import RuntimeOptions

BATCH_MAX_ELEMENTS = 8 * 3 * 128 * 128
"""The float64 oracle runs the feeds as one batch only while their inputs hold at most this many values together;
larger feeds run one by one. Measured on one core (bench/oracle_batch.py, bench/results/oracle-batch-cpu.log): the
batch of 8 is 1.3-3.5x faster than 8 single runs at 32-64 px, where a run is mostly per-call overhead, and
even at 112 px; at 160-224 px its float64 activations outgrow the caches and 8 single runs take 0.63-0.88x
the batch's time on ResNets (ResNet-50 at 224 px: 1.57 s against 1.99 s), 1.17x on MobileNetV3-Large. Inside a cold
`verify export` of ResNet-50, beside its background export, the oracle stage took 5.7 s batched and 5.9 s one by
one (two rounds each): no gain measurable there, where the other core's work sets the pace."""


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
    held: dict[str, NoiseFloor] = field(default_factory=dict)
    """The float32 floors of the held float32 run alone, lifted to `summed` as `float32` is, without `samples`: what
    guard 3 holds to a file's own floor (verify/judge/file_floor.py `model_floors`), which no sample lifts ({}: the
    oracle was not measured here, `float32` stands)."""

    @property
    def floors(self) -> dict[str, float]:
        """Per-output floors as plain floats, at `precision`."""
        return {name: floor.value for name, floor in self.noise.items()}


def measure_oracle(artifact: Artifact, inputs: dict[str, np.ndarray], fp32_outputs: dict[str, np.ndarray] | None,
                   options: RuntimeOptions | None = None, inductor: bool = False) -> Oracle | None:
    """Run `artifact` in float64 on CPU and measure the float32 floor against `fp32_outputs` (float32
    on the CPU; None: run them here); with `options` at a reduced precision, also run the reference at
    that precision (on its device) and measure that precision's floor, which the verdicts then use."""
    found = measure_oracles(artifact, [inputs], [fp32_outputs], options, inductor=inductor)
    return None if found is None else found[0]


def measure_oracles(artifact: Artifact, feeds: Sequence[dict[str, np.ndarray]],
                    fp32_outputs: Sequence[dict[str, np.ndarray] | None], options: RuntimeOptions | None = None,
                    batch: bool = False, between: Callable[[], None] | None = None, inductor: bool = False
                    ) -> list[Oracle] | None:
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
    compiled = inductor_graph(artifact, feeds[0]) if inductor else None
    last = channels_last_model(artifact) if inductor else None
    registered = getattr(getattr(artifact.built, "spec", None), "registered", True)
    oracles = []
    for feed, reference, fp32 in zip(feeds, fp64, fp32_outputs):
        if fp32 is None:
            runner = make_runtime(names[0]).load(artifact) if runner is None else runner
            fp32 = runner.run(feed)
        laned_bounds = graph_bounds(graph, artifact, feed, fp32, reference)
        # the graph's laned run, where it holds, is the laned copy's sample made without the model's code
        samples = _folded_run(folded, artifact, feed) + ([] if laned_bounds else _laned_run(laned, artifact, feed))
        ordered = _laned_run(last, artifact, feed, channels_last=True)  # Inductor's layout: an AOTI cell's alone
        samples += ordered if registered else []
        summed = merged_bounds(summed_outputs(artifact, feed, fp32), laned_bounds,
                               graph_bounds(compiled, artifact, feed, fp32, reference),
                               {} if registered else channels_last_bounds(ordered, fp32, reference))
        float32 = lifted(measure_floors(fp32, reference, samples=samples), summed)
        held = lifted(measure_floors(fp32, reference), summed) if samples else float32
        if reduced is None:
            oracles.append(Oracle(reference, float32, f"{runtime.label} vs {names[0]}", "fp32", float32, summed,
                                  samples, held))
        else:
            noise = measure_floors(reduced.run(feed), reference, precision, float32)
            oracles.append(Oracle(reference, noise, f"{runtime.label} vs {reduced.label}", precision, float32,
                                  summed, samples, held))
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


def _laned_run(laned: torch.nn.Module | None, artifact: Artifact, inputs: dict[str, np.ndarray],
               channels_last: bool = False) -> list[dict[str, np.ndarray]]:
    """`_folded_run` of the laned copy (or of `channels_last_model`); [] where the model fails so (code that calls a
    norm with what its statistics cannot take): no sample, the floor as measured."""
    try:
        return _folded_run(laned, artifact, inputs, channels_last)
    except Exception:  # noqa: BLE001 - a sample the model cannot give widens nothing
        return []


def folded_model(artifact: Artifact, inputs: dict[str, np.ndarray]) -> torch.nn.Module | None:
    """`folded_float32` of the model in memory (None for a file, or with nothing to fold)."""
    import torch

    if artifact.built is None:
        return None
    registered = getattr(artifact.built.spec, "registered", True)  # a user's model: its folds checked first
    return folded_float32(artifact.built.model, torch.from_numpy(next(iter(inputs.values()))), checked=not registered)


def _folded_run(folded: torch.nn.Module | None, artifact: Artifact,
                inputs: dict[str, np.ndarray], channels_last: bool = False) -> list[dict[str, np.ndarray]]:
    import torch

    from verify.runtimes.torch_common import to_numpy_outputs

    if folded is None:
        return []
    x = torch.from_numpy(next(iter(inputs.values())))
    x = x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x
    with torch.inference_mode():
        return [to_numpy_outputs(folded(x), artifact.meta.output_names)]


def channels_last_model(artifact: Artifact) -> torch.nn.Module | None:
    """A float32 copy of the model in memory with its weights channels-last, run on channels-last inputs: Inductor's
    layout for a conv graph on the CPU, so its convs take other kernels that round otherwise (hunt 29: resnet18's FPN
    view compiled by AOTInductor equals this copy's run bit for bit, its p2 channels up to 6.9x eager's floor). An
    AOTI cell's channel floors take its error: a registered backbone's as a rounding sample (the goldens keep it), a
    user model's as a bound (`channels_last_bounds`). None for a file or a model without a 2-d conv."""
    import copy

    import torch

    model = getattr(artifact.built, "model", None)
    if model is None or not any(isinstance(m, torch.nn.Conv2d) for m in model.modules()):
        return None
    return copy.deepcopy(model).float().eval().to(memory_format=torch.channels_last)


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
                     options: RuntimeOptions | None = None, inductor: bool = False) -> Oracle:
    """The float64 oracle where a runtime can run `artifact` in float64; otherwise (an ONNX file)
    no reference outputs, and the float32 floor from the spread of the runtime's alternative settings
    (e.g. ONNX Runtime's graph optimisation levels)."""
    from verify.runtimes import default_runtime, make_runtime

    oracle = measure_oracle(artifact, inputs, fp32, options, inductor)
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


def channels_last_bounds(runs: Sequence[dict[str, np.ndarray]], fp32: dict[str, np.ndarray],
                         fp64: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each channelled output's per-channel error of `channels_last_model`'s run (`runs`, one or none) against
    float64, each at most the held run's per-output floor (as a rounding sample joins the channel floors: a model's
    own code, run otherwise, never lifts an output beyond its floor). A user model's bound, not a sample: `summed`
    lifts the exported files' and witnesses' own floors too and guard 3's model side (`Oracle.held`), as the run an
    AOTI file computes is a layout, not a rounding sample guard 3 leaves out (witness 46); a registered backbone's
    manifest records no `summed`, and guard 3 is not its."""
    import numpy as np

    from verify.judge.graph_lift import _held_floor
    from verify.judge.measure import _error, _Scale
    from verify.judge.noise_floor import CHANNEL_AXIS, channelled

    bounds: dict[str, np.ndarray] = {}
    for name, ref in fp64.items() if runs else ():
        run, held = runs[0].get(name), fp32.get(name)
        if run is None or held is None or run.shape != ref.shape or not channelled(ref.shape) \
                or not np.issubdtype(run.dtype, np.floating):
            continue
        ref = ref.astype(np.float64)
        err = np.moveaxis(_error(run, ref), CHANNEL_AXIS, 0).reshape(ref.shape[CHANNEL_AXIS], -1).max(axis=1)
        least = max(_Scale(ref, "fp32").ulp, np.finfo(np.float64).tiny)  # a manifest records positive bounds only
        bounds[name] = np.maximum(np.minimum(err, _held_floor(held, ref)), least)
    return bounds
