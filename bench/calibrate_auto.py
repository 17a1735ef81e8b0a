"""Measure what `auto`'s factor must separate, under the rule `verify` applies (run by hand; scope by flags).

The rule (README, "Evidence per verdict"): the seeded input set of verify/inputs.py (`--samples`, default 8: 4
normal, 2 uniform, 2 image-like), each output channel's floor measured on every input and pooled (the largest,
verify/judge/oracle.py pooled_floors), every comparison judged on every input against the pooled floor by the
library's own `compare_outputs`, its ratio the worst input's.

1. Correct runs: backbone x norm x view, each under eager, TorchScript, torch.export (.pt2) and ONNX Runtime
   at every graph optimisation level, with both ONNX exporters (dynamo for the `frozen` norm unless
   --dynamo-everywhere: it takes ~8 s an export). Every run against the float64 oracle and every pair of runs.
2. Bugs: a 0.1 % weight error in one output channel of a convolution, seeded picks from every stage (ResNet:
   stem, layer1..layer4, the last block, the downsample convs; MobileNetV3: stem, early, middle, late, last),
   and on ResNets ReLU / residual / norm-eps / channel-order bugs. Each broken model (eager, float32) is
   judged against the clean model's oracle and against the clean float32 run; its ratio is the smaller of the
   two. A bug that leaves the float32 output bit for bit unchanged on every input is listed as invisible (no
   verifier can see it there), not as a miss.

Separation = least bug ratio / largest correct ratio. AUTO_FACTOR (verify/judge/compare.py) sits between,
at their geometric mean. The per-output statistic is logged beside the judged one (per-channel max).

    python bench/calibrate_auto.py --backbones resnet18 resnet34 resnet50 --log bench/results/x.log
    python bench/calibrate_auto.py --quick     # resnet18 only, a few picks
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exporter.backbones import BuiltModel, build_model, family_of, list_backbones
from exporter.export import ExportOptions, export_model
from exporter.formats.eager import eager_artifact
from exporter.formats.onnx import OnnxOptions
from exporter.norms import list_norms
from exporter.spec import ModelSpec
from exporter.weights import load_weights
from verify.inputs import DEFAULT_SAMPLES, seeded_inputs
from verify.judge.compare import AUTO_FACTOR, Tolerance, compare_outputs
from verify.judge.noise_floor import CHANNEL_FLOOR_SHARE, MIN_CHANNEL_ELEMENTS, NoiseFloor
from verify.judge.oracle import measure_oracles, pooled_floors
from verify.runtimes import RuntimeOptions, make_runtime, runtimes_for
from verify.runtimes.onnxruntime import OnnxRuntime

ORT_LEVELS = ("disable", "basic", "extended", "all")
INPUT_KINDS = ("normal", "uniform", "constant")
"""bench/separation.py's kinds (it adds `image`); this script judges verify's own seeded set."""
STATS = ("channel_max", "output_max")
"""channel_max is what the verdict judges; the per-output one is logged for comparison."""
MOBILENET_STAGES = {"stem": (0, 0), "early": (1, 3), "middle": (4, 8), "late": (9, 11), "last": (12, 12)}
"""torchvision's mobilenet_v3_small features index ranges (body view) standing in for ResNet stages; the large
model's 17 blocks are spread over the same five by their share of the depth."""
KNOWN_WEAK = {"resnet50": (("layer4.2.conv1", 391), ("layer4.2.conv1", 486))}
"""The least visible picks found before (bench/results/calibrate-cpu-perchannel.log, separation-cpu.log): always in."""
PERCENTILES = (50, 90, 99)
JUDGE = Tolerance(factor=1e30)  # ratios only: no verdict here


def printer(path: Path | None) -> Callable[[str], None]:
    """print, and append each line to the log file at `path` as well (flushed: a long run's log is readable)."""
    log = path.open("w") if path else None

    def say(line: str) -> None:
        print(line, flush=True)
        if log:
            log.write(line + "\n")
            log.flush()

    return say


