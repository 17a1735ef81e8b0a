"""Sweep 49: torchvision classifiers and blocks as users' models (tests/data/sweep49_models.py), each exported at the
default settings by both ONNX exporters (`verify export --model ...`, a fresh process each), then one-layer bugs seeded
in its ONNX and .pt2 files, judged by `verify compare MODEL FILE` and `verify explain MODEL FILE --isolate`.

    python bench/sweep49_models.py export [--models vit swin ...] [--log bench/results/sweep49-cpu.log]
    python bench/sweep49_models.py bugs [--models ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "tests" / "data" / "sweep49_models.py"
MODELS = ["efficientnet_b0", "regnet_x_400mf", "regnet_y_400mf", "convnext_tiny", "shufflenet_v2", "squeezenet",
          "densenet121", "mnasnet", "googlenet", "vit", "swin"]
SHAPE = "1x3x32x32"
WORK = Path(os.environ.get("SWEEP49_WORK", "/tmp/s49"))


def verify(*args: str) -> tuple[int, float, str]:
    start = time.perf_counter()
    done = subprocess.run([str(Path(sys.executable).with_name("verify")), *args], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return done.returncode, time.perf_counter() - start, done.stdout + done.stderr


def summary(report: Path) -> dict:
    data = json.loads(report.read_text())
    ratios = [(o.get("ratio") or 0.0, f"{pair.get('a')} vs {pair.get('b')} {o.get('name')}")
              for pair in data.get("pairs", []) for o in pair.get("outputs", [])]
    layers = [(layer["ratio"], f"{check.get('candidate')}:{layer['module']}")
              for check in data.get("layers", []) for layer in check.get("layers", [])]
    return {"passed": data.get("passed"), "outputs": max(ratios, default=(0.0, "")),
            "layers": max(layers, default=(0.0, "")), "problems": data.get("problems", [])}


def export(names: list[str], log, exporters: list[str], source: Path = SOURCE, shape_of=lambda name: SHAPE,
           work: Path = WORK) -> None:
    """`verify export --model source:name` of each model by each exporter (again with --static where the tool says a
    size is fixed in the file), one log line each: exit, worst output and layer ratios."""
    from verify.judge.compare import AUTO_FACTOR

    for name in names:
        for exporter in exporters:
            out = work / f"{name}-{exporter}"
            report = work / f"{name}-{exporter}.json"
            args = ["export", "--model", f"{source}:{name}", "--shape", shape_of(name), "--no-cache", "--overwrite",
                    "--out", str(out), "--json", str(report), "--onnx-exporter", exporter]
            if exporter == "torchscript":
                args += ["--format", "onnx"]
            code, seconds, text = verify(*args)
            if code in (1, 2) and "--static" in text:  # a size fixed in the file: the tool says so, exit 1 or 2
                code, seconds, text = verify(*args, "--static")
                args.append("--static")
            line = f"{name} {exporter}{' static' if '--static' in args else ''}: exit {code}, {seconds:.0f} s"
            if report.exists():
                s = summary(report)
                line += (f", worst output {s['outputs'][0]:.2f}x ({s['outputs'][1]}), worst layer "
                         f"{s['layers'][0]:.2f}x ({s['layers'][1]}), factor {AUTO_FACTOR}")
            if code != 0:
                line += " | " + " / ".join(text.strip().splitlines()[-6:])[:900]
            print(line, file=log, flush=True)


SCALE = 1.001
"""The seeded weight error: one output channel of one layer's weight 0.1 % off."""


def onnx_weights(model) -> list[tuple[str, str, str]]:
    """(node name, op type, weight initializer) of every Conv/Gemm whose weight is an initializer, in graph order."""
    inits = {init.name for init in model.graph.initializer}
    return [(n.name, n.op_type, n.input[1]) for n in model.graph.node
            if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1 and n.input[1] in inits]


