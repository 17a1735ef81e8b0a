"""TorchScript: the saved file, loaded back with torch.jit.load."""

from __future__ import annotations

from typing import TYPE_CHECKING

from exporter.errors import ArtifactError
from exporter.messages import one_line
from verify.runtimes.torch_common import TorchRuntime, load_file

if TYPE_CHECKING:
    import numpy as np

    from exporter.artifacts import Artifact


SCRIPTED_RAISE_HINT = ("; a scripted file takes the model's torch.jit.is_scripting() branches (torch's "
                       "parametrizations, weight_norm among them, raise there): export with --trace")
"""Added when a scripted file raises while it runs (sweep 27b: a weight_norm model scripted without an error, and its
file's first run raised torch.jit.Error, which the worker reported as "raised by your model's code")."""
REASON_LIMIT = 120
"""Characters of the program's own error kept: the hint must fit the one-line message (exporter/messages.py)."""


class TorchScriptRuntime(TorchRuntime):
    name = "torchscript"
    formats = ("torchscript",)

    def _load(self, artifact: Artifact) -> None:
        import torch

        device, dtype = self._target()
        module = load_file(lambda path: torch.jit.load(path, map_location=device), artifact, "torch.jit.load")
        self.module = module.to(dtype=dtype).eval()

    def _run(self, array: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        from verify.judge.trust import owned

        try:
            return owned(super()._run(array))  # a module may return a buffer that its next call overwrites
        except torch.jit.Error as exc:  # the interpreter's own error, no RuntimeError: call_module lets it through
            lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
            reason = one_line(lines[-1].removeprefix("builtins."), REASON_LIMIT) if lines else type(exc).__name__
            scripted = (self.artifact.meta.exporter if self.artifact is not None else None) == "torch.jit.script"
            raise ArtifactError(f"{self.label} failed on an input of shape {tuple(array.shape)}: the TorchScript "
                                f"program raised {reason}" + (SCRIPTED_RAISE_HINT if scripted else "")) from None


def inputless_modules(artifact: Artifact) -> set[str] | None:
    """The submodules (by their names in the file) of a TorchScript file whose forward takes no input (its schema
    names `self` alone: torch.jit.trace keeps an nn.Identity so); None for a file of another format, or one that no
    longer loads. Sweep 28a: such a module cannot read the input, so the layer verdict of an unsigned folder excuses
    it (verify/folder/layers.py) where it 'could not run'."""
    import torch

    if artifact.format not in TorchScriptRuntime.formats or artifact.path is None:
        return None
    try:
        module = torch.jit.load(str(artifact.path), map_location="cpu")
    except Exception:  # noqa: BLE001 - a file that no longer loads excuses nothing
        return None
    found = set()
    for name, sub in module.named_modules():
        try:
            if name and len(sub.forward.schema.arguments) == 1:
                found.add(name)
        except Exception:  # noqa: BLE001 - no scripted forward: not excused
            continue
    return found
