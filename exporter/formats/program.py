"""What .pt2, AOTInductor and dynamo ONNX share: one `torch.export` trace of the model with dynamic batch, height
and width, and the size ranges torch gave those axes. No format module is imported here."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from exporter.errors import ExportError

if TYPE_CHECKING:
    from exporter.formats import ExportContext

DYNAMIC_AXES = {"0": "batch", "2": "height", "3": "width"}
"""The NCHW input axes every format exports as dynamic (unless --static)."""


def trace_exported_program(ctx: ExportContext) -> Any:
    """The context's model through `export_program`: what .pt2, AOTInductor and dynamo ONNX share."""
    return export_program(ctx.built.model, ctx.example, ctx.dynamic, str(ctx.built.spec))


def export_program(model: Any, example: Any, dynamic: bool, what: str) -> Any:
    """`torch.export.export` with dynamic batch, height and width (torch picks their ranges);
    a batch of one would be specialised to a constant, so the trace sees a batch of two."""
    import torch

    kwargs: dict[str, Any] = {}
    if dynamic:
        auto = torch.export.Dim.AUTO
        kwargs["dynamic_shapes"] = ({int(axis): auto for axis in DYNAMIC_AXES},)
        if example.shape[0] == 1:
            example = example.expand(2, *example.shape[1:]).contiguous()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(model, (example,), strict=False, **kwargs)
    except Exception as exc:
        raise ExportError(f"torch.export failed for {what}: {str(exc).strip().splitlines()[0]}") from exc


def accepted_ranges(program: Any) -> dict[str, list[int | None]]:
    """Per dynamic input axis, the [least, greatest] size the ExportedProgram accepts (None: unbounded)."""
    import torch

    name = program.graph_signature.user_inputs[0]
    shape = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == name).meta["val"].shape
    ranges: dict[str, list[int | None]] = {}
    for axis in DYNAMIC_AXES:
        size = shape[int(axis)]
        if not isinstance(size, torch.SymInt) or size.node.expr.is_number:
            # specialised to the example's size: a plain int, or a SymInt torch fixed while tracing (a 2x2 input whose
            # stride-2 stages reach 1x1 keeps `1 + (-1 + x.size()[3]) // 2 == 1` as a guard; hunt 20b)
            ranges[axis] = [int(size), int(size)]
            continue
        bounds = program.range_constraints.get(size.node.expr)
        ranges[axis] = [_finite(bounds.lower) if bounds else None, _finite(bounds.upper) if bounds else None]
    return ranges


def _finite(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError, AttributeError, OverflowError):  # sympy's and torch's infinities
        return None
