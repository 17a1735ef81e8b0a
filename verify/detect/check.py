"""Verify a whole detector's exports: TorchScript (script) and legacy ONNX against eager and its float64 oracle.

Two levels, both reported:
- before NMS: the dense head tensors (RPN objectness and deltas, box-head logits and regression, RetinaNet /
  SSDlite per-level heads), captured with forward hooks in eager float32 / float64 and, for ONNX, added as extra
  graph outputs; judged by verify.judge.compare on the oracle's floors (per channel for NCHW tensors). A scripted
  module runs no Python hooks: the TorchScript file's own pieces (transform, backbone, heads, RPN), called one by one,
  give its dense tensors and proposals, judged the same way aside from the before-NMS pairs (each failure a problem);
  Faster R-CNN's box-head tensors (one row per RPN proposal) are judged with their rows paired by proposal
  (verify/detect/proposals.py): runtimes may order tied proposals differently; each ONNX run's final-NMS inputs
  (decoded boxes and scores, an extra graph output) paired with eager's and the oracle's by candidate
  (verify/detect/nms_inputs.py), so the decoding is judged where the NMS may suppress what it moved; a TorchScript
  file's too: Faster R-CNN's from its own box coder (`_script_candidates`), RetinaNet's and SSDlite's from its own
  compiled post-processing with the NMS made to suppress nothing (`_script_nms_inputs`, hunt 22a);
- after NMS: detections matched by IoU (verify/detect/match.py) on the float32 floor of detections.
Every run is guarded (verify/judge/trust.py): every image twice, bit for bit, on private input copies
that must come back unchanged; a breach is a problem (exit 1).
A format that does not export, or a file its runtime cannot run, is a one-line refusal and a failed check.
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.errors import ExportError, SetupError, UsageError
from exporter.weights import state_dict_sha256
from verify.detect.match import (
    DetectionFloor,
    DetectionPair,
    Detections,
    Rules,
    compare_detections,
    measure_detection_floor,
)
from verify.detect.nms_inputs import (
    CLASS_LOGITS,
    NMS_INPUTS,
    SMALL_BOX,
    BoxCoding,
    LoneProposals,
    NmsBands,
    derive_nms_bands,
    lone_proposal_boxes,
    lone_proposal_probabilities,
    near_small_box,
    onnx_nms_inputs,
    paired_inputs,
    unexplained,
)
from verify.detect.proposals import (
    PROPOSALS,
    Bands,
    ProposalCheck,
    RpnRules,
    align_rows,
    derive_bands,
    explain_unpaired,
)
from verify.judge.compare import PairResult, Tolerance, compare_outputs
from verify.judge.trust import RepeatCheck, likely_cause, output_differences, repeat_problems
from verify.runtimes.onnxruntime import PROVIDERS

if TYPE_CHECKING:
    import numpy as np
    import torch

    from exporter.families.detectors import BuiltDetector

FORMATS = ("torchscript", "onnx", "onnx-dynamo")
DEFAULT_FORMATS = FORMATS[:2]
"""What `verify export -b <detector>` exports unless --format says otherwise (dynamo is refused upstream)."""
ONNX_OPSET = 17
OUTPUT_NAMES = ("boxes", "labels", "scores")
DYNAMO_BLOCKER = ("torch.export cannot trace torchvision's detectors: NMS and RoIAlign have data-dependent output "
                  "shapes (upstream fixes open: pytorch/vision#9226, pytorch/vision#9395); use the legacy ONNX "
                  "exporter (format onnx)")
RESHAPE_BLOCKER = "pytorch/vision#4623"
"""The upstream issue: a Reshape in the box head of torchvision's Faster R-CNN, exported by the legacy ONNX
exporter, fails in ONNX Runtime on some images (measured here: every image the RPN keeps no proposal for,
{0,364} to {0,-1}; bench/results/detectors-cpu.log)."""
RESHAPE_FAILURE = re.compile(r"running Reshape node\. Name:'(?P<node>[^']*)'.*?Input shape:\s*(?P<given>\{[^}]*\}),"
                             r"\s*requested shape:\s*(?P<wanted>\{[^}]*\})")
DYNAMIC_AXES = {"image": {1: "height", 2: "width"}}
"""The ONNX input's dynamic axes when a detector is exported for any image size (it takes one C x H x W image)."""
FILE_NAMES = {"torchscript": "detector.torchscript.pt", "onnx": "detector.onnx", "onnx-dynamo": "detector.dynamo.onnx"}
RUNTIMES = {"torchscript": "torchscript", "onnx": "onnxruntime", "onnx-dynamo": "onnxruntime (dynamo)"}
AFTER_NMS_ONLY = (RUNTIMES["torchscript"],)
"""Runtimes without before-NMS pairs: a scripted module runs no Python hooks, so its dense tensors and final-NMS inputs
come from its own pieces (`_run_torchscript`: Faster R-CNN's from its own box coder, RetinaNet's and SSDlite's from its
own post-processing), judged aside (`_script_piece_problems`), each failure a problem; a matrix cell holds the ONNX
runs' pairs only."""
EAGER, ORACLE = "eager", "eager fp64"
GUARD_DEVICE = "cpu"
"""Every detector runtime here runs on the CPU: a repeat must give the same bits."""
PROPOSAL_PRODUCER, PROPOSAL_CONSUMER = "/rpn/", "/roi_heads/box_roi_pool/"
"""Scopes of the legacy exporter between which the proposals flow (see onnx_proposals)."""
ANSI = re.compile(r"\x1b\[[0-9;]*m")
BELOW_THRESHOLD = 0.5
"""The float64 run records its final NMS's inputs a second time with the score threshold at this fraction of its own
(`Run.below_threshold`): far below any rounding band, and never more than the model's own per-level top-k keeps."""
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
                             worst_image=det.worst_image) for det in self.detections]
        rows += [DetectorRow("export", fmt, "", False, "refused", why) for fmt, why in self.refusals.items()]
        rows += [_layer_row(check) for check in self.layers]
        rows += [DetectorRow("check", "", "", False, "failed", p) for p in self.problems]
        return rows

    def image_sizes(self) -> list[str]:
        return ["x".join(map(str, image.shape[-2:])) for image in self.images]

    def summary(self) -> str:
        if self.passed:
            least = min(min(d.matched_per_image) for d in self.detections)
            judged = [check for check in self.layers if check.layers]
            layers = f", every layer of {len(judged)} file{'s' if len(judged) != 1 else ''} within its own floor" \
                if judged else ""
            return (f"{self.name}:{self.norm} agrees: {len(self.dense)} before-NMS and {len(self.detections)} "
                    f"after-NMS pairs, at least {least} detections matched per image{layers}")
        failed = [r.text for r in self.rows() if not r.passed]
        return f"{self.name}:{self.norm} fails: {failed[0]}" + (f" (+{len(failed) - 1} more)" if len(failed) > 1
                                                                 else "")

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": REPORT_SCHEMA_VERSION, "kind": REPORT_KIND,
                "detector": self.name, "norm": self.norm, "weights": self.weights, "shape": list(self.shape),
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

    @property
    def pair(self) -> str:
        return f"{self.a} vs {self.b}" if self.b else self.a

    def to_dict(self) -> dict[str, Any]:
        """The JSON row: the fields its level carries, nothing else."""
        return {"level": self.level, "a": self.a, "b": self.b, "passed": self.passed, "status": self.status,
                **{name: getattr(self, name) for name in LEVEL_FIELDS.get(self.level, ())}, "text": self.text}


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

    @classmethod
    def of(cls, built: BuiltDetector) -> Judging:
        rpn = getattr(built.model, "rpn", None)
        heads = getattr(built.model, "roi_heads", None)
        return cls(Rules(built.score_thresh, built.nms_thresh, built.detections_per_img),
                   RpnRules(float(rpn.nms_thresh), int(rpn.post_nms_top_n()), float(rpn.score_thresh))
                   if rpn is not None else None, tuple(built.per_proposal_modules),
                   BoxCoding.of(heads.box_coder) if heads is not None else None)


