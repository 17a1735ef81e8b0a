"""The ExportedProgram (`torch.export`), saved with `torch.export.save` as a `.pt2` archive.
Loading one unpickles (torch.export.load falls back to torch.load(weights_only=False) and
pickle.loads for weights and constants), so it can execute code: trust the file."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, ClassVar

from exporter.artifacts import TORCHSCRIPT_META_FILE, Artifact, ArtifactMeta
from exporter.errors import ExportError
from exporter.formats import ExportContext, Format, NoOptions
from exporter.formats.onnx import DYNAMIC_AXES
from exporter.formats.torchscript import read_zip_meta

AOTI_MARKER = "/data/aotinductor/"
"""Archive entries that only an AOTInductor package holds (both are `.pt2` zip archives)."""


def is_aoti_package(path: Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any(AOTI_MARKER in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def trace_exported_program(ctx: ExportContext) -> Any:
    """The context's model through `export_program`: what .pt2, AOTInductor and dynamo ONNX share."""
    return export_program(ctx.built.model, ctx.example, ctx.dynamic, str(ctx.built.spec))


def export_program(model: Any, example: Any, dynamic: bool, what: str) -> Any:
    """`torch.export.export` with dynamic batch, height and width (torch picks their ranges);
    a batch of one would be specialised to a constant, so the trace sees a batch of two."""
    import torch

    kwargs: dict[str, Any] = {}
    if dynamic:
        auto = torch.export.Dim.AUTO
        kwargs["dynamic_shapes"] = ({int(axis): auto for axis in DYNAMIC_AXES},)
        if example.shape[0] == 1:
            example = example.expand(2, *example.shape[1:]).contiguous()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(model, (example,), strict=False, **kwargs)
    except Exception as exc:
        raise ExportError(f"torch.export failed for {what}: {str(exc).strip().splitlines()[0]}") from exc


def accepted_ranges(program: Any) -> dict[str, list[int | None]]:
    """Per dynamic input axis, the [least, greatest] size the ExportedProgram accepts (None: unbounded)."""
    import torch

    name = program.graph_signature.user_inputs[0]
    shape = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == name).meta["val"].shape
    ranges: dict[str, list[int | None]] = {}
    for axis in DYNAMIC_AXES:
        size = shape[int(axis)]
        if not isinstance(size, torch.SymInt):
            ranges[axis] = [int(size), int(size)]  # specialised to the example's size
            continue
        bounds = program.range_constraints.get(size.node.expr)
        ranges[axis] = [_finite(bounds.lower) if bounds else None, _finite(bounds.upper) if bounds else None]
    return ranges


def _finite(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError, AttributeError, OverflowError):  # sympy's and torch's infinities
        return None


class ExportedProgramFormat(Format):
    name: ClassVar[str] = "pt2"
    suffixes: ClassVar[tuple[str, ...]] = (".pt2",)
    filename: ClassVar[str] = "model.pt2"
    Options: ClassVar[type] = NoOptions
    default: ClassVar[bool] = True
    executes: ClassVar[str] = ("pickled objects: torch.export.load unpickles weights and constants "
                               "(weights_only=False), so a crafted file can run code; trust the file")

    def claims(self, path: Path) -> bool:
        return super().claims(path) and not is_aoti_package(path)

    def export(self, ctx: ExportContext, options: NoOptions, path: Path) -> Artifact:
        import torch

        meta = ctx.new_meta()
        meta.exporter = "torch.export.export"
        meta.dynamic_axes = dict(DYNAMIC_AXES) if ctx.dynamic else {}
        program = ctx.exported_program()
        meta.dynamic_ranges = accepted_ranges(program) if ctx.dynamic else {}
        try:
            torch.export.save(program, str(path), extra_files={TORCHSCRIPT_META_FILE: meta.to_json()})
        except Exception as exc:
            raise ExportError(f"torch.export.save failed for {ctx.built.spec}: {str(exc).splitlines()[0]}") from exc
        return Artifact(self.name, meta, path=path)

    def read_meta(self, path: Path) -> ArtifactMeta:
        return read_zip_meta(path, "torch.export (.pt2)")

    def manifest_fields(self, artifact: Artifact) -> dict:
        return {"exporter": artifact.meta.exporter}
