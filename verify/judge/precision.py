"""Numerical precision of a run, and a scope that sets it for one run and puts everything back.

- `fp32`: float32 throughout; TF32 as the run's `tf32` option says (None: the framework's default).
- `tf32`: float32 tensors, TF32 tensor cores for matmuls and cuDNN convolutions. CUDA only: the CPU has
  no TF32, so asking for it there is a usage error rather than a float32 run reported as TF32.
- `bf16` / `fp16`: `torch.autocast` on the run's device (the mixed precision deployments use: convolutions
  and matmuls in the low dtype, what autocast keeps in float32 stays there). Both work on the CPU.

A run at a precision other than the one asked is an error, never a pass: the torch runtimes watch the
dtype every convolution and matmul actually ran in (`PrecisionProbe`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from exporter.errors import SetupError, UsageError

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
EPS = {"fp32": 2.0 ** -23, "tf32": 2.0 ** -10, "bf16": 2.0 ** -7, "fp16": 2.0 ** -10}
"""Machine epsilon of each precision's mantissa (float32 23 bits, TF32 and float16 10, bfloat16 7)."""
DISPLAY = {"fp32": "float32", "tf32": "TF32", "bf16": "BF16", "fp16": "FP16"}
AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}
WATCHED_OPS = ("conv", "mm", "matmul", "linear")
"""aten ops whose input dtype tells the precision a run really used (conv2d, convolution, addmm, bmm, ...)."""


def check_precision(precision: str, device: str, tf32: bool | None = None) -> None:
    """Refuse a precision that cannot be honoured here, before any work."""
    if precision not in PRECISIONS:
        raise UsageError(f"Unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "tf32" and device != "cuda":
        raise UsageError("--precision tf32 is a CUDA precision (TF32 tensor cores); on the CPU use fp32 or bf16")
    if precision == "tf32" and tf32 is False:
        raise UsageError("--precision tf32 with --no-tf32 contradict each other; drop one")


def check_tf32_flag(device: str, tf32: bool | None) -> None:
    """--tf32/--no-tf32 switches TF32 on CUDA only: on the CPU it would be silently ignored, so it is refused."""
    if tf32 is not None and device != "cuda":
        flag = "--tf32" if tf32 else "--no-tf32"
        raise UsageError(f"{flag} sets TF32 on CUDA, and this run is on {device}, where there is no TF32; "
                         f"drop {flag}, or add --device cuda")


def computes_in(precision: str = "fp32", device: str = "cpu", tf32: bool | None = None) -> str:
    """The precision a run's convolutions and matmuls really round at: TF32 on CUDA unless --no-tf32 (both
    PyTorch's cuDNN and ORT's CUDA provider default to it), else the precision asked for."""
    if device == "cuda" and precision == "fp32" and tf32 is not False:
        return "tf32"
    return precision


@contextlib.contextmanager
def precision_scope(precision: str = "fp32", device: str = "cpu", tf32: bool | None = None) -> Iterator[None]:
    """Set TF32 and autocast for one run; restore every global torch setting it touched afterwards,
    so a run never depends on what ran before it."""
    import torch

    from exporter.torch_state import precision_state, restore_precision

    check_precision(precision, device, tf32)
    saved = precision_state()  # every fp32_precision too: the legacy setters write them ('none' came back 'ieee')
    want_tf32 = True if precision == "tf32" else tf32
    try:
        if want_tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32 = want_tf32
            torch.backends.cudnn.allow_tf32 = want_tf32
        with _autocast(precision, device):
            yield
    finally:
        restore_precision(saved)


def _autocast(precision: str, device: str) -> contextlib.AbstractContextManager:
    import torch

    if precision not in AUTOCAST_DTYPES:
        return contextlib.nullcontext()
    try:
        return torch.autocast(device_type=device, dtype=getattr(torch, AUTOCAST_DTYPES[precision]))
    except (RuntimeError, ValueError) as exc:  # a torch build without autocast for this dtype on this device
        raise SetupError(f"torch {torch.__version__} cannot autocast to {precision} on {device}: "
                         f"{str(exc).splitlines()[0]}; use another --precision") from None


@dataclass
class PrecisionProbe:
    """Record the dtype each convolution and matmul ran in (below autocast, so after its casts)."""

    seen: dict[str, dict[str, int]] = field(default_factory=dict)
    """op name -> dtype -> count."""

    @contextlib.contextmanager
    def watch(self) -> Iterator[PrecisionProbe]:
        from torch.utils._python_dispatch import TorchDispatchMode

        probe = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
                name = func.overloadpacket.__name__
                if args and any(op in name for op in WATCHED_OPS) and hasattr(args[0], "dtype"):
                    counts = probe.seen.setdefault(name, {})
                    dtype = str(args[0].dtype).removeprefix("torch.")
                    counts[dtype] = counts.get(dtype, 0) + 1
                return func(*args, **(kwargs or {}))

        with _Mode():
            yield self

    def check(self, precision: str, label: str) -> None:
        """Raise unless every watched op ran in `precision`'s dtype (and at least one ran)."""
        expected = AUTOCAST_DTYPES.get(precision, "float32")
        total = sum(n for counts in self.seen.values() for n in counts.values())
        wrong = {f"{op} in {dtype}": n for op, counts in self.seen.items() for dtype, n in counts.items()
                 if dtype != expected}
        if not total:
            raise SetupError(f"{label}: no convolution or matmul was seen running, so its {precision} precision "
                             "cannot be confirmed; verify this runtime at fp32")
        if wrong:
            ran = ", ".join(f"{n} {what}" for what, n in wrong.items())
            raise SetupError(f"{label} was asked for {precision} ({expected}) but ran {ran} of {total} "
                             "convolutions/matmuls; it cannot be verified at that precision")


def describe(precision: str) -> str:
    return DISPLAY.get(precision, precision)
