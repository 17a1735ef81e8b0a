"""A runtime a test adds in one module (tests/test_runtime_plugin.py registers it in one line): ONNX Runtime with one
option of its own, --dummy-offset, added to every output, so that where the value went can be seen in the numbers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from exporter.plugin_options import PluginOptions, option
from verify.runtimes.onnxruntime import OnnxRuntime


class DummyRuntime(OnnxRuntime):
    name = "dummy"

    @dataclass(frozen=True)
    class Options(PluginOptions):
        offset: float = option(0.0, flag="--dummy-offset", low=0.0,
                               help="Added to every output (0: ONNX Runtime's own numbers)")

    def _label_details(self) -> list[str]:
        offset = self.options.of(self).offset
        return super()._label_details() + ([f"offset={offset:g}"] if offset else [])

    def _run(self, array: np.ndarray) -> dict[str, np.ndarray]:
        offset = np.float32(self.options.of(self).offset)
        return {name: value + offset for name, value in super()._run(array).items()}
