"""`verify explain` for whole detectors (`fasterrcnn_resnet50_fpn:frozen` vs `:frozen-eps0`): the same
Explanation as for backbones (verify/explain/equivalence.py), built from the detector's dense pre-NMS tensors
(the heads' outputs, which every detector computes densely; detections after NMS have no fixed shape to diff), the
modules diffed structurally, and the first diverging module located over backbone and heads by forward hooks
in float64 (verify/explain/localize.py)."""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import TYPE_CHECKING

from exporter.errors import UsageError
from verify.detect.check import run_eager
from verify.explain.equivalence import Explanation
from verify.explain.localize import EQUIVALENCE_RTOL, localise
from verify.explain.structure import structural_diff, train_mode_modules
from verify.explain.tracers import Side
from verify.judge.oracle import noise_floors

if TYPE_CHECKING:
    from exporter.families.detectors import BuiltDetector

DEFAULT_SHAPE = (1, 3, 320, 320)
DEFAULT_FACTOR = 4.0
"""explain's own default (verify/explain/equivalence.py explain_artifacts)."""


def is_detector_spec(spec: str | None) -> bool:
    """`name[:norm]` naming a registered detector."""
    from exporter.families.detectors import list_detectors

    return spec is not None and spec.partition(":")[0] in list_detectors()


def _build(spec: str, weights: str, seed: int) -> BuiltDetector:
    from exporter.families.detectors import build_detector

    name, _, norm = spec.partition(":")
    if ":" in norm:
        raise UsageError(f"A detector spec is name:norm, got {spec!r}; drop the view (a detector is whole)")
    return build_detector(name, norm or None, weights, seed)


def explain_detectors(a: str, b: str, weights: str = "synthetic", seed: int = 0,
                      shape: tuple[int, ...] = DEFAULT_SHAPE, factor: float | None = None) -> Explanation:
    """Whether detectors `a` and `b` compute the same dense head tensors in float64 on the calibration
    image, and if not, the first module where they part and the structural differences behind it."""
    import numpy as np

    from exporter.families.detectors import calibration_image

    if len(shape) != 4 or shape[0] != 1 or shape[1] != 3:
        raise UsageError(f"explain judges one detector image, 1 x 3 x H x W; got {'x'.join(map(str, shape))}")
    sides = [_build(a, weights, seed), _build(b, weights, seed)]
    image = calibration_image(seed, tuple(shape[1:]))
    fp32 = [run_eager(side, [image], float64=False).dense for side in sides]
    fp64 = [run_eager(side, [image], float64=True).dense for side in sides]
    shared = [n for n in fp64[1] if n in fp64[0] and fp64[0][n].shape == fp64[1][n].shape]
    if not shared:
        raise UsageError(f"{a} and {b} share no dense head tensor of one shape: not the same kind of detector")
    result = Explanation(a, b, equivalent=False, how="float64", outputs=shared, input_shape=list(shape),
                         input=f"seeded calibration image {seed}")
    result.float32_difference = {n: float(np.abs(fp32[0][n].astype(np.float64) - fp32[1][n]).max()) for n in shared}
    for label, out32, out64 in zip("AB", fp32, fp64, strict=True):
        result.noise_floor[label] = {k: v for k, v in noise_floors(out32, out64).items() if k in shared}
    for n in shared:
        diff = float(np.abs(fp64[0][n] - fp64[1][n]).max())
        result.float64_difference[n] = {"max_abs": diff, "max_rel": diff / (float(np.abs(fp64[1][n]).max()) or 1.0)}
    result.equivalent = all(d["max_rel"] <= EQUIVALENCE_RTOL for d in result.float64_difference.values())
    models = [side.model for side in sides]
    result.structural_differences = structural_diff(models[0], "", models[1], "")
    result.structure_compared = True
    result.train_mode = {label: train_mode_modules(model) for label, model in zip("AB", models, strict=True)}
    if not result.equivalent:
        _locate(result, sides, (a, b), image.numpy()[None], factor or DEFAULT_FACTOR)
    return result


def _locate(result: Explanation, sides: list[BuiltDetector], specs: tuple[str, str], x: object,
            factor: float) -> None:
    """The first module (backbone, FPN, RPN or box head) whose float64 output differs between the sides."""
    hooked = [Side(SimpleNamespace(format="eager detector", label=spec), built.model,
                   copy.deepcopy(built.model).double(), "") for built, spec in zip(sides, specs, strict=True)]
    found = localise(*hooked, x, factor)
    divergence = found.divergence
    if divergence is None:
        result.divergence_note = found.note
        return
    result.first_divergence = divergence.module
    result.divergence = {"module": divergence.module, "call": divergence.call, "max_abs": divergence.max_abs,
                         "max_rel": divergence.max_rel, "ratio": divergence.ratio,
                         "fused_with": divergence.fused_with, "judged": divergence.judged}
