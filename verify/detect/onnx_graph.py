"""A legacy-exported detector's ONNX graph read: the value each dense tensor, anchor generator and the RPN's proposals
are (by the exporter's module scopes), and a copy of the graph with them as extra outputs."""

from __future__ import annotations

import re
from typing import Any

PROPOSAL_PRODUCER, PROPOSAL_CONSUMER = "/rpn/", "/roi_heads/box_roi_pool/"
"""Scopes of the legacy exporter between which the proposals flow (see onnx_proposals)."""


LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
"""The ops whose output is a dense module's (ConvTranspose: Keypoint R-CNN's heatmap logits)."""


def onnx_scopes(module: str, call: int) -> list[str]:
    """The legacy exporter's scope of a module's `call`-th call: `rpn.head.conv.0.0` is
    `/rpn/head/conv/conv.0/conv.0.0`, a later call gets `_<call>` on its last part, and a ModuleList
    (never called itself) has no part of its own: `head.x.module_list.0.1` is `/head/x/module_list.0/...`.
    Both readings of a container followed by an index are returned."""
    parts, scope, chain = module.split("."), [], ""
    for part in parts:
        chain = f"{chain}.{part}" if part.isdigit() and chain else part
        scope.append(chain)
    if call:
        scope[-1] += f"_{call}"
    called = "/" + "/".join(scope) + "/"
    listed = [s for i, s in enumerate(scope) if not (i + 1 < len(parts) and parts[i + 1].isdigit()
                                                       and not parts[i].isdigit())]
    return list(dict.fromkeys([called, "/" + "/".join(listed) + "/"]))


def onnx_dense_outputs(model: Any, dense: list[str]) -> dict[str, str]:
    """Each dense tensor (`module#call`) -> the name of the ONNX value the module's Conv/Gemm produced;
    a tensor not found exactly once is left out (and then fails as missing)."""
    from exporter.families.detectors import ANCHOR_MODULES

    outputs = {}
    for name in dense:
        module, _, call = name.partition("#")
        if module in ANCHOR_MODULES.values():
            found = onnx_scope_outputs(model, onnx_scopes(module, int(call)))
            if len(found) == 1:
                outputs[name] = found.pop()
            continue
        hits = {n.output[0] for scope in onnx_scopes(module, int(call)) for n in model.graph.node
                if n.op_type in LAYER_OPS and n.output and n.output[0].startswith(scope)
                and re.fullmatch(r"[A-Za-z]+_output_0", n.output[0][len(scope):])}
        if len(hits) == 1:
            outputs[name] = hits.pop()
    return outputs


def onnx_scope_outputs(model: Any, scopes: list[str]) -> set[str]:
    """The float values that nodes of a module's scope (an anchor generator: no Conv of its own) hand to nodes outside
    it, the graph's outputs included: what the module returned. The legacy exporter lets later code reuse the scope's
    shape arithmetic (RetinaNet's anchors per level: integer Gathers of feature-map sizes), so only float values
    count, typed by ONNX's shape inference."""
    inside = {out for node in model.graph.node if any(node.name.startswith(s) for s in scopes) for out in node.output}
    used = {name for node in model.graph.node if not any(node.name.startswith(s) for s in scopes)
            for name in node.input} | {o.name for o in model.graph.output}
    found = inside & used
    if not found:
        return found
    types = _value_types(model)
    return {name for name in found if types.get(name) == 1}  # onnx.TensorProto.FLOAT


def _value_types(model: Any) -> dict[str, int]:
    """Each value's element type, by ONNX's shape inference on the graph without its weights (their types kept)."""
    import onnx

    graph = onnx.GraphProto()
    graph.CopyFrom(model.graph)
    del graph.initializer[:]
    graph.input.extend(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
                       for init in model.graph.initializer)
    try:
        inferred = onnx.shape_inference.infer_shapes(onnx.helper.make_model(graph, opset_imports=model.opset_import))
    except Exception:  # onnx raises its own types; nothing typed is then found, which fails as missing
        return {}
    return {value.name: value.type.tensor_type.elem_type for value in inferred.graph.value_info}


def onnx_proposals(model: Any) -> str | None:
    """The value carrying the RPN's proposals into the box head: the one tensor a node of the legacy
    exporter's `/roi_heads/box_roi_pool/` scope takes from a node of the `/rpn/` scope (None if not one)."""
    made_by = {out: node.name for node in model.graph.node for out in node.output}
    found = {name for node in model.graph.node if node.name.startswith(PROPOSAL_CONSUMER) for name in node.input
             if made_by.get(name, "").startswith(PROPOSAL_PRODUCER)}
    return found.pop() if len(found) == 1 else None


def _with_outputs(model: Any, names: list[str], types: dict[str, int] | None = None) -> Any:
    """A copy of `model` with `names` as graph outputs too, float unless `types` says otherwise."""
    import copy

    import onnx

    extended = copy.deepcopy(model)
    present = {o.name for o in extended.graph.output}
    for name in names:
        if name not in present:
            extended.graph.output.append(onnx.helper.make_tensor_value_info(
                name, (types or {}).get(name, onnx.TensorProto.FLOAT), None))
    return extended
