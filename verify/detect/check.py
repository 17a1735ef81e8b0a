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
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.errors import UsageError
from exporter.weights import state_dict_sha256
from verify.detect.export import FILE_NAMES, _check_formats, _Clock, export_detector
from verify.detect.report import DetectorReport
from verify.detect.scripted_runs import load_scripted
from verify.detect.verdict import judge_detector
from verify.judge.compare import Tolerance

if TYPE_CHECKING:
    import numpy as np
    import torch

    from exporter.families.detectors import BuiltDetector


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


def check_inputs(name: str, shape: tuple[int, ...], images: Sequence[np.ndarray] | None) -> None:
    """Refuse what detector `name` cannot take (one-line UsageError): `images` (each 3 x H x W) when given, else
    synthetic images of `shape`; the CLI asks before it creates any folder."""
    import numpy as np

    from exporter.families.detectors import DETECTORS, MIN_IMAGE_SIDE, check_image_size

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
    detector = DETECTORS.get(name)
    side = detector.options.get("max_size", detector.image_size)  # its own size (SSD300: 300, not IMAGE_SIZE)
    if len(shape) != 4 or shape[1] != 3 or min(shape) < 1:
        raise UsageError(f"A detector input shape is N x 3 x H x W (RGB images), got {'x'.join(map(str, shape))}; "
                         f"pass --shape 1x3x{side}x{side}")
    if min(shape[2:]) < MIN_IMAGE_SIDE:
        raise UsageError(f"A detector's synthetic images are at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} pixels, got "
                         f"{'x'.join(map(str, shape[2:]))}; pass --shape 1x3x{side}x{side}")
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
