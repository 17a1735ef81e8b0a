"""A detector folder's `goldens.npz`: the images and the eager float32 and float64 runs (each image's detections,
dense pre-NMS tensors, RPN proposals, the inputs of the final NMS, and in float64 those of the RPN NMS and the final
NMS's inputs again under a lower score threshold) as flat arrays,
and back into the runs verify/detect/verdict.py judges against. Read with exporter.manifest.read_goldens (never
unpickled); every key, dtype and shape is checked against the manifest before a run is rebuilt."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from exporter.detector_manifest import DEFAULT_CLASSES
from exporter.errors import ArtifactError
from exporter.families.detectors import IMAGE_SIZE, PER_PROPOSAL_MODULES
from exporter.manifest import GOLDENS_NAME
from verify.detect.eager_runs import concat_dense
from verify.detect.match import Detections
from verify.detect.report import Run

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import numpy as np
    import torch

GROUPS = ("image", "float32", "float64", "folded", "reversed")
"""`image.<i>`, then `float32.<i>.<what>` (eager) and `float64.<i>.<what>` (the oracle), `folded.<i>.dense.<name>`:
eager's second float32 rounding (verify/detect/eager_runs.py `folded_samples`; none where nothing folds), and
`reversed.<i>.dense.<name>`: its third, every convolution summing its input channels in reverse order
(`reversed_samples`, hunt 23b; none in a folder written before)."""
SAMPLE_GROUPS = {"folded": "samples", "reversed": "reversed_sums"}
"""Each rounding-sample group of the goldens -> the eager Run's field that holds it."""
DETECTION_KEYS = ("boxes", "scores", "labels")
MASK_KEY = "mask_logits"
"""Mask R-CNN: each detection's mask-head logits of its label (N x M x M, in its group's precision); its pasted mask
is re-derived from them and its box (verify/detect/masks.py `pasted_masks`: 28 x 28 a detection, not H x W)."""
KEYPOINT_KEYS = {"keypoints": "keypoints", "keypoints_scores": "keypoint_scores", "keypoint_logits": "keypoint_logits"}
"""Keypoint R-CNN: each detection's keypoints (N x K x 3) and scores (N x K), float32 in both groups as torchvision
returns them, and its head's heatmap logits (N x K x M x M, in its group's precision) -> the Detections field. The
keypoints are kept, not re-derived: torchvision derives them in the resized frame and scales them back in float32,
which the final boxes cannot undo bit for bit; `_check_keypoint_rows` checks their shapes and boxes."""
DENSE, PROPOSALS_KEY = "dense", "proposals"
CANDIDATES = ("candidates", "rpn_candidates")
"""The recorded inputs of the final batched NMS (float32 and float64: a runtime's decoded candidates are judged on
their floor, verify/detect/nms_inputs.py), and in float64 only of the RPN's (Faster R-CNN)."""
BELOW = "below_threshold"
"""float64 only: the final NMS's inputs recorded again with a lower score threshold (verify/detect/report.py
`Run.below_threshold`), which a `score threshold` borderline must be one of (hunt 19d: without them in the goldens, a
folder's borderline detection moved 40 px passed)."""
CLASSES = DEFAULT_CLASSES
"""torchvision's detection builders' num_classes (COCO with background): the class count of a folder whose manifest
records none (written before fine-tuned heads were built as trained); a manifest's `detector.classes` replaces it."""
CLASS_SCORES = PER_PROPOSAL_MODULES[0]
"""Faster R-CNN's box-head class logits: one column a class, so their width is the detector's class count (an edited
manifest's `classes` cannot widen the label bound unnoticed)."""
CLASS_HEADS = (("head.classification_head.cls_logits", "head.regression_head.bbox_reg"),
               ("head.classification_head.module_list.", "head.regression_head.module_list."))
