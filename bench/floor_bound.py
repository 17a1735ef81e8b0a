"""Measured float32 noise floors against the rounding bound that caps them (verify/judge/trust.py), for every
registered backbone x norm x view: the largest floor / bound share must stay well below 1 for correct models
(a random or train-mode model measures ~1e3-1e4x more). Run by hand; the README's table comes from its log.

    python bench/floor_bound.py --shape 1x3x128x128 --log bench/results/floor-bound-cpu.log
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from exporter.backbones import build_model, family_of, list_backbones
from exporter.formats.eager import eager_artifact
from exporter.spec import ModelSpec, parse_shape
from exporter.weights import load_weights
from verify.inputs import make_input
from verify.judge.oracle import measure_oracle
from verify.judge.trust import ROUNDING_BOUND_MARGIN, accumulation_length, floor_bound_ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="1x3x128x128")
    parser.add_argument("--backbones", nargs="*", default=None)
    parser.add_argument("--log", type=Path, default=None)
    args = parser.parse_args()
    shape = parse_shape(args.shape)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    lines = [f"# floor / (margin {ROUNDING_BOUND_MARGIN:g} x K x u x max|output|), shape {args.shape}, torch "
             f"{torch.__version__}"]
    worst_overall = 0.0
    for backbone in args.backbones or list_backbones():
        family = family_of(backbone)
        weights = load_weights("synthetic", backbone, 0)
        for norm in family.norms:
            for view in family.views:
                start = time.perf_counter()
                built = build_model(ModelSpec(backbone, norm, view.name), weights, 0)
                x = make_input(shape, 0)
                artifact = eager_artifact(built, shape)
                oracle = measure_oracle(artifact, {artifact.meta.input_name: x}, None)
                k = accumulation_length(built.model, input_shape=shape)
                ratios = floor_bound_ratios(oracle.noise, oracle.outputs, k)
                name, worst = max(ratios.items(), key=lambda item: item[1])
                worst_overall = max(worst_overall, worst)
                lines.append(f"{backbone}:{norm}:{view.name}  K={k}  worst {name} floor/bound {worst:.2e}  "
                             f"({time.perf_counter() - start:.1f}s)")
                print(lines[-1], flush=True)
    lines.append(f"# largest share of the bound over every model: {worst_overall:.2e}")
    print(lines[-1])
    if args.log:
        args.log.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
