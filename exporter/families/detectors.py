"""Whole detectors: Faster R-CNN, Mask R-CNN, Keypoint R-CNN, RetinaNet, FCOS, SSDlite and SSD300, built by
torchvision's own builders.

Standalone for now (`build_detector(name, norm, weights, seed)`); not yet in `exporter.backbones`.
Every detector is built small: 320 px (the transform's min/max size), few proposals and detections,
so a CPU run takes seconds. Norm variants, as torchvision builds them:
- `batch`: what the builder makes with weights=None (BatchNorm2d everywhere);
- `frozen`: FrozenBatchNorm2d (eps 1e-5) in the backbone body, what the builder passes as `norm_layer`
  once backbone weights load (`is_trained`); the v2 and SSDlite builders never do, so they have none;
- `frozen-eps0`: the same with eps 0, what `overwrite_eps(model, 0.0)` sets for the ResNet COCO_V1 weights.

Synthetic weights detect: the body takes the project's synthetic classifier weights (exporter/weights.py),
then the heads are calibrated on a fixed seeded image (bright rectangles on texture) so that it gives
tens of detections above the score threshold, spread over classes and anchor sizes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.errors import UsageError
from exporter.messages import MAX_MESSAGE
from exporter.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import nn

IMAGE_SIZE = 320
"""The transform's min and max size: every detector runs at 320 px (SSDlite is 320 by design; SSD300 300, its
registration's `image_size`)."""
PROPOSALS = 100
"""Faster R-CNN's RPN proposals after NMS at test time (torchvision: 1000; the 320 models: 150)."""
DETECTIONS_PER_IMAGE = 50
"""The cap on detections per image (torchvision: 100 or 300)."""
TOPK_CANDIDATES = 100
"""RetinaNet / SSDlite candidates per level (or class) before NMS (torchvision: 1000 / 300)."""
CALIBRATION_SHAPE = (3, IMAGE_SIZE, IMAGE_SIZE)
CALIBRATION_RECTANGLES = 12
MIN_IMAGE_SIDE = 5
"""The smallest height and width of a synthetic image: its rectangles are at least 4 px and lie strictly inside the
image (calibration_image), so a smaller one cannot be drawn."""
RPN_LOGIT_STD = 3.0
"""Objectness logits spread this wide: top-k cut-offs then fall between well separated scores."""
CLASS_LOGIT_STD = 2.5
"""Box-head class logits (softmax over 91 classes): several classes above the 0.05 threshold per proposal."""
BOX_DELTA_STD = 1.0
"""Box-regression outputs (before the box coder's weights, 10/10/5/5 for Faster R-CNN): boxes move and
resize by about 10-20 % of a proposal, so detections differ from their anchors."""
DENSE_DELTA_STD = 0.1
"""RetinaNet / SSDlite regression outputs (box coder weights 1)."""
DENSE_CANDIDATES = 600
"""RetinaNet / FCOS / SSDlite: anchor x class scores above the threshold on the calibration image."""
FCOS_DISTANCE_MEAN = 1.5
"""FCOS's box regression (left, top, right, bottom distances in anchor sizes, after a ReLU): boxes about three anchors
wide, their sides well clear of the ReLU's zero (FCOS_DISTANCE_STD spread)."""
FCOS_DISTANCE_STD = 0.3
MASK_LOGIT_STD = 2.0
"""Mask R-CNN's mask logits (before the sigmoid): each detection's 28 x 28 mask probabilities spread on both sides of
0.5 (about 0.12 to 0.88 within one standard deviation), so an error in the mask path moves them visibly."""
KEYPOINT_LOGIT_STD = 2.0
"""Keypoint R-CNN's heatmap logits (its predictor's transposed convolution, before the upsampling and the argmax): each
detection's 17 maxima spread over its box, their scores (the heatmap's value at its maximum) a few units, never
saturated (verify/detect/keypoints.py)."""
RCNN_KINDS = ("fasterrcnn", "maskrcnn", "keypointrcnn")
"""The kinds with an RPN and a box head (Mask R-CNN and Keypoint R-CNN are Faster R-CNNs with a mask or keypoint
head)."""
KEYPOINT_KINDS = ("keypointrcnn",)
"""The kinds whose detections carry keypoints (judged per matched pair, verify/detect/keypoints.py)."""
KEYPOINT_LOGITS = "roi_heads.keypoint_predictor.kps_score_lowres"
"""Keypoint R-CNN's heatmap logits: one row per detection (N x K x 28 x 28), upsampled x2 then argmaxed per keypoint."""
MASK_KINDS = ("maskrcnn",)
"""The kinds whose detections carry masks (judged per matched pair, verify/detect/masks.py)."""
MASK_LOGITS = "roi_heads.mask_predictor.mask_fcn_logits"
"""Mask R-CNN's mask logits: one row per detection (N x classes x 28 x 28), the label's channel pasted as its mask."""
PER_PROPOSAL_MODULES = ["roi_heads.box_predictor.cls_score", "roi_heads.box_predictor.bbox_pred"]
"""Faster R-CNN's box-head outputs: one row per RPN proposal, in the RPN's order."""
ANCHOR_MODULES = {"fasterrcnn": "rpn.anchor_generator", "maskrcnn": "rpn.anchor_generator",
                  "keypointrcnn": "rpn.anchor_generator",
                  "retinanet": "anchor_generator", "fcos": "anchor_generator", "ssd": "anchor_generator"}
