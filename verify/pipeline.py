"""One verification cell as typed stages: build -> export (per format) -> run (per runtime) -> oracle
-> judge. A cell is their composition (`run_cell`): `verify export` is one cell written into an artifact
folder, `verify matrix` many cells; the cache stands in for the build (weights), each export and, in the
matrix, the whole cell."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.errors import UsageError
from exporter.spec import DEFAULT_SHAPE, ModelSpec
from verify.progress import NullProgress, Progress

if TYPE_CHECKING:
    import numpy as np

    from exporter.artifacts import Artifact
    from exporter.backbones import BuiltModel
    from exporter.export import ExportOptions
    from exporter.formats import ExportContext
    from exporter.weights import Weights
    from verify.api import RunSettings
    from verify.cache import Cache
    from verify.compare import PairResult, Tolerance
    from verify.oracle import Oracle
    from verify.report import Report
    from verify.runtimes import RuntimeOptions

HIT, MISS, OFF = "hit", "miss", "off"
"""How a stage's result was obtained: from the cache, computed and stored, or computed with no cache."""
PURE_WEIGHT_SOURCES = frozenset({"synthetic"})
"""Weight sources that are a function of (backbone, seed) alone, so caching them is safe and pays
(~1.8 s for resnet50); files and the torch hub cache are read directly, they may change under us."""
WEIGHTS_BLOB = "weights.safetensors"


@dataclass(frozen=True)
class CellRequest:
    """Everything one cell needs: what to build, how to feed and judge it, what to export and run."""

    spec: ModelSpec
    settings: RunSettings
    export: ExportOptions
    runtimes: tuple[str, ...] | None = None
    """None: every registered runtime that runs an exported format (or the in-memory model)."""


@dataclass
class CellPlan:
    """A request checked before any work: the runtimes to run, the format each runs, the input."""

    request: CellRequest
    runtimes: list[str]
    formats: dict[str, str]
    inputs: np.ndarray


@dataclass
class BuildResult:
    built: BuiltModel
    eager: Artifact
    """The in-memory model as an artifact (what the eager runtime and the oracle run)."""
    cache: str = OFF
    """Where the weights came from: hit, miss or off."""


@dataclass
class ExportResult:
    artifact: Artifact
    cache: str = OFF


@dataclass
class RunResult:
    runtime: str
    label: str
    artifact: str
    outputs: dict[str, np.ndarray]
    seconds: float


@dataclass
class OracleResult:
    fp32: dict[str, np.ndarray]
    """Eager float32 on the CPU, the side the floor is measured against."""
    oracle: Oracle


@dataclass
class CellOutcome:
    report: Report
    build: BuildResult
    artifacts: dict[str, Artifact]
    inputs: dict[str, np.ndarray]
    oracle: OracleResult
    cache: dict[str, str] = field(default_factory=dict)
    """Stage -> hit/miss/off (`weights`, `export:<format>`)."""


# Planning -------------------------------------------------------------------------------------
def eager_format() -> str:
    from exporter.formats.eager import EagerFormat

    return EagerFormat.name


def choose_runtimes(exported: Sequence[str], runtimes: Sequence[str] | None, precision: str
                    ) -> tuple[list[str], dict[str, str]]:
    """The runtimes to run (asked, else every one that runs an exported format or the in-memory model at
    `precision`) and the format each runs; anything impossible is refused here, before any work."""
    from verify.runtimes import runtime_class, runtimes_for_formats

    available = [eager_format(), *exported]
    if runtimes:
        unable = [name for name in runtimes if precision not in runtime_class(name).precisions]
        if unable:
            raise UsageError(f"{', '.join(unable)} cannot run at {precision}; drop --runtime {unable[0]} or verify "
                             f"it at {' or '.join(runtime_class(unable[0]).precisions)}")
    chosen = list(runtimes or [n for n in runtimes_for_formats(available) if precision in runtime_class(n).precisions])
    formats = {}
    for name in chosen:
        runnable = [fmt for fmt in available if fmt in runtime_class(name).formats]
        if not runnable:
            raise UsageError(f"Runtime {name} runs {', '.join(runtime_class(name).formats)} artifacts; add that "
                             f"--format (exporting: {', '.join(exported) or 'nothing'})")
        formats[name] = runnable[0]
    return chosen, formats


