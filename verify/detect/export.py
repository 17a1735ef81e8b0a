"""A whole detector's export: its formats and file names, the TorchScript (torch.jit.script) and legacy ONNX
exporters, the dynamo ONNX refusal, and the one-line reason a format did not export (a refusal, never a crash)."""

from __future__ import annotations

import contextlib
import io
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from exporter.errors import ExportError, UsageError

if TYPE_CHECKING:
    import torch

    from exporter.families.detectors import BuiltDetector


FORMATS = ("torchscript", "onnx", "onnx-dynamo")
DEFAULT_FORMATS = FORMATS[:2]
"""What `verify export -b <detector>` exports unless --format says otherwise (dynamo is refused upstream)."""
ONNX_OPSET = 17
OUTPUT_NAMES = ("boxes", "labels", "scores")
MASKS = "masks"
"""Mask R-CNN's fourth output: each detection's mask probabilities pasted into the image (N x 1 x H x W)."""
KEYPOINTS, KEYPOINT_SCORES = "keypoints", "keypoints_scores"
"""Keypoint R-CNN's fourth and fifth outputs: each detection's K keypoints (N x K x 3: x, y, visibility 1) and their
scores (N x K: each heatmap's value at its maximum)."""
EXTRA_OUTPUTS = (MASKS, KEYPOINTS, KEYPOINT_SCORES)
"""The outputs a detector may add to OUTPUT_NAMES (judged per matched detection)."""
DYNAMO_BLOCKER = ("torch.export cannot trace torchvision's detectors: NMS and RoIAlign have data-dependent output "
                  "shapes (upstream fixes open: pytorch/vision#9226, pytorch/vision#9395); use the legacy ONNX "
                  "exporter (format onnx)")


DYNAMIC_AXES = {"image": {1: "height", 2: "width"}}
"""The ONNX input's dynamic axes when a detector is exported for any image size (it takes one C x H x W image)."""
FILE_NAMES = {"torchscript": "detector.torchscript.pt", "onnx": "detector.onnx", "onnx-dynamo": "detector.dynamo.onnx"}


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UsageError(f"Unknown detector format {', '.join(bad) or '(none)'}; choose from {', '.join(FORMATS)}")
    return tuple(dict.fromkeys(formats))


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
    """The detection dict's keys in the model's own order (Faster R-CNN: boxes, labels, scores; Mask R-CNN: and masks;
    Keypoint R-CNN: and keypoints, keypoints_scores; RetinaNet and SSDlite: boxes, scores, labels): the legacy
    exporter names outputs by position."""
    from exporter.families.detectors import detect

    names = list(detect(model, example))
    if sorted(set(names) - set(EXTRA_OUTPUTS)) != sorted(OUTPUT_NAMES) or len(set(names)) != len(names):
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
