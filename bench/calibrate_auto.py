"""Measure what `auto`'s factor must separate (run by hand; its scope is chosen by flags).

1. Correct runs: backbone x norm x view, each under eager, TorchScript and ONNX Runtime at every
   graph optimisation level, with both ONNX exporters (dynamo for the `frozen` norm unless
   --dynamo-everywhere: it takes ~8 s an export), on several input kinds (standard normal, uniform
   [0, 1] like ToTensor, a constant image). Every run against the float64 oracle and every pair of
   runs, judged by the library's own `compare_outputs` against the per-channel floors.
2. Bugs, on the standard normal input: a 0.1 % weight error in one output channel of a convolution,
   seeded picks from every stage (stem, layer1..layer4, the last block, the downsample convs), and
   ReLU / residual / norm-eps / channel-order bugs. Each broken model (eager, float32) is judged against
   the clean model's oracle and against the clean float32 run; its ratio is the smaller of the two.
   A bug that leaves the float32 output bit for bit unchanged on this input is listed as invisible
   (no verifier can see it there), not as a miss.

Separation = least bug ratio / largest correct ratio. AUTO_FACTOR (verify/judge/compare.py) sits between,
at their geometric mean. Per-output and per-channel-RMS statistics are logged beside the judged one
(per-channel max) so the choice of statistic stays checkable.

    python bench/calibrate_auto.py --backbones resnet18 resnet34 resnet50 --log bench/results/x.log
    python bench/calibrate_auto.py --quick     # resnet18 only, one input kind, a few picks
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

import numpy as np
import torch

from exporter.backbones import BuiltModel, build_model, family_of, list_backbones
from exporter.export import ExportOptions, export_model
from exporter.formats.eager import eager_artifact
from exporter.formats.onnx import OnnxOptions
from exporter.norms import list_norms
from exporter.spec import ModelSpec
from exporter.weights import load_weights
from verify.judge.compare import AUTO_FACTOR, Tolerance, compare_outputs
from verify.judge.oracle import CHANNEL_FLOOR_SHARE, MIN_CHANNEL_ELEMENTS, NoiseFloor, folded_samples, measure_floors
from verify.runtimes import RuntimeOptions, make_runtime
from verify.runtimes.onnxruntime import OnnxRuntime

ORT_LEVELS = ("disable", "basic", "extended", "all")
INPUT_KINDS = ("normal", "uniform", "constant")
STATS = ("channel_max", "output_max", "channel_rms")
"""channel_max is what the verdict judges; the other two are logged for comparison."""
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
    result = {"channel_max": worst.ratio or 0.0, "where": worst.where,
              "output_max": max(o.output_ratio or 0.0 for o in pair.outputs),
              "channel_rms": max(_rms_ratio(a[n], b[n], floors[n]) for n in floors)}
    return result


def _rms_ratio(a: np.ndarray, b: np.ndarray, floor: NoiseFloor) -> float:
    """Per-channel RMS of |a-b| over the channel's RMS error, floored like the judged statistic: at
    least CHANNEL_FLOOR_SHARE of the output's RMS error, and the output's where the channel keeps the
    output's floor (too few non-zero elements)."""
    if floor.rms is None:
        return 0.0
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    rms = np.sqrt((d ** 2).mean(axis=(0, 2, 3)))
    output_rms = max(float(np.sqrt((floor.rms ** 2).mean())), 1e-300)
    own = np.maximum(floor.rms, CHANNEL_FLOOR_SHARE * output_rms)
    own = np.where(floor.channels == floor.value, output_rms, own)
    return float((rms / own).max())


