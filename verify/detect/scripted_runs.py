"""A TorchScript detector file run: its forward for the detections, and its own pieces (transform, backbone, heads,
RPN, box coder, post-processing) called one by one for the dense tensors, proposals and final-NMS inputs that no
hook can show inside a scripted module; each checked to compose to the forward's own detections on the CPU."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.errors import ExportError
from verify.detect.eager_runs import GUARD_DEVICE, concat_dense
from verify.detect.export import _first_line
from verify.detect.keypoints import KEYPOINT_LOGITS, KEYPOINT_SCORES, KEYPOINTS
from verify.detect.match import MASK_LOGITS, MASKS, Detections
from verify.detect.nms_inputs import CLASS_LOGITS, SMALL_BOX
from verify.detect.report import Run

if TYPE_CHECKING:
    import torch


def _run_torchscript(path: Path, inputs: Sequence[torch.Tensor], dense: list[str], device: str = GUARD_DEVICE) -> Run:
    """The file as written (its forward) for detections; its own pieces, called one by one as its forward calls them,
    for the dense tensors and (Faster R-CNN) the RPN's proposals, which no hook can show inside a scripted module.
    On the CPU the pieces must compose to the forward's own detections bit for bit, or the file's forward computes
    something else (on a GPU a fuser may optimize the forward's graph otherwise than the pieces', not asked)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that TorchScript is deprecated on every load
        _script_image_list()
        model = load_scripted(path, device)
        modules = list(dict.fromkeys(name.partition("@")[0].partition("#")[0] for name in dense))
        result = Run([])
        per_image = []
        decoder = None
        with torch.inference_mode():
            for image in inputs:
                try:
                    _, out = model([image.to(device)])
                    pieces = _script_pieces(model, image.to(device), modules) if modules else None
                except Exception as exc:  # a scripted module raises torch.jit.Error and others
                    raise ExportError(f"the TorchScript file fails at run time ({_first_line(exc)})") from None
                found = {k: v.cpu().numpy() for k, v in out[0].items()}
                if pieces is None:
                    result.detections.append(Detections.of(found))
                    continue
                tensors, proposals, composed = pieces
                rows = tensors.pop(SCRIPT_MASKS, None)
                if rows is not None:  # the file's own mask head on its own detections: one row each
                    from verify.detect.masks import label_logits

                    try:
                        found[MASK_LOGITS] = label_logits(rows.cpu().numpy(), found["labels"])
                    except ValueError as exc:
                        raise ExportError(f"the TorchScript file's mask head gives no row per detection ({exc})") \
                            from None
                heat = tensors.pop(SCRIPT_KEYPOINTS, None)
                if heat is not None:  # the file's own keypoint head on its own detections: one row each
                    found[KEYPOINT_LOGITS] = heat.cpu().numpy()
                result.detections.append(Detections.of(found))
                keys = ("boxes", "scores", "labels", *(k for k in (MASKS, KEYPOINTS, KEYPOINT_SCORES) if k in out[0]))
                if composed is not None and device == "cpu" and not all(  # elsewhere a fuser may round otherwise
                        key in composed and torch.equal(out[0][key], composed[key]) for key in keys):
                    raise ExportError("the TorchScript file's forward does not give what its own transform, backbone "
                                      "and heads give when called one by one: it computes something else than the "
                                      "detector it holds")
                per_image.append({name: value.cpu().numpy() for name, value in tensors.items()})
                if proposals is None and _decodes_in_forward(model):
                    result.candidates.append(_script_nms_inputs(model, image.to(device),
                                                                out[0] if device == "cpu" else None))
                if proposals is not None:
                    result.proposals.append(proposals.cpu().double().numpy())
                    if SCRIPT_LOGITS in tensors and SCRIPT_REGRESSION in tensors:
                        decoder = decoder or _script_decoder(model)
                        found = _script_candidates(model, decoder, image.to(device), tensors, proposals,
                                                   out[0] if device == "cpu" else None)
                        result.candidates.append(found)
    result.per_image = per_image
    result.dense = concat_dense(per_image, inputs) if per_image else {}
    return result


