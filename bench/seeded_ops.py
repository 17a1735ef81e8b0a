"""Seeded operator bugs (sweep 27d): export bugs of other kinds than a weight off by 0.1 %, each in ONE node of a
correct ONNX file, judged as a user would: `verify compare <model> <edited.onnx> --layers --json` (a fresh process
each), beside the clean file as the control.

bench/model_bugs.py measured seeded weight errors only. Real export bugs are an operator whose attributes or
semantics differ from the model's: a BatchNormalization epsilon, a Resize's coordinate mode, a Conv's pads shifted
by one, an activation's constant, a Softmax axis, a tensor rounded to float16. For each, this records the exit
code, the outputs' worst ratio (and whether the outputs alone fail: `verify compare` without `--layers`), the
layer named first and whether it is the edited node's layer (or the node lies outside every layer, where only
the outputs judge it), and the wall time.

    python bench/seeded_ops.py [--subjects resnet18 fpn ...] [--only WORD ...] [--json rows.json]
        [--log bench/results/seeded-ops-cpu.log]     # the whole table: about 12 minutes on 2 shared cores

Models: resnet18 and mobilenet_v3_small (registered, batch norm, body view, 64 px) and users' models written below
(an FPN with nn.Upsample, F.interpolate, a BatchNorm after an add, a ReLU6 and pools, by both ONNX exporters;
convnext_tiny's features at 64 px, at torchvision's init and with a trained-like layer scale; a ViT-ish block at 32
px), the convnexts and the block at opset 20 so that GELU is one `Gelu` node. Every BatchNorm of resnet18 and
mobilenet_v3_small is folded into its conv by both exporters: the epsilon edit is the FPN's norm after an add.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = '''
import torch
import torchvision
from torch import nn
import torch.nn.functional as F


class FPN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.LeakyReLU(0.1))
        self.c2 = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU6())
        self.c3 = nn.Sequential(nn.Conv2d(32, 64, 3, 1, 2, dilation=2), nn.ReLU())
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.avg = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.lat2 = nn.Conv2d(32, 32, 1)
        self.lat3 = nn.Conv2d(64, 32, 1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.norm = nn.BatchNorm2d(32)
        self.head = nn.Conv2d(32, 8, 3, 1, 1)

    def forward(self, x):
        c2 = self.c2(self.stem(x))
        p3 = self.lat3(self.c3(self.pool(c2)))
        p2 = self.norm(self.lat2(self.avg(c2)) + self.up(p3))
        out = self.head(p2)
        return {"p2": out, "p3": F.interpolate(p3, size=out.shape[-2:], mode="nearest")}


def fpn():
    torch.manual_seed(0)
    model = FPN()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.05)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def convnext():
    torch.manual_seed(0)
    return torchvision.models.convnext_tiny(weights=None).features.eval()


def convnext_ls():
    """convnext with a trained-like layer scale (0.5 for torchvision's 1e-6 init): each block's residual counts."""
    model = convnext()
    for name, p in model.named_parameters():
        if name.endswith("layer_scale"):
            p.data.fill_(0.5)
    return model


class Block(nn.Module):
    def __init__(self, dim=32, heads=4):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 8, 8)
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(2 * dim, dim)
        self.hsig = nn.Hardsigmoid()
        self.gate = nn.Linear(dim, dim)
        self.heads = heads

    def forward(self, x):
        x = self.patch(x)
        n, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        q, k, v = self.qkv(self.norm1(t)).chunk(3, dim=-1)
        d = c // self.heads
        q, k, v = (z.reshape(n, -1, self.heads, d).transpose(1, 2) for z in (q, k, v))
        a = torch.softmax(q @ k.transpose(-2, -1) * d ** -0.5, dim=-1)
        t = t + self.proj((a @ v).transpose(1, 2).reshape(n, -1, c))
        t = t + self.fc2(self.act(self.fc1(self.norm2(t))))
        t = t * self.hsig(self.gate(t.mean(dim=1, keepdim=True)))
        return t.transpose(1, 2).reshape(n, c, h, w)


def vit():
    torch.manual_seed(0)
    return Block().eval()
'''


def subjects(models: Path) -> dict[str, dict]:
    """name -> the compare spec, input shape and `verify export` arguments of each model."""
    user = lambda name, size, *extra: {  # noqa: E731
        "spec": f"{models}:{name}", "shape": f"1x3x{size}x{size}",
        "export": ["--model", f"{models}:{name}", "--static", *extra]}
    return {
        "resnet18": {"spec": "resnet18:batch:body", "shape": "1x3x64x64",
                     "export": ["-b", "resnet18", "--norm", "batch"]},
        "mobilenet_v3_small": {"spec": "mobilenet_v3_small:batch:body", "shape": "1x3x64x64",
                               "export": ["-b", "mobilenet_v3_small", "--norm", "batch"]},
        "fpn": user("fpn", 64),
        "fpn-legacy": user("fpn", 64, "--onnx-exporter", "torchscript"),
        "convnext": user("convnext", 64, "--opset", "20"),
        "convnext-ls": user("convnext_ls", 64, "--opset", "20"),
        "vit": user("vit", 32, "--opset", "20"),
    }


# --- graph edits: each changes ONE node (or puts two Casts after one) and returns the edited node -------------

def scope_of(node) -> str:
    """The module the node is under: dynamo's name scopes, else the legacy exporter's /a/a.b/Op name ('' outside)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            scopes = ast.literal_eval(prop.value)
            return scopes[-2] if len(scopes) > 2 else ""
    parts = node.name.split("/")[1:-1]
    return parts[-1] if parts else ""


def find(model, op: str, where: str = ""):
    """The first node of type `op` whose module is `where` (or ends with it); '' matches any."""
    for node in model.graph.node:
        if node.op_type == op and (not where or scope_of(node) == where or scope_of(node).endswith(where)):
            return node
    raise LookupError(f"no {op} node under {where!r}")


def set_attr(node, name: str, value) -> None:
    from onnx import helper

    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept + [helper.make_attribute(name, value)])