def verify_detector(name: str, norm: str | None = None, shape: tuple[int, ...] = (1, 3, 320, 320),
                    weights: str = "synthetic", seed: int = 0, formats: Sequence[str] = ("torchscript", "onnx"),
                    out: Path | str | None = None, progress: Callable[[str], None] | None = None,
                    factor: float | None = None, images: Sequence[np.ndarray] | None = None,
                    dynamic: bool = False, layers: bool | None = False) -> DetectorReport:
    """Build, export, run and judge `name`; `images` (each 3 x H x W in [0, 1], sizes may differ when
    `dynamic`) replace the synthetic ones; `dynamic` exports ONNX for any image size, from the first image.
    `layers`: the layer verdict (`judge_layers`) asked for (True: a file it cannot judge fails), not run (False: the
    library's and a matrix cell's default), or None: `verify export -b <detector>`'s default, run unless
    $BACKBONE_VERIFY_LAYERS is 0 and best effort (a file it cannot judge is a note; a layer beyond its own floor
    still fails)."""
    from exporter.families.detectors import build_detector

    say = progress or (lambda _: None)
    formats = _check_formats(formats)
    tolerance = Tolerance.from_options(factor=factor)
    clock = _Clock()
    inputs = _inputs(name, shape, seed, images)  # a bad input is refused before the detector is built
    if not dynamic and len({tuple(i.shape) for i in inputs}) > 1:
        raise UsageError("Images of several sizes need a detector exported for any size (dynamic); resize them "
                         "to one size or export dynamic")
    with clock("build"):
        say(f"building {name}")
        built = build_detector(name, norm, weights, seed)
    with _folder(out) as folder:
        files, refusals = export_detector(built, inputs[0], formats, folder, say, clock, dynamic=dynamic)
        report = judge_detector(built, inputs, files, tolerance, say, clock)
        from verify.judge.layers import layers_by_default

        if layers or (layers is None and layers_by_default()):
            with clock("layers"):
                say("re-running every layer of the exported files on the detector's float64 values")
                judge_layers(report, built, files, inputs[0], tolerance, asked=bool(layers))
    report.refusals = {**refusals, **report.refusals}
    report.weights_sha256 = state_dict_sha256(built.model.state_dict())
    report.dynamic = dynamic
    report.formats = tuple(formats)
    report.seconds.update(clock.seconds)
    return report


def judge_layers(report: DetectorReport, built: BuiltDetector, files: dict[str, Path], image: torch.Tensor,
                 tolerance: Tolerance, asked: bool) -> None:
    """The layer verdict into `report`: `detector_layer_checks`; by default (`asked` False) what it cannot judge is a
    note (verify.judge.layers.best_effort), asked for it fails, and no file judged at all is a problem."""
    from verify.judge.compare import AUTO_FACTOR
    from verify.judge.layers import best_effort, unreached

    checks, notes = detector_layer_checks(built, files, image, max(tolerance.factor or AUTO_FACTOR, AUTO_FACTOR))
    if not asked:
        checks, unjudged = best_effort(checks)
        notes += unjudged
    judged = [check.candidate for check in checks if check.layers]
    report.layers, report.notes = checks, [*report.notes, *notes]
    report.layer_verdict = {"run": "asked" if asked else "default", "judged": judged,
                            "not_judged": [FILE_NAMES[fmt] for fmt in files if FILE_NAMES[fmt] not in judged]}
    report.problems = unreached(asked, checks, report.problems)


def detector_layer_checks(built: BuiltDetector, files: dict[str, Path], image: torch.Tensor,
                          factor: float) -> tuple[list[Any], list[str]]:
    """Each exported file's layers re-run alone on the eager detector's float64 values for `image` (its first), each
    judged on its own float32 floor (verify/explain/rerun.py `model_layer_checks`, as `verify export --layers` judges
    a backbone's files): the ONNX file's module scopes on ONNX Runtime, the TorchScript file's leaf modules on torch.
    What the detector computes outside every module (the anchors, RoIAlign's pooling, NMS) is the outputs' verdict's.
    Hunt 23b (bench/calibrate_detectors.py): fasterrcnn_mobilenet_v3_large_320_fpn's ONNX and TorchScript files 202
    and 183 layers, ssdlite320_mobilenet_v3_large's 195 and 247; correct files at most 2.47x; each seeded 0.1 %
    one-channel weight error at 369x its layer's floor or more, the 7 the outputs let pass among them, wherever it
    changed the file's values on the image."""
    import copy

    model = copy.deepcopy(built.model).float().eval()
    candidates = [(fmt, path, FILE_NAMES[fmt], load_scripted(path, "cpu") if fmt == "torchscript" else None)
                  for fmt, path in files.items()]
    from verify.explain.rerun import model_layer_checks

    return model_layer_checks(model, copy.deepcopy(model).double(), candidates, image[None].numpy(), factor,
                              reference=built.name)


