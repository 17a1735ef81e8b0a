"""A whole detector's verdict: eager float32 and float64 and each exported file run, guarded, and judged at both levels:
before NMS (dense tensors on the oracle's floors, Faster R-CNN's rows paired by proposal, every run's final-NMS
inputs paired by candidate) and after NMS (detections matched by IoU on the float32 floor of detections)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.errors import ExportError
from verify.detect.eager_runs import (
    BELOW_THRESHOLD,
    GUARD_DEVICE,
    _guarded,
    concat_dense,
    folded_samples,
    reversed_samples,
    run_eager,
)
from verify.detect.export import _Clock
from verify.detect.match import DetectionFloor, Detections, compare_detections, measure_detection_floor
from verify.detect.nms_inputs import (
    LoneProposals,
    NmsBands,
    derive_nms_bands,
    lone_proposal_boxes,
    lone_proposal_probabilities,
    near_small_box,
    paired_inputs,
    unexplained,
)
from verify.detect.proposals import PROPOSALS, Bands, ProposalCheck, align_rows, derive_bands, explain_unpaired
from verify.detect.report import DetectorReport, Judging, Run
from verify.detect.runners import _RUNNERS
from verify.judge.compare import Tolerance, compare_outputs
from verify.judge.trust import RepeatCheck, likely_cause, repeat_problems

if TYPE_CHECKING:
    import numpy as np
    import torch

    from exporter.families.detectors import BuiltDetector


RUNTIMES = {"torchscript": "torchscript", "onnx": "onnxruntime", "onnx-dynamo": "onnxruntime (dynamo)"}
AFTER_NMS_ONLY = (RUNTIMES["torchscript"],)
"""Runtimes without before-NMS pairs: a scripted module runs no Python hooks, so its dense tensors and final-NMS inputs
come from its own pieces (`_run_torchscript`: Faster R-CNN's from its own box coder, RetinaNet's and SSDlite's from its
own post-processing), judged aside (`_script_piece_problems`), each failure a problem; a matrix cell holds the ONNX
runs' pairs only."""
EAGER, ORACLE = "eager", "eager fp64"


def judge_detector(built: BuiltDetector, inputs: Sequence[torch.Tensor], files: dict[str, Path],
                   tolerance: Tolerance | None = None, say: Callable[[str], None] = lambda _: None,
                   clock: _Clock | None = None) -> DetectorReport:
    """Run eager float32 and float64 and each exported file on `inputs`, and judge both levels."""
    tolerance = tolerance or Tolerance()
    clock = clock or _Clock()
    report = DetectorReport(built.name, built.norm, built.weights, (len(inputs), *inputs[0].shape),
                            tuple(files), tolerance.factor, files={k: str(v) for k, v in files.items()},
                            images=[image.numpy() for image in inputs], classes=built.classes)
    repeats: list[RepeatCheck] = []
    with clock("run eager"):
        say(f"running eager float32 and float64{_on_images(len(inputs))}")
        eager = _guarded(EAGER, lambda images: run_eager(built, images, float64=False), inputs, repeats)
        oracle = _guarded(ORACLE, lambda images: run_eager(built, images, float64=True), inputs, repeats)
        eager.samples = folded_samples(built, inputs)
        eager.reversed_sums = reversed_samples(built, inputs)
    report.problems += repeat_problems(repeats, GUARD_DEVICE, {}, likely_cause(built.model))
    judge_runs(report, Judging.of(built), inputs, eager, oracle, files, tolerance, say, clock)
    if not report.passed:
        report.notes += resize_notes(built, inputs) + flat_notes(inputs)
    return report


FLAT_IMAGE_HINT = ("judge the files on images with content (a photo, or no --input for the seeded ones); a flat image "
                   "can still be run, never passed on its rounding")
"""What to do when a flat image fails: a failure of the file, not of the image, shows on an image with content."""


def flat_notes(inputs: Sequence[torch.Tensor]) -> list[str]:
    """A failed judgement's hint for each flat image (each channel one value: black, grey, a plain colour). Its features
    barely vary from position to position, so the per-channel float32 floor measured on it is too small (stop 49: a
    grey 320x320 image failed a correct fasterrcnn_mobilenet_v3_large_320_fpn ONNX file at 6.0x, every layer of the
    file within 5x its own floor), and where the RPN's objectness saturates the float32 scores tie (a black one: 104
    of the 600 best exactly 1.0, 306 distinct), so each runtime's NMS keeps its own pick (1 proposal in one run only,
    boxes 36558x the floor). The failure stays a failure; [] for images with content."""
    notes = []
    for i, image in enumerate(inputs):
        flat = image.reshape(image.shape[0], -1)
        if image.numel() and bool((flat == flat[:, :1]).all()):
            values = ", ".join(f"{float(v):.4g}" for v in flat[:, 0])
            notes.append(f"image {i} is flat (every pixel ({values})): its features barely vary from position to "
                         f"position, so their float32 floor is measured too small and tied scores leave each runtime "
                         f"its own pick; the failure may be that alone: {FLAT_IMAGE_HINT}")
    return notes


