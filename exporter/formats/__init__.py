"""Export formats as plug-ins. Each format is one module owning everything about it: its file
name and suffix, its options (a small dataclass), how it is exported, how its recorded metadata
is read back, its manifest fields, its companion files and what loading it can execute.
Adding a format is one module and one `FORMATS.add` line below; runtimes declare the formats
they run (verify/runtimes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from exporter.errors import UsageError
from exporter.plugin_options import PluginOptions
from exporter.registry import Registry

if TYPE_CHECKING:
    import torch

    from exporter.artifacts import Artifact, ArtifactMeta
    from exporter.backbones import BuiltModel


@dataclass(frozen=True)
class NoOptions(PluginOptions):
    """For formats with nothing to choose."""


@dataclass
class ExportContext:
    """What every exporter is given, and products they share: one `torch.export` trace serves
    the ExportedProgram, AOTInductor and the dynamo ONNX export alike."""

    built: BuiltModel
    example: torch.Tensor
    meta: ArtifactMeta
    dynamic: bool = True
    shared: dict[str, Any] = field(default_factory=dict)
    shapes: tuple[tuple[int, ...], ...] = ()
    """Every input shape the files will be run at (a --input folder of several sizes), the example's among them or
    not: a dynamic trace must take each of them (exporter/formats/program.py `export_program`); () the example's."""

    def new_meta(self) -> ArtifactMeta:
        """A copy of the model's metadata for one format to complete."""
        from dataclasses import replace

        return replace(self.meta, dynamic_axes=dict(self.meta.dynamic_axes))

    def exported_program(self) -> Any:
        """`torch.export.export` of the model, traced once per context."""
        if "exported_program" not in self.shared:
            from exporter.formats.program import trace_exported_program

            self.shared["exported_program"] = trace_exported_program(self)
        return self.shared["exported_program"]


class Format:
    """Base of every format; subclasses set the class attributes and override what they do."""

    name: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]] = ()
    filename: ClassVar[str | None] = None
    """File name inside an export folder; None for an in-memory model."""
    Options: ClassVar[type[PluginOptions]] = NoOptions
    """Its own options: fields made with exporter.plugin_options.option, each a flag of export and matrix."""
    default: ClassVar[bool] = False
    """Exported by `verify export` unless formats are chosen."""
    executes: ClassVar[str] = ""
    """What loading a file of this format can execute (README, `verify list`)."""
    default_runtime: ClassVar[str]
    """The runtime (a name in verify's runtime registry) that runs this format when none is chosen: the
    float32 reference of a compared file, the runner of an oracle. A name, not an import: exporter never
    imports verify."""
    executes_code_on_load: ClassVar[bool] = True
    """Loading a file of this format can run code (unpickling, a program, a shared library): never loaded
    from an unsigned folder or the cache without the user's explicit consent. True unless a format declares
    itself data: one that forgets to say fails safe."""
    takes: ClassVar[str] = ""
    """How long exporting takes when that is worth saying in the progress line."""
    overlaps: ClassVar[bool] = False
    """Exported in a child process while the other formats are exported and run, where two cores allow it
    (verify/pipeline/overlap.py): worth it for an export that is long and mostly single-threaded Python."""
    compiled_by_inductor: ClassVar[bool] = False
    """The file is Inductor's compiled code: its convs run channels-last and its sums in Inductor's order, which the
    floors then model (verify/judge/graph_lift.py inductor_graph)."""
    rides_along: ClassVar[bool] = False
    """Exported in that child too, first, when one starts: its `torch.export` trace is the dynamo ONNX export's, so
    the model is traced once, not once per process (the `.pt2`)."""

    @property
    def is_file(self) -> bool:
        return self.filename is not None

    def claims(self, path: Path) -> bool:
        """Whether `path` is a file of this format (by suffix; formats sharing one sniff content)."""
        return path.suffix.lower() in self.suffixes

    def export(self, ctx: ExportContext, options: Any, path: Path) -> Artifact:
        raise UsageError(f"{self.name} is not a format that can be exported")

    def weight_shapes(self, path: Path) -> list[tuple[int, ...]] | None:
        """The shapes of the file's weights (verify/judge/trust.py's rounding bound counts their fan-in); None when
        they cannot be listed without running the file."""
        return None

    def read_meta(self, path: Path) -> ArtifactMeta:
        raise NotImplementedError

    manifest_field_types: ClassVar[dict[str, type]] = {"exporter": str}
    """The types of what `manifest_fields` returns: the manifest schema (exporter/manifest.py) requires
    exactly these fields in this format's file entries."""

    def manifest_fields(self, artifact: Artifact) -> dict[str, Any]:
        """Extra manifest fields for this format's file (what the file really is, read back)."""
        return {"exporter": artifact.meta.exporter}

    def companion_files(self, path: Path) -> list[Path]:
        """Files the artifact needs beside it (e.g. ONNX external data), all listed and hashed."""
        return []

    def companions_of(self, artifact: Artifact, folder: Path | None = None) -> list[Path]:
        """`companion_files` of the artifact's file (in `folder`, else where it is), as its export read them back
        where it did (`Artifact.facts`), else read from the file now."""
        assert artifact.path is not None
        folder = artifact.path.parent if folder is None else folder
        if "companions" in artifact.facts:
            return [folder / name for name in artifact.facts["companions"]]
        return self.companion_files(folder / artifact.path.name)

    def check_integrity(self, path: Path, folder: Path) -> None:
        """Format-specific checks after the hash matched (e.g. references stay inside `folder`)."""
        return None