def make_input(kind: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return rng.standard_normal(shape).astype(np.float32)
    if kind == "uniform":
        return rng.random(shape).astype(np.float32)
    if kind == "constant":
        return np.full(shape, 0.5, np.float32)
    raise SystemExit(f"unknown input kind {kind}")


def ratios(a: dict[str, np.ndarray], b: dict[str, np.ndarray], floors: dict[str, NoiseFloor]) -> dict:
    """The worst ratio of each statistic over the outputs, with where the judged one sits."""
    pair = compare_outputs("a", a, "b", b, JUDGE, floors, require_all=True)
    worst = max(pair.outputs, key=lambda o: o.ratio or 0.0)
    return {"channel_max": worst.ratio or 0.0, "where": worst.where,
            "output_max": max(o.output_ratio or 0.0 for o in pair.outputs)}


def worst_input(per_input: list[dict], labels: list[str]) -> dict:
    """Each statistic's largest over the inputs, with the input where the judged one was largest."""
    index = max(range(len(per_input)), key=lambda i: per_input[i]["channel_max"])
    return {**{stat: max(r[stat] for r in per_input) for stat in STATS},
            "where": f"{per_input[index]['where']} on {labels[index]}"}


def references(built: BuiltModel, shape, inputs: dict[str, np.ndarray]) -> tuple[list[dict], list[dict], dict]:
    """Per input the clean float32 and float64 outputs, and the floors pooled over the inputs, as verify does."""
    eager = eager_artifact(built, shape)
    feeds = [{eager.meta.input_name: x} for x in inputs.values()]
    runtime = make_runtime("eager").load(eager)
    clean = [runtime.run(feed) for feed in feeds]
    oracles = measure_oracles(eager, feeds, clean, batch=True)
    return clean, [o.outputs for o in oracles], pooled_floors([o.noise for o in oracles])


def layer_ratio(reference: Any, candidate: Any, x: np.ndarray) -> float:
    """The layer verdict's figure (`--layers`, verify/explain/rerun.py): the worst layer's own ratio, each layer of
    `candidate` re-run alone on the reference's float64 inputs for it (inf where no layer was re-run: a verdict not
    reached fails)."""
    from verify.explain.rerun import isolate_sides

    result, _, _ = isolate_sides(reference, candidate, x, AUTO_FACTOR)
    return result.layers[0].ratio if result.layers and not result.unrunnable else math.inf


def correct_runs(built: BuiltModel, shape, inputs: dict[str, np.ndarray], exporters, levels,
                 folder: Path, layers: dict[str, float] | None = None) -> dict[str, dict]:
    """Every run against the oracle and every pair of runs: the worst input's ratio to the pooled floor. With
    `layers`, each exported file's layer verdict figure (on the first input, as verify judges it) goes there."""
    from verify.explain.sides import load_sides

    eager = eager_artifact(built, shape)
    example = torch.from_numpy(next(iter(inputs.values())))
    _, fp64, floors = references(built, shape, inputs)
    runtimes = [("eager", make_runtime("eager").load(eager))]

    def judge_layers(label: str, artifact: Any) -> None:
        if layers is not None:
            layers[label] = layer_ratio(*load_sides(eager, artifact), example.numpy())

    for fmt, runtime in (("torchscript", "torchscript"), ("pt2", "exported")):
        artifact = export_model(built, eager.meta, example, folder, ExportOptions(), fmt)
        runtimes.append((runtime, make_runtime(runtime).load(artifact)))
        judge_layers(fmt, artifact)
    for exporter in exporters:
        options = ExportOptions(format_options=(OnnxOptions(exporter=exporter),))
        onnx = export_model(built, eager.meta, example, folder, options, "onnx")
        judge_layers(f"onnx-{exporter}", onnx)
        for level in levels:
            at_level = RuntimeOptions().replacing(OnnxRuntime, opt_level=level)
            runtimes.append((f"ort-{exporter}-{level}", make_runtime("onnxruntime", at_level).load(onnx)))
    labels = list(inputs)
    per_input: dict[str, list[dict]] = {}
    for index, x in enumerate(inputs.values()):
        runs = {name: rt.run({eager.meta.input_name: x}) for name, rt in runtimes}
        for name, out in runs.items():
            per_input.setdefault(f"{name}~oracle", []).append(ratios(out, fp64[index], floors))
        names = list(runs)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                per_input.setdefault(f"{a}~{b}", []).append(ratios(runs[a], runs[b], floors))
    return {label: worst_input(rows, labels) for label, rows in per_input.items()}


# ---------------------------------------------------------------- bugs


def stage_groups(model: torch.nn.Module) -> dict[str, list[str]]:
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    last_block = max((n.rsplit(".", 1)[0] for n in convs if n.startswith("layer4.")), key=_block_index)
    return {
        "stem": [n for n in convs if n == "conv1"],
        **{f"layer{i}": [n for n in convs if n.startswith(f"layer{i}.") and "downsample" not in n]
           for i in range(1, 5)},
        "last-block": [n for n in convs if n.startswith(last_block + ".") and "downsample" not in n],
        "downsample": [n for n in convs if "downsample" in n],
    }


def _block_index(name: str) -> int:
    return int(name.split(".")[1])


def _main_branch(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = block.relu(block.bn1(block.conv1(x)))
    out = block.bn2(block.conv2(out))
    if hasattr(block, "conv3"):
        out = block.bn3(block.conv3(block.relu(out)))
    return out


def _residual(block: torch.nn.Module, scale: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(_main_branch(self, x) + scale * identity)
    return types.MethodType(forward, block)


@contextlib.contextmanager
def broken(model: torch.nn.Module, bug: tuple):
    """Apply one bug in place; undo it afterwards."""
    kind, target, arg = bug
    module = model.get_submodule(target) if target else model
    undo = []
    with torch.no_grad():
        if kind == "weight":
            saved = module.weight[arg].clone()
            module.weight[arg].mul_(1.001)
            undo.append(lambda: module.weight[arg].copy_(saved))
        elif kind == "channel-swap":
            saved = module.weight.clone()
            module.weight[[arg, arg + 1]] = module.weight[[arg + 1, arg]].clone()
            undo.append(lambda: module.weight.copy_(saved))
        elif kind == "rgb-bgr":
            saved = module.weight.clone()
            module.weight[:, [0, 2]] = module.weight[:, [2, 0]].clone()
            undo.append(lambda: module.weight.copy_(saved))
        elif kind == "eps":
            saved_eps = module.eps
            module.eps = arg
            undo.append(lambda: setattr(module, "eps", saved_eps))
        elif kind in ("relu-leaky", "relu6"):
            saved_relu = module.relu
            module.relu = torch.nn.LeakyReLU(0.01) if kind == "relu-leaky" else torch.nn.ReLU6()
            undo.append(lambda: setattr(module, "relu", saved_relu))
        elif kind == "residual":
            module.forward = _residual(module, arg)
            undo.append(lambda: delattr(module, "forward"))
    try:
        yield
    finally:
        with torch.no_grad():
            for step in undo:
                step()


def mobilenet_bugs(model: torch.nn.Module, picks: int, rng: np.random.Generator) -> list[tuple]:
    """0.1 % picks from each MOBILENET_STAGES range (scaled to the model's depth: mobilenet_v3_large has more)."""
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    depth = max(int(n.split(".")[0]) for n in convs)
    scale = depth / max(high for _, high in MOBILENET_STAGES.values())
    bugs = []
    for stage, (low, high) in MOBILENET_STAGES.items():
        group = [n for n in convs if round(low * scale) <= int(n.split(".")[0]) <= round(high * scale)]
        for _ in range(picks):
            name = group[rng.integers(len(group))]
            bugs.append((f"0.1% {stage}", ("weight", name, int(rng.integers(model.get_submodule(name).out_channels)))))
    return bugs


def pick_bugs(model: torch.nn.Module, picks_per_stage: int, rng: np.random.Generator, other: bool) -> list[tuple]:
    if not any(name.startswith("layer4.") for name, _ in model.named_modules()):
        return mobilenet_bugs(model, picks_per_stage, rng)
    bugs = []
    for stage, convs in stage_groups(model).items():
        for _ in range(picks_per_stage):
            name = convs[rng.integers(len(convs))]
            bugs.append((f"0.1% {stage}", ("weight", name, int(rng.integers(model.get_submodule(name).out_channels)))))
    if not other:
        return bugs
    blocks = [n for n, m in model.named_modules() if n.count(".") == 1 and n.startswith("layer")]
    block = blocks[rng.integers(len(blocks))]
    bugs.append(("relu->leaky(0.01)", ("relu-leaky", block, None)))
    bugs.append(("relu->relu6", ("relu6", blocks[rng.integers(len(blocks))], None)))
    bugs.append(("residual x1.001", ("residual", blocks[rng.integers(len(blocks))], 1.001)))
    bugs.append(("residual dropped", ("residual", blocks[rng.integers(len(blocks))], 0.0)))
    norms = [n for n, m in model.named_modules() if hasattr(m, "eps") and hasattr(m, "running_var")]
    if norms:
        bugs.append(("bn eps 1e-5->0", ("eps", norms[rng.integers(len(norms))], 0.0)))
        bugs.append(("bn eps 1e-5->1e-3", ("eps", norms[rng.integers(len(norms))], 1e-3)))
    bugs.append(("stem RGB<->BGR", ("rgb-bgr", "conv1", None)))
    conv = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    name = conv[rng.integers(len(conv))]
    bugs.append(("two output channels swapped", ("channel-swap", name,
                                                 int(rng.integers(model.get_submodule(name).out_channels - 1)))))
    return bugs


def bug_ratios(built: BuiltModel, shape, inputs: dict[str, np.ndarray], picks_per_stage: int, seed: int,
               other: bool, layers: bool = False) -> list[dict]:
    """Each bug's worst input against the oracle and against the clean run (pooled floors); the smaller. With
    `layers`, also the layer verdict's figure: the broken model's layers re-run on the clean one's float64 inputs."""
    from verify.explain.sides import load_side

    clean, fp64, floors = references(built, shape, inputs)
    reference = load_side(eager_artifact(built, shape)) if layers else None  # a clean copy, taken before any bug
    labels, rows = list(inputs), []
    known = [("0.1% known weak", ("weight", name, channel))
             for name, channel in KNOWN_WEAK.get(built.spec.backbone, ())]
    for label, bug in [*pick_bugs(built.model, picks_per_stage, np.random.default_rng(seed), other), *known]:
        with broken(built.model, bug):
            eager = eager_artifact(built, shape)
            runtime = make_runtime("eager").load(eager)
            outs = [runtime.run({"input": x}) for x in inputs.values()]
            exact = _float64_runs(eager, inputs)
            own = layer_ratio(reference, load_side(eager), next(iter(inputs.values()))) if layers else None
        invisible = all(np.array_equal(out[k], ref[k]) for out, ref in zip(outs, clean) for k in ref)
        vs_oracle = worst_input([ratios(out, ref, floors) for out, ref in zip(outs, fp64)], labels)
        vs_clean = worst_input([ratios(out, ref, floors) for out, ref in zip(outs, clean)], labels)
        row = {"bug": label, "where": f"{bug[1]}[{bug[2]}]" if bug[2] is not None else str(bug[1]),
               "invisible": invisible, "seen": min(vs_oracle, vs_clean, key=lambda r: r["channel_max"])["where"]}
        for stat in STATS:
            row[stat] = min(vs_oracle[stat], vs_clean[stat])
        row["vs_oracle"], row["vs_clean"] = vs_oracle["channel_max"], vs_clean["channel_max"]
        if own is not None:
            row["layers"] = own
        if exact is not None:  # the bug's own size: the broken model against the clean one, both in float64
            row["exact"] = worst_input([ratios(out, ref, floors) for out, ref in zip(exact, fp64)], labels)[
                "channel_max"]
        rows.append(row)
    return rows


def _float64_runs(eager, inputs: dict[str, np.ndarray]) -> list[dict] | None:
    names = runtimes_for(eager.format, float64=True)
    if not names:
        return None
    runtime = make_runtime(names[0], RuntimeOptions(dtype="float64")).load(eager)
    return [runtime.run({"input": x}) for x in inputs.values()]


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=None, help="default: every registered backbone")
    parser.add_argument("--norms", nargs="+", default=None, help="default: every norm variant")
    parser.add_argument("--views", nargs="+", default=["body", "fpn", "trunk"],
                        help="views besides body are run for resnet50 only (unless --views-everywhere)")
    parser.add_argument("--views-everywhere", action="store_true", help="every view for every backbone")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help="seeded inputs (verify's --samples)")
    parser.add_argument("--shape", nargs=2, type=int, default=[224, 224], metavar=("H", "W"))
    parser.add_argument("--exporters", nargs="+", default=["torchscript", "dynamo"])
    parser.add_argument("--dynamo-everywhere", action="store_true", help="dynamo for every norm, not just frozen")
    parser.add_argument("--ort-levels", nargs="+", default=list(ORT_LEVELS), choices=ORT_LEVELS)
    parser.add_argument("--picks-per-stage", type=int, default=3, help="0.1 %% picks per stage group and backbone")
    parser.add_argument("--bug-norm", default="frozen", help="norm of the models the bugs go into")
    parser.add_argument("--no-other-bugs", action="store_true", help="only the 0.1 %% weight picks")
    parser.add_argument("--no-correct", action="store_true", help="skip the correct runs")
    parser.add_argument("--no-bugs", action="store_true", help="skip the bugs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", action="store_true",
                        help="also the layer verdict (verify --layers): each file's, and each bug's, worst layer")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="resnet18, frozen+fused, 112 px, 1 pick a stage")
    parser.add_argument("--log", type=Path, help="also write every printed line here")
    parser.add_argument("--json", type=Path, help="the results so far, rewritten after every model")
    parser.add_argument("--from-json", type=Path, nargs="+",
                        help="summarise saved --json runs again, merged (e.g. a correct-only and a bugs-only run)")
    args = parser.parse_args()
    if args.from_json:
        say = printer(args.log)
        say(f"# {' '.join(sys.argv)}")
        runs = [json.loads(path.read_text()) for path in args.from_json]
        summarise({"correct": {k: v for r in runs for k, v in r["correct"].items()},
                   "bugs": [b for r in runs for b in r["bugs"]],
                   "layers": {k: v for r in runs for k, v in r.get("layers", {}).items()}}, say)
        return
    if args.quick:
        args.backbones, args.norms, args.shape, args.picks_per_stage = ["resnet18"], ["frozen", "fused"], \
            [112, 112], 1
    if args.threads:
        torch.set_num_threads(args.threads)
    say = printer(args.log)

    shape = (1, 3, *args.shape)
    backbones = args.backbones or list_backbones()
    say(f"# {' '.join(sys.argv)}")
    inputs = {item.label.split(",")[0]: item.array for item in seeded_inputs(shape, args.seed, args.samples)}
    say(f"# torch {torch.__version__}, {torch.get_num_threads()} threads; input {'x'.join(map(str, shape))}; "
        f"channel floor share {CHANNEL_FLOOR_SHARE}, min channel elements {MIN_CHANNEL_ELEMENTS}; "
        f"{len(inputs)} inputs ({', '.join(inputs)}), floors pooled, worst input judged")
    results: dict = {"correct": {}, "bugs": [], "layers": {}}
    start_all = time.perf_counter()
    if not args.no_correct:
        with tempfile.TemporaryDirectory() as tmp:
            for backbone in backbones:
                weights = load_weights("synthetic", backbone)
                for norm in [n for n in (args.norms or list_norms()) if n in family_of(backbone).norms]:
                    views = [v for v in args.views if v == "body" or backbone == "resnet50" or args.views_everywhere]
                    for view in views:
                        spec = ModelSpec(backbone, norm, view)
                        start = time.perf_counter()
                        exporters = [e for e in args.exporters
                                     if e != "dynamo" or norm == "frozen" or args.dynamo_everywhere]
                        files = {} if args.layers else None
                        table = correct_runs(build_model(spec, weights), shape, inputs, exporters,
                                             args.ort_levels, Path(tmp), files)
                        results["correct"][str(spec)] = table
                        if files is not None:
                            results["layers"][str(spec)] = files
                            say("#   layers: " + ", ".join(f"{k} {v:.2f}" for k, v in files.items()))
                        worst = max(table, key=lambda k: table[k]["channel_max"])
                        stat = "  ".join(f"{s} {max(r[s] for r in table.values()):5.2f}" for s in STATS)
                        say(f"{str(spec):30s} {stat}   worst {worst} at {table[worst]['where']}  "
                            f"({len(table)} runs and pairs)")
                        say(f"#   {spec}: {time.perf_counter() - start:.0f}s, exporters {', '.join(exporters)}")
                        save(args.json, results)
    for backbone in [] if args.no_bugs else backbones:
        spec = ModelSpec(backbone, args.bug_norm, "body")
        rows = bug_ratios(build_model(spec, load_weights("synthetic", backbone)), shape, inputs,
                          args.picks_per_stage, args.seed, not args.no_other_bugs, args.layers)
        for row in rows:
            row["spec"] = str(spec)
            results["bugs"].append(row)
            stat = "  ".join(f"{s} {row[s]:8.1f}" for s in STATS)
            say(f"bug {str(spec):24s} {row['bug']:28s} {row['where']:30s} {stat}  at {row['seen']}"
                + (f"  layers {row['layers']:8.1f}" if "layers" in row else "")
                + f"{'  INVISIBLE (output unchanged)' if row['invisible'] else ''}")
        save(args.json, results)
    summarise(results, say)
    say(f"# total {time.perf_counter() - start_all:.0f}s")