def _check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UsageError(f"Unknown detector format {', '.join(bad) or '(none)'}; choose from {', '.join(FORMATS)}")
    return tuple(dict.fromkeys(formats))


def check_inputs(name: str, shape: tuple[int, ...], images: Sequence[np.ndarray] | None) -> None:
    """Refuse what detector `name` cannot take (one-line UsageError): `images` (each 3 x H x W) when given, else
    synthetic images of `shape`; the CLI asks before it creates any folder."""
    import numpy as np

    from exporter.families.detectors import IMAGE_SIZE, MIN_IMAGE_SIDE, check_image_size

    if images is not None:
        if not len(images):  # else the detector was built, then the export took images[0]: an IndexError
            raise UsageError("No detector images given: pass at least one image (3 x H x W), or none for the seeded "
                             "ones")
        for image in images:  # a 1-channel image would broadcast against the RGB mean into a grey one, judged as RGB
            if image.ndim != 3 or image.shape[0] != 3 or min(image.shape) < 1:
                raise UsageError(f"A detector takes RGB images (3 x H x W), got one of "
                                 f"{'x'.join(map(str, image.shape))}; pass images, or arrays with 3 channels")
            check_image_size(name, *image.shape[1:])
            if not np.isfinite(np.asarray(image)).all():  # the repeat guard then read NaN != NaN as a changed input
                raise UsageError(f"A detector image of {'x'.join(map(str, image.shape))} holds NaN or infinite "
                                 "values; pass finite pixels (images in [0, 1])")
        return
    if len(shape) != 4 or shape[1] != 3 or min(shape) < 1:
        raise UsageError(f"A detector input shape is N x 3 x H x W, got {'x'.join(map(str, shape))}")
    if min(shape[2:]) < MIN_IMAGE_SIDE:
        raise UsageError(f"A detector's synthetic images are at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} pixels, got "
                         f"{'x'.join(map(str, shape[2:]))}; pass --shape 1x3x{IMAGE_SIZE}x{IMAGE_SIZE}")
    check_image_size(name, *shape[2:])


def _inputs(name: str, shape: tuple[int, ...], seed: int, images: Sequence[np.ndarray] | None) -> list[torch.Tensor]:
    import torch

    from exporter.families.detectors import calibration_image

    check_inputs(name, shape, images)
    if images is not None:
        return [torch.as_tensor(image, dtype=torch.float32) for image in images]
    return [calibration_image(seed + i, tuple(shape[1:])) for i in range(shape[0])]


@contextlib.contextmanager
def _folder(out: Path | str | None) -> Iterator[Path]:
    if out is not None:
        out = Path(out)  # a path given as text, as every folder API takes it (it was an AttributeError)
        out.mkdir(parents=True, exist_ok=True)
        yield out
        return
    with tempfile.TemporaryDirectory(prefix="verify-detector-") as tmp:
        yield Path(tmp)


class _Clock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, what: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[what] = self.seconds.get(what, 0.0) + time.perf_counter() - start


def export_detector(built: BuiltDetector, example: torch.Tensor, formats: Sequence[str], folder: Path,
                    say: Callable[[str], None] = lambda _: None,
                    clock: _Clock | None = None, dynamic: bool = False) -> tuple[dict[str, Path], dict[str, str]]:
    """Write each format to `folder`; return the files and, per format that did not export, a one-line why.
    `dynamic`: the ONNX file takes any image size (TorchScript always does)."""
    clock = clock or _Clock()
    files, refusals = {}, {}
    for fmt in formats:
        path = folder / FILE_NAMES[fmt]
        say(f"exporting {fmt}")
        with clock(f"export {fmt}"):
            try:
                _EXPORTERS[fmt](built.model, example, path, dynamic)
                files[fmt] = path
            except ExportError as exc:
                refusals[fmt] = str(exc)
    return files, refusals


def _export_torchscript(model: torch.nn.Module, example: torch.Tensor, path: Path, dynamic: bool) -> None:
    import torch

    try:
        torch.jit.save(torch.jit.script(model), str(path))
    except Exception as exc:  # TorchScript raises many types for what it cannot compile
        raise ExportError(f"torch.jit.script cannot compile this detector ({_first_line(exc)})") from None


def _export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, dynamic: bool) -> None:
    import warnings

    import torch

    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the tracer warns on every Python scalar in torchvision's code
            torch.onnx.export(model, ([example],), str(path), dynamo=False, opset_version=ONNX_OPSET,
                              input_names=["image"], output_names=output_names(model, example),
                              dynamic_axes=DYNAMIC_AXES if dynamic else None)
    except Exception as exc:  # the exporter raises many types
        raise ExportError(f"the legacy ONNX exporter fails on this detector ({_first_line(exc)})") from None


def output_names(model: torch.nn.Module, example: torch.Tensor) -> list[str]:
    """The detection dict's keys in the model's own order (Faster R-CNN: boxes, labels, scores; RetinaNet
    and SSDlite: boxes, scores, labels): the legacy exporter names outputs by position."""
    from exporter.families.detectors import detect

    names = list(detect(model, example))
    if sorted(names) != sorted(OUTPUT_NAMES):
        raise ExportError(f"the detector returns {', '.join(names)}, not {', '.join(OUTPUT_NAMES)}")
    return names


def _export_dynamo(model: torch.nn.Module, example: torch.Tensor, path: Path, dynamic: bool) -> None:
    import warnings

    import torch

    try:
        with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # and torch.onnx prints its progress on stdout
            program = torch.onnx.export(model, ([example],), dynamo=True, opset_version=18)
            program.save(str(path))
    except Exception as exc:  # torch.export raises many types on data-dependent shapes
        raise ExportError(f"{DYNAMO_BLOCKER} [{_root_cause(exc)[:160]}]") from None
    raise ExportError(f"the dynamo ONNX export of a detector is not judged yet ({path.name} written, not run)")


