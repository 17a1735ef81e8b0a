"""The least that `verify export --norm frozen` has to do, written out bare: the baseline that
bench/bench_export.py holds the CLI against.

Builds ResNet-50 body (layer1..layer4, FrozenBatchNorm2d) with the same synthetic weights,
scripts it to TorchScript and saves it, exports ONNX with the same exporter settings and runs
onnx.checker, loads the TorchScript file back, runs eager, TorchScript and ONNX Runtime (CPU)
once on one seeded input and prints the max abs difference per output for each pair.
No float64 oracle, no goldens, no manifest, no progress display.

    python bench/bare_export.py [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from exporter.backbones import build_model
from exporter.spec import ModelSpec
from exporter.weights import load_weights

SEED = 0
SHAPE = (1, 3, 224, 224)
OUTPUTS = ["layer1", "layer2", "layer3", "layer4"]


def main(out: Path) -> None:
    start = time.perf_counter()
    spec = ModelSpec("resnet50", "frozen", "body")
    model = build_model(spec, load_weights("synthetic", "resnet50", SEED), SEED).model.eval()
    x = np.random.default_rng(SEED).standard_normal(SHAPE).astype(np.float32)
    example = torch.from_numpy(x)

    ts_path = out / "model.pt"
    torch.jit.save(torch.jit.script(model), str(ts_path))

    onnx_path = out / "model.onnx"
    dim = torch.export.Dim
    torch.onnx.export(
        model, (example,), str(onnx_path), dynamo=True, external_data=False,
        input_names=["input"], output_names=OUTPUTS, opset_version=18,
        dynamic_shapes=({0: dim("batch"), 2: dim("height"), 3: dim("width")},),
    )
    onnx.checker.check_model(str(onnx_path), full_check=True)

    scripted = torch.jit.load(str(ts_path), map_location="cpu").eval()
    with torch.inference_mode():
        eager = {k: v.numpy() for k, v in model(example).items()}
        ts = {k: v.numpy() for k, v in scripted(example).items()}
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ort_out = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": x})))

    runs = {"eager": eager, "torchscript": ts, "onnxruntime": ort_out}
    names = list(runs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            diffs = ", ".join(f"{k} {float(np.abs(runs[a][k] - runs[b][k]).max()):.3g}" for k in OUTPUTS)
            print(f"{b} vs {a}: max abs {diffs}")
    print(f"done in {time.perf_counter() - start:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="Folder for model.pt and model.onnx [default: a temp dir]")
    args = parser.parse_args()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        main(args.out)
    else:
        with tempfile.TemporaryDirectory(prefix="bare-export-") as tmp:
            main(Path(tmp))
