"""Say what a pair's numbers mean: rounding, TF32, or a real difference."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from verify.compare import PairResult
    from verify.report import Report

TF32_RATIO_RANGE = (30.0, 1e5)
"""TF32 keeps 10 mantissa bits to float32's 23: measured 1068x (eager) and 1477x (ORT) on an H100 (bench/results)."""


def explain_pair(pair: PairResult, report: Report) -> str:
    worst = pair.worst
    tolerance = report.settings.get("tolerance", {})
    factor = tolerance.get("factor", 0.0)
    ratio = worst.ratio
    if pair.passed:
        return ""
    if ratio is None or worst.nonfinite or worst.reason.startswith(("shape", "output missing")):
        return f"{pair.a} vs {pair.b}: {worst.name}: {worst.reason}"
    if ratio <= factor:
        return (f"{pair.a} vs {pair.b}: {worst.name} fails {report.settings['tolerance_text']} but is "
                f"{ratio:.1f}x the float32 noise floor: this is rounding, and the tolerance asks for more "
                f"than float32 can give at this output scale (needs {worst.needed})")
    cuda = report.settings.get("runtime", {}).get("device") == "cuda"
    tf32 = report.settings.get("runtime", {}).get("tf32")
    if cuda and tf32 is not False and TF32_RATIO_RANGE[0] <= ratio <= TF32_RATIO_RANGE[1]:
        return (f"{pair.a} vs {pair.b}: {worst.name} is {ratio:.0f}x the float32 noise floor, the size "
                "TF32 convolutions give on CUDA; rerun with --no-tf32 to verify at float32")
    return (f"{pair.a} vs {pair.b}: {worst.name} is {ratio:.0f}x the float32 noise floor: beyond rounding, "
            "the two compute different functions (weights, norm eps or an export changed the maths)")