"""RetinaNet's and FCOS's class and box heads (an SSD's: a module a level, SSDlite's `module_list.<level>.1`, SSD300's
`module_list.<level>`): N x A*classes x H x W and N x A*4 x H x W at each level, so their widths give the class count
where no tensor holds one column a class (review 32: a RetinaNet folder's `classes` raised from 91 to 365 let its
goldens hold labels up to 364)."""
RPN_LEVEL_HEAD = "rpn.head.cls_logits#"
"""The RPN head is called once per feature level: its dense tensors count the levels an RPN label indexes."""
BOX_SLACK = 1.0
"""Pixels a box may reach past the image: boxes rescaled to the image's size round (far below any band)."""
SCORE_RANGE = (0.0, 1.0)
"""Scores, and the candidates' and RPN's, are probabilities (softmax or sigmoid)."""


def golden_arrays(images: list[np.ndarray], eager: Run, oracle: Run) -> dict[str, np.ndarray]:
    """Every array of the goldens, by npz key."""
    arrays = {f"image.{i}": image for i, image in enumerate(images)}
    for group, run in (("float32", eager), ("float64", oracle)):
        arrays.update({f"{group}.{key}": value for key, value in _run_arrays(run).items()})
    for group, attribute in SAMPLE_GROUPS.items():
        arrays.update({f"{group}.{i}.{DENSE}.{name}": value for i, image in enumerate(getattr(eager, attribute))
                       for name, value in image.items()})
    return arrays


def _run_arrays(run: Run) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for i, found in enumerate(run.detections):
        arrays.update(_detection_arrays(f"{i}", found))
        if found.mask_logits is not None:
            arrays[f"{i}.{MASK_KEY}"] = found.mask_logits
        if found.keypoint_logits is not None:
            arrays.update({f"{i}.{key}": getattr(found, field) for key, field in KEYPOINT_KEYS.items()})
        for name, value in (run.per_image[i] if run.per_image else {}).items():
            arrays[f"{i}.{DENSE}.{name}"] = value
        if run.proposals:
            arrays[f"{i}.{PROPOSALS_KEY}"] = run.proposals[i]
        for kind in (*CANDIDATES, BELOW):
            found_kind = getattr(run, kind)
            if found_kind:
                arrays.update(_detection_arrays(f"{i}.{kind}", found_kind[i]))
    return arrays


def _detection_arrays(prefix: str, found: Detections) -> dict[str, np.ndarray]:
    return {f"{prefix}.{key}": getattr(found, key) for key in DETECTION_KEYS}


def expected_keys(images: int, dense: list[str], proposals: bool, group: str, masks: bool = False,
                  keypoints: bool = False) -> set[str]:
    """The keys of one group of a complete goldens file (`masks`: Mask R-CNN's, with each image's mask logits;
    `keypoints`: Keypoint R-CNN's, with each image's keypoints, their scores and heatmap logits)."""
    keys = set()
    for i in range(images):
        keys |= {f"{i}.{key}" for key in DETECTION_KEYS} | {f"{i}.{DENSE}.{name}" for name in dense}
        keys |= {f"{i}.{MASK_KEY}"} if masks else set()
        keys |= {f"{i}.{key}" for key in KEYPOINT_KEYS} if keypoints else set()
        keys |= {f"{i}.{PROPOSALS_KEY}"} if proposals else set()
        kinds = ((*CANDIDATES, BELOW) if proposals else (CANDIDATES[0], BELOW)) if group == "float64" \
            else (CANDIDATES[0],)
        keys |= {f"{i}.{kind}.{key}" for kind in kinds for key in DETECTION_KEYS}
    return keys


