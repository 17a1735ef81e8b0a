"""A whole detector's judgement as data: the report (`DetectorReport`) and its typed rows (`DetectorRow`), one run's
captured values (`Run`) and the model's post-processing constants it is judged with (`Judging`).
verify/detect/verdict.py fills them, verify/detect/check.py hands them back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from verify.detect.match import DetectionFloor, DetectionPair, Detections, Rules
from verify.detect.nms_inputs import BoxCoding
from verify.detect.proposals import ProposalCheck, RpnRules
from verify.judge.compare import PairResult

if TYPE_CHECKING:
    import numpy as np

    from exporter.families.detectors import BuiltDetector


REPORT_SCHEMA_VERSION = 1
"""The version of the detector report's JSON (`--json`); it changes when a field changes meaning or goes."""
REPORT_KIND = "detector"
"""What tells a detector report from a backbone report (which has no `kind`) to a program reading it."""


@dataclass
class DetectorReport:
    name: str
    norm: str
    weights: str
    shape: tuple[int, ...]
    formats: tuple[str, ...]
    factor: float
    refusals: dict[str, str] = field(default_factory=dict)
    """Format -> why it was not exported or could not run (one line)."""
    dense: list[PairResult] = field(default_factory=list)
    proposals: list[ProposalCheck] = field(default_factory=list)
    """Per-proposal rows paired by proposal (Faster R-CNN): each pair's proposals in one run only."""
    detections: list[DetectionPair] = field(default_factory=list)
    floor: DetectionFloor | None = None
    dense_outputs: list[str] = field(default_factory=list)
    dynamic: bool = False
    """Exported for any image size (ONNX dynamic height and width)."""
    images: list[np.ndarray] = field(default_factory=list, repr=False)
    """The images judged (C x H x W in [0, 1]), for the HTML page."""
    boxes: dict[str, list[Detections]] = field(default_factory=dict, repr=False)
    """Each run's detections per image (eager, eager fp64, each runtime), for the HTML page."""
    seconds: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    """Checks that could not be made (no floor measurable, no detections): each a failure."""
    floors: dict[str, Any] = field(default_factory=dict, repr=False)
    """The oracle's float32 floor of each dense tensor (a NoiseFloor), measured on eager float32 vs float64."""
    judging: Judging | None = None
    """The model's post-processing constants the detections were judged with."""
    weights_sha256: str | None = None
    """sha256 over the detector's state dict (exporter/weights.py), set by verify_detector."""
    references: dict[str, Run] = field(default_factory=dict, repr=False)
    """The eager float32 and float64 runs judged against (EAGER, ORACLE): what an export folder's goldens hold."""
    proposal_boxes: dict[str, list[np.ndarray]] = field(default_factory=dict, repr=False)
    """Faster R-CNN: each run's RPN proposals per image (eager, eager fp64, each ONNX run), as paired."""
    layers: list[Any] = field(default_factory=list)
    """The layer verdict (hunt 23b, `detector_layer_checks`): one verify.judge.layers.Isolation per exported file
    whose layers were judged (every one where it was asked for), each layer re-run alone on the detector's float64
    values for the first image and judged on its own floor."""
    layer_verdict: dict[str, Any] | None = None
    """As a backbone report's: {"run": "asked" | "default", "judged": [files], "not_judged": [files]}; None: not run."""
    notes: list[str] = field(default_factory=list)
    """What was not judged and is no failure (the layer verdict run by default on a file it could not judge)."""
    classes: int | None = None
    """The class count the detector was built with (torchvision's num_classes: 91, or a fine-tuned checkpoint's)."""
    unjudgeable: str | None = None
    """Why these images judge nothing (no detection, or eager float32 off its own float64 oracle): also a problem, and
    what the summary leads with."""

    @property
    def passed(self) -> bool:
        return (not self.refusals and not self.problems and bool(self.detections)
                and all(p.passed for p in self.dense) and all(p.passed for p in self.proposals)
                and all(p.passed for p in self.detections) and all(check.passed for check in self.layers))

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def rows(self) -> list[DetectorRow]:
        """One row per pair and level: what a table renders."""
        rows = []
        for pair in self.dense:
            worst = pair.worst if pair.outputs else None
            rows.append(DetectorRow("before NMS", pair.a, pair.b, pair.passed, "agrees" if pair.passed else "differs",
                                    worst.verdict() if worst else "no shared tensors",
                                    worst=worst.where if worst else "", ratio=worst.ratio if worst else None))
        rows += [DetectorRow("proposals", check.a, check.b, check.passed, "paired" if check.passed else "unpaired",
                             check.verdict()) for check in self.proposals]
        rows += [DetectorRow("after NMS", det.a, det.b, det.passed, det.status, det.verdict(), matched=det.matched,
                             borderline=len(det.borderline), unexplained=len(det.unexplained),
                             worst_box_ratio=det.worst_box_ratio, worst_score_ratio=det.worst_score_ratio,
                             worst_image=det.worst_image,
                             worst_mask_ratio=det.worst_mask_ratio if det.masks_judged else None,
                             worst_mask_head_ratio=det.worst_mask_head_ratio if det.masks_judged else None,
                             **(_keypoint_fields(det) if det.keypoints_judged else {}))
                 for det in self.detections]
        rows += [DetectorRow("export", fmt, "", False, "refused", why) for fmt, why in self.refusals.items()]
        rows += [_layer_row(check) for check in self.layers]
        rows += [DetectorRow("check", "", "", False, "failed", p) for p in self.problems]
        return rows

    @property
    def label(self) -> str:
        """`name:norm`, with the class count and checkpoint where the weights are a file (a fine-tuned head)."""
        if self.classes is None or not self.weights.startswith("file:"):
            return f"{self.name}:{self.norm}"
        count = f"{self.classes} class{'es' if self.classes != 1 else ''}"
        return f"{self.name}:{self.norm} ({count}, {self.weights.removeprefix('file:')})"

    def image_sizes(self) -> list[str]:
        return ["x".join(map(str, image.shape[-2:])) for image in self.images]

    def summary(self) -> str:
        if self.passed:
            least = min(min(d.matched_per_image) for d in self.detections)
            judged = [check for check in self.layers if check.layers]
            layers = f", every layer of {len(judged)} file{'s' if len(judged) != 1 else ''} within its own floor" \
                if judged else ""
            return (f"{self.label} agrees: {len(self.dense)} before-NMS and {len(self.detections)} "
                    f"after-NMS pairs, at least {least} detections matched per image{self._empty_images()}{layers}")
        failed = [r.text for r in self.rows() if not r.passed]
        if self.unjudgeable in failed:  # the cause of every other failure on these images
            failed.insert(0, failed.pop(failed.index(self.unjudgeable)))
        return f"{self.label} fails: {failed[0]}" + (f" (+{len(failed) - 1} more)" if len(failed) > 1
                                                                 else "")

    def _empty_images(self) -> str:
        """` (image 1 has no detection in any run: judged before NMS only)` where images gave none, else "": a pass
        that matched nothing on an image says so (stop 49: "at least 0 detections matched per image" said no more)."""
        images = max((len(p.reference_per_image) for p in self.detections), default=0)
        empty = [str(i) for i in range(images) if all(i < len(p.reference_per_image) and not p.reference_per_image[i]
                                                      and not p.matched_per_image[i] for p in self.detections)]
        if not empty:
            return ""
        return (f" (image{'s' if len(empty) > 1 else ''} {', '.join(empty)} ha{'ve' if len(empty) > 1 else 's'} no "
                "detection in any run: judged before NMS only)")

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": REPORT_SCHEMA_VERSION, "kind": REPORT_KIND,
                "detector": self.name, "norm": self.norm, "weights": self.weights, "classes": self.classes,
                "shape": list(self.shape),
                "formats": list(self.formats), "dynamic": self.dynamic, "image_sizes": self.image_sizes(),
                "factor": self.factor, "passed": self.passed,
                "exit_code": self.exit_code, "summary": self.summary(), "refusals": self.refusals,
                "problems": self.problems, "dense_outputs": self.dense_outputs,
                "floor": self.floor.to_dict() if self.floor else None,
                "before_nms": [p.to_dict() for p in self.dense],
                "proposals": [p.to_dict() for p in self.proposals], "after_nms": [d.to_dict() for d in self.detections],
                "rows": [row.to_dict() for row in self.rows()],
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}, "files": self.files,
                **({"layers": [check.to_dict() for check in self.layers], "layer_verdict": self.layer_verdict}
                   if self.layer_verdict is not None else {}), "notes": self.notes}


