"""Whether a model file is a whole detector's, told from the file read as data (never loaded nor run): `verify compare`
and `verify explain` refuse such a file in one line (verify/api.py `refuse_detector_file`) instead of running it on an
NCHW batch (review 29)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from exporter.errors import VerifyError

SCRIPTED_NMS = b"ops.torchvision.nms("
"""How a TorchScript archive's code calls torchvision's NMS (torchvision/ops/boxes.py, scripted): no backbone does."""
CODE_BYTES = 1 << 23
"""A TorchScript code entry larger than this is not read (a whole detector's largest is ~60 kB)."""


def detector_sign(path: Path) -> str | None:
    """What shows, without loading or running it, that `path` is a whole detector's file: an ONNX graph whose one
    input is one C x H x W image and that returns boxes, labels and scores (or runs NonMaxSuppression), a TorchScript
    archive whose code calls torchvision::nms; None otherwise, or where the file cannot be read so (its own load
    then says why). Read once while the file stays as it is."""
    info = path.stat()
    return _detector_sign(str(path.resolve()), (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns))


@functools.lru_cache(maxsize=4)
def _detector_sign(path: str, stamp: tuple[int, ...]) -> str | None:
    from exporter.formats import detect_format
    from exporter.formats.onnx import OnnxFormat
    from exporter.formats.torchscript import TorchScriptFormat

    fmt = detect_format(Path(path))
    if isinstance(fmt, OnnxFormat):
        return _graph_detector_sign(Path(path))
    if isinstance(fmt, TorchScriptFormat):
        return _scripted_detector_sign(Path(path))
    return None


def _graph_detector_sign(path: Path) -> str | None:
    """The protobuf only (no external data, no checker, no session)."""
    from exporter.formats.onnx import read_graph
    from verify.detect.export import OUTPUT_NAMES

    try:
        graph = read_graph(path).graph
    except Exception:  # noqa: BLE001 - protobuf parse errors surface under several types; the load names them
        return None
    initializers = {i.name for i in graph.initializer}
    ranks = [len(i.type.tensor_type.shape.dim) for i in graph.input if i.name not in initializers]
    if ranks != [3]:
        return None
    if sorted(o.name for o in graph.output) == sorted(OUTPUT_NAMES):
        return "its graph takes one C x H x W image and returns boxes, labels and scores"
    return "its graph takes one C x H x W image and runs NonMaxSuppression" if _runs_nms(graph) else None


def _runs_nms(graph: Any) -> bool:
    """Whether a node of `graph` or of its subgraphs (the legacy exporter puts NMS inside If branches) is NMS."""
    pending = [graph]
    while pending:
        for node in pending.pop().node:
            if node.op_type == "NonMaxSuppression":
                return True
            pending += [a.g for a in node.attribute if a.HasField("g")] + [g for a in node.attribute for g in a.graphs]
    return False


def _scripted_detector_sign(path: Path) -> str | None:
    """The archive's code entries, read as text (torch.jit.load would run them)."""
    import zipfile

    from exporter.fsio import read_archive_member

    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if "/code/" in info.filename and info.filename.endswith(".py") and info.file_size <= CODE_BYTES \
                        and SCRIPTED_NMS in read_archive_member(archive, info.filename, path):
                    return "its code calls torchvision::nms"
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, VerifyError):  # the load names what is wrong
        return None
    return None