def plan_cell(request: CellRequest) -> CellPlan:
    """Check names, options, precisions and that each runtime has a format to run; make the input (the
    first one where --input names several). No model work."""
    from verify.api import settings_inputs
    from verify.inputs import seeded_input

    request.spec.validate()
    request.export.validate()
    runtimes, formats = choose_runtimes(request.export.formats, request.runtimes,
                                        request.settings.runtime.precision)
    settings = request.settings
    named = settings_inputs(settings) or [seeded_input(settings.shape or DEFAULT_SHAPE, settings.seed)]
    return CellPlan(request, runtimes, formats, named[0].array)


# Stages ---------------------------------------------------------------------------------------
def build_stage(spec: ModelSpec, weights: str, seed: int, shape: tuple[int, ...],
                cache: Cache | None = None) -> BuildResult:
    """spec + weights + seed -> the built model (eval mode) and its in-memory artifact."""
    from exporter.backbones import build_model
    from exporter.formats.eager import eager_artifact

    loaded, status = load_weights_cached(weights, spec.backbone, seed, cache)
    built = build_model(spec, loaded, seed)
    return BuildResult(built, eager_artifact(built, tuple(shape)), status)


def load_weights_cached(source: str, backbone: str, seed: int, cache: Cache | None) -> tuple[Weights, str]:
    """Weights from the cache (safetensors, hash-checked) when their source is pure; else computed."""
    from exporter.weights import load_weights

    if cache is None or source not in PURE_WEIGHT_SOURCES:
        return load_weights(source, backbone, seed), OFF
    from verify.cache import CorruptEntry

    key = cache.key("weights", {"source": source, "backbone": backbone, "seed": seed})
    with cache.lock(key):
        entry = cache.load("weights", key)
        if entry is not None:
            with contextlib.suppress(CorruptEntry):
                return _weights_from_blob(entry.data["source"], entry.read_bytes(WEIGHTS_BLOB)), HIT
        weights = load_weights(source, backbone, seed)
        cache.store("weights", key, data={"source": weights.source}, blobs={WEIGHTS_BLOB: _weights_blob(weights)})
        return weights, MISS


def _weights_blob(weights: Weights) -> bytes:
    from safetensors.torch import save

    tensors = {f"sd.{k}": v.detach().contiguous() for k, v in weights.state_dict.items()}
    for group, state in weights.extra.items():
        tensors.update({f"extra.{group}.{k}": v.detach().contiguous() for k, v in state.items()})
    return save(tensors)


def _weights_from_blob(source: str, blob: bytes) -> Weights:
    from safetensors.torch import load

    from exporter.weights import Weights

    state, extra = {}, {}
    for key, tensor in load(blob).items():
        kind, _, name = key.partition(".")
        if kind == "sd":
            state[name] = tensor
        else:
            group, _, name = name.partition(".")
            extra.setdefault(group, {})[name] = tensor
    return Weights(source, state, extra)