RESIZE_ISSUE = "pytorch/vision#3654"
"""torchvision's eager transform and its exported (scripted, traced) transforms scale an image by a non-integer factor
otherwise (README "A resize that ONNX Runtime computes differently"): measured, a 240x400, 320x400 or 330x330 image
fails every exported file against eager, a 300x300, 640x640 or 256x320 one agrees."""


def resize_notes(built: BuiltDetector, inputs: Sequence[torch.Tensor]) -> list[str]:
    """A failed judgement's hint for each image the detector's own transform scales by a factor neither whole nor one
    over a whole number: the failure may be that resize alone (RESIZE_ISSUE), never a pass; [] for the others (SSDlite
    resizes to its fixed size, every image alike)."""
    from exporter.families.detectors import resize_scale, resized_size

    notes = []
    for i, image in enumerate(inputs):
        height, width = (int(n) for n in image.shape[-2:])
        options = built.detector.options
        scale = resize_scale(built.detector, height, width)
        if scale is None or float(scale).is_integer() or float(1 / scale).is_integer():
            continue
        size = "x".join(map(str, resized_size(built.detector, height, width)))
        notes.append(f"image {i} ({height}x{width}) is scaled by {scale:.4g} to {size} inside {built.name}'s own "
                     f"transform, where its exported files are known to resize otherwise than eager ({RESIZE_ISSUE}): "
                     f"the failure may be that resize alone; to judge the rest, resize the images first (--shape "
                     f"1x3x{options['min_size']}x{options['max_size']}, or --static)")
    return notes


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
                  factor: float, scales: Sequence[tuple[float, float]] | None = None
                  ) -> tuple[dict[str, Any], DetectionFloor | None]:
    """The floors a judgement of these runs uses (dense tensors, then detections), measured as _judge does
    (`scales`: `candidate_scales` of the detector on these images)."""
    scratch = DetectorReport("", "", "", (len(inputs), *inputs[0].shape), (), factor,
                             images=[image.numpy() for image in inputs])
    floors = _Rows(scratch, judging, oracle, Tolerance(factor=factor)).floors(eager)
    return floors, measure_detection_floor(eager.detections, oracle.detections, scales)


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
    report.floor = measure_detection_floor(eager.detections, oracle.detections,
                                           candidate_scales(report.name, report.images))
    if report.floor is None:  # real weights on the seeded images: often nothing above the score threshold
        report.unjudgeable = (f"eager float32 and float64 share no detection on these images: no floor to judge on "
                              f"(the reference has {sum(len(d) for d in oracle.detections)} detections); "
                              f"{INPUT_HINT}")
        report.problems.append(report.unjudgeable)
        return
    if judging.masks and report.floor.masks is None:  # never a Mask R-CNN judged on its boxes alone
        report.problems.append("eager float32 and its float64 oracle give no mask and mask-head output for every "
                               "detection: the masks cannot be judged; export it again")
    if judging.keypoints and report.floor.keypoints is None:  # never a Keypoint R-CNN judged on its boxes alone
        report.problems.append("eager float32 and its float64 oracle give no keypoints and keypoint-head output for "
                               "every detection: the keypoints cannot be judged; export it again")
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
    _reference_off_its_oracle(report, oracle)


INPUT_HINT = "pass --input images the model detects things in"
"""What a judgement with nothing to judge on asks for: the seeded images hold nothing a checkpoint was trained on."""


def _reference_off_its_oracle(report: DetectorReport, oracle: Run) -> None:
    """Eager float32 off its own float64 oracle (proposals, final-NMS inputs or detections) is no export's doing:
    float32 rounding alone changes what the model detects on these images (measured: a fine-tuned Faster R-CNN with
    untrained heads scores every proposal 0.5 and every detection 0.2066, so rounding orders them), and every
    runtime's pair with the oracle fails with it; the summary then leads with that and asks for other images."""
    import numpy as np

    own = f"{EAGER} vs {ORACLE}"
    off = [what for what, rows in (("proposals", report.proposals), ("detections", report.detections))
           if any(row.a == EAGER and row.b == ORACLE and not row.passed for row in rows)]
    off += ["final-NMS inputs"] * any(problem.startswith(f"{own}:") for problem in report.problems)
    if not off:
        return
    scores = np.concatenate([found.scores for found in oracle.detections])
    spread = f"; its {len(scores)} detections score {scores.min():.4g} to {scores.max():.4g}" if len(scores) else ""
    report.unjudgeable = (f"eager float32 does not agree with its own float64 oracle on these images ({', '.join(off)}"
                          f"{spread}): float32 rounding alone changes what the model detects on them, so no export "
                          f"can be judged on them; {INPUT_HINT}")
    report.problems.append(report.unjudgeable)


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
        from verify.judge.measure import measure_floors

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
