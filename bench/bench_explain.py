"""Time `verify explain` (the seed question and the eps-0 case) on resnet50 at 1x3x224x224.

    python bench/bench_explain.py [--repeats 3]

Target: under 15 s each on a 2-core CPU machine, the process start and imports included.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

VERIFY = str(Path(sys.executable).with_name("verify"))
CASES = {
    "seed (batch:trunk vs frozen:body)": [],
    "eps0 (batch:body vs frozen-eps0:body)": ["resnet50:batch:body", "resnet50:frozen-eps0:body"],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for title, extra in CASES.items():
        times, codes = [], set()
        for _ in range(args.repeats):
            start = time.perf_counter()
            codes.add(subprocess.run([VERIFY, "explain", *extra], capture_output=True).returncode)
            times.append(time.perf_counter() - start)
        verdict = "ok" if max(times) < 15 else "OVER"
        print(f"{title:40s} median {statistics.median(times):5.1f} s, max {max(times):5.1f} s "
              f"(target < 15 s) {verdict}; exit codes {sorted(codes)}")


if __name__ == "__main__":
    main()
