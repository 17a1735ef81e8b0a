"""Export and verify time of each detector on CPU (synthetic weights, 1x3x320x320, its default norm).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_detectors.py [name ...] [--dynamo] > bench/results/detectors-cpu.log

One line per detector: verdict, matched detections, worst ratios, and seconds per stage
(build, export per format, runs, judge). `--dynamo` also tries the dynamo ONNX exporter (its refusal).
"""

from __future__ import annotations

import json
import sys
import time


def main(argv: list[str]) -> int:
    import torch

    from exporter.families.detectors import list_detectors
    from verify.detector_check import verify_detector

    torch.set_num_threads(1)
    names = [a for a in argv if not a.startswith("--")] or list_detectors()
    formats = ("torchscript", "onnx", "onnx-dynamo") if "--dynamo" in argv else ("torchscript", "onnx")
    print(f"# torch {torch.__version__}, 1 thread, formats {', '.join(formats)}")
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
            "summary": report.summary()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
