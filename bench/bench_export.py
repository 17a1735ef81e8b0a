"""`verify export --norm frozen`, cold and warm, against PyTorch's own check, and where its time goes.

Run by hand (tens of minutes on 2 cores); one command prints the table and writes the log:

    python bench/bench_export.py [--repeats 3] [--log bench/results/export-cpu.log (appended)] [--json out.json]

Each round runs, alternating which side goes first so drift hits both alike: a cold `verify export` (a new empty
cache folder), a warm one (the same cache folder again, so what the cache's rules allow is served from it), and
the peer (`torch.onnx.export(dynamo=True, verify=True)` + `verify_onnx_program` on the same ResNet-50 FrozenBN
body). Each is a fresh subprocess; medians of `--repeats` give the ratios against the targets (cold <= 1.0x,
warm <= 0.35x). A warm run that stored a new export entry missed the cache (another process edited the
project's sources, which are part of every key): it is flagged.

Each `verify export` runs in a child that wraps the pipeline's stage functions with timers (a clock read around
each call) and runs the CLI in-process: the median cold and warm runs' per-stage breakdown (imports, weights, each
format's export, each runtime's load, runs and determinism rerun, oracle, judging, trust checks, folder write), the
rest being process start, CLI and rendering. The load average is printed beside the figures: on a shared machine
they are loaded, the ratios less so. `--backbone resnet18 --shape 1 3 32 32` checks the script in a minute.

A benchmark, not a test: it always exits 0. Peak RSS is the child's own high-water mark (ru_maxrss from wait4).
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
TARGETS = {"cold": 1.0, "warm": 0.35}
"""verify / peer wall-time ratios (issue 17, part 3)."""
DEFAULT_LOG = ROOT / "bench" / "results" / "export-cpu.log"
SIDES = ("cold", "warm", "peer")
CACHE_ENV = "BACKBONE_VERIFY_CACHE_DIR"
BREAKDOWN_FLAG = "--breakdown-child"
IMPORTED = ("torch", "torchvision", "numpy", "onnx", "onnxruntime")
"""What every `verify export` imports (timed where each is first imported in the instrumented child, inside the
stages that import them; the dynamo exporter's onnxscript is imported only where the ONNX export runs)."""
IMPORTS_LABEL = f"  of all the lines below: first imports of {', '.join(IMPORTED)}"
REST_IMPORTS_LABEL = "  of which their first imports outside every stage (torch)"
CLI_LABEL = "CLI import (verify.cli.app: typer, the commands)"
ACTIVE = [0]
"""How many timed stages are running now (0: the time is the rest's)."""
OVERLAP_ENV = "BACKBONE_VERIFY_EXPORT_OVERLAP"
LAYERS_ENV = "BACKBONE_VERIFY_LAYERS"
"""0 turns the layer verdict off (verify/judge/layers.py LAYERS_ENV): recorded in the log's header."""
"""auto, on or off (verify/pipeline/overlap.py): set it to bench a mode; auto goes serial on a busy machine."""


CPU: dict[str, float] = {}
"""The breakdown child's CPU seconds (all of its threads: time.process_time) by the same keys as its wall timings."""
TIMELINE: dict[str, float] = {}
"""Seconds since the breakdown child started at which the model went to the background export's child, each of its
files arrived, and this process first wanted each: which of the two processes was the critical path."""
STARTED = [time.perf_counter()]


MODEL: dict = {"backbone": "resnet50", "shape": [1, 3, 224, 224], "samples": None}
"""What both sides export (--backbone, --shape) and verify's inputs per verdict (--samples; None: its default)."""


def verify_args(out: str) -> list[str]:
    samples = ["--samples", str(MODEL["samples"])] if MODEL["samples"] else []
    return ["export", "--norm", "frozen", "-b", MODEL["backbone"], "--shape", "x".join(map(str, MODEL["shape"])),
            *samples, "--out", out]


def measure(cmd: list[str], env: dict[str, str]) -> dict:
    """Run `cmd` once: wall seconds, peak RSS in MiB, exit code, stderr tail."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    return {"wall_s": wall, "peak_mib": usage.ru_maxrss / 1024, "rc": os.waitstatus_to_exitcode(status),
            "cpu_s": usage.ru_utime + usage.ru_stime, "stderr_tail": err[-600:]}


def export_entries(cache: Path) -> int:
    return sum(1 for _ in (cache / "v1" / "entries" / "export").rglob("*.json")) if cache.exists() else 0


def run_side(side: str, cache: Path) -> dict:
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix=f"bench-{side}-") as out:
        if side == "peer":
            return measure([sys.executable, str(ROOT / "bench" / "peer_export.py"), "--out", out, "--backbone",
                            MODEL["backbone"], "--shape", *map(str, MODEL["shape"])], env)
        env[CACHE_ENV] = str(cache)
        before = export_entries(cache)
        timings = Path(out) / "timings.json"
        result = measure([sys.executable, str(Path(__file__).resolve()), BREAKDOWN_FLAG, str(timings),
                          *verify_args(str(Path(out) / "artifacts"))], env)
        result["cache_stored"] = export_entries(cache) - before
        recorded = json.loads(timings.read_text()) if timings.exists() else {}
        result["stages"], result["stage_cpu"] = recorded.get("stages", {}), recorded.get("cpu", {})
        result["timeline"] = recorded.get("timeline", {})
        return result


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def rounds(repeats: int) -> dict[str, list[dict]]:
    sides: dict[str, list[dict]] = {side: [] for side in SIDES}
    for i in range(repeats):
        cache = Path(tempfile.mkdtemp(prefix="bench-cache-"))
        try:
            order = ("cold", "warm", "peer") if i % 2 == 0 else ("peer", "cold", "warm")  # warm needs cold's cache
            for side in order:
                result = run_side(side, cache)
                result["load"] = load_average()
                sides[side].append(result)
                miss = " (warm MISSED the cache: sources edited meanwhile?)" if side == "warm" and \
                    result.get("cache_stored") else ""
                print(f"  [{i + 1}/{repeats}] {side:5s} {result['wall_s']:6.1f} s  cpu {result['cpu_s']:6.1f} s  "
                      f"{result['peak_mib']:6.0f} MiB  rc={result['rc']}  load {result['load']}{miss}",
                      file=sys.stderr, flush=True)
                if result["rc"] not in (0, 1) or (side == "peer" and result["rc"]):
                    print(f"    {side} failed:\n{result['stderr_tail']}", file=sys.stderr)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    return sides


def breakdown_child(report: Path, args: list[str]) -> None:
    """Run the CLI in this process with the pipeline's stages wrapped by timers, and the first imports of the heavy
    packages timed where they happen (as in `verify` itself, whose background child starts before them)."""
    started = STARTED[0] = time.perf_counter()
    timings: dict[str, float] = {IMPORTS_LABEL: 0.0}
    _time_imports(timings)
    _wrap_stages(timings)
    sys.argv = ["verify", *args]
    import importlib

    begin, cpu = time.perf_counter(), time.process_time()
    cli_app = importlib.import_module("verify.cli.app")  # the module: `verify.cli.app` as an attribute is the Typer
    timings[CLI_LABEL], CPU[CLI_LABEL] = time.perf_counter() - begin, time.process_time() - cpu

    def finish(code: int) -> None:
        timings["(total in this process)"] = time.perf_counter() - started
        timings["(onnxscript imported here)"] = float("onnxscript" in sys.modules)
        CPU["(total in this process)"] = time.process_time()
        import resource

        children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the background export's child, once reaped
        CPU["(background child, reaped)"] = children.ru_utime + children.ru_stime
        report.write_text(json.dumps({"stages": timings, "cpu": CPU, "timeline": TIMELINE, "rc": code}))

    exit_now = cli_app.exit_now

    def timed_exit(code: int) -> None:  # the CLI's own exit (it skips the interpreter's teardown), timings first
        finish(code)
        exit_now(code)

    cli_app.exit_now = timed_exit
    try:
        cli_app.main()
    except SystemExit as exc:
        finish(exc.code if isinstance(exc.code, int) else 1)


def _time_imports(timings: dict[str, float]) -> None:
    """Add the wall time of each first import of an IMPORTED package (outermost only) to timings[IMPORTS_LABEL]."""
    import builtins

    original, depth = builtins.__import__, [0]

    def timed_import(name, *args, **kwargs):
        if depth[0] or name.split(".")[0] not in IMPORTED or name.split(".")[0] in sys.modules:
            return original(name, *args, **kwargs)
        depth[0], begin, cpu = 1, time.perf_counter(), time.process_time()
        try:
            return original(name, *args, **kwargs)
        finally:
            depth[0] = 0
            timings[IMPORTS_LABEL] += time.perf_counter() - begin
            CPU[IMPORTS_LABEL] = CPU.get(IMPORTS_LABEL, 0.0) + time.process_time() - cpu
            if not ACTIVE[0]:  # in no stage: part of the rest
                timings[REST_IMPORTS_LABEL] = timings.get(REST_IMPORTS_LABEL, 0.0) + time.perf_counter() - begin
                CPU[REST_IMPORTS_LABEL] = CPU.get(REST_IMPORTS_LABEL, 0.0) + time.process_time() - cpu

    builtins.__import__ = timed_import


def _timed(timings: dict[str, float], label, fn):
    """`fn` with its wall time added to timings[label(*args)] on each call (its CPU time to CPU[...])."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        key = label(*args, **kwargs)
        timings.setdefault(key, 0.0)  # listed where it starts: a stage before the stages nested in it
        begin, cpu = time.perf_counter(), time.process_time()
        ACTIVE[0] += 1
        try:
            return fn(*args, **kwargs)
        finally:
            ACTIVE[0] -= 1
            timings[key] += time.perf_counter() - begin
            CPU[key] = CPU.get(key, 0.0) + time.process_time() - cpu
    return wrapper


def _patch(timings: dict[str, float], module: str, name: str, label) -> None:
    import importlib

    mod = importlib.import_module(module)
    setattr(mod, name, _timed(timings, label if callable(label) else (lambda *a, **k: label), getattr(mod, name)))


def _wrap_stages(timings: dict[str, float]) -> None:
    """Every stage the export goes through, by the module attribute its caller looks up at call time."""
    import verify.pipeline.overlap as overlap
    import verify.runtimes as runtimes

    def weights_label(*args, **kwargs) -> str:
        TIMELINE.setdefault("the build began (weights)", time.perf_counter() - STARTED[0])
        return "build: synthetic weights"

    _patch(timings, "exporter.weights", "load_weights", weights_label)
    _patch(timings, "exporter.backbones", "build_model", "build: model (torchvision builder, weights loaded)")
    import exporter.backbones as backbones

    built_by = backbones.build_model

    def build_model(*args, **kwargs):
        try:
            return built_by(*args, **kwargs)
        finally:
            TIMELINE.setdefault("the build ended (model)", time.perf_counter() - STARTED[0])

    backbones.build_model = build_model
    _patch(timings, "verify.pipeline.stages", "export_stage", lambda context, fmt, *a, **k: f"export {fmt}")
    _patch(timings, "verify.pipeline.stages", "_cached_export", lambda c, k, ctx, fmt, *a, **kw:
           f"  of which cache read + checks {fmt}")
    _patch(timings, "verify.pipeline.stages", "background_child", "start of the background export's child")
    _patch(timings, "verify.pipeline.stages", "start_export_stage", "background export: cache look-up, job sent")
    _patch(timings, "verify.pipeline.stages", "run_stage", lambda name, *a, **k: f"run {name} (load + runs)")
    _patch(timings, "verify.pipeline.stages", "oracles_stage", "oracle: float64 runs + floors")
    _patch(timings, "verify.pipeline.stages", "judge_stage", "judging (pairs and oracle)")
    _patch(timings, "verify.pipeline.stages", "trust_problems", "trust checks (determinism, floor bound)")
    _patch(timings, "verify.pipeline.stages", "second_shape_stage",
           "second shape: the model in float32 and float64 there, judging")
    _patch(timings, "verify.pipeline.stages", "layers_stage", "layer verdict: every file's layers re-run, judged")
    import verify.pipeline.stages as stages

    layered = stages.layers_stage

    def layers_stage(*args, **kwargs):  # on the timeline beside the files' arrivals (speed 30)
        TIMELINE.setdefault("the layer verdict began", time.perf_counter() - STARTED[0])
        try:
            return layered(*args, **kwargs)
        finally:
            TIMELINE.setdefault("the layer verdict ended", time.perf_counter() - STARTED[0])

    stages.layers_stage = layers_stage
    _patch(timings, "verify.folder.write", "write_artifact_folder", "folder write (goldens, manifest, hashes)")
    original_wait, original_drain, original_send = (overlap.BackgroundExport.wait, overlap.BackgroundExport._drain,
                                                    overlap.BackgroundExport.send)

    def wait(self, fmt, *args):
        TIMELINE.setdefault(f"{fmt} wanted by this process", time.perf_counter() - STARTED[0])
        return original_wait(self, fmt, *args)

    def drain(self, timeout):
        before = set(self._received)
        try:
            return original_drain(self, timeout)
        finally:
            for fmt in set(self._received) - before:
                TIMELINE.setdefault(f"{fmt} arrived from the child", time.perf_counter() - STARTED[0])

    def send(self, *args, **kwargs):
        TIMELINE.setdefault("model sent to the child", time.perf_counter() - STARTED[0])
        return original_send(self, *args, **kwargs)

    overlap.BackgroundExport.wait = _timed(timings, lambda self, fmt, *a: f"wait for the background {fmt} export",
                                           wait)
    overlap.BackgroundExport._drain, overlap.BackgroundExport.send = drain, send
    import verify.pipeline.preload as preload

    original_take = preload.Preloads.take

    def take(self, runtime):  # timed only where a load was started
        if runtime not in self.loads:
            return original_take(self, runtime)
        return _timed(timings, lambda *a: f"wait for the background load of {runtime}", original_take)(self, runtime)

    preload.Preloads.take = take
    original_make = runtimes.make_runtime

    def make_runtime(name, *args, **kwargs):
        import threading

        instance = original_make(name, *args, **kwargs)
        where = "" if threading.current_thread() is threading.main_thread() else " (a thread's, beside the lines above)"
        instance.load = _timed(timings, lambda *a, **k: f"  of which load {name}{where}", instance.load)
        return instance

    runtimes.make_runtime = make_runtime
    calls: dict[str, int] = {}
    import verify.judge.trust as trust

    original_guarded = trust.run_guarded

    def run_guarded(loaded, feed):
        key = f"  of which runs {type(loaded).__name__}"
        calls[key] = calls.get(key, 0) + 1
        begin, cpu = time.perf_counter(), time.process_time()
        try:
            return original_guarded(loaded, feed)
        finally:
            timings[key] = timings.get(key, 0.0) + time.perf_counter() - begin
            timings[f"{key} (last = determinism rerun)"] = time.perf_counter() - begin
            CPU[key] = CPU.get(key, 0.0) + time.process_time() - cpu
            CPU[f"{key} (last = determinism rerun)"] = time.process_time() - cpu

    trust.run_guarded = run_guarded


def summarise(runs: list[dict]) -> dict:
    return {"wall_s": statistics.median(r["wall_s"] for r in runs),
            "cpu_s": statistics.median(r["cpu_s"] for r in runs),
            "peak_mib": statistics.median(r["peak_mib"] for r in runs),
            "walls": [round(r["wall_s"], 1) for r in runs], "exit_codes": [r["rc"] for r in runs],
            "loads": [r["load"] for r in runs]}


def median_run(runs: list[dict]) -> dict:
    return sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]


