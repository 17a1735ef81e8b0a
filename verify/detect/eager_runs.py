"""A detector's eager runs: float32 and float64 with forward hooks on its dense modules and its NMS inputs recorded,
the second and third float32 roundings (norms folded, channel sums reversed) the channel floors take, the repeat
guard every run goes through (eager or an exported file's), and per-image tensors joined into one array each."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from verify.detect.keypoints import KEYPOINT_LOGITS, KEYPOINT_SCORES, KEYPOINTS
from verify.detect.match import MASK_LOGITS, MASKS, Detections
from verify.detect.nms_inputs import NMS_INPUTS
from verify.detect.proposals import PROPOSALS
from verify.detect.report import Judging, Run
from verify.judge.trust import RepeatCheck, output_differences

if TYPE_CHECKING:
    import numpy as np
    import torch

    from exporter.families.detectors import BuiltDetector


GUARD_DEVICE = "cpu"
"""Every detector runtime here runs on the CPU: a repeat must give the same bits."""


BELOW_THRESHOLD = 0.5
"""The float64 run records its final NMS's inputs a second time with the score threshold at this fraction of its own
(`Run.below_threshold`): far below any rounding band, and never more than the model's own per-level top-k keeps."""


def _guarded(label: str, run: Callable[[Sequence[torch.Tensor]], Run], inputs: Sequence[torch.Tensor],
             checks: list[RepeatCheck]) -> Run:
    """`run` on private copies of the inputs, every image twice (verify/judge/trust.py): each repeat must give
    the same bits and every copy must come back unchanged; one RepeatCheck in `checks`, with each output's
    largest difference over the images."""
    import torch

    count = len(inputs)
    given = [*inputs, *inputs]
    private = [image.clone() for image in given]
    both = run(private)
    mutated = ["image"] if any(not torch.equal(a, b) for a, b in zip(private, given, strict=True)) else []
    differences: dict[str, float] = {}
    for image in range(count):
        again = output_differences(_image_outputs(both, image), _image_outputs(both, count + image))
        differences.update({name: max(diff, differences.get(name, 0.0)) for name, diff in again.items()})
    checks.append(RepeatCheck(label, differences, mutated))
    first = slice(0, count)
    return Run(both.detections[first], concat_dense(both.per_image[first], inputs) if both.per_image else {},
               both.candidates[first], both.per_image[first], both.proposals[first], both.rpn_candidates[first],
               below_threshold=both.below_threshold[first])


def _image_outputs(run: Run, image: int) -> dict[str, np.ndarray]:
    """Everything a run gave for one image, by name: detections, dense tensors, proposals, final-NMS inputs."""
    found = run.detections[image]
    outputs = {"boxes": found.boxes, "scores": found.scores, "labels": found.labels}
    extra = ((MASKS, found.masks), (MASK_LOGITS, found.mask_logits), (KEYPOINTS, found.keypoints),
             (KEYPOINT_SCORES, found.keypoint_scores), (KEYPOINT_LOGITS, found.keypoint_logits))
    outputs.update({key: value for key, value in extra if value is not None})
    if run.per_image:
        outputs.update(run.per_image[image])
    if run.proposals:
        outputs[PROPOSALS] = run.proposals[image]
    if run.candidates:  # a repeat must decode the same candidates
        inputs = run.candidates[image]
        outputs.update({f"{NMS_INPUTS}.{key}": getattr(inputs, key) for key in ("boxes", "scores", "labels")})
    return outputs


@contextlib.contextmanager
def _record_nms(calls: list[Detections]) -> Iterator[None]:
    """Record every batched NMS's inputs (boxes, scores, class or level) while the model runs."""
    import torchvision.ops.boxes as box_ops

    original = box_ops.batched_nms

    def recording(boxes, scores, idxs, iou_threshold):
        calls.append(Detections.of({"boxes": boxes.detach().numpy(), "scores": scores.detach().numpy(),
                                    "labels": idxs.detach().numpy()}))
        return original(boxes, scores, idxs, iou_threshold)

    box_ops.batched_nms = recording
    try:
        yield
    finally:
        box_ops.batched_nms = original


