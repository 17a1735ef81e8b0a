"""PyTorch eager: the model in memory, in float32 or (as the oracle) float64."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from verify.runtimes import Runtime
from verify.runtimes.torch_common import apply_tf32, to_numpy_outputs, torch_device

if TYPE_CHECKING:
    import numpy as np

    from exporter.artifacts import Artifact


class EagerRuntime(Runtime):
    name = "eager"
    formats = ("eager",)

    def _load(self, artifact: Artifact) -> None:
        import torch

        assert artifact.built is not None
        self.device = torch_device(self.options.device)
        self.dtype = getattr(torch, self.options.dtype)
        model = artifact.built.model
        if self.dtype == torch.float64:
            model = artifact.built.float64()
        elif self.device.type != "cpu":
            model = copy.deepcopy(model)  # never change the caller's model in place
        self.model = model.to(device=self.device, dtype=self.dtype).eval()

    def _run(self, array: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        apply_tf32(self.options.tf32)
        x = torch.from_numpy(array).to(device=self.device, dtype=self.dtype)
        with torch.inference_mode():
            result = self.model(x)
        return to_numpy_outputs(result, self.artifact.meta.output_names)