def bench(repeats: int) -> dict:
    sides = rounds(repeats)
    summary = {side: summarise(runs) for side, runs in sides.items()}
    peer = summary["peer"]["wall_s"]
    stages = [{"kind": kind, **{k: median_run(sides[kind]).get(k) for k in ("wall_s", "stages", "stage_cpu", "timeline",
                                                                            "load")}}
              for kind in ("cold", "warm")]
    return {
        "repeats": repeats, "summary": summary, "stages": stages,
        "ratios": {"cold": summary["cold"]["wall_s"] / peer, "warm": summary["warm"]["wall_s"] / peer},
        "warm_misses": sum(1 for r in sides["warm"] if r.get("cache_stored")),
        "targets": TARGETS, "python": sys.version.split()[0], "cpus": len(os.sched_getaffinity(0)),
        "overlap": os.environ.get(OVERLAP_ENV, "") or "auto", "model": dict(MODEL),
        "layers": os.environ.get(LAYERS_ENV, "") or "unset (the layer verdict by default)",
    }


def render(result: dict) -> str:
    import torch

    lines = [f"verify export --norm frozen vs torch.onnx.export(dynamo=True, verify=True) + verify_onnx_program, "
             f"{result['model']['backbone']} FrozenBN body {'x'.join(map(str, result['model']['shape']))}, median of "
             f"{result['repeats']}, alternated, verify on {result['model']['samples'] or 'its default number of'} "
             f"inputs per verdict; torch "
             f"{torch.__version__}, {result['cpus']} CPUs, python {result['python']}"
             + f", {OVERLAP_ENV}={result['overlap']}, {LAYERS_ENV}={result.get('layers', '?')}",
             f"{'':6s} {'wall s':>7s} {'cpu s':>7s} {'peak MiB':>9s}   runs (s)   load average (1/5/15 min) per run"]
    for side in SIDES:
        s = result["summary"][side]
        lines.append(f"{side:6s} {s['wall_s']:7.1f} {s['cpu_s']:7.1f} {s['peak_mib']:9.0f}   {s['walls']}   "
                     f"{' | '.join(s['loads'])}")
    for kind in ("cold", "warm"):
        ratio, target = result["ratios"][kind], result["targets"][kind]
        lines.append(f"{kind} ratio verify/peer {ratio:.2f}x (target <= {target}x) "
                     f"{'ok' if ratio <= target else 'OVER'}")
    if result["warm_misses"]:
        lines.append(f"warning: {result['warm_misses']} warm run(s) missed the cache (the project's sources changed "
                     "between runs); the warm figure is not a warm one")
    codes = [c for side in SIDES for c in result["summary"][side]["exit_codes"]]
    if any(c not in (0, 1) for c in codes) or any(result["summary"]["peer"]["exit_codes"]):
        lines.append(f"warning: some runs failed (exit codes {codes}); the figures are not comparable")
    for stages in result["stages"]:
        lines.append(f"\nwhere the median {stages['kind']} export's time goes (wall "
                     f"{stages['wall_s']:.1f} s, load {stages.get('load', '?')}; nested lines are part of the line "
                     f"above; a background export overlaps the lines after its start):")
        timed, cpu = dict(stages["stages"]), dict(stages.get("stage_cpu") or {})
        if not timed:
            lines.append("  no timings: the run failed")
            continue
        total = timed.pop("(total in this process)", 0.0)
        onnxscript = timed.pop("(onnxscript imported here)", 0.0)
        rest_imports = timed.pop(REST_IMPORTS_LABEL, None)
        counted = 0.0
        for name, seconds in timed.items():
            lines.append(f"  {name:66s} {seconds:6.2f} s" + (f" {cpu[name]:6.2f} cpu s" if name in cpu else ""))
            counted += seconds if not name.startswith(" ") and not name.startswith("wait") else 0.0
        waits = sum(s for n, s in timed.items() if n.startswith("wait"))
        lines.append(f"  {'process start, interpreter exit (wall - in-process)':66s} {stages['wall_s'] - total:6.2f} s")
        lines.append(f"  {'CLI, planning, report, rendering, staging (the rest)':66s} "
                     f"{max(0.0, total - counted - waits):6.2f} s")
        if rest_imports is not None:
            lines.append(f"  {REST_IMPORTS_LABEL:66s} {rest_imports:6.2f} s"
                         + (f" {cpu[REST_IMPORTS_LABEL]:6.2f} cpu s" if REST_IMPORTS_LABEL in cpu else ""))
        if "(total in this process)" in cpu:
            lines.append(f"  {'CPU of this process / of the background export child (all threads)':66s} "
                         f"{cpu['(total in this process)']:6.2f} / {cpu.get('(background child, reaped)', 0.0):.2f} s")
        for event, at in sorted((stages.get("timeline") or {}).items(), key=lambda item: item[1]):
            lines.append(f"  at {at:6.2f} s: {event}")
        lines.append(f"  (onnxscript {'was' if onnxscript else 'was not'} imported by the verify process)")
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == BREAKDOWN_FLAG:
        breakdown_child(Path(sys.argv[2]), sys.argv[3:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="Rounds of cold, warm and peer [default: 3]")
    parser.add_argument("--log", type=Path, default=DEFAULT_LOG, help=f"Append the table here [default: {DEFAULT_LOG}]")
    parser.add_argument("--json", type=Path, help="Also write the figures as JSON here")
    parser.add_argument("--backbone", default=MODEL["backbone"], help="[default: resnet50]")
    parser.add_argument("--shape", type=int, nargs=4, default=MODEL["shape"], help="[default: 1 3 224 224]")
    parser.add_argument("--samples", type=int, help="verify's seeded inputs per verdict [default: its own]")
    args = parser.parse_args()
    MODEL.update(backbone=args.backbone, shape=list(args.shape), samples=args.samples)
    try:
        result = bench(max(1, args.repeats))
        text = render(result)
        print(text)
        with args.log.open("a") as log:  # appended: the earlier measurements stay beside the new one
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n{text}\n")
        print(f"appended to {args.log}")
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
    except BaseException as exc:  # a benchmark reports, it never fails the caller
        print("interrupted" if isinstance(exc, KeyboardInterrupt) else f"benchmark did not complete: {exc!r}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