@contextlib.contextmanager
def _record_below_threshold(model: torch.nn.Module, calls: list[Detections], below: list[Detections]) -> Iterator[None]:
    """While `_record_nms` records into `calls`, run the final post-processing once more before each of its own calls,
    with the score threshold at `BELOW_THRESHOLD` of its own, and move what that one passed to its NMS into `below`;
    the model's own call then runs as it is (its detections and `calls` unchanged). Only on a private copy."""
    holder = model.roi_heads if hasattr(model, "roi_heads") else model
    original, threshold = holder.postprocess_detections, holder.score_thresh

    def twice(*args: Any, **kwargs: Any) -> Any:
        start = len(calls)
        holder.score_thresh = threshold * BELOW_THRESHOLD
        try:
            original(*args, **kwargs)
        finally:
            holder.score_thresh = threshold
        below.extend(calls[start:])
        del calls[start:]
        return original(*args, **kwargs)

    holder.postprocess_detections = twice
    try:
        yield
    finally:
        del holder.postprocess_detections


def run_eager(built: BuiltDetector, inputs: Sequence[torch.Tensor], float64: bool) -> Run:
    """Detections and dense tensors of each image (dense ones named `module#call`, images concatenated);
    for Faster R-CNN the RPN's proposals; the final NMS's candidates (its inputs), and in float64 also the RPN NMS's;
    for Mask R-CNN each detection's mask head logits of its label (verify/detect/masks.py) with its pasted mask; for
    Keypoint R-CNN each detection's heatmap logits (verify/detect/keypoints.py) with its keypoints."""
    import copy

    import torch

    from exporter.families.detectors import KEYPOINT_LOGITS as KEYPOINT_MODULE
    from exporter.families.detectors import MASK_LOGITS as MASK_MODULE
    from verify.detect.masks import label_logits

    model = copy.deepcopy(built.model).double() if float64 else built.model
    dtype = torch.float64 if float64 else torch.float32
    modules = built.dense_modules
    result = Run([])
    per_image: list[dict[str, np.ndarray]] = []
    for image in inputs:
        seen: dict[str, list[torch.Tensor]] = {m: [] for m in modules}
        hooks = [model.get_submodule(m).register_forward_hook(
            lambda mod, args, out, store=seen[m]: store.append(_one_tensor(out).detach().clone())) for m in modules]
        proposals: list[torch.Tensor] = []
        if built.per_proposal_modules:  # the box head's rows are these proposals, in this order
            hooks.append(model.roi_heads.register_forward_pre_hook(
                lambda mod, args, store=proposals: store.append(args[1][0].detach().clone())))
        logits: list[torch.Tensor] = []
        if built.masks:  # one row per detection, in the detections' order
            hooks.append(model.get_submodule(MASK_MODULE).register_forward_hook(
                lambda mod, args, out, store=logits: store.append(out.detach().clone())))
        heat: list[torch.Tensor] = []
        if built.keypoints:  # one row per detection, in the detections' order
            hooks.append(model.get_submodule(KEYPOINT_MODULE).register_forward_hook(
                lambda mod, args, out, store=heat: store.append(out.detach().clone())))
        calls: list[Detections] = []
        try:
            with (torch.inference_mode(), _record_nms(calls),
                  _record_below_threshold(model, calls, result.below_threshold) if float64
                  else contextlib.nullcontext()):
                out = model([image.to(dtype)])[0]
        finally:
            for hook in hooks:
                hook.remove()
        found = {k: v.numpy() for k, v in out.items()}
        if logits:
            found[MASK_LOGITS] = label_logits(logits[-1].numpy(), found["labels"])
        if heat:
            found[KEYPOINT_LOGITS] = heat[-1].numpy()
        result.detections.append(Detections.of(found))
        if calls:
            result.candidates.append(calls[-1])
        if calls and proposals and float64:  # Faster R-CNN calls batched NMS twice: the RPN's first, the final last
            result.rpn_candidates.append(calls[0])
        result.proposals += [p.double().numpy() for p in proposals]
        per_image.append({f"{m}#{i}": t.numpy() for m in modules for i, t in enumerate(seen[m])})
    result.per_image = per_image
    result.dense = concat_dense(per_image, inputs)
    return result


