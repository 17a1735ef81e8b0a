"""torch.export: the saved ExportedProgram, loaded back with `torch.export.load(...).module()`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from verify.runtimes.torch_common import TorchRuntime, load_file

if TYPE_CHECKING:
    from exporter.artifacts import Artifact


class ExportedProgramRuntime(TorchRuntime):
    name = "exported"
    formats = ("pt2",)

    def _load(self, artifact: Artifact) -> None:
        import torch

        device, dtype = self._target()
        module = load_file(lambda path: torch.export.load(path).module(), artifact, "torch.export.load")
        self.module = module.to(device=device, dtype=dtype)  # exported modules have no train/eval switch
