"""Synthetic weights from a proven copy in the cache, or computed: `verify export --norm frozen`, alternated A/B.

    python bench/bench_weights_copy.py [--pairs 3] [--log bench/results/weights-copy-cpu.log]

Each pair runs both variants, in alternating order so drift hits both alike: a cold `verify export` (a new empty
cache folder) and a warm one (the same folder again), each a fresh process timed by bench/bench_export.py's
breakdown (its "build: synthetic weights" line and the process's wall and CPU). `off` is the same code with the
committed digest table hidden (exporter/weights.py SYNTHETIC_DIGESTS pointed at no file), which is how a torch whose
weights differ from the table runs: computed every time, no copy kept. Medians over the pairs; the load average
beside them (the machine may be shared: `--max-load 1.5` waits for a quieter one before each run). `--backbone
resnet18 --shape 1 3 32 32` checks the script in a minute.
A benchmark, not a test: it always exits 0.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_export  # noqa: E402

CHILD_FLAG = "--variant-child"
VARIANTS = ["on", "off"]
"""The order of the two variants in the first pair, and which is subtracted from which (--variants)."""
WEIGHTS_LINE = "build: synthetic weights"
MODEL_LINE = "build: model (torchvision builder, weights loaded)"
PT2_LOAD_LINE = "  of which load exported"
"""Where torchvision's first import goes when the weights come from a copy (computing them imports it)."""
DEFAULT_LOG = ROOT / "bench" / "results" / "weights-copy-cpu.log"
QUIET = [99.0, 0.0]
"""--max-load, --max-wait: each run waits for a 1-minute load average under the first, at most the second seconds."""


def variant_child(variant: str, report: Path, args: list[str]) -> None:
    if variant == "off":
        import exporter.weights

        exporter.weights.SYNTHETIC_DIGESTS = Path(tempfile.gettempdir()) / "backbone-verify-no-table" / "absent.json"
    bench_export.breakdown_child(report, args)


def quiet(max_load: float, wait_s: float) -> None:
    """Wait (at most `wait_s`) until the 1-minute load average is under `max_load`: the machine is shared."""
    deadline = time.monotonic() + wait_s
    while float(bench_export.load_average().split()[0]) >= max_load and time.monotonic() < deadline:
        time.sleep(5)


BUILD_FLAG = "--build-child"


def build_child(variant: str, cache: Path, out: Path) -> None:
    """Time `ModelSpec.build` (weights and model, torchvision's first import included) as build_stage runs it, in
    this fresh process after torch's import: wall and CPU seconds (all threads) to `out`."""
    import json

    import torch  # noqa: F401 - imported before the clock, as the CLI has by its build

    import exporter.weights
    from exporter.spec import ModelSpec
    from verify.cache import Cache

    if variant == "off":
        exporter.weights.SYNTHETIC_DIGESTS = Path(tempfile.gettempdir()) / "backbone-verify-no-table" / "absent.json"
    spec = ModelSpec(bench_export.MODEL["backbone"], "frozen", "body")
    begin, cpu = time.perf_counter(), time.process_time()
    with exporter.weights.weights_store(Cache(cache)):
        spec.build(0, tuple(bench_export.MODEL["shape"]), "synthetic")
    out.write_text(json.dumps({"wall_s": time.perf_counter() - begin, "cpu_s": time.process_time() - cpu}))


def builds(count: int) -> dict[tuple[str, str], list[dict]]:
    """`--build-only`: the build alone, cold (an empty cache) and warm (the copy there; `off`: none), alternated."""
    import json
    import subprocess

    runs: dict[tuple[str, str], list[dict]] = {(v, s): [] for v in VARIANTS for s in ("cold", "warm")}
    for i in range(count):
        for variant in (VARIANTS if i % 2 == 0 else VARIANTS[::-1]):
            with tempfile.TemporaryDirectory(prefix="bench-weights-build-") as folder:
                for side in ("cold", "warm"):
                    out = Path(folder) / f"{side}.json"
                    subprocess.run([sys.executable, str(Path(__file__).resolve()), BUILD_FLAG, variant, folder,
                                    str(out), bench_export.MODEL["backbone"], *map(str, bench_export.MODEL["shape"])],
                                   check=True, cwd=ROOT)
                    result = {**json.loads(out.read_text()), "load": bench_export.load_average()}
                    runs[(variant, side)].append(result)
                    print(f"  [{i + 1}/{count}] {variant:3s} {side}  build {result['wall_s']:5.2f} s  cpu "
                          f"{result['cpu_s']:5.2f} s  load {result['load']}", file=sys.stderr, flush=True)
    return runs


