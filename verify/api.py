"""The library under the CLI: export-and-verify, and compare any two models or artifacts."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from exporter.artifacts import Artifact, eager_artifact, open_artifact
from exporter.errors import UsageError
from exporter.export import ExportOptions, export_model
from exporter.formats import ExportContext, get_format
from exporter.fsio import staged_folder
from exporter.spec import DEFAULT_SHAPE, ModelSpec
from exporter.user_model import UserModelSpec
from verify.compare import PairResult, Tolerance, compare_outputs
from verify.inputs import load_input, make_input
from verify.oracle import Oracle, measure_oracle, oracle_or_spread
from verify.progress import NullProgress, Progress
from verify.report import Report, RunRecord
from verify.runtimes import RuntimeOptions, make_runtime, runtimes_for, runtimes_for_formats

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


def build(spec: ModelSpec | UserModelSpec, settings: RunSettings):
    from exporter.backbones import build_model
    from exporter.weights import load_weights

    if isinstance(spec, UserModelSpec):  # your own model: file.py:factory or pkg.mod:factory
        from exporter.user_model import build_user_model

        return build_user_model(spec, settings.seed, settings.shape, settings.weights)
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


def verify_export(spec: ModelSpec | UserModelSpec, settings: RunSettings | None = None, out: Path = Path("artifacts"),
                  export: ExportOptions | None = None, runtimes: Sequence[str] | None = None,
                  progress: Progress | None = None) -> Report:
    """Build `spec`, export it, run every runtime on one input, judge every pair and each run
    against the float64 oracle. The artifact folder appears complete or not at all."""
    import torch

    from verify.runtimes import runtime_class

    settings, export = settings or RunSettings(), export or ExportOptions()
    progress = progress or NullProgress()

    spec.validate()
    export.validate()
    available = [eager_format_name(), *export.formats]
    runtimes = list(runtimes or runtimes_for_formats(available))
    formats = {}
    for name in runtimes:
        runnable = [fmt for fmt in available if fmt in runtime_class(name).formats]
        if not runnable:
            raise UsageError(f"Runtime {name} runs {', '.join(runtime_class(name).formats)} artifacts; add that "
                             f"--format (exporting: {', '.join(export.formats) or 'nothing'})")
        formats[name] = runnable[0]
    given = load_input(settings.input_file) if settings.input_file else None
    with progress.step(f"Building {spec}" + ("" if isinstance(spec, UserModelSpec) else
                                             f" with {settings.weights} weights")):
        built = build(spec, settings)
    no_float64 = _without_float64(built, settings)
    inputs_array = given if given is not None else make_input(settings.shape or model_shape(built), settings.seed)
    report = Report("export", _settings_dict(settings, spec=str(spec), export=export.to_dict(),
                                             runtimes=list(runtimes)), _input_dict(inputs_array, settings))
    eager = eager_artifact(built, inputs_array.shape)
    inputs = {eager.meta.input_name: inputs_array}
    folder = Path(out) / spec.slug
    with staged_folder(folder) as staging:
        artifacts = {eager.format: eager}
        context = ExportContext(built, torch.from_numpy(inputs_array), eager.meta, dynamic=export.dynamic)
        for fmt in export.formats:
            takes = get_format(fmt).takes
            with progress.step(f"Exporting {fmt}" + (f" ({takes})" if takes else "")):
                artifacts[fmt] = export_model(built, eager.meta, context.example, staging, export, fmt, context)
        runs = [_run(name, artifacts[formats[name]], inputs, settings.runtime, progress, report)
                for name in runtimes]
        with progress.step("Running the float64 oracle"):
            fp32 = _eager_fp32(runs, eager, inputs)
            oracle = no_float64 or measure_oracle(eager, inputs, fp32)
        assert oracle is not None
        report.floors, report.floor_source = oracle.floors, oracle.source
        report.pairs = _judge_runs(runs, None if no_float64 else oracle, oracle.floors, settings.tolerance)
        report.notes = explain_pairs(report) + ([no_float64.source] if no_float64 else [])
        from verify.manifest import write_artifact_folder

        write_artifact_folder(staging, built, artifacts, inputs, fp32, oracle, report)
    report.artifacts = {fmt: str(folder / a.path.name) for fmt, a in artifacts.items() if a.path}
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
    """A model spec (`resnet50:frozen:body`), your own model (`file.py:factory`, `pkg.mod:factory`: imports
    and runs that code) or an artifact file (`.onnx`, `.pt2`, TorchScript `.pt`...)."""
    from exporter.user_model import is_user_model_text, parse_model_text

    path = Path(text)
    if not is_user_model_text(text) and (path.suffix or path.exists()):
        return open_artifact(path)
    built = build(parse_model_text(text), settings)
    return eager_artifact(built, settings.shape or model_shape(built))


# Your own model (exporter/user_model.py): its example fixes the shape; it may have no float64 oracle.
def model_shape(built) -> tuple[int, ...]:
    """The shape a built model is fed by default: a user model's example input, else 1x3x224x224."""
    return tuple(getattr(built, "input_shape", None) or DEFAULT_SHAPE)


def _without_float64(built, settings: RunSettings) -> Oracle | None:
    """For a model that cannot run in float64: no oracle, the note why, and an explicit tolerance required
    (a floor estimated from the runs being judged would judge them against themselves)."""
    note = getattr(built, "float64_note", None)
    if not note:
        return None
    if settings.tolerance.mode == "auto":
        raise UsageError(f"{note}; the auto tolerance needs it to measure the float32 noise floor: pass "
                         "--rtol/--atol or --decimal")
    return Oracle({}, {}, f"{note}: runs judged pair against pair only, with {settings.tolerance.describe()}")


def input_shape_for(artifacts: Sequence[Artifact], settings: RunSettings) -> tuple[int, ...]:
    """--shape, else what either side records, else 1x3x224x224 (filling dynamic axes)."""
    if settings.shape:
        return tuple(settings.shape)
    for artifact in artifacts:
        shape = artifact.meta.input_shape
        if (artifact.path is not None or getattr(artifact.built, "input_shape", None)) and shape and len(shape) == 4:
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
            oracles.append(_without_float64(artifact.built, settings) or
                           oracle_or_spread(artifact, inputs, run["outputs"]))
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
    report.notes = explain_pairs(report) + [o.source for o in oracles if not (o.outputs or o.floors)]
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
