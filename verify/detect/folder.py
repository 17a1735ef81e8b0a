"""A whole detector's export folder that proves itself, as a backbone's does (verify/folder/): written by the
detector export (goldens, then the manifest, then the signature, inside the staging folder), and checked by
`verify artifact` and `verify preflight`.

The check: integrity first (the manifest's schema, the signature, every entry listed, each file's size, sha256
and format, the goldens' keys, dtypes and shapes, the floors re-derived from the goldens and equal to the
manifest's, the tolerance, the export's own verdict); then, only for a folder that passed all of that, each file
that may be loaded (ONNX always; TorchScript only when the signature verified or the caller trusts the folder)
is run on the golden images and judged by the export's own functions (verify/detect/verdict.py judge_runs) against
the goldens: dense pre-NMS tensors on floors re-derived from the float32 and float64 goldens, detections matched
by IoU with the same borderline rules. No recorded floor or verdict decides anything."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.detector_manifest import (
    DetectorManifest,
    build_detector_manifest,
    load_detector_manifest,
    write_detector_manifest,
)
from exporter.errors import ArtifactError, SetupError, UsageError
from exporter.families.detectors import (
    ANCHOR_MODULES,
    DETECTORS,
    KEYPOINT_KINDS,
    MASK_KINDS,
    RCNN_KINDS,
    dense_modules,
    per_proposal_modules,
    resized_size,
)
from exporter.formats import get_format
from exporter.manifest import EXTERNAL_DATA_FORMAT, GOLDENS_NAME, read_goldens
from verify.detect.export import FILE_NAMES, ONNX_OPSET
from verify.detect.goldens import (
    GROUPS,
    check_goldens,
    golden_arrays,
    golden_images,
    golden_run,
    golden_samples,
)
from verify.detect.match import OPTIONAL_FLOORS, Rules
from verify.detect.nms_inputs import NMS_INPUTS, SMALL_BOX, BoxCoding, rcnn_candidates
from verify.detect.proposals import RpnRules, kept_order, moved_boxes
from verify.detect.rebuild import rebuild_detector
from verify.detect.report import DetectorReport, DetectorRow, Judging, Run
from verify.detect.verdict import (
    EAGER,
    ORACLE,
    RUNTIMES,
    below_threshold_mismatch,
    derive_floors,
    judge_runs,
    size_scales,
)
from verify.folder.checks import Check, CheckReport
from verify.folder.integrity import (
    FLOOR_RTOL,
    CheckedFolder,
    check_bytes,
    check_folder,
    failure_reason,
)
from verify.folder.rebuild import rebuilt_reference
from verify.judge.compare import AUTO_FACTOR, Tolerance

if TYPE_CHECKING:
    import torch

    from exporter.families.detectors import BuiltDetector

FORMAT_OF_FILE = {name: fmt for fmt, name in FILE_NAMES.items()}
GOLDENS_RUNTIME = "goldens"
"""The runtime named on a check that judges the recorded eager float32 goldens against the float64 ones."""
EXPORTERS = {"torchscript": "torch.jit.script", "onnx": f"torch.onnx.export(dynamo=False, opset={ONNX_OPSET})"}


# Writing ---------------------------------------------------------------------------------------

def write_detector_folder(folder: Path, report: DetectorReport, identity: dict[str, Any] | None = None,
                          sign_key: Path | None = None) -> bool:
    """Goldens first, manifest next, signature last, into the staging `folder`; False (nothing written) when
    the export has nothing a folder could prove: no file, or no floor (eager float32 and float64 disagree)."""
    import numpy as np

    eager, oracle = report.references.get(EAGER), report.references.get(ORACLE)
    if not report.files or eager is None or oracle is None or report.floor is None or report.judging is None:
        return False
    with open(folder / GOLDENS_NAME, "wb") as handle:
        np.savez(handle, **golden_arrays(report.images, eager, oracle))
    manifest = build_detector_manifest(folder, _file_fields(report), _manifest_fields(report, eager, identity),
                                       signed=sign_key is not None)
    write_detector_manifest(folder, manifest)
    if sign_key is not None:
        from exporter.signing import sign_folder

        sign_folder(folder, sign_key)
    return True


def _file_fields(report: DetectorReport) -> dict[str, dict[str, Any]]:
    from exporter.formats.onnx import file_opset

    fields = {}
    for fmt, path in report.files.items():
        extra: dict[str, Any] = {"format": fmt, "exporter": EXPORTERS[fmt]}
        if fmt == "onnx":
            extra["opset"] = file_opset(Path(path))
        fields[Path(path).name] = extra
    return fields


def _manifest_fields(report: DetectorReport, eager: Run, identity: dict[str, Any] | None) -> dict[str, Any]:
    from verify.judge.oracle import channel_floors_sha256
    from verify.report import versions

    assert report.judging is not None and report.floor is not None
    judging = report.judging
    rpn = judging.rpn
    fields = {
        "versions": versions(),
        "detector": {"name": report.name, "norm": report.norm, "weights": report.weights,
                     "weights_sha256": report.weights_sha256,
                     **({} if report.classes is None else {"classes": report.classes})},
        "images": [{"shape": list(image.shape)} for image in report.images],
        "dynamic": report.dynamic,
        "postprocess": {"score_thresh": judging.rules.score_thresh, "nms_thresh": judging.rules.nms_thresh,
                        "detections_per_img": judging.rules.detections_per_img,
                        "rpn": None if rpn is None else {"nms_thresh": rpn.nms_thresh,
                                                         "post_nms_top_n": rpn.post_nms_top_n,
                                                         "score_thresh": rpn.score_thresh},
                        "per_proposal": list(judging.per_proposal)},
        "tolerance": {"mode": "auto", "factor": report.factor},
        "dense_outputs": list(dict.fromkeys(name for tensors in eager.per_image for name in tensors)),
        "noise_floor": {name: floor.value for name, floor in report.floors.items()},
        "channel_floors_sha256": channel_floors_sha256(report.floors),
        "detection_floor": {"boxes": report.floor.boxes, "scores": report.floor.scores,
                            **{name: getattr(report.floor, name) for name in OPTIONAL_FLOORS
                               if getattr(report.floor, name) is not None}},
        "verdicts": [{"level": row.level, "a": row.a, "b": row.b, "passed": row.passed} for row in report.rows()],
        "passed": report.passed,
    }
    if identity is not None:
        fields["identity"] = identity
    return fields


# Checking --------------------------------------------------------------------------------------

@dataclass
class DetectorFolder(CheckedFolder):
    manifest: DetectorManifest
    images: list[torch.Tensor] = field(default_factory=list)
    references: dict[str, Run] = field(default_factory=dict)
    """The goldens as the runs judged against: EAGER (float32) and ORACLE (float64)."""
    tolerance: Tolerance | None = None
    rebuilt: BuiltDetector | None = None
    """The detector the manifest names, rebuilt here (`--rebuild`, verify/detect/rebuild.py): the layer verdict's
    float64 reference (`detector_folder_layers`); None when not rebuilt."""

    @property
    def judging(self) -> Judging:
        post = self.manifest.postprocess
        rpn = None if post.rpn is None else RpnRules(post.rpn.nms_thresh, post.rpn.post_nms_top_n,
                                                     post.rpn.score_thresh)
        return Judging(Rules(post.score_thresh, post.nms_thresh, post.detections_per_img), rpn,
                       tuple(post.per_proposal), BoxCoding.rcnn_default() if rpn is not None else None,
                       self.masks, self.keypoints)

    @property
    def masks(self) -> bool:
        """Whether the detector the manifest names is a Mask R-CNN (its registry kind, never a recorded flag): its
        goldens must hold each detection's mask logits, and every run is judged on its masks."""
        name = self.manifest.detector.name
        return name in DETECTORS.names() and DETECTORS.get(name).kind in MASK_KINDS

    @property
    def keypoints(self) -> bool:
        """Whether the detector the manifest names is a Keypoint R-CNN (its registry kind, never a recorded flag): its
        goldens must hold each detection's keypoints and heatmap logits, and every run is judged on its keypoints."""
        name = self.manifest.detector.name
        return name in DETECTORS.names() and DETECTORS.get(name).kind in KEYPOINT_KINDS