_EXPORTERS = {"torchscript": _export_torchscript, "onnx": _export_onnx, "onnx-dynamo": _export_dynamo}


def _root_cause(exc: BaseException) -> str:
    """The innermost error's first line, without terminal colours (torch.onnx wraps the real reason)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [line for line in ANSI.sub("", str(exc)).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0].strip() if lines else ''}"


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:200] + "...") if len(text) > 200 else (text or type(exc).__name__)


def judge_detector(built: BuiltDetector, inputs: Sequence[torch.Tensor], files: dict[str, Path],
                   tolerance: Tolerance | None = None, say: Callable[[str], None] = lambda _: None,
                   clock: _Clock | None = None) -> DetectorReport:
    """Run eager float32 and float64 and each exported file on `inputs`, and judge both levels."""
    tolerance = tolerance or Tolerance()
    clock = clock or _Clock()
    report = DetectorReport(built.name, built.norm, built.weights, (len(inputs), *inputs[0].shape),
                            tuple(files), tolerance.factor, files={k: str(v) for k, v in files.items()},
                            images=[image.numpy() for image in inputs])
    repeats: list[RepeatCheck] = []
    with clock("run eager"):
        say(f"running eager float32 and float64{_on_images(len(inputs))}")
        eager = _guarded(EAGER, lambda images: run_eager(built, images, float64=False), inputs, repeats)
        oracle = _guarded(ORACLE, lambda images: run_eager(built, images, float64=True), inputs, repeats)
        eager.samples = folded_samples(built, inputs)
        eager.reversed_sums = reversed_samples(built, inputs)
    report.problems += repeat_problems(repeats, GUARD_DEVICE, {}, likely_cause(built.model))
    judge_runs(report, Judging.of(built), inputs, eager, oracle, files, tolerance, say, clock)
    return report


def judge_runs(report: DetectorReport, judging: Judging, inputs: Sequence[torch.Tensor], eager: Run, oracle: Run,
               files: dict[str, Path], tolerance: Tolerance, say: Callable[[str], None] = lambda _: None,
               clock: _Clock | None = None, device: str = GUARD_DEVICE) -> None:
    """Run each file on `inputs` (guarded) on `device` and judge both levels against `eager` and `oracle`:
    the export's own runs, or an export folder's goldens (verify/detect/folder.py)."""
    clock = clock or _Clock()
    report.judging = judging
    runs: dict[str, Run] = {}
    for fmt, path in files.items():
        with clock(f"run {fmt}"):
            say(f"running {RUNTIMES[fmt]}{_on_images(len(inputs))}")
            checks: list[RepeatCheck] = []
            try:
                runs[RUNTIMES[fmt]] = _guarded(RUNTIMES[fmt], lambda images, fmt=fmt, path=path: _RUNNERS[fmt](
                    path, images, list(eager.dense), device), inputs, checks)
            except ExportError as exc:
                report.refusals[fmt] = str(exc)
            report.problems += repeat_problems(checks, device, {})
    with clock("judge"):
        _judge(report, judging, eager, oracle, runs, tolerance)


def _on_images(count: int) -> str:
    """How much work a progress line stands for: every image runs twice (the repeat guard)."""
    return f" on {count} images, each twice" if count > 1 else ""


def derive_floors(judging: Judging, inputs: Sequence[torch.Tensor], eager: Run, oracle: Run,
                  factor: float) -> tuple[dict[str, Any], DetectionFloor | None]:
    """The floors a judgement of these runs uses (dense tensors, then detections), measured as _judge does."""
    scratch = DetectorReport("", "", "", (len(inputs), *inputs[0].shape), (), factor,
                             images=[image.numpy() for image in inputs])
    floors = _Rows(scratch, judging, oracle, Tolerance(factor=factor)).floors(eager)
    return floors, measure_detection_floor(eager.detections, oracle.detections)


def _judge(report: DetectorReport, judging: Judging, eager: Run, oracle: Run, runs: dict[str, Run],
           tolerance: Tolerance) -> None:
    report.boxes = {EAGER: eager.detections, ORACLE: oracle.detections,
                    **{label: run.detections for label, run in runs.items()}}
    report.references = {EAGER: eager, ORACLE: oracle}
    report.proposal_boxes = {label: run.proposals for label, run in [(EAGER, eager), (ORACLE, oracle), *runs.items()]
                             if run.proposals and label not in AFTER_NMS_ONLY}  # TorchScript's: judged aside
    rows = _Rows(report, judging, oracle, tolerance)
    floors = rows.floors(eager)
    report.floors = floors
    report.dense_outputs = list(eager.dense) + ([PROPOSALS] if PROPOSALS in floors else [])
    report.floor = measure_detection_floor(eager.detections, oracle.detections)
    if report.floor is None:
        report.problems.append(f"eager float32 and float64 share no detection on these inputs: no floor to judge "
                               f"on (the reference has {sum(len(d) for d in oracle.detections)} detections)")
        return
    rules = judging.rules
    if RUNTIMES["torchscript"] in runs:
        report.problems += _script_piece_problems(rows, floors, eager, oracle, runs[RUNTIMES["torchscript"]],
                                                  tolerance)
    for label, run in runs.items():
        if label != RUNTIMES["torchscript"]:  # every ONNX run must show every dense tensor
            report.dense.append(compare_outputs(*rows.paired(label, run, ORACLE, oracle), tolerance,
                                                floors, kind="oracle", require_all=True))
            report.dense.append(compare_outputs(*rows.paired(label, run, EAGER, eager), tolerance, floors,
                                                require_all=True))
    scales = candidate_scales(report.name, report.images)
    below = oracle.below_threshold or None
    if below is None:  # never silently: a `score threshold` borderline would be accepted whatever its box
        report.problems.append("the float64 reference holds no final-NMS inputs below the score threshold, which a "
                               "`score threshold` borderline is asked to be one of: export it again")
    for label, run in [(EAGER, eager), *runs.items()]:
        report.detections.append(compare_detections(label, run.detections, ORACLE, oracle.detections,
                                                     report.floor, rules, oracle.candidates, tolerance.factor, scales,
                                                     below))
        if label != EAGER:
            report.detections.append(compare_detections(label, run.detections, EAGER, eager.detections,
                                                        report.floor, rules, oracle.candidates, tolerance.factor,
                                                        scales, below))


def below_threshold_mismatch(below: Detections, candidates: Detections, score_thresh: float) -> str | None:
    """Why `below` (the float64 final-NMS inputs recorded under `BELOW_THRESHOLD` of the score threshold) is not what
    the model records there, judged from `candidates` (recorded under its own threshold): every score above the lower
    threshold, and those above `score_thresh` exactly the candidates (as a set: the per-level top-k may order ties
    otherwise). A recording read from disk (a folder's goldens, a matrix cell's numbers) is re-checked so; what lies
    between the two thresholds is re-derived only where the model is rebuilt (`verify artifact --rebuild`)."""
    import numpy as np

    low = score_thresh * BELOW_THRESHOLD
    if len(below) and float(below.scores.min()) <= low:
        return (f"holds a score of {float(below.scores.min()):.6g}, not above {low:g} ({BELOW_THRESHOLD:g} of the "
                f"score threshold {score_thresh:g}, where they are recorded)")

    def rows(found: Detections) -> np.ndarray:
        table = np.column_stack([found.boxes.reshape(-1, 4), found.scores, found.labels.astype(np.float64)])
        return table[np.lexsort(table.T[::-1])] if len(table) else table

    above = below.take(np.flatnonzero(below.scores > score_thresh))
    if len(above) != len(candidates) or not np.array_equal(rows(above), rows(candidates)):
        return (f"holds {len(above)} inputs above the score threshold {score_thresh:g}, not exactly the "
                f"{len(candidates)} the final NMS was given")
    return None


def candidate_scales(name: str, images: Sequence[np.ndarray]) -> list[tuple[float, float]] | None:
    """Per image, (x, y) from the final NMS's frame (the detector's own resized image) to the image's, as
    torchvision's `resize_boxes` scales detections back; None for a name that is not a registered detector."""
    return size_scales(name, [tuple(image.shape[-2:]) for image in images])