"""Each kind's anchor generator: its anchors (one K x 4 tensor per image, every level) are judged before NMS as a dense
tensor, so that a level no proposal or detection comes from is judged too (hunt 19a: one RPN level's anchors 5 % off
exited 0 when that level kept no proposal)."""
MIN_DETECTIONS = 20
"""What calibration must reach on the calibration image, or the build fails (never a silent dud)."""


@dataclass(frozen=True)
class Detector:
    name: str
    kind: str
    """`fasterrcnn`, `maskrcnn`, `keypointrcnn`, `retinanet`, `fcos` or `ssd`: how its heads are calibrated and which
    tensors are dense."""
    body_backbone: str | None
    """The project backbone whose synthetic classifier weights the body takes (None: BN calibration only)."""
    norms: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)
    builder: str | Callable[..., nn.Module] | None = None
    """torchvision's builder (`torchvision.models.detection.<builder>`) when it is not `name` (a variant registered
    under its own name, e.g. at another size), or a function called as one (`weights=None, weights_backbone=None`,
    the options, `num_classes` for a fine-tuned checkpoint): a detector torchvision builds with no builder of its own
    (an SSD on another VGG), drawn from the build's seed."""
    image_size: int = IMAGE_SIZE
    """The fixed size an SSD's transform resizes every image to (its builder's: SSDlite 320, SSD300 300); the others
    scale to their options' min and max size."""

    @property
    def default_norm(self) -> str:
        return "frozen" if "frozen" in self.norms else self.norms[0]


DETECTORS: Registry[Detector] = Registry("detector")
_SIZE = {"min_size": IMAGE_SIZE, "max_size": IMAGE_SIZE}
_RCNN = {**_SIZE, "rpn_pre_nms_top_n_test": 2 * PROPOSALS, "rpn_post_nms_top_n_test": PROPOSALS,
         "box_detections_per_img": DETECTIONS_PER_IMAGE}
_DENSE = {"detections_per_img": DETECTIONS_PER_IMAGE, "topk_candidates": TOPK_CANDIDATES}
_RESNET_NORMS = ("batch", "frozen", "frozen-eps0")

for _detector in (
    Detector("fasterrcnn_resnet50_fpn", "fasterrcnn", "resnet50", _RESNET_NORMS, _RCNN),
    Detector("fasterrcnn_resnet50_fpn_v2", "fasterrcnn", "resnet50", ("batch",), _RCNN),
    Detector("fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn", "mobilenet_v3_large", ("batch", "frozen"), _RCNN),
    Detector("fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn", "mobilenet_v3_large", ("batch", "frozen"),
             _RCNN),
    Detector("maskrcnn_resnet50_fpn", "maskrcnn", "resnet50", _RESNET_NORMS, _RCNN),
    Detector("maskrcnn_resnet50_fpn_v2", "maskrcnn", "resnet50", ("batch",), _RCNN),
    Detector("keypointrcnn_resnet50_fpn", "keypointrcnn", "resnet50", _RESNET_NORMS, _RCNN),
    Detector("retinanet_resnet50_fpn", "retinanet", "resnet50", _RESNET_NORMS, {**_SIZE, **_DENSE}),
    Detector("retinanet_resnet50_fpn_v2", "retinanet", "resnet50", ("batch",), {**_SIZE, **_DENSE}),
    Detector("fcos_resnet50_fpn", "fcos", "resnet50", ("batch", "frozen"), {**_SIZE, **_DENSE}),
    Detector("ssdlite320_mobilenet_v3_large", "ssd", None, ("batch",), _DENSE),
    # SSD300's VGG-16 (no norm layer) as its builder draws it from the seed: each conv's largest value on the
    # calibration image is 0.8 to 117 (nothing explodes or dies), so only the heads are calibrated
    Detector("ssd300_vgg16", "ssd", None, ("batch",), _DENSE, image_size=300),
):
    DETECTORS.add(_detector.name, _detector)


DETECTOR_WORDS = ("rcnn", "retinanet", "fcos", "ssd", "detr", "yolo")
"""A name holding one of these is taken for a detector: its refusal lists the detectors (unknown_model)."""
CLI_AROUND = 53
"""Characters the CLI's one-line limit counts around a `-b` refusal: "Invalid value for '-b': " and " (see 'verify
export --help')" (its "error: " is outside the limit)."""
REFUSAL_BUDGET = MAX_MESSAGE - CLI_AROUND
"""Characters `unknown_model`'s text may take: the CLI cuts a line past exporter/messages.py MAX_MESSAGE. Every
detector's name in full took 399 of the 400 for a 7-character name (stop 49): a longer name typed, or one more
detector registered, cut the list mid-name."""
ECHOED = 40
"""Characters of the name typed that a refusal repeats: a longer one (a path pasted by mistake) is shown cut."""


def list_detectors() -> list[str]:
    return DETECTORS.names()


def _families(names: Iterable[str]) -> str:
    """`fasterrcnn_* (4), maskrcnn_* (2), ...`: each family prefix of `names` and how many it has, in registry
    order."""
    from collections import Counter

    counts = Counter(name.partition("_")[0] for name in names)
    return ", ".join(f"{family}_* ({count})" if count > 1 else f"{family}_*" for family, count in counts.items())


