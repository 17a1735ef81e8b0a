"""torch.export: the saved ExportedProgram, loaded back with `torch.export.load(...).module()`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from exporter.errors import ArtifactError
from verify.runtimes.torch_common import TorchRuntime

if TYPE_CHECKING:
    from exporter.artifacts import Artifact


class ExportedProgramRuntime(TorchRuntime):
    name = "exported"
    formats = ("pt2",)

    def _load(self, artifact: Artifact) -> None:
        import warnings

        import torch

        device, dtype = self._target()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = torch.export.load(str(artifact.path)).module()
        except Exception as exc:
            raise ArtifactError(f"{artifact.path} cannot be loaded by torch.export.load: "
                                f"{str(exc).strip().splitlines()[0]}") from None
        self.module = module.to(device=device, dtype=dtype)  # exported modules have no train/eval switch
