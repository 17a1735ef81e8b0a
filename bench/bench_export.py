"""How much `verify export` costs over the bare job (run by hand; minutes on 2 cores).

Times, in the same run and alternating, `verify export --norm frozen --out <tmpdir>` and
`python bench/bare_export.py` (each a fresh subprocess, N repeats each), and `verify --help`
(median of 5). Reports median wall time and peak RSS per side, and verify/bare ratios against
the targets: wall <= 1.3x, memory <= 1.3x, `verify --help` < 0.5 s.

Peak RSS is the child's own high-water mark as the kernel reports it when the child is reaped
(ru_maxrss from wait4), read through `/usr/bin/time -f %M` where present, else from os.wait4
directly (the same number). Not RUSAGE_CHILDREN deltas: those keep the maximum over all children
ever reaped, so a smaller run after a larger one would report the larger. Not polling
/proc/<pid>/status VmHWM either: the last poll before exit can miss growth after it.

A benchmark, not a test: it always exits 0.

    python bench/bench_export.py [--repeats N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GNU_TIME = "/usr/bin/time"
TARGETS = {"wall": 1.3, "memory": 1.3, "help_s": 0.5}


def verify_executable() -> str:
    candidate = Path(sys.executable).parent / "verify"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("verify")
    if not found:
        raise SystemExit("no `verify` console script next to this Python or on PATH; pip install -e .")
    return found


def measure(cmd: list[str]) -> dict:
    """Run `cmd` once; wall seconds, peak RSS in MiB, exit code, stderr tail."""
    if os.path.exists(GNU_TIME):
        with tempfile.NamedTemporaryFile("r", suffix=".time", delete=False) as handle:
            time_file = handle.name
        try:
            start = time.perf_counter()
            proc = subprocess.run([GNU_TIME, "-f", "%M", "-o", time_file, *cmd], cwd=ROOT,
                                  capture_output=True, text=True)
            wall = time.perf_counter() - start
            lines = Path(time_file).read_text().strip().splitlines()
        finally:
            os.unlink(time_file)
        peak_kib = int(lines[-1])  # GNU time writes "Command exited with non-zero status" above
        rc, err = proc.returncode, proc.stderr
        method = f"{GNU_TIME} -f %M"
    else:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        err = proc.stderr.read()  # type: ignore[union-attr]
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        peak_kib, rc = usage.ru_maxrss, proc.returncode  # KiB on Linux
        method = "os.wait4 ru_maxrss"
    return {"wall_s": wall, "peak_mib": peak_kib / 1024, "rc": rc, "stderr_tail": err[-600:],
            "rss_method": method}


def run_verify(verify: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as out:
        return measure([verify, "export", "--norm", "frozen", "--out", out])


def run_bare() -> dict:
    return measure([sys.executable, str(ROOT / "bench" / "bare_export.py")])


def time_help(verify: str, n: int = 5) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run([verify, "--help"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times


def summarise(runs: list[dict]) -> dict:
    return {"wall_s": statistics.median(r["wall_s"] for r in runs),
            "peak_mib": statistics.median(r["peak_mib"] for r in runs),
            "walls": [round(r["wall_s"], 2) for r in runs],
            "peaks_mib": [round(r["peak_mib"]) for r in runs],
            "exit_codes": [r["rc"] for r in runs]}


def bench(repeats: int) -> dict:
    verify = verify_executable()
    sides: dict[str, list[dict]] = {"verify": [], "bare": []}
    for i in range(repeats):
        # Alternate, and swap which side goes first each round, so drift hits both alike.
        order = ("verify", "bare") if i % 2 == 0 else ("bare", "verify")
        for side in order:
            result = run_verify(verify) if side == "verify" else run_bare()
            sides[side].append(result)
            print(f"  [{i + 1}/{repeats}] {side:6s} {result['wall_s']:6.1f} s  {result['peak_mib']:7.0f} MiB"
                  f"  rc={result['rc']}", file=sys.stderr, flush=True)
            if (side == "bare" and result["rc"] != 0) or (side == "verify" and result["rc"] not in (0, 1)):
                print(f"    {side} failed:\n{result['stderr_tail']}", file=sys.stderr)
    help_times = time_help(verify)
    v, b = summarise(sides["verify"]), summarise(sides["bare"])
    return {
        "repeats": repeats,
        "rss_method": sides["verify"][0]["rss_method"],
        "verify": v,
        "bare": b,
        "help": {"median_s": statistics.median(help_times), "times": [round(t, 3) for t in help_times]},
        "ratios": {"wall": v["wall_s"] / b["wall_s"], "memory": v["peak_mib"] / b["peak_mib"]},
        "targets": TARGETS,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }


def render(result: dict) -> None:
    v, b, r, t = result["verify"], result["bare"], result["ratios"], result["targets"]
    print(f"\nverify export --norm frozen vs bench/bare_export.py, median of {result['repeats']} "
          f"(peak RSS via {result['rss_method']}, {result['cpus']} CPUs)")
    print(f"{'':8s} {'wall s':>8s} {'peak MiB':>9s}   runs (s / MiB)")
    for name, side in (("verify", v), ("bare", b)):
        print(f"{name:8s} {side['wall_s']:8.2f} {side['peak_mib']:9.0f}   "
              f"{side['walls']} / {side['peaks_mib']}")
    ok = {"wall": r["wall"] <= t["wall"], "memory": r["memory"] <= t["memory"],
          "help": result["help"]["median_s"] < t["help_s"]}
    mark = {True: "ok", False: "OVER"}
    print(f"\nwall ratio   verify/bare {r['wall']:.2f}x  (target <= {t['wall']}x)  {mark[ok['wall']]}")
    print(f"memory ratio verify/bare {r['memory']:.2f}x  (target <= {t['memory']}x)  {mark[ok['memory']]}")
    print(f"verify --help  {result['help']['median_s']:.3f} s median of 5  (target < {t['help_s']} s)  "
          f"{mark[ok['help']]}")
    codes = v["exit_codes"] + b["exit_codes"]
    if any(c not in (0, 1) for c in v["exit_codes"]) or any(c != 0 for c in b["exit_codes"]):
        print(f"warning: some runs failed (exit codes verify {v['exit_codes']}, bare {b['exit_codes']}); "
              "the figures above are not comparable")
    elif any(codes):
        print(f"note: verify exited 1 (a disagreement) in some runs: {v['exit_codes']}")
    result["within_targets"] = ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="Runs of each side [default: 3]")
    parser.add_argument("--json", type=Path, help="Also write the figures as JSON here")
    args = parser.parse_args()
    try:
        result = bench(max(1, args.repeats))
        render(result)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
            print(f"wrote {args.json}")
    except BaseException as exc:  # a benchmark reports, it never fails the caller
        if isinstance(exc, KeyboardInterrupt):
            print("interrupted", file=sys.stderr)
        else:
            print(f"benchmark did not complete: {exc!r}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
