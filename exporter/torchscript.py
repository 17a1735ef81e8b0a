"""TorchScript export (script or trace) with the metadata inside the file."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from exporter.artifacts import TORCHSCRIPT_META_FILE, Artifact, ArtifactMeta
from exporter.errors import ArtifactError, ExportError, UsageError

if TYPE_CHECKING:
    import torch

    from exporter.backbones import BuiltModel
    from exporter.export import ExportOptions

METHODS = ("script", "trace")


def export_torchscript(built: BuiltModel, example: torch.Tensor, meta: ArtifactMeta,
                       options: ExportOptions, path: Path) -> Artifact:
    import torch

    if options.torchscript_method not in METHODS:
        raise UsageError(f"Unknown TorchScript method {options.torchscript_method!r}; use script or trace")
    meta.exporter = f"torch.jit.{options.torchscript_method}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notices are not the user's problem here
        try:
            if options.torchscript_method == "script":
                module = torch.jit.script(built.model)
            else:
                module = torch.jit.trace(built.model, example, strict=False, check_trace=False)
        except Exception as exc:
            raise ExportError(
                f"torch.jit.{options.torchscript_method} failed for {built.spec}: {str(exc).splitlines()[0]}"
            ) from exc
        torch.jit.save(module, str(path), _extra_files={TORCHSCRIPT_META_FILE: meta.to_json()})
    return Artifact("torchscript", meta, path=path)


def read_torchscript_meta(path: Path) -> ArtifactMeta:
    """Read the metadata without loading the module (a TorchScript file is a zip archive)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith(f"extra/{TORCHSCRIPT_META_FILE}")]
            if not names:
                return ArtifactMeta()  # a TorchScript file from elsewhere: nothing recorded
            text = archive.read(names[0]).decode()
    except (zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
        raise ArtifactError(f"{path} is not a readable TorchScript file: {exc}") from None
    return ArtifactMeta.from_json(text, path)
