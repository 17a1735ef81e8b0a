"""The model in memory: what the eager runtime and the float64 oracle run. No file."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from exporter.formats import Format

if TYPE_CHECKING:
    from exporter.artifacts import Artifact
    from exporter.backbones import BuiltModel


class EagerFormat(Format):
    name: ClassVar[str] = "eager"
    default_runtime: ClassVar[str] = "eager"


def eager_artifact(built: BuiltModel, shape: tuple[int, ...]) -> Artifact:
    from exporter.artifacts import Artifact, ArtifactMeta

    meta = ArtifactMeta(
        input_shape=list(shape),
        output_names=built.output_names,
        spec=str(built.spec),
        weights=built.weights.source,
        weights_sha256=built.weights.sha256,
    )
    return Artifact(EagerFormat.name, meta, built=built)
