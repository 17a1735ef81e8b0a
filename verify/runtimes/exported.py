"""torch.export: the saved ExportedProgram, loaded back with `torch.export.load(...).module()`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from verify.runtimes.torch_common import TorchRuntime, load_file

if TYPE_CHECKING:
    import numpy as np

    from exporter.artifacts import Artifact


class ExportedProgramRuntime(TorchRuntime):
    name = "exported"
    formats = ("pt2",)
    loads_in_background = True  # seconds of sympy and dataclass decoding, beside other runtimes' kernels

    def _load(self, artifact: Artifact) -> None:
        from pathlib import Path

        from exporter.formats.pt2 import load_program
        from exporter.serde_speed import remember_sym_exprs, remember_type_hints

        device, dtype = self._target()
        remember_type_hints()  # the deserializer's type hints looked up once per class: 1.8 s -> 1.2 s for ResNet-50
        remember_sym_exprs()  # each shape expression parsed once per load: 2.8 s -> 1.1 s for a dynamic ResNet-50
        # scanned as data first, every torch.load inside forced to weights_only (exporter/formats/pt2.py)
        module = load_file(lambda path: load_program(Path(path)), artifact, "torch.export.load")
        self.module = module.to(device=device, dtype=dtype)  # exported modules have no train/eval switch

    def _run(self, array: np.ndarray) -> dict[str, np.ndarray]:
        from verify.judge.trust import owned

        return owned(super()._run(array))  # a module may return a buffer that its next call overwrites