def resized_sizes(name: str, images: Sequence[np.ndarray]) -> list[tuple[int, int]] | None:
    """Per image, its (height, width) after the detector's own transform: the frame of the final NMS's inputs; None
    for a name that is not a registered detector."""
    from exporter.families.detectors import DETECTORS, resized_size

    if name not in DETECTORS.names():
        return None
    return [resized_size(DETECTORS.get(name), *image.shape[-2:]) for image in images]


def size_scales(name: str, sizes: Sequence[tuple[int, int]]) -> list[tuple[float, float]] | None:
    """`candidate_scales` for images of these (height, width)."""
    from exporter.families.detectors import DETECTORS, resized_size

    if name not in DETECTORS.names():
        return None
    scales = []
    for height, width in sizes:
        resized = resized_size(DETECTORS.get(name), height, width)
        scales.append((width / resized[1], height / resized[0]))
    return scales


def _script_piece_problems(rows: _Rows, floors: dict[str, Any], eager: Run, oracle: Run, run: Run,
                           tolerance: Tolerance) -> list[str]:
    """The TorchScript file's own pieces (`_run_torchscript`: its dense tensors and RPN proposals) judged as an ONNX
    run's are, against eager fp64 and eager, each failure one problem. After NMS alone, a box-regression row of a
    class the images never detect off by 10 % (Faster R-CNN), or one such class's logits 5 % off (SSDlite, RetinaNet),
    agreed. They are judged on a
    scratch report so that the before-NMS pairs stay each ONNX run's (what a matrix cell holds)."""
    import copy

    report = rows.report
    scratch = DetectorReport("", "", "", report.shape, (), tolerance.factor, images=report.images)
    rows = copy.copy(rows)  # the floors and proposal bands as measured, its pairings recorded on the scratch report
    rows.report = scratch
    label = RUNTIMES["torchscript"]
    pairs = [compare_outputs(*rows.paired(label, run, ORACLE, oracle), tolerance, floors, kind="oracle",
                             require_all=True),
             compare_outputs(*rows.paired(label, run, EAGER, eager), tolerance, floors, require_all=True)]
    problems = [f"{label}'s own pieces before NMS: {check.verdict()}" for check in scratch.proposals
                if not check.passed]
    problems += [f"{label}'s own pieces before NMS: {problem}" for problem in scratch.problems]
    for pair in pairs:
        if not pair.passed:
            what = f"{pair.worst.where} {pair.worst.verdict()}" if pair.outputs else "no dense tensor to compare"
            problems.append(f"{label}'s own pieces before NMS: {pair.a} vs {pair.b}: {what}")
    return problems


