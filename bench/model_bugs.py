"""The bug side of the layer verdict for users' models (`--model`): seeded 0.1 % one-channel weight errors in the
ONNX file of torchvision architectures exported as a user's own model, each judged by `verify compare model.py:f
file.onnx --layers` as a user would run it (a fresh process each), beside the clean file as the control.

Sweep 21c measured the correct side (165 files of 17 architectures, none over 3.22x its own floor, README "Sweep
21c"); the layer verdict has been on by default for `--model` since then, its bug side calibrated on the registered
backbones only. This measures it on users' models: for each architecture, the outputs' worst ratio and the worst
layer's (and whether that layer is the seeded conv) for the clean file and each bug.

    python bench/model_bugs.py [--archs efficientnet_b0 regnet_x_400mf convnext_tiny] [--bugs 4] [--size 64]
        [--log bench/results/model-bugs-cpu.log]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FACTORIES = '''
import torch
import torchvision


def make(name):
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval()

'''
SCALE = 1.001
"""The seeded error: one output channel of one convolution's weight, 0.1 % off (as bench/calibrate_auto.py)."""


def verify(*args: str) -> tuple[int, float]:
    """`verify ...` in a fresh process: (exit code, seconds)."""
    start = time.perf_counter()
    done = subprocess.run([str(Path(sys.executable).with_name("verify")), *args], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode not in (0, 1):
        print(done.stderr[-800:], file=sys.stderr)
    return done.returncode, time.perf_counter() - start


def convs(path: Path) -> list[tuple[str, str]]:
    """(node name, weight initializer) of every Conv whose weight is an initializer, in graph order."""
    import onnx

    model = onnx.load(str(path))
    weights = {init.name for init in model.graph.initializer}
    return [(node.name, node.input[1]) for node in model.graph.node
            if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in weights]


def seeded(path: Path, weight: str, channel: int, dest: Path) -> None:
    """`path` with output channel `channel` of initializer `weight` scaled by SCALE, written to `dest`."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    for index, init in enumerate(model.graph.initializer):
        if init.name == weight:
            array = numpy_helper.to_array(init).copy()
            array[channel] *= SCALE
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(array, init.name))
    onnx.save(model, str(dest))


def judged(report: Path) -> dict:
    """The outputs' worst ratio, the worst layer (name, ratio) and the verdict of a `verify compare --json`."""
    data = json.loads(report.read_text())
    ratios = [o.get("ratio") or 0.0 for pair in data.get("pairs", []) for o in pair.get("outputs", [])]
    worst = max((layer for check in data.get("layers", []) for layer in check.get("layers", [])),
                key=lambda layer: layer["ratio"], default=None)
    return {"passed": data.get("passed"), "outputs": max(ratios, default=0.0),
            "layer": worst["module"] if worst else None, "layer_ratio": worst["ratio"] if worst else None,
            "problems": data.get("problems", [])}


def run_arch(arch: str, bugs: int, size: int, work: Path, log) -> None:
    import numpy as np

    models = work / "models.py"
    models.write_text(FACTORIES + f"def {arch}():\n    return make({arch!r})\n", encoding="utf-8")
    spec, shape = f"{models}:{arch}", f"1x3x{size}x{size}"
    out = work / arch
    code, seconds = verify("export", "--model", spec, "--shape", shape, "--format", "onnx", "--static", "--samples",
                           "1", "--no-layers", "--no-cache", "--out", str(out))
    onnx_file = next(out.rglob("model.onnx"), None) if code == 0 else None
    if onnx_file is None:
        print(f"{arch}: export failed (exit {code})", file=log, flush=True)
        return
    found = convs(onnx_file)
    rng = np.random.default_rng(0)
    picks = [found[int(i)] for i in np.linspace(0, len(found) - 1, bugs + 2)[1:-1].round()]
    cases = [("clean", onnx_file)]
    for node, weight in picks:
        import onnx
        from onnx import numpy_helper

        init = next(i for i in onnx.load(str(onnx_file)).graph.initializer if i.name == weight)
        channel = int(rng.integers(numpy_helper.to_array(init).shape[0]))
        dest = work / f"{arch}-{len(cases)}.onnx"
        seeded(onnx_file, weight, channel, dest)
        cases.append((f"{weight}[{channel}] ({node}) x{SCALE}", dest))
    for label, path in cases:
        report = work / f"{arch}-{label[:8]}.json"
        code, seconds = verify("compare", spec, str(path), "--shape", shape, "--layers", "--json", str(report))
        result = judged(report) if report.exists() else {"passed": None}
        print(f"{arch} {label}: exit {code}, outputs {result.get('outputs', 0):.2f}x, worst layer "
              f"{result.get('layer')} {result.get('layer_ratio') or 0:.1f}x, {seconds:.1f} s"
              + (f"; problems: {result['problems'][0][:120]}" if result.get("problems") else ""), file=log, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["efficientnet_b0", "regnet_x_400mf", "convnext_tiny"])
    parser.add_argument("--bugs", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--log", type=Path, default=None)
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
    when = time.strftime("%Y-%m-%d %H:%M")
    print(f"# bench/model_bugs.py {' '.join(sys.argv[1:])} (torch {torch.__version__}, {when} UTC, 1 thread per "
          f"process, {args.size} px, factor from verify/judge/compare.py AUTO_FACTOR)", file=tee)
    with tempfile.TemporaryDirectory(prefix="model-bugs-") as work:
        for arch in args.archs:
            run_arch(arch, args.bugs, args.size, Path(work), tee)


if __name__ == "__main__":
    main()
