"""AOTInductor: the ExportedProgram compiled to native code and packaged as a `.pt2`.
Loading one runs compiled native code: trust the file. Compiling needs a C++ compiler."""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from exporter.artifacts import TORCHSCRIPT_META_FILE, Artifact, ArtifactMeta
from exporter.errors import ExportError, SetupError
from exporter.formats import ExportContext, Format
from exporter.formats.program import DYNAMIC_AXES, accepted_ranges, export_program
from exporter.formats.pt2 import is_aoti_package
from exporter.formats.torchscript import read_zip_meta
from exporter.plugin_options import PluginOptions, option

COMPILERS = ("g++", "c++", "clang++")


@dataclass(frozen=True)
class AotiOptions(PluginOptions):
    device: str = option("cpu", flag="--device", shared=True, choices=("cpu", "cuda"),
                         help="Compile for cpu or cuda (a package runs on the device it was compiled for)")


def require_compiler() -> str:
    import os

    for name in ((os.environ.get("CXX") or "").split()[:1] + list(COMPILERS)):
        found = shutil.which(name)
        if found:
            return found
    raise SetupError("AOTInductor needs a C++ compiler and none was found (g++, c++, clang++); install one "
                     "(e.g. `apt-get install g++`) or leave out --format aoti")


class AotiFormat(Format):
    name: ClassVar[str] = "aoti"
    default_runtime: ClassVar[str] = "aoti"
    suffixes: ClassVar[tuple[str, ...]] = (".pt2",)
    filename: ClassVar[str] = "model_aoti.pt2"
    Options: ClassVar[type[PluginOptions]] = AotiOptions
    compiled_by_inductor: ClassVar[bool] = True
    default: ClassVar[bool] = False  # compiles C++: a minute or more, so only on request
    takes: ClassVar[str] = "compiles C++: about a minute for resnet18 on 2 cores, 30 s with a warm compile cache"
    executes_code_on_load: ClassVar[bool] = True
    executes: ClassVar[str] = "compiled native code (a shared library inside the package); trust the file"

    def claims(self, path: Path) -> bool:
        return super().claims(path) and is_aoti_package(path)

    def export(self, ctx: ExportContext, options: AotiOptions, path: Path) -> Artifact:
        import torch

        options.validate()
        require_compiler()
        meta = ctx.new_meta()
        meta.exporter = f"torch._inductor.aoti_compile_and_package(device={options.device})"
        meta.dynamic_axes = dict(DYNAMIC_AXES) if ctx.dynamic else {}
        program = ctx.exported_program()
        if options.device == "cuda":  # traced again on the GPU, with the same dynamic axes
            program = export_program(program.module().to("cuda"), ctx.example.to("cuda"), ctx.dynamic,
                                     f"{ctx.built.spec} on CUDA")
        meta.dynamic_ranges = accepted_ranges(program) if ctx.dynamic else {}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch._inductor.aoti_compile_and_package(program, package_path=str(path))
            _add_meta(path, meta)
        except SetupError:
            raise
        except Exception as exc:
            raise ExportError(f"AOTInductor compilation failed for {ctx.built.spec}: "
                              f"{str(exc).strip().splitlines()[0]}") from exc
        return Artifact(self.name, meta, path=path)

    def read_meta(self, path: Path) -> ArtifactMeta:
        return read_zip_meta(path, "AOTInductor package")

    def manifest_fields(self, artifact: Artifact) -> dict:
        return {"exporter": artifact.meta.exporter}


def _add_meta(path: Path, meta: ArtifactMeta) -> None:
    """Record our metadata in the package's `extra/` folder, as torch.export.save does."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        root = archive.namelist()[0].split("/", 1)[0]
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(f"{root}/extra/{TORCHSCRIPT_META_FILE}", meta.to_json())
