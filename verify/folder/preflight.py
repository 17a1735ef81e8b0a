"""`verify preflight`: on the deployment machine, does the artifact load in the target runtime,
on the provider asked for (not a silent CPU fallback), compute its goldens, within budget? On the CPU provider a
dynamic file is judged at a second shape inside its axes too, as `verify artifact` judges it (against the rebuilt
model with `--rebuild`, else another file of the folder that passed its goldens: hunt 30's TorchScript file with a
layer4 convolution dilated, invisible at the golden 32 px, was GO)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.errors import UsageError
from verify.detect.preflight import detector_preflight
from verify.folder.checks import Check, CheckReport
from verify.folder.integrity import is_detector_folder, preflight_target, run_target
from verify.folder.layers import folder_layer_checks
from verify.folder.rebuild import REBUILD_ONLY, rebuild_backbone, rebuilt_reference
from verify.folder.validate import (
    LAYERS_NEED_REBUILD,
    ArtifactFolder,
    check_integrity,
    judge_inputs,
    option_flags,
    read_inputs,
    require_flags,
    second_shape_check,
    worst_input_note,
)
from verify.runtimes import RuntimeOptions, make_runtime, runtimes_for

PROVIDERS = ("cpu", "cuda")


@dataclass(frozen=True)
class PreflightOptions:
    provider: str = "cpu"
    runtime: str = "onnxruntime"
    runs: int = 50
    warmup: int = 5
    max_latency_ms: float | None = None
    tf32: bool | None = None
    plugins: Mapping[str, Any] | None = None
    """The runtimes' own options by runtime name (RuntimeOptions.plugins), checked there."""
    rebuild: bool = False
    """Judge against the model the folder names, rebuilt here (verify/folder/rebuild.py), not its goldens."""
    weights_file: Path | None = None
    """With `rebuild`: the checkpoint the folder was exported with, when it is a file."""
    layers: bool = False
    """With `rebuild`: the target file's layers judged too, each on its own (verify/folder/layers.py)."""

    def __post_init__(self) -> None:
        """Refused as the CLI refuses them: unknown names, and numbers out of range or not finite."""
        from verify.bounds import RUNS_RANGE, WARMUP_RANGE, require_number
        from verify.runtimes import RUNTIMES, refuse_unused_options

        if self.provider not in PROVIDERS:
            raise UsageError(f"Unknown provider {self.provider!r}; use one of {', '.join(PROVIDERS)}")
        RUNTIMES.get(self.runtime)
        require_number("--runs", self.runs, *RUNS_RANGE, integer=True)
        require_number("--warmup", self.warmup, *WARMUP_RANGE, integer=True)
        if self.tf32 is not None and not isinstance(self.tf32, bool):
            raise TypeError(f"tf32 must be True, False or None, not {type(self.tf32).__name__} {self.tf32!r}")
        if self.tf32 is not None and self.provider != "cuda":  # no TF32 off CUDA: it would be silently ignored
            flag = "--tf32" if self.tf32 else "--no-tf32"
            raise UsageError(f"{flag} sets TF32 on CUDA, and this preflight is on {self.provider}, where there is no "
                             f"TF32; drop {flag}, or add --provider cuda")
        given = {name: opts for name, opts in dict(self.plugins or {}).items() if opts != type(opts)()}
        refuse_unused_options([self.runtime], RuntimeOptions(plugins=given))  # a default set is not a choice
        if self.max_latency_ms is not None:
            require_number("--max-latency-ms", self.max_latency_ms, 0.0, low_open=True)
        require_flags(layers=self.layers, rebuild=self.rebuild)
        if self.layers and not self.rebuild:
            raise UsageError(LAYERS_NEED_REBUILD)
        if self.weights_file is not None:  # text is fine too
            if not self.rebuild:  # as the CLI refuses --checkpoint without --rebuild
                raise UsageError(REBUILD_ONLY.format(option="weights_file"))
            object.__setattr__(self, "weights_file", Path(self.weights_file))


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q))


