"""Each detector format's runner: the judged run of a file on images (`_RUNNERS`, by format) and the file as a
function of one image (`one_image_runner`, what preflight times)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from verify.detect.eager_runs import GUARD_DEVICE
from verify.detect.export import OUTPUT_NAMES
from verify.detect.onnx_runs import _ort_run, _run_onnx, _session
from verify.detect.scripted_runs import _run_torchscript, load_scripted

if TYPE_CHECKING:
    import torch


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
