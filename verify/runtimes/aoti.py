"""AOTInductor: a compiled `.pt2` package, loaded with `torch._inductor.aoti_load_package`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from exporter.errors import UsageError
from verify.runtimes.torch_common import TorchRuntime, load_file

if TYPE_CHECKING:
    from exporter.artifacts import Artifact


class AotiRuntime(TorchRuntime):
    name = "aoti"
    formats = ("aoti",)
    supports_float64 = False  # compiled for the dtype it was exported in
    precisions = ("fp32",)  # compiled kernels: autocast and TF32 flags at run time do not reach them
    precision_observable = False

    def _load(self, artifact: Artifact) -> None:
        import torch

        device, dtype = self._target()
        if dtype != torch.float32:
            raise UsageError("An AOTInductor package runs in the float32 it was compiled for")
        index = (device.index or 0) if device.type == "cuda" else -1
        self.module = load_file(lambda path: torch._inductor.aoti_load_package(path, device_index=index), artifact,
                                "torch._inductor.aoti_load_package")