def own_const(model, node, slot: int):
    """(numpy value, setter) of the constant `node` reads at input `slot`, copied under a name of its own first: an
    exporter shares one initializer between nodes (every SE block's ReduceMean axes), and the edit is one node's."""
    from onnx import numpy_helper

    array, _ = const(model, node.input[slot])
    name = f"{node.input[slot]}_seeded_{node.name}"
    model.graph.initializer.append(numpy_helper.from_array(array, name))
    node.input[slot] = name
    return const(model, name)


def const(model, name: str):
    """(numpy value, setter) of an initializer or Constant node output."""
    from onnx import numpy_helper

    for index, init in enumerate(model.graph.initializer):
        if init.name == name:
            def put(array, index=index, name=name):
                model.graph.initializer[index].CopyFrom(numpy_helper.from_array(array, name))
            return numpy_helper.to_array(init).copy(), put
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            attr = next(a for a in node.attribute if a.name == "value")

            def put(array, attr=attr):
                attr.t.CopyFrom(numpy_helper.from_array(array))
            return numpy_helper.to_array(attr.t).copy(), put
    raise LookupError(f"no constant {name}")


def add_after(model, node, make):
    """Insert nodes after `node`: make(input_name, output_name) -> nodes; they keep the node's scope."""
    original = node.output[0]
    node.output[0] = original + "_seeded"
    new = make(node.output[0], original)
    for extra in new:
        extra.metadata_props.extend(node.metadata_props)
    position = list(model.graph.node).index(node)
    for offset, extra in enumerate(new):
        model.graph.node.insert(position + 1 + offset, extra)


def fp16_roundtrip(model, node):
    from onnx import TensorProto, helper

    add_after(model, node, lambda src, dst: [
        helper.make_node("Cast", [src], [dst + "_half"], to=TensorProto.FLOAT16, name=node.name + "_cast16"),
        helper.make_node("Cast", [dst + "_half"], [dst], to=TensorProto.FLOAT, name=node.name + "_cast32")])


def attr_edit(op, where, name, value):
    def edit(model):
        node = find(model, op, where)
        set_attr(node, name, value)
        return node
    return edit


def const_edit(op, where, slot, change):
    def edit(model):
        node = find(model, op, where)
        array, put = own_const(model, node, slot)
        put(change(array).astype(array.dtype))
        return node
    return edit