def check_goldens(goldens: dict[str, dict[str, np.ndarray]], shapes: list[list[int]], dense: list[str],
                  proposals: bool, rows: Sequence[str] = (), classes: int | None = None, masks: bool = False,
                  keypoints: bool = False) -> str:
    """Exactly the arrays a complete export writes: the images of the recorded shapes in float32, each group's
    keys, dtypes (dense tensors in their group's precision) and shapes, all finite, labels below `classes` (the
    manifest's, its class heads exactly that wide; None, an older folder's: CLASSES bounds both); else an
    ArtifactError. The folded group, where there is one, holds every dense tensor but those of the per-proposal
    modules `rows` and the anchors, each of its float32 twin's shape (a folder written before it had none: its floors
    were measured without). `masks` (Mask R-CNN): each image's mask logits, one square M x M row per detection;
    `keypoints` (Keypoint R-CNN): each image's keypoints, scores and heatmap logits, one row per detection."""
    import numpy as np

    wanted = {str(i) for i in range(len(shapes))}
    if set(goldens["image"]) != wanted:
        raise ArtifactError(f"{GOLDENS_NAME} holds images {sorted(goldens['image'])}, the manifest {sorted(wanted)}")
    for i, shape in enumerate(shapes):
        image = goldens["image"][str(i)]
        if image.dtype != np.float32 or list(image.shape) != list(shape):
            raise ArtifactError(f"{GOLDENS_NAME}: image.{i} is {image.dtype} {list(image.shape)}, the manifest "
                                f"records float32 {list(shape)}")
    for group, dtype in (("float32", np.float32), ("float64", np.float64)):
        keys = expected_keys(len(shapes), dense, proposals, group, masks, keypoints)
        found = set(goldens[group])
        if group == "float64" and not any(key.split(".")[1:2] == [BELOW] for key in found):
            raise ArtifactError(f"{GOLDENS_NAME} holds no float64.<i>.{BELOW} (the final NMS's float64 inputs under a "
                                "lower score threshold, which a `score threshold` borderline is asked to be one of): a "
                                "folder written before they were recorded; export it again")
        if group == "float32" and not any(key.split(".")[1:2] == [CANDIDATES[0]] for key in found):
            raise ArtifactError(f"{GOLDENS_NAME} holds no float32.<i>.{CANDIDATES[0]} (eager float32's final-NMS "
                                "inputs, on which each runtime's decoded candidates are judged): a folder written "
                                "before they were recorded; export it again")
        if found != keys:
            odd = sorted(found - keys)
            what = f"holds {group}.{odd[0]}, which" if odd else f"lacks {group}.{sorted(keys - found)[0]}, which"
            raise ArtifactError(f"{GOLDENS_NAME} {what} the manifest's images and dense tensors "
                                f"{'do not account for' if odd else 'need'}")
        for key, array in goldens[group].items():
            _check_array(f"{group}.{key}", array, dtype)
    for kind, arrays in goldens.items():
        for key, array in arrays.items():
            bad = int((~np.isfinite(array)).sum()) if array.dtype.kind == "f" else 0
            if bad:
                raise ArtifactError(f"{GOLDENS_NAME}: {kind}.{key} holds {bad} NaN/Inf; goldens must be finite")
    for i, shape in enumerate(shapes):
        _check_image_runs(goldens, i, shape, dense, proposals, classes)
        for group in ("float32", "float64") if masks else ():
            _check_mask_rows(f"{group}.{i}", goldens[group][f"{i}.{MASK_KEY}"], len(goldens[group][f"{i}.labels"]))
        for group in ("float32", "float64") if keypoints else ():
            _check_keypoint_rows(f"{group}.{i}", goldens[group], i)
    from exporter.families.detectors import ANCHOR_MODULES

    skipped = {*rows, *ANCHOR_MODULES.values()}  # anchors: no norm in them (check.py `folded_samples`)
    for group in SAMPLE_GROUPS:
        _check_folded(goldens, len(shapes), [name for name in dense if name.rpartition("#")[0] not in skipped], group)
    return (f"{len(shapes)} image(s) {', '.join('x'.join(map(str, s)) for s in shapes)}, {len(dense)} dense tensors "
            "per image, detections in float32 and float64, all finite, each within what a detector outputs")


def _check_mask_rows(prefix: str, logits: np.ndarray, count: int) -> None:
    if logits.ndim != 3 or len(logits) != count or logits.shape[1] != logits.shape[2] or not logits.shape[1]:
        raise ArtifactError(f"{GOLDENS_NAME}: {prefix}.{MASK_KEY} is {list(logits.shape)}; a Mask R-CNN's mask logits "
                            f"are one M x M row per detection ({count} here)")


