"""TorchScript: the saved file, loaded back with torch.jit.load."""

from __future__ import annotations

from typing import TYPE_CHECKING

from exporter.errors import ArtifactError
from verify.runtimes.torch_common import TorchRuntime

if TYPE_CHECKING:
    from exporter.artifacts import Artifact


class TorchScriptRuntime(TorchRuntime):
    name = "torchscript"
    formats = ("torchscript",)

    def _load(self, artifact: Artifact) -> None:
        import warnings

        import torch

        device, dtype = self._target()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
                module = torch.jit.load(str(artifact.path), map_location=device)
        except Exception as exc:
            raise ArtifactError(f"{artifact.path} cannot be loaded by torch.jit.load: "
                                f"{str(exc).splitlines()[0]}") from None
        self.module = module.to(dtype=dtype).eval()