def _layer_row(check: Any) -> DetectorRow:
    """A file's layer verdict as a row (level `layers`): its worst layer's ratio to its own floor."""
    from verify.judge.layers import verdict_line

    worst = check.layers[0] if check.layers else None
    return DetectorRow(LAYERS_LEVEL, check.candidate, "", check.passed, "agrees" if check.passed else "differs",
                       verdict_line(check), worst=worst.module if worst else "", ratio=worst.ratio if worst else None)


LAYERS_LEVEL = "layers"
"""The level of a file's layer verdict row (hunt 23b)."""
LEVEL_FIELDS = {"before NMS": ("worst", "ratio"), LAYERS_LEVEL: ("worst", "ratio"),
                "after NMS": ("matched", "borderline", "unexplained", "worst_box_ratio", "worst_score_ratio",
                              "worst_image")}
"""The fields a row of each level carries besides level, pair, outcome and text (its JSON keys, in order)."""
MASK_FIELDS = ("worst_mask_ratio", "worst_mask_head_ratio")
"""A Mask R-CNN's after-NMS row's fields besides LEVEL_FIELDS (absent for a detector without masks)."""
KEYPOINT_FIELDS = ("worst_keypoint_ratio", "worst_keypoint_score_ratio", "worst_keypoint_head_ratio", "worst_keypoint")
"""A Keypoint R-CNN's after-NMS row's fields besides LEVEL_FIELDS (absent for a detector without keypoints)."""