def _check_keypoint_rows(prefix: str, arrays: dict[str, np.ndarray], i: int) -> None:
    """One row per detection of each, K keypoints alike, visibility 1 (torchvision's), each keypoint inside its box
    (up to float32 rounding of the box)."""
    import numpy as np

    from verify.detect.keypoints import keypoint_problem

    count = len(arrays[f"{i}.labels"])
    points, scores, logits = (arrays[f"{i}.{key}"] for key in KEYPOINT_KEYS)
    why = keypoint_problem(points)
    if why is None and not (len(points) == len(scores) == len(logits) == count and logits.ndim == 4
                            and scores.shape == points.shape[:2] and logits.shape[1] == points.shape[1]
                            and logits.shape[2] == logits.shape[3] and logits.shape[2] > 0):
        why = (f"keypoints {list(points.shape)}, scores {list(scores.shape)} and heatmap logits {list(logits.shape)}; "
               f"a Keypoint R-CNN's are one row per detection ({count} here), K alike")
    if why is None:
        boxes = arrays[f"{i}.boxes"][:, None, :]
        slack = 1e-3 * max(float(np.abs(boxes).max(initial=0.0)), 1.0)  # float32 keypoints against float64 boxes
        if ((points[..., :2] < boxes[..., :2] - slack) | (points[..., :2] > boxes[..., 2:] + slack)).any():
            why = "keypoints outside their detection's box"
    if why is not None:
        raise ArtifactError(f"{GOLDENS_NAME}: {prefix}: {why}")


def _check_folded(goldens: dict[str, dict[str, np.ndarray]], images: int, dense: list[str],
                  group: str = "folded") -> None:
    """A rounding-sample group (`SAMPLE_GROUPS`): every dense tensor but the per-proposal rows and the anchors, or
    none, each float32 of its float32 twin's shape."""
    import numpy as np

    found = set(goldens.get(group, {}))
    keys = {f"{i}.{DENSE}.{name}" for i in range(images) for name in dense}
    if found and found != keys:
        odd = sorted(found - keys)
        what = f"holds {group}.{odd[0]}, not" if odd else f"lacks {group}.{sorted(keys - found)[0]},"
        raise ArtifactError(f"{GOLDENS_NAME} {what} one of the {group} detector's dense tensors (the {group} group "
                            "holds every one but the per-proposal rows, or none); re-export the folder")
    for key in sorted(found):
        array, twin = goldens[group][key], goldens["float32"][key]
        if array.dtype != np.float32 or array.shape != twin.shape:
            raise ArtifactError(f"{GOLDENS_NAME}: {group}.{key} is {array.dtype} {list(array.shape)}; expected "
                                f"float32 {list(twin.shape)}, as float32.{key}")


def golden_samples(goldens: dict[str, dict[str, np.ndarray]], images: int,
                   group: str = "folded") -> list[dict[str, np.ndarray]]:
    """A checked rounding-sample group as eager's samples (`Run.samples` for `folded`, `Run.reversed_sums` for
    `reversed`): [] where the folder has none."""
    found = goldens.get(group, {})
    return [{key.removeprefix(f"{i}.{DENSE}."): value for key, value in found.items()
             if key.startswith(f"{i}.{DENSE}.")} for i in range(images)] if found else []


def _check_array(key: str, array: np.ndarray, dense_dtype: Any) -> None:
    import numpy as np

    leaf = key.rsplit(".", 1)[-1]
    if f".{DENSE}." in key or leaf in (MASK_KEY, "keypoint_logits"):
        dtype, ndim = dense_dtype, None
    elif leaf in ("keypoints", "keypoints_scores"):  # torchvision returns them in float32 from a float64 model too
        dtype, ndim = np.float32, (3 if leaf == "keypoints" else 2)
    elif leaf == "labels":
        dtype, ndim = np.int64, 1
    else:
        dtype, ndim = np.float64, (1 if leaf == "scores" else 2)
    if array.dtype != dtype or (ndim is not None and array.ndim != ndim) or array.ndim == 0 \
            or (ndim == 2 and leaf != "keypoints_scores" and array.shape[1] != 4):
        raise ArtifactError(f"{GOLDENS_NAME}: {key} is {array.dtype} {list(array.shape)}; expected "
                            f"{np.dtype(dtype)}{' boxes (N x 4)' if ndim == 2 else ''}")


