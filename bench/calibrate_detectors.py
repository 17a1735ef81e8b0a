"""Separation of the whole-detector verdict (hunt 22a): what the default factor must tell apart on the suite's
detectors, measured as bench/calibrate_auto.py measures it for backbones (run by hand).

1. Correct runs: each detector exported once (TorchScript and legacy ONNX, from seed 0's image), judged by the export's
   own `judge_detector` on each seeded image (`--seeds`) at each torch thread count (`--threads`): every judged pair's
   worst ratio against its floor, before NMS (dense tensors, anchors, paired proposals, the final-NMS inputs), the
   TorchScript file's own pieces (judged aside, verify/detect/verdict.py `_script_piece_problems`) and after NMS (box
   and score of the matched detections).
2. Bugs: a 0.1 % error in the output channel of largest weight of one convolution or linear layer, picks spread over
   the ONNX file's weights (`--picks`), judged by `judge_runs` against the correct run's references on the same image;
   a bug's ratio is the smaller of its two pairs' (vs eager fp64, vs eager), each the worst over every judged tensor.
   A bug under the factor in either pair would pass.

Separation = least bug ratio / largest correct ratio.

3. The layer verdict (hunt 23b, verify/detect/check.py `detector_layer_checks`), unless `--no-layers`: each file's
   layers re-run alone on eager float64's values for the image, each judged on its own floor; a correct run's worst
   layer over both files, a bug's worst layer of its seeded ONNX file (an invisible bug too: its weight is re-run).
   "Outputs or layers" is what `verify export -b <detector>` judges by default now: a correct run's ratio is the
   larger of its outputs' and its layers', a bug's the larger of the two (either catches it).

    OMP_NUM_THREADS=1 .venv/bin/python bench/calibrate_detectors.py --log bench/results/calibrate-cpu-detectors.log

The log is appended to (each run's lines after the earlier runs').
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

DETECTORS = ("fasterrcnn_mobilenet_v3_large_320_fpn", "ssdlite320_mobilenet_v3_large")
ERROR = 1e-3


def _recording():
    """Every PairResult compare_outputs returns while judging, with its pair: the report keeps the TorchScript
    pieces' only as problems."""
    from verify.detect import verdict

    seen = []
    real = verdict.compare_outputs

    def record(*args, **kwargs):
        found = real(*args, **kwargs)
        seen.append(found)
        return found

    verdict.compare_outputs = record
    return seen, lambda: setattr(verdict, "compare_outputs", real)


def _worst(pair) -> float:
    return max((o.ratio for o in pair.outputs if o.ratio is not None), default=float("nan"))


def _picks(path: Path, count: int) -> list[str]:
    """`count` weights (conv or linear, not the folded norms' constants) spread over the file's initializers."""
    import onnx

    model = onnx.load(str(path))
    consumers = {name for node in model.graph.node if node.op_type in ("Conv", "Gemm", "MatMul")
                 for name in node.input[1:2]}
    names = [i.name for i in model.graph.initializer if i.name in consumers and len(i.dims) >= 2]
    spread = sorted({round(i * (len(names) - 1) / max(1, count - 1)) for i in range(count)})
    return [names[i] for i in spread]  # the first and the last (a head's) among them


def _outputs(path: Path, images: list, dense: list[str]) -> bytes:
    """Every output the ONNX file gives on `images` (detections, dense tensors, final-NMS inputs), as bytes: two files
    that give the same bytes are indistinguishable here."""
    from verify.detect.onnx_runs import _run_onnx

    run = _run_onnx(path, images, dense)
    parts = [getattr(found, key).tobytes() for found in (*run.detections, *run.candidates)
             for key in ("boxes", "scores", "labels")]
    parts += [run.dense[name].tobytes() for name in sorted(run.dense)]
    return b"".join(parts)