def _echoed(name: str) -> str:
    """`name` quoted as a refusal repeats it: at most ECHOED characters, and its quoted form (an unprintable character
    escaped, up to 10 characters each) at most as long as ECHOED printable ones (review 42: forty tag characters took
    402, and the CLI cut the line before what to do)."""
    cut = name if len(name) <= ECHOED else f"{name[:ECHOED]}…"
    while len(repr(cut)) > ECHOED + 3:
        cut = f"{cut.removesuffix('…')[:-1]}…"
    return repr(cut)


def _first_fitting(*texts: str) -> str:
    """The first of `texts` within REFUSAL_BUDGET (the fullest first), else the last."""
    return next((text for text in texts if len(text) <= REFUSAL_BUDGET), texts[-1])


def unknown_model(name: str, backbones: Iterable[str]) -> UsageError:
    """The one-line refusal of `-b name`, neither one of `backbones` nor a registered detector, naming the detectors
    too: a detector-like name gets every detector, any other every backbone and the detectors' families (`verify
    export --help` lists both in full). Each list is shown whole while the line fits REFUSAL_BUDGET; past it, the
    closest names and each family's count, with where every name is listed (stop 49: the thirteenth detector would have
    cut the full list for any name)."""
    import difflib

    names, backbones = DETECTORS.names(), list(backbones)
    shown = _echoed(name)
    meant = "".join(name.split()).lower()  # review 31: `FCOS_resnet50_fpn` or ` resnet18` named no near match
    if meant != name and (meant in DETECTORS or meant in backbones):
        return UsageError(f"Unknown {'detector' if meant in DETECTORS else 'backbone'} {shown}; did you mean "
                          f"{meant!r}? (names are lower case, without spaces)")
    every = "every name: verify export --help"
    if any(word in name.lower() for word in DETECTOR_WORDS):
        close = difflib.get_close_matches(meant, names, n=3, cutoff=0.4)
        nearest = f"closest: {', '.join(close)}; " if close else ""
        return UsageError(_first_fitting(f"No detector {shown}: {', '.join(names)}",
                                         f"No detector {shown}; {nearest}{len(names)} detectors "
                                         f"({_families(names)}); {every}",
                                         f"No detector {shown}; {nearest}{len(names)} detectors; {every}"))
    close = difflib.get_close_matches(meant, backbones, n=3, cutoff=0.4)
    nearest = f"closest: {', '.join(close)}; " if close else ""
    return UsageError(_first_fitting(f"Unknown backbone {shown}; choose one of: {', '.join(backbones)}; or a whole "
                                     f"detector ({_families(names)})",
                                     f"Unknown backbone {shown}; {nearest}{len(backbones)} backbones and "
                                     f"{len(names)} detectors ({_families(names)}); {every}",
                                     f"Unknown backbone {shown}; {nearest}{len(backbones)} backbones and "
                                     f"{len(names)} detectors; {every}"))


def resize_scale(detector: Detector, height: int, width: int) -> float | None:
    """The factor the detector's own transform scales an image by: GeneralizedRCNNTransform scales the short side to
    min_size unless the long side would pass max_size; None for an SSD, which resizes every image to its fixed
    size."""
    if "min_size" not in detector.options:
        return None
    return min(detector.options["min_size"] / min(height, width), detector.options["max_size"] / max(height, width))


def resized_size(detector: Detector, height: int, width: int) -> tuple[int, int]:
    """H x W of an image after the detector's own transform (`resize_scale`; interpolate floors the result); an SSD's
    fixed size."""
    scale = resize_scale(detector, height, width)
    if scale is None:
        return detector.image_size, detector.image_size
    return int(height * scale), int(width * scale)


def check_image_size(name: str, height: int, width: int) -> None:
    """Refuse an image the detector's transform would resize to nothing (torch then raises deep in the model)."""
    detector = DETECTORS.get(name)
    resized = resized_size(detector, height, width)
    if min(resized) < 1:
        side = detector.options.get("max_size", detector.image_size)  # its own size (hunt 27: a 64 px one was told 320)
        raise UsageError(f"{name} resizes each image to fit {side} pixels: a {height}x{width} image becomes "
                         f"{resized[0]}x{resized[1]}, with nothing to detect in; give images at most "
                         f"{side} times longer than they are wide")


@dataclass
class BuiltDetector:
    model: nn.Module
    detector: Detector
    norm: str
    weights: str
    """`synthetic:<seed>` or `file:<name>`."""

    @property
    def name(self) -> str:
        return self.detector.name

    @property
    def classes(self) -> int:
        """Its class count (torchvision's num_classes): the builder's 91, or a fine-tuned checkpoint's."""
        return detector_classes(self.model, self.detector.kind)

    @property
    def score_thresh(self) -> float:
        return float(_postprocess_attr(self.model, "score_thresh"))

    @property
    def nms_thresh(self) -> float:
        return float(_postprocess_attr(self.model, "nms_thresh"))

    @property
    def detections_per_img(self) -> int:
        return int(_postprocess_attr(self.model, "detections_per_img"))

    @property
    def dense_modules(self) -> list[str]:
        """The leaf modules whose outputs are judged before NMS (one tensor per call, e.g. per level)."""
        return dense_modules(self.model, self.detector.kind)


    @property
    def per_proposal_modules(self) -> list[str]:
        """The dense modules whose rows are indexed by RPN proposal (judged paired by proposal)."""
        return per_proposal_modules(self.detector.kind)

    @property
    def masks(self) -> bool:
        """Whether its detections carry masks (Mask R-CNN): judged per matched detection with their mask head."""
        return self.detector.kind in MASK_KINDS

    @property
    def keypoints(self) -> bool:
        """Whether its detections carry keypoints (Keypoint R-CNN): judged per matched detection with their heatmaps."""
        return self.detector.kind in KEYPOINT_KINDS


