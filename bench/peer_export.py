"""The peer `bench/bench_export.py` holds `verify export --norm frozen` against: PyTorch's own check of its own
exporter on the same ResNet-50 FrozenBN body with the same synthetic weights, input and exporter settings
(dynamo, opset 18, dynamic batch/height/width, one file): `torch.onnx.export(..., dynamo=True, verify=True)`
(onnx checker, an ONNX Runtime run against eager, warnings above max abs 5e-3 or max rel 0.1), the file saved,
then `torch.onnx.verification.verify_onnx_program` for the figures a user reads (torch runs it inside verify=True
too). No float64 oracle, no other format, no goldens, no manifest.

    python bench/peer_export.py [--backbone resnet50] [--shape 1 3 224 224] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.onnx.verification import verify_onnx_program

from exporter.backbones import build_model
from exporter.spec import ModelSpec
from exporter.weights import load_weights

SEED = 0
OPSET = 18
OUTPUTS = ["layer1", "layer2", "layer3", "layer4"]


def main(backbone: str, shape: tuple[int, ...], out: Path) -> None:
    start = time.perf_counter()
    spec = ModelSpec(backbone, "frozen", "body")
    model = build_model(spec, load_weights("synthetic", backbone, SEED), SEED).model.eval()
    x = torch.from_numpy(np.random.default_rng(SEED).standard_normal(shape).astype(np.float32))
    dim = torch.export.Dim
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (x,), dynamo=True, verify=True, external_data=False, input_names=["input"],
            output_names=OUTPUTS, opset_version=OPSET,
            dynamic_shapes=({0: dim("batch"), 2: dim("height"), 3: dim("width")},))
    program.save(str(out / "model.onnx"))
    for info in verify_onnx_program(program):
        print(f"{info.name}: max abs {info.max_abs_diff:.3g}, max rel {info.max_rel_diff:.3g}")
    print(f"done in {time.perf_counter() - start:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--shape", type=int, nargs=4, default=[1, 3, 224, 224])
    parser.add_argument("--out", type=Path, help="Folder for model.onnx [default: a temp dir]")
    args = parser.parse_args()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        main(args.backbone, tuple(args.shape), args.out)
    else:
        with tempfile.TemporaryDirectory(prefix="peer-export-") as tmp:
            main(args.backbone, tuple(args.shape), Path(tmp))
