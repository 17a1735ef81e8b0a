"""`verify preflight`: on the deployment machine, does the artifact load in the target runtime,
on the provider asked for (not a silent CPU fallback), compute its goldens, within budget?"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from exporter.errors import UsageError
from exporter.manifest import GOLDENS_NAME, read_goldens
from verify.checks import Check, CheckReport
from verify.compare import compare_outputs
from verify.runtimes import RuntimeOptions, make_runtime, runtimes_for
from verify.validate import check_integrity

PROVIDERS = ("cpu", "cuda")


@dataclass(frozen=True)
class PreflightOptions:
    provider: str = "cpu"
    runtime: str = "onnxruntime"
    runs: int = 50
    warmup: int = 5
    max_latency_ms: float | None = None
    tf32: bool | None = None

    def __post_init__(self) -> None:
        """Refused as the CLI refuses them: unknown names, and numbers out of range or not finite."""
        from verify.bounds import RUNS_RANGE, WARMUP_RANGE, require_number
        from verify.runtimes import RUNTIMES

        if self.provider not in PROVIDERS:
            raise UsageError(f"Unknown provider {self.provider!r}; use one of {', '.join(PROVIDERS)}")
        RUNTIMES.get(self.runtime)
        require_number("--runs", self.runs, *RUNS_RANGE, integer=True)
        require_number("--warmup", self.warmup, *WARMUP_RANGE, integer=True)
        if self.max_latency_ms is not None:
            require_number("--max-latency-ms", self.max_latency_ms, 0.0, low_open=True)


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q))


def preflight(path: Path, options: PreflightOptions | None = None) -> CheckReport:
    options = options or PreflightOptions()  # checked in PreflightOptions.__post_init__, before any work
    report = CheckReport("preflight")
    art = check_integrity(path, report)
    target = None
    if art is not None:
        target = next((n for n, e in art.manifest["files"].items()
                       if options.runtime in runtimes_for(e.get("format", ""))), None)
        if target is None:
            raise UsageError(f"{art.folder} has no artifact that {options.runtime} runs")
    if art is None or target not in art.verified or GOLDENS_NAME not in art.verified:
        report.summary = f"NO-GO: {path} fails its integrity checks"
        return report

    label = art.label
    runtime_options = RuntimeOptions(device=options.provider, tf32=options.tf32)
    start = time.perf_counter()
    runtime = make_runtime(options.runtime, runtime_options).load(art.artifact(target))  # SetupError: exit 2
    provider = getattr(runtime, "session", None)
    where = provider.get_providers()[0] if provider is not None else f"torch {options.provider}"
    report.add(Check(label, runtime.label, f"{target}: loads on {options.provider}", True, f"running on {where}",
                     seconds=time.perf_counter() - start))

    goldens = read_goldens(art.verified[GOLDENS_NAME])
    outputs = runtime.run(goldens["input"])
    pair = compare_outputs(runtime.label, outputs, "golden float32", goldens["float32"], art.tolerance(),
                           art.floors(), require_all=True)
    worst = pair.worst
    if worst.ratio is not None:
        ratio = f"{worst.ratio:.1f}x floor"
    else:
        ratio = worst.reason or f"max abs {worst.max_abs or 0.0:.2e}"
    report.add(Check(label, runtime.label, f"{target}: goldens", pair.passed,
                     f"worst {worst.name}: {ratio} ({art.tolerance().describe()})", details=pair.to_dict()))

    for _ in range(options.warmup):
        runtime.run(goldens["input"])
    times = []
    for _ in range(options.runs):
        tick = time.perf_counter()
        runtime.run(goldens["input"])  # returns host arrays: the device work is done
        times.append((time.perf_counter() - tick) * 1e3)
    p50, p90 = percentile(times, 50), percentile(times, 90)
    within = options.max_latency_ms is None or p90 <= options.max_latency_ms
    budget = "" if options.max_latency_ms is None else f", budget {options.max_latency_ms:g} ms on p90"
    report.add(Check(label, runtime.label, "latency", within,
                     f"p50 {p50:.2f} ms, p90 {p90:.2f} ms over {options.runs} runs after {options.warmup} "
                     f"warm-up{budget}", details={"p50_ms": p50, "p90_ms": p90, "runs_ms": times}))
    verdict = "GO" if report.passed else "NO-GO"
    failed = [c.name for c in report.checks if not c.passed]
    report.summary = (f"{verdict}: {target} on {where}, goldens {'match' if pair.passed else 'DIFFER'} "
                      f"({ratio}), p50 {p50:.2f} ms, p90 {p90:.2f} ms"
                      + (f"; failed: {', '.join(failed)}" if failed else ""))
    return report
