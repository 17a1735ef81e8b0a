"""The library under the CLI: export-and-verify, and compare any two models or artifacts."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from exporter.artifacts import Artifact, eager_artifact, open_artifact
from exporter.export import ExportOptions
from exporter.fsio import staged_folder
from exporter.spec import DEFAULT_SHAPE, ModelSpec
from verify.compare import PairResult, Tolerance, compare_outputs
from verify.inputs import load_input, make_input
from verify.oracle import Oracle, oracle_or_spread
from verify.progress import NullProgress, Progress
from verify.report import Report, RunRecord
from verify.runtimes import RuntimeOptions, make_runtime, runtimes_for

if TYPE_CHECKING:
    import numpy as np



@dataclass(frozen=True)
class RunSettings:
    """How to feed and run: shared by every command."""

    weights: str = "synthetic"
    seed: int = 0
    shape: tuple[int, ...] | None = None
    input_file: Path | None = None
    runtime: RuntimeOptions = RuntimeOptions()
    tolerance: Tolerance = Tolerance()


def build(spec: ModelSpec, settings: RunSettings):
    from exporter.backbones import build_model
    from exporter.weights import load_weights

    return build_model(spec, load_weights(settings.weights, spec.backbone, settings.seed), settings.seed)


def _run(runtime_name: str, artifact: Artifact, inputs: dict, options: RuntimeOptions,
         progress: Progress, report: Report) -> dict:
    """Load and run once: {"label": the runtime's label, "outputs": its outputs}."""
    runtime = make_runtime(runtime_name, options)
    with progress.step(f"Running {runtime.label}"):
        start = time.perf_counter()
        outputs = runtime.load(artifact).run(inputs)
        report.runs.append(RunRecord(runtime.label, artifact.label, time.perf_counter() - start))
    return {"label": runtime.label, "outputs": outputs}


def _judge_runs(runs: list[dict], oracle: Oracle | None, floors: dict[str, float],
                tolerance: Tolerance) -> list[PairResult]:
    pairs = []
    for i, first in enumerate(runs):
        for second in runs[i + 1:]:
            pairs.append(compare_outputs(second["label"], second["outputs"], first["label"],
                                         first["outputs"], tolerance, floors, require_all=True))
    if oracle is not None:
        for run in runs:
            pairs.append(compare_outputs(run["label"], run["outputs"], "oracle", oracle.outputs,
                                         tolerance, floors, kind="oracle", require_all=True))
    return pairs


def verify_export(spec: ModelSpec, settings: RunSettings | None = None, out: Path = Path("artifacts"),
                  export: ExportOptions | None = None, runtimes: Sequence[str] | None = None,
                  progress: Progress | None = None) -> Report:
    """Build `spec`, export it, run every runtime on one input, judge every pair and each run
    against the float64 oracle: one cell of verify/pipeline.py (weights and exports from the cache
    when it holds them), written into `out/<slug>`, which appears complete or not at all."""
    from verify.cache import default_cache
    from verify.manifest import write_artifact_folder
    from verify.pipeline import CellRequest, plan_cell, run_cell

    settings, export = settings or RunSettings(), export or ExportOptions()
    request = CellRequest(spec, settings, export, tuple(runtimes) if runtimes else None)
    plan = plan_cell(request)
    folder = Path(out) / spec.slug
    with staged_folder(folder) as staging:
        cell = run_cell(request, staging, default_cache(), progress or NullProgress(), plan=plan)
        report = cell.report
        write_artifact_folder(staging, cell.build.built, cell.artifacts, cell.inputs, cell.oracle.fp32,
                              cell.oracle.oracle, report)
    report.artifacts = {fmt: str(folder / a.path.name) for fmt, a in cell.artifacts.items() if a.path}
    report.artifacts["folder"] = str(folder)
    return report


def _eager_fp32(runs: list[dict], eager: Artifact, inputs: dict) -> dict[str, np.ndarray]:
    """Eager float32 on the CPU: the floor is measured there, whatever device the runs used."""
    runner = runtimes_for(eager.format)[0]
    for run in runs:
        if run["label"] == runner:
            return run["outputs"]
    return make_runtime(runner).load(eager).run(inputs)


def eager_format_name() -> str:
    from exporter.formats.eager import EagerFormat

    return EagerFormat.name


def resolve_source(text: str, settings: RunSettings) -> Artifact:
    """A model spec (`resnet50:frozen:body`) or an artifact file (`.onnx`, `.pt2`, TorchScript `.pt`...)."""
    path = Path(text)
    if path.suffix or path.exists():
        return open_artifact(path)
    return eager_artifact(build(ModelSpec.parse(text), settings), settings.shape or DEFAULT_SHAPE)


def input_shape_for(artifacts: Sequence[Artifact], settings: RunSettings) -> tuple[int, ...]:
    """--shape, else what either side records, else 1x3x224x224 (filling dynamic axes)."""
    if settings.shape:
        return tuple(settings.shape)
    for artifact in artifacts:
        shape = artifact.meta.input_shape
        if artifact.path is not None and shape and len(shape) == 4:
            return tuple(s if s > 0 else d for s, d in zip(shape, DEFAULT_SHAPE))
    return DEFAULT_SHAPE


def compare(a: str, b: str, settings: RunSettings | None = None, progress: Progress | None = None) -> Report:
    """Run two models or artifacts on the same input and judge them, each also against its own
    float64 oracle where one can be made (torch models and TorchScript files)."""
    settings, progress = settings or RunSettings(), progress or NullProgress()
    with progress.step("Loading both sides"):
        sides = [resolve_source(a, settings), resolve_source(b, settings)]
    if settings.input_file:
        array = load_input(settings.input_file)
    else:
        array = make_input(input_shape_for(sides, settings), settings.seed)
    report = Report("compare", _settings_dict(settings, a=a, b=b), _input_dict(array, settings))
    runs, oracles = [], []
    for short, text, artifact in zip("AB", (a, b), sides):
        inputs = {artifact.meta.input_name: array}
        run = _run(runtimes_for(artifact.format)[0], artifact, inputs, settings.runtime, progress, report)
        report.legend[short] = f"{text} on {run['label']}"
        run["label"] = short
        runs.append(run)
        with progress.step(f"Measuring the float32 noise floor of {text}"):
            oracles.append(oracle_or_spread(artifact, inputs, run["outputs"]))
    floors = {}
    for oracle in oracles:
        for name, value in oracle.floors.items():
            floors[name] = max(floors.get(name, 0.0), value)
    report.floors = floors
    report.floor_source = "; ".join(o.source for o in oracles)
    report.pairs = [compare_outputs(runs[0]["label"], runs[0]["outputs"], runs[1]["label"],
                                    runs[1]["outputs"], settings.tolerance, floors)]
    for run, oracle in zip(runs, oracles):
        if oracle.outputs:
            report.pairs.append(compare_outputs(run["label"], run["outputs"], f"oracle({run['label']})",
                                                oracle.outputs, settings.tolerance, oracle.floors,
                                                kind="oracle"))
    report.notes = explain_pairs(report)
    return report


def _settings_dict(settings: RunSettings, **extra) -> dict:
    return {
        **extra,
        "weights": settings.weights,
        "seed": settings.seed,
        "runtime": asdict(settings.runtime),
        "tolerance": settings.tolerance.to_dict(),
        "tolerance_text": settings.tolerance.describe(),
    }


def _input_dict(array: np.ndarray, settings: RunSettings) -> dict:
    return {"shape": list(array.shape), "dtype": str(array.dtype),
            "source": str(settings.input_file) if settings.input_file else
            f"seeded normal, seed {settings.seed}"}


def explain_pairs(report: Report) -> list[str]:
    """One line per failing pair saying what the numbers mean."""
    from verify.explain_notes import explain_pair

    return [line for pair in report.pairs if (line := explain_pair(pair, report))]