def _lazy(module: str, cls: str) -> Format:
    from importlib import import_module

    return getattr(import_module(f"exporter.formats.{module}"), cls)()


FORMATS: Registry[Format] = Registry("format")
FORMATS.add("eager", _lazy("eager", "EagerFormat"))
FORMATS.add("torchscript", _lazy("torchscript", "TorchScriptFormat"))
FORMATS.add("pt2", _lazy("pt2", "ExportedProgramFormat"))
FORMATS.add("aoti", _lazy("aoti", "AotiFormat"))
FORMATS.add("onnx", _lazy("onnx", "OnnxFormat"))


def get_format(name: str) -> Format:
    return FORMATS.get(name)


def registered_formats() -> tuple[tuple[str, Format, type], ...]:
    """What is registered now, name, format and its Options: equal while no format or its options changed."""
    return tuple((name, FORMATS.get(name), FORMATS.get(name).Options) for name in FORMATS)


def file_formats() -> list[str]:
    """Formats written to files, the choices of `--format`."""
    return [name for name in FORMATS if FORMATS.get(name).is_file]


def default_formats() -> tuple[str, ...]:
    return tuple(name for name in FORMATS if FORMATS.get(name).default)


def refuse_unused_options(formats: tuple[str, ...], format_options: tuple[Any, ...]) -> None:
    """A format's own option set (not its default) while that format is not exported would be silently ignored:
    refused in one line, before any work. Options shared with a run option (AOTInductor's --device) are not its own."""
    from exporter.plugin_options import option_fields

    for given in format_options:
        owners = [name for name in FORMATS if type(given) is FORMATS.get(name).Options]
        if not owners or set(owners) & set(formats):
            continue
        default = type(given)()
        for item, spec in option_fields(type(given)):
            if not spec.shared and getattr(given, item.name) != getattr(default, item.name):
                raise UsageError(f"{spec.flag} applies to --format {owners[0]}, which this export does not write "
                                 f"(it writes {', '.join(formats) or 'no file'}); drop {spec.flag} or add "
                                 f"--format {owners[0]}")


def detect_format(path: Path) -> Format:
    """The format of a file, from its suffix (and its content where formats share a suffix)."""
    candidates = [FORMATS.get(n) for n in file_formats() if FORMATS.get(n).claims(path)]
    if not candidates:
        suffixes = sorted({s for n in file_formats() for s in FORMATS.get(n).suffixes})
        raise UsageError(f"Cannot tell the format of {path}; expected a file ending in {', '.join(suffixes)}")
    return candidates[0]


def open_artifact(path: Path) -> Artifact:
    """Read an artifact file's recorded metadata through its format (nothing is loaded)."""
    from exporter.artifacts import Artifact
    if path.is_dir():
        raise UsageError(f"{path} is a directory; pass a model file (e.g. {path}/model.onnx) or a model spec")
    fmt = detect_format(path)
    if not path.exists():
        raise UsageError(f"Artifact {path} does not exist" + (" (a broken symbolic link)" if path.is_symlink() else ""))
    if not path.is_file():
        raise UsageError(f"{path} is not a regular file; pass a model file")
    return Artifact(fmt.name, fmt.read_meta(path), path=path)