def render_builds(runs: dict[tuple[str, str], list[dict]], count: int) -> str:
    lines = [f"the build alone (ModelSpec.build: synthetic weights and the model, torchvision's first import "
             f"included), {bench_export.MODEL['backbone']}, fresh processes, {count} alternated pairs, medians",
             f"{'':10s} {'wall s':>7s} {'cpu s':>7s}   walls   loads"]
    for side in ("cold", "warm"):
        for variant in VARIANTS:
            rs = runs[(variant, side)]
            lines.append(f"{variant + ' ' + side:10s} {statistics.median(r['wall_s'] for r in rs):7.2f} "
                         f"{statistics.median(r['cpu_s'] for r in rs):7.2f}   {[round(r['wall_s'], 2) for r in rs]}"
                         f"   {' | '.join(r['load'] for r in rs)}")
        deltas = [a["cpu_s"] - b["cpu_s"] for a, b in zip(runs[(VARIANTS[0], side)], runs[(VARIANTS[1], side)])]
        lines.append(f"{side}: cpu {VARIANTS[0]} - {VARIANTS[1]} per pair {[round(d, 2) for d in deltas]} s, median "
                     f"{statistics.median(deltas):+.2f} s")
    return "\n".join(lines)


def run(variant: str, cache: Path) -> dict:
    import json

    quiet(*QUIET)
    before = bench_export.export_entries(cache)
    env = dict(os.environ, **{bench_export.CACHE_ENV: str(cache)})
    with tempfile.TemporaryDirectory(prefix=f"bench-weights-{variant}-") as out:
        timings = Path(out) / "timings.json"
        result = bench_export.measure([sys.executable, str(Path(__file__).resolve()), CHILD_FLAG, variant,
                                       str(timings), *bench_export.verify_args(str(Path(out) / "artifacts"))], env)
        recorded = json.loads(timings.read_text()) if timings.exists() else {}
    result["onnx_stored"] = bench_export.export_entries(cache) - before
    result["weights_s"] = recorded.get("stages", {}).get(WEIGHTS_LINE, float("nan"))
    result["weights_cpu_s"] = recorded.get("cpu", {}).get(WEIGHTS_LINE, float("nan"))
    result["build_s"] = result["weights_s"] + recorded.get("stages", {}).get(MODEL_LINE, float("nan"))
    stages = recorded.get("stages", {})
    result["pt2_load_s"] = stages.get(PT2_LOAD_LINE, stages.get(f"{PT2_LOAD_LINE} (a thread's, beside the lines above)",
                                                                 float("nan")))
    result["load"] = bench_export.load_average()
    return result


def pairs(count: int) -> dict[tuple[str, str], list[dict]]:
    runs: dict[tuple[str, str], list[dict]] = {(v, s): [] for v in VARIANTS for s in ("cold", "warm")}
    for i in range(count):
        for variant in (VARIANTS if i % 2 == 0 else VARIANTS[::-1]):
            cache = Path(tempfile.mkdtemp(prefix="bench-weights-cache-"))
            try:
                for side in ("cold", "warm"):
                    result = run(variant, cache)
                    runs[(variant, side)].append(result)
                    missed = " (warm MISSED the ONNX cache: sources edited meanwhile)" if side == "warm" and \
                        result["onnx_stored"] else ""
                    print(f"  [{i + 1}/{count}] {variant:3s} {side}  {result['wall_s']:6.2f} s  cpu "
                          f"{result['cpu_s']:6.2f} s  weights {result['weights_s']:5.2f} s  rc={result['rc']}  "
                          f"load {result['load']}{missed}", file=sys.stderr, flush=True)
            finally:
                shutil.rmtree(cache, ignore_errors=True)
    return runs


