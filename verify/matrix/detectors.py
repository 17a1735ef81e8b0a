"""Whole detectors as matrix cells: (detector, norm, shape), each verified by the path `verify export -b <detector>`
takes (verify/detect/check.py `verify_detector`); what such a cell is, which options it applies, its formats and
its cost. Running one is verify/matrix/detector_cell.py, judging one again verify/matrix/detector_judging.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from exporter.errors import UsageError
from exporter.families.detectors import DETECTORS, MIN_IMAGE_SIDE, check_image_size, unknown_model
from verify.detect.export import DEFAULT_FORMATS

if TYPE_CHECKING:
    from verify.pipeline.stages import CellRequest


DETECTOR_VIEW = "detector"
"""A detector cell's third column (where a backbone cell names its view): the cell is the whole detector."""
DEFAULT_DETECTOR_SHAPE = (1, 3, 320, 320)
"""`verify export -b <detector>`'s default input: N x 3 x H x W synthetic images."""
DETECTOR_FORMATS = DEFAULT_FORMATS
"""What a detector cell exports (verify/detect/export.py: the legacy exporters; dynamo is refused upstream)."""
DETECTOR_OPTIONS = ("--shape", "--seed", "--weights", "--factor", "--format")
"""The shared run and export options a matrix with detector cells takes; every other one given is refused.
--shape shapes the backbone cells (a detector cell's is --detector-shape); --format picks among DETECTOR_FORMATS
for the detectors."""
DETECTOR_PARAMS_M = {"fasterrcnn_resnet50_fpn": 41.8, "fasterrcnn_resnet50_fpn_v2": 43.7,
                     "fasterrcnn_mobilenet_v3_large_fpn": 19.4, "fasterrcnn_mobilenet_v3_large_320_fpn": 19.4,
                     "maskrcnn_resnet50_fpn": 44.4, "maskrcnn_resnet50_fpn_v2": 46.4, "keypointrcnn_resnet50_fpn": 59.1,
                     "retinanet_resnet50_fpn": 34.0, "retinanet_resnet50_fpn_v2": 38.2, "fcos_resnet50_fpn": 32.3,
                     "ssdlite320_mobilenet_v3_large": 3.4, "ssd300_vgg16": 35.6}
"""Parameters (millions) of torchvision's detector builders, a detector cell's size in the cost model."""
CELL_KINDS = frozenset({"fasterrcnn", "retinanet", "fcos", "ssd", "maskrcnn", "keypointrcnn"})
"""The detector kinds whose every per-detection output a cell stores (verify/matrix/detector_cell.py: boxes, scores
and labels; Mask R-CNN's masks as each detection's mask-head logits, verify/matrix/mask_numbers.py; Keypoint R-CNN's
keypoints, their scores and heatmap logits, verify/matrix/keypoint_numbers.py). A kind registered with any other output
is refused until its cells store it, never judged on its boxes alone."""
CELL_KINDS_TEXT = "boxes, scores and labels, a Mask R-CNN's masks and a Keypoint R-CNN's keypoints"
MODE_FLAGS = {"decimal": "--decimal", "allclose": "--rtol/--atol"}
"""The options that set a tolerance mode other than auto (a detector is judged on the oracle's floor only)."""
UNKNOWN_DETECTOR_PARAMS_M = 40.0
"""A detector registered later: counted as a ResNet-50 Faster R-CNN."""


@dataclass(frozen=True)
class DetectorSpec:
    """One detector cell: a registered detector, one of its norms, the shape of its synthetic images. Speaks the
    model kinds' protocol (`runs_user_code`, `registered`, `row`, `build`), so the matrix runs it like any cell."""

    name: str
    norm: str
    shape: tuple[int, ...] = DEFAULT_DETECTOR_SHAPE

    runs_user_code = False
    registered = True

    @property
    def backbone(self) -> str:
        return self.name

    @property
    def row(self) -> tuple[str, str, str]:
        return self.name, self.norm, DETECTOR_VIEW

    @property
    def slug(self) -> str:
        return f"{self.name}-{self.norm}-{DETECTOR_VIEW}"

    def __str__(self) -> str:
        return f"{self.name}:{self.norm}:{DETECTOR_VIEW}"

    def validate(self) -> None:
        unstored = unstored_outputs(self.name)
        if unstored:
            raise UsageError(unstored)
        detector = DETECTORS.get(self.name)
        if self.norm not in detector.norms:
            raise UsageError(f"{self.name} has no norm {self.norm!r}; choose one of: {', '.join(detector.norms)}")
        if len(self.shape) != 4 or self.shape[1] != 3 or min(self.shape) < 1:
            raise UsageError(f"A detector cell's shape is N x 3 x H x W (--detector-shape), got "
                             f"{'x'.join(map(str, self.shape))}")
        if min(self.shape[2:]) < MIN_IMAGE_SIDE:
            raise UsageError(f"A detector cell's images are at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} pixels "
                             f"(--detector-shape), got {'x'.join(map(str, self.shape[2:]))}: the detector resizes "
                             f"every image to {detector.image_size} px anyway, so pass "
                             f"1x3x{detector.image_size}x{detector.image_size}")
        check_image_size(self.name, *self.shape[2:])  # one the transform resizes to nothing, before any cell runs

    def build(self, seed: int, shape: tuple[int, ...] | None, weights: str) -> Any:
        from exporter.families.detectors import build_detector

        return build_detector(self.name, self.norm, weights, seed)