def _scaled(path: Path, name: str, out: Path) -> int:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    init = next(i for i in model.graph.initializer if i.name == name)
    weight = numpy_helper.to_array(init).copy()
    channel = int(np.abs(weight.reshape(len(weight), -1)).sum(axis=1).argmax())
    weight[channel] *= 1 + ERROR
    init.CopyFrom(numpy_helper.from_array(weight, init.name))
    onnx.save(model, str(out))
    return channel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("detectors", nargs="*", default=list(DETECTORS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--picks", type=int, default=8)
    parser.add_argument("--bug-seeds", type=int, nargs="+", default=[0, 1],
                        help="the images each seeded bug is judged on (among --seeds)")
    parser.add_argument("--log", type=Path, help="appended to")
    parser.add_argument("--no-layers", action="store_true", help="the outputs' verdict alone (before hunt 23b)")
    args = parser.parse_args()
    import torch

    from exporter.families.detectors import build_detector, calibration_image
    from verify.detect.check import detector_layer_checks
    from verify.detect.export import export_detector
    from verify.detect.report import DetectorReport
    from verify.detect.verdict import EAGER, ORACLE, RUNTIMES, judge_detector, judge_runs
    from verify.judge.compare import AUTO_FACTOR, Tolerance

    warnings.simplefilter("ignore")
    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    say(f"# bench/calibrate_detectors.py {' '.join(sys.argv[1:])} (torch {torch.__version__}, factor {AUTO_FACTOR:g})")
    summary = []
    for name in args.detectors:
        built = build_detector(name)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            files, refusals = export_detector(built, calibration_image(args.seeds[0]), ["torchscript", "onnx"], folder)
            assert not refusals, refusals
            correct, references, layered, layered_bugs, unseen = [], {}, [], [], []
            for threads in args.threads:
                torch.set_num_threads(threads)
                for seed in args.seeds:
                    image = calibration_image(seed)
                    seen, restore = _recording()
                    start = time.perf_counter()
                    try:
                        report = judge_detector(built, [image], files)
                    finally:
                        restore()
                    references.setdefault(seed, report)
                    ratios = {f"{p.a} vs {p.b}": _worst(p) for p in seen}
                    where = max(seen, key=_worst).worst.where
                    after = {f"{d.a} vs {d.b}": (d.worst_box_ratio, d.worst_score_ratio) for d in report.detections}
                    worst = max(ratios.values())
                    worst_after = max(max(v for v in pair if v is not None) for pair in after.values())
                    correct.append(max(worst, worst_after))
                    took = time.perf_counter() - start
                    layers = ""
                    if not args.no_layers:
                        start = time.perf_counter()
                        checks, notes = detector_layer_checks(built, files, image, AUTO_FACTOR)
                        assert not notes and len(checks) == len(files), notes
                        worst_layers = max(c.layers[0].ratio for c in checks)
                        layered.append(max(correct[-1], worst_layers))
                        each = ", ".join(f"{c.candidate} {len(c.layers)} worst {c.layers[0].ratio:.2f}x at "
                                         f"{c.layers[0].module}" for c in checks)
                        layers = (f"; layers: {each}, passed {all(c.passed for c in checks)}, "
                                  f"{time.perf_counter() - start:.1f} s")
                    say(f"{name} correct seed {seed} threads {threads}: passed {report.passed}, worst before NMS "
                        f"{worst:.2f}x at {where} ({', '.join(f'{k} {v:.2f}' for k, v in ratios.items())}), after NMS "
                        f"{worst_after:.2f}x, {took:.1f} s{layers}")
            torch.set_num_threads(args.threads[0])
            bugs, invisible = [], 0
            clean = {seed: _outputs(files["onnx"], [torch.as_tensor(i) for i in report.images],
                                    list(report.references[EAGER].dense))
                     for seed, report in references.items() if seed in args.bug_seeds}
            for pick in _picks(files["onnx"], args.picks):
                seeded = folder / "seeded.onnx"
                channel = _scaled(files["onnx"], pick, seeded)
                for seed, report in ((s, r) for s, r in references.items() if s in args.bug_seeds):
                    layer = None
                    if not args.no_layers:
                        checks, _ = detector_layer_checks(built, {"onnx": seeded}, torch.as_tensor(report.images[0]),
                                                          AUTO_FACTOR)
                        top = checks[0].layers[0] if checks and checks[0].layers else None
                        layer = (top.ratio if top else float("nan"), top.module if top else "")
                    said = f", layers {layer[0]:.1f}x at {layer[1]}" if layer else ""
                    if _outputs(seeded, [torch.as_tensor(i) for i in report.images],
                                list(report.references[EAGER].dense)) == clean[seed]:
                        invisible += 1
                        if layer:
                            unseen.append(layer[0])
                        say(f"{name} bug {pick}[{channel}] x{1 + ERROR:g} seed {seed}: invisible (every output, dense "
                            f"tensor and final-NMS input of the file bit for bit the clean file's){said}")
                        continue
                    judged = DetectorReport(name, report.norm, report.weights, report.shape, ("onnx",), AUTO_FACTOR,
                                            images=report.images)
                    judge_runs(judged, report.judging, [torch.as_tensor(i) for i in report.images],
                               report.references[EAGER], report.references[ORACLE], {"onnx": seeded}, Tolerance())
                    pairs = [p for p in judged.dense if p.a == RUNTIMES["onnx"]]
                    ratio = min(_worst(p) for p in pairs)
                    where = max(pairs, key=_worst).worst.where if pairs else ""
                    bugs.append(ratio)
                    if layer:
                        layered_bugs.append(max(ratio, layer[0]))
                    say(f"{name} bug {pick}[{channel}] x{1 + ERROR:g} seed {seed}: passed {judged.passed}, ratio "
                        f"{ratio:.1f}x (worst at {where}){said}")
        least, largest = min(bugs), max(correct)
        summary.append(f"{name}: correct at most {largest:.2f}x over {len(correct)} runs, seeded bugs at least "
                       f"{least:.1f}x over {len(bugs)} visible ({invisible} invisible), separation "
                       f"{least / largest:.2f}, missed {sum(b <= AUTO_FACTOR for b in bugs)}")
        if layered:
            least, largest = min(layered_bugs), max(layered)
            summary.append(f"{name}, outputs or layers: correct at most {largest:.2f}x over {len(layered)} runs, "
                           f"seeded bugs at least {least:.1f}x over {len(layered_bugs)} visible, separation "
                           f"{least / largest:.2f}, missed {sum(b <= AUTO_FACTOR for b in layered_bugs)}; the "
                           f"{len(unseen)} invisible at least {min(unseen, default=float('nan')):.1f}x at their layer")
    for line in summary:
        say(line)
    if args.log:
        with args.log.open("a") as log:
            log.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
