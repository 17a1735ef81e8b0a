"""What an exported artifact is, the metadata it carries inside itself, and safe folder writes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.errors import ArtifactError

if TYPE_CHECKING:
    from exporter.backbones import BuiltModel

META_KEY = "backbone_verify"
LEAST_DYNAMIC_SIZE = 2
"""torch.export's least size of a dynamic axis (0 and 1 are specialised): a larger least is a bound of the file's."""
"""ONNX metadata_props key / TorchScript extra file holding the metadata JSON."""
TORCHSCRIPT_META_FILE = f"{META_KEY}.json"


@dataclass
class ArtifactMeta:
    """Recorded at export, inside the artifact itself, so a file copied alone keeps it."""

    input_name: str = "input"
    input_shape: list[int] = field(default_factory=list)
    """Empty when unknown (a file from elsewhere)."""
    output_names: list[str] = field(default_factory=list)
    dynamic_axes: dict[str, str] = field(default_factory=dict)
    """Axis index (as a string, JSON keys) -> symbolic name."""
    dynamic_ranges: dict[str, list[int | None]] = field(default_factory=dict)
    """Axis index -> [least, greatest] size the file accepts (greatest None: unbounded), where its format
    bounds them: torch.export decides each dynamic axis's range from the traced example (a 32x32 ResNet
    input leaves a 1x1 last stage and bounds height and width to 32)."""
    spec: str | None = None
    weights: str | None = None
    weights_sha256: str | None = None
    exporter: str | None = None

    def bounded_axes(self) -> str:
        """`height 2..32, width 16..`: the dynamic axes this file accepts only up to a size, or only from a size above
        torch.export's own least (2) ('' if none). A least size comes from a guard on the traced size (`y if
        x.shape[-1] >= 16 else -y`): a `.pt2` refuses smaller inputs, an ONNX file runs them with the traced branch
        (hunt 20b), so either is a bound the report names."""
        return ", ".join(f"{self.dynamic_axes.get(axis, 'axis ' + axis)} {least}..{greatest or ''}"
                         for axis, (least, greatest) in sorted(self.dynamic_ranges.items())
                         if greatest is not None or (least or 0) > LEAST_DYNAMIC_SIZE)

    def least_bounded(self) -> bool:
        """Whether an axis takes sizes only from one above torch.export's own least (see bounded_axes)."""
        return any((least or 0) > LEAST_DYNAMIC_SIZE for least, _ in self.dynamic_ranges.values())

    def most_bounded(self) -> bool:
        """Whether an axis takes sizes only up to one (see bounded_axes)."""
        return any(greatest is not None for _, greatest in self.dynamic_ranges.values())

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: object = "artifact") -> ArtifactMeta:
        """Parse recorded metadata; anything malformed is an ArtifactError naming `source`."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            meta = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
            if not (isinstance(meta.input_name, str) and isinstance(meta.input_shape, list)
                    and all(isinstance(d, int) for d in meta.input_shape)
                    and isinstance(meta.output_names, list) and isinstance(meta.dynamic_axes, dict)
                    and isinstance(meta.dynamic_ranges, dict)
                    and all(isinstance(r, list) and len(r) == 2 and all(v is None or isinstance(v, int) for v in r)
                            for r in meta.dynamic_ranges.values())):
                raise ValueError("fields of the wrong type")
        except (ValueError, TypeError) as exc:
            raise ArtifactError(f"{source} carries malformed {META_KEY} metadata: {exc}") from None
        return meta


@dataclass
class Artifact:
    """Something a runtime can load: an in-memory model (`eager`) or a file."""

    format: str
    """A name in exporter.formats.FORMATS."""
    meta: ArtifactMeta
    path: Path | None = None
    built: BuiltModel | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    """What the export read back from the file right after writing it (ONNX: `opset`, `companions`), so the process
    it is handed to need not parse the file again; empty for a file found on disk, which its format reads."""

    @property
    def label(self) -> str:
        return str(self.path) if self.path else f"{self.meta.spec} (eager)"