class _Rows:
    """The dense tensors of two runs as compared: for Faster R-CNN, the box head's rows paired by proposal
    (verify/detect/proposals.py), each pairing recorded in the report; otherwise as captured."""

    def __init__(self, report: DetectorReport, judging: Judging, oracle: Run, tolerance: Tolerance) -> None:
        self.report, self.oracle, self.factor = report, oracle, tolerance.factor
        self.per_proposal = list(judging.per_proposal)
        self.rules = judging.rpn
        self.box_coding = judging.box_coding
        self.bands = Bands(0.0, 0.0)
        self.score_thresh = judging.rules.score_thresh
        self.nms = True  # the decoding's candidates: judged before NMS too (Faster R-CNN since hunt 21a)
        self.nms_bands = NmsBands(0.0, 0.0)

    def floors(self, eager: Run) -> dict[str, Any]:
        """The oracle's floors, measured on eager float32 paired with float64 proposal by proposal; they
        set the rounding bands that explain a proposal in one run only (eager's own ones included)."""
        from verify.judge.oracle import measure_floors

        aligned = self._align(EAGER, eager, ORACLE, self.oracle)
        samples = [concat_dense(found, self.report.images) for found in (eager.samples, eager.reversed_sums) if found]
        run, ref = dict(eager.dense), dict(self.oracle.dense)
        if aligned is not None:
            run, ref = aligned.run, aligned.ref
        lone = self._with_candidates(EAGER, eager, self.oracle, run, ref)
        floors = measure_floors(run, ref, samples=samples)
        values = {name: floor.value for name, floor in floors.items()}
        self.nms_bands = derive_nms_bands(values, self.factor)
        carried = None
        if aligned is not None:
            self.bands = derive_bands(values, self.factor)
            carried = self._explain(aligned, eager, self.oracle)
        if lone is not None:
            self._explain_candidates(EAGER, ORACLE, *lone, carried)
        return floors

    def paired(self, label: str, run: Run, ref_label: str,
               ref: Run) -> tuple[str, dict[str, np.ndarray], str, dict[str, np.ndarray]]:
        """(label, run's tensors, ref_label, ref's tensors) ready for compare_outputs."""
        aligned = self._align(label, run, ref_label, ref)
        carried = self._explain(aligned, run, ref) if aligned is not None else None
        mine, theirs = (run.dense, ref.dense) if aligned is None else (aligned.run, aligned.ref)  # by index: stricter
        # every runtime's final-NMS inputs, TorchScript's too: its Faster R-CNN's from its own box coder
        # (`_script_candidates`), its RetinaNet's and SSDlite's from its own post-processing (`_script_nms_inputs`)
        mine, theirs = dict(mine), dict(theirs)
        lone = self._with_candidates(label, run, ref, mine, theirs)
        if lone is not None:
            self._explain_candidates(label, ref_label, *lone, carried)
        return label, mine, ref_label, theirs

    def _with_candidates(self, label: str, run: Run, ref: Run, mine: dict[str, np.ndarray],
                         theirs: dict[str, np.ndarray]) -> tuple[Any, list[Detections], list[Detections]] | None:
        """Add the final NMS's inputs of both runs, paired (verify/detect/nms_inputs.py), to `mine` and `theirs` (a run
        that shows none then misses them: a failure); (the unpaired indices, run's, ref's) to explain, or None."""
        if not self.nms:
            return None
        missing = [side for side, held in (("float64", ref.candidates), ("float32", run.candidates or label != EAGER))
                   if not held]
        if missing:  # never silently: the decoding would go unjudged again (a runtime's own lack fails as missing)
            self.report.problems.append(f"the eager {' and '.join(missing)} reference holds no final-NMS inputs, which "
                                        "each runtime's decoded candidates are judged against: export it again")
            self.nms = False  # no floor to judge them on: the report fails on this problem
            return None
        found = run.candidates or [Detections.of({"boxes": [], "scores": [], "labels": []}) for _ in ref.candidates]
        paired_run, paired_ref, lone = paired_inputs(found, ref.candidates)
        theirs.update(concat_dense(paired_ref, self.report.images))
        if run.candidates:
            mine.update(concat_dense(paired_run, self.report.images))
            return lone, run.candidates, ref.candidates
        return None

    def _explain_candidates(self, label: str, ref_label: str, lone: Any, run: list[Detections],
                            ref: list[Detections], carried: LoneProposals | None) -> None:
        """Each candidate in one run only, explained by rounding or failed as one problem. Faster R-CNN (`carried`:
        its explained proposals in one run only; None where its proposals were not paired, which explains nothing)
        has no top-k cut before its final NMS."""
        below = self.oracle.below_threshold or None
        if carried is None and self.per_proposal:
            carried = LoneProposals([], [])
        problems = unexplained(lone, run, ref, self.score_thresh, below, self.nms_bands, carried)
        if problems:
            self.report.problems.append(f"{label} vs {ref_label}: {len(problems)} final-NMS input(s) in one run only "
                                        f"that rounding does not explain (first: {problems[0]})")

    def _align(self, label: str, run: Run, ref_label: str, ref: Run) -> _Aligned | None:
        if not (self.per_proposal and run.proposals and ref.proposals and self.rules):
            return None
        check = ProposalCheck(label, ref_label)
        mine, theirs, lone = align_rows(run.per_image, ref.per_image, run.proposals, ref.proposals,
                                        self.per_proposal, check)
        self.report.proposals.append(check)
        return _Aligned(check, concat_dense(mine, self.report.images), concat_dense(theirs, self.report.images), lone,
                        run.proposals, ref.proposals)

    def _explain(self, aligned: _Aligned, run: Run, ref: Run) -> LoneProposals:
        """The proposals in one run only explained or failed (in the pairing's check); the class probabilities of the
        explained ones, whose final-NMS inputs are in one run only too."""
        explained = explain_unpaired(aligned.check, aligned.lone, aligned.run_boxes, aligned.ref_boxes,
                                     self.oracle.rpn_candidates, self.rules, self.bands)
        sizes = resized_sizes(self.report.name, self.report.images)
        mine, theirs = [e[0] for e in explained], [e[1] for e in explained]

        def small(side: Run, boxes: list[np.ndarray]) -> list[Detections]:
            return [near_small_box(side.per_image[i] if i < len(side.per_image) else {}, boxes[i], self.box_coding,
                                   sizes[i] if sizes else None, self.score_thresh, self.nms_bands)
                    for i in range(len(boxes))]

        return LoneProposals(lone_proposal_probabilities(run.per_image, mine),
                             lone_proposal_probabilities(ref.per_image, theirs),
                             lone_proposal_boxes(run.per_image, aligned.run_boxes, mine, self.box_coding, sizes),
                             lone_proposal_boxes(ref.per_image, aligned.ref_boxes, theirs, self.box_coding, sizes),
                             small(run, aligned.run_boxes), small(ref, aligned.ref_boxes))


