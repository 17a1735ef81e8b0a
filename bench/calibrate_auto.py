"""Measure what `auto`'s factor must separate (run by hand; minutes on 2 cores).

1. Correct exports: every registered backbone x norm variant (body view) plus the other views
   of resnet50, under eager, TorchScript, ONNX Runtime (all and no graph optimisations), with
   both ONNX exporters: the largest error as a multiple of the float32 noise floor.
2. A broken model: one output channel of one convolution in the middle of ResNet-50 (30
   seeded picks among layer2/layer3 convs) with a 0.1 % weight error, as a multiple of the floor.
AUTO_FACTOR in verify/compare.py must sit between the two.

    python bench/calibrate_auto.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from exporter.artifacts import eager_artifact
from exporter.backbones import build_model, family_of, list_backbones
from exporter.export import ExportOptions, export_model
from exporter.norms import list_norms
from exporter.spec import ModelSpec
from exporter.weights import load_weights
from verify.inputs import make_input
from verify.oracle import measure_oracle
from verify.runtimes import RuntimeOptions, make_runtime


def worst_ratio(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray],
                floors: dict[str, float]) -> float:
    return max(float(np.abs(outputs[k].astype(np.float64) - reference[k]).max()) / floors[k] for k in floors)


def correct_ratios(spec: ModelSpec, shape, exporters, folder: Path, device: str = "cpu",
                   tf32_ratios: dict | None = None) -> dict[str, float]:
    """Every correct float32 run's worst ratio to the floor, against the oracle and pairwise.
    With device="cuda" the CUDA runs (TF32 off) join them; TF32-on ratios go to `tf32_ratios`."""
    built = build_model(spec, load_weights("synthetic", spec.backbone))
    eager = eager_artifact(built, shape)
    x = make_input(shape, 0)
    inputs = {"input": x}
    fp32 = make_runtime("eager").load(eager).run(inputs)
    oracle = measure_oracle(eager, inputs, fp32)
    runs = {"eager": fp32}
    ts = export_model(built, eager.meta, torch.from_numpy(x), folder, ExportOptions(), "torchscript")
    runs["torchscript"] = make_runtime("torchscript").load(ts).run(inputs)
    for exporter in exporters:
        onnx = export_model(built, eager.meta, torch.from_numpy(x), folder,
                            ExportOptions(onnx_exporter=exporter), "onnx")
        for level in ("all", "disable"):
            runs[f"ort-{exporter}-{level}"] = make_runtime(
                "onnxruntime", RuntimeOptions(ort_opt_level=level)).load(onnx).run(inputs)
        if device == "cuda":
            runs[f"ort-{exporter}-cuda"] = make_runtime(
                "onnxruntime", RuntimeOptions(device="cuda", tf32=False)).load(onnx).run(inputs)
            if tf32_ratios is not None:
                out = make_runtime("onnxruntime", RuntimeOptions(device="cuda")).load(onnx).run(inputs)
                tf32_ratios[f"{spec} ort-{exporter}-cuda-default"] = worst_ratio(out, oracle.outputs, oracle.floors)
    if device == "cuda":
        for name, artifact in (("eager", eager), ("torchscript", ts)):
            runs[f"{name}-cuda"] = make_runtime(name, RuntimeOptions(device="cuda", tf32=False)).load(
                artifact).run(inputs)
            if tf32_ratios is not None:
                out = make_runtime(name, RuntimeOptions(device="cuda", tf32=True)).load(artifact).run(inputs)
                tf32_ratios[f"{spec} {name}-cuda-tf32"] = worst_ratio(out, oracle.outputs, oracle.floors)
    ratios = {name: worst_ratio(out, oracle.outputs, oracle.floors) for name, out in runs.items()}
    names = list(runs)
    for i, a in enumerate(names):  # pairwise: what the verdict table judges
        for b in names[i + 1:]:
            ratios[f"{a}~{b}"] = worst_ratio(runs[a], runs[b], oracle.floors)
    return ratios


def perturbed_ratios(shape, picks: int = 30, rel: float = 1e-3, seed: int = 0) -> dict[str, float]:
    """0.1 % weight error on one output channel of one layer2/layer3 conv of ResNet-50, for
    `picks` seeded (conv, channel) choices: each one's error against the clean model's oracle,
    as a multiple of the clean model's floor."""
    spec = ModelSpec("resnet50", "frozen", "body")
    weights = load_weights("synthetic", "resnet50")
    clean = build_model(spec, weights)
    x = make_input(shape, 0)
    inputs = {"input": x}
    eager = eager_artifact(clean, shape)
    fp32 = make_runtime("eager").load(eager).run(inputs)
    oracle = measure_oracle(eager, inputs, fp32)
    broken = build_model(spec, weights)
    convs = [name for name, m in broken.model.named_modules()
             if isinstance(m, torch.nn.Conv2d) and name.startswith(("layer2", "layer3"))]
    rng = np.random.default_rng(seed)
    ratios = {}
    for _ in range(picks):
        name = convs[rng.integers(len(convs))]
        conv = broken.model.get_submodule(name)
        channel = int(rng.integers(conv.out_channels))
        original = conv.weight[channel].detach().clone()
        with torch.no_grad():
            conv.weight[channel].mul_(1 + rel)
        out = make_runtime("eager").load(eager_artifact(broken, shape)).run(inputs)
        with torch.no_grad():
            conv.weight[channel].copy_(original)
        ratios[f"{name}[{channel}]"] = worst_ratio(out, oracle.outputs, oracle.floors)
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="resnet18/resnet50 only")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda adds CUDA runs")
    parser.add_argument("--norms", nargs="*", default=None, help="default: every norm variant")
    parser.add_argument("--no-perturb", action="store_true", help="skip the broken-model measurement")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    shape = (1, 3, 224, 224)
    backbones = ["resnet18", "resnet50"] if args.quick else list_backbones()
    results: dict = {"correct": {}, "perturbed": {}, "tf32": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for backbone in backbones:
            for norm in [n for n in args.norms or list_norms() if n in family_of(backbone).norms]:
                views = ("body", "fpn", "trunk") if backbone == "resnet50" else ("body",)
                for view in views:
                    spec = ModelSpec(backbone, norm, view)
                    start = time.perf_counter()
                    exporters = ("torchscript", "dynamo") if norm == "frozen" else ("torchscript",)
                    ratios = correct_ratios(spec, shape, exporters, folder, args.device, results["tf32"])
                    worst = max(ratios, key=ratios.get)
                    results["correct"][str(spec)] = ratios
                    print(f"{str(spec):32s} worst {ratios[worst]:6.2f}x ({worst})  "
                          f"{time.perf_counter() - start:.0f}s", flush=True)
        if not args.no_perturb:
            results["perturbed"] = perturbed_ratios(shape)
            for pick, ratio in results["perturbed"].items():
                print(f"0.1% on {pick}: {ratio:.1f}x", flush=True)
    correct = max(max(r.values()) for r in results["correct"].values())
    print(f"largest correct ratio {correct:.2f}x")
    if results["perturbed"]:
        broken = sorted(results["perturbed"].values())
        print(f"broken: least {broken[0]:.1f}x, median {broken[len(broken) // 2]:.1f}x")
    if results["tf32"]:
        print(f"TF32 (framework defaults on CUDA): {min(results['tf32'].values()):.0f}x .. "
              f"{max(results['tf32'].values()):.0f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
