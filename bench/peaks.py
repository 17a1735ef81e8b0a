"""Which outputs have peaks under oracle.PEAK_FACTOR (run by hand; README, "Peaks: a few loud elements").

Every registered backbone x norm x view, synthetic weights, verify's seeded inputs at 224 px: an output has peaks
where `measure_floor` (eager float32 against eager float64) gives it bulk floors. An output without peaks is judged
exactly as before the bulk rule, so where this prints 0 the AUTO_FACTOR calibration (bench/calibrate_auto.py) holds
unchanged for it.

    python bench/peaks.py --log bench/results/peaks-cpu.log
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from exporter.backbones import build_model, list_backbones
from exporter.norms import list_norms
from exporter.spec import ModelSpec
from exporter.weights import load_weights
from verify.inputs import DEFAULT_SAMPLES, seeded_inputs
from verify.judge.measure import measure_floors
from verify.judge.peaks import PEAK_FACTOR


def _outputs(value) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in value.items()} if isinstance(value, dict) else {"out": value.numpy()}


def survey(spec: ModelSpec, weights, shape, samples: int) -> tuple[int, int, list[str]]:
    """(outputs with peaks, outputs, a line per output with peaks) over every seeded input."""
    model = build_model(spec, weights).model.eval()
    wide = build_model(spec, weights).model.eval().double()
    peaks = total = 0
    where = []
    for named in seeded_inputs(shape, 0, samples):
        x = torch.from_numpy(named.array)
        with torch.inference_mode():
            fp32, fp64 = _outputs(model(x)), _outputs(wide(x.double()))
        for name, floor in measure_floors(fp32, fp64).items():
            total += 1
            if floor.bulk is not None:
                peaks += 1
                where.append(f"{named.label} {name}: max|y| {np.abs(fp64[name]).max():.3g}, "
                             f"least limit {floor.bulk_limits.min():.3g}")
    return peaks, total, where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=None)
    parser.add_argument("--views", nargs="+", default=["body", "fpn", "trunk"])
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--log", type=Path)
    args = parser.parse_args()
    lines = [f"# {' '.join(sys.argv)}", f"PEAK_FACTOR {PEAK_FACTOR:g}, {args.samples} seeded inputs at {args.size} px"]
    print(lines[-1], flush=True)
    found = outputs = 0
    for backbone in args.backbones or list_backbones():
        weights = load_weights("synthetic", backbone)
        for norm in list_norms():
            for view in args.views:
                try:
                    spec = ModelSpec.parse(f"{backbone}:{norm}:{view}")
                    start = time.perf_counter()
                    peaks, total, where = survey(spec, weights, (1, 3, args.size, args.size), args.samples)
                except Exception as exc:  # a view this family has not: say so and go on
                    lines.append(f"{backbone}:{norm}:{view}: skipped ({type(exc).__name__}: {exc})")
                    print(lines[-1], flush=True)
                    continue
                found, outputs = found + peaks, outputs + total
                lines.append(f"{spec}: {peaks}/{total} outputs with peaks ({time.perf_counter() - start:.1f} s)")
                lines.extend(f"  {w}" for w in where[:5])
                print("\n".join(lines[-1 - len(where[:5]):]), flush=True)
    lines.append(f"== {found} of {outputs} outputs with peaks")
    print(lines[-1])
    if args.log:
        args.log.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