@dataclass
class _Aligned:
    check: ProposalCheck
    run: dict[str, np.ndarray]
    ref: dict[str, np.ndarray]
    lone: list[tuple[list[int], list[int]]]
    run_boxes: list[np.ndarray]
    ref_boxes: list[np.ndarray]


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
    for Faster R-CNN the RPN's proposals; the final NMS's candidates (its inputs), and in float64 also the RPN NMS's."""
    import copy

    import torch

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
        calls: list[Detections] = []
        try:
            with (torch.inference_mode(), _record_nms(calls),
                  _record_below_threshold(model, calls, result.below_threshold) if float64
                  else contextlib.nullcontext()):
                out = model([image.to(dtype)])[0]
        finally:
            for hook in hooks:
                hook.remove()
        result.detections.append(Detections.of({k: v.numpy() for k, v in out.items()}))
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
    (verify/judge/oracle.py `folded_float32`): ONNX Runtime folds them so, and rounds otherwise than eager. The
    per-proposal tensors are left out (the folded RPN may keep other proposals); [] where nothing folds."""
    from dataclasses import replace

    from verify.judge.oracle import folded_float32

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
    from verify.judge.oracle import hooked

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
                result.detections.append(Detections.of({k: v.cpu().numpy() for k, v in out[0].items()}))
                if pieces is None:
                    continue
                tensors, proposals, composed = pieces
                if composed is not None and device == "cpu" and not all(  # elsewhere a fuser may round otherwise
                        torch.equal(out[0][key], composed[key]) for key in ("boxes", "scores", "labels")):
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


DECODING_IN_FORWARD = ("RetinaNet", "SSD")
"""The scripted detectors (TorchScript's `original_name`) whose box decoding runs inside their `postprocess_detections`,
NMS included: their final-NMS inputs come from that method with the NMS made to suppress nothing
(`_script_nms_inputs`)."""
NO_SUPPRESSION = 2.0
"""An NMS IoU threshold no pair of boxes exceeds (an IoU is at most 1; NaN compares false): the NMS keeps every
candidate."""
NO_CAP = 2**31 - 1
"""A detections cap no image reaches: the post-processing keeps every candidate its NMS kept."""


def _decodes_in_forward(model: Any) -> bool:
    return getattr(model, "original_name", None) in DECODING_IN_FORWARD


def _script_nms_inputs(model: Any, image: torch.Tensor, detections: dict[str, torch.Tensor] | None) -> Detections:
    """RetinaNet's or SSDlite's final-NMS inputs of one image as the scripted file makes them (hunt 22a): its own
    transform, backbone, head and anchor generator called as its forward calls them, then its own compiled
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
    if model.original_name == "RetinaNet":  # its forward splits the head's outputs and anchors per level
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
    """One image through the scripted detector's pieces as GeneralizedRCNN, RetinaNet and SSD's forward call them:
    (each dense module's outputs named `module#call` as eager's hooks name them, the RPN's proposals or None, the
    post-processed detections or None). The anchors come from the file's own anchor generator. RetinaNet and SSD's
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
        proposals = found[0]
    else:
        head = model.head
        for name in modules:
            if name.endswith(".1") and ".module_list." in name:  # SSD: module_list.<level>.1 is the level's last conv
                branch, _, level = name[:-2].rpartition(".")
                tensors[f"{name}#0"] = _attribute(model, f"{branch}.{level}")(levels[int(level)])
            elif name == "head.classification_head.cls_logits":
                tensors.update({f"{name}#{i}": head.classification_head.cls_logits(head.classification_head.conv(f))
                                for i, f in enumerate(levels)})
            elif name == "head.regression_head.bbox_reg":
                tensors.update({f"{name}#{i}": head.regression_head.bbox_reg(head.regression_head.conv(f))
                                for i, f in enumerate(levels)})
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


def _run_onnx(path: Path, inputs: Sequence[torch.Tensor], dense: list[str], device: str = GUARD_DEVICE) -> Run:
    """The file as written for detections; a copy with the dense tensors as extra outputs for those."""
    import onnx

    model = onnx.load(str(path))
    found = onnx_dense_outputs(model, list(dict.fromkeys(name.partition("@")[0] for name in dense)))
    proposals = onnx_proposals(model) if found else None
    if proposals is not None:
        found[PROPOSALS] = proposals
    candidates = onnx_nms_inputs(model)  # None: the judgement then misses them (a failure) where they are asked
    wanted = list(dict.fromkeys([*found.values(), *(candidates or ())]))
    result = Run([])
    session = _session(model.SerializeToString(), device)
    extended = _with_outputs(model, wanted, {candidates[2]: onnx.TensorProto.INT64} if candidates else {})
    dense_session = _session(extended.SerializeToString(), device) if wanted else None
    per_image = []
    for image in inputs:
        out = _ort_run(session, image, list(OUTPUT_NAMES))
        result.detections.append(Detections.of(out))
        if dense_session is not None:
            values = _ort_run(dense_session, image, wanted)
            if candidates is not None:
                result.candidates.append(Detections.of(dict(zip(("boxes", "scores", "labels"),
                                                                (values[n] for n in candidates), strict=True))))
            tensors = {name: values[onnx_name] for name, onnx_name in found.items()}
            if PROPOSALS in tensors:
                result.proposals.append(tensors.pop(PROPOSALS).astype("float64").reshape(-1, 4))
            per_image.append(tensors)
    result.per_image = per_image
    result.dense = concat_dense(per_image, inputs) if per_image else {}
    return result


def _session(model_bytes: bytes, device: str = GUARD_DEVICE) -> Any:
    """A session on `device`; CUDA asked for and not given (ONNX Runtime falls back to the CPU with a log line
    only) is the machine's problem, a SetupError."""
    import onnxruntime as ort

    wanted = PROVIDERS[device]
    if wanted not in ort.get_available_providers():
        raise SetupError(f"{wanted} is not available to ONNX Runtime here (providers: "
                         f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu on a machine with "
                         "CUDA, or run on cpu")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        # CUDA at float32 (no TF32): the floors it is judged on are float32's
        providers: list = [wanted] if device == "cpu" else [(wanted, {"use_tf32": 0}), "CPUExecutionProvider"]
        session = ort.InferenceSession(model_bytes, options, providers=providers)
    except Exception as exc:  # ORT raises its own types for a graph it cannot load
        raise ExportError(f"ONNX Runtime cannot load the detector ({_first_line(exc)})") from None
    if session.get_providers()[0] != wanted:
        raise SetupError(f"ONNX Runtime was asked for {wanted} but runs on {session.get_providers()[0]}; check the "
                         "CUDA and cuDNN libraries that onnxruntime-gpu needs")
    return session


def _ort_run(session: Any, image: torch.Tensor, names: list[str]) -> dict[str, np.ndarray]:
    feed = {session.get_inputs()[0].name: image.numpy()}
    try:
        return dict(zip(names, session.run(names, feed), strict=True))
    except Exception as exc:  # ORT raises its own types at run time
        raise ExportError(runtime_failure(str(exc), tuple(image.shape))) from None


def runtime_failure(message: str, shape: tuple[int, ...]) -> str:
    """One line for ONNX Runtime failing on an image: a Reshape failure is named as the known upstream
    issue, with the node and shapes it failed on; anything else is quoted."""
    text = " ".join(message.split())
    where = f"ONNX Runtime fails on this detector's {'x'.join(map(str, shape))} image"
    found = RESHAPE_FAILURE.search(text)
    if found is None:
        return f"{where} ({text[:200]})"
    given, wanted = found["given"].replace(" ", ""), found["wanted"].replace(" ", "")
    empty = " (no proposal reached the box head)" if given.startswith("{0,") else ""
    return (f"{where}: the known upstream failure {RESHAPE_BLOCKER}: Reshape {found['node']} cannot reshape "
            f"{given} to {wanted}{empty}; the legacy ONNX file cannot run on this image")


_RUNNERS = {"torchscript": _run_torchscript, "onnx": _run_onnx, "onnx-dynamo": _run_onnx}


def one_image_runner(fmt: str, path: Path, device: str = GUARD_DEVICE) -> Callable[[torch.Tensor], Any]:
    """The file loaded once on `device`, as a function of one image giving its detections (what a deployed
    detector does per call: preflight times it)."""
    if fmt == "torchscript":
        import warnings

        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns that TorchScript is deprecated on every load
            model = load_scripted(path, device)

        def run_scripted(image: torch.Tensor) -> Any:
            with torch.inference_mode():
                return {k: v.cpu() for k, v in model([image.to(device)])[1][0].items()}
        return run_scripted
    session = _session(Path(path).read_bytes(), device)
    return lambda image: _ort_run(session, image, list(OUTPUT_NAMES))


def onnx_scopes(module: str, call: int) -> list[str]:
    """The legacy exporter's scope of a module's `call`-th call: `rpn.head.conv.0.0` is
    `/rpn/head/conv/conv.0/conv.0.0`, a later call gets `_<call>` on its last part, and a ModuleList
    (never called itself) has no part of its own: `head.x.module_list.0.1` is `/head/x/module_list.0/...`.
    Both readings of a container followed by an index are returned."""
    parts, scope, chain = module.split("."), [], ""
    for part in parts:
        chain = f"{chain}.{part}" if part.isdigit() and chain else part
        scope.append(chain)
    if call:
        scope[-1] += f"_{call}"
    called = "/" + "/".join(scope) + "/"
    listed = [s for i, s in enumerate(scope) if not (i + 1 < len(parts) and parts[i + 1].isdigit()
                                                       and not parts[i].isdigit())]
    return list(dict.fromkeys([called, "/" + "/".join(listed) + "/"]))


def onnx_dense_outputs(model: Any, dense: list[str]) -> dict[str, str]:
    """Each dense tensor (`module#call`) -> the name of the ONNX value the module's Conv/Gemm produced;
    a tensor not found exactly once is left out (and then fails as missing)."""
    from exporter.families.detectors import ANCHOR_MODULES

    outputs = {}
    for name in dense:
        module, _, call = name.partition("#")
        if module in ANCHOR_MODULES.values():
            found = onnx_scope_outputs(model, onnx_scopes(module, int(call)))
            if len(found) == 1:
                outputs[name] = found.pop()
            continue
        hits = {n.output[0] for scope in onnx_scopes(module, int(call)) for n in model.graph.node
                if n.op_type in ("Conv", "Gemm", "MatMul") and n.output and n.output[0].startswith(scope)
                and re.fullmatch(r"[A-Za-z]+_output_0", n.output[0][len(scope):])}
        if len(hits) == 1:
            outputs[name] = hits.pop()
    return outputs


def onnx_scope_outputs(model: Any, scopes: list[str]) -> set[str]:
    """The float values that nodes of a module's scope (an anchor generator: no Conv of its own) hand to nodes outside
    it, the graph's outputs included: what the module returned. The legacy exporter lets later code reuse the scope's
    shape arithmetic (RetinaNet's anchors per level: integer Gathers of feature-map sizes), so only float values
    count, typed by ONNX's shape inference."""
    inside = {out for node in model.graph.node if any(node.name.startswith(s) for s in scopes) for out in node.output}
    used = {name for node in model.graph.node if not any(node.name.startswith(s) for s in scopes)
            for name in node.input} | {o.name for o in model.graph.output}
    found = inside & used
    if not found:
        return found
    types = _value_types(model)
    return {name for name in found if types.get(name) == 1}  # onnx.TensorProto.FLOAT


def _value_types(model: Any) -> dict[str, int]:
    """Each value's element type, by ONNX's shape inference on the graph without its weights (their types kept)."""
    import onnx

    graph = onnx.GraphProto()
    graph.CopyFrom(model.graph)
    del graph.initializer[:]
    graph.input.extend(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
                       for init in model.graph.initializer)
    try:
        inferred = onnx.shape_inference.infer_shapes(onnx.helper.make_model(graph, opset_imports=model.opset_import))
    except Exception:  # onnx raises its own types; nothing typed is then found, which fails as missing
        return {}
    return {value.name: value.type.tensor_type.elem_type for value in inferred.graph.value_info}


def onnx_proposals(model: Any) -> str | None:
    """The value carrying the RPN's proposals into the box head: the one tensor a node of the legacy
    exporter's `/roi_heads/box_roi_pool/` scope takes from a node of the `/rpn/` scope (None if not one)."""
    made_by = {out: node.name for node in model.graph.node for out in node.output}
    found = {name for node in model.graph.node if node.name.startswith(PROPOSAL_CONSUMER) for name in node.input
             if made_by.get(name, "").startswith(PROPOSAL_PRODUCER)}
    return found.pop() if len(found) == 1 else None


def _with_outputs(model: Any, names: list[str], types: dict[str, int] | None = None) -> Any:
    """A copy of `model` with `names` as graph outputs too, float unless `types` says otherwise."""
    import copy

    import onnx

    extended = copy.deepcopy(model)
    present = {o.name for o in extended.graph.output}
    for name in names:
        if name not in present:
            extended.graph.output.append(onnx.helper.make_tensor_value_info(
                name, (types or {}).get(name, onnx.TensorProto.FLOAT), None))
    return extended