def correct_runs(built: BuiltModel, shape, inputs_by_kind: dict[str, np.ndarray], exporters, levels,
                 folder: Path) -> dict[str, dict]:
    """Per input kind: every run and pair of runs, as ratios to the floor measured on that input."""
    eager = eager_artifact(built, shape)
    example = torch.from_numpy(inputs_by_kind[next(iter(inputs_by_kind))])
    runtimes = [("eager", make_runtime("eager").load(eager)),
                ("torchscript", make_runtime("torchscript").load(
                    export_model(built, eager.meta, example, folder, ExportOptions(), "torchscript")))]
    for exporter in exporters:
        options = ExportOptions(format_options=(OnnxOptions(exporter=exporter),))
        onnx = export_model(built, eager.meta, example, folder, options, "onnx")
        for level in levels:
            at_level = RuntimeOptions().replacing(OnnxRuntime, opt_level=level)
            runtimes.append((f"ort-{exporter}-{level}", make_runtime("onnxruntime", at_level).load(onnx)))
    oracle_rt = make_runtime("eager", RuntimeOptions(dtype="float64")).load(eager)
    results = {}
    for kind, x in inputs_by_kind.items():
        inputs = {"input": x}
        runs = {name: rt.run(inputs) for name, rt in runtimes}
        fp64 = oracle_rt.run(inputs)
        floors = measure_floors(runs["eager"], fp64, samples=folded_samples(eager, inputs))  # as verify does
        table = {f"{name}~oracle": ratios(out, fp64, floors) for name, out in runs.items()}
        names = list(runs)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                table[f"{a}~{b}"] = ratios(runs[a], runs[b], floors)
        results[kind] = table
    return results


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


def pick_bugs(model: torch.nn.Module, picks_per_stage: int, rng: np.random.Generator, other: bool) -> list[tuple]:
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