def shift_pads(op, where):
    """A pad moved from top to bottom: the same output size, the map shifted by one row."""
    def edit(model):
        from onnx import helper

        node = find(model, op, where)
        pads = list(next(helper.get_attribute_value(a) for a in node.attribute if a.name == "pads"))
        pads[0], pads[2] = pads[0] - 1, pads[2] + 1
        set_attr(node, "pads", pads)
        return node
    return edit


def dilate(op, where, dilation, pad):
    def edit(model):
        node = find(model, op, where)
        set_attr(node, "dilations", [dilation, dilation])
        set_attr(node, "pads", [pad] * 4)
        return node
    return edit


def drop_bias(where):
    def edit(model):
        node = find(model, "Conv", where)
        del node.input[2]
        return node
    return edit


def cast_after(op, where):
    def edit(model):
        node = find(model, op, where)
        fp16_roundtrip(model, node)
        return node
    return edit


def hardswish_as_hardsigmoid(where):
    """HardSwish written as x * HardSigmoid(alpha 0.2): the classic 1/6 -> 0.2 slip."""
    def edit(model):
        from onnx import helper

        node = find(model, "HardSwish", where)
        node.op_type = "HardSigmoid"
        set_attr(node, "alpha", 0.2)
        set_attr(node, "beta", 0.5)
        source = node.input[0]
        add_after(model, node, lambda src, dst: [helper.make_node("Mul", [source, src], [dst], name=node.name + "_x")])
        return node
    return edit


def clip_max(where, value):
    def edit(model):
        node = find(model, "Clip", where)
        array, put = own_const(model, node, 2)
        put(array * 0 + value)
        return node
    return edit


