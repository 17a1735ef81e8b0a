"""A format a test adds in one module (tests/test_option_groups.py registers it in one line): a file that records
its one option, --dummy-scale, so that where the value went can be read back from what was exported."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from exporter.artifacts import Artifact
from exporter.formats import ExportContext, Format
from exporter.plugin_options import PluginOptions, option


@dataclass(frozen=True)
class DummyOptions(PluginOptions):
    scale: float = option(1.0, flag="--dummy-scale", low=0.0, help="Recorded in model.dummy (format dummy)")


class DummyFormat(Format):
    name: ClassVar[str] = "dummy"
    default_runtime: ClassVar[str] = "eager"
    suffixes: ClassVar[tuple[str, ...]] = (".dummy",)
    filename: ClassVar[str] = "model.dummy"
    Options: ClassVar[type[PluginOptions]] = DummyOptions
    executes_code_on_load: ClassVar[bool] = False

    def export(self, ctx: ExportContext, options: Any, path: Path) -> Artifact:
        path.write_text(json.dumps(options.to_dict()))
        return Artifact(self.name, ctx.new_meta(), path=path)
