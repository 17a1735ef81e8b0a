"""Runtimes: each a small class that loads an artifact and runs it on numpy inputs.

Adding one means one module with a `Runtime` subclass and one `RUNTIMES.add` line below.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from exporter.errors import UsageError
from exporter.registry import Registry

if TYPE_CHECKING:
    import numpy as np

    from exporter.artifacts import Artifact

DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class RuntimeOptions:
    device: str = "cpu"
    dtype: str = "float32"
    """float64 turns a torch runtime into the oracle."""
    ort_opt_level: str = "all"
    tf32: bool | None = None
    """None keeps the framework's own default (PyTorch: cuDNN TF32 on; ORT CUDA: use_tf32=1)."""
    precision: str = "fp32"
    """fp32 | tf32 (CUDA) | bf16 | fp16: what the run computes in (verify/precision.py); a runtime that
    cannot honour it refuses, and the floor is measured at it."""


class Runtime:
    """Base: subclasses implement `_load` and `_run`; input checks happen here, once."""

    name: ClassVar[str]
    formats: ClassVar[tuple[str, ...]]
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "tf32", "bf16", "fp16")
    """The precisions this runtime can honour (verify/precision.py): asking another is refused."""
    supports_float64: ClassVar[bool] = False
    """Can run the artifact in float64 (and so serve as the oracle)."""

    def __init__(self, options: RuntimeOptions | None = None) -> None:
        self.options = options or RuntimeOptions()
        if self.options.device not in DEVICES:
            raise UsageError(f"Unknown device {self.options.device!r}; use one of {', '.join(DEVICES)}")
        self.artifact: Artifact | None = None

    @property
    def label(self) -> str:
        return self.name + (f"({', '.join(self._label_details())})" if self._label_details() else "")

    def _label_details(self) -> list[str]:
        details = []
        if self.options.device != "cpu":
            details.append(self.options.device)
            if self.options.tf32 is not None:
                details.append("tf32" if self.options.tf32 else "no-tf32")
        if self.options.dtype != "float32":
            details.append(self.options.dtype)
        return details

    def load(self, artifact: Artifact) -> Runtime:
        if artifact.format not in self.formats:
            raise UsageError(f"Runtime {self.name} cannot run a {artifact.format} artifact")
        self.artifact = artifact
        self._load(artifact)
        return self

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import numpy as np

        if self.artifact is None:
            raise RuntimeError(f"{self.label}: load() an artifact before run()")
        expected = self.artifact.meta.input_name
        if set(inputs) != {expected}:
            raise UsageError(f"{self.label} expects one input named {expected!r}, got {sorted(inputs)}")
        array = inputs[expected]
        if array.ndim != 4 or array.dtype != np.float32:
            raise UsageError(f"{self.label} expects a float32 NCHW array, got {array.dtype} {array.shape}")
        outputs = self._run(np.ascontiguousarray(array))
        return {name: np.asarray(value) for name, value in outputs.items()}

    def alternatives(self) -> list[RuntimeOptions]:
        """Other valid settings of this runtime (e.g. graph optimisation levels) whose spread
        estimates the float32 floor where no float64 run is possible; none by default."""
        return []

    def _load(self, artifact: Artifact) -> None:
        raise NotImplementedError

    def _run(self, array: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError


def _lazy(module: str, cls: str):
    def load() -> type[Runtime]:
        from importlib import import_module

        return getattr(import_module(f"verify.runtimes.{module}"), cls)

    return load


RUNTIMES: Registry = Registry("runtime")
RUNTIMES.add("eager", _lazy("eager", "EagerRuntime"))
RUNTIMES.add("torchscript", _lazy("torchscript", "TorchScriptRuntime"))
RUNTIMES.add("exported", _lazy("exported", "ExportedProgramRuntime"))
RUNTIMES.add("aoti", _lazy("aoti", "AotiRuntime"))
RUNTIMES.add("onnxruntime", _lazy("onnxruntime", "OnnxRuntime"))


def runtime_class(name: str) -> type[Runtime]:
    return RUNTIMES.get(name)()


def runtimes_for(fmt: str, float64: bool = False) -> list[str]:
    """The registered runtimes that run artifacts of format `fmt` (in float64 when asked)."""
    return [name for name in RUNTIMES if fmt in runtime_class(name).formats
            and (not float64 or runtime_class(name).supports_float64)]


def default_runtime(fmt: str) -> str:
    """The runtime a format names as its own (`Format.default_runtime`), checked to be registered and to run it."""
    from exporter.formats import get_format

    name = get_format(fmt).default_runtime
    if name not in RUNTIMES.names() or fmt not in runtime_class(name).formats:
        raise UsageError(f"Format {fmt} names {name!r} as its runtime, which is not a registered runtime of {fmt}; "
                         f"register it, or name one of: {', '.join(runtimes_for(fmt)) or 'none'}")
    return name


def make_runtime(name: str, options: RuntimeOptions | None = None) -> Runtime:
    return runtime_class(name)(options)


def list_runtimes() -> list[str]:
    return RUNTIMES.names()


def formats_run_by(runtimes: Sequence[str]) -> tuple[str, ...]:
    """The file formats to export for `runtimes` when no format is named: each runtime's first file
    format, in registry order (the in-memory eager runtime needs none)."""
    from exporter.formats import file_formats

    files = file_formats()
    wanted = {next((f for f in runtime_class(name).formats if f in files), None) for name in runtimes}
    return tuple(f for f in files if f in wanted)


def runtimes_for_formats(formats: list[str] | tuple[str, ...]) -> list[str]:
    """Every registered runtime that runs one of `formats`, in registry order."""
    return [name for name in RUNTIMES if set(runtime_class(name).formats) & set(formats)]
