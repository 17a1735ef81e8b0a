"""`manifest.json` of a whole detector's export folder (`kind: "detector"`): the same strict schema rules as a
backbone's (exporter/manifest.py: pydantic v2, unknown fields, coercions and NaN refused, files by plain name),
with what a detector's folder holds instead of one input and its outputs: the images, the post-processing
constants, the floors of the dense pre-NMS tensors and of detections, and each judged pair's verdict.
Which of these numbers `verify artifact` re-derives instead of trusting: verify/detect/folder.py."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, JsonValue, model_validator

from exporter.errors import ArtifactError
from exporter.manifest import (
    DETECTOR_KIND,
    GOLDENS_FORMAT,
    GOLDENS_NAME,
    MANIFEST_SCHEMA,
    MANIFEST_SCHEMA_VERSION,
    AnyFileEntry,
    AutoTolerance,
    FileEntry,
    FileName,
    NonNegative,
    Positive,
    Sha256,
    SignatureInfo,
    Strict,
    Text,
    Timestamp,
    check_file_list,
    file_entry,
    loads_strict,
    read_manifest_text,
    signature_record,
    validate_as,
    write_manifest_text,
)

Fraction = Annotated[float, Field(ge=0, le=1)]
DEFAULT_CLASSES = 91
"""torchvision's detection builders' num_classes (COCO with background): the bound on the labels of a folder written
before `classes` was recorded (a fine-tuned head with fewer classes fitted it: a bound, not its count)."""
MAX_CLASSES = 25_000
"""The most classes a manifest may record: above ImageNet-21k's 21,841, the largest label space detectors are trained
on (Detic; Objects365 has 365, LVIS 1203). A label widens every NMS rounding band it offsets: the bound is checked."""
MIN_CLASSES = 1
"""A one-class RetinaNet or FCOS (sigmoid scores, no background: a person-only detector) is a detector; a softmax
kind's background-only checkpoint is refused where it is built (exporter/families/detectors.py `checkpoint_classes`)."""
Classes = Annotated[int, Field(ge=MIN_CLASSES, le=MAX_CLASSES)]


class DetectorInfo(Strict):
    name: Text
    norm: Text
    weights: Text
    """`synthetic:<seed>` or `file:<name>`."""
    weights_sha256: Sha256 | None
    """sha256 over the state dict (exporter/weights.py state_dict_sha256)."""
    classes: Classes | None = None
    """The class count it was built with (torchvision's num_classes, background included where it has one: a
    fine-tuned checkpoint's, exporter/families/detectors.py `checkpoint_classes`); every golden label is below it.
    Cross-checked, never trusted: Faster R-CNN's goldens' class-score width, and `--rebuild`'s built detector. Absent
    (None; written as no key, never null) in a folder written before it: its labels are below DEFAULT_CLASSES."""

    @model_validator(mode="before")
    @classmethod
    def _no_null_classes(cls, data: Any) -> Any:
        if isinstance(data, dict) and "classes" in data and data["classes"] is None:
            raise ValueError("classes is null; a detector's class count is an int, or absent in an older folder")
        return data

    @property
    def label_bound(self) -> int:
        """Every label is below it: the recorded class count, or an older folder's DEFAULT_CLASSES."""
        return DEFAULT_CLASSES if self.classes is None else self.classes


class ImageInfo(Strict):
    shape: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=3, max_length=3)]
    """C x H x W of one golden image, as the detector takes it."""


class RpnPostprocess(Strict):
    nms_thresh: Fraction
    post_nms_top_n: Annotated[int, Field(ge=1)]
    score_thresh: Fraction


class Postprocess(Strict):
    """The model's own post-processing constants: the decisions rounding can flip, whose rounding bands
    explain a detection (or proposal) in one run only."""

    score_thresh: Fraction
    nms_thresh: Fraction
    detections_per_img: Annotated[int, Field(ge=1)]
    rpn: RpnPostprocess | None
    per_proposal: list[Text]
    """The dense tensors with one row per RPN proposal (judged paired by proposal)."""


KEYPOINT_FLOORS = ("keypoints", "keypoint_scores", "keypoint_head")