def per_proposal_modules(kind: str) -> list[str]:
    return PER_PROPOSAL_MODULES if kind in RCNN_KINDS else []


def _postprocess_attr(model: nn.Module, name: str) -> Any:
    holder = model.roi_heads if hasattr(model, "roi_heads") else model
    return getattr(holder, name)


def dense_modules(model: nn.Module, kind: str) -> list[str]:
    if kind in RCNN_KINDS:  # Mask R-CNN's mask logits: one row per detection, judged with its masks (masks.py)
        return ["rpn.head.cls_logits", "rpn.head.bbox_pred", ANCHOR_MODULES[kind], *PER_PROPOSAL_MODULES]
    if kind == "retinanet":
        return ["head.classification_head.cls_logits", "head.regression_head.bbox_reg", ANCHOR_MODULES[kind]]
    if kind == "fcos":
        return ["head.classification_head.cls_logits", "head.regression_head.bbox_reg",
                "head.regression_head.bbox_ctrness", ANCHOR_MODULES[kind]]
    return [*(name for head in SSD_HEADS for name, _ in ssd_level_convs(model, head)), ANCHOR_MODULES[kind]]


SSD_HEADS = ("head.classification_head", "head.regression_head")
"""An SSD's two heads, whose levels (module_list.<i>) depend on the model: each must be there at some level."""


def ssd_level_convs(model: nn.Module, head: str) -> list[tuple[str, nn.Module]]:
    """An SSD head's last convolution at each level, by name: SSDlite's `module_list.<i>.1` (after its depthwise
    block), SSD300's `module_list.<i>` (the level's only layer)."""
    from torch import nn

    found = []
    for level, block in enumerate(model.get_submodule(f"{head}.module_list")):
        convs = [(name, module) for name, module in block.named_modules() if isinstance(module, nn.Conv2d)]
        name, conv = convs[-1]
        found.append((".".join(part for part in (head, "module_list", str(level), name) if part), conv))
    return found


def missing_dense_modules(names: Iterable[str], kind: str) -> list[str]:
    """The modules of `dense_modules` (SSDlite: each head at some level, and the anchors) that no dense tensor of
    `names` (`module#call`, `module#call@HxW`) comes from, sorted: where a folder's manifest or a matrix cell's
    stored before-NMS pairs leave out a head or the anchors, that part of the detector went unjudged."""
    modules = {name.partition("#")[0] for name in names}
    if kind == "ssd":
        heads = {module.rpartition(".module_list.")[0] for module in modules}
        return sorted((set(SSD_HEADS) - heads) | ({ANCHOR_MODULES[kind]} - modules))
    return sorted(set(dense_modules(None, kind)) - modules)


def build_detector(name: str, norm: str | None = None, weights: str = "synthetic", seed: int = 0) -> BuiltDetector:
    """The detector in eval mode with `norm` (None: `frozen` where torchvision builds it) and `weights`
    (`synthetic`, seeded and calibrated; or a local checkpoint file of this detector, COCO's or fine-tuned: built with
    the class count its classification head was trained with, `checkpoint_classes`)."""
    import torch

    detector = DETECTORS.get(name)
    norm = detector.default_norm if norm is None else norm
    if norm not in detector.norms:
        raise UsageError(f"{name} has no norm variant {norm!r} (torchvision never builds it); "
                         f"choose one of: {', '.join(detector.norms)}")
    state = None if weights == "synthetic" else _checkpoint_state(Path(weights), name)
    builder = detector_builder(detector)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = builder(weights=None, weights_backbone=None, **own_options(detector.options)).eval()
        if state is None:
            _synthetic(model, detector, seed)
            source = f"synthetic:{seed}"
        else:
            classes = checkpoint_classes(model, detector, state, Path(weights))
            if classes != detector_classes(model, detector.kind):  # a fine-tuned head: built as it was trained
                torch.manual_seed(seed)
                model = builder(weights=None, weights_backbone=None, num_classes=classes,
                                **own_options(detector.options)).eval()
            source = _load_checkpoint(model, state, Path(weights), name)
    if norm != "batch":
        freeze_body_norms(model, eps=0.0 if norm == "frozen-eps0" else 1e-5)
    return BuiltDetector(model.eval(), detector, norm, source)


def detector_builder(detector: Detector) -> Callable[..., nn.Module]:
    """The function that builds `detector`: its registration's own, or torchvision's of its `builder` name (or of its
    name)."""
    if callable(detector.builder):
        return detector.builder
    import torchvision.models.detection as detection

    return getattr(detection, detector.builder or detector.name)


OPTIONS_SEED = 20_000
"""Added to the build's seed for the draws of the modules a registration passed built: their own stream, so the
builder draws what it drew before (the same seed, the same box head)."""


