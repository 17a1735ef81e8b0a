"""TorchScript: the saved file, loaded back with torch.jit.load."""

from __future__ import annotations

from typing import TYPE_CHECKING

from verify.runtimes.torch_common import TorchRuntime, load_file

if TYPE_CHECKING:
    import numpy as np

    from exporter.artifacts import Artifact


class TorchScriptRuntime(TorchRuntime):
    name = "torchscript"
    formats = ("torchscript",)

    def _load(self, artifact: Artifact) -> None:
        import torch

        device, dtype = self._target()
        module = load_file(lambda path: torch.jit.load(path, map_location=device), artifact, "torch.jit.load")
        self.module = module.to(dtype=dtype).eval()

    def _run(self, array: np.ndarray) -> dict[str, np.ndarray]:
        from verify.judge.trust import owned

        return owned(super()._run(array))  # a module may return a buffer that its next call overwrites