CASES: dict[str, list[tuple[str, object]]] = {
    "resnet18": [
        ("Conv pads top->bottom (layer1.0.conv1)", shift_pads("Conv", "layer1.0.bn1")),
        ("Conv dilations 1->2, pads 2 (layer3.0.conv2)", dilate("Conv", "layer3.0.bn2", 2, 2)),
        ("Conv bias dropped (layer2.0.conv2+bn2)", drop_bias("layer2.0.bn2")),
        ("MaxPool ceil_mode 0->1 (maxpool)", attr_edit("MaxPool", "maxpool", "ceil_mode", 1)),
        ("Cast fp16 round trip after Conv (layer2.1.conv1)", cast_after("Conv", "layer2.1.bn1")),
        ("Cast fp16 round trip after Relu (layer4.1.relu)", cast_after("Relu", "layer4.1.relu")),
    ],
    "mobilenet_v3_small": [
        ("HardSigmoid alpha 1/6->0.2 (SE 4.block.2)", attr_edit("HardSigmoid", "4.block.2.scale_activation",
                                                               "alpha", 0.2)),
        ("HardSwish -> x*HardSigmoid(0.2) (4.block.0)", hardswish_as_hardsigmoid("4.block.0.2")),
        ("ReduceMean axes [2,3]->[3] (SE 4.block.2.avgpool)", const_edit("ReduceMean", "4.block.2.avgpool", 1,
                                                                           lambda a: a[1:])),
        ("Conv pads top->bottom (depthwise 4.block.1)", shift_pads("Conv", "4.block.1.1")),
        ("Cast fp16 round trip after Conv (SE 4.block.2.fc1)", cast_after("Conv", "4.block.2.fc1")),
    ],
    "fpn": [
        ("BatchNormalization epsilon 1e-5->0 (norm)", attr_edit("BatchNormalization", "norm", "epsilon", 0.0)),
        ("BatchNormalization epsilon 1e-5->1e-3 (norm)", attr_edit("BatchNormalization", "norm", "epsilon", 1e-3)),
        ("Resize half_pixel->align_corners (up)", attr_edit("Resize", "up", "coordinate_transformation_mode",
                                                            "align_corners")),
        ("Resize half_pixel->asymmetric (up)", attr_edit("Resize", "up", "coordinate_transformation_mode",
                                                         "asymmetric")),
        ("Resize linear->nearest (up)", attr_edit("Resize", "up", "mode", "nearest")),
        ("Resize nearest_mode floor->round_prefer_floor (F.interpolate)",
         lambda m: _nearest(m, "round_prefer_floor")),
        ("Resize nearest_mode floor->round_prefer_ceil (F.interpolate)", lambda m: _nearest(m, "round_prefer_ceil")),
        ("Conv pads top->bottom (head)", shift_pads("Conv", "head")),
        ("Conv dilations 2->1, pads 1 (c3.0)", dilate("Conv", "c3.0", 1, 1)),
        ("Conv bias dropped (lat2)", drop_bias("lat2")),
        ("AveragePool count_include_pad 0->1 (avg)", attr_edit("AveragePool", "avg", "count_include_pad", 1)),
        ("MaxPool ceil_mode 1->0 (pool)", attr_edit("MaxPool", "pool", "ceil_mode", 0)),
        ("LeakyRelu alpha 0.1->0.2 (stem.2)", attr_edit("LeakyRelu", "stem.2", "alpha", 0.2)),
        ("Clip max 6->6.5 (c2.1 ReLU6)", clip_max("c2.1", 6.5)),
        ("Clip max 6->1 (c2.1 ReLU6)", clip_max("c2.1", 1.0)),
        ("Cast fp16 round trip after Conv (lat3)", cast_after("Conv", "lat3")),
    ],
    "fpn-legacy": [
        ("BatchNormalization epsilon 1e-5->0 (norm)", attr_edit("BatchNormalization", "norm", "epsilon", 0.0)),
        ("Resize half_pixel->align_corners (up)", attr_edit("Resize", "up", "coordinate_transformation_mode",
                                                            "align_corners")),
        ("LeakyRelu alpha 0.1->0.2 (stem.2)", attr_edit("LeakyRelu", "stem.2", "alpha", 0.2)),
        ("Conv pads top->bottom (head)", shift_pads("Conv", "head")),
    ],
    "convnext": [
        ("Gelu approximate none->tanh (3.0.block.4)", attr_edit("Gelu", "3.0.block.4", "approximate", "tanh")),
        ("LayerNormalization axis -1->-2 (3.0.block.2)", attr_edit("LayerNormalization", "3.0.block.2", "axis", -2)),
        ("LayerNormalization epsilon 1e-6->1e-5 (3.0.block.2)", attr_edit("LayerNormalization", "3.0.block.2",
                                                                            "epsilon", 1e-5)),
        ("Transpose perm NHWC->NWHC (3.0.block.1)", attr_edit("Transpose", "3.0.block.1", "perm", [0, 3, 2, 1])),
        ("Mul layer_scale x(1+1e-4) (3.0)", const_edit("Mul", "3.0", 0, lambda a: a * (1 + 1e-4))),
        ("Mul layer_scale x2 (3.0)", const_edit("Mul", "3.0", 0, lambda a: a * 2)),
        ("Cast fp16 round trip after LayerNormalization (3.0.block.2)", cast_after("LayerNormalization",
                                                                                   "3.0.block.2")),
        ("Conv pads top->bottom (depthwise 3.0.block.0)", shift_pads("Conv", "3.0.block.0")),
    ],
    "convnext-ls": [
        ("Mul layer_scale x2 (3.0)", const_edit("Mul", "3.0", 0, lambda a: a * 2)),
        ("LayerNormalization axis -1->-2 (3.0.block.2)", attr_edit("LayerNormalization", "3.0.block.2", "axis", -2)),
    ],
    "vit": [
        ("Gelu approximate none->tanh (act)", attr_edit("Gelu", "act", "approximate", "tanh")),
        ("HardSigmoid alpha 1/6->0.2 (hsig)", attr_edit("HardSigmoid", "hsig", "alpha", 0.2)),
        ("Softmax axis -1->-2 (attention, functional)", attr_edit("Softmax", "", "axis", -2)),
        ("LayerNormalization axis -1->-2 (norm1)", attr_edit("LayerNormalization", "norm1", "axis", -2)),
        ("ReduceMean keepdims 1->0 (functional mean)", attr_edit("ReduceMean", "", "keepdims", 0)),
        ("Mul attention scale x(1+1e-4) (functional)", const_edit("Mul", "", 1, lambda a: a * (1 + 1e-4))),
        ("Cast fp16 round trip after Gelu (act)", cast_after("Gelu", "act")),
        ("Add bias x(1+1e-4) (fc1)", const_edit("Add", "fc1", 1, lambda a: a * (1 + 1e-4))),
    ],
}