def own_options(options: dict[str, Any]) -> dict[str, Any]:
    """A registration's builder options for one build: a module among them (a head or an RoI pool passed built) is
    copied, so no two builds share it and one's calibration never edits another's model, and every layer of it with
    `reset_parameters` (or torch's `_reset_parameters`: nn.MultiheadAttention) draws its parameters again from the
    seed. Its weights were drawn when the registration built it, from whatever torch's global RNG held then, which
    torch seeds anew in every process: the same seed gave other weights in every run, and a seeded bug in them was seen
    in some runs only (the landing CI of stop 46). A parameter of a layer with neither keeps the value it was built
    with where all its values are one (ones, zeros: a constant the layer sets); one holding several values is refused
    (hunt 32: a head's `nn.Parameter(torch.rand(4))` was another model in every process, as before the fix); its
    buffers are kept (_refuse_drawn_tensors).
    Called after the build's `torch.manual_seed`, whose seed it draws from (OPTIONS_SEED apart); the builder's own
    draws are left as they were."""
    import copy

    import torch
    from torch import nn

    owned = {}
    with torch.random.fork_rng(devices=[]):  # the builder's own draws stay those of the seed (its box head's)
        torch.manual_seed(OPTIONS_SEED + torch.initial_seed())
        for key, value in options.items():
            if isinstance(value, nn.Module):
                value = copy.deepcopy(value)
                for path, layer in value.named_modules():
                    reset = getattr(layer, "reset_parameters", None) or getattr(layer, "_reset_parameters", None)
                    if callable(reset):
                        reset()
                    else:
                        _refuse_drawn_tensors(key, path, layer)
            owned[key] = value
    return owned


def _refuse_drawn_tensors(option: str, path: str, layer: nn.Module) -> None:
    """UsageError for a floating parameter of `layer` (one with no reset method) holding more than one value: drawn
    when the registration built it, it is not this build's seed's, so each process would build another model. A
    buffer is kept: what a layer sets or loads, never what torch's init draws (review 41: a head's anchor table and a
    FrozenBatchNorm2d's calibrated statistics, the same in every process, were refused as drawn)."""
    import torch

    for name, tensor in layer.named_parameters(recurse=False):
        if tensor is None or not tensor.is_floating_point() or tensor.numel() < 2:
            continue
        flat = tensor.detach().reshape(-1)
        if not torch.equal(flat, flat[:1].expand_as(flat)):
            where = ".".join(part for part in (option, path, name) if part)
            raise UsageError(f"The registration's {where} holds values drawn when the registration built it "
                             f"({type(layer).__name__} has no reset_parameters to draw them from the build's seed), so "
                             "each process would build another model; give that layer a reset_parameters() that sets "
                             "them, or build them as constants")


