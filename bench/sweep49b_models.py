"""Sweep 49b: dense-prediction and upsampling models as users' models (tests/data/sweep49b_models.py), each exported at
the default settings by both ONNX exporters (`verify export --model ...`, a fresh process each), then one-layer bugs
seeded in its ONNX and .pt2 files (a weight channel x1.001 at 30 % and 70 % depth, and edits of the upsampling itself:
a Resize's coordinate_transformation_mode, nearest_mode, mode or cubic coefficient, a ConvTranspose's pads shifted),
judged by `verify compare MODEL FILE` (and `verify explain MODEL FILE --isolate` with --explain).

    python bench/sweep49b_models.py export [--models unet_nearest fpn_odd ...] [--log bench/results/sweep49b-cpu.log]
    python bench/sweep49b_models.py bugs [--models ...] [--explain]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "tests" / "data" / "sweep49b_models.py"
MODELS = ["unet_nearest", "unet_bilinear", "unet_bilinear_ac", "unet_bicubic", "unet_convtranspose",
          "unet_convtranspose3", "unet_pixelshuffle", "unet_odd_nearest", "unet_odd_bilinear", "unet_odd_bilinear_ac",
          "unet_odd_convtranspose", "fpn", "fpn_odd", "fpn_odd_bilinear", "lraspp", "lraspp_out", "deeplabv3",
          "deeplabv3_out", "fcn"]
WORK = Path(os.environ.get("SWEEP49B_WORK", "/tmp/s49b"))
sys.path.insert(0, str(Path(__file__).parent))  # sweep 49's runner, beside this script
from sweep49_models import export, judge_case, pt2_bugs  # noqa: E402

SCALE = 1.001
"""The seeded weight error: one output channel of one layer's weight 0.1 % off."""


def shape(name: str) -> str:
    return "1x3x63x65" if "odd" in name else "1x3x64x64"





def _attr(node, name: str):
    return next((a for a in node.attribute if a.name == name), None)


def onnx_bugs(path: Path, dest: Path) -> list[tuple[str, Path]]:
    """Seeded copies of an ONNX file: a weight channel x SCALE at 30 % and 70 % depth, then upsampling edits."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    cases = []
    model = onnx.load(str(path))
    inits = {init.name for init in model.graph.initializer}
    found = [(n.name, n.op_type, n.input[1]) for n in model.graph.node
             if n.op_type in ("Conv", "ConvTranspose", "Gemm") and len(n.input) > 1 and n.input[1] in inits]
    rng = np.random.default_rng(0)
    for depth in (0.3, 0.7):
        node, op, weight = found[int(depth * (len(found) - 1))]
        m = onnx.load(str(path))
        init = next(i for i in m.graph.initializer if i.name == weight)
        array = numpy_helper.to_array(init).copy()
        axis = 1 if op == "ConvTranspose" else 0  # a transposed conv's weight is (in, out, kh, kw)
        channel = int(rng.integers(array.shape[axis]))
        index = (slice(None), channel) if axis else (channel,)
        array[index] *= SCALE
        init.CopyFrom(numpy_helper.from_array(array, init.name))
        cases.append((f"w{int(depth * 100)} {node}[{channel}]", m))

    def edit_all(label, pick, change):
        """A copy with the first node `pick` takes edited by `change` (skipped where `change` says it does nothing)."""
        nodes = [n.name for n in onnx.load(str(path)).graph.node if pick(n)]
        for name in nodes[:1]:
            m = onnx.load(str(path))
            n = next(n for n in m.graph.node if n.name == name)
            what = change(n)
            if what:
                cases.append((f"{label}{what} {n.name}", m))

    def resize_mode(n):
        a = _attr(n, "coordinate_transformation_mode")
        old = a.s.decode() if a else "half_pixel"
        new = {"half_pixel": "asymmetric", "pytorch_half_pixel": "asymmetric", "asymmetric": "half_pixel",
               "align_corners": "half_pixel"}[old]
        if a:
            n.attribute.remove(a)
        n.attribute.append(helper.make_attribute("coordinate_transformation_mode", new))
        return f" {old}->{new}"

    def nearest(n):
        mode = _attr(n, "mode")
        if mode is None or mode.s != b"nearest":
            return ""
        a = _attr(n, "nearest_mode")
        old = a.s.decode() if a else "round_prefer_floor"
        new = "round_prefer_ceil" if old == "floor" else "floor"
        if a:
            n.attribute.remove(a)
        n.attribute.append(helper.make_attribute("nearest_mode", new))
        return f" {old}->{new}"

    def mode(n):
        a = _attr(n, "mode")
        old = a.s.decode() if a else "nearest"
        new = {"nearest": "linear", "linear": "nearest", "cubic": "linear"}[old]
        if a:
            n.attribute.remove(a)
        n.attribute.append(helper.make_attribute("mode", new))
        return f" {old}->{new}"

    def cubic(n):
        mode = _attr(n, "mode")
        if mode is None or mode.s != b"cubic":
            return ""
        a = _attr(n, "cubic_coeff_a")
        old = a.f if a else -0.75
        if a:
            n.attribute.remove(a)
        n.attribute.append(helper.make_attribute("cubic_coeff_a", -0.5))
        return f" {old}->-0.5"

    def pads(n):
        a = _attr(n, "pads")
        if a is None or not any(a.ints):
            return ""
        p = list(a.ints)
        half = len(p) // 2
        if p[0] < 1:
            return ""
        p[0] -= 1
        p[half] += 1
        a.ints[:] = p
        return f" {list(a.ints)}"

    def is_resize(n):
        return n.op_type in ("Resize", "Upsample")

    edit_all("resize-coord", is_resize, resize_mode)
    edit_all("nearest_mode", is_resize, nearest)
    edit_all("resize-mode", is_resize, mode)
    edit_all("cubic_coeff_a", is_resize, cubic)
    edit_all("convT-pads", lambda n: n.op_type == "ConvTranspose", pads)
    out = []
    dest.parent.mkdir(parents=True, exist_ok=True)
    for i, (label, m) in enumerate(cases):
        file = dest.with_name(f"{dest.stem}-{i}.onnx")
        onnx.save(m, str(file))
        out.append((label, file))
    return out



def bugs(names: list[str], log, explain: bool, exporters: list[str], pt2: bool) -> None:
    for name in names:
        spec = f"{SOURCE}:{name}"
        for exporter in exporters:
            folder = WORK / f"{name}-{exporter}"
            files = {p.suffix: p for p in folder.rglob("model.*")}
            cases = onnx_bugs(files[".onnx"], WORK / "bugs" / f"{name}-{exporter}")
            if pt2 and exporter == "dynamo" and ".pt2" in files:
                cases += pt2_bugs(files[".pt2"], WORK / "bugs" / f"{name}-pt2")
            for label, file in cases:
                print(f"{name} {exporter} {file.suffix} {label}: "
                      f"{judge_case(spec, file, shape(name), explain, WORK)}", file=log, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["export", "bugs"])
    parser.add_argument("--explain", action="store_true")
    parser.add_argument("--no-pt2", action="store_true")
    parser.add_argument("--exporters", nargs="+", default=["dynamo", "torchscript"])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--log", type=Path, default=None)
    args = parser.parse_args()
    (WORK / "bugs").mkdir(parents=True, exist_ok=True)
    log = open(args.log, "a", encoding="utf-8") if args.log else sys.stdout
    if args.what == "export":
        export(args.models, log, args.exporters, SOURCE, shape, WORK)
    else:
        bugs(args.models, log, args.explain, args.exporters, not args.no_pt2)


if __name__ == "__main__":
    main()