def bug_ratios(built: BuiltModel, shape, picks_per_stage: int, seed: int, other: bool) -> list[dict]:
    x = {"input": make_input("normal", shape)}
    eager = eager_artifact(built, shape)
    clean = make_runtime("eager").load(eager).run(x)
    fp64 = make_runtime("eager", RuntimeOptions(dtype="float64")).load(eager).run(x)
    floors = measure_floors(clean, fp64, samples=folded_samples(eager, x))
    rows = []
    for label, bug in pick_bugs(built.model, picks_per_stage, np.random.default_rng(seed), other):
        with broken(built.model, bug):
            out = make_runtime("eager").load(eager_artifact(built, shape)).run(x)
        invisible = all(np.array_equal(out[k], clean[k]) for k in clean)
        vs_oracle, vs_clean = ratios(out, fp64, floors), ratios(out, clean, floors)
        row = {"bug": label, "where": f"{bug[1]}[{bug[2]}]" if bug[2] is not None else str(bug[1]),
               "invisible": invisible}
        for stat in STATS:
            row[stat] = min(vs_oracle[stat], vs_clean[stat])
        rows.append(row)
    return rows


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=None, help="default: every registered backbone")
    parser.add_argument("--norms", nargs="+", default=None, help="default: every norm variant")
    parser.add_argument("--views", nargs="+", default=["body", "fpn", "trunk"],
                        help="views besides body are run for resnet50 only")
    parser.add_argument("--inputs", nargs="+", default=list(INPUT_KINDS), choices=INPUT_KINDS)
    parser.add_argument("--shape", nargs=2, type=int, default=[224, 224], metavar=("H", "W"))
    parser.add_argument("--exporters", nargs="+", default=["torchscript", "dynamo"])
    parser.add_argument("--dynamo-everywhere", action="store_true", help="dynamo for every norm, not just frozen")
    parser.add_argument("--ort-levels", nargs="+", default=list(ORT_LEVELS), choices=ORT_LEVELS)
    parser.add_argument("--picks-per-stage", type=int, default=3, help="0.1 %% picks per stage group and backbone")
    parser.add_argument("--bug-norm", default="frozen", help="norm of the models the bugs go into")
    parser.add_argument("--no-other-bugs", action="store_true", help="only the 0.1 %% weight picks")
    parser.add_argument("--no-correct", action="store_true", help="skip the correct runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="resnet18, frozen+fused, normal input, 1 pick a stage")
    parser.add_argument("--log", type=Path, help="also write every printed line here")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--from-json", type=Path, help="summarise a saved --json run again (e.g. at a new factor)")
    args = parser.parse_args()
    if args.from_json:
        summarise(json.loads(args.from_json.read_text()), print)
        return
    if args.quick:
        args.backbones, args.norms, args.inputs, args.picks_per_stage = ["resnet18"], ["frozen", "fused"], \
            ["normal"], 1
    if args.threads:
        torch.set_num_threads(args.threads)
    say = printer(args.log)

    shape = (1, 3, *args.shape)
    backbones = args.backbones or list_backbones()
    say(f"# {' '.join(sys.argv)}")
    say(f"# torch {torch.__version__}, {torch.get_num_threads()} threads; input {'x'.join(map(str, shape))}; "
        f"channel floor share {CHANNEL_FLOOR_SHARE}, min channel elements {MIN_CHANNEL_ELEMENTS}")
    results: dict = {"correct": {}, "bugs": []}
    start_all = time.perf_counter()
    if not args.no_correct:
        with tempfile.TemporaryDirectory() as tmp:
            for backbone in backbones:
                weights = load_weights("synthetic", backbone)
                for norm in [n for n in (args.norms or list_norms()) if n in family_of(backbone).norms]:
                    views = [v for v in args.views if v == "body" or backbone == "resnet50"]
                    for view in views:
                        spec = ModelSpec(backbone, norm, view)
                        start = time.perf_counter()
                        exporters = [e for e in args.exporters
                                     if e != "dynamo" or norm == "frozen" or args.dynamo_everywhere]
                        inputs = {k: make_input(k, shape, args.seed) for k in args.inputs}
                        by_kind = correct_runs(build_model(spec, weights), shape, inputs, exporters,
                                               args.ort_levels, Path(tmp))
                        for kind, table in by_kind.items():
                            results["correct"][f"{spec} {kind}"] = table
                            worst = max(table, key=lambda k: table[k]["channel_max"])
                            stat = "  ".join(f"{s} {max(r[s] for r in table.values()):5.2f}" for s in STATS)
                            say(f"{str(spec):30s} {kind:8s} {stat}   worst {worst} at "
                                f"{table[worst]['where']}  ({len(table)} runs and pairs)")
                        say(f"#   {spec}: {time.perf_counter() - start:.0f}s, exporters {', '.join(exporters)}")
    for backbone in backbones:
        spec = ModelSpec(backbone, args.bug_norm, "body")
        rows = bug_ratios(build_model(spec, load_weights("synthetic", backbone)), shape, args.picks_per_stage,
                          args.seed, not args.no_other_bugs)
        for row in rows:
            row["spec"] = str(spec)
            results["bugs"].append(row)
            stat = "  ".join(f"{s} {row[s]:8.1f}" for s in STATS)
            say(f"bug {str(spec):24s} {row['bug']:28s} {row['where']:30s} {stat}"
                f"{'  INVISIBLE (output unchanged)' if row['invisible'] else ''}")
    summarise(results, say)
    say(f"# total {time.perf_counter() - start_all:.0f}s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def summarise(results: dict, say: Callable[[str], None]) -> None:
    visible = [r for r in results["bugs"] if not r["invisible"]]
    say(f"== {len(results['bugs'])} bug picks, {len(results['bugs']) - len(visible)} invisible on this input")
    for stat in STATS:
        correct = max((r[stat] for table in results["correct"].values() for r in table.values()), default=0.0)
        least = min((r[stat] for r in visible), default=math.inf)
        separation = least / correct if correct else math.inf
        factor = math.sqrt(least * correct) if correct and math.isfinite(least) else math.nan
        weakest = min(visible, key=lambda r: r[stat]) if visible else None
        say(f"{stat:12s} largest correct {correct:6.2f}x  least bug {least:7.2f}x"
            f"{' (' + weakest['spec'] + ' ' + weakest['where'] + ')' if weakest else ''}  separation {separation:.2f}"
            f"  geometric mean {factor:.2f}")
    stat = "channel_max"
    missed = [r for r in visible if r[stat] <= AUTO_FACTOR]
    false_fails = sum(r[stat] > AUTO_FACTOR for table in results["correct"].values() for r in table.values())
    say(f"at AUTO_FACTOR {AUTO_FACTOR:g}: {len(missed)} of {len(visible)} visible bugs missed, "
        f"{false_fails} correct runs or pairs over it")


if __name__ == "__main__":
    main()
