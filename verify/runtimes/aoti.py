"""AOTInductor: a compiled `.pt2` package, loaded with `torch._inductor.aoti_load_package`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from exporter.errors import ArtifactError, UsageError
from verify.runtimes.torch_common import TorchRuntime

if TYPE_CHECKING:
    from exporter.artifacts import Artifact


class AotiRuntime(TorchRuntime):
    name = "aoti"
    formats = ("aoti",)
    supports_float64 = False  # compiled for the dtype it was exported in

    def _load(self, artifact: Artifact) -> None:
        import warnings

        import torch

        device, dtype = self._target()
        if dtype != torch.float32:
            raise UsageError("An AOTInductor package runs in the float32 it was compiled for")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.module = torch._inductor.aoti_load_package(str(artifact.path), device_index=(
                    device.index or 0) if device.type == "cuda" else -1)
        except Exception as exc:
            raise ArtifactError(f"{artifact.path} cannot be loaded as an AOTInductor package: "
                                f"{str(exc).strip().splitlines()[0]}") from None