def unstored_outputs(name: str) -> str:
    """Why a matrix cell cannot judge detector `name`: its kind returns per-detection outputs a cell does not store
    (CELL_KINDS), so neither the matrix nor its merge could judge them again; '' for a kind whose every output a cell
    stores. One line: the cell is refused, never passed on outputs nobody compared."""
    if name not in DETECTORS.names() or DETECTORS.get(name).kind in CELL_KINDS:
        return ""
    kind = DETECTORS.get(name).kind
    return (f"{name}: a matrix cell does not store the per-detection outputs of a {kind} detector (it stores "
            f"{CELL_KINDS_TEXT}), so neither the matrix nor its merge could judge them again; verify it with "
            f"verify export -b {name} (and its folder with verify artifact)")


def is_detector_cell(request: CellRequest) -> bool:
    """Whether a matrix cell is a whole detector (its row says so: the kinds' protocol, not its class)."""
    return request.spec.row[2] == DETECTOR_VIEW


def split_detectors(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(backbones, detectors) of the names given with -b, each in the order given; a name that is neither is refused
    in one line naming the detectors too (exporter/families/detectors.py `unknown_model`)."""
    from exporter.backbones import BACKBONES

    detectors = set(DETECTORS.names())
    unknown = [n for n in names if n not in detectors and n not in BACKBONES]
    if unknown:
        raise unknown_model(unknown[0], BACKBONES.names())
    return [n for n in names if n not in detectors], [n for n in names if n in detectors]


def detector_cells(detectors: Sequence[str], norms: Sequence[str], explicit: bool) -> list[tuple[str, str]]:
    """(detector, norm) for each detector x each of `norms` it has. A detector with none of them is refused when the
    norms were chosen (`explicit`); by default it takes its own default norm."""
    cells = []
    for name in detectors:
        own = DETECTORS.get(name)
        kept = [n for n in norms if n in own.norms]
        if not kept and explicit:
            raise UsageError(f"{name} has none of the norms {', '.join(norms)}; it has {', '.join(own.norms)}: add "
                             f"-n {own.default_norm}")
        cells += [(name, n) for n in kept or [own.default_norm]]
    return cells


def detector_formats(formats: Sequence[str]) -> tuple[str, ...]:
    """The matrix's formats a detector cell exports; none of them is a usage error."""
    chosen = tuple(f for f in formats if f in DETECTOR_FORMATS)
    if not chosen:
        raise UsageError(f"A whole detector exports {' and '.join(DETECTOR_FORMATS)} only, and --format names "
                         f"{', '.join(formats)}: add --format onnx")
    return chosen


def refuse_options(detector: str, given: Sequence[str], backbones: bool) -> None:
    """`given`: the run and export options set on the command line; the first one a detector cell does not apply
    is a usage error (never ignored silently). Without backbone cells --shape would apply to nothing."""
    allowed = DETECTOR_OPTIONS if backbones else tuple(o for o in DETECTOR_OPTIONS if o != "--shape")
    refused = [flag for flag in given if flag not in allowed]
    if refused:
        where = "" if backbones else " (no backbone cell takes it: a detector cell's images are --detector-shape)"
        raise UsageError(f"{refused[0]} does not apply to a whole detector ({detector}){where}; a matrix with "
                         f"detector cells takes {', '.join(allowed)}: drop it, or run the detectors in a matrix "
                         "of their own")


def refuse_settings(detector: str, settings: Any, runtimes: Sequence[str] | None) -> None:
    """What the library refuses for detector cells whichever way it was asked (the CLI refuses by flag first)."""
    why = ("--runtime" if runtimes else "--input" if settings.input_file is not None
           else "--device" if settings.runtime.device != "cpu"
           else MODE_FLAGS.get(settings.tolerance.mode, "--decimal") if settings.tolerance.mode != "auto" else None)
    if why:
        raise UsageError(f"{why} does not apply to a whole detector ({detector}: judged on the CPU, in auto mode, on "
                         "its synthetic images, by its own runtimes); drop it, or run the detectors in a matrix "
                         "of their own")


def detector_params(name: str) -> float:
    return DETECTOR_PARAMS_M.get(name, UNKNOWN_DETECTOR_PARAMS_M)