def _keypoint_fields(det: DetectionPair) -> dict[str, Any]:
    judged = det.keypoint_judgement
    return {name: getattr(judged, name) for name in KEYPOINT_FIELDS}


@dataclass(frozen=True)
class DetectorRow:
    """One judged pair at one level (before NMS, proposals, after NMS), a refused export or a failed check: the
    typed row every renderer of a whole detector reads."""

    level: str
    a: str
    b: str
    passed: bool
    status: str
    text: str
    worst: str = ""
    ratio: float | None = None
    matched: int | None = None
    borderline: int | None = None
    unexplained: int | None = None
    worst_box_ratio: float | None = None
    worst_score_ratio: float | None = None
    worst_image: int | None = None
    worst_mask_ratio: float | None = None
    """Mask R-CNN's after-NMS rows: the worst matched pair's pasted masks, in mask floors (None: no masks)."""
    worst_mask_head_ratio: float | None = None
    """Mask R-CNN's after-NMS rows: the worst matched pair's mask-head logits, in their floors (None: no masks)."""
    worst_keypoint_ratio: float | None = None
    """Keypoint R-CNN's after-NMS rows: the worst matched keypoints (x, y), in keypoint floors (None: no keypoints)."""
    worst_keypoint_score_ratio: float | None = None
    worst_keypoint_head_ratio: float | None = None
    """Keypoint R-CNN's after-NMS rows: the worst heatmap logits of the keypoint head, in their floors."""
    worst_keypoint: str | None = None
    """Keypoint R-CNN's after-NMS rows: the name of the keypoint (e.g. `left_wrist`) with the largest ratio."""

    @property
    def pair(self) -> str:
        return f"{self.a} vs {self.b}" if self.b else self.a

    @property
    def named_text(self) -> str:
        """`text`, led by the tensor it was judged on where a before-NMS pair failed: the line said only "differs at
        float32 precision (574.7x ...)", and which head, level and channel was left to the JSON (FCOS sweep, stop 43:
        `verify artifact` on a folder with a seeded centerness error)."""
        if self.level == "before NMS" and not self.passed and self.worst:
            return f"{self.worst}: {self.text}"
        return self.text

    def to_dict(self) -> dict[str, Any]:
        """The JSON row: the fields its level carries, nothing else."""
        return {"level": self.level, "a": self.a, "b": self.b, "passed": self.passed, "status": self.status,
                **{name: getattr(self, name) for name in LEVEL_FIELDS.get(self.level, ())},
                **{name: getattr(self, name) for name in (*MASK_FIELDS, *KEYPOINT_FIELDS)
                   if getattr(self, name) is not None},
                "text": self.text}


