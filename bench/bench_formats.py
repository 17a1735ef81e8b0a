"""The default export (torchscript, pt2, onnx) with one torch.export trace shared by the
ExportedProgram and the dynamo ONNX export, against two traces (one each), and each format's
own export time. Run by hand: `.venv/bin/python bench/bench_formats.py [--backbone resnet50] [--repeats 3]`."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def export_default(backbone: str, shared: bool) -> dict[str, float]:
    import torch

    from exporter.api import get_backbone
    from exporter.export import ExportOptions, export_model
    from exporter.formats import ExportContext
    from exporter.formats.eager import eager_artifact
    from verify.inputs import make_input

    built = get_backbone(backbone, "frozen", "body")
    shape = (1, 3, 224, 224)
    eager = eager_artifact(built, shape)
    example = torch.from_numpy(make_input(shape, 0))
    options = ExportOptions()
    times: dict[str, float] = {}
    context = ExportContext(built, example, eager.meta, dynamic=options.dynamic)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        for fmt in options.formats:
            tick = time.perf_counter()
            ctx = context if shared else ExportContext(built, example, eager.meta, dynamic=options.dynamic)
            export_model(built, eager.meta, example, Path(folder), options, fmt, ctx)
            times[fmt] = time.perf_counter() - tick
        times["total"] = time.perf_counter() - start
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.backbone} at 224x224")
    results: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    for _ in range(args.repeats):
        for shared in (False, True):  # interleaved, so drift hits both alike
            results[shared].append(export_default(args.backbone, shared))
    for shared, runs in results.items():
        keys = runs[0].keys()
        medians = {k: statistics.median(r[k] for r in runs) for k in keys}
        label = "one shared trace " if shared else "a trace per format"
        print(f"{label}: " + ", ".join(f"{k} {v:.2f}s" for k, v in medians.items()))
    saved = statistics.median(r["total"] for r in results[False]) - statistics.median(r["total"] for r in results[True])
    print(f"saving: {saved:.2f}s per default export (median of {args.repeats})")


if __name__ == "__main__":
    main()
