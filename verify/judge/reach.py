"""Do the inputs reach the model's weights? An input that holds no zero (1e-30, a denormal, 1e-12 noise) passes
`verify.inputs.refuse_blank_inputs`, yet what its first layer multiplies by it is lost under the float32 rounding of
the layer's bias and the rest: on such inputs a first conv 1 % off in an export exited 0 (review 34: `--input` of
1e-30, 1e-40 or 1e-12 values, "all 6 pairs agree", where seeded inputs fail 4 of 6 pairs). What the inputs move is
measured, not guessed from their magnitude: the model's float64 outputs on the inputs against its float64 outputs on
zeros of the same shape. Where no input moves any output element beyond the tolerance the verdicts use (auto: the
factor times the smallest floor any element is judged on; other modes: that floor), an error of any size in what
multiplies the input would agree: nothing that reads the input was judged, and the run is refused."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from exporter.artifacts import Artifact
    from verify.judge.compare import Tolerance
    from verify.judge.noise_floor import NoiseFloor

REACH_HOW = ("what a first layer multiplies by the input is lost under the float32 rounding of its other terms, so "
             "weights off by any amount would agree")
"""Why inputs that move no output judge nothing (the one-line error's reason)."""


def smallest_floor(floor: NoiseFloor) -> float:
    """The smallest floor any element of the output is judged on (per output, per channel, in the bulk)."""
    import numpy as np

    found = [float(floor.value)]
    for part in (floor.channels, floor.bulk):
        if part is not None and np.size(part):
            found.append(float(np.min(part)))
    return min(found)


def moved(outputs: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray], floors: Mapping[str, NoiseFloor],
          factor: float) -> bool:
    """Whether any output element of `outputs` (float64, on an input) is more than `factor` times its output's
    smallest floor away from `base` (float64, on zeros)."""
    import numpy as np

    for name, floor in floors.items():
        if name not in outputs or name not in base:
            continue
        a, b = np.asarray(outputs[name], dtype=np.float64), np.asarray(base[name], dtype=np.float64)
        if a.shape != b.shape:
            return True  # the input decides the output's shape: it reaches the model
        finite = np.isfinite(a) & np.isfinite(b)
        if not np.array_equal(np.isfinite(a), np.isfinite(b)):
            return True
        if finite.any() and float(np.max(np.abs(a[finite] - b[finite]))) > factor * smallest_floor(floor):
            return True
    return False


def refuse_unreached(artifact: Artifact, feeds: Sequence[Mapping[str, np.ndarray]],
                     float64: Sequence[Mapping[str, np.ndarray]], floors: Mapping[str, NoiseFloor],
                     tolerance: Tolerance, labels: Sequence[str]) -> None:
    """A UsageError when no input of `feeds` (their float64 outputs `float64`) moves any output beyond the tolerance
    from the model's float64 outputs on zeros (`artifact` run in float64 once per input shape); nothing where one
    does, or where no runtime runs the model in float64."""
    import numpy as np

    from exporter.errors import UsageError
    from verify.runtimes import RuntimeOptions, make_runtime, runtimes_for

    names = runtimes_for(artifact.format, float64=True)
    if not names or not feeds:
        return
    factor = tolerance.factor if tolerance.mode == "auto" else 1.0
    runtime = make_runtime(names[0], RuntimeOptions(dtype="float64")).load(artifact)
    bases: dict[tuple, Mapping[str, np.ndarray]] = {}
    for feed, outputs in zip(feeds, float64, strict=True):
        key = tuple((name, array.shape) for name, array in feed.items())
        if key not in bases:
            try:
                bases[key] = runtime.run({name: np.zeros_like(array) for name, array in feed.items()})
            except Exception:  # noqa: BLE001 - a model that refuses zeros (divides by the input's norm): not told
                return
        if moved(outputs, bases[key], floors, factor):
            return
    what = f"Input {labels[0]} moves" if len(labels) == 1 else f"None of the {len(labels)} inputs moves"
    raise UsageError(f"{what} no output of the model beyond its float32 noise floor (in float64, against the same "
                     f"model on zeros): {REACH_HOW}; pass an image or an array with content, or drop --input for "
                     "seeded inputs")