def freeze_body_norms(model: nn.Module, eps: float) -> int:
    """Every BatchNorm2d of the backbone body as FrozenBatchNorm2d with `eps`, statistics copied."""
    import torch
    from torch import nn
    from torchvision.ops.misc import FrozenBatchNorm2d

    body = model.backbone.body
    swapped = 0
    for name, module in list(body.named_modules()):
        if isinstance(module, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(module.num_features, eps=eps)
            with torch.no_grad():
                for attr in ("weight", "bias", "running_mean", "running_var"):
                    getattr(frozen, attr).copy_(getattr(module, attr))
            body.set_submodule(name, frozen)
            swapped += 1
    return swapped


CLASS_KEYS = {"fasterrcnn": "roi_heads.box_predictor.cls_score.weight",
              "maskrcnn": "roi_heads.box_predictor.cls_score.weight",
              "keypointrcnn": "roi_heads.box_predictor.cls_score.weight",
              "retinanet": "head.classification_head.cls_logits.weight",
              "fcos": "head.classification_head.cls_logits.weight"}
"""Each kind's classification layer whose output rows are its anchors per location times its classes (Faster R-CNN's
box predictor: one row a class): a fine-tuned checkpoint's class count is read from its rows. An SSD's depends on its
layout: `class_key`."""


def class_key(model: nn.Module, kind: str) -> str:
    """`CLASS_KEYS[kind]`; an SSD's first level's class conv read from `model` (SSDlite's `module_list.0.1`, SSD300's
    `module_list.0`: ssd_level_convs)."""
    if kind == "ssd":
        return f"{ssd_level_convs(model, SSD_HEADS[0])[0][0]}.weight"
    return CLASS_KEYS[kind]


def detector_classes(model: nn.Module, kind: str) -> int:
    """The class count `model` is built with (torchvision's num_classes, background included where it has one)."""
    if kind in RCNN_KINDS:
        return int(model.roi_heads.box_predictor.cls_score.out_features)
    head = model.head.classification_head
    return int(head.num_columns if kind == "ssd" else head.num_classes)


def checkpoint_classes(model: nn.Module, detector: Detector, state: dict[str, torch.Tensor], path: Path) -> int:
    """The class count `state` (a checkpoint of `detector`) was trained with, from its classification layer's rows
    over `model`'s anchors per location; `model`'s own where they do not divide (the fit check then names the key)."""
    own = detector_classes(model, detector.kind)
    key = class_key(model, detector.kind)
    if key not in state or state[key].dim() < 1 or key not in model.state_dict():
        return own
    anchors, rest = divmod(model.state_dict()[key].shape[0], own)
    classes, left = divmod(int(state[key].shape[0]), anchors)
    if rest or left or classes < 1:
        return own
    if classes < 2 and detector.kind in (*RCNN_KINDS, "ssd"):  # softmax over classes with background at 0
        raise UsageError(f"Weights file {path} is a {detector.name} with 1 class, its background only: it detects "
                         "nothing; pass a checkpoint trained with num_classes of 2 or more")
    return classes


def _checkpoint_state(path: Path, name: str) -> dict[str, torch.Tensor]:
    """A checkpoint of this detector (`torch.save(model.state_dict())`, a training checkpoint holding it, or
    .safetensors), its keys without a wrapper's prefix."""
    from exporter.weights import WEIGHT_FILE_SUFFIXES, without_wrapper_prefix

    if not path.is_file():
        raise UsageError(f"Weights file {path} does not exist; pass --weights synthetic or a {name} "
                         f"checkpoint ({'/'.join(WEIGHT_FILE_SUFFIXES)})")
    state = _read_state_dict(path)
    return without_wrapper_prefix({k.removeprefix("module."): v for k, v in state.items()})  # Lightning's `model.`


def _load_checkpoint(model: nn.Module, state: dict[str, torch.Tensor], path: Path, name: str) -> str:
    """`state` into `model`, every key of one shape (the class count is the builder's already)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    misfit = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or misfit:
        parts = [f"{len(v)} {what} (e.g. {v[0]})" for what, v in
                 (("missing", missing), ("unexpected", unexpected), ("of another shape", misfit)) if v]
        raise UsageError(f"Weights file {path} is not a {name} checkpoint: {'; '.join(parts)} keys")
    broken = [k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if broken:  # NaN weights give NaN scores, which the score threshold drops: a detector that silently sees nothing
        raise UsageError(f"Weights file {path} holds NaN or infinite values in {len(broken)} tensors (e.g. "
                         f"{broken[0]}); pass a checkpoint of a trained {name}, or --weights synthetic")
    model.load_state_dict(state, strict=False)
    return f"file:{path.name}"


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors only, never unpickled beyond them (the project's reader, before its backbone key split)."""
    import warnings

    import torch

    from exporter.weights import load_tensors, model_state, require_unexpanded_archive

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises several types for a bad file
            raise UsageError(f"Cannot read weights file {path}: not a valid .safetensors file ({exc})") from None
    with open(path, "rb") as handle:
        if handle.read(2) == b"PK":
            require_unexpanded_archive(path)  # a deflated member would expand before anything is checked
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = load_tensors(path)
    except Exception as exc:  # torch raises many types for a bad or unsafe file
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"Cannot read weights file {path} as a state dict of tensors ({first})") from None
    raw = model_state(raw, path)  # a training checkpoint's weights (or its EMA alone), as a backbone's are read
    if not isinstance(raw, dict) or not raw or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                        for k, v in raw.items()):
        raise UsageError(f"Weights file {path} does not hold a state dict of tensors")
    return raw


def calibration_image(seed: int, shape: tuple[int, int, int] = CALIBRATION_SHAPE) -> torch.Tensor:
    """A fixed image in [0, 1]: seeded texture with bright rectangles of several sizes; texture only when a side is
    under MIN_IMAGE_SIDE (no rectangle fits: `verify artifact --rebuild` draws images of a folder's golden sizes,
    and a 4x4 one ended its check in "RuntimeError: random_ expects 'from' to be less than 'to'")."""
    import torch

    gen = torch.Generator().manual_seed(10_000 + seed)
    channels, height, width = shape
    image = 0.35 + 0.15 * torch.rand(shape, generator=gen)
    for _ in range(CALIBRATION_RECTANGLES if min(height, width) >= MIN_IMAGE_SIDE else 0):
        side = int(min(height, width) * float(torch.empty(1).uniform_(0.08, 0.6, generator=gen)))
        aspect = float(torch.empty(1).uniform_(0.5, 2.0, generator=gen))
        h, w = max(4, min(height - 1, int(side * aspect))), max(4, min(width - 1, int(side / aspect)))
        top = int(torch.randint(0, height - h, (1,), generator=gen))
        left = int(torch.randint(0, width - w, (1,), generator=gen))
        colour = 0.6 + 0.4 * torch.rand(channels, 1, 1, generator=gen)
        image[:, top:top + h, left:left + w] = colour
    return image.clamp(0.0, 1.0)


def _synthetic(model: nn.Module, detector: Detector, seed: int) -> None:
    """Calibrated on CALIBRATION_THREADS torch threads: the statistics depend on how each convolution splits its sums,
    so the same seed gives the same weights (and sha256) on any machine, as the backbones' synthetic weights do."""
    import torch

    from exporter.weights import CALIBRATION_THREADS

    threads = torch.get_num_threads()
    torch.set_num_threads(CALIBRATION_THREADS)
    try:
        _calibrate(model, detector, seed)
    finally:
        torch.set_num_threads(threads)