def render(runs: dict[tuple[str, str], list[dict]], count: int) -> str:
    import torch

    lines = [f"verify export --norm frozen, {bench_export.MODEL['backbone']} "
             f"{'x'.join(map(str, bench_export.MODEL['shape']))}: variants {' and '.join(VARIANTS)} (on: synthetic "
             f"weights from a proven cache copy; off: computed), "
             f"{count} alternated pairs, medians; torch {torch.__version__}, {len(os.sched_getaffinity(0))} CPUs",
             f"{'':12s} {'wall s':>7s} {'cpu s':>7s} {'weights s':>10s} {'weights cpu s':>14s} "
             f"{'weights+model s':>16s} {'pt2 load s':>11s}   walls   loads"]
    for side in ("cold", "warm"):
        for variant in VARIANTS:
            rs = runs[(variant, side)]
            lines.append(f"{variant + ' ' + side:12s} {statistics.median(r['wall_s'] for r in rs):7.2f} "
                         f"{statistics.median(r['cpu_s'] for r in rs):7.2f} "
                         f"{statistics.median(r['weights_s'] for r in rs):10.2f} "
                         f"{statistics.median(r['weights_cpu_s'] for r in rs):14.2f} "
                         f"{statistics.median(r['build_s'] for r in rs):16.2f} "
                         f"{statistics.median(r['pt2_load_s'] for r in rs):11.2f}   "
                         f"{[round(r['wall_s'], 2) for r in rs]}   {' | '.join(r['load'] for r in rs)}")
        on, off = runs[(VARIANTS[0], side)], runs[(VARIANTS[1], side)]
        deltas = [a["wall_s"] - b["wall_s"] for a, b in zip(on, off)]
        lines.append(f"{side}: {VARIANTS[0]} - {VARIANTS[1]} per pair {[round(d, 2) for d in deltas]} s, median "
                     f"{statistics.median(deltas):+.2f} s")
    missed = sum(1 for variant in VARIANTS for r in runs[(variant, "warm")] if r["onnx_stored"])
    if missed:
        lines.append(f"warning: {missed} warm run(s) missed the ONNX cache (the project's sources changed between "
                     "cold and warm): their walls are not warm ones")
    codes = sorted({r["rc"] for rs in runs.values() for r in rs})
    if any(c not in (0, 1) for c in codes):
        lines.append(f"warning: some runs failed (exit codes {codes})")
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 3 and sys.argv[1] == CHILD_FLAG:
        variant_child(sys.argv[2], Path(sys.argv[3]), sys.argv[4:])
        return 0
    if len(sys.argv) > 4 and sys.argv[1] == BUILD_FLAG:
        bench_export.MODEL.update(backbone=sys.argv[5], shape=[int(n) for n in sys.argv[6:10]])
        build_child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3, help="Alternated pairs of on and off [default: 3]")
    parser.add_argument("--log", type=Path, default=DEFAULT_LOG, help=f"Append here [default: {DEFAULT_LOG}]")
    parser.add_argument("--backbone", default=bench_export.MODEL["backbone"], help="[default: resnet50]")
    parser.add_argument("--shape", type=int, nargs=4, default=bench_export.MODEL["shape"],
                        help="[default: 1 3 224 224]")
    parser.add_argument("--variants", nargs=2, default=VARIANTS, choices=("on", "off"),
                        help="The two variants to alternate [default: on off]")
    parser.add_argument("--build-only", action="store_true",
                        help="Time the build alone (weights and model) in fresh processes: seconds, not minutes")
    parser.add_argument("--max-load", type=float, default=QUIET[0],
                        help="Before each run, wait for a 1-minute load average under this [default: no wait]")
    parser.add_argument("--max-wait", type=float, default=300.0, help="...at most this many seconds [default: 300]")
    args = parser.parse_args()
    QUIET[:] = [args.max_load, args.max_wait]
    VARIANTS[:] = args.variants
    bench_export.MODEL.update(backbone=args.backbone, shape=list(args.shape))
    try:
        count = max(1, args.pairs)
        text = render_builds(builds(count), count) if args.build_only else render(pairs(count), count)
        print(text)
        with args.log.open("a") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n{text}\n")
        print(f"appended to {args.log}")
    except BaseException as exc:  # a benchmark reports, it never fails the caller
        print("interrupted" if isinstance(exc, KeyboardInterrupt) else f"benchmark did not complete: {exc!r}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