def detector_integrity(path: Path, report: CheckReport, verify_key: Path | None = None,
                       trust_unsigned_code: bool = False) -> DetectorFolder | None:
    """Every folder-level check (verify/folder/integrity.py check_folder with the detector's own file and
    content checks), added to `report`; the folder (with `sound` set) unless its manifest could not be read."""
    content = [(f"{GOLDENS_NAME}: content", _goldens), ("noise floors", _floors),
               ("judged tensors", _judged), ("postprocess", _postprocess),
               ("tolerance", _tolerance), ("export verdict", _export_verdict)]
    return check_folder(path, report, verify_key, trust_unsigned_code, load_detector_manifest,
                        lambda m: f"schema {m.schema_version}, detector {m.detector.name}:{m.detector.norm}",
                        DetectorFolder, _file, content)


def _file(art: DetectorFolder, name: str, entry: Any) -> str:
    """Size and sha256; a model file is of its format by name and content, and what it says of itself holds."""
    size = check_bytes(art.folder, name, entry)
    if entry.format == EXTERNAL_DATA_FORMAT:  # else any file could sit in the folder, listed, never checked or run
        raise ArtifactError(f"{name} is listed as external data of {entry.of}, but a detector's ONNX file holds "
                            "its weights: a detector folder lists model files and goldens only, each checked")
    if name not in art.manifest.model_files():
        return f"{size} bytes, sha256 ok"
    if FORMAT_OF_FILE.get(name) != entry.format:
        raise ArtifactError(f"{name} is listed as {entry.format}; a detector folder names its {entry.format} file "
                            f"{FILE_NAMES.get(entry.format, '(none: not a detector format)')}")
    fmt, file = get_format(entry.format), art.folder / name
    if not fmt.claims(file):
        raise ArtifactError(f"{name} is not a {entry.format} file (by its name and content), as the manifest says")
    if entry.format == "onnx":
        from exporter.formats.onnx import check_onnx, file_opset

        check_onnx(file)
        if fmt.companion_files(file):
            raise ArtifactError(f"{name} references external data; a detector folder's ONNX file holds its weights")
        if file_opset(file) != entry.opset:
            raise ArtifactError(f"{name}: the manifest records opset {entry.opset}, the file {file_opset(file)}")
    return f"{size} bytes, sha256 ok, {entry.format}"


