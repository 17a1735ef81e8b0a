"""`verify explain` for whole detectors (`fasterrcnn_resnet50_fpn:frozen` vs `:frozen-eps0`): the same
Explanation as for backbones (verify/explain/equivalence.py), built from the detector's dense pre-NMS tensors
(the heads' outputs, which every detector computes densely; detections after NMS have no fixed shape to diff), the
modules diffed structurally, and the first diverging module located over backbone and heads by forward hooks
in float64 (verify/explain/localize.py).
Faster R-CNN's box-head rows (one per RPN proposal) are compared paired by proposal (verify/detect/proposals.py),
and while locating, B's proposals are put in A's order: two sides that order the same proposals differently
compute the same function, and a reordering is never named as the first divergence."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from exporter.errors import UsageError
from verify.detect.eager_runs import run_eager
from verify.detect.proposals import PROPOSALS, ProposalCheck, align_rows, pair_proposals
from verify.detect.report import Run
from verify.explain.equivalence import EXPLAIN_FACTOR, Explanation
from verify.explain.localize import EQUIVALENCE_RTOL, localise
from verify.explain.structure import structural_diff, train_mode_modules
from verify.explain.tracers import Side
from verify.judge.measure import noise_floors

if TYPE_CHECKING:
    import numpy as np
    import torch

    from exporter.families.detectors import BuiltDetector

DEFAULT_SHAPE = (1, 3, 320, 320)
DEFAULT_FACTOR = EXPLAIN_FACTOR
"""explain's own default (verify/explain/equivalence.py explain_artifacts), one number in one place."""
UNPAIRED_RELATIVE = 1.0
"""A proposal on one side only differs from nothing by its whole value: relative difference 1."""


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
                      shape: tuple[int, ...] = DEFAULT_SHAPE, factor: float | None = None,
                      image: tuple[np.ndarray, str] | None = None) -> Explanation:
    """Whether detectors `a` and `b` compute the same dense head tensors in float64 on the calibration
    image (or `image`: a 3 x H x W array in [0, 1] and what to call it), and if not, the first module where they
    part and the structural differences behind it."""
    import torch

    from exporter.families.detectors import IMAGE_SIZE, MIN_IMAGE_SIDE, calibration_image, check_image_size

    if image is not None:
        array, label = image
        for spec in (a, b):
            check_image_size(spec.partition(":")[0], *array.shape[1:])
        sides = [_build(a, weights, seed), _build(b, weights, seed)]
        return explain_built(sides, (a, b), torch.from_numpy(array.astype("float32")), label, factor)
    if len(shape) != 4 or shape[0] != 1 or shape[1] != 3:
        raise UsageError(f"explain judges one detector image, 1 x 3 x H x W; got {'x'.join(map(str, shape))}")
    if min(shape[2:]) < MIN_IMAGE_SIDE:  # the calibration image cannot draw its rectangles any smaller
        raise UsageError(f"explain's detector image is at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} pixels, got "
                         f"{'x'.join(map(str, shape[2:]))}; pass --shape 1x3x{IMAGE_SIZE}x{IMAGE_SIZE}")
    for spec in (a, b):
        check_image_size(spec.partition(":")[0], *shape[2:])
    sides = [_build(a, weights, seed), _build(b, weights, seed)]
    return explain_built(sides, (a, b), calibration_image(seed, tuple(shape[1:])),
                         f"seeded calibration image {seed}", factor)


def explain_built(sides: Sequence[BuiltDetector], specs: tuple[str, str], image: torch.Tensor, label: str,
                  factor: float | None = None) -> Explanation:
    """The Explanation of two built detectors on one C x H x W `image` (described by `label`)."""
    import numpy as np

    fp32 = [run_eager(side, [image], float64=False) for side in sides]
    fp64 = [run_eager(side, [image], float64=True) for side in sides]
    per_proposal = _per_proposal(sides)
    a32, b32, _ = paired_tensors(fp32[0], fp32[1], per_proposal)
    a64, b64, check = paired_tensors(fp64[0], fp64[1], per_proposal)
    from exporter.families.detectors import ANCHOR_MODULES

    # the anchors (judged by `verify export` since hunt 19a) hang on no weight: the question here is the weights'
    shared = [n for n in b64 if n in a64 and a64[n].shape == b64[n].shape
              and n.partition("#")[0] not in ANCHOR_MODULES.values()]
    if not shared:
        raise UsageError(f"{specs[0]} and {specs[1]} share no dense head tensor of one shape: not the same kind "
                         "of detector")
    result = Explanation(*specs, equivalent=False, how="float64", outputs=shared,
                         input_shape=[1, *image.shape], input=label)
    result.float32_difference = {n: float(np.abs(a32[n].astype(np.float64) - b32[n]).max()) for n in shared
                                 if n in a32 and n in b32 and a32[n].shape == b32[n].shape}
    for side, out32, out64 in zip("AB", fp32, fp64, strict=True):
        own32, own64, _ = paired_tensors(out32, out64, per_proposal)  # its own float32 run may reorder too
        result.noise_floor[side] = {k: v for k, v in noise_floors(own32, own64).items() if k in shared}
    for n in shared:
        diff = float(np.abs(a64[n] - b64[n]).max()) if a64[n].size else 0.0
        scale = float(np.abs(b64[n]).max()) if b64[n].size else 0.0
        result.float64_difference[n] = {"max_abs": diff, "max_rel": diff / (scale or 1.0)}
    _unpaired(result, check, fp64)
    result.equivalent = all(d["max_rel"] <= EQUIVALENCE_RTOL for d in result.float64_difference.values())
    models = [side.model for side in sides]
    result.structural_differences = structural_diff(models[0], "", models[1], "")
    result.structure_compared = True
    result.train_mode = {side: train_mode_modules(model) for side, model in zip("AB", models, strict=True)}
    if not result.equivalent:
        reference = fp64[0].proposals[0] if per_proposal and fp64[0].proposals else None
        _locate(result, sides, specs, image.numpy()[None], factor or DEFAULT_FACTOR, reference)
    return result


