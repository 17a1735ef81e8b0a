"""Export a built model to every requested format, into one folder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from exporter.artifacts import Artifact, ArtifactMeta
from exporter.registry import Registry

if TYPE_CHECKING:
    import torch

    from exporter.backbones import BuiltModel

Exporter = Callable[["BuiltModel", "torch.Tensor", ArtifactMeta, "ExportOptions", Path], Artifact]


@dataclass(frozen=True)
class ExportOptions:
    formats: tuple[str, ...] = ("torchscript", "onnx")
    torchscript_method: str = "script"
    onnx_exporter: str = "dynamo"
    opset: int = 18
    dynamic: bool = True


@dataclass(frozen=True)
class ExporterEntry:
    export: Exporter
    filename: str


def _torchscript(*args):  # thin thunks keep torch out of import time
    from exporter.torchscript import export_torchscript

    return export_torchscript(*args)


def _onnx(*args):
    from exporter.onnx import export_onnx

    return export_onnx(*args)


EXPORTERS: Registry[ExporterEntry] = Registry("export format")
EXPORTERS.add("torchscript", ExporterEntry(_torchscript, "model.pt"))
EXPORTERS.add("onnx", ExporterEntry(_onnx, "model.onnx"))


def export_model(built: BuiltModel, base: ArtifactMeta, example: torch.Tensor, folder: Path,
                 options: ExportOptions, fmt: str) -> Artifact:
    """Write one format of `built` into `folder`; the artifact records `base` plus its exporter."""
    from dataclasses import replace

    entry = EXPORTERS.get(fmt)
    return entry.export(built, example, replace(base), options, folder / entry.filename)