def preflight(path: Path, options: PreflightOptions | None = None, verify_key: Path | None = None,
              trust_unsigned_code: bool = False) -> CheckReport:
    """GO only when the folder is sound and its target file loads, runs, matches its goldens and meets the
    budget. A target whose loading can run code (TorchScript, .pt2, AOTInductor) is loaded only from a folder
    whose signature verified with `verify_key`, or with `trust_unsigned_code`; else NO-GO (exit 1)."""
    if options is not None and not isinstance(options, PreflightOptions):
        raise TypeError(f"options must be a verify.folder.preflight.PreflightOptions or None, not "
                        f"{type(options).__name__}")
    require_flags(trust_unsigned_code=trust_unsigned_code)
    options = options or PreflightOptions()  # checked in PreflightOptions.__post_init__, before any work
    path, verify_key = Path(path), Path(verify_key) if verify_key is not None else None  # text is fine too
    if verify_key is not None:
        from exporter.signing import check_public_key

        check_public_key(verify_key)  # a usage error, before any work
    if is_detector_folder(path):
        ignored = _given_flags(options)
        if ignored:  # a whole detector runs each framework's defaults: they would be silently dropped
            raise UsageError(f"{path} is a whole detector's folder, whose preflight runs each framework's defaults "
                             f"and takes no {ignored[0]}; drop {', '.join(ignored)}")
        report = detector_preflight(path, options.provider, options.runtime, options.runs, options.warmup,
                                    options.max_latency_ms, verify_key, trust_unsigned_code, options.rebuild,
                                    options.weights_file, options.layers)
        report.inputs = read_inputs(verify_key, options.weights_file)
        return report
    report = CheckReport("preflight", inputs=read_inputs(verify_key, options.weights_file))
    art = check_integrity(path, report, verify_key, trust_unsigned_code)
    if art is not None and options.rebuild:
        rebuilt_reference(art, report, lambda: rebuild_backbone(art, options.weights_file))
    target = preflight_target(path, art, report, options.runtime, lambda f: options.runtime in runtimes_for(f),
                              "artifact")
    if target is None:
        return report
    return run_target(art, report, options.runtime, target, lambda: _preflight_run(art, target, options, report))


def _given_flags(options: PreflightOptions) -> list[str]:
    """The TF32 flag and each runtime's own options that were given (not left at their defaults), as flags."""
    tf32 = [] if options.tf32 is None else ["--tf32" if options.tf32 else "--no-tf32"]
    return tf32 + option_flags(options.plugins)


def _preflight_run(art: ArtifactFolder, target: str, options: PreflightOptions, report: CheckReport) -> CheckReport:
    assert art.goldens is not None
    label = art.label
    runtime_options = RuntimeOptions(device=options.provider, tf32=options.tf32, plugins=options.plugins or {})
    start = time.perf_counter()
    runtime = make_runtime(options.runtime, runtime_options).load(art.artifact(target))  # SetupError: exit 2
    where = runtime.running_on()
    report.add(Check(label, runtime.label, f"{target}: loads on {options.provider}", True, f"running on {where}",
                     seconds=time.perf_counter() - start))

    inputs = art.goldens["input"]
    outputs = [runtime.run(goldens["input"]) for goldens in art.golden_sets or [art.goldens]]  # every stored input
    pair, tolerance, details = judge_inputs(art, runtime.label, outputs, "golden float32", "float32")
    worst = pair.worst
    if worst.ratio is not None:
        ratio = f"{worst.ratio:.1f}x floor"
    else:
        ratio = worst.reason or f"max abs {worst.max_abs or 0.0:.2e}"
    report.add(Check(label, runtime.label, f"{target}: goldens", pair.passed,
                     f"worst {worst.name}: {ratio} ({tolerance.describe()}){worst_input_note(details)}",
                     details=details))
    if options.provider == "cpu":  # the references' floors are a CPU's: a GPU's own rounding is judged by its goldens
        for judged in second_shape_check(art, runtime, target, report):
            judged()
    if options.layers:  # re-run on the CPU whatever the provider (each check names what re-ran it)
        folder_layer_checks(art, report, [target])

    for _ in range(options.warmup):
        runtime.run(inputs)
    times = []
    for _ in range(options.runs):
        tick = time.perf_counter()
        runtime.run(inputs)  # returns host arrays: the device work is done
        times.append((time.perf_counter() - tick) * 1e3)
    p50, p90 = percentile(times, 50), percentile(times, 90)
    within = options.max_latency_ms is None or p90 <= options.max_latency_ms
    budget = "" if options.max_latency_ms is None else f", budget {options.max_latency_ms:g} ms on p90"
    report.add(Check(label, runtime.label, "latency", within,
                     f"p50 {p50:.2f} ms, p90 {p90:.2f} ms over {options.runs} runs after {options.warmup} "
                     f"warm-up{budget}", details={"p50_ms": p50, "p90_ms": p90, "runs_ms": times}))
    verdict = "GO" if report.passed else "NO-GO"
    failed = [c.name for c in report.checks if not c.passed and not c.skipped]
    report.summary = (f"{verdict}: {target} on {where}, goldens {'match' if pair.passed else 'DIFFER'} "
                      f"({ratio}), p50 {p50:.2f} ms, p90 {p90:.2f} ms"
                      + (f"; failed: {', '.join(failed)}" if failed else ""))
    return report