def onnx_bugs(path: Path, dest: Path) -> list[tuple[str, Path]]:
    """Seeded copies of an ONNX file: a weight channel x SCALE at 30 % and 70 % depth, a Conv's pads shifted by one,
    a LayerNormalization's epsilon x1000, a Sigmoid swapped for a HardSigmoid, a Gelu made tanh."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    cases = []
    model = onnx.load(str(path))
    found = onnx_weights(model)
    rng = np.random.default_rng(0)
    for depth in (0.3, 0.7):
        node, op, weight = found[int(depth * (len(found) - 1))]
        m = onnx.load(str(path))
        init = next(i for i in m.graph.initializer if i.name == weight)
        array = numpy_helper.to_array(init).copy()
        if op == "MatMul":  # x @ W: an output channel is a column
            channel = int(rng.integers(array.shape[-1]))
            array[..., channel] *= SCALE
        else:
            channel = int(rng.integers(array.shape[0]))
            array[channel] *= SCALE
        init.CopyFrom(numpy_helper.from_array(array, init.name))
        cases.append((f"w{int(depth * 100)} {node}[{channel}]", m))

    def edit(label, pick, change):
        m = onnx.load(str(path))
        nodes = [n for n in m.graph.node if pick(n)]
        if nodes:
            n = nodes[len(nodes) // 2]
            change(m, n)
            cases.append((f"{label} {n.name}", m))

    def shift(m, n):
        a = next(a for a in n.attribute if a.name == "pads")
        pads = list(a.ints)
        pads[0] += 1
        pads[2] -= 1
        a.ints[:] = pads

    def has_pads(n):
        return n.op_type == "Conv" and any(a.name == "pads" and a.ints[0] >= 1 and a.ints[0] == a.ints[2]
                                           for a in n.attribute)

    def eps(m, n):
        for a in n.attribute:
            if a.name == "epsilon":
                a.f *= 1000
                return
        n.attribute.append(helper.make_attribute("epsilon", 1e-2))

    def hsig(m, n):
        n.op_type = "HardSigmoid"

    def tanh(m, n):
        for a in list(n.attribute):
            n.attribute.remove(a)
        n.attribute.append(helper.make_attribute("approximate", "tanh"))

    edit("pads", has_pads, shift)
    edit("eps", lambda n: n.op_type == "LayerNormalization", eps)
    edit("hardsigmoid", lambda n: n.op_type == "Sigmoid", hsig)
    edit("gelu-tanh", lambda n: n.op_type == "Gelu", tanh)
    out = []
    for i, (label, m) in enumerate(cases):
        file = dest.with_name(f"{dest.stem}-{i}.onnx")
        onnx.save(m, str(file))
        out.append((label, file))
    return out


def pt2_bugs(path: Path, dest: Path) -> list[tuple[str, Path]]:
    """Seeded copies of a .pt2: a weight channel x SCALE of a conv/linear at 30 % and 70 % depth (its state_dict)."""
    import numpy as np
    import torch

    out = []
    state = torch.export.load(str(path)).state_dict
    names = [k for k, v in state.items() if k.endswith("weight") and v.dim() in (2, 4)]
    rng = np.random.default_rng(0)
    for i, depth in enumerate((0.3, 0.7)):
        ep = torch.export.load(str(path))
        name = names[int(depth * (len(names) - 1))]
        channel = int(rng.integers(ep.state_dict[name].shape[0]))
        with torch.no_grad():
            ep.state_dict[name][channel] *= SCALE
        file = dest.with_name(f"{dest.stem}-{i}.pt2")
        torch.export.save(ep, str(file))
        out.append((f"w{int(depth * 100)} {name}[{channel}]", file))
    return out


def isolated(report: Path) -> str:
    data = json.loads(report.read_text())
    for check in data.get("isolated", []) or []:
        named = check.get("named") or []
        if named:
            first = named[0]
            ratio = next((layer["ratio"] for layer in check.get("layers", []) if layer["module"] == first), 0.0)
            return f"{first} {ratio:.0f}x"
    return "nothing named"


def bugs(names: list[str], log, explain: bool, exporters: list[str]) -> None:
    for name in names:
        spec = f"{SOURCE}:{name}"
        for exporter in exporters:
            folder = WORK / f"{name}-{exporter}"
            files = {p.suffix: p for p in folder.rglob("model.*")}
            cases = onnx_bugs(files[".onnx"], WORK / "bugs" / f"{name}-{exporter}")
            if exporter == "dynamo" and ".pt2" in files:
                cases += pt2_bugs(files[".pt2"], WORK / "bugs" / f"{name}-pt2")
            for label, file in cases:
                print(f"{name} {exporter} {file.suffix} {label}: {judge_case(spec, file, SHAPE, explain, WORK)}",
                      file=log, flush=True)


def judge_case(spec: str, file: Path, shape: str, explain: bool, work: Path) -> str:
    """`verify compare spec file` (and `verify explain --isolate` with `explain`) on one seeded file: its exit, the
    outputs' and layers' worst ratios and the layer named first, as one log line's text."""
    out = work / "bugs" / f"{file.name}.json"
    code, seconds, text = verify("compare", spec, str(file), "--shape", shape, "--json", str(out))
    line = f"compare exit {code} {seconds:.0f} s"
    if out.exists():
        s = summary(out)
        line += f", outputs {s['outputs'][0]:.1f}x, layers {s['layers'][0]:.1f}x ({s['layers'][1]})"
        line += f", isolated first: {isolated(out)}"
    if code not in (0, 1):
        line += " | " + " / ".join(text.strip().splitlines()[-4:])[:600]
    if explain:
        eout = work / "bugs" / f"{file.name}.explain.json"
        code, seconds, text = verify("explain", spec, str(file), "--shape", shape, "--isolate", "--json", str(eout))
        first = next((ln for ln in text.splitlines() if ln.strip().startswith("•")), "")
        line += f"; explain --isolate exit {code} {seconds:.0f} s: {first.strip()[:160]}"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["export", "bugs"])
    parser.add_argument("--explain", action="store_true")
    parser.add_argument("--exporters", nargs="+", default=["dynamo", "torchscript"])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--log", type=Path, default=None)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    log = open(args.log, "a", encoding="utf-8") if args.log else sys.stdout
    (WORK / "bugs").mkdir(exist_ok=True)
    if args.what == "export":
        export(args.models, log, args.exporters)
    else:
        bugs(args.models, log, args.explain, args.exporters)


if __name__ == "__main__":
    main()