def _goldens(art: DetectorFolder) -> str:
    if GOLDENS_NAME not in art.verified:
        raise ArtifactError(f"{GOLDENS_NAME} failed its integrity check; nothing to judge against")
    goldens = read_goldens(art.verified[GOLDENS_NAME], GROUPS)
    manifest = art.manifest
    message = check_goldens(goldens, [image.shape for image in manifest.images], manifest.dense_outputs,
                            bool(manifest.postprocess.per_proposal), manifest.postprocess.per_proposal,
                            manifest.detector.classes, art.masks, art.keypoints)
    art.images = golden_images(goldens)
    art.references = {EAGER: golden_run(goldens["float32"], art.images),
                      ORACLE: golden_run(goldens["float64"], art.images)}
    art.references[EAGER].samples = golden_samples(goldens, len(art.images))
    art.references[EAGER].reversed_sums = golden_samples(goldens, len(art.images), "reversed")
    return message


def _floors(art: DetectorFolder) -> str:
    """The floors the verdicts use, re-derived from the goldens; the manifest's must be the same numbers."""
    from verify.judge.oracle import channel_floors_sha256

    if not art.references:
        raise ArtifactError(f"not derived: {GOLDENS_NAME} failed its checks")
    floors, detection = derive_floors(art.judging, art.images, art.references[EAGER], art.references[ORACLE],
                                      art.manifest.tolerance.factor,
                                      size_scales(art.manifest.detector.name,
                                                  [tuple(image.shape[-2:]) for image in art.images]))
    recorded = art.manifest.noise_floor
    if set(recorded) != set(floors):
        odd = sorted(set(recorded) ^ set(floors))
        before = " (a folder written before its final-NMS inputs were judged: export it again)" if all(
            name.startswith(f"{NMS_INPUTS}.") and name not in recorded for name in odd) else ""
        raise ArtifactError(f"noise_floor lists {len(recorded)} tensors, the goldens give floors for {len(floors)} "
                            f"(e.g. {odd[0]}){before}")
    for name, floor in floors.items():
        if not math.isclose(recorded[name], floor.value, rel_tol=FLOOR_RTOL, abs_tol=0.0):
            raise ArtifactError(f"noise_floor[{name!r}] is {recorded[name]:.4g} in the manifest, but its goldens give "
                                f"{floor.value:.4g} (float32 vs float64); a floor is re-derived, never taken on trust")
    if art.manifest.channel_floors_sha256 != channel_floors_sha256(floors):
        raise ArtifactError("the per-channel floors re-derived from the goldens are not the ones the export recorded "
                            "(channel_floors_sha256); a floor is re-derived, never taken on trust")
    stored = art.manifest.detection_floor
    if detection is None:
        raise ArtifactError("the float32 and float64 golden detections share no detection: no floor to judge on")
    for kind, names in (("masks", ("masks", "mask_head")),
                        ("keypoints", ("keypoints", "keypoint_scores", "keypoint_head"))):
        if any((getattr(stored, name) is None) != (getattr(detection, name) is None) for name in names):
            held = getattr(stored, names[0]) is not None
            raise ArtifactError(f"detection_floor {'holds' if held else 'lacks'} the floors of {kind}, but its goldens "
                                f"{'give none' if getattr(detection, names[0]) is None else 'give them'}: a floor is "
                                "re-derived, never taken on trust")
    for what in ("boxes", "scores", *OPTIONAL_FLOORS):
        value = getattr(detection, what)
        if value is None:
            continue
        if not math.isclose(getattr(stored, what), value, rel_tol=FLOOR_RTOL, abs_tol=0.0):
            raise ArtifactError(f"detection_floor.{what} is {getattr(stored, what):.4g} in the manifest, but its "
                                f"goldens give {value:.4g}; a floor is re-derived, never taken on trust")
    masks = "" if detection.masks is None else f", masks {detection.masks:.3g}, mask head {detection.mask_head:.3g}"
    if detection.keypoints is not None:
        masks += (f", keypoints {detection.keypoints:.3g}, keypoint scores {detection.keypoint_scores:.3g}, keypoint "
                  f"head {detection.keypoint_head:.3g}")
    return (f"{len(floors)} dense floors and the detection floor (boxes {detection.boxes:.3g}, scores "
            f"{detection.scores:.3g}{masks}) re-derived from the goldens; the manifest records the same")


