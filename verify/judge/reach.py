"""Do the inputs reach the model's weights? An input that holds no zero (1e-30, a denormal, 1e-12 noise) passes
`verify.inputs.refuse_blank_inputs`, yet what its first layer multiplies by it is lost under the float32 rounding of
the layer's bias and the rest: on such inputs a first conv 1 % off in an export exited 0 (review 34: `--input` of
1e-30, 1e-40 or 1e-12 values, "all 6 pairs agree", where seeded inputs fail 4 of 6 pairs). What the inputs move is
measured, not guessed from their magnitude: the model's float64 outputs on the inputs against its float64 outputs on
zeros of the same shape, each element against the tolerance the verdicts use (auto: the factor times its channel's
floor; other modes: that floor).

Moving one element just past the tolerance is not enough (review 35): an error of r in what multiplies the input
shows as r times the move, so an input whose largest move was 13.6x the tolerance (a seeded draw scaled by 1e-6)
hid a first conv 1 % off at 1.2x its floor, exit 0. The inputs must move some element REACH_FACTOR times its own
channel's tolerance, so that an error of REACH_ERROR shows at the tolerance; a model whose outputs barely depend on
any input by design (seeded normal draws move it less too) is held to REACH_ERROR of what a seeded draw moves: the
user's inputs may not judge less than the seeded input the run would otherwise have used."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from exporter.artifacts import Artifact
    from verify.judge.compare import Tolerance
    from verify.judge.noise_floor import NoiseFloor

REACH_ERROR = 0.01
"""The relative error in what multiplies the input (a first layer's weights 1 % off, review 34's case) that the inputs
must make visible at the tolerance."""
REACH_FACTOR = 1 / REACH_ERROR
"""How many times its tolerance some output element must move: an error of REACH_ERROR then moves it by the
tolerance."""
REACH_HOW = (f"what a first layer multiplies by the input is lost under the float32 rounding of its other terms, so "
             f"weights {REACH_ERROR:.0%} off would agree")
"""Why inputs that move no output judge nothing (the one-line error's reason)."""


def reach(outputs: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray], floors: Mapping[str, NoiseFloor],
          factor: float) -> float:
    """How many times its tolerance (`factor` times its channel's floor, or the output's where it has no channels)
    the output element that `outputs` (float64, on an input) moves most is away from `base` (float64, on zeros);
    infinite where the input decides an output's shape or which elements are finite."""
    import math

    import numpy as np

    worst = 0.0
    for name, floor in floors.items():
        if name not in outputs or name not in base:
            continue
        a, b = np.asarray(outputs[name], dtype=np.float64), np.asarray(base[name], dtype=np.float64)
        if a.shape != b.shape or not np.array_equal(np.isfinite(a), np.isfinite(b)):
            return math.inf  # the input decides the output's shape or its non-finite elements: it reaches the model
        move = np.where(np.isfinite(a) & np.isfinite(b), np.abs(a - b), 0.0)
        if not move.size:
            continue
        channels = floor.channels
        if channels is not None and move.ndim >= 2 and move.shape[1] == np.size(channels):
            own = np.asarray(channels, dtype=np.float64).reshape((1, -1) + (1,) * (move.ndim - 2))
        else:
            own = np.float64(floor.value)
        worst = max(worst, float(np.max(move / (factor * own))))
    return worst


