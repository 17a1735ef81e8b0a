"""AOTInductor: a compiled `.pt2` package, loaded with `torch._inductor.aoti_load_package`.

The package is native code (a shared library and its kernels): loading or running it can crash the interpreter
(measured: a segfault in `_load_aoti` under torch 2.11 on an H200; upstream, pytorch#172739). So it is loaded
and run in a worker process (verify/pipeline/isolation.py `IsolatedSession`): a crash there is one line here,
naming the package and the signal, and no verdict, never this process's own death. In a process that is
already a watched worker (a matrix cell's), the package loads there: that worker's death is its cell's error."""

from __future__ import annotations

from typing import TYPE_CHECKING

from exporter.errors import ArtifactError, UsageError
from verify.pipeline.isolation import IsolatedRunError, session
from verify.runtimes.torch_common import TorchRuntime, load_file

if TYPE_CHECKING:
    import numpy as np

    from exporter.artifacts import Artifact
    from verify.runtimes import RuntimeOptions


class AotiRuntime(TorchRuntime):
    name = "aoti"
    formats = ("aoti",)
    supports_float64 = False  # compiled for the dtype it was exported in
    precisions = ("fp32",)  # compiled kernels: autocast and TF32 flags at run time do not reach them
    precision_observable = False

    def _load(self, artifact: Artifact) -> None:
        import torch

        _, dtype = self._target()
        if dtype != torch.float32:
            raise UsageError("An AOTInductor package runs in the float32 it was compiled for")
        self.worker = self._isolated(session, _loaded_here, self.options, artifact,
                                      what=f"The AOTInductor package {artifact.path}")

    def _run(self, array: np.ndarray) -> dict[str, np.ndarray]:
        return self._isolated(self.worker.call, "run_array", array)

    def _isolated(self, call, *args, **kwargs):
        try:
            return call(*args, **kwargs)
        except IsolatedRunError as exc:
            raise ArtifactError(f"{exc} (a native crash in torch._inductor.aoti_load_package or the package's "
                                "compiled code; rebuild it with this torch, or drop --format aoti)") from None


class LoadedAoti(TorchRuntime):
    """The package loaded in this process: what the worker holds (never loaded in the tool's own process)."""

    name = "aoti"
    formats = AotiRuntime.formats
    precisions = AotiRuntime.precisions
    precision_observable = False

    def _load(self, artifact: Artifact) -> None:
        import torch

        device, _ = self._target()
        index = (device.index or 0) if device.type == "cuda" else -1
        self.module = load_file(lambda path: torch._inductor.aoti_load_package(path, device_index=index), artifact,
                                "torch._inductor.aoti_load_package")

    def run_array(self, array: np.ndarray) -> dict[str, np.ndarray]:
        return self._run(array)


def _loaded_here(options: RuntimeOptions, artifact: Artifact) -> LoadedAoti:
    """In the worker: the package loaded, ready for `run_array` calls."""
    return LoadedAoti(options).load(artifact)
