"""Find the first module, in execution order, whose output differs beyond rounding.

Torch models: forward hooks record every module's output (per call) in float64 on both sides.
ONNX against its source model: each module's last ONNX node (mapped back through the dynamo
exporter's `name_scopes` metadata or the legacy exporter's scoped node names) becomes a graph
output; ORT's float32 values are judged against the model's float64 ones, module by module,
with each module's own float32 noise floor.
"""

from __future__ import annotations

import ast
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from verify.structure import canonical_modules, fold_partner, type_name

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

EQUIVALENCE_RTOL = 1e-10
"""float64 outputs closer than this (relative to the output's scale) are the same function.
float64 rounding in a ResNet-50 stays near 1e-15 relative (float32's measured 2e-6 scaled by
2^-29); a real change such as eps 1e-5 -> 0 or a 1e-6 weight edit is 1e-7 or more."""


@dataclass
class Divergence:
    module: str
    call: int
    max_abs: float
    max_rel: float
    ratio: float | None = None
    """For ONNX: error over that module's float32 noise floor."""
    fused_with: list[str] = field(default_factory=list)
    """Modules the ONNX graph computes in the same node (e.g. a norm folded into its conv)."""


def record_outputs(model: nn.Module, x: torch.Tensor, prefix: str = "") -> list[tuple[str, int, Any]]:
    """(canonical name, call index, output) for every module call, in execution order."""
    import torch

    names = {id(m): n for n, m in canonical_modules(model, prefix).items()}
    records: list[tuple[str, int, Any]] = []
    calls: Counter = Counter()

    def hook(module, _inputs, output):
        name = names.get(id(module))
        if name is not None and isinstance(output, torch.Tensor):
            records.append((name, calls[name], output.detach().clone()))
            calls[name] += 1

    handles = [m.register_forward_hook(hook) for m in model.modules() if id(m) in names]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return records


def _rel(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    scale = float(b.abs().max()) if b.numel() else 0.0
    return diff, (diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf")))


def first_divergence_torch(a: nn.Module, a_prefix: str, b: nn.Module, b_prefix: str,
                           x: torch.Tensor) -> Divergence | None:
    """Both models in float64 on `x` (float64): the first module call whose outputs differ by
    more than EQUIVALENCE_RTOL. Convolutions whose norm is folded on one side are judged at
    the norm instead, where both sides compute the same quantity."""
    records_a = record_outputs(a, x, a_prefix)
    records_b = {(n, c): t for n, c, t in record_outputs(b, x, b_prefix)}
    types_a, types_b = canonical_modules(a, a_prefix), canonical_modules(b, b_prefix)
    folded = {fold_partner(n, types_a if type_name(types_a[n]) == "Identity" else types_b) for n in types_a
              if n in types_b and "Identity" in (type_name(types_a[n]), type_name(types_b[n]))}
    for name, call, out in records_a:
        other = records_b.get((name, call))
        if other is None or other.shape != out.shape or name in folded:
            continue
        max_abs, max_rel = _rel(out, other)
        if max_rel > EQUIVALENCE_RTOL:
            return Divergence(name, call, max_abs, max_rel)
    return None


# ---------------------------------------------------------------- ONNX against its source model

def onnx_node_module(node: Any, module_names: set[str]) -> str | None:
    """The source module a node came from, from either exporter's scope records."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":  # dynamo: ['', 'layer1', 'layer1.0', ..., op]
            scopes = [s for s in ast.literal_eval(prop.value)[:-1] if s]
            for scope in reversed(scopes):
                if scope in module_names:
                    return scope
            return None
    if node.name.startswith("/"):  # legacy: /layer1/layer1.0/conv1/Conv, /layer1/layer1.0/relu_1/Relu
        path: list[str] = []
        for segment in node.name.strip("/").split("/")[:-1]:
            if path and segment.startswith(path[-1] + "."):  # a Sequential's child: layer1 -> layer1.0
                path[-1] = segment
            else:
                path.append(segment)
        while path:
            name = ".".join(path)
            stem = name.rsplit("_", 1)[0] if name.rsplit("_", 1)[-1].isdigit() else name
            for candidate in (name, stem):
                if candidate in module_names:
                    return candidate
            path.pop()
    return None


def onnx_module_values(model_path: Path, module_names: set[str]) -> dict[str, str]:
    """module -> the ONNX value its last node produces (modules that map to one node run)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    last: dict[str, str] = {}
    for node in graph.node:
        module = onnx_node_module(node, module_names)
        while module:
            last[module] = node.output[0]
            module = module.rsplit(".", 1)[0] if "." in module else ""
    return last


def first_divergence_onnx(model_path: Path, input_name: str, x: np.ndarray, source: nn.Module,
                          prefix: str, factor: float) -> Divergence | None:
    """Run the ONNX file with each mapped module value exposed; the first module (in the
    source's execution order) whose value is off by more than `factor` times that module's
    own float32 noise floor, trying the next module too where a norm was folded into a conv."""
    import copy

    import numpy as np
    import torch

    from verify.oracle import noise_floors

    fp64 = record_outputs(copy.deepcopy(source).double(), torch.from_numpy(x).double(), prefix)
    fp32 = {(n, c): t for n, c, t in record_outputs(source, torch.from_numpy(x), prefix)}
    reused = {n for n, c, _ in fp64 if c > 0}  # e.g. a block's shared ReLU: no single ONNX value
    order = [(n, t) for n, c, t in fp64 if n not in reused]
    values = onnx_module_values(model_path, {n for n, _ in order})
    if not any(n in values for n, _ in order):
        return None
    got = _run_with_intermediates(model_path, input_name, x, {values[n] for n, _ in order if n in values})
    modules = canonical_modules(source, prefix)
    for i, (name, ref64) in enumerate(order):
        if name not in values:
            continue
        value = got[values[name]]
        # the exporter may fold the next module (a norm) into this node, or this node may carry
        # the modules just before it that have no node of their own (a conv folded into its norm)
        candidates = [(name, ref64)] + ([order[i + 1]] if i + 1 < len(order) else [])
        best = None
        for cand_name, cand64 in candidates:
            if tuple(cand64.shape) != value.shape:
                continue
            ref = cand64.numpy()
            floor = noise_floors({"o": fp32[(cand_name, 0)].numpy()}, {"o": ref})["o"]
            max_abs, max_rel = _rel(torch.from_numpy(value.astype(np.float64)), torch.from_numpy(ref))
            if best is None or max_abs / floor < best.ratio:
                best = Divergence(name, 0, max_abs, max_rel, max_abs / floor)
        if best is not None and best.ratio is not None and best.ratio > factor:
            group = [name]
            j = i - 1
            while j >= 0 and order[j][0] not in values and not list(modules[order[j][0]].children()):
                group.insert(0, order[j][0])
                j -= 1
            best.module, best.fused_with = group[0], group[1:]
            return best
    return None


def _run_with_intermediates(model_path: Path, input_name: str, x: np.ndarray,
                            names: set[str]) -> dict[str, np.ndarray]:
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    existing = {o.name for o in model.graph.output}
    for name in sorted(names - existing):
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {input_name: x})))
