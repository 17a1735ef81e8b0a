"""What an exported artifact is, the metadata it carries inside itself, and safe folder writes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from exporter.errors import ArtifactError, UsageError

if TYPE_CHECKING:
    from exporter.backbones import BuiltModel

META_KEY = "backbone_verify"
"""ONNX metadata_props key / TorchScript extra file holding the metadata JSON."""
TORCHSCRIPT_META_FILE = f"{META_KEY}.json"
FORMAT_SUFFIXES = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript"}


@dataclass
class ArtifactMeta:
    """Recorded at export, inside the artifact itself, so a file copied alone keeps it."""

    input_name: str = "input"
    input_shape: list[int] = field(default_factory=list)
    """Empty when unknown (a file from elsewhere)."""
    output_names: list[str] = field(default_factory=list)
    dynamic_axes: dict[str, str] = field(default_factory=dict)
    """Axis index (as a string, JSON keys) -> symbolic name."""
    spec: str | None = None
    weights: str | None = None
    weights_sha256: str | None = None
    exporter: str | None = None

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
                    and isinstance(meta.output_names, list) and isinstance(meta.dynamic_axes, dict)):
                raise ValueError("fields of the wrong type")
        except (ValueError, TypeError) as exc:
            raise ArtifactError(f"{source} carries malformed {META_KEY} metadata: {exc}") from None
        return meta


@dataclass
class Artifact:
    """Something a runtime can load: an in-memory model (`eager`) or a file."""

    format: str  # "eager" | "torchscript" | "onnx"
    meta: ArtifactMeta
    path: Path | None = None
    built: BuiltModel | None = None

    @property
    def label(self) -> str:
        return str(self.path) if self.path else f"{self.meta.spec} (eager)"


def eager_artifact(built: BuiltModel, shape: tuple[int, ...]) -> Artifact:
    meta = ArtifactMeta(
        input_shape=list(shape),
        output_names=built.output_names,
        spec=str(built.spec),
        weights=built.weights.source,
        weights_sha256=built.weights.sha256,
    )
    return Artifact("eager", meta, built=built)


def detect_format(path: Path) -> str:
    try:
        return FORMAT_SUFFIXES[path.suffix.lower()]
    except KeyError:
        raise UsageError(
            f"Cannot tell the format of {path}; expected one of {', '.join(FORMAT_SUFFIXES)}"
        ) from None


def open_artifact(path: Path) -> Artifact:
    """Read a `.onnx` or TorchScript `.pt` file's metadata (and check the ONNX graph)."""
    fmt = detect_format(path)
    if not path.is_file():
        raise UsageError(f"Artifact {path} does not exist")
    if fmt == "onnx":
        from exporter.onnx import read_onnx_meta

        return Artifact("onnx", read_onnx_meta(path), path=path)
    from exporter.torchscript import read_torchscript_meta

    return Artifact("torchscript", read_torchscript_meta(path), path=path)
