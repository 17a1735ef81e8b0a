"""PyTorch eager: the model in memory, in float32 or (as the oracle) float64."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from verify.runtimes.torch_common import TorchRuntime

if TYPE_CHECKING:
    import numpy as np

    from exporter.artifacts import Artifact


class EagerRuntime(TorchRuntime):
    name = "eager"
    formats = ("eager",)

    def _load(self, artifact: Artifact) -> None:
        import torch

        assert artifact.built is not None
        device, dtype = self._target()
        model = artifact.built.model
        if dtype == torch.float64:
            model = artifact.built.float64()
        elif device.type != "cpu":
            model = copy.deepcopy(model)  # never change the caller's model in place
        self.module = model.to(device=device, dtype=dtype).eval()

    def _run(self, array: np.ndarray) -> dict[str, np.ndarray]:
        from verify.judge.trust import owned

        return owned(super()._run(array))  # a module may return a buffer that its next call overwrites
