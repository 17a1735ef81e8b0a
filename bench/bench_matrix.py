"""What `verify matrix` costs (run by hand; many minutes on 2 cores for the default matrix).

1. cold and warm: the matrix (default: every registered backbone x norm, body view, 224x224, the
   default formats) with an empty cache, then the same command again: wall times and warm/cold
   (goal <= 10 %).
2. --jobs 1 vs --jobs 2, each cold with its own empty cache: the speed-up (goal >= 1.7x on 2 cores).
3. peak RSS: of each worker (every cell records its worker's ru_maxrss) and of the main process
   (GNU time), against a lone `verify export` of a cell of the matrix.
4. cost per cell: the cold --jobs 1 wall time / cells against lone `verify export` runs of cells of the
   same matrix, each a fresh process with its own empty cache (goal <= 1.0x: imports and weights shared).
Every command is a fresh subprocess. A benchmark, not a test: it always exits 0.

    python bench/bench_matrix.py [-b resnet18 -b resnet34] [-n batch ...] [--shape 1x3x224x224]
        [--lone 2] [--json out.json] [--html out.html]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GNU_TIME = "/usr/bin/time"
TARGETS = {"warm_over_cold": 0.10, "speedup_jobs2": 1.7, "cell_over_lone": 1.0}


def verify_command() -> list[str]:
    candidate = Path(sys.executable).parent / "verify"
    return [str(candidate)] if candidate.is_file() else [sys.executable, "-m", "verify.cli"]


def measure(cmd: list[str], env: dict[str, str]) -> dict:
    """Run `cmd` once: wall seconds, the main process's peak RSS (MiB) and the CPU seconds of the process and
    every child it reaped (its workers), both from GNU time when present, and the exit code. On a shared
    machine the CPU seconds are the steadier measure of work; wall time includes waiting for the cores."""
    time_file = None
    if os.path.exists(GNU_TIME):
        handle, time_file = tempfile.mkstemp(suffix=".time")
        os.close(handle)
        cmd = [GNU_TIME, "-f", "%M %U %S", "-o", time_file, *cmd]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    peak = cpu = None
    if time_file:
        lines = Path(time_file).read_text().strip().splitlines()
        os.unlink(time_file)
        fields = lines[-1].split() if lines else []  # GNU time writes "Command exited with..." above
        if len(fields) == 3:
            peak, cpu = round(int(fields[0]) / 1024, 1), round(float(fields[1]) + float(fields[2]), 2)
    return {"wall_s": round(wall, 2), "cpu_s": cpu, "main_peak_rss_mib": peak, "exit": proc.returncode,
            "load_after": os.getloadavg(), "stderr_tail": proc.stderr.strip().splitlines()[-3:]}


def run_matrix(args, cache: Path, jobs: int, json_path: Path, env: dict, html: Path | None = None) -> dict:
    cmd = [*verify_command(), "matrix", "--shape", args.shape, "--jobs", str(jobs), "--cache-dir", str(cache),
           "--json", str(json_path)]
    for backbone in args.backbone or []:
        cmd += ["-b", backbone]
    for norm in args.norm or []:
        cmd += ["-n", norm]
    if html:
        cmd += ["--html", str(html)]
    result = measure(cmd, env)
    if json_path.is_file():
        report = json.loads(json_path.read_text())
        result["cells"] = len(report["cells"])
        result["verdicts"] = report["counts"]
        result["cache"] = {k: report["cache"].get(k) for k in ("hits", "misses", "stores", "corrupt")}
        workers: dict[int, float] = {}
        for cell in report["cells"]:
            pid, peak = cell["worker"].get("pid"), cell["worker"].get("peak_rss_mib")
            if pid is not None and peak is not None:
                workers[pid] = max(workers.get(pid, 0.0), peak)
        result["worker_peak_rss_mib"] = sorted(workers.values())
        result["cell_compute_s"] = {c["spec"]: c["computed_seconds"] for c in report["cells"]}
    return result


def ends_first(items: list[str], count: int) -> list[str]:
    """The first, the last, the second, the second last...: the costliest and the cheapest cells first
    (the costliest also shows the peak memory a worker is compared with)."""
    picked, low, high = [], 0, len(items) - 1
    while len(picked) < count and low <= high:
        picked.append(items[low])
        low += 1
        if len(picked) < count and low <= high:
            picked.append(items[high])
            high -= 1
    return picked


def lone_export(spec: str, shape: str, env: dict, scratch: Path) -> dict:
    backbone, norm, view = spec.split(":")
    cache = scratch / f"lone-cache-{backbone}-{norm}"
    out = scratch / f"lone-out-{backbone}-{norm}"
    cmd = [*verify_command(), "export", "-b", backbone, "-n", norm, "--view", view, "--shape", shape,
           "--out", str(out)]
    result = measure(cmd, {**env, "BACKBONE_VERIFY_CACHE_DIR": str(cache)})  # its own empty cache: cold
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    return {"spec": spec, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-b", "--backbone", action="append", help="subset of backbones (repeat) [default: all]")
    parser.add_argument("-n", "--norm", action="append", help="subset of norms (repeat) [default: all]")
    parser.add_argument("--shape", default="1x3x224x224")
    parser.add_argument("--lone", type=int, default=2, help="lone `verify export` runs (the costliest and "
                                                            "the cheapest cells first)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--html", type=Path, help="keep the cold run's --html page here")
    args = parser.parse_args()

    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    results: dict = {"command": sys.argv[1:], "shape": args.shape, "cpus": os.cpu_count(),
                     "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-matrix-") as tmp:
        scratch = Path(tmp)
        html = scratch / "matrix.html"
        print("cold, --jobs 1 ...", flush=True)
        results["cold_jobs1"] = run_matrix(args, scratch / "cache1", 1, scratch / "cold1.json", env, html)
        print(f"  {results['cold_jobs1']['wall_s']} s", flush=True)
        print("warm, --jobs 1 ...", flush=True)
        results["warm_jobs1"] = run_matrix(args, scratch / "cache1", 1, scratch / "warm1.json", env)
        print(f"  {results['warm_jobs1']['wall_s']} s", flush=True)
        print("cold, --jobs 2 ...", flush=True)
        results["cold_jobs2"] = run_matrix(args, scratch / "cache2", 2, scratch / "cold2.json", env)
        print(f"  {results['cold_jobs2']['wall_s']} s", flush=True)
        from verify.matrix import backbone_params  # the cost model's size: the biggest backbone first

        specs = list(results["cold_jobs1"].get("cell_compute_s", {}))
        costliest = sorted(specs, key=lambda spec: (-backbone_params(spec.split(":")[0]), spec))
        results["lone_exports"] = []
        for spec in ends_first(costliest, args.lone):
            print(f"lone verify export {spec} ...", flush=True)
            results["lone_exports"].append(lone_export(spec, args.shape, env, scratch))
            print(f"  {results['lone_exports'][-1]['wall_s']} s", flush=True)
        if args.html and html.is_file():
            args.html.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(html, args.html)
    results["load_after"] = os.getloadavg()
    cold, warm, cold2 = results["cold_jobs1"], results["warm_jobs1"], results["cold_jobs2"]
    cells = cold.get("cells") or 1
    lone = results["lone_exports"]
    lone_mean = sum(r["wall_s"] for r in lone) / len(lone) if lone else None
    lone_cells = {r["spec"]: cold.get("cell_compute_s", {}).get(r["spec"]) for r in lone}
    results["summary"] = {
        "cells": cells,
        "warm_over_cold": round(warm["wall_s"] / cold["wall_s"], 3),
        "speedup_jobs2": round(cold["wall_s"] / cold2["wall_s"], 2),
        "cell_over_lone": round(cold["wall_s"] / cells / lone_mean, 2) if lone_mean else None,
        "cpu_s": {"cold_jobs1": cold.get("cpu_s"), "warm_jobs1": warm.get("cpu_s"), "cold_jobs2": cold2.get("cpu_s"),
                  "lone_exports": [r.get("cpu_s") for r in lone]},
        "cell_over_lone_cpu": round(cold["cpu_s"] / cells / (sum(r["cpu_s"] for r in lone) / len(lone)), 2)
        if lone and cold.get("cpu_s") and all(r.get("cpu_s") for r in lone) else None,
        "matrix_s_per_cell_jobs1": round(cold["wall_s"] / cells, 2),
        "lone_export_mean_s": round(lone_mean, 2) if lone_mean else None,
        "lone_cells_inside_matrix_s": lone_cells,
        "worker_peak_rss_mib_jobs2": cold2.get("worker_peak_rss_mib"),
        "main_peak_rss_mib_jobs1": cold.get("main_peak_rss_mib"),
        "lone_export_peak_rss_mib": [r["main_peak_rss_mib"] for r in lone],
        "targets": TARGETS,
    }
    print(json.dumps(results["summary"], indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