def _check_image_runs(goldens: dict[str, dict[str, np.ndarray]], i: int, shape: list[int], dense: list[str],
                      proposals: bool, classes: int | None = None) -> None:
    """What a detector can output on image `i`, and nothing else: a dense tensor of one shape in both
    precisions, and detections (final and NMS inputs) of consistent counts, boxes of non-negative size within
    the image (or the transform's size), scores in [0, 1], labels among the classes (the RPN's: its levels).
    The rounding bands scale with the largest coordinate and label, so an implausible one would widen them."""
    for name in dense:
        key = f"{i}.{DENSE}.{name}"
        low, high = goldens["float32"][key].shape, goldens["float64"][key].shape
        if low != high:
            raise ArtifactError(f"{GOLDENS_NAME}: float32.{key} is {list(low)}, float64.{key} {list(high)}; one "
                                "tensor has one shape in both precisions")
    wrong = class_width_problem({name: list(goldens["float32"][f"{i}.{DENSE}.{name}"].shape) for name in dense},
                                classes)
    if wrong:
        recorded = f"records {classes} classes: its class count was edited" if classes is not None else \
            f"records no class count (written before it was: at most {CLASSES})"
        raise ArtifactError(f"{GOLDENS_NAME}: float32.{i}.{DENSE}.{wrong}, but the manifest {recorded}; export it "
                            "again")
    bound_labels = CLASSES if classes is None else classes
    levels = sum(name.startswith(RPN_LEVEL_HEAD) for name in dense)
    bound = max(shape[1], shape[2], IMAGE_SIZE) + BOX_SLACK
    groups = [(f"float32.{i}", bound_labels), (f"float64.{i}", bound_labels),
              (f"float32.{i}.{CANDIDATES[0]}", bound_labels), (f"float64.{i}.{CANDIDATES[0]}", bound_labels),
              (f"float64.{i}.{BELOW}", bound_labels)]
    if proposals:
        groups.append((f"float64.{i}.{CANDIDATES[1]}", levels))
    for prefix, labels in groups:
        group, _, key = prefix.partition(".")
        arrays = {what: goldens[group][f"{key}.{what}"] for what in DETECTION_KEYS}
        _check_detections(prefix, arrays, bound, labels)
    for group in ("float32", "float64") if proposals else ():
        _check_boxes(f"{group}.{i}.{PROPOSALS_KEY}", goldens[group][f"{i}.{PROPOSALS_KEY}"], bound)


def class_width_problem(shapes: Mapping[str, Any], classes: int | None) -> str:
    """The first dense tensor (name -> shape, `module#call` or `module#call@HxW`) not `classes` wide (None: an older
    folder's or cell's count, at most CLASSES): Faster R-CNN's class logits (one column a class), or a level of
    RetinaNet's, FCOS's or SSDlite's class head over its box head's anchors (CLASS_HEADS); empty if none."""
    levels: dict[str, dict[int, tuple[str, Any]]] = {}
    for name, shape in shapes.items():
        base, _, size = name.partition("@")
        module, _, call = base.partition("#")
        if module == CLASS_SCORES and not (_sized(shape, 2) and _fits(shape[1], classes)):
            return f"{name} is {shape} (one class-logit column a class)"
        for pair in CLASS_HEADS:
            for side, head in enumerate(pair):
                if head.endswith(".") and module.startswith(head):  # an SSD: a module a level (SSDlite's `<i>.1`)
                    levels.setdefault(f"{module.removeprefix(head).partition('.')[0]}@{size}", {})[side] = (name, shape)
                elif module == head:  # RetinaNet, FCOS: a call a level
                    levels.setdefault(f"{call}@{size}", {})[side] = (name, shape)
    for pair in levels.values():
        if len(pair) != 2:
            continue  # a level left out: dense_binding.py and the goldens' keys judge that
        (name, shape), (_, box) = pair[0], pair[1]
        anchors, rest = divmod(box[1], 4) if _sized(box, 4) else (0, 1)
        width, left = divmod(shape[1], anchors) if _sized(shape, 4) and anchors and not rest else (None, 1)
        if left or not _fits(width, classes):
            return f"{name} is {shape} (its anchors' classes a location, the box head's {box} four an anchor)"
    return ""