@dataclass
class Run:
    detections: list[Detections]
    dense: dict[str, np.ndarray] = field(default_factory=dict)
    candidates: list[Detections] = field(default_factory=list)
    """Each image's final-NMS inputs (boxes, scores, classes): eager's recorded, an ONNX run's extra graph outputs."""
    per_image: list[dict[str, np.ndarray]] = field(default_factory=list)
    """The dense tensors of each image, before `dense` concatenates them."""
    proposals: list[np.ndarray] = field(default_factory=list)
    """Faster R-CNN: each image's RPN proposals (the box head's rows, in order); empty when not captured."""
    rpn_candidates: list[Detections] = field(default_factory=list)
    """In float64: the inputs of each image's RPN NMS (boxes, scores, level as label)."""
    below_threshold: list[Detections] = field(default_factory=list)
    """In float64: the inputs of each image's final NMS with the score threshold at `BELOW_THRESHOLD` of its own (the
    detections near the threshold that rounding can keep or drop, which `candidates`, recorded after the threshold,
    lack): a `score threshold` borderline must be one of them."""
    samples: list[dict[str, np.ndarray]] = field(default_factory=list)
    """Eager float32: each image's dense tensors (but the per-proposal ones) from the detector with its norms folded
    into its convolutions (`folded_samples`), a second float32 rounding for the channel floors; empty where nothing
    folds."""
    reversed_sums: list[dict[str, np.ndarray]] = field(default_factory=list)
    """Eager float32: each image's dense tensors (but the per-proposal ones and the anchors) from the detector with
    every convolution's input channels summed in reverse order (`reversed_samples`), a third float32 rounding for the
    channel floors (hunt 23b); empty where no convolution sums over channels."""


@dataclass(frozen=True)
class Judging:
    """What judging needs from the model besides its runs: its post-processing constants (the decisions rounding
    can flip) and the dense tensors with one row per RPN proposal; read from the model at export, from an export
    folder's manifest after."""

    rules: Rules
    rpn: RpnRules | None = None
    per_proposal: tuple[str, ...] = ()
    box_coding: BoxCoding | None = None
    """Faster R-CNN: its box head's decoding, which a candidate of a proposal in one run only must be (hunt 22a); from
    the model at export, torchvision's own default for a folder (re-checked on its goldens, verify/detect/folder.py).
    None elsewhere (or unknown: such a candidate is then never explained)."""
    masks: bool = False
    """Mask R-CNN: its detections carry masks, judged per matched pair (verify/detect/masks.py); a run without them
    fails."""
    keypoints: bool = False
    """Keypoint R-CNN: its detections carry keypoints, judged per matched pair (verify/detect/keypoints.py); a run
    without them fails."""

    @classmethod
    def of(cls, built: BuiltDetector) -> Judging:
        rpn = getattr(built.model, "rpn", None)
        heads = getattr(built.model, "roi_heads", None)
        return cls(Rules(built.score_thresh, built.nms_thresh, built.detections_per_img),
                   RpnRules(float(rpn.nms_thresh), int(rpn.post_nms_top_n()), float(rpn.score_thresh))
                   if rpn is not None else None, tuple(built.per_proposal_modules),
                   BoxCoding.of(heads.box_coder) if heads is not None else None, built.masks, built.keypoints)
