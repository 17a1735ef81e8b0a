"""Export and verify time of each detector on CPU (synthetic weights, 1x3x320x320, its default norm).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_detectors.py [name ...] [--dynamo] > bench/results/detectors-cpu.log
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_detectors.py --reshape >> bench/results/detectors-cpu.log
    .venv/bin/python bench/bench_detectors.py fasterrcnn_mobilenet_v3_large_320_fpn --threads 2 >> ...

One line per detector: verdict, matched detections, worst ratios, and seconds per stage
(build, export per format, runs, judge), and for Faster R-CNN how many proposals each pair had in another
order or in one run only. `--dynamo` also tries the dynamo ONNX exporter (its refusal); `--threads N` runs
torch with N threads (default 1; with 2 the RPN of the 320 model orders two proposals differently in ONNX
Runtime, which the proposal pairing must absorb).
`--reshape`: where pytorch/vision#4623 shows: fasterrcnn_mobilenet_v3_large_fpn exported to ONNX with dynamic
sizes at 320 x 320, run at each size in SWEEP, as built and with its RPN logits lowered by each of SHIFTS
(fewer proposals, as real weights give on a sparse image): one line per shift and size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

RESHAPE_DETECTOR = "fasterrcnn_mobilenet_v3_large_fpn"
SWEEP = ((320, 320), (240, 320), (160, 320), (128, 320), (96, 320), (64, 320), (32, 320), (320, 64), (32, 32),
         (480, 640), (800, 800))
SHIFTS = (0.0, 4.0, 6.0, 8.0)
EXPORT_AT = (320, 320)


def reshape_sweep() -> None:
    import copy
    import tempfile
    from pathlib import Path

    import torch

    from exporter.families.detectors import build_detector, calibration_image
    from verify.detect.export import export_detector
    from verify.detect.verdict import judge_detector

    print(f"# {RESHAPE_DETECTOR}: legacy ONNX, dynamic sizes, exported at {EXPORT_AT[0]}x{EXPORT_AT[1]}; "
          "proposals = what the RPN keeps in eager float32")
    built = build_detector(RESHAPE_DETECTOR)
    for shift in SHIFTS:
        model = copy.deepcopy(built)
        with torch.no_grad():
            model.model.rpn.head.cls_logits.bias -= shift
        kept: list[int] = []
        model.model.rpn.register_forward_hook(lambda mod, args, out, store=kept: store.append(len(out[0][0])))
        with tempfile.TemporaryDirectory() as tmp:
            files, _ = export_detector(model, calibration_image(0, (3, *EXPORT_AT)), ("onnx",), Path(tmp),
                                       dynamic=True)
            for size in SWEEP:
                kept.clear()
                report = judge_detector(model, [calibration_image(0, (3, *size))], files)
                print(json.dumps({"rpn_shift": shift, "size": f"{size[0]}x{size[1]}", "proposals": kept[0],
                                  "eager_detections": len(report.boxes.get("eager", [[]])[0]),
                                  "onnx_runs": "onnx" not in report.refusals,
                                  "verdict": report.refusals.get("onnx") or report.summary()}), flush=True)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="detectors (default: every registered one)")
    parser.add_argument("--dynamo", action="store_true", help="also try the dynamo ONNX exporter (its refusal)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--reshape", action="store_true", help="the pytorch/vision#4623 size sweep instead")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)  # before the heavy imports: --help and a bad flag answer at once
    import torch

    from exporter.families.detectors import list_detectors
    from verify.detect.check import verify_detector

    threads = args.threads
    torch.set_num_threads(threads)
    if args.reshape:
        reshape_sweep()
        return 0
    names = args.names or list_detectors()
    formats = ("torchscript", "onnx", "onnx-dynamo") if args.dynamo else ("torchscript", "onnx")
    print(f"# torch {torch.__version__}, {threads} thread(s), formats {', '.join(formats)}")
    for name in names:
        start = time.perf_counter()
        report = verify_detector(name, formats=formats)
        total = time.perf_counter() - start
        pairs = report.detections
        print(json.dumps({
            "detector": name, "norm": report.norm, "exit": report.exit_code, "total_s": round(total, 1),
            "seconds": {k: round(v, 1) for k, v in report.seconds.items()},
            "matched_min": min((min(p.matched_per_image) for p in pairs), default=0),
            "worst_box_ratio": round(max((p.worst_box_ratio for p in pairs), default=0), 2),
            "worst_score_ratio": round(max((p.worst_score_ratio for p in pairs), default=0), 2),
            "worst_dense_ratio": round(max((p.worst.ratio or 0 for p in report.dense if p.outputs), default=0), 2),
            "borderline": sum(len(p.borderline) for p in pairs), "refusals": report.refusals,
            "proposals": {f"{p.a} vs {p.b}": {"paired": p.paired_per_image, "reordered": p.reordered,
                                              "borderline": len(p.borderline), "unexplained": len(p.unexplained)}
                          for p in report.proposals},
            "problems": report.problems,
            "summary": report.summary()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