def save(path: Path | None, results: dict) -> None:
    """The results so far (a long run stopped early still leaves what it measured)."""
    if path:
        path.write_text(json.dumps(results, indent=1))


def summarise(results: dict, say: Callable[[str], None]) -> None:
    visible = [r for r in results["bugs"] if not r["invisible"]]
    correct = sorted(r["channel_max"] for table in results["correct"].values() for r in table.values())
    say(f"== {len(results['correct'])} correct models, {len(correct)} runs and pairs; {len(results['bugs'])} bug "
        f"picks, {len(results['bugs']) - len(visible)} invisible on every input")
    if correct:
        say("correct channel_max: " + "  ".join(f"p{q:g} {np.percentile(correct, q):.2f}" for q in PERCENTILES)
            + f"  max {correct[-1]:.2f}")
    if visible:
        bugs = sorted(r["channel_max"] for r in visible)
        say("bug channel_max:     " + "  ".join(f"p{q:g} {np.percentile(bugs, q):.2f}" for q in PERCENTILES)
            + f"  min {bugs[0]:.2f}; least five " + ", ".join(f"{v:.2f}" for v in bugs[:5]))
    for stat in STATS:
        correct = max((r[stat] for table in results["correct"].values() for r in table.values()), default=0.0)
        least = min((r[stat] for r in visible), default=math.inf)
        separation = least / correct if correct else math.inf
        factor = math.sqrt(least * correct) if correct and math.isfinite(least) else math.nan
        weakest = min(visible, key=lambda r: r[stat]) if visible else None
        say(f"{stat:12s} largest correct {correct:6.2f}x  least bug {least:7.2f}x"
            f"{' (' + weakest['spec'] + ' ' + weakest['where'] + ')' if weakest else ''}  separation {separation:.2f}"
            f"  geometric mean {factor:.2f}")
    _summed(results, visible, say)
    _with_layers(results, say)
    stat = "channel_max"
    missed = [r for r in visible if r[stat] <= AUTO_FACTOR]
    false_fails = sum(r[stat] > AUTO_FACTOR for table in results["correct"].values() for r in table.values())
    say(f"at AUTO_FACTOR {AUTO_FACTOR:g}: {len(missed)} of {len(visible)} visible bugs missed, "
        f"{false_fails} correct runs or pairs over it")