SCRIPT_MASKS = "roi_heads.mask_predictor.mask_fcn_logits#0"
"""Mask R-CNN's mask logits (one row per detection) as the file's own mask head gives them on its own detections: kept
with the detections (verify/detect/masks.py), never a dense tensor."""
SCRIPT_KEYPOINTS = "roi_heads.keypoint_predictor.kps_score_lowres#0"
"""Keypoint R-CNN's heatmap logits (one row per detection) as the file's own keypoint head gives them on its own
detections: kept with the detections (verify/detect/keypoints.py), never a dense tensor."""
SCRIPT_LOGITS, SCRIPT_REGRESSION = CLASS_LOGITS, "roi_heads.box_predictor.bbox_pred#0"
"""Faster R-CNN's box-head outputs (one row per proposal) that the file's own box coder decodes into its final-NMS
inputs (`_script_candidates`)."""


def _script_decoder(model: Any) -> Any:
    """The scripted file's own box coder of its box head, callable from Python (torch.jit.load leaves the BoxCoder
    class unknown to Python, and scripting that class alone fails): a scripted module holding the file's `roi_heads`
    whose forward is `roi_heads.box_coder.decode`; its weights and clamp are the file's."""
    import torch

    class Decode(torch.nn.Module):
        def __init__(self, heads: Any) -> None:
            super().__init__()
            self.heads = heads

        def forward(self, codes: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
            return self.heads.box_coder.decode(codes, boxes)

    try:
        return torch.jit.script(Decode(model.roi_heads))
    except Exception as exc:  # torch.jit raises RuntimeError and others for a file without torchvision's box coder
        raise ExportError(f"the TorchScript file's box coder cannot be called ({_first_line(exc)})") from None


def _script_candidates(model: Any, decoder: Any, image: torch.Tensor, tensors: dict[str, torch.Tensor],
                       proposals: torch.Tensor, detections: dict[str, torch.Tensor] | None) -> Detections:
    """Faster R-CNN's final-NMS inputs of one image as the scripted file makes them (hunt 21a): the file's box-head
    outputs decoded by the file's own box coder, then torchvision's RoIHeads.postprocess_detections up to its NMS
    (softmax, clip to the image, background dropped, the file's score threshold, small boxes dropped). Given the
    forward's own `detections` (on the CPU), the NMS and cap replayed on them must give those bit for bit, or the
    file's post-processing computes something else (a one-line ExportError)."""
    import torch
    from torchvision.ops import boxes as box_ops

    heads = model.roi_heads
    images, _ = model.transform([image])
    size = images.image_sizes[0]
    logits, codes = tensors[SCRIPT_LOGITS], tensors[SCRIPT_REGRESSION]
    boxes = box_ops.clip_boxes_to_image(decoder(codes, [proposals]), size)[:, 1:].reshape(-1, 4)
    scores = torch.nn.functional.softmax(logits, -1)[:, 1:].reshape(-1)
    labels = torch.arange(logits.shape[-1], device=logits.device).view(1, -1).expand_as(logits)[:, 1:].reshape(-1)
    inds = torch.where(scores > heads.score_thresh)[0]
    boxes, scores, labels = boxes[inds], scores[inds], labels[inds]
    keep = box_ops.remove_small_boxes(boxes, min_size=SMALL_BOX)
    found = {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
    return _replayed(model, images, image, found, float(heads.nms_thresh), int(heads.detections_per_img), detections,
                     "its own box coder's candidates")


def _replayed(model: Any, images: Any, image: torch.Tensor, found: dict[str, torch.Tensor], thresh: float, cap: int,
              detections: dict[str, torch.Tensor] | None, source: str) -> Detections:
    """A scripted detector's final-NMS inputs `found` as Detections, once torchvision's NMS at the file's own `thresh`
    and `cap` replayed on them (with its transform's resize back) gives the forward's own `detections` bit for bit
    (None: not asked); else a one-line ExportError naming `source`."""
    import torch
    from torchvision.ops import boxes as box_ops

    boxes, scores, labels = found["boxes"], found["scores"], found["labels"]
    if detections is not None:
        kept = box_ops.batched_nms(boxes, scores, labels, thresh)[:cap]
        replayed = model.transform.postprocess([{"boxes": boxes[kept], "scores": scores[kept], "labels": labels[kept]}],
                                               images.image_sizes, [tuple(image.shape[-2:])])[0]
        if not all(torch.equal(detections[key], replayed[key]) for key in ("boxes", "scores", "labels")):
            raise ExportError(f"the TorchScript file's forward does not keep what {source} give through torchvision's "
                              "final NMS: its post-processing computes something else than the detector it holds")
    return Detections.of({"boxes": boxes.cpu().numpy(), "scores": scores.cpu().numpy(),
                          "labels": labels.cpu().numpy()})


DECODING_IN_FORWARD = ("RetinaNet", "FCOS", "SSD")
"""The scripted detectors (TorchScript's `original_name`) whose box decoding runs inside their `postprocess_detections`,
NMS included: their final-NMS inputs come from that method with the NMS made to suppress nothing
(`_script_nms_inputs`)."""
SPLIT_PER_LEVEL = ("RetinaNet", "FCOS")
"""The scripted detectors whose forward splits the head's outputs and the anchors per level before its post-processing
(SSD's takes them whole)."""
NO_SUPPRESSION = 2.0
"""An NMS IoU threshold no pair of boxes exceeds (an IoU is at most 1; NaN compares false): the NMS keeps every
candidate."""
NO_CAP = 2**31 - 1
"""A detections cap no image reaches: the post-processing keeps every candidate its NMS kept."""


def _decodes_in_forward(model: Any) -> bool:
    return getattr(model, "original_name", None) in DECODING_IN_FORWARD


def _script_nms_inputs(model: Any, image: torch.Tensor, detections: dict[str, torch.Tensor] | None) -> Detections:
    """RetinaNet's, FCOS's or SSDlite's final-NMS inputs of one image as the scripted file makes them (hunt 22a):
    its own transform, backbone, head and anchor generator called as its forward calls them, then its own compiled
    `postprocess_detections` (its box coder, weights and clamp, its score threshold and top-k, its clip to the image)
    with its NMS threshold at NO_SUPPRESSION and no cap, so that what it returns is every candidate its NMS is given,
    highest score first. Given the forward's own `detections` (on the CPU), torchvision's NMS and cap replayed on them
    at the file's own threshold and cap must give those bit for bit, or the file's post-processing computes something
    else (a one-line ExportError). The file's attributes are restored after."""

    images, _ = model.transform([image])
    features = model.backbone(images.tensors)
    levels = list(features.values()) if isinstance(features, dict) else [features]
    head = model.head(levels)
    anchors = model.anchor_generator(images, levels)
    if model.original_name in SPLIT_PER_LEVEL:  # its forward splits the head's outputs and anchors per level
        sizes = [level.size(2) * level.size(3) for level in levels]
        per_anchor = head["cls_logits"].size(1) // sum(sizes)
        sizes = [size * per_anchor for size in sizes]
        head = {key: list(value.split(sizes, dim=1)) for key, value in head.items()}
        anchors = [list(found.split(sizes)) for found in anchors]
    thresh, cap = float(model.nms_thresh), int(model.detections_per_img)
    try:
        model.nms_thresh, model.detections_per_img = NO_SUPPRESSION, NO_CAP
        found = model.postprocess_detections(head, anchors, images.image_sizes)[0]
    except Exception as exc:  # a scripted module raises torch.jit.Error and others
        raise ExportError(f"the TorchScript file's post-processing cannot be called ({_first_line(exc)})") from None
    finally:
        model.nms_thresh, model.detections_per_img = thresh, cap
    return _replayed(model, images, image, found, thresh, cap, detections, "its own post-processing's candidates")


def _script_image_list() -> None:
    """Compile torchvision's ImageList into this process, so that a loaded file's transform can hand one to Python
    and take it back (torch.jit.load leaves the class unknown to Python: an INTERNAL ASSERT)."""
    import torch
    from torchvision.models.detection.image_list import ImageList

    torch.jit.script(ImageList)


def _attribute(model: Any, dotted: str) -> Any:
    """`model.a.b.0`: a scripted module has no get_submodule."""
    for part in dotted.split("."):
        model = getattr(model, part)
    return model


def _script_pieces(model: Any, image: torch.Tensor, modules: list[str]) -> tuple[
        dict[str, torch.Tensor], torch.Tensor | None, dict[str, Any] | None]:
    """One image through the scripted detector's pieces as GeneralizedRCNN, RetinaNet, FCOS and SSD's forward call them:
    (each dense module's outputs named `module#call` as eager's hooks name them, the RPN's proposals or None, the
    post-processed detections or None). The anchors come from the file's own anchor generator. RetinaNet, FCOS and SSD's
    decoding runs in the file's own post-processing: their pieces are the dense heads and anchors, their detections
    come from the forward alone, and their final-NMS inputs from `_script_nms_inputs`."""
    from exporter.families.detectors import ANCHOR_MODULES

    images, _ = model.transform([image])
    features = model.backbone(images.tensors)
    levels = list(features.values()) if isinstance(features, dict) else [features]
    tensors: dict[str, torch.Tensor] = {}
    for name in set(modules) & set(ANCHOR_MODULES.values()):  # every level's anchors, as its forward makes them
        tensors[f"{name}#0"] = _attribute(model, name)(images, levels)[0]
    proposals = None
    if hasattr(model, "rpn"):
        logits, deltas = model.rpn.head(levels)
        tensors.update({f"rpn.head.cls_logits#{i}": t for i, t in enumerate(logits)})
        tensors.update({f"rpn.head.bbox_pred#{i}": t for i, t in enumerate(deltas)})
        found, _ = model.rpn(images, features)
        heads = model.roi_heads
        rows = heads.box_head(heads.box_roi_pool(features, found, images.image_sizes))
        scores, boxes = heads.box_predictor(rows)
        tensors["roi_heads.box_predictor.cls_score#0"], tensors["roi_heads.box_predictor.bbox_pred#0"] = scores, boxes
        detections, _ = heads(features, found, images.image_sizes)
        if getattr(heads, "mask_predictor", None) is not None:  # Mask R-CNN: its mask head on its detections
            pooled = heads.mask_roi_pool(features, [d["boxes"] for d in detections], images.image_sizes)
            tensors[SCRIPT_MASKS] = heads.mask_predictor(heads.mask_head(pooled))
        if getattr(heads, "keypoint_predictor", None) is not None:  # Keypoint R-CNN: its keypoint head likewise
            pooled = heads.keypoint_roi_pool(features, [d["boxes"] for d in detections], images.image_sizes)
            tensors[SCRIPT_KEYPOINTS] = heads.keypoint_predictor.kps_score_lowres(heads.keypoint_head(pooled))
        proposals = found[0]
    else:
        head = model.head
        for name in modules:
            if ".module_list." in name:  # SSD: the level's block (SSDlite's ends in its `.1` conv; SSD300's is one)
                branch, _, rest = name.partition(".module_list.")
                level = rest.partition(".")[0]
                tensors[f"{name}#0"] = _attribute(model, f"{branch}.module_list.{level}")(levels[int(level)])
            elif name == "head.classification_head.cls_logits":
                tensors.update({f"{name}#{i}": head.classification_head.cls_logits(head.classification_head.conv(f))
                                for i, f in enumerate(levels)})
            elif name in ("head.regression_head.bbox_reg", "head.regression_head.bbox_ctrness"):  # FCOS: both
                last = _attribute(model, name)  # on the regression head's tower, as its forward calls them
                tensors.update({f"{name}#{i}": last(head.regression_head.conv(f)) for i, f in enumerate(levels)})
        return tensors, None, None
    detections = model.transform.postprocess(detections, images.image_sizes, [tuple(image.shape[-2:])])
    return tensors, proposals, detections[0]


def load_scripted(path: Path, device: str = GUARD_DEVICE) -> Any:
    """The scripted detector on `device`; a file that will not load is a one-line ExportError."""
    import torch
    import torchvision  # noqa: F401 (registers torchvision::nms and roi_align, which the scripted code calls)

    try:
        return torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # torch.jit raises RuntimeError and others for a file it cannot load
        raise ExportError(f"the TorchScript file cannot be loaded ({_first_line(exc)})") from None