def export_stage(context: ExportContext, fmt: str, options: ExportOptions, folder: Path,
                 cache: Cache | None = None) -> ExportResult:
    """The built model -> one format's artifact in `folder` (copied from the cache when it holds it)."""
    from exporter.export import export_model
    from exporter.formats import get_format

    entry_format = get_format(fmt)
    if cache is None:
        return ExportResult(export_model(context.built, context.meta, context.example, folder, options, fmt,
                                         context), OFF)
    from exporter.artifacts import Artifact, ArtifactMeta
    from verify.cache import CorruptEntry

    example = context.example.detach().cpu().contiguous().numpy()
    key = cache.key("export", {
        "spec": context.built.spec, "weights_sha256": context.meta.weights_sha256, "format": fmt,
        "options": options.options_for(fmt), "dynamic": options.dynamic, "meta": context.meta,
        "example": {"shape": list(example.shape), "dtype": str(example.dtype), "sha256": _bytes_sha(example)},
    })
    with cache.lock(key):
        entry = cache.load("export", key)
        if entry is not None:
            with contextlib.suppress(CorruptEntry):
                for name in entry.files:
                    entry.copy_to(name, folder / name)
                meta = ArtifactMeta.from_json(entry.data["meta"], f"cached {fmt} export")
                return ExportResult(Artifact(fmt, meta, path=folder / entry.data["file"]), HIT)
        artifact = export_model(context.built, context.meta, context.example, folder, options, fmt, context)
        assert artifact.path is not None
        files = {artifact.path.name: artifact.path}
        files.update({p.name: p for p in entry_format.companion_files(artifact.path)})
        cache.store("export", key, data={"meta": artifact.meta.to_json(), "file": artifact.path.name}, files=files)
        return ExportResult(artifact, MISS)


def _bytes_sha(array: Any) -> str:
    import hashlib

    return hashlib.sha256(array.tobytes()).hexdigest()


def runtime_label(name: str, options: RuntimeOptions) -> str:
    from verify.runtimes import make_runtime

    return make_runtime(name, options).label


def run_stage(runtime: str, artifact: Artifact, inputs: dict[str, np.ndarray],
              options: RuntimeOptions) -> RunResult:
    """Load `artifact` in `runtime` and run it once on `inputs`."""
    from verify.runtimes import make_runtime

    instance = make_runtime(runtime, options)
    start = time.perf_counter()
    outputs = instance.load(artifact).run(inputs)
    return RunResult(runtime, instance.label, artifact.label, outputs, time.perf_counter() - start)


def oracle_stage(eager: Artifact, inputs: dict[str, np.ndarray], runs: list[RunResult],
                 options: RuntimeOptions | None = None) -> OracleResult:
    """The float64 outputs and the float32 noise floor per output, measured on the CPU whatever device
    the runs used (the floor is the CPU's float32 rounding of this model on this input)."""
    from verify.oracle import measure_oracle
    from verify.runtimes import make_runtime, runtimes_for

    runner = runtimes_for(eager.format)[0]
    fp32 = next((run.outputs for run in runs if run.label == runner), None)
    if fp32 is None:
        fp32 = make_runtime(runner).load(eager).run(inputs)
    oracle = measure_oracle(eager, inputs, fp32, options)  # floors at the runs' precision
    if oracle is None:
        raise UsageError(f"No runtime can run {eager.label} in float64 to measure the noise floor")
    return OracleResult(fp32, oracle)


def judge_stage(runs: list[RunResult], oracle: Oracle | None, tolerance: Tolerance) -> list[PairResult]:
    """Every pair of runs, then each run against the float64 oracle."""
    from verify.compare import compare_outputs

    floors = oracle.noise if oracle is not None else {}
    pairs = []
    for i, first in enumerate(runs):
        for second in runs[i + 1:]:
            pairs.append(compare_outputs(second.label, second.outputs, first.label, first.outputs, tolerance,
                                         floors, require_all=True))
    if oracle is not None:
        for run in runs:
            pairs.append(compare_outputs(run.label, run.outputs, "oracle", oracle.outputs, tolerance, floors,
                                         kind="oracle", require_all=True))
    return pairs


# The cell -------------------------------------------------------------------------------------
@contextlib.contextmanager
def isolated_torch_state() -> Iterator[None]:
    """Torch's process-wide state (RNG, threads, TF32 and cuDNN flags, default dtype) restored after
    the cell, so no cell depends on what ran before it."""
    import torch

    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    saved = (torch.get_rng_state(), torch.cuda.get_rng_state_all() if cuda else None, torch.get_num_threads(),
             torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, torch.get_default_dtype())
    try:
        yield
    finally:
        torch.set_rng_state(saved[0])
        if saved[1] is not None:
            torch.cuda.set_rng_state_all(saved[1])
        if torch.get_num_threads() != saved[2]:
            torch.set_num_threads(saved[2])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[3], saved[4]
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[5], saved[6]
        torch.set_default_dtype(saved[7])