def _judged(art: DetectorFolder) -> str:
    """What the folder judges is what its detector computes: every dense head module the registered detector has
    (SSDlite: both heads, at every level it has), its per-proposal tensors, and an RPN exactly for Faster R-CNN;
    a folder cannot leave a tensor out of its judgement."""
    detector = DETECTORS.get(art.manifest.detector.name)
    post = art.manifest.postprocess
    rcnn = detector.kind in RCNN_KINDS
    if post.per_proposal != per_proposal_modules(detector.kind) or (post.rpn is not None) != rcnn:
        raise ArtifactError(f"postprocess records per-proposal tensors {post.per_proposal} and "
                            f"{'no RPN' if post.rpn is None else 'an RPN'}, not what {detector.name} has")
    modules = {name.partition("#")[0] for name in art.manifest.dense_outputs}
    if detector.kind == "ssd":
        heads = {module.rpartition(".module_list.")[0] for module in modules}
        missing = sorted({"head.classification_head", "head.regression_head"} - heads
                         | {ANCHOR_MODULES[detector.kind]} - modules)
    else:
        missing = sorted(set(dense_modules(None, detector.kind)) - modules)
    if missing:
        raise ArtifactError(f"dense_outputs leaves out {missing[0]}, a head of {detector.name}: every dense tensor "
                            "of the detector is judged (a folder written before its anchors were judged: export it "
                            "again)")
    return f"{len(art.manifest.dense_outputs)} dense tensors per image, every head of {detector.name}"


