"""A detector's ONNX file under ONNX Runtime: its detections, and its dense tensors, proposals and final-NMS inputs as
extra graph outputs; its session on a device (CUDA asked for and not given is a SetupError), and a one-line reason
when ONNX Runtime fails on an image (the known upstream Reshape failure named)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.errors import ExportError, SetupError
from verify.detect.eager_runs import GUARD_DEVICE, concat_dense
from verify.detect.export import MASKS, OUTPUT_NAMES, _first_line
from verify.detect.keypoints import KEYPOINT_LOGITS, KEYPOINT_SCORES, KEYPOINTS
from verify.detect.match import MASK_LOGITS, Detections
from verify.detect.nms_inputs import onnx_nms_inputs
from verify.detect.onnx_graph import _with_outputs, onnx_dense_outputs, onnx_proposals
from verify.detect.proposals import PROPOSALS
from verify.detect.report import Run
from verify.runtimes.onnxruntime import PROVIDERS

if TYPE_CHECKING:
    import numpy as np
    import torch


RESHAPE_BLOCKER = "pytorch/vision#4623"
"""The upstream issue: a Reshape in the box head of torchvision's Faster R-CNN, exported by the legacy ONNX
exporter, fails in ONNX Runtime on some images (measured here: every image the RPN keeps no proposal for,
{0,364} to {0,-1}; bench/results/detectors-cpu.log)."""
RESHAPE_FAILURE = re.compile(r"running Reshape node\. Name:'(?P<node>[^']*)'.*?Input shape:\s*(?P<given>\{[^}]*\}),"
                             r"\s*requested shape:\s*(?P<wanted>\{[^}]*\})")


def _run_onnx(path: Path, inputs: Sequence[torch.Tensor], dense: list[str], device: str = GUARD_DEVICE) -> Run:
    """The file as written for detections; a copy with the dense tensors as extra outputs for those. A file with
    masks (Mask R-CNN) gives them too, and its mask predictor's logits as an extra output, each detection's label's
    row kept (verify/detect/masks.py); a file with keypoints (Keypoint R-CNN) gives them, their scores and its keypoint
    predictor's logits (verify/detect/keypoints.py); a file whose logits are not found gives none (a failure where
    they are judged)."""
    import onnx

    from exporter.families.detectors import KEYPOINT_LOGITS as KEYPOINT_MODULE
    from exporter.families.detectors import MASK_LOGITS as MASK_MODULE
    from verify.detect.masks import label_logits

    model = onnx.load(str(path))
    found = onnx_dense_outputs(model, list(dict.fromkeys(name.partition("@")[0] for name in dense)))
    proposals = onnx_proposals(model) if found else None
    if proposals is not None:
        found[PROPOSALS] = proposals
    candidates = onnx_nms_inputs(model)  # None: the judgement then misses them (a failure) where they are asked
    present = {o.name for o in model.graph.output}
    names = [*OUTPUT_NAMES, *(name for name in (MASKS, KEYPOINTS, KEYPOINT_SCORES) if name in present)]
    logits = onnx_dense_outputs(model, [f"{MASK_MODULE}#0"]).get(f"{MASK_MODULE}#0") if MASKS in names else None
    heat = onnx_dense_outputs(model, [f"{KEYPOINT_MODULE}#0"]).get(f"{KEYPOINT_MODULE}#0") \
        if KEYPOINTS in names else None
    wanted = list(dict.fromkeys([*found.values(), *(candidates or ()), *(v for v in (logits, heat) if v)]))
    result = Run([])
    session = _session(model.SerializeToString(), device)
    extended = _with_outputs(model, wanted, {candidates[2]: onnx.TensorProto.INT64} if candidates else {})
    dense_session = _session(extended.SerializeToString(), device) if wanted else None
    per_image = []
    for image in inputs:
        out = _ort_run(session, image, names)
        values = _ort_run(dense_session, image, [*wanted, *(["labels"] if logits else [])]) \
            if dense_session is not None else {}
        if logits:  # the rows of the extended graph's own run, each of its own detection's label
            try:
                out[MASK_LOGITS] = label_logits(values[logits], values["labels"])
            except ValueError as exc:
                raise ExportError(f"the ONNX file's mask predictor gives no row per detection ({exc})") from None
        if heat:  # the extended graph's own run's rows, one per detection of that run
            out[KEYPOINT_LOGITS] = values[heat]
        result.detections.append(Detections.of(out))
        if dense_session is not None:
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