def run_cell(request: CellRequest, folder: Path, cache: Cache | None = None, progress: Progress | None = None,
             plan: CellPlan | None = None) -> CellOutcome:
    """Build, export into `folder`, run every runtime, measure the oracle, judge: the Report of
    `verify export` (its `artifacts` left for the caller, who decides where the folder ends up)."""
    import torch

    from exporter.formats import ExportContext, get_format
    from verify.api import _input_dict, _settings_dict, explain_pairs
    from verify.report import Report, RunRecord

    progress = progress or NullProgress()
    plan = plan or plan_cell(request)
    spec, settings, export = request.spec, request.settings, request.export
    from verify.inputs import NamedInput

    named = [NamedInput(str(settings.input_file) if settings.input_file else f"seeded normal, seed {settings.seed}",
                        plan.inputs)]
    report = Report("export", _settings_dict(settings, spec=str(spec), export=export.to_dict(),
                                             runtimes=list(plan.runtimes)), _input_dict(named, settings))
    statuses: dict[str, str] = {}
    with isolated_torch_state():
        with progress.step(f"Building {spec} with {settings.weights} weights"):
            build = build_stage(spec, settings.weights, settings.seed, plan.inputs.shape, cache)
        statuses["weights"] = build.cache
        eager = build.eager
        inputs = {eager.meta.input_name: plan.inputs}
        context = ExportContext(build.built, torch.from_numpy(plan.inputs), eager.meta, dynamic=export.dynamic)
        artifacts = {eager.format: eager}
        for fmt in export.formats:
            takes = get_format(fmt).takes
            with progress.step(f"Exporting {fmt}" + (f" ({takes})" if takes else "")):
                exported = export_stage(context, fmt, export, folder, cache)
            artifacts[fmt] = exported.artifact
            statuses[f"export:{fmt}"] = exported.cache
        runs = []
        for name in plan.runtimes:
            with progress.step(f"Running {runtime_label(name, settings.runtime)}"):
                run = run_stage(name, artifacts[plan.formats[name]], inputs, settings.runtime)
            report.runs.append(RunRecord(run.label, run.artifact, run.seconds))
            runs.append(run)
        with progress.step("Running the float64 oracle"):
            oracle = oracle_stage(eager, inputs, runs, settings.runtime)
        report.floors, report.floor_source = oracle.oracle.noise, oracle.oracle.source
        report.pairs = judge_stage(runs, oracle.oracle, settings.tolerance)
        report.notes = explain_pairs(report)
    return CellOutcome(report, build, artifacts, inputs, oracle, statuses)


def request_dict(request: CellRequest) -> dict[str, Any]:
    """The request as plain data (what defines a cell; files named by path)."""
    from verify.cache import canonical

    return {"spec": canonical(request.spec), "settings": canonical(request.settings),
            "export": request.export.to_dict(), "runtimes": list(request.runtimes) if request.runtimes else None}


def request_content(request: CellRequest, plan: CellPlan) -> dict[str, Any] | None:
    """What determines a cell's result: the request with its input and weights file replaced by their
    content hashes, and the runtimes it resolved to. None when the weights cannot be pinned (a
    registered source read from elsewhere, e.g. the torch hub cache): such a result is not cached."""
    from verify.cache import file_sha256

    data = request_dict(request)
    data["runtimes"] = list(plan.runtimes)
    settings = dict(data["settings"])
    settings["input_file"] = None
    data["input"] = {"shape": list(plan.inputs.shape), "sha256": _bytes_sha(plan.inputs)}
    weights = request.settings.weights
    if weights not in PURE_WEIGHT_SOURCES:
        from exporter.weights import WEIGHT_SOURCES

        if weights in WEIGHT_SOURCES or not Path(weights).is_file():
            return None
        settings["weights"] = f"file sha256 {file_sha256(Path(weights))}"
    data["settings"] = settings
    return data
