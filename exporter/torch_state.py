"""torch's process-wide float32 precision settings: read them all, put them back. A model's own code (its file on
import, its factory, its forward) may change them, and a float32 run then rounds at TF32 or BF16 while its floor
is measured as float32's."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

FP32_PRECISION_FLAGS = ("backends", "backends.mkldnn", "backends.mkldnn.matmul", "backends.mkldnn.conv",
                        "backends.mkldnn.rnn", "backends.cuda.matmul", "backends.cudnn", "backends.cudnn.conv",
                        "backends.cudnn.rnn")
"""Where torch (2.9 and later) keeps each `fp32_precision` (ieee, tf32, bf16): what a float32 op really rounds at."""


def attribute(root: Any, path: str) -> Any:
    """`root.a.b` for `a.b`; None where torch has no such attribute (an older torch)."""
    for name in path.split("."):
        root = getattr(root, name, None)
    return root


def precision_state() -> dict[str, Any]:
    """Every float32 precision setting by name: the matmul precision, cuDNN's TF32 switch, each `fp32_precision`."""
    import torch

    state: dict[str, Any] = {"float32_matmul_precision": torch.get_float32_matmul_precision(),
                             "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32}
    for path in FP32_PRECISION_FLAGS:
        state[f"{path}.fp32_precision"] = getattr(attribute(torch, path), "fp32_precision", None)
    return state


def restore_precision(state: dict[str, Any]) -> None:
    """Put back what `precision_state` read (the legacy setters first: they write some of the flags)."""
    import torch

    torch.set_float32_matmul_precision(state["float32_matmul_precision"])
    torch.backends.cudnn.allow_tf32 = state["cudnn.allow_tf32"]
    for path in FP32_PRECISION_FLAGS:
        value = state[f"{path}.fp32_precision"]
        if value is not None:
            with contextlib.suppress(AttributeError, RuntimeError, ValueError):
                attribute(torch, path).fp32_precision = value


@contextlib.contextmanager
def precision_kept(what: str, error: type[Exception]) -> Iterator[None]:
    """Run the body; if it changed a float32 precision setting (a model's forward calling
    `torch.set_float32_matmul_precision("medium")`), put the settings back and raise `error` naming the change: the
    float32 runs, and the floor measured from them, would round at TF32 or BF16 (found by hunt 8b)."""
    before = precision_state()
    try:
        yield
    finally:
        after = precision_state()
        if after != before:
            restore_precision(before)
    changed = [f"{name} {before[name]!r} -> {after[name]!r}" for name in before if after[name] != before[name]]
    if changed:
        raise error(f"{what} changed torch's float32 precision while it ran ({'; '.join(changed[:2])}): its float32 "
                    "runs would round at another precision than the one judged; set precision outside the model, "
                    "or verify it at that precision with --precision")