def _one_tensor(out: Any) -> torch.Tensor:
    """A dense module's output for one image: a tensor, or an anchor generator's list of one tensor per image (every
    call here holds one image)."""
    return out[0] if isinstance(out, (list, tuple)) else out


def folded_samples(built: BuiltDetector, inputs: Sequence[torch.Tensor]) -> list[dict[str, np.ndarray]]:
    """Each image's dense tensors from `built` with every norm that follows a convolution folded into it, in float32
    (verify/judge/folding.py `folded_float32`): ONNX Runtime folds them so, and rounds otherwise than eager. The
    per-proposal tensors are left out (the folded RPN may keep other proposals); [] where nothing folds."""
    from dataclasses import replace

    from verify.judge.folding import folded_float32

    inputs = [image.clone() for image in inputs]  # private copies: a model that writes into its input spoils these
    folded = folded_float32(built.model, None, call=lambda model: model([inputs[0].clone()]))
    if folded is None:
        return []
    from exporter.families.detectors import ANCHOR_MODULES

    rows = {*Judging.of(built).per_proposal, *ANCHOR_MODULES.values()}  # anchors: no norm in them, one floor each
    run = run_eager(replace(built, model=folded), inputs, float64=False)
    return [{name: value for name, value in image.items() if name.rpartition("#")[0] not in rows}
            for image in run.per_image]


def reversed_samples(built: BuiltDetector, inputs: Sequence[torch.Tensor]) -> list[dict[str, np.ndarray]]:
    """Each image's dense tensors from `built` in float32 with every convolution that sums over input channels
    (torch's own Conv2d, groups 1, unhooked) summing them in reverse order: its weight and its input flipped along the
    channels, the same sums taken in another order, as another runtime's kernels take them (ONNX Runtime's blocked
    convolutions; the layer verdict's `verify/explain/rerun.py float32_evaluations` judges each layer so too). A
    correct ONNX Runtime run of fasterrcnn_mobilenet_v3_large_320_fpn reached 4.66x a quiet channel's floor of
    `rpn.head.bbox_pred#2` (5x5 values a channel; image seed 1, 2 torch threads), where eager's rounding was 4.7x
    and its folded one 4.9x under ONNX Runtime's, and this run's 2.2x (hunt 23b: that run now 3.29x, the worst of
    bench/calibrate_detectors.py's correct runs 3.55x). The per-proposal tensors and the anchors are left out, as
    in `folded_samples`; [] where no convolution is reversed."""
    import copy
    from dataclasses import replace

    import torch

    from exporter.families.detectors import ANCHOR_MODULES
    from verify.judge.summation import hooked

    model = copy.deepcopy(built.model).float().eval()

    def flipped(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0].flip(1), *args[1:])

    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == 1 and m.in_channels > 1
             and type(m).forward is torch.nn.Conv2d.forward and type(m)._conv_forward is torch.nn.Conv2d._conv_forward
             and not hooked(m)]
    if not convs:
        return []
    with torch.no_grad():
        for conv in convs:
            conv.weight.copy_(conv.weight.flip(1))
            conv.register_forward_pre_hook(flipped)
    rows = {*Judging.of(built).per_proposal, *ANCHOR_MODULES.values()}
    run = run_eager(replace(built, model=model), [image.clone() for image in inputs], float64=False)
    return [{name: value for name, value in image.items() if name.rpartition("#")[0] not in rows}
            for image in run.per_image]


def concat_dense(per_image: list[dict[str, np.ndarray]], inputs: Sequence[torch.Tensor]) -> dict[str, np.ndarray]:
    """One array per dense tensor over all images (axis 0); a tensor whose rows differ between runs
    (the box head's, one row per proposal) still lines up image by image. Images of several sizes: one
    array per tensor and size, named `module#call@HxW` (feature maps of two sizes do not stack)."""
    import numpy as np

    sizes = ["x".join(map(str, image.shape[-2:])) for image in inputs]
    several = len(set(sizes)) > 1
    groups: dict[str, list[np.ndarray]] = {}
    for size, tensors in zip(sizes, per_image, strict=True):
        for name, value in tensors.items():
            groups.setdefault(f"{name}@{size}" if several else name, []).append(value)
    return {name: np.concatenate(values, axis=0) for name, values in groups.items()}
