"""`verify preflight` on a whole detector's folder: integrity (verify/detect/folder.py), then the file the target
runtime runs, loaded on the provider asked for (CUDA asked for and not given is an environment error, exit 2),
judged against the goldens at both levels, and timed: p50 / p90 of one run over every golden image, after
warm-up; GO only when all of it holds and p90 is within the budget."""

from __future__ import annotations

import time
from pathlib import Path

from verify.detect.folder import DetectorFolder, detector_folder_layers, detector_integrity, golden_judgement
from verify.detect.rebuild import rebuild_detector
from verify.detect.runners import one_image_runner
from verify.detect.verdict import RUNTIMES
from verify.folder.checks import Check, CheckReport
from verify.folder.integrity import preflight_target, run_target
from verify.folder.rebuild import rebuilt_reference
from verify.runtimes.onnxruntime import PROVIDERS
from verify.runtimes.torch_common import torch_device

FORMAT_OF_RUNTIME = {runtime: fmt for fmt, runtime in RUNTIMES.items() if fmt != "onnx-dynamo"}
"""onnxruntime runs the ONNX file, torchscript the TorchScript file."""


def detector_preflight(path: Path, provider: str = "cpu", runtime: str = "onnxruntime", runs: int = 50,
                       warmup: int = 5, max_latency_ms: float | None = None, verify_key: Path | None = None,
                       trust_unsigned_code: bool = False, rebuild: bool = False,
                       weights_file: Path | None = None, layers: bool = False) -> CheckReport:
    """`layers` (with `rebuild`): the target file's layers judged too, each re-run alone on the rebuilt detector's
    float64 values (verify/detect/folder.py `detector_folder_layers`, on the CPU whatever the provider), as a backbone
    folder's preflight judges its target's."""
    report = CheckReport("preflight")
    art = detector_integrity(path, report, verify_key, trust_unsigned_code)
    if art is not None and rebuild:
        rebuilt_reference(art, report, lambda: rebuild_detector(art, weights_file))
    fmt = FORMAT_OF_RUNTIME.get(runtime)
    target = preflight_target(path, art, report, runtime, lambda f: f == fmt, "detector file",
                              f"; a detector runs in {', '.join(FORMAT_OF_RUNTIME)}")
    if target is None:
        return report
    return run_target(art, report, runtime, target,
                      lambda: _run(art, target, provider, runs, warmup, max_latency_ms, report, layers))


def _run(art: DetectorFolder, target: str, provider: str, runs: int, warmup: int, max_latency_ms: float | None,
         report: CheckReport, layers: bool = False) -> CheckReport:
    import numpy as np

    fmt = art.manifest.files[target].format
    if fmt == "torchscript":
        torch_device(provider)  # CUDA asked for and not given: SetupError (exit 2), never a NO-GO of the file
    start = time.perf_counter()
    run_one = one_image_runner(fmt, art.verified[target], provider)  # SetupError: exit 2
    where = PROVIDERS[provider] if fmt == "onnx" else f"torch {provider}"
    report.add(Check(art.label, RUNTIMES[fmt], f"{target}: loads on {provider}", True, f"running on {where}",
                     seconds=time.perf_counter() - start))
    before = len(report.checks)
    golden_judgement(art, report, [fmt], device=provider)
    if layers:  # asked for: a target it cannot judge fails (hunt 24b's detector layer verdict)
        detector_folder_layers(art, report, asked=True, names=[target])
    agrees = all(c.passed for c in report.checks[before:])
    for _ in range(warmup):
        for image in art.images:
            run_one(image)
    times = []
    for _ in range(runs):
        tick = time.perf_counter()
        for image in art.images:
            run_one(image)  # returns host arrays: the device work is done
        times.append((time.perf_counter() - tick) * 1e3)
    p50, p90 = float(np.percentile(times, 50)), float(np.percentile(times, 90))
    within = max_latency_ms is None or p90 <= max_latency_ms
    budget = "" if max_latency_ms is None else f", budget {max_latency_ms:g} ms on p90"
    per = f"one run of {len(art.images)} image{'s' if len(art.images) > 1 else ''}"
    report.add(Check(art.label, RUNTIMES[fmt], "latency", within,
                     f"p50 {p50:.2f} ms, p90 {p90:.2f} ms per {per}, over {runs} runs after {warmup} warm-up{budget}",
                     details={"p50_ms": p50, "p90_ms": p90, "runs_ms": times}))
    failed = [c.name for c in report.checks if not c.passed and not c.skipped]
    report.summary = (f"{'GO' if report.passed else 'NO-GO'}: {target} on {where}, goldens "
                      f"{'match at both levels' if agrees else 'DIFFER'}, p50 {p50:.2f} ms, p90 {p90:.2f} ms per {per}"
                      + (f"; failed: {', '.join(failed)}" if failed else ""))
    return report
