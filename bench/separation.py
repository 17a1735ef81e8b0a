"""Which verdict rule separates correct runs from the least visible bug best (issue 17, "Separation").

Research, not a product change: every candidate rule is computed offline from per-channel statistics
gathered once, so one pass of models and runtimes judges them all.

1. Correct runs: backbone x norm (body view), under eager, TorchScript and ONNX Runtime at every
   optimisation level (the legacy `torchscript` ONNX exporter; `dynamo` too where --dynamo names the
   backbone, frozen norm), on 17 inputs (8 seeded standard normal, 4 uniform [0, 1], 4 image-like smooth
   inputs normalised like ImageNet, a flat grey one judged alone). Every run against the float64 oracle
   and every pair of runs. Each rule is scored on input sets of 1 to 16 (INPUT_SETS).
2. Bugs (bench/calibrate_auto.py's picks, frozen norm): a 0.1 % weight error in one output channel of a
   convolution from every stage, resnet50's layer4.2.conv1[391] (the weakest today) and more layer4 /
   last-block picks, and ReLU / residual / eps / channel-order bugs on the ResNets. A bug's ratio is the
   smaller of its ratio against the oracle and against the clean float32 run (as calibrate_auto does).

Per input and output, each comparison keeps per channel: max |d|, sum d^2, and per output the 99.9 %
quantile of |d|. Per input the floor side keeps today's NoiseFloor (eager + folded norms), and per channel
sum e^2 of e = eager32 - fp64, folded32 - fp64 and eager32 - folded32 (a pair of valid float32 runs).
A rule = a statistic + an input set; its separation = least visible bug ratio / largest correct ratio.

    OMP_NUM_THREADS=1 nice -n 10 python bench/separation.py --log bench/results/separation-cpu.log
    OMP_NUM_THREADS=1 nice -n 10 python bench/separation.py --quick
"""

from __future__ import annotations

import argparse
import itertools
import math
import pickle
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from calibrate_auto import ORT_LEVELS, broken, mobilenet_bugs, pick_bugs, printer, stage_groups
from calibrate_auto import make_input as calibrate_input

from exporter.backbones import BuiltModel, build_model
from exporter.export import ExportOptions, export_model
from exporter.formats.eager import eager_artifact
from exporter.formats.onnx import OnnxOptions
from exporter.spec import ModelSpec
from exporter.weights import load_weights
from verify.judge.compare import AUTO_FACTOR
from verify.judge.folding import folded_float32
from verify.judge.measure import measure_floors
from verify.judge.noise_floor import CHANNEL_FLOOR_SHARE, MIN_CHANNEL_ELEMENTS, NoiseFloor
from verify.runtimes import RuntimeOptions, make_runtime
from verify.runtimes.onnxruntime import OnnxRuntime
from verify.runtimes.torch_common import to_numpy_outputs

INPUTS = ("normal0", "uniform0", "image0", "normal1", "uniform1", "image1", "normal2", "normal3", "constant0",
          "normal4", "normal5", "normal6", "normal7", "uniform2", "uniform3", "image2", "image3")
"""normal0 is today's verdict input; the others are the candidates' extra inputs; constant0 (an odd
user input, a flat grey image) is judged alone, to see what each rule does on a correlated input."""
INPUT_SETS = {"1 input (normal)": INPUTS[:1], "1 input (constant)": ("constant0",), "3 inputs": INPUTS[:3],
              "4 inputs": INPUTS[:4], "8 inputs": INPUTS[:8],
              **{f"{n} normals": tuple(f"normal{s}" for s in range(n)) for n in (2, 4, 8)},
              "16 inputs": tuple(i for i in INPUTS if i != "constant0")}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGE_BLOCK = 16
"""The image-like input is uniform noise at 1/IMAGE_BLOCK resolution, upsampled bilinearly: smooth, like a photo."""
QUANTILE = 0.999
WEAK_LAYER4 = ("layer4.2.conv1", 391)
"""Today's least visible bug (bench/results/calibrate-cpu-perchannel.log), always included for resnet50."""
EXTRA_LAYER4_PICKS = 8
"""More layer4 / last-block picks for resnet50, where the weakest bugs live."""