def _postprocess(art: DetectorFolder) -> str:
    """The recorded post-processing constants are the model's: replayed on the float64 run's recorded NMS inputs,
    they give exactly its detections (and, for Faster R-CNN, its RPN proposals). They decide which detection in
    one run only a rounding band explains, so they are re-checked, never taken on trust."""
    import numpy as np

    if not art.references:
        raise ArtifactError(f"not checked: {GOLDENS_NAME} failed its checks")
    rules, rpn, oracle = art.judging.rules, art.judging.rpn, art.references[ORACLE]
    for image, (found, kept) in enumerate(zip(oracle.candidates, oracle.detections, strict=True)):
        if len(found) and float(found.scores.min()) <= rules.score_thresh:
            raise ArtifactError(f"postprocess.score_thresh {rules.score_thresh:g} is not below every score the float64 "
                                f"run passed to its final NMS (image {image}: {found.scores.min():.6g})")
        keep = kept_order(found, rules.nms_thresh)[:rules.detections_per_img]
        if not (np.array_equal(found.scores[keep], kept.scores) and np.array_equal(found.labels[keep], kept.labels)):
            raise ArtifactError(f"postprocess.nms_thresh {rules.nms_thresh:g} with detections_per_img "
                                f"{rules.detections_per_img} does not give the float64 golden detections of image "
                                f"{image} from their recorded NMS inputs: not this model's post-processing")
        size = tuple(art.images[image].shape[-2:])
        moved = moved_boxes(found, kept, rules, size, resized_size(DETECTORS.get(art.manifest.detector.name), *size))
        if moved:  # scores and labels held, and a moved box set the float64 IoU of an `NMS` borderline
            raise ArtifactError(f"the float64 golden NMS inputs of image {image}, replayed and scaled back to the "
                                f"image, give {moved} box(es) other than its golden detections: a recorded box was "
                                "moved")
    for image, (below, found) in enumerate(zip(oracle.below_threshold, oracle.candidates, strict=True)):
        wrong = below_threshold_mismatch(below, found, rules.score_thresh)
        if wrong:  # they decide which `score threshold` borderline the model had
            raise ArtifactError(f"the float64 golden NMS inputs of image {image} recorded under a lower score "
                                f"threshold {wrong}: not this model's recording")
    for image, (found, proposals) in enumerate(zip(oracle.rpn_candidates if rpn else [], oracle.proposals,
                                                   strict=False)):
        if len(found) and float(found.scores.min()) < rpn.score_thresh:
            raise ArtifactError(f"postprocess.rpn.score_thresh {rpn.score_thresh:g} is above a score the float64 RPN "
                                f"passed to its NMS (image {image}: {found.scores.min():.6g})")
        keep = kept_order(found, rpn.nms_thresh)[:rpn.post_nms_top_n]
        if not np.array_equal(found.boxes[keep], proposals):
            raise ArtifactError(f"postprocess.rpn (nms_thresh {rpn.nms_thresh:g}, post_nms_top_n "
                                f"{rpn.post_nms_top_n}) does not give the float64 golden proposals of image {image} "
                                "from their recorded NMS inputs: not this model's RPN")
    coding = art.judging.box_coding
    sizes = [resized_size(DETECTORS.get(art.manifest.detector.name), *image.shape[-2:]) for image in art.images]
    for image, (found, proposals) in enumerate(zip(oracle.candidates if coding else [], oracle.proposals,
                                                   strict=False)):
        decoded = rcnn_candidates(oracle.per_image[image], proposals, coding, sizes[image], rules.score_thresh,
                                  SMALL_BOX)
        slack = 64 * np.finfo(np.float64).eps * max(1.0, float(np.abs(decoded.boxes).max(initial=0.0)))
        if len(decoded) != len(found) or not np.array_equal(decoded.labels, found.labels) or not (
                np.allclose(decoded.boxes, found.boxes, rtol=0, atol=slack)
                and np.allclose(decoded.scores, found.scores, rtol=0, atol=slack)):
            raise ArtifactError(f"the float64 golden NMS inputs of image {image} are not its golden proposals' "
                                "box-head rows decoded by torchvision's Faster R-CNN box coder (weights "
                                f"{coding.weights}, clamp {coding.clip:.6g}): a recorded candidate was moved, or the "
                                "model decodes otherwise")
    return ("the recorded thresholds and caps give the float64 goldens' detections"
            + (" and proposals" if rpn else "") + " from their recorded NMS inputs, and those under a lower score "
            "threshold hold exactly them above it" + (", and the box coder's decoding of the float64 proposals gives "
                                                      "those inputs" if coding else ""))


