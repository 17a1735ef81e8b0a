"""What the torch-based runtimes share: device checks, TF32 control, running, dict outputs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from exporter.errors import ArtifactError, SetupError
from verify.runtimes import Runtime

if TYPE_CHECKING:
    import numpy as np
    import torch


def torch_device(device: str) -> torch.device:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise SetupError("CUDA is not available to torch here (torch.cuda.is_available() is False); run on a "
                         "machine with a CUDA GPU and a CUDA build of torch, or run on cpu")
    return torch.device(device)


def apply_tf32(tf32: bool | None) -> None:
    """Set TF32 for matmul and cuDNN when asked; None leaves PyTorch's defaults."""
    import torch

    if tf32 is not None:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32


def to_numpy_outputs(result: Any, names: list[str]) -> dict[str, np.ndarray]:
    """A dict of tensors as is; a tensor or tuple mapped onto the recorded output names."""
    import torch

    if isinstance(result, dict):
        return {k: v.detach().cpu().numpy() for k, v in result.items()}
    tensors = [result] if isinstance(result, torch.Tensor) else list(result)
    keys = names if len(names) == len(tensors) else [f"output{i}" for i in range(len(tensors))]
    return {k: t.detach().cpu().numpy() for k, t in zip(keys, tensors)}


def call_module(module: Any, x: torch.Tensor, label: str) -> Any:
    """Run a torch module without autograd; its failures (wrong channels, too small an input,
    out of memory) become one-line ArtifactErrors."""
    import torch

    try:
        with torch.inference_mode():
            return module(x)
    except RuntimeError as exc:
        raise ArtifactError(f"{label} failed on an input of shape {tuple(x.shape)}: "
                            f"{str(exc).strip().splitlines()[-1]}") from None


class TorchRuntime(Runtime):
    """Base of the runtimes that hold a torch module: subclasses set `self.module` in `_load`."""

    supports_float64 = True

    def _target(self) -> tuple[torch.device, torch.dtype]:
        import torch

        self.device = torch_device(self.options.device)
        self.dtype = getattr(torch, self.options.dtype)
        return self.device, self.dtype

    def _run(self, array: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        apply_tf32(self.options.tf32)
        x = torch.from_numpy(array).to(device=self.device, dtype=self.dtype)
        return to_numpy_outputs(call_module(self.module, x, self.label), self.artifact.meta.output_names)
