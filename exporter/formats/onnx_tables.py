"""The operator tables torch.onnx's dynamo translation reads, built once per process instead of once per export.

torch.onnx builds its registry from onnxscript's torchlib on every export, and onnxscript's `get_torchlib_ops`
re-parses the source of each of its ~900 functions to read their domains each time (measured, resnet18 at 64x64:
an ONNX export 1.8 s, 1.3-1.5 s with the list kept). The list it returns depends on nothing but the installed
onnxscript, and the registry torch builds from it is new each time, so keeping the list changes no export.
"""

from __future__ import annotations

import functools

KEPT = "_backbone_verify_kept"
"""Marks the kept `get_torchlib_ops`, so that it is wrapped once."""


def keep_torchlib_table() -> None:
    """Keep onnxscript's torchlib list for the life of this process (a no-op where this torch or onnxscript
    version reads it otherwise: the export then builds it as before)."""
    try:
        from torch.onnx._internal._lazy_import import onnxscript_apis

        build = onnxscript_apis.get_torchlib_ops  # imports the version module torch chose
        module = onnxscript_apis._module
    except (ImportError, AttributeError):
        return
    if module is None or getattr(build, KEPT, False):
        return
    kept = functools.cache(build)
    setattr(kept, KEPT, True)
    module.get_torchlib_ops = kept


def build_tables() -> None:
    """Build, in this process, what the first dynamo translation of every process would build: torchlib's list
    (kept, as above) and onnx's reference operators (onnxscript's constant folding loads them). Pure Python:
    no tensor is made and no thread started, so a fork server may call it before it forks."""
    keep_torchlib_table()
    try:
        from torch.onnx._internal._lazy_import import onnxscript_apis

        onnxscript_apis.get_torchlib_ops()
    except (ImportError, AttributeError):
        pass
    from onnx.reference.ops import load_op

    load_op("", "Add")