def _tolerance(art: DetectorFolder) -> str:
    factor = art.manifest.tolerance.factor
    if factor > AUTO_FACTOR:
        raise ArtifactError(f"tolerance.factor {factor:g} is above the default {AUTO_FACTOR:g}: a manifest may "
                            "tighten a verdict, never loosen it (re-export without --factor)")
    art.tolerance = Tolerance(factor=factor)
    return art.tolerance.describe() + (" (the default)" if factor == AUTO_FACTOR else
                                       f" (tighter than the default {AUTO_FACTOR:g})")


def _export_verdict(art: DetectorFolder) -> str:
    verdicts = art.manifest.verdicts
    if not art.manifest.passed:
        failed = [f"{v.level} {v.a} vs {v.b}".strip() for v in verdicts if not v.passed]
        raise ArtifactError(f"the export itself recorded {len(failed)} of {len(verdicts)} checks failing "
                            f"({', '.join(failed[:3])}{', …' if len(failed) > 3 else ''}); a folder whose export "
                            "disagreed never passes")
    return f"the export's {len(verdicts)} checks passed"


def golden_judgement(art: DetectorFolder, report: CheckReport, formats: list[str] | None = None,
                     device: str = "cpu") -> DetectorReport | None:
    """Each model file (of `formats`, default all) that may be loaded, run on the golden images on `device`
    and judged against the goldens by the export's own functions; one check per judged pair and level, per
    refusal and per problem. None when nothing was run, or a file's run failed (one failed check per file)."""
    files: dict[str, Path] = {}
    for name, entry in art.manifest.model_files().items():
        if formats is not None and entry.format not in formats:
            continue
        runtime = RUNTIMES[entry.format]
        if not art.sound or name not in art.verified:
            why = art.unsound_because if not art.sound else "it failed its integrity check"
            report.add(Check(art.label, runtime, f"{name}: load", False, f"not loaded: {why}"))
        elif not art.may_load(name):
            report.add(Check(art.label, runtime, f"{name}: load", False, art.refusal(name)))
        else:
            files[entry.format] = art.verified[name]
    if not files:
        return None
    manifest = art.manifest
    judged = DetectorReport(manifest.detector.name, manifest.detector.norm, manifest.detector.weights,
                            (len(art.images), *art.images[0].shape), tuple(files), art.tolerance.factor,
                            files={k: str(v) for k, v in files.items()}, images=[i.numpy() for i in art.images],
                            dynamic=manifest.dynamic, classes=manifest.detector.classes)
    try:
        judge_runs(judged, art.judging, art.images, art.references[EAGER], art.references[ORACLE], files,
                   art.tolerance, device=device)
    except SetupError:
        raise  # the machine cannot do what was asked: exit 2
    except Exception as exc:  # whatever a loaded file outputs fails its checks, never the run or other folders
        for fmt in files:
            report.add(Check(art.label, RUNTIMES[fmt], f"{FILE_NAMES[fmt]}: load and run", False,
                             f"{failure_reason(exc)} (running {', '.join(FILE_NAMES[f] for f in files)})"))
        return None
    for row in judged.rows():
        report.add(_row_check(art.label, row))
    return judged


def _row_check(label: str, row: DetectorRow) -> Check:
    """A judged report row as a check: the runtime (the goldens for eager vs its oracle), the level and pair."""
    pair = f"{row.a} vs {row.b}"
    text = row.text.removeprefix(f"{pair}: ")
    if row.named_text != row.text:  # a failed before-NMS pair: the tensor it failed on leads
        text = f"{row.worst}: {text}"
    if row.level == "export":  # a file that would not load or run
        return Check(label, RUNTIMES[row.a], f"{FILE_NAMES[row.a]}: load and run", False, text)
    if row.level == "check":
        runtime = next((r for r in RUNTIMES.values() if text.startswith(f"{r}'s own pieces before NMS: ")), None)
        if runtime is not None:  # a file's own pieces (check.py `_script_piece_problems`): that file's check
            return Check(label, runtime, "before NMS: its own pieces", False, text)
        return Check(label, "check", "trust guards", False, text)
    runtime = GOLDENS_RUNTIME if row.a == EAGER else row.a
    return Check(label, runtime, f"{row.level}: {pair}", row.passed, text)