def _with_layers(results: dict, say: Callable[[str], None]) -> None:
    """The verdict with --layers: a file fails when a pair's output or one of its layers is beyond AUTO_FACTOR x its
    floor, so a correct export's figure is the larger of its worst output ratio and its files' worst layer ratio,
    and a bug's is the larger of its output ratio and its worst layer ratio. Bugs include the invisible ones (an
    output unchanged bit for bit hides nothing from its layer)."""
    files = [v for table in results.get("layers", {}).values() for v in table.values()]
    armed = [r for r in results["bugs"] if "layers" in r]
    if not files or not armed:
        return
    outputs = [r["channel_max"] for spec in results.get("layers", {}) for r in results["correct"][spec].values()]
    say(f"layers: {len(files)} correct files, worst own ratio " + "  ".join(
        f"p{q:g} {np.percentile(files, q):.2f}" for q in PERCENTILES) + f"  max {max(files):.2f}; "
        f"{len(armed)} bugs, least worst-layer ratio {min(r['layers'] for r in armed):.2f}x")
    correct = max([*files, *outputs])
    seen = sorted((max(r["channel_max"], r["layers"]), r["spec"], r["where"], r["bug"]) for r in armed)
    say(f"with --layers (output or layer): largest correct {correct:.2f}x, least bug {seen[0][0]:.2f}x "
        f"({seen[0][1]} {seen[0][2]}, {seen[0][3]}), separation {seen[0][0] / correct:.2f}; least five "
        + ", ".join(f"{v:.2f}" for v, *_ in seen[:5]))
    say(f"with --layers at AUTO_FACTOR {AUTO_FACTOR:g}: {sum(v <= AUTO_FACTOR for v, *_ in seen)} of {len(seen)} "
        f"bugs missed, {sum(v > AUTO_FACTOR for v in [*files, *outputs])} correct files, runs or pairs over it")