def refuse_unreached(artifact: Artifact, feeds: Sequence[Mapping[str, np.ndarray]],
                     float64: Sequence[Mapping[str, np.ndarray]], floors: Mapping[str, NoiseFloor],
                     tolerance: Tolerance, labels: Sequence[str]) -> None:
    """A UsageError when no input of `feeds` (their float64 outputs `float64`) moves any output element REACH_FACTOR
    times its tolerance from the model's float64 outputs on zeros (`artifact` run in float64 once per input shape),
    nor REACH_ERROR of what a seeded normal draw of the first input's shape moves; nothing where one does, or where no
    runtime runs the model in float64."""

    from exporter.errors import UsageError
    from verify.inputs import make_input
    from verify.runtimes import RuntimeOptions, make_runtime, runtimes_for

    names = runtimes_for(artifact.format, float64=True)
    if not names or not feeds:
        return
    factor = tolerance.factor if tolerance.mode == "auto" else 1.0
    runtime = make_runtime(names[0], RuntimeOptions(dtype="float64")).load(artifact)
    bases: dict[tuple, Mapping[str, np.ndarray] | None] = {}
    best = 0.0
    for feed, outputs, label in zip(feeds, float64, labels, strict=True):
        best = max(best, _reach_from(runtime, feed, outputs, label, bases, floors, factor))
        if best >= REACH_FACTOR:
            return
    first = feeds[0]
    seeded = {name: make_input(array.shape, index).astype(array.dtype) for index, (name, array) in
              enumerate(first.items())}
    try:
        drawn = runtime.run(seeded)
    except Exception as exc:  # noqa: BLE001 - fails closed: a model refusing a normal draw skipped the check
        raise UsageError(f"{labels[0]}: the model fails on a seeded normal draw of its shape ({type(exc).__name__}), "
                         f"so whether --input reaches its outputs cannot be told from a model that barely depends on "
                         f"its input: {REACH_HOW}; pass an image or an array with content") from None
    by_design = _reach_from(runtime, seeded, drawn, "a seeded draw", bases, floors, factor)
    if best >= REACH_ERROR * by_design:
        return  # the model barely depends on any input: the user's inputs judge it as a seeded draw would
    what = f"Input {labels[0]} moves" if len(labels) == 1 else f"None of the {len(labels)} inputs moves"
    raise UsageError(f"{what} no output {REACH_FACTOR:g}x its tolerance (at most {best:.2g}x; a seeded draw: "
                     f"{by_design:.2g}x): {REACH_HOW}; pass an image or an array with content, or drop --input")


def _reach_from(runtime: Any, feed: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray], label: str,
                bases: dict[tuple, Mapping[str, np.ndarray] | None], floors: Mapping[str, NoiseFloor],
                factor: float) -> float:
    """`reach` of one input (`outputs`: the model's float64 outputs on `feed`) from the model's float64 outputs on
    zeros of its shape (run once a shape, kept in `bases`). A model raising on zeros, and only there, skipped the check
    (review 35: its --input of 1e-30 was judged as content): it is measured against the same input halved instead
    (twice that move, which is the move from zeros where the model is linear in its input); where that raises too,
    the check fails closed."""
    import numpy as np

    from exporter.errors import UsageError

    key = tuple((name, array.shape) for name, array in feed.items())
    if key not in bases:
        try:
            bases[key] = runtime.run({name: np.zeros_like(array) for name, array in feed.items()})
        except Exception:  # noqa: BLE001 - a model that raises on zeros: measured against half its input
            bases[key] = None
    base = bases[key]
    if base is not None:
        return reach(outputs, base, floors, factor)
    try:
        half = runtime.run({name: array * 0.5 for name, array in feed.items()})
    except Exception as exc:  # noqa: BLE001
        raise UsageError(f"{label}: the model fails on zeros and on half this input ({type(exc).__name__}), so whether "
                         "--input reaches its outputs cannot be measured (a tiny input can hide a "
                         f"{REACH_ERROR:.0%} first-layer error); drop --input for seeded inputs") from None
    return 2 * reach(outputs, half, floors, factor)


def refuse_unreached_sources(artifacts: Sequence[Artifact], named: Sequence[object], tolerance: Tolerance) -> None:
    """`refuse_unreached` for the commands that judge two sides on --input outside the pipeline (explain, --isolate,
    reduce): the first side a runtime runs in float64, its floors measured here on `named` (NamedInput)."""
    from verify.judge.oracle import measure_oracles, pooled_floors
    from verify.runtimes import runtimes_for

    for artifact in artifacts:
        if not runtimes_for(artifact.format, float64=True):
            continue
        feeds = [{artifact.meta.input_name: item.array} for item in named]  # type: ignore[attr-defined]
        oracles = measure_oracles(artifact, feeds, [None] * len(feeds))
        if not oracles:
            return
        refuse_unreached(artifact, feeds, [oracle.outputs for oracle in oracles],
                         pooled_floors([oracle.noise for oracle in oracles]), tolerance,
                         [item.label for item in named])  # type: ignore[attr-defined]
        return
