"""What a matrix is asked to run: the backbone x norm x view cells from the registries, the whole detectors' cells
(detector x norm, verify/matrix/detectors.py) and the user's own models (`--model`), each a cell request, and
the ids that name them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.errors import UsageError
from exporter.spec import ModelSpec
from verify.matrix.detectors import (
    DEFAULT_DETECTOR_SHAPE,
    DetectorSpec,
    detector_cells,
    detector_formats,
    refuse_settings,
    split_detectors,
)
from verify.pipeline.stages import CellRequest

if TYPE_CHECKING:
    from exporter.export import ExportOptions
    from verify.api import RunSettings


DEFAULT_VIEW = "body"
NOTHING_EXPORTED = ("so each cell would judge eager only against its own float64 run, the run its floor is measured "
                    "from, and pass having judged nothing")
"""Why a matrix of backbone or model cells that exports no file is refused (`verify export` refuses it too)."""


@dataclass(frozen=True)
class MatrixRequest:
    backbones: tuple[str, ...]
    norms: tuple[str, ...]
    views: tuple[str, ...]
    settings: RunSettings
    export: ExportOptions
    runtimes: tuple[str, ...] | None = None
    models: tuple[str, ...] = ()
    """The user's own models (`file.py:factory` or `package.module:factory`), one row each after the backbones."""
    detectors: tuple[tuple[str, str], ...] = ()
    """Whole detectors' cells (detector, norm), after the backbones' rows."""
    detector_shape: tuple[int, ...] = DEFAULT_DETECTOR_SHAPE
    """A detector cell's input: N x 3 x H x W synthetic images (--shape is the backbone cells')."""

    @classmethod
    def create(cls, backbones: Sequence[str] | None = None, norms: Sequence[str] | None = None,
               views: Sequence[str] | None = None, settings: RunSettings | None = None,
               export: ExportOptions | None = None, runtimes: Sequence[str] | None = None,
               models: Sequence[str] | None = None,
               detector_shape: Sequence[int] | None = None) -> MatrixRequest:
        """Every registered backbone x norm and the body view unless chosen (none when only --model is given),
        each whole detector named in `backbones` x each of the norms it has, and each of `models`; names and model
        sources checked here, nothing imported."""
        from exporter.backbones import BACKBONES, VIEWS, backbone_rows
        from exporter.norms import NORMS
        from exporter.user_model import FACTORY_WEIGHTS, UserModelSpec
        from verify.api import RunSettings
        from verify.runtimes import RUNTIMES
        from verify.settings import refuse_static_shapes, refuse_unused_seed

        users = tuple(str(UserModelSpec.parse(text)) for text in dict.fromkeys(models or ()))
        every = () if users and not backbones else BACKBONES.names()
        named, detectors = split_detectors(list(dict.fromkeys(backbones or every)))
        chosen = (tuple(named), tuple(dict.fromkeys(norms or NORMS.names())),
                  tuple(dict.fromkeys(views or (DEFAULT_VIEW,))))
        for registry, names in zip((BACKBONES, NORMS, VIEWS), chosen):
            for name in names:
                registry.get(name)
        backbone_rows(*chosen)  # a backbone with none of the chosen norms and views, refused before any work
        for name in runtimes or ():
            RUNTIMES.get(name)
        from verify.pipeline.stages import export_for

        settings = settings or RunSettings()
        if users and settings.weights != FACTORY_WEIGHTS:  # like verify export: refused before any cell runs, not
            # failed in the model's cell after every other cell's work; one run's settings describe every row
            raise UsageError(f"--weights {settings.weights} applies to registered backbones, and {users[0]} brings "
                             "its own weights (load a checkpoint inside the factory); run your models and the "
                             "backbones as two matrix runs, --weights only in the backbones' run")
        # like verify export: a seed no cell draws from (other weights, --input; no fpn view, no user model) is refused
        refuse_unused_seed(settings.seed, settings.weights, settings.input_file,
                           not users and "fpn" not in chosen[2])
        if settings.layers:  # a stored cell's layers would be read back, not re-judged: each export judges its own
            raise UsageError("The matrix does not run the layer verdict (--layers): run verify export --layers (or "
                             "verify compare MODEL FILE --layers) on the cells you want judged layer by layer")
        export = export or export_for(runtimes, settings.runtime.device)
        if (chosen[0] or users) and not export.formats:  # review 33: such cells passed, judging nothing
            raise UsageError(f"Nothing to export: --runtime {' --runtime '.join(runtimes or ())} runs no file format, "
                             f"{NOTHING_EXPORTED}; add a --runtime that runs a file, or name a --format")
        if chosen[0] or users:  # a backbone's or a model's cell exports at one shape with --static (hunt 19c): the
            refuse_static_shapes(settings, export.dynamic)  # library refuses it too, before any cell (review 18)
        shape = tuple(detector_shape or DEFAULT_DETECTOR_SHAPE)
        cells = tuple(detector_cells(detectors, chosen[1], explicit=bool(norms)))
        for name, norm in cells:
            refuse_settings(name, settings, runtimes)
            detector_formats(export.formats)
            DetectorSpec(name, norm, shape).validate()
        return cls(*chosen, settings, export, tuple(dict.fromkeys(runtimes)) if runtimes else None, users, cells,
                   shape)

    def cells(self) -> list[CellRequest]:
        """Backbone-major, then norm, then view: the order of the table's rows; then the user's models."""
        from exporter.backbones import backbone_rows
        from exporter.user_model import UserModelSpec

        return [CellRequest(ModelSpec(*row), self.settings, self.export, self.runtimes)
                for row in backbone_rows(self.backbones, self.norms, self.views)] + \
            [CellRequest(DetectorSpec(d, n, self.detector_shape), self.settings, self.export, self.runtimes)
             for d, n in self.detectors] + \
            [CellRequest(UserModelSpec.parse(m), self.settings, self.export, self.runtimes) for m in self.models]

    def settings_dict(self) -> dict[str, Any]:
        """What every cell shares, as plain data (recorded in each report; part of the fingerprint). The seeded
        inputs' count is the one this process resolved (--samples, else $BACKBONE_VERIFY_SAMPLES, else the default):
        a shard job whose environment set another count judged its cells on other evidence, so it merges with none."""
        from verify.cache import canonical
        from verify.settings import sample_count

        return {"backbones": list(self.backbones), "norms": list(self.norms), "views": list(self.views),
                "models": list(self.models),
                "run": canonical(self.settings), "export": self.export.to_dict(),
                "runtimes": list(self.runtimes) if self.runtimes else None,
                "tolerance_text": self.settings.tolerance.describe(),
                **({"detectors": [list(cell) for cell in self.detectors], "detector_shape": list(self.detector_shape)}
                   if self.detectors else {}),
                **({"content_sha256": content} if (content := self.content()) else {}),
                **({"samples": sample_count(self.settings)} if self.settings.input_file is None else {})}

    def content(self) -> dict[str, Any]:
        """The sha256 of each file the settings name by path (--input, a --weights file, a --model file): shard jobs
        given other files under the same names ran other matrices, so their fingerprints differ and no merge
        joins them."""
        from exporter.user_model import UserModelSpec
        from exporter.weights import WEIGHT_SOURCES

        found: dict[str, Any] = {}
        if self.settings.input_file is not None:
            found["input"] = _path_sha256(Path(self.settings.input_file))
        weights = str(self.settings.weights)
        if weights not in WEIGHT_SOURCES and Path(weights).is_file():
            found["weights"] = _path_sha256(Path(weights))
        sources = {text: Path(UserModelSpec.parse(text).source) for text in self.models}
        models = {text: _path_sha256(path) for text, path in sources.items() if path.is_file()}
        return {**found, **({"models": models} if models else {})}


def _path_sha256(path: Path) -> str | None:
    """A file's sha256, or a folder's over the names and sha256s of the files directly in it; None when unreadable
    (the run itself says why)."""
    from verify.cache import digest, file_sha256

    try:
        if path.is_dir():
            return digest(sorted((p.name, file_sha256(p)) for p in path.iterdir() if p.is_file()))
        return file_sha256(path)
    except OSError:
        return None


def cell_id(request: CellRequest) -> str:
    """Stable across runs and machines: the spec's slug and a hash of everything the cell is asked to do."""
    from verify.cache import digest
    from verify.pipeline.stages import request_dict

    return f"{request.spec.slug}-{digest(request_dict(request))[:10]}"


def fingerprint(settings: dict[str, Any], ids: Sequence[str]) -> str:
    """Identifies one matrix: its settings and its cells. Shards merge only when theirs are equal."""
    from verify.cache import digest

    return digest({"settings": settings, "cells": list(ids)})[:16]