def detector_folder_layers(art: DetectorFolder, report: CheckReport, asked: bool = True,
                           names: list[str] | None = None) -> None:
    """The layer verdict of `verify export -b <detector>` (verify/detect/check.py `detector_layer_checks`) on each
    file of a rebuilt folder that may be loaded: every layer re-run alone on the rebuilt detector's float64 values for
    the first image this run drew (never one the folder chose), each judged on its own float32 floor; one check
    `<file>: layers` per file, as a backbone folder's (verify/folder/layers.py). Asked for (`--layers`), a file it
    cannot judge fails; by default (`asked` False, best effort as the export's) it is a skipped check, in an unsigned
    folder a failed one (verify/folder/layers.py `folder_best_effort`, review 23); in an unsigned folder every module
    of the rebuilt detector holding weights must be re-run, or the file fails (`every_module_rerun`, sweep 28c).
    `names`: only these files (a preflight's target)."""
    from verify.detect.check import detector_layer_checks
    from verify.folder.layers import add_layer_checks, every_module_rerun, folder_best_effort, layer_files

    names = layer_files(art, report, list(art.manifest.model_files()) if names is None else names, asked)
    if not names:
        return
    assert art.rebuilt is not None
    files = {art.manifest.files[name].format: art.verified[name] for name in names}
    drawn = art.images[len(art.manifest.images)]  # verify/detect/rebuild.py: the goldens', then this run's
    checks, notes = detector_layer_checks(art.rebuilt, files, drawn, AUTO_FACTOR)
    checks = every_module_rerun(art, checks)  # unsigned: a module unscoped by an edit fails (sweep 28c)
    if not asked:  # a signed folder's file it cannot judge is a note; an unsigned folder's fails (review 23)
        checks, unjudged = folder_best_effort(art, checks)
        notes = [*notes, *unjudged]
    add_layer_checks(art.label, report, checks, notes, asked, LAYERS_NOT_REACHED)


LAYERS_NOT_REACHED = ("no file's layers could be re-run on the rebuilt detector (each note says why), so no layer "
                      "verdict was reached; drop --layers for this folder")


def check_detector_folder(path: Path, report: CheckReport, verify_key: Path | None = None,
                          trust_unsigned_code: bool = False, rebuild: bool = False,
                          weights_file: Path | None = None, layers: bool | None = None) -> None:
    """`verify artifact` on a detector folder: integrity, then (with `rebuild`) the reference re-derived from the
    detector the manifest names (verify/detect/rebuild.py), then every loadable file against the reference, then
    (rebuilt) every layer of each file against the rebuilt detector (`detector_folder_layers`). `layers`: asked for
    (True, `--layers`: a file it cannot judge fails; it needs `rebuild`), not run (False), or None: as `verify export
    -b <detector>` runs it, by default with `rebuild` unless $BACKBONE_VERIFY_LAYERS is 0, best effort (hunt 24b: 2.3 to
    2.6 s on the 320 Faster R-CNN folder, on a check of 6.4 s warm)."""
    from verify.judge.layers import layers_by_default

    if layers and not rebuild:
        raise UsageError("--layers re-runs each file's layers on the float64 values of the detector the folder names, "
                         "which only --rebuild builds: pass --rebuild with it")
    asked = bool(layers)
    run_layers = asked or (layers is None and rebuild and layers_by_default())  # a bad variable: exit 2 before work
    art = detector_integrity(path, report, verify_key, trust_unsigned_code)
    if art is not None and rebuild:
        rebuilt_reference(art, report, lambda: rebuild_detector(art, weights_file))
    if art is not None:
        golden_judgement(art, report)
        if run_layers and (asked or (art.sound and art.rebuilt is not None)):
            detector_folder_layers(art, report, asked)