def _calibrate(model: nn.Module, detector: Detector, seed: int) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    image = calibration_image(seed)
    if detector.body_backbone is not None:
        _load_synthetic_body(model, detector.body_backbone, seed)
    _calibrate_norms(model, image)
    if detector.kind in RCNN_KINDS:
        _calibrate_rcnn(model, image, gen)
        if detector.kind in MASK_KINDS:
            _calibrate_masks(model, image, gen)
        if detector.kind in KEYPOINT_KINDS:
            _calibrate_keypoints(model, image, gen)
    else:
        _calibrate_dense(model, image, gen, detector.kind)
    count = len(detect(model, image)["scores"])
    if count < MIN_DETECTIONS:
        raise UsageError(f"Synthetic weights for {detector.name} (seed {seed}) give {count} detections on the "
                         f"calibration image, fewer than {MIN_DETECTIONS}; try another --seed")


def detect(model: nn.Module, image: torch.Tensor) -> dict[str, torch.Tensor]:
    import torch

    with torch.inference_mode():
        return model([image])[0]


def _load_synthetic_body(model: nn.Module, backbone: str, seed: int) -> None:
    """The project's synthetic classifier weights (calibrated BN statistics) in the detector's body."""
    from exporter.backbones import family_of
    from exporter.weights import load_weights

    classifier = load_weights("synthetic", backbone, seed).state_dict
    key = family_of(backbone).classifier_key
    body = model.backbone.body
    state = {k: classifier[key(k)] for k in body.state_dict() if key(k) in classifier}
    body.load_state_dict(state, strict=True)


def _calibrate_norms(model: nn.Module, image: torch.Tensor) -> None:
    """BatchNorm2d outside the loaded body (v2's FPN and heads, SSDlite everywhere) get their running
    statistics from train-mode passes over the backbone on the calibration image (and its flips)."""
    import torch
    from torch import nn

    body = getattr(model.backbone, "body", None)
    loaded = {id(m) for m in body.modules()} if body is not None else set()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and id(m) not in loaded]
    if not norms:
        return
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    batch = torch.stack([image, image.flip(-1), image.flip(-2), image.flip(-1, -2)])
    with torch.no_grad():
        images, _ = model.transform(list(batch))
        features = model.backbone(images.tensors)
        if hasattr(model, "rpn"):
            feature_list = list(features.values())
            model.rpn.head(feature_list)
            model.train()
            for module in model.modules():  # only the norms train: RoI heads need eval-mode proposals
                if not isinstance(module, nn.BatchNorm2d) or id(module) in loaded:
                    # this module's flag alone: eval() also set every norm inside it, so the v2 box and mask heads'
                    # norms (in a Sequential) kept their reset statistics (0 and 1), never calibrated (stop 49)
                    module.training = False
            _roi_features(model, images, features)
            if getattr(model.roi_heads, "mask_head", None) is not None:  # v2's mask head norms: on the proposals
                _mask_features(model, images, features)
        else:
            model.head(list(features.values()) if isinstance(features, dict) else features)
    for norm in norms:
        norm.momentum = 0.1
    model.eval()


def _roi_features(model: nn.Module, images: Any, features: dict[str, torch.Tensor]) -> torch.Tensor:
    proposals, _ = model.rpn(images, features)
    pooled = model.roi_heads.box_roi_pool(features, proposals, images.image_sizes)
    return model.roi_heads.box_head(pooled)


def _mask_features(model: nn.Module, images: Any, features: dict[str, torch.Tensor]) -> torch.Tensor:
    proposals, _ = model.rpn(images, features)
    pooled = model.roi_heads.mask_roi_pool(features, proposals, images.image_sizes)
    return model.roi_heads.mask_head(pooled)


def _capture(module: nn.Module, model: nn.Module, image: torch.Tensor, want_input: bool) -> list[torch.Tensor]:
    return _capture_all([module], model, image, want_input)[0]