def _sized(shape: Any, dims: int) -> bool:
    return isinstance(shape, list | tuple) and len(shape) == dims and all(
        isinstance(n, int) and not isinstance(n, bool) for n in shape)


def _fits(width: Any, classes: int | None) -> bool:
    return isinstance(width, int) and (width == classes if classes is not None else width <= CLASSES)


def _check_detections(prefix: str, arrays: dict[str, np.ndarray], bound: float, labels: int) -> None:
    counts = {what: len(array) for what, array in arrays.items()}
    if len(set(counts.values())) != 1:
        raise ArtifactError(f"{GOLDENS_NAME}: {prefix} holds {counts['boxes']} boxes, {counts['scores']} scores and "
                            f"{counts['labels']} labels; one of each per detection")
    _check_boxes(f"{prefix}.boxes", arrays["boxes"], bound)
    low, high = SCORE_RANGE
    scores, found = arrays["scores"], arrays["labels"]
    if len(scores) and (scores.min() < low or scores.max() > high):
        raise ArtifactError(f"{GOLDENS_NAME}: {prefix}.scores reach {scores.min():.6g} to {scores.max():.6g}; a "
                            f"detector's scores are probabilities in [{low:g}, {high:g}]")
    if len(found) and (found.min() < 0 or found.max() >= labels):
        raise ArtifactError(f"{GOLDENS_NAME}: {prefix}.labels reach {found.min()} to {found.max()}; this detector's "
                            f"labels are 0 to {labels - 1}")


def _check_boxes(key: str, boxes: np.ndarray, bound: float) -> None:
    if not len(boxes):
        return
    if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
        raise ArtifactError(f"{GOLDENS_NAME}: {key} holds a box of negative size; a detector's boxes are "
                            "(x1, y1, x2, y2) with x1 <= x2 and y1 <= y2")
    if boxes.min() < -BOX_SLACK or boxes.max() > bound:
        raise ArtifactError(f"{GOLDENS_NAME}: {key} reaches {boxes.min():.6g} to {boxes.max():.6g}; a detector's "
                            f"boxes lie within the image (0 to {bound:g} px here)")


def golden_images(goldens: dict[str, dict[str, np.ndarray]]) -> list[torch.Tensor]:
    import torch

    return [torch.from_numpy(goldens["image"][str(i)].copy()) for i in range(len(goldens["image"]))]


def golden_run(arrays: dict[str, np.ndarray], images: list[torch.Tensor]) -> Run:
    """One group (float32 or float64) of checked goldens as the Run the export judged against."""
    count = len(images)
    run = Run([Detections.of({k: arrays[f"{i}.{k}"] for k in DETECTION_KEYS}) for i in range(count)])
    for i, found in enumerate(run.detections):
        logits = arrays.get(f"{i}.{MASK_KEY}")
        if logits is not None:  # the pasted masks re-derived, in the group's precision, as the run pasted them
            from verify.detect.masks import pasted_masks

            found.mask_logits = logits
            found.masks = pasted_masks(logits, found.boxes, tuple(images[i].shape[-2:]), logits.dtype)
        if f"{i}.keypoint_logits" in arrays:
            for key, field in KEYPOINT_KEYS.items():
                setattr(found, field, arrays[f"{i}.{key}"])
    run.per_image = [{key.removeprefix(f"{i}.{DENSE}."): value for key, value in arrays.items()
                      if key.startswith(f"{i}.{DENSE}.")} for i in range(count)]
    run.dense = concat_dense(run.per_image, images) if any(run.per_image) else {}
    if f"0.{PROPOSALS_KEY}" in arrays:
        run.proposals = [arrays[f"{i}.{PROPOSALS_KEY}"] for i in range(count)]
    for kind in (*CANDIDATES, BELOW):
        if f"0.{kind}.boxes" in arrays:
            setattr(run, kind, [Detections.of({k: arrays[f"{i}.{kind}.{k}"] for k in DETECTION_KEYS})
                                for i in range(count)])
    return run
