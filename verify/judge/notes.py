"""Say what a pair's numbers mean: rounding, reduced precision (TF32, bf16, fp16), or a real difference."""

from __future__ import annotations

from typing import TYPE_CHECKING

from verify.judge.compare import AUTO_FACTOR, DISCRETE_NOTE
from verify.judge.precision import describe

if TYPE_CHECKING:
    from verify.judge.compare import PairResult
    from verify.report import Report

REDUCED_PRECISION_RATIOS = {"tf32": (300.0, 6000.0), "fp16": (300.0, 8000.0), "bf16": (3000.0, 80000.0)}
"""Largest error of a run at each precision, as a multiple of the float32 per-output floor, measured with
margin on either side: TF32 on an H100 1068x (eager) and 1477x (ORT); CPU autocast over resnet18/50 at
64..224 px: fp16 907x..2486x, bf16 6797x..18811x (bench/results). TF32 and fp16 share 10 mantissa bits."""
TF32_RATIO_RANGE = REDUCED_PRECISION_RATIOS["tf32"]


def reduced_precisions(ratio: float, device: str | None) -> list[str]:
    """The precisions whose error is the size of `ratio` (x the float32 floor); TF32 only on CUDA."""
    return [p for p, (low, high) in REDUCED_PRECISION_RATIOS.items()
            if low <= ratio <= high and (p != "tf32" or device == "cuda")]


def explain_pair(pair: PairResult, report: Report) -> str:
    worst = pair.worst
    tolerance = report.settings.get("tolerance", {})
    factor = tolerance.get("factor", 0.0)
    ratio = worst.ratio
    if pair.passed:
        return ""
    head = f"{pair.a} vs {pair.b}: {worst.where}"
    if ratio is None or worst.nonfinite or worst.reason.startswith(("shape", "output missing")) \
            or worst.reason.endswith(DISCRETE_NOTE):  # judged exactly: its ratio to a float floor tells nothing
        return f"{pair.a} vs {pair.b}: {worst.name}: {worst.reason}"
    precision = describe(worst.precision)
    if ratio <= max(factor, AUTO_FACTOR):  # a tighter --factor than the calibrated one fails rounding too
        return (f"{head} fails {report.settings['tolerance_text']} but is {ratio:.1f}x the {precision} noise "
                f"floor: this is rounding, and the tolerance asks for more than {precision} can give at this "
                f"output scale (needs {worst.needed})")
    runtime = report.settings.get("runtime", {})
    device, tf32 = runtime.get("device"), runtime.get("tf32")
    output_ratio = worst.output_ratio if worst.output_ratio is not None else ratio
    # the sizes below are per-output figures: quoted for the output, never for its worst channel
    whole = f"{pair.a} vs {pair.b}: {worst.name}"
    if worst.precision == "fp32":
        sizes = reduced_precisions(output_ratio, device)
        if device == "cuda" and tf32 is not False and "tf32" in sizes:
            return (f"{whole} is {output_ratio:.0f}x its float32 noise floor, the size TF32 convolutions give on "
                    "CUDA: to verify what you deploy, rerun with --precision tf32; --no-tf32 verifies at float32")
        if sizes:  # by size alone a reduced precision and a real difference look alike: say both
            names = " or ".join(describe(p) for p in sizes)
            flags = " or ".join(f"--precision {p}" for p in sizes)
            return (f"{whole} is {output_ratio:.0f}x its float32 noise floor: beyond rounding, either the two "
                    f"compute different functions or one computes at reduced precision ({names} gives this "
                    f"size); if you deploy at that precision, verify it with {flags}")
    where = f"{ratio:.0f}x its channel's {precision} noise floor" if worst.channel is not None \
        else f"{ratio:.0f}x the {precision} noise floor"
    if worst.away_from_peaks:  # judged on the bulk's own floor: the error is not at the peaks
        where += " away from its peaks"
    return (f"{head} is {where}: beyond rounding, the two compute different functions (weights, norm eps "
            "or an export changed the maths)")


def explain_pairs(report: Report) -> list[str]:
    """One line per failing pair saying what the numbers mean."""
    return [line for pair in report.pairs if (line := explain_pair(pair, report))]