def _capture_all(modules: list[nn.Module], model: nn.Module, image: torch.Tensor,
                 want_input: bool) -> list[list[torch.Tensor]]:
    """Each module's inputs (or outputs) at each call, all from one pass of `model` over `image`."""
    import torch

    seen: list[list[torch.Tensor]] = [[] for _ in modules]
    hooks = [module.register_forward_hook(
        lambda m, args, out, kept=kept: kept.append((args[0] if want_input else out).detach().clone()))
        for module, kept in zip(modules, seen, strict=True)]
    try:
        with torch.no_grad():
            model([image])
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def _rescale(layer: nn.Module, inputs: list[torch.Tensor], gen: torch.Generator, std: float) -> None:
    """Random weights for `layer` (Linear or Conv2d) giving outputs of standard deviation `std` on
    `inputs` (its inputs of each call), centred per output unit (bias)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen))
        layer.bias.zero_()
        outs = [F.linear(x, layer.weight) if x.dim() == 2 else layer._conv_forward(x, layer.weight, None)
                for x in inputs]
        flat = torch.cat([o.transpose(0, 1).reshape(o.shape[1], -1) for o in outs], dim=1)  # (units, samples)
        scale = std / flat.std().clamp_min(1e-12)
        layer.weight.mul_(scale)
        layer.bias.copy_(-flat.mean(dim=1) * scale)


def _calibrate_rcnn(model: nn.Module, image: torch.Tensor, gen: torch.Generator) -> None:

    head = model.rpn.head
    features = _capture(head.cls_logits, model, image, True)
    _rescale(head.cls_logits, features, gen, RPN_LOGIT_STD)
    _rescale(head.bbox_pred, features, gen, BOX_DELTA_STD * 0.1)
    predictor = model.roi_heads.box_predictor
    boxes = _capture(predictor.cls_score, model, image, True)
    _rescale(predictor.cls_score, boxes, gen, CLASS_LOGIT_STD)
    _rescale(predictor.bbox_pred, boxes, gen, BOX_DELTA_STD)


def _calibrate_masks(model: nn.Module, image: torch.Tensor, gen: torch.Generator) -> None:
    """Mask R-CNN's mask logits spread MASK_LOGIT_STD around 0 over the calibration image's detections (every class's
    channel centred): their masks hold probabilities on both sides of 0.5, never all near 0 or 1."""
    layer = model.roi_heads.mask_predictor.mask_fcn_logits
    _rescale(layer, _capture(layer, model, image, True), gen, MASK_LOGIT_STD)


def _calibrate_keypoints(model: nn.Module, image: torch.Tensor, gen: torch.Generator) -> None:
    """Keypoint R-CNN's heatmap logits spread KEYPOINT_LOGIT_STD around 0 over the calibration image's detections
    (each keypoint's channel centred): every detection's maxima land anywhere in its box, their scores unsaturated."""
    import torch
    import torch.nn.functional as F

    layer = model.roi_heads.keypoint_predictor.kps_score_lowres
    inputs = _capture(layer, model, image, True)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen))
        layer.bias.zero_()
        outs = [F.conv_transpose2d(x, layer.weight, None, layer.stride, layer.padding, layer.output_padding,
                                   layer.groups, layer.dilation) for x in inputs]
        flat = torch.cat([o.transpose(0, 1).reshape(o.shape[1], -1) for o in outs], dim=1)  # (keypoints, samples)
        scale = KEYPOINT_LOGIT_STD / flat.std().clamp_min(1e-12)
        layer.weight.mul_(scale)
        layer.bias.copy_(-flat.mean(dim=1) * scale)


def _calibrate_dense(model: nn.Module, image: torch.Tensor, gen: torch.Generator, kind: str) -> None:
    """RetinaNet / FCOS / SSDlite: logits spread, and the classification bias set so that DENSE_CANDIDATES
    anchor x class scores clear the threshold on the calibration image (FCOS's score: the square root of the class's
    and the centerness's sigmoids)."""
    import math

    import torch

    if kind in ("retinanet", "fcos"):
        pairs = [(model.head.classification_head.cls_logits, model.head.regression_head.bbox_reg)]
    else:
        pairs = list(zip(*([conv for _, conv in ssd_level_convs(model, head)] for head in SSD_HEADS), strict=True))
    # every head layer's inputs in one pass (none feeds another): SSD300's VGG-16 took 18 passes, 21 s of its build
    inputs = _capture_all([layer for pair in pairs for layer in pair], model, image, True)
    logits = []
    for (cls_layer, reg_layer), cls_inputs, reg_inputs in zip(pairs, inputs[::2], inputs[1::2], strict=True):
        _rescale(cls_layer, cls_inputs, gen, RPN_LOGIT_STD)
        if kind == "fcos":  # distances in anchor sizes, through a ReLU: positive, about FCOS_DISTANCE_MEAN
            _rescale(reg_layer, reg_inputs, gen, FCOS_DISTANCE_STD)
            with torch.no_grad():
                reg_layer.bias.add_(FCOS_DISTANCE_MEAN)
        else:
            _rescale(reg_layer, reg_inputs, gen, DENSE_DELTA_STD)
        with torch.no_grad():
            logits += [cls_layer(x).flatten() for x in cls_inputs]
    if kind == "ssd":
        return  # softmax over classes: the spread alone puts many scores above SSDlite's 0.001 threshold
    if kind == "fcos":
        _calibrate_fcos(model, image, gen, pairs[0][0])
        return
    values = torch.cat(logits).sort(descending=True).values
    threshold = math.log(model.score_thresh / (1 - model.score_thresh))  # sigmoid's inverse
    shift = threshold - float(values[min(DENSE_CANDIDATES, len(values) - 1)])
    with torch.no_grad():
        pairs[0][0].bias.add_(shift)


def _calibrate_fcos(model: nn.Module, image: torch.Tensor, gen: torch.Generator, cls_layer: nn.Module) -> None:
    """FCOS: centerness logits spread as the class logits are, then the class bias shifted (bisection: the score
    rises with it) until DENSE_CANDIDATES anchor x class scores sqrt(sigmoid(class) * sigmoid(centerness)) clear the
    score threshold."""
    import torch

    ctrness = model.head.regression_head.bbox_ctrness
    _rescale(ctrness, _capture(ctrness, model, image, True), gen, RPN_LOGIT_STD)
    classes = _capture(cls_layer, model, image, False)
    centres = _capture(ctrness, model, image, False)
    # per level (N, A*K, H, W) and (N, A, H, W): one anchor a location, so each class's logit meets its anchor's
    logits = torch.cat([c.flatten(2) for c in classes], dim=2)
    centre = torch.cat([c.flatten(2) for c in centres], dim=2).sigmoid()
    wanted = min(DENSE_CANDIDATES, logits.numel() - 1)
    low, high = -50.0, 50.0
    for _ in range(60):
        shift = (low + high) / 2
        count = int(((logits + shift).sigmoid() * centre > model.score_thresh ** 2).sum())
        low, high = (shift, high) if count < wanted else (low, shift)
    with torch.no_grad():
        cls_layer.bias.add_(high)
