"""The float64 reference and the float32 noise floor it measures.

Running the eager model in float64 gives outputs whose own rounding error is ~1e-9 of float32's,
so |eager fp32 - eager fp64| is the float32 error of this model on this input: its noise floor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from exporter.artifacts import Artifact

FLOAT32_EPS = 2.0 ** -23


@dataclass
class Oracle:
    outputs: dict[str, np.ndarray]
    """float64 outputs."""
    floors: dict[str, float]
    """max |fp32 - fp64| per output, at least one float32 ulp of the output's scale."""
    source: str
    """How the floor was measured."""


def noise_floors(fp32: dict[str, np.ndarray], fp64: dict[str, np.ndarray]) -> dict[str, float]:
    import numpy as np

    floors = {}
    for name, ref in fp64.items():
        if name not in fp32 or fp32[name].shape != ref.shape or ref.size == 0:
            continue
        err = np.abs(fp32[name].astype(np.float64) - ref)
        err = err[np.isfinite(err)]
        measured = float(err.max()) if err.size else 0.0
        ulp = FLOAT32_EPS * float(np.abs(ref[np.isfinite(ref)]).max(initial=0.0))
        floors[name] = max(measured, ulp) or FLOAT32_EPS
    return floors


def measure_oracle(artifact: Artifact, inputs: dict[str, np.ndarray],
                   fp32_outputs: dict[str, np.ndarray]) -> Oracle | None:
    """Run `artifact` in float64 on CPU and measure the floor against its float32 outputs."""
    from verify.runtimes import RuntimeOptions, make_runtime, runtimes_for

    names = runtimes_for(artifact.format, float64=True)
    if not names:
        return None
    runtime = make_runtime(names[0], RuntimeOptions(dtype="float64")).load(artifact)
    fp64 = runtime.run(inputs)
    return Oracle(fp64, noise_floors(fp32_outputs, fp64), f"{runtime.label} vs {names[0]}")


def spread_floor(outputs: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Without a float64 run (an ONNX file alone), estimate the floor as the largest spread
    between several valid float32 evaluations of the same graph (e.g. ORT optimisation levels)."""
    import numpy as np

    floors: dict[str, float] = {}
    base = outputs[0]
    for other in outputs[1:]:
        for name, value in noise_floors(other, {k: v.astype(np.float64) for k, v in base.items()}).items():
            floors[name] = max(floors.get(name, 0.0), value)
    return floors


def oracle_or_spread(artifact: Artifact, inputs: dict[str, np.ndarray], fp32: dict[str, np.ndarray]) -> Oracle:
    """The float64 oracle where a runtime can run `artifact` in float64; otherwise (an ONNX file)
    no reference outputs, and the floor from the spread of the runtime's alternative settings
    (e.g. ONNX Runtime's graph optimisation levels)."""
    from verify.runtimes import make_runtime, runtimes_for

    oracle = measure_oracle(artifact, inputs, fp32)
    if oracle is not None:
        return oracle
    name = artifact.path.name if artifact.path else artifact.label
    runner = runtimes_for(artifact.format)[0]
    alternatives = make_runtime(runner).alternatives()
    others = [make_runtime(runner, options).load(artifact).run(inputs) for options in alternatives]
    if not others:
        return Oracle({}, {}, f"{name}: no float64 run and no alternative settings to measure a floor")
    return Oracle({}, spread_floor([fp32, *others]), f"{name}: spread of {runner}'s alternative settings")