def _per_proposal(sides: Sequence[BuiltDetector]) -> list[str]:
    """The per-proposal modules when both sides have them (a Faster R-CNN against a Faster R-CNN)."""
    mine, theirs = (side.per_proposal_modules for side in sides)
    return mine if mine == theirs else []


def paired_tensors(run: Run, ref: Run, per_proposal: Sequence[str]) -> tuple[dict[str, np.ndarray],
                                                                             dict[str, np.ndarray], ProposalCheck]:
    """Both runs' dense tensors of their one image, the per-proposal rows paired by proposal and the paired
    proposal boxes added as `PROPOSALS`; as captured when the runs have no proposals."""
    check = ProposalCheck("A", "B")
    if not (per_proposal and run.proposals and ref.proposals):
        return run.dense, ref.dense, check
    mine, theirs, lone = align_rows(run.per_image, ref.per_image, run.proposals, ref.proposals, per_proposal,
                                    check)
    check.unexplained += [f"{len(a)} of A's and {len(b)} of B's proposals have no pair" for a, b in lone if a or b]
    return mine[0], theirs[0], check


def _unpaired(result: Explanation, check: ProposalCheck, fp64: Sequence[Run]) -> None:
    """A proposal on one side only in float64: the sides keep different proposals, so they differ."""
    if check.passed or PROPOSALS not in result.float64_difference:
        return
    import numpy as np

    largest = max(float(np.abs(run.proposals[0]).max()) for run in fp64 if run.proposals and run.proposals[0].size)
    result.float64_difference[PROPOSALS] = {"max_abs": largest, "max_rel": UNPAIRED_RELATIVE,
                                            "unpaired": check.unexplained[0]}


def _locate(result: Explanation, sides: Sequence[BuiltDetector], specs: tuple[str, str], x: object,
            factor: float, reference: np.ndarray | None) -> None:
    """The first module (backbone, FPN, RPN or box head) whose float64 output differs between the sides;
    B's proposals follow A's (float64) order, so the box head's rows line up."""
    models = [(sides[0].model, copy.deepcopy(sides[0].model).double())]
    b32, b64 = copy.deepcopy(sides[1].model), copy.deepcopy(sides[1].model).double()
    if reference is not None and hasattr(b32, "rpn"):
        for model in (b32, b64):
            model.rpn.register_forward_hook(follow_order(reference))
    models.append((b32, b64))
    hooked = [Side(SimpleNamespace(format="eager detector", label=spec), model, model64, "")
              for (model, model64), spec in zip(models, specs, strict=True)]
    found = localise(*hooked, x, factor)
    divergence = found.divergence
    if divergence is None:
        result.divergence_note = found.note
        return
    result.first_divergence = divergence.module
    result.divergence = {"module": divergence.module, "call": divergence.call, "max_abs": divergence.max_abs,
                         "max_rel": divergence.max_rel, "ratio": divergence.ratio,
                         "fused_with": divergence.fused_with, "judged": divergence.judged}


def follow_order(reference: np.ndarray) -> Any:
    """A forward hook for an RPN: its proposals reordered to follow `reference` (paired ones in the
    reference's order, unpaired ones after them in their own order)."""

    def hook(module: Any, args: Any, output: Any) -> Any:
        import torch

        boxes, losses = output
        ordered = []
        for found in boxes:
            paired = [i for i, _ in pair_proposals(found.detach().double().numpy(), reference)]
            taken = set(paired)
            rest = [i for i in range(len(found)) if i not in taken]
            ordered.append(found[torch.as_tensor(paired + rest, dtype=torch.long)])
        return ordered, losses

    return hook
