"""What the layer verdict (`--layers`) adds to an export: `verify export` with and without it, alternated, on a warm
cache (the same exports served from it, re-checked), medians of N.

    python bench/bench_layers.py [--backbone resnet50] [--repeats 3] [--log bench/results/layers-cpu.log]

Each run is a fresh `verify export` process (its imports included), writing its folder into a temporary --out.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(backbone: str, norm: str, layers: bool, folder: Path) -> tuple[float, int]:
    """One `verify export`: its wall seconds and exit code."""
    verify = Path(sys.executable).with_name("verify")
    command = [str(verify), "export", "-b", backbone, "--norm", norm, "--out", str(folder / "out"), "--overwrite"] \
        + (["--layers"] if layers else [])
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=os.environ.copy())
    return time.perf_counter() - start, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--norm", default="frozen")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--log", type=Path, default=None)
    args = parser.parse_args()
    times: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        seconds, code = run(args.backbone, args.norm, False, folder)  # fills the cache: both sides then run warm
        if code != 0:
            raise SystemExit(f"the warm-up export exited {code}")
        for _ in range(args.repeats):
            for layers in (False, True):
                seconds, code = run(args.backbone, args.norm, layers, folder)
                if code != 0:
                    raise SystemExit(f"verify export {'--layers ' if layers else ''}exited {code}")
                times[layers].append(seconds)
                print(f"{'--layers' if layers else 'default '} {seconds:6.2f} s", flush=True)
    plain, layered = statistics.median(times[False]), statistics.median(times[True])
    lines = [f"verify export -b {args.backbone} --norm {args.norm}, warm cache, alternated, median of {args.repeats}; "
             f"{os.cpu_count()} CPUs, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}",
             f"default    {plain:6.2f} s   runs {[round(t, 2) for t in times[False]]}",
             f"--layers   {layered:6.2f} s   runs {[round(t, 2) for t in times[True]]}",
             f"--layers adds {layered - plain:.2f} s ({layered / plain:.2f}x)"]
    print("\n".join(lines))
    if args.log is not None:
        with args.log.open("a") as handle:
            handle.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