def make_input(kind: str, shape: tuple[int, ...]) -> np.ndarray:
    """`<kind><seed>`: calibrate_auto's kinds, plus `image` (smooth, ImageNet-normalised)."""
    name, seed = kind[:-1], int(kind[-1])
    if name != "image":
        return calibrate_input(name, shape, seed)
    rng = np.random.default_rng(seed)
    n, c, h, w = shape
    coarse = torch.from_numpy(rng.random((n, c, max(h // IMAGE_BLOCK, 2), max(w // IMAGE_BLOCK, 2))))
    smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    mean, std = (torch.tensor(v, dtype=torch.float64).reshape(1, -1, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    return ((smooth - mean) / std).numpy().astype(np.float32)


# ---------------------------------------------------------------- statistics gathered once


@dataclass
class Stat:
    """One comparison of one output on one input: per channel max |d|, sum d^2 and sum of signed d; per
    output q99.9."""
    maxd: np.ndarray
    sumsq: np.ndarray
    signed: np.ndarray
    per_channel: int
    quantile: float


def stat_of(a: np.ndarray, b: np.ndarray) -> Stat:
    signed = a.astype(np.float64) - b.astype(np.float64)
    signed = np.where(np.isfinite(signed), signed, 0.0)
    d = np.abs(signed)
    axes = (0, 2, 3)
    return Stat(d.max(axis=axes), (d ** 2).sum(axis=axes), signed.sum(axis=axes), d.size // d.shape[1],
                float(np.quantile(d, QUANTILE)))


def stats_of(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, Stat]:
    return {name: stat_of(a[name], b[name]) for name in b}


@dataclass
class Floor:
    """The floor side of one output on one input."""
    today: NoiseFloor
    eager: Stat
    """eager32 - fp64"""
    folded: Stat | None
    """folded32 - fp64"""
    pair: Stat | None
    """eager32 - folded32"""
    active: np.ndarray


def floors_of(eager: dict, fp64: dict, folded: dict | None) -> dict[str, Floor]:
    today = measure_floors(eager, fp64, samples=[folded] if folded else [])
    result = {}
    for name, ref in fp64.items():
        active = (np.isfinite(ref) & (ref != 0)).sum(axis=(0, 2, 3))
        result[name] = Floor(today[name], stat_of(eager[name], ref),
                             stat_of(folded[name], ref) if folded else None,
                             stat_of(eager[name], folded[name]) if folded else None, active)
    return result


@dataclass
class Measured:
    """Per input: the floors and every comparison's stats (correct runs or bugs)."""
    floors: dict[str, dict[str, Floor]] = field(default_factory=dict)
    comparisons: dict[str, dict[str, dict[str, Stat]]] = field(default_factory=dict)
    """label -> input -> output -> Stat"""


# ---------------------------------------------------------------- the candidate rules


def _samples(floor: Floor) -> list[Stat]:
    return [s for s in (floor.eager, floor.folded, floor.pair) if s is not None]


def channel_max_own(stats: dict, floors: dict, inputs) -> float:
    """Today's statistic on each input against that input's floor; the worst input."""
    return max(float((stats[i][o].maxd / floors[i][o].today.channels).max()) for i in inputs for o in stats[i])


def channel_max_pooled(stats: dict, floors: dict, inputs) -> float:
    """Today's statistic against the channel floor maxed over the inputs (more samples of rounding)."""
    worst = 0.0
    for o in stats[inputs[0]]:
        floor = np.max([floors[i][o].today.channels for i in inputs], axis=0)
        worst = max(worst, max(float((stats[i][o].maxd / floor).max()) for i in inputs))
    return worst


def channel_max_with_pair(stats: dict, floors: dict, inputs) -> float:
    """Channel max against a floor from all three rounding samples (eager, folded, eager-folded), maxed over
    the inputs, at least CHANNEL_FLOOR_SHARE of the output's; the output's where a channel is (nearly) empty."""
    worst = 0.0
    for o in stats[inputs[0]]:
        own = np.max([s.maxd for i in inputs for s in _samples(floors[i][o])], axis=0)
        active = np.max([floors[i][o].active for i in inputs], axis=0)
        output = max(float(own.max()), np.finfo(np.float64).tiny)
        floor = np.where(active >= MIN_CHANNEL_ELEMENTS, np.maximum(own, CHANNEL_FLOOR_SHARE * output), output)
        worst = max(worst, max(float((stats[i][o].maxd / floor).max()) for i in inputs))
    return worst


def _pooled_ms(parts: list[Stat]) -> np.ndarray:
    return np.sum([p.sumsq for p in parts], axis=0) / sum(p.per_channel for p in parts)


def channel_rms(stats: dict, floors: dict, inputs, share: float = CHANNEL_FLOOR_SHARE) -> float:
    """Per channel RMS of d pooled over the inputs, over the largest pooled RMS of the three rounding
    samples (eager, folded, eager-folded), at least `share` of the output's; a channel with too few
    non-zero elements on every input takes the output's."""
    worst = 0.0
    for o in stats[inputs[0]]:
        run = np.sqrt(_pooled_ms([stats[i][o] for i in inputs]))
        kinds = zip(*[_samples(floors[i][o]) for i in inputs])
        own = np.sqrt(np.max([_pooled_ms(list(k)) for k in kinds], axis=0))
        ms_out = np.max([np.mean(_pooled_ms(list(k))) for k in zip(*[_samples(floors[i][o]) for i in inputs])])
        output = max(math.sqrt(ms_out), np.finfo(np.float64).tiny)
        active = np.max([floors[i][o].active for i in inputs], axis=0)
        floor = np.where(active >= MIN_CHANNEL_ELEMENTS, np.maximum(own, share * output), output)
        worst = max(worst, float((run / floor).max()))
    return worst


def channel_mean(stats: dict, floors: dict, inputs, share: float = CHANNEL_FLOOR_SHARE) -> float:
    """A systematic error (a bug) keeps its sign over a channel; rounding averages out. Per channel |mean d|
    pooled over the inputs, over the largest of each rounding sample's |mean e| and its RMS / sqrt(n) (the
    spread a zero-mean mean has), at least `share` of the output's largest such floor."""
    worst = 0.0
    for o in stats[inputs[0]]:
        parts = [stats[i][o] for i in inputs]
        n = sum(p.per_channel for p in parts)
        run = np.abs(np.sum([p.signed for p in parts], axis=0)) / n
        own = np.zeros_like(run)
        for kind in zip(*[_samples(floors[i][o]) for i in inputs]):
            bias = np.abs(np.sum([k.signed for k in kind], axis=0)) / n
            own = np.maximum(own, np.maximum(bias, np.sqrt(_pooled_ms(list(kind)) / n)))
        active = np.max([floors[i][o].active for i in inputs], axis=0)
        output = max(float(own.max()), np.finfo(np.float64).tiny)
        floor = np.where(active >= MIN_CHANNEL_ELEMENTS, np.maximum(own, share * output), output)
        worst = max(worst, float((run / floor).max()))
    return worst


def output_rms(stats: dict, floors: dict, inputs) -> float:
    """RMS of d over the whole output and the inputs, over the largest sample's (torch's `same(fp64_ref=)`)."""
    worst = 0.0
    for o in stats[inputs[0]]:
        run = np.mean(_pooled_ms([stats[i][o] for i in inputs]))
        floor = max(np.mean(_pooled_ms(list(k))) for k in zip(*[_samples(floors[i][o]) for i in inputs]))
        worst = max(worst, math.sqrt(run / floor))
    return worst


def output_quantile(stats: dict, floors: dict, inputs) -> float:
    """The 99.9 % quantile of |d| over the output's, of the largest sample's; the worst input."""
    return max(stats[i][o].quantile / max(s.quantile for s in _samples(floors[i][o]))
               for i in inputs for o in stats[i])


STATISTICS: dict[str, Callable] = {
    "channel max / own floor (today)": channel_max_own,
    "channel max / floor max over inputs": channel_max_pooled,
    "channel max / 3-sample floor max over inputs": channel_max_with_pair,
    "channel RMS / pooled RMS floor": channel_rms,
    "channel RMS / pooled RMS floor, share 0.5": lambda s, f, i: channel_rms(s, f, i, 0.5),
    "channel |mean| / pooled bias-or-spread floor": channel_mean,
    "output RMS / pooled RMS floor": output_rms,
    f"output q{QUANTILE * 100:g} / floor q{QUANTILE * 100:g}": output_quantile,
}
COMBINED = (("channel RMS / pooled RMS floor", "channel |mean| / pooled bias-or-spread floor"),
            ("channel max / floor max over inputs", "channel RMS / pooled RMS floor",
             "channel |mean| / pooled bias-or-spread floor"))
"""Statistics judged together: each over its own largest correct ratio, the largest of them (a channel max
arm keeps an error confined to a few elements visible, which pooled statistics dilute)."""


# ---------------------------------------------------------------- measuring


class Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, key: str, fn: Callable, *args):
        start = time.perf_counter()
        result = fn(*args)
        self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - start
        return result


def reference(built: BuiltModel, shape, inputs: dict[str, np.ndarray], timer: Timer) -> tuple[dict, dict, dict]:
    """Per input: fp64 outputs, eager32 outputs and the floors (cached: the expensive part)."""
    eager = eager_artifact(built, shape)
    oracle_rt = make_runtime("eager", RuntimeOptions(dtype="float64")).load(eager)
    eager_rt = make_runtime("eager").load(eager)
    folded_model = folded_float32(built.model, torch.from_numpy(next(iter(inputs.values()))))
    fp64, clean, floors = {}, {}, {}
    for kind, x in inputs.items():
        fp64[kind] = timer("oracle fp64", oracle_rt.run, {"input": x})
        clean[kind] = timer("eager fp32", eager_rt.run, {"input": x})
        folded = None
        if folded_model is not None:
            with torch.inference_mode():
                folded = timer("folded fp32", lambda m, t: to_numpy_outputs(m(t), eager.meta.output_names),
                               folded_model, torch.from_numpy(x))
        floors[kind] = timer("floors", floors_of, clean[kind], fp64[kind], folded)
    return fp64, clean, floors


def correct_runs(built: BuiltModel, shape, inputs: dict, fp64: dict, floors: dict, exporters, levels, folder: Path,
                 timer: Timer) -> Measured:
    eager = eager_artifact(built, shape)
    example = torch.from_numpy(inputs[INPUTS[0]])
    runtimes = [("eager", make_runtime("eager").load(eager)),
                ("torchscript", make_runtime("torchscript").load(
                    timer("export", export_model, built, eager.meta, example, folder, ExportOptions(),
                                "torchscript")))]
    for exporter in exporters:
        options = ExportOptions(format_options=(OnnxOptions(exporter=exporter),))
        onnx = timer("export", export_model, built, eager.meta, example, folder, options, "onnx")
        for level in levels:
            at_level = RuntimeOptions().replacing(OnnxRuntime, opt_level=level)
            runtimes.append((f"ort-{exporter}-{level}", make_runtime("onnxruntime", at_level).load(onnx)))
    measured = Measured(floors=floors)
    for kind, x in inputs.items():
        runs = {name: timer(f"run {name.split('-')[0]}", rt.run, {"input": x}) for name, rt in runtimes}
        for name, out in runs.items():
            measured.comparisons.setdefault(f"{name}~oracle", {})[kind] = stats_of(out, fp64[kind])
        for a, b in itertools.combinations(runs, 2):
            measured.comparisons.setdefault(f"{a}~{b}", {})[kind] = stats_of(runs[a], runs[b])
    return measured


def resnet50_extra(model: torch.nn.Module, rng: np.random.Generator) -> list[tuple]:
    groups = stage_groups(model)
    convs = sorted(set(groups["layer4"]) | set(groups["last-block"]))
    bugs = [("0.1% last-block (weakest)", ("weight", *WEAK_LAYER4))]
    for _ in range(EXTRA_LAYER4_PICKS):
        name = convs[rng.integers(len(convs))]
        bugs.append(("0.1% layer4 extra", ("weight", name, int(rng.integers(model.get_submodule(name).out_channels)))))
    return bugs


def choose_bugs(backbone: str, model: torch.nn.Module, picks: int, seed: int) -> list[tuple]:
    if backbone.startswith("mobilenet"):
        return mobilenet_bugs(model, picks, np.random.default_rng(seed))
    bugs = pick_bugs(model, picks, np.random.default_rng(seed), other=True)  # calibrate_auto's picks, same seed
    if backbone == "resnet50":
        seen = {b[1] for b in bugs}
        bugs += [b for b in resnet50_extra(model, np.random.default_rng(seed + 1)) if b[1] not in seen]
    return bugs


def bug_runs(built: BuiltModel, backbone: str, shape, inputs: dict, fp64: dict, clean: dict, floors: dict,
             picks: int, seed: int, timer: Timer) -> tuple[Measured, Measured, dict[str, dict[str, bool]]]:
    """Each bug against the oracle and against the clean float32 run; which inputs leave it invisible."""
    vs_oracle, vs_clean, unchanged = Measured(floors=floors), Measured(floors=floors), {}
    for label, bug in choose_bugs(backbone, built.model, picks, seed):
        key = f"{label:26s} {bug[1]}[{bug[2]}]" if bug[2] is not None else f"{label:26s} {bug[1]}"
        with broken(built.model, bug):
            rt = make_runtime("eager").load(eager_artifact(built, shape))
            for kind, x in inputs.items():
                out = timer("bug run", rt.run, {"input": x})
                vs_oracle.comparisons.setdefault(key, {})[kind] = stats_of(out, fp64[kind])
                vs_clean.comparisons.setdefault(key, {})[kind] = stats_of(out, clean[kind])
                unchanged.setdefault(key, {})[kind] = all(np.array_equal(out[k], clean[kind][k]) for k in out)
    return vs_oracle, vs_clean, unchanged


# ---------------------------------------------------------------- judging


PAIR_FLOORS = 2.0
"""Under the "summed" semantics a pair of two float32 runs is judged on the sum of both sides' floors (each
run's own rounding, |a - b| <= |a - t| + |b - t|), so its ratio is half the one-floor ratio."""
SEMANTICS = ("min", "summed")
"""min: a bug's ratio is the smaller of its ratio against the oracle and against the clean float32 run, pairs on
one floor (calibrate_auto's rule until now). summed: pairs on PAIR_FLOORS floors, and a bug's ratio the larger of
the two, since an export fails when any one of its comparisons fails (the broken file against the oracle, or
against a clean run)."""


def rule_ratios(stat: Callable, inputs, results: list[dict], semantics: str = "min") -> tuple[list, list]:
    """(config, label, ratio) of every correct comparison and every visible bug under one rule."""
    correct, bugs = [], []
    pair = PAIR_FLOORS if semantics == "summed" else 1.0
    for result in results:
        floors = result["correct"].floors if result.get("correct") else None
        if result.get("correct"):
            for label, stats in result["correct"].comparisons.items():
                scale = 1.0 if label.endswith("~oracle") else pair
                correct.append((result["spec"], label, stat(stats, floors, inputs) / scale))
        if result.get("bugs"):
            vs_oracle, vs_clean, unchanged = result["bugs"]
            for label, stats in vs_oracle.comparisons.items():
                if all(unchanged[label][i] for i in inputs):
                    continue  # invisible on every input of the set: no verifier can see it
                both = (stat(stats, vs_oracle.floors, inputs),
                        stat(vs_clean.comparisons[label], vs_clean.floors, inputs) / pair)
                bugs.append((result["spec"], label, max(both) if semantics == "summed" else min(both)))
    return correct, bugs


def judge(name: str, correct: list, bugs: list, say) -> dict:
    largest = max(correct, key=lambda r: r[2])
    least = min(bugs, key=lambda r: r[2])
    separation = least[2] / largest[2]
    factor = math.sqrt(least[2] * largest[2])
    false_fails = sum(r[2] > factor for r in correct)
    misses = sum(r[2] <= factor for r in bugs)
    say(f"{name:58s} correct {largest[2]:6.2f}x  least bug {least[2]:7.2f}x  separation {separation:5.2f}  "
        f"factor {factor:6.2f}: {false_fails} false failures of {len(correct)}, {misses} misses of {len(bugs)}")
    say(f"{'':58s} largest correct: {largest[0]} {largest[1]};  least bug: {least[0]} {least[1].split()[-1]}")
    second = sorted(r[2] for r in bugs)[:3]
    say(f"{'':58s} least three bugs {', '.join(f'{v:.2f}' for v in second)}; correct 99th percentile "
        f"{np.percentile([r[2] for r in correct], 99):.2f}")
    return {"name": name, "separation": separation, "correct": largest[2], "least": least[2]}


def summarise(results: list[dict], say, semantics: tuple[str, ...] = ("min",),
              sets: tuple[str, ...] | None = None) -> None:
    say(f"== rules (separation = least visible bug / largest correct; factor = their geometric mean; "
        f"today AUTO_FACTOR {AUTO_FACTOR:g})")
    table = []
    for meaning in semantics:
        for set_name, inputs in INPUT_SETS.items():
            if not all(i in results[0]["inputs"] for i in inputs) or (sets and set_name not in sets):
                continue
            by_stat = {}
            tag = f", {set_name}" + (f", {meaning}" if len(semantics) > 1 else "")
            for stat_name, stat in STATISTICS.items():
                correct, bugs = rule_ratios(stat, inputs, results, meaning)
                by_stat[stat_name] = (correct, bugs)
                table.append(judge(f"{stat_name}{tag}", correct, bugs, say))
            for combo in COMBINED:
                table.append(judge(f"max of ({' | '.join(combo)}){tag}", *combined(by_stat, combo), say))
    best = max(table, key=lambda r: r["separation"])
    say(f"== best: {best['name']}: separation {best['separation']:.2f} "
        f"(correct {best['correct']:.2f}x, least bug {best['least']:.2f}x)")


def combined(by_stat: dict, combo: tuple[str, ...]) -> tuple[list, list]:
    """Each statistic over its own largest correct ratio; the largest of them (so correct <= 1)."""
    scale = {s: max(r[2] for r in by_stat[s][0]) for s in combo}
    out = []
    for side in (0, 1):
        rows = zip(*[by_stat[s][side] for s in combo])
        out.append([(row[0][0], row[0][1], max(r[2] / scale[s] for r, s in zip(row, combo))) for row in rows])
    return out[0], out[1]


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["resnet18", "resnet50", "mobilenet_v3_small"])
    parser.add_argument("--norms", nargs="+", default=["frozen", "batch", "fused"])
    parser.add_argument("--bug-norm", default="frozen")
    parser.add_argument("--shape", nargs=2, type=int, default=[224, 224], metavar=("H", "W"))
    parser.add_argument("--inputs", nargs="+", default=list(INPUTS), choices=INPUTS)
    parser.add_argument("--ort-levels", nargs="+", default=list(ORT_LEVELS), choices=ORT_LEVELS)
    parser.add_argument("--dynamo", nargs="*", default=["resnet18"], help="backbones also exported with dynamo")
    parser.add_argument("--picks-per-stage", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="resnet18 frozen, 112 px, 2 levels, 1 pick a stage")
    parser.add_argument("--log", type=Path)
    parser.add_argument("--save", type=Path, help="pickle the gathered statistics here")
    parser.add_argument("--load", type=Path, help="summarise pickled statistics again (no model runs)")
    parser.add_argument("--semantics", nargs="+", default=["min"], choices=SEMANTICS,
                        help="how pairs and bugs are judged (SEMANTICS)")
    parser.add_argument("--sets", nargs="+", choices=list(INPUT_SETS), help="only these input sets")
    args = parser.parse_args()
    if args.quick:
        args.backbones, args.norms, args.shape, args.ort_levels, args.picks_per_stage, args.dynamo = \
            ["resnet18"], ["frozen"], [112, 112], ["disable", "all"], 1, []
    say = printer(args.log)

    shape = (1, 3, *args.shape)
    say(f"# {' '.join(sys.argv)}")
    if args.load:
        summarise(_load(args.load), say, tuple(args.semantics), args.sets)
        return
    say(f"# torch {torch.__version__}, {torch.get_num_threads()} threads; input {'x'.join(map(str, shape))}; "
        f"inputs {', '.join(args.inputs)}; channel floor share {CHANNEL_FLOOR_SHARE}")
    start_all = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in args.backbones:
            weights = load_weights("synthetic", backbone)
            for norm in args.norms:
                start, timer = time.perf_counter(), Timer()
                spec = ModelSpec(backbone, norm, "body")
                built = build_model(spec, weights)
                inputs = {k: make_input(k, shape) for k in args.inputs}
                fp64, clean, floors = reference(built, shape, inputs, timer)
                exporters = ["torchscript"] + (["dynamo"] if backbone in args.dynamo and norm == "frozen" else [])
                result = {"spec": str(spec), "inputs": list(inputs),
                          "correct": correct_runs(built, shape, inputs, fp64, floors, exporters, args.ort_levels,
                                                  Path(tmp), timer)}
                if norm == args.bug_norm:
                    result["bugs"] = bug_runs(built, backbone, shape, inputs, fp64, clean, floors,
                                              args.picks_per_stage, args.seed, timer)
                results.append(result)
                per_input = {k: v / len(inputs) for k, v in timer.seconds.items()}
                say(f"#   {spec}: {time.perf_counter() - start:.0f}s, {len(result['correct'].comparisons)} correct "
                    f"comparisons, {len(result['bugs'][0].comparisons) if 'bugs' in result else 0} bugs; "
                    f"per input: " + ", ".join(f"{k} {v:.2f}s" for k, v in sorted(per_input.items())))
                report_config(result, say)
    if args.save:
        args.save.write_bytes(pickle.dumps(results))
    summarise(results, say, tuple(args.semantics), args.sets)
    say(f"# total {time.perf_counter() - start_all:.0f}s")


MOVED = {"verify.oracle": "verify.judge.oracle"}
"""Modules renamed since a --save (issue 15's folders by concern): an older pickle still loads."""


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        return super().find_class(MOVED.get(module, module), name)


def _load(path: Path) -> list[dict]:
    """Statistics pickled by --save (this script's own file, never another's)."""
    with open(path, "rb") as handle:
        return _Unpickler(handle).load()


def report_config(result: dict, say) -> None:
    """The config's worst correct ratio and least bug under today's rule and the RMS rule, each input alone."""
    for kind in result["inputs"]:
        line = f"{result['spec']:28s} {kind:9s}"
        for name in ("channel max / own floor (today)", "channel |mean| / pooled bias-or-spread floor"):
            correct, bugs = rule_ratios(STATISTICS[name], (kind,), [result])
            least = min((r[2] for r in bugs), default=math.inf)
            line += f"  [{name.split(' /')[0]}] correct {max(r[2] for r in correct):5.2f} least bug {least:7.2f}"
        say(line)


if __name__ == "__main__":
    main()