PAIR_FLOORS = 2.0
"""The "summed" reading: a pair of two float32 runs judged on the sum of both sides' floors (each rounds on its
own: |a - b| <= |a - t| + |b - t|), and a bug seen by the larger of its two comparisons, since an export fails
when any one fails (bench/separation.py SEMANTICS)."""


def _summed(results: dict, visible: list[dict], say: Callable[[str], None]) -> None:
    """Separation under the summed reading, and each bug's own size (float64 against float64): a bug whose exact
    effect sits inside the correct runs' spread against the oracle cannot be separated by any output rule."""
    rows = [(label, r["channel_max"]) for table in results["correct"].values() for label, r in table.items()]
    armed = [r for r in visible if "vs_oracle" in r]
    if not rows or not armed:
        return
    oracle = max(v for label, v in rows if label.endswith("~oracle"))
    correct = max(v if label.endswith("~oracle") else v / PAIR_FLOORS for label, v in rows)
    seen = sorted((max(r["vs_oracle"], r["vs_clean"] / PAIR_FLOORS), r["spec"], r["where"]) for r in armed)
    say(f"summed reading: largest correct {correct:.2f}x (against the oracle {oracle:.2f}x, pairs on two floors), "
        f"least bug {seen[0][0]:.2f}x ({seen[0][1]} {seen[0][2]}), separation {seen[0][0] / correct:.2f}; "
        "least five " + ", ".join(f"{v:.2f}" for v, *_ in seen[:5]))
    exact = sorted((r["exact"], r["spec"], r["where"]) for r in armed if "exact" in r)
    if exact:
        say("exact effect (broken float64 vs clean float64, x floor), least five: "
            + ", ".join(f"{v:.2f} {spec.split(':')[0]} {where}" for v, spec, where in exact[:5])
            + f"; separation 3 needs a bug whose own effect is over {3 * correct:.2f}x")


if __name__ == "__main__":
    main()