def _nearest(model, mode):
    for node in model.graph.node:
        if node.op_type == "Resize" and any(a.name == "mode" and a.s == b"nearest" for a in node.attribute):
            set_attr(node, "nearest_mode", mode)
            return node
    raise LookupError("no nearest Resize")


# --- running ------------------------------------------------------------------------------------------------

def verify(*args: str) -> tuple[int, float, str]:
    """`verify ...` in a fresh process: (exit code, seconds, stderr's tail)."""
    start = time.perf_counter()
    done = subprocess.run([str(Path(sys.executable).with_name("verify")), *args], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return done.returncode, time.perf_counter() - start, (done.stdout + done.stderr)


def judged(report: Path) -> dict:
    """The verdict, the outputs' worst ratio, whether the outputs alone pass, the named layers."""
    data = json.loads(report.read_text())
    pairs = data.get("pairs", [])
    ratios = [o.get("ratio") or 0.0 for pair in pairs for o in pair.get("outputs", [])]
    reshaped = any(o.get("shape_a") != o.get("shape_b") for pair in pairs for o in pair.get("outputs", []))
    named = [n for check in data.get("layers", []) for n in check.get("named", [])]
    by_ratio = sorted((layer for check in data.get("layers", []) for layer in check.get("layers", [])),
                      key=lambda layer: -layer["ratio"])
    return {"passed": data.get("passed"), "outputs": max(ratios, default=0.0), "reshaped": reshaped,
            "outputs_pass": all(pair.get("passed") for pair in pairs),
            "named": named, "worst": by_ratio[0] if by_ratio else None,
            "outside": [o for check in data.get("layers", []) for o in check.get("outside", [])],
            "unrunnable": [u for check in data.get("layers", []) for u in check.get("unrunnable", [])],
            "modules": {name for check in data.get("layers", []) for layer in check.get("layers", [])
                        for name in [layer["module"], *(layer.get("fused_with") or [])]},
            "problems": data.get("problems", [])}


def same_outputs(clean: Path, edited: Path, shape: str) -> str:
    """Where a bug passed: do the two files differ at all on the verdict's own inputs (verify.inputs.seeded_inputs,
    seed 0, its default count)? 'identical' means no verdict on these inputs could see the edit."""
    import numpy as np
    import onnxruntime as ort

    from verify.inputs import seeded_inputs

    dims = [int(d) for d in shape.split("x")]
    worst = 0.0
    for item in seeded_inputs(dims, 0):
        x = np.asarray(item.array if hasattr(item, "array") else item[1], dtype=np.float32)
        outs = []
        for path in (clean, edited):
            options = ort.SessionOptions()
            options.log_severity_level = 3  # the edit's copied constant leaves the original unused: a warning
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            outs.append(session.run(None, {session.get_inputs()[0].name: x}))
        for a, b in zip(*outs):
            scale = float(np.abs(a).max()) or 1.0
            worst = max(worst, float(np.abs(a - b).max()) / scale)
    return "identical outputs on the verdict's inputs" if worst == 0.0 else f"outputs differ by {worst:.1e} of max|y|"


def first_named(result: dict) -> tuple[str, list[str], float]:
    """The layer named first (its module, the norms computed with it, its ratio), else the worst layer."""
    pick = result["named"][0] if result["named"] else None
    if isinstance(pick, str):
        pick = next((layer for layer in [result["worst"]] if layer and layer["module"] == pick), {"module": pick})
    if pick is None:
        pick = result["worst"] or {}
    return pick.get("module") or "-", list(pick.get("fused_with") or []), float(pick.get("ratio") or 0.0)


def run_subject(name: str, subject: dict, work: Path, only: list[str], log) -> list[dict]:
    import onnx

    out = work / name
    code, seconds, text = verify("export", *subject["export"], "--shape", subject["shape"], "--format", "onnx",
                                 "--samples", "1", "--no-layers", "--no-cache", "--out", str(out))
    clean = next(out.rglob("model.onnx"), None) if code == 0 else None
    if clean is None:
        print(f"{name}: export failed (exit {code}): {text[-300:]}", file=log, flush=True)
        return []
    cases = [("clean (control)", None, "")]
    for label, edit in CASES[name]:
        if only and not any(word.lower() in label.lower() for word in only):
            continue
        model = onnx.load(str(clean))
        try:
            node = edit(model)
        except LookupError as exc:
            print(f"{name} {label}: not seeded ({exc})", file=log, flush=True)
            continue
        del model.graph.value_info[:]  # shapes recorded for the correct graph: the edited one infers its own
        dest = work / f"{name}-{len(cases)}.onnx"
        onnx.save(model, str(dest))
        cases.append((f"{label} [{node.op_type} {node.name}]", dest, scope_of(node)))
    rows = []
    for label, path, scope in cases:
        report = work / f"{name}-report.json"
        report.unlink(missing_ok=True)
        code, seconds, text = verify("compare", subject["spec"], str(path or clean), "--shape", subject["shape"],
                                     "--layers", "--json", str(report))
        row = {"model": name, "bug": label, "node_layer": scope or "(no module)", "exit": code,
               "seconds": seconds}
        if report.exists():
            result = judged(report)
            module, fused, ratio = first_named(result)
            row.update(outputs=result["outputs"], outputs_fail=not result["outputs_pass"], named=len(result["named"]),
                       outputs_reshaped=result["reshaped"],
                       first=module + (f" (+{','.join(fused)})" if fused else ""), first_ratio=ratio,
                       at_node=bool(scope) and bool(result["named"]) and scope in [module, *fused],
                       rerun=bool(scope) and (scope in result["modules"] or scope in result["unrunnable"]),
                       problems=result["problems"][:1], unrunnable=result["unrunnable"])
        else:
            row.update(message=" ".join(text.strip().splitlines()[-2:])[-300:])
        if code == 0 and path is not None:
            row["same"] = same_outputs(clean, path, subject["shape"])
        if path is not None:
            path.unlink()  # a convnext file is 110 MB: the disk holds one edited copy at a time, not ten
        rows.append(row)
        if "outputs" in row:
            where = ("named first" if row["at_node"] else "could not run (another shape)"
                     if scope in row["unrunnable"] else "not first" if row["rerun"] and row["named"]
                     else "re-run, within its floor" if row["rerun"] else "no re-run layer: outputs only")
            outputs = "  shape" if row["outputs_reshaped"] else f"{row['outputs']:9.2f}x"
            line = (f"{name:18} {label:84} exit {code}  outputs {outputs:>10}"
                    f"{' (fail)' if row['outputs_fail'] else ' (pass)'}  first {row['first']} {row['first_ratio']:.1f}x"
                    f" [{row['named']} named; edited node in {row['node_layer']}: "
                    f"{where}]"
                    f"  {seconds:.1f} s")
            if row.get("same"):
                line += f"; {row['same']}"
            if row["unrunnable"]:
                line += f"; could not run: {row['unrunnable']}"
            if row["problems"] and code != 0:
                line += f"; {str(row['problems'][0])[:160]}"
        else:
            line = f"{name:18} {label:84} exit {code}, no report: {row['message']}  {seconds:.1f} s"
        print(line, file=log, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", nargs="+", default=list(CASES))
    parser.add_argument("--only", nargs="+", default=[], help="bug labels containing any of these words")
    parser.add_argument("--log", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="every row, as JSON")
    args = parser.parse_args()
    import torch

    logs = [sys.stdout] + ([open(args.log, "a", encoding="utf-8")] if args.log else [])

    class Tee:
        def write(self, text: str) -> None:
            for log in logs:
                log.write(text)

        def flush(self) -> None:
            for log in logs:
                log.flush()

    tee = Tee()
    print(f"# bench/seeded_ops.py {' '.join(sys.argv[1:])} (torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M')} UTC, 1 thread per process; verify compare MODEL FILE --layers)",
          file=tee, flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="seeded-ops-") as work:
        models = Path(work) / "models.py"
        models.write_text(MODELS, encoding="utf-8")
        for name in args.subjects:
            rows += run_subject(name, subjects(models)[name], Path(work), args.only, tee)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
