"""TorchScript: the saved file, loaded back with torch.jit.load."""

from __future__ import annotations

from typing import TYPE_CHECKING

from exporter.errors import ArtifactError
from verify.runtimes import Runtime
from verify.runtimes.torch_common import apply_tf32, to_numpy_outputs, torch_device

if TYPE_CHECKING:
    import numpy as np

    from exporter.artifacts import Artifact


class TorchScriptRuntime(Runtime):
    name = "torchscript"
    formats = ("torchscript",)

    def _load(self, artifact: Artifact) -> None:
        import warnings

        import torch

        self.device = torch_device(self.options.device)
        self.dtype = getattr(torch, self.options.dtype)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
                module = torch.jit.load(str(artifact.path), map_location=self.device)
        except Exception as exc:
            raise ArtifactError(f"{artifact.path} cannot be loaded by torch.jit.load: "
                                f"{str(exc).splitlines()[0]}") from None
        self.module = module.to(dtype=self.dtype).eval()

    def _run(self, array: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        apply_tf32(self.options.tf32)
        x = torch.from_numpy(array).to(device=self.device, dtype=self.dtype)
        with torch.inference_mode():
            result = self.module(x)
        return to_numpy_outputs(result, self.artifact.meta.output_names)
