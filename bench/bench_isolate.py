"""How often the isolated per-layer error names a seeded one-layer bug first.

    python bench/bench_isolate.py [--per-stage 3] [--seeds 0 1] [--shape 1x3x64x64] [--error 1e-3] [--models ...]

For resnet18 and mobilenet_v3_small (or --models): exports .pt2 and dynamo ONNX once, then for `per-stage` random convs
of every stage and each seed scales one random output channel of the conv's weight by 1 + error (in the
ONNX file's initializer, and in the loaded ExportedProgram's parameter) and checks that `isolate_sides`
names that conv first. Prints the share, every miss, the clean exports' worst own ratio and the seeded
layers' smallest ratio (how far apart the two populations are), and the time per case.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS = ("resnet18:batch:body", "mobilenet_v3_small:batch:body")


def export(text: str, shape: tuple[int, ...], folder: Path) -> dict:
    import onnx
    import torch

    from exporter.backbones import build_model
    from exporter.export import ExportOptions, export_model
    from exporter.formats import ExportContext
    from exporter.formats.eager import eager_artifact
    from exporter.spec import ModelSpec
    from exporter.weights import load_weights
    from verify.explain.sides import load_side
    from verify.inputs import make_input

    spec = ModelSpec.parse(text)
    built = build_model(spec, load_weights("synthetic", spec.backbone))
    x = make_input(shape, 0)
    meta = eager_artifact(built, shape).meta
    options = ExportOptions()
    context = ExportContext(built, torch.from_numpy(x), meta, dynamic=options.dynamic)
    files = {fmt: export_model(built, meta, context.example, folder, options, fmt, context) for fmt in ("pt2", "onnx")}
    return {"ref": load_side(eager_artifact(built, shape)), "pt2": load_side(files["pt2"]), "x": x,
            "onnx": files["onnx"], "proto": onnx.load(str(files["onnx"].path))}


def main() -> None:
    from onnx import numpy_helper

    from exporter.spec import parse_shape
    from tests.test_isolate import mutated_onnx, mutated_parameter, picks
    from verify.explain.rerun import isolate_sides
    from verify.explain.sides import load_side

    parser = argparse.ArgumentParser()
    parser.add_argument("--per-stage", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--shape", default="1x3x64x64")
    parser.add_argument("--error", type=float, default=1e-3)
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="model specs (backbone:norm:view)")
    args = parser.parse_args()
    import tests.test_isolate as seeded

    seeded.SEEDED_ERROR = args.error
    shape = tuple(parse_shape(args.shape))
    total_hits = total = 0
    with tempfile.TemporaryDirectory(prefix="bench-isolate-") as root:
        for text in args.models:
            folder = Path(root) / text.split(":")[0]
            folder.mkdir()
            case = export(text, shape, folder)
            clean = max(isolate_sides(case["ref"], side, case["x"])[0].layers[0].ratio
                        for side in (load_side(case["onnx"]), case["pt2"]))
            weights = {t.name: numpy_helper.to_array(t) for t in case["proto"].graph.initializer}
            hits = cases = 0
            seeded_ratios, misses, start = [], [], time.perf_counter()
            targets = sorted({p for seed in args.seeds for p in picks(weights, seed, args.per_stage)})
            for i, (weight, channel) in enumerate(targets):
                conv = weight.removesuffix(".weight")
                bad = mutated_onnx(case["proto"], weight, channel, folder / f"bad{i}.onnx")
                results = {"onnx": isolate_sides(case["ref"], load_side(replace(case["onnx"], path=bad)), case["x"])[0]}
                with mutated_parameter(case["pt2"].fp32, weight, channel):
                    results["pt2"] = isolate_sides(case["ref"], case["pt2"], case["x"])[0]
                for fmt, result in results.items():
                    cases += 1
                    first = result.named[0].module if result.named else None
                    mine = [layer.ratio for layer in result.layers if layer.module == conv]
                    seeded_ratios.extend(mine)
                    if first == conv:
                        hits += 1
                    else:
                        misses.append(f"{fmt} {conv}[{channel}] -> {first}")
                bad.unlink()
            elapsed = time.perf_counter() - start
            print(f"{text} {args.shape} error {args.error:g}: named first {hits}/{cases} = {hits / cases:.1%} "
                  f"({len(targets)} convs over {len({w.split('.', 1)[0] for w, _ in targets})} stages, onnx + pt2); "
                  f"clean exports' worst own ratio {clean:.2f}; seeded layers' smallest ratio "
                  f"{min(seeded_ratios):.0f}, median {sorted(seeded_ratios)[len(seeded_ratios) // 2]:.0f}; "
                  f"{elapsed / cases:.2f} s per case")
            for miss in misses:
                print(f"  miss: {miss}")
            total_hits, total = total_hits + hits, total + cases
    print(f"all: {total_hits}/{total} = {total_hits / total:.1%} named first")


if __name__ == "__main__":
    main()