class DetectionFloorInfo(Strict):
    boxes: Positive
    scores: Positive
    masks: Positive | None = None
    """Mask R-CNN: the floor of the matched pairs' pasted masks (verify/detect/masks.py); absent (no key, never null)
    for a detector without masks. Re-derived from the goldens' mask-head logits, never trusted."""
    mask_head: Positive | None = None
    """Mask R-CNN: the floor of the matched pairs' mask-head logits (their label's); absent without masks."""
    keypoints: Positive | None = None
    """Keypoint R-CNN: the floor of the matched pairs' keypoints (x, y, where both argmaxes chose one cell;
    verify/detect/keypoints.py); absent (no key, never null) for a detector without keypoints. Re-derived from the
    goldens, never trusted."""
    keypoint_scores: Positive | None = None
    """Keypoint R-CNN: the floor of those keypoints' scores; absent without keypoints."""
    keypoint_head: Positive | None = None
    """Keypoint R-CNN: the floor of the matched pairs' heatmap logits (the keypoint head's); absent without them."""

    @model_validator(mode="before")
    @classmethod
    def _no_null_masks(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(key in data and data[key] is None for key in ("masks", "mask_head")):
            raise ValueError("a mask floor is null; it is a positive number, or absent for a detector without masks")
        if isinstance(data, dict) and any(key in data and data[key] is None for key in KEYPOINT_FLOORS):
            raise ValueError("a keypoint floor is null; it is a positive number, or absent for a detector without "
                             "keypoints")
        return data


class DetectorVerdict(Strict):
    """One row of the export's report: a judged pair at one level, a refusal or a failed check."""

    level: Literal["before NMS", "proposals", "after NMS", "export", "check", "layers"]
    a: Annotated[str, Field(max_length=1000)]
    b: Annotated[str, Field(max_length=1000)]
    passed: bool


class DetectorManifest(Strict):
    """What a detector's export folder holds and what its export found. Every number that decides a verdict
    is re-derived by `verify artifact` from the goldens, never taken from here on trust."""

    schema_id: Literal["backbone-verify/manifest"] = Field(alias="schema")
    schema_version: Literal[2]
    kind: Literal["detector"]
    created: Timestamp
    files: Annotated[dict[FileName, AnyFileEntry], Field(min_length=1)]
    versions: dict[Text, Text]
    detector: DetectorInfo
    images: Annotated[list[ImageInfo], Field(min_length=1)]
    dynamic: bool
    """The ONNX file takes any image size (dynamic height and width)."""
    postprocess: Postprocess
    tolerance: AutoTolerance
    dense_outputs: list[Text]
    """The dense tensors judged before NMS, as named in the goldens (`module#call`, one per image)."""
    noise_floor: dict[Text, NonNegative]
    """Per dense tensor as judged (`proposals` and `final_nms.*` included), the oracle's float32 floor measured on the
    goldens."""
    channel_floors_sha256: Sha256
    detection_floor: DetectionFloorInfo
    verdicts: Annotated[list[DetectorVerdict], Field(min_length=1)]
    passed: bool
    """Every verdict passed."""
    identity: dict[str, JsonValue] | None = None
    signature: SignatureInfo | None = None

    @model_validator(mode="after")
    def _consistent(self) -> DetectorManifest:
        check_file_list(self.files)
        if self.passed != all(v.passed for v in self.verdicts):
            raise ValueError(f"passed is {self.passed} but {sum(v.passed for v in self.verdicts)} of "
                             f"{len(self.verdicts)} verdicts passed")
        return self

    def model_files(self) -> dict[str, FileEntry]:
        return {n: e for n, e in self.files.items() if e.format not in (GOLDENS_FORMAT, "external-data")}

    def to_json(self) -> str:
        absent: dict[str, Any] = {k: True for k in ("identity", "signature") if getattr(self, k) is None}
        if self.detector.classes is None:  # an older folder's manifest, as it was written
            absent["detector"] = {"classes": True}
        masks = {k: True for k in ("masks", "mask_head", *KEYPOINT_FLOORS) if getattr(self.detection_floor, k) is None}
        if masks:  # a detector without masks or keypoints: its floor as before
            absent["detection_floor"] = masks
        return json.dumps(self.model_dump(mode="json", by_alias=True, exclude=absent), indent=2,
                          allow_nan=False) + "\n"


def build_detector_manifest(folder: Path, files: dict[str, dict[str, Any]], fields: dict[str, Any],
                            signed: bool = False) -> DetectorManifest:
    """The manifest of a staged folder: `files` maps each model file's name to its format fields (format,
    exporter, opset...), hashed here with the goldens; `fields` is the rest. Validated before it is written."""
    listed = {name: file_entry(folder / name, **extra) for name, extra in files.items()}
    listed[GOLDENS_NAME] = file_entry(folder / GOLDENS_NAME, format=GOLDENS_FORMAT)
    data = {"schema": MANIFEST_SCHEMA, "schema_version": MANIFEST_SCHEMA_VERSION, "kind": DETECTOR_KIND,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "files": listed, **fields}
    if signed:
        data["signature"] = signature_record()
    return validate_as(DetectorManifest, data, "the detector manifest to write")


def load_detector_manifest(path: Path) -> DetectorManifest:
    """Read and validate `path` as a detector manifest; any problem is one ArtifactError naming the field."""
    text = read_manifest_text(path)
    try:
        data = loads_strict(text)
    except ValueError as exc:
        raise ArtifactError(f"{path.name} is not strict JSON: {exc}") from None
    return validate_as(DetectorManifest, data, path.name)


def write_detector_manifest(folder: Path, manifest: DetectorManifest) -> Path:
    return write_manifest_text(folder, manifest.to_json())
