"""Export a built model to the requested formats, through the format registry."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.errors import UsageError
from exporter.formats import FORMATS, ExportContext, default_formats, get_format

if TYPE_CHECKING:
    import torch

    from exporter.artifacts import Artifact, ArtifactMeta
    from exporter.backbones import BuiltModel


@dataclass(frozen=True)
class ExportOptions:
    """Which formats, whether batch/height/width stay dynamic, and each format's own options
    (a small dataclass per format, e.g. `OnnxOptions(exporter="torchscript", opset=17)`)."""

    formats: tuple[str, ...] = field(default_factory=default_formats)
    dynamic: bool = True
    format_options: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        # one format name as text was read letter by letter, dynamic="no" exported dynamic axes, and an option given
        # twice or of no format was silently dropped (found by hunt 12a)
        if isinstance(self.formats, str):
            raise TypeError(f"formats must be a sequence of format names, e.g. ({self.formats!r},), not one string")
        if not isinstance(self.dynamic, bool):
            raise TypeError(f"dynamic must be True or False, not {type(self.dynamic).__name__}")
        if not isinstance(self.format_options, tuple | list):
            raise TypeError(f"format_options must be a tuple of format options, e.g. (OnnxOptions(opset=18),), not "
                            f"{type(self.format_options).__name__}")
        object.__setattr__(self, "formats", tuple(dict.fromkeys(self.formats)))
        object.__setattr__(self, "format_options", tuple(self.format_options))
        classes = {get_format(name).Options: name for name in FORMATS}
        for given in self.format_options:
            if type(given) not in classes:
                raise TypeError(f"format_options holds {type(given).__name__}, which is no format's options; use "
                                f"{', '.join(sorted({c.__name__ for c in classes} - {'NoOptions'}))}")
            if sum(type(other) is type(given) for other in self.format_options) > 1:
                raise UsageError(f"format_options holds {type(given).__name__} twice and only one is used; pass one "
                                 f"for {classes[type(given)]}")
        for name in self.formats:
            if not get_format(name).is_file:
                raise UsageError(f"{name} is not a file format; choose among "
                                 f"{', '.join(n for n in FORMATS if get_format(n).is_file)}")

    def options_for(self, fmt: str) -> Any:
        """The options given for `fmt`, else that format's defaults."""
        cls = get_format(fmt).Options
        return next((o for o in self.format_options if isinstance(o, cls)), cls())

    def validate(self) -> None:
        """Every chosen format's options, checked before any work."""
        for name in self.formats:
            self.options_for(name).validate()

    def to_dict(self) -> dict[str, Any]:
        return {"formats": list(self.formats), "dynamic": self.dynamic,
                **{name: asdict(self.options_for(name)) for name in self.formats}}


def export_model(built: BuiltModel, base: ArtifactMeta, example: torch.Tensor, folder: Path,
                 options: ExportOptions, fmt: str, context: ExportContext | None = None) -> Artifact:
    """Write one format of `built` into `folder`; the artifact records `base` plus its exporter.
    Pass one `context` to several calls to share the `torch.export` trace between formats."""
    from exporter.errors import ExportError
    from exporter.torch_state import precision_kept

    entry = get_format(fmt)
    ctx = context or ExportContext(built, example, base, dynamic=options.dynamic)
    assert entry.filename is not None
    with precision_kept(f"{getattr(built, 'spec', 'the model')} (exported to {fmt})", ExportError):  # a trace runs it
        return entry.export(ctx, options.options_for(fmt), folder / entry.filename)
