"""What a matrix is asked to run: the backbone x norm x view cells from the registries and the user's own
models (`--model`), each a pipeline cell (verify/pipeline/stages.py), and the ids that name them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from exporter.errors import UsageError
from exporter.families.detectors import DETECTORS
from exporter.spec import ModelSpec
from verify.pipeline.stages import CellRequest

if TYPE_CHECKING:
    from exporter.export import ExportOptions
    from verify.api import RunSettings


DEFAULT_VIEW = "body"


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

    @classmethod
    def create(cls, backbones: Sequence[str] | None = None, norms: Sequence[str] | None = None,
               views: Sequence[str] | None = None, settings: RunSettings | None = None,
               export: ExportOptions | None = None, runtimes: Sequence[str] | None = None,
               models: Sequence[str] | None = None) -> MatrixRequest:
        """Every registered backbone x norm and the body view unless chosen (none when only --model is given),
        and each of `models`; names and model sources checked here, nothing imported."""
        from exporter.backbones import BACKBONES, VIEWS
        from exporter.norms import NORMS
        from exporter.user_model import UserModelSpec
        from verify.api import RunSettings
        from verify.runtimes import RUNTIMES

        users = tuple(str(UserModelSpec.parse(text)) for text in dict.fromkeys(models or ()))
        every = () if users and not backbones else BACKBONES.names()
        chosen = (tuple(dict.fromkeys(backbones or every)), tuple(dict.fromkeys(norms or NORMS.names())),
                  tuple(dict.fromkeys(views or (DEFAULT_VIEW,))))
        detectors = [name for name in chosen[0] if name in DETECTORS.names()]
        if detectors:  # the matrix's cells are backbones; a whole detector is judged by its own path
            raise UsageError(f"{detectors[0]} is a whole detector, which the matrix does not run yet; verify it "
                             f"with `verify export -b {detectors[0]}` (and `verify artifact` on its folder)")
        for registry, names in zip((BACKBONES, NORMS, VIEWS), chosen):
            for name in names:
                registry.get(name)
        for name in runtimes or ():
            RUNTIMES.get(name)
        from verify.pipeline.stages import export_for

        settings = settings or RunSettings()
        return cls(*chosen, settings, export or export_for(runtimes, settings.runtime.device),
                   tuple(dict.fromkeys(runtimes)) if runtimes else None, users)

    def cells(self) -> list[CellRequest]:
        """Backbone-major, then norm, then view: the order of the table's rows; then the user's models."""
        from exporter.user_model import UserModelSpec

        return [CellRequest(ModelSpec(b, n, v), self.settings, self.export, self.runtimes)
                for b in self.backbones for n in self.norms for v in self.views] + \
            [CellRequest(UserModelSpec.parse(m), self.settings, self.export, self.runtimes) for m in self.models]

    def settings_dict(self) -> dict[str, Any]:
        """What every cell shares, as plain data (recorded in each report; part of the fingerprint)."""
        from verify.cache import canonical

        return {"backbones": list(self.backbones), "norms": list(self.norms), "views": list(self.views),
                "models": list(self.models),
                "run": canonical(self.settings), "export": self.export.to_dict(),
                "runtimes": list(self.runtimes) if self.runtimes else None,
                "tolerance_text": self.settings.tolerance.describe()}


def cell_id(request: CellRequest) -> str:
    """Stable across runs and machines: the spec's slug and a hash of everything the cell is asked to do."""
    from verify.cache import digest
    from verify.pipeline.stages import request_dict

    return f"{request.spec.slug}-{digest(request_dict(request))[:10]}"


def fingerprint(settings: dict[str, Any], ids: Sequence[str]) -> str:
    """Identifies one matrix: its settings and its cells. Shards merge only when theirs are equal."""
    from verify.cache import digest

    return digest({"settings": settings, "cells": list(ids)})[:16]
