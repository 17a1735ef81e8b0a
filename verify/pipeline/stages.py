"""One verification cell as typed stages: build -> export (per format) -> run (per runtime) -> oracle
-> judge. A cell is their composition (`run_cell` = `build_cell` then `finish_cell`): `verify export` is one
cell whose exports go into a staged artifact folder (it checks the folder's identity between the two halves),
`verify matrix` many cells; the cache stands in for the build (weights), each export and, in the matrix,
the whole cell. Every stage runs on every input of the cell; each pair is reported on its worst input."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.errors import UsageError
from exporter.messages import library_reason
from exporter.spec import DEFAULT_SHAPE, ModelSpec
from verify.judge.precision import computes_in
from verify.pipeline.isolation import raised_by_tool
from verify.progress import NullProgress, Progress

if TYPE_CHECKING:
    import numpy as np

    from exporter.artifacts import Artifact
    from exporter.backbones import BuiltModel
    from exporter.export import ExportOptions
    from exporter.formats import ExportContext
    from exporter.user_model import UserModelSpec
    from verify.cache import Cache
    from verify.inputs import NamedInput
    from verify.judge.compare import PairResult, Tolerance
    from verify.judge.file_floor import FileFloors
    from verify.judge.layers import Isolation
    from verify.judge.noise_floor import NoiseFloor
    from verify.judge.oracle import Oracle
    from verify.judge.trust import RepeatCheck
    from verify.pipeline.overlap import ArtifactsInFlight, BackgroundExport
    from verify.report import Report
    from verify.runtimes import Runtime, RuntimeOptions
    from verify.settings import RunSettings

HIT, MISS, OFF = "hit", "miss", "off"
"""How a stage's result was obtained: from the cache, computed and stored, or computed with no cache."""
PURE_WEIGHT_SOURCES = frozenset({"synthetic"})
"""Weight sources that are a function of (backbone, seed) alone (a cell's result key may name them); files
and the torch hub cache may change under us. Weights are read from the cache only as a copy of synthetic ones whose
tensors hash to the digest committed with the code (exporter/weights.py)."""


@dataclass(frozen=True)
class CellRequest:
    """Everything one cell needs: what to build, how to feed and judge it, what to export and run."""

    spec: ModelSpec | UserModelSpec
    """A registered backbone, or (`verify export --model`) the user's own factory, never cached."""
    settings: RunSettings
    export: ExportOptions
    runtimes: tuple[str, ...] | None = None
    """None: every registered runtime that runs an exported format (or the in-memory model)."""
    layers_by_default: bool = False
    """Run the layer verdict where `settings.layers` is None (neither asked for nor refused), best effort
    (verify/judge/layers.py `best_effort`): `verify export` (`wants_layers`)."""

    @property
    def layers(self) -> bool:
        """Whether this cell runs the layer verdict: asked for (`--layers`), or by default."""
        return self.settings.layers is True or (self.settings.layers is None and self.layers_by_default)


@dataclass
class CellPlan:
    """A request checked before any work: the runtimes to run, the format each runs, the inputs given."""

    request: CellRequest
    runtimes: list[str]
    formats: dict[str, str]
    given: list[NamedInput] | None = None
    """What --input names, read and checked before any model work; None: one seeded normal input."""

    def inputs_for(self, built: Any = None) -> list[NamedInput]:
        """The cell's inputs: those given (as given: see verify/settings.py), else the seeded set (--samples of
        them) of --shape, else of the model's own shape (a user model's example input; a backbone's 1x3x224x224,
        known before it is built)."""
        from verify.settings import default_inputs

        settings = self.request.settings
        return self.given or default_inputs(settings, settings.shape or model_shape(built))


@dataclass
class BuildResult:
    built: BuiltModel
    eager: Artifact
    """The in-memory model as an artifact (what the eager runtime and the oracle run)."""
    cache: str = OFF
    """Where the weights came from: hit, miss or off."""
    named: list[NamedInput] = field(default_factory=list)
    """The cell's inputs (a user model's default shape is known only once it is built)."""
    no_float64: Oracle | None = None
    """For a model that cannot run in float64: the empty oracle saying why (an explicit tolerance judges)."""
    child: BackgroundExport | None = None
    """The background export's child (verify/pipeline/overlap.py), started before the build: its imports overlap
    it; `finish_cell` hands it its job."""

    @property
    def feeds(self) -> list[dict[str, np.ndarray]]:
        return [{self.eager.meta.input_name: item.array} for item in self.named]


@dataclass
class ExportResult:
    artifact: Artifact
    cache: str = OFF


@dataclass
class RunResult:
    runtime: str
    label: str
    artifact: str
    outputs: list[dict[str, np.ndarray]]
    """One set of outputs per input, in the cell's input order."""
    seconds: float
    repeat: RepeatCheck | None = None
    """Every input run a second time, and any input the runs changed in place (verify/judge/trust.py)."""
    module: Any = field(default=None, repr=False, compare=False)
    """The torch module the runs ran, where `run_stage` was asked to keep it (the layer verdict re-runs its layers
    rather than load the file again); else None."""
    second: tuple[dict[str, np.ndarray], dict[str, np.ndarray] | str] | None = None
    """The file run once more at a second shape inside its dynamic axes (`second_feed`): that feed, and the outputs or
    why the run failed; None where no second shape was asked."""
    notes: list[str] = field(default_factory=list)
    """What the loaded file holds that its runs do not judge (a TorchScript file's other methods, hunt 40)."""

    def on(self, index: int) -> dict[str, Any]:
        """This run on input `index`, as the judging functions take it: {"label", "outputs"}."""
        return {"label": self.label, "outputs": self.outputs[index]}


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
    """The first input's feed: what the goldens keep."""
    oracle: OracleResult
    """On the first input (the goldens); every input had its own for the verdicts."""
    cache: dict[str, str] = field(default_factory=dict)
    """Stage -> hit/miss/off (`weights`, `export:<format>`)."""
    oracles: list[OracleResult] = field(default_factory=list)
    """Every input's eager float32 and oracle, in the inputs' order (the goldens keep as many as fit)."""


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
    # a file exported but never run would be listed in a folder that passed: refuse instead
    unrun = [fmt for fmt in exported if not any(fmt in runtime_class(n).formats for n in chosen)]
    if unrun and runtimes:
        raise UsageError(f"No --runtime runs the exported {', '.join(unrun)}, and a file exported but not verified "
                         f"must not pass: add --runtime {runtimes_for_formats(unrun)[0]}, or leave out "
                         f"--format {unrun[0]} (with --runtime and no --format, what the runtimes run is exported)")
    if unrun:
        able = runtimes_for_formats(unrun)
        runs = "; ".join(f"{n} runs {', '.join(runtime_class(n).precisions)}" for n in able)
        keep = [fmt for fmt in exported if fmt not in unrun]
        fix = (f"export only what can be verified at {precision} ({' '.join('--format ' + f for f in keep)})"
               if keep else f"export a format a runtime runs at {precision}")
        raise UsageError(f"No runtime runs {', '.join(unrun)} at {precision} ({runs}), and a file exported "
                         f"but not verified must not pass: {fix}, or verify at fp32")
    return chosen, formats


def export_for(runtimes: Sequence[str] | None, device: str = "cpu") -> ExportOptions:
    """The export options when none are given: the default formats, or with `runtimes` the formats those
    runtimes run; compiled formats for `device`."""
    from exporter.export import ExportOptions
    from exporter.formats.aoti import AotiOptions
    from verify.runtimes import formats_run_by

    options = (AotiOptions(device),)
    return ExportOptions(formats=formats_run_by(runtimes), format_options=options) if runtimes else \
        ExportOptions(format_options=options)


def plan_cell(request: CellRequest) -> CellPlan:
    """Check names, options, precisions and that each runtime has a format to run; read and check the
    inputs --input names. No model work."""
    from exporter.formats import refuse_unused_options as refuse_unused_format_options
    from verify.inputs import refuse_blank_inputs
    from verify.runtimes import check_runtimes
    from verify.settings import settings_inputs

    request.spec.validate()
    request.export.validate()
    refuse_unused_format_options(request.export.formats, request.export.format_options)
    runtimes, formats = choose_runtimes(request.export.formats, request.runtimes,
                                        request.settings.runtime.precision)
    check_runtimes(runtimes, request.settings.runtime)  # --device cuda without a GPU, --precision tf32 on the CPU
    named = settings_inputs(request.settings)
    refuse_blank_inputs(named)  # before the model is built (review 33)
    return CellPlan(request, runtimes, formats, named)


def input_shapes(named: list[NamedInput]) -> tuple[tuple[int, ...], ...]:
    """The distinct shapes of the cell's inputs, in order: what its dynamic files must each take."""
    return tuple(dict.fromkeys(tuple(item.array.shape) for item in named))


def model_shape(built: Any) -> tuple[int, ...]:
    """The shape a built model is fed by default: a user model's example input, else 1x3x224x224."""
    return tuple(getattr(built, "input_shape", None) or DEFAULT_SHAPE)


# Stages ---------------------------------------------------------------------------------------
START_CHILD: Any = object()
"""build_stage's default `child`: start the background export's child there (None: no child)."""


def build_stage(request: CellRequest, plan: CellPlan, cache: Cache | None = None,
                progress: Progress | None = None, child: Any = START_CHILD) -> BuildResult:
    """spec + weights + seed -> the built model (eval mode), its in-memory artifact and the cell's inputs.
    Weights are computed, or (synthetic ones of a registered backbone, with a cache) read from a copy whose tensors
    hash to the digest committed with the code (exporter/synthetic_digests.json), which binds them to
    `synthetic:<seed>` as recomputing would (README, the cache's threat model). A user's model is built by its
    own code. Where the export will run in the background, its child is started first (`BuildResult.child`), unless
    the caller started it earlier (`cell_context`) and passes it as `child`."""
    from exporter.formats.eager import eager_artifact
    from exporter.weights import weights_store

    spec, settings = request.spec, request.settings
    progress = progress or NullProgress()
    if child is START_CHILD:
        child = background_child(request)  # first: its imports overlap the build
    try:
        with progress.step(f"Building {spec}" + (f" with {settings.weights} weights" if spec.registered else "")):
            # --input's own shape where --shape names none: a registered backbone refuses its channels, a user's model
            # is tried on it, here, not as "pass --static" after a failed export (review 25)
            shape = settings.shape or (tuple(plan.given[0].array.shape) if plan.given else None)
            with weights_store(cache if spec.registered else None):
                built, status = spec.build(settings.seed, shape, settings.weights), OFF
        no_float64 = without_float64(built, settings)  # refused here, before any export, when auto needs it
        named = plan.inputs_for(built)
        if request.export.dynamic and not spec.registered:  # a registered backbone follows its batch by design
            require_batch_following(built, named[0].array)
    except BaseException:
        if child is not None:
            child.cancel()
        raise
    return BuildResult(built, eager_artifact(built, tuple(named[0].array.shape)), status, named, no_float64, child)


def require_batch_following(built: Any, example: np.ndarray) -> None:
    """Every output of the in-memory model follows its input's batch (run once at twice the example's), or a UsageError:
    its dynamic-batch files would be judged at one batch and fail at any other (`verify artifact` runs a second
    one), so the export is refused before any file is written, with --static as the way out."""
    import numpy as np

    from exporter.formats.eager import eager_artifact
    from verify.runtimes import default_runtime, make_runtime

    batch = np.concatenate([example, example])
    artifact = eager_artifact(built, tuple(batch.shape))
    try:
        outputs = make_runtime(default_runtime(artifact.format)).load(artifact).run({artifact.meta.input_name: batch})
    except Exception as exc:  # noqa: BLE001 - the user's model failed at another batch: that is the finding
        if raised_by_tool(exc):  # a bug of this tool's, not the model's or file's finding
            raise
        raise UsageError(f"{built.spec} fails at batch {len(batch)} ({str(exc).strip().splitlines()[-1]}), so a "
                         "dynamic-batch export of it cannot be judged: pass --static") from None
    fixed = [name for name, value in outputs.items() if value.ndim == 0 or value.shape[0] != len(batch)]
    if fixed:
        shapes = ", ".join(f"{name} {tuple(outputs[name].shape)}" for name in fixed[:3])
        raise UsageError(f"{built.spec}'s outputs do not follow its input's batch (at batch {len(batch)}: {shapes}), "
                         "so its dynamic-batch files would fail at any batch but the one judged: pass --static")
    require_other_sizes(built, example)


def require_other_sizes(built: Any, example: np.ndarray) -> None:
    """The in-memory model runs at the second shape its dynamic files are judged at (verify/inputs.py second_shape),
    or a UsageError before any file is written: a model that takes only the example's height and width (a Linear
    after a flatten) has no dynamic height and width for a file to claim, and --static is the way out."""
    from exporter.formats.eager import eager_artifact
    from exporter.formats.program import DYNAMIC_AXES
    from verify.inputs import SECOND_SHAPE_SEED, make_input, second_shape
    from verify.runtimes import default_runtime, make_runtime

    shape = second_shape(example.shape, DYNAMIC_AXES)
    if shape is None:
        return
    artifact = eager_artifact(built, shape)
    try:
        outputs = make_runtime(default_runtime(artifact.format)).load(artifact).run(
            {artifact.meta.input_name: make_input(shape, SECOND_SHAPE_SEED)})
    except Exception as exc:  # noqa: BLE001 - the user's model failed at another size: that is the finding
        if raised_by_tool(exc):  # a bug of this tool's, not the model's or file's finding
            raise
        raise UsageError(f"{built.spec} fails at {'x'.join(map(str, shape))} ({library_reason(exc)}), "
                         "so its files cannot claim a dynamic batch, height and width (a dynamic export is judged at "
                         "a second shape inside them): pass --static") from None
    # review 24: an example of batch 2 is judged at batch 1 there, where a `.squeeze()` drops the model's own batch
    # axis; each file then failed as "its batch does not hold (a size fixed inside the file)", exit 1
    fixed = [name for name, value in outputs.items() if value.ndim == 0 or value.shape[0] != shape[0]]
    if fixed:
        shapes = ", ".join(f"{name} {tuple(outputs[name].shape)}" for name in fixed[:3])
        raise UsageError(f"{built.spec}'s outputs do not follow its input's batch (at batch {shape[0]}: {shapes}; "
                         "a squeeze() drops a batch of 1), so its dynamic-batch files would fail at any batch but the "
                         "one judged: keep the batch axis, or pass --static")


def background_child(request: CellRequest, take_core: bool = True) -> BackgroundExport | None:
    """A child for the background export (verify/pipeline/overlap.py) where one will run: a format that overlaps is
    asked, the model is a registered backbone and the machine has a core for it (`can_overlap`); else None."""
    from exporter.formats import get_format
    from verify.pipeline.overlap import BackgroundExport, can_overlap

    overlapping = [name for name in request.export.formats if get_format(name).overlaps]
    if not overlapping or not can_overlap(not request.spec.registered):
        return None
    return BackgroundExport(overlapping[0], take_core)


def without_float64(built: Any, settings: RunSettings) -> Oracle | None:
    """For a model that cannot run in float64: no oracle, the note why, and an explicit tolerance required
    (a floor estimated from the runs being judged would judge them against themselves)."""
    from verify.judge.oracle import Oracle

    note = getattr(built, "float64_note", None)
    if not note:
        return None
    if settings.tolerance.mode == "auto":
        raise UsageError(f"{note}; the auto tolerance needs it to measure the float32 noise floor: pass "
                         "--rtol/--atol or --decimal")
    return Oracle({}, {}, f"{note}: runs judged pair against pair only, with {settings.tolerance.describe()}")


def export_stage(context: ExportContext, fmt: str, options: ExportOptions, folder: Path,
                 cache: Cache | None = None) -> ExportResult:
    """The built model -> one format's artifact in `folder`. A data format (whose loading executes no code:
    ONNX) may be copied from the cache, and is then checked like any file from elsewhere and run and judged
    like a fresh one; a format whose loading can execute code is always exported here, never read from or
    written to the cache (a planted file would run in this process and again wherever it is deployed)."""
    from exporter.export import export_model
    from exporter.formats import get_format

    entry_format = get_format(fmt)
    if cache is None or entry_format.executes_code_on_load or entry_format.filename is None:
        return ExportResult(export_model(context.built, context.meta, context.example, folder, options, fmt,
                                         context), OFF)
    key = export_key(cache, context, fmt, options)
    with cache.lock(key):
        cached = _cached_export(cache, key, context, fmt, options, folder)
        if cached is not None:
            return ExportResult(cached, HIT)
        artifact = export_model(context.built, context.meta, context.example, folder, options, fmt, context)
        assert artifact.path is not None
        if not entry_format.companion_files(artifact.path):  # one self-contained file, or not cached
            cache.store("export", key, data={"format": fmt}, files={artifact.path.name: artifact.path})
        return ExportResult(artifact, MISS)


def export_key(cache: Cache, context: ExportContext, fmt: str, options: ExportOptions) -> str:
    """The cache key of `fmt` exported from this context: model, weights digest, options and example."""
    example = context.example.detach().cpu().contiguous().numpy()
    return cache.key("export", {
        "spec": context.built.spec, "weights_sha256": context.meta.weights_sha256, "format": fmt,
        "options": options.options_for(fmt), "dynamic": options.dynamic, "meta": context.meta,
        "example": {"shape": list(example.shape), "dtype": str(example.dtype), "sha256": _bytes_sha(example)},
        **({"shapes": [list(shape) for shape in context.shapes]} if len(context.shapes) > 1 else {}),
    })


def start_export_stage(context: ExportContext, options: ExportOptions, folder: Path, cache: Cache | None,
                       artifacts: ArtifactsInFlight, statuses: dict[str, str], child: BackgroundExport,
                       stores: list[threading.Thread] | None = None) -> tuple[str, ...]:
    """`export_stage` of the formats that overlap (ONNX) in `child` (verify/pipeline/overlap.py): a cached file that
    passes `_cached_export` goes into `artifacts` at once; the others go to the child, and `artifacts[fmt]` waits for
    each file, which is then stored in the cache like an export made here (the same rules: data formats only). The
    formats that ride along (the `.pt2`, never cached) go to the child first, from the same trace, even when the
    ONNX file came from the cache (the child has imported already: their export leaves this process). A child given
    nothing to do, or a model it cannot be handed (the formats are then exported here), is stopped. With `stores`,
    a file is stored in the cache by a thread appended there, which the caller joins before the folder moves (the
    copy and its hashes overlap the runs of the file: 0.25 s of a ResNet-50's ONNX); else here. Returns the
    formats now in `artifacts` or on their way there."""
    from exporter.formats import get_format
    from verify.pipeline.overlap import NotPicklable

    taken, keys = [], {}
    for fmt in [name for name in options.formats if get_format(name).overlaps]:
        entry_format = get_format(fmt)
        if cache is not None and not entry_format.executes_code_on_load and entry_format.filename is not None:
            keys[fmt] = key = export_key(cache, context, fmt, options)
            with cache.lock(key):
                cached = _cached_export(cache, key, context, fmt, options, folder)
            if cached is not None:
                artifacts[fmt], statuses[f"export:{fmt}"] = cached, HIT
                taken.append(fmt)
    formats = [name for name in options.formats if get_format(name).rides_along] + \
        [name for name in options.formats if get_format(name).overlaps and name not in taken]

    def done(artifact: Artifact) -> None:
        assert artifact.path is not None
        key = keys.get(artifact.format)
        if cache is not None and key is not None and not get_format(artifact.format).companions_of(artifact):
            def store(key: str = key, path: Path = artifact.path, fmt: str = artifact.format) -> None:
                with cache.lock(key):
                    cache.store("export", key, data={"format": fmt}, files={path.name: path})

            if stores is None:
                store()
            else:
                stores.append(threading.Thread(target=store, name=f"cache store {artifact.format}"))
                stores[-1].start()
        statuses[f"export:{artifact.format}"] = MISS if key is not None else OFF

    try:
        if formats:
            child.send(context, options, tuple(formats))
    except NotPicklable:  # a model only this process can hold: exported here, as without a second core
        formats = []
    if not formats:
        child.cancel()
    for name in formats:
        artifacts.expect(name, child, folder, done)
    return (*taken, *formats)


CACHED_META_FIELDS = ("input_name", "input_shape", "output_names", "spec", "weights", "weights_sha256")
"""What a cached file's own metadata must say exactly as this run's model does."""


def _cached_export(cache: Cache, key: str, context: ExportContext, fmt: str, options: ExportOptions,
                   folder: Path) -> Artifact | None:
    """The cached file for `key`, copied into `folder` (its hash recomputed as it is copied), if it is one
    self-contained file of `fmt` that the format reads back (ONNX: onnx.checker, no external data) and
    whose recorded metadata is this model's; else None, the entry removed and nothing left in `folder`."""
    from exporter.artifacts import Artifact
    from exporter.formats import get_format

    entry = cache.load("export", key)
    if entry is None:
        return None
    entry_format = get_format(fmt)
    path = folder / str(entry_format.filename)
    try:
        if set(entry.files) != {path.name}:
            raise ValueError(f"the entry holds {sorted(entry.files)}, not {path.name} alone")
        entry.copy_to(path.name, path)
        if entry_format.companion_files(path):
            raise ValueError("the file refers to other files")
        artifact = Artifact(fmt, entry_format.read_meta(path), path=path)
        _require_meta_of(artifact, context, options.options_for(fmt), entry_format)
    except Exception:  # anything a planted file makes a reader raise: not this export, computed instead
        path.unlink(missing_ok=True)
        cache.reject(entry)
        return None
    return artifact


def _require_meta_of(artifact: Artifact, context: ExportContext, format_options: Any, entry_format: Any) -> None:
    """ValueError unless the file's metadata is this run's model (input, outputs, spec, weights digest), as
    dynamic as asked, and of the opset asked where the format has one."""
    wanted, found = context.meta, artifact.meta
    differ = [name for name in CACHED_META_FIELDS if getattr(found, name) != getattr(wanted, name)]
    if differ or bool(found.dynamic_axes) != context.dynamic:
        raise ValueError(f"the cached file's metadata differs from this model's: {differ or ['dynamic_axes']}")
    opset = getattr(format_options, "opset", None)
    if opset is not None and entry_format.manifest_fields(artifact).get("opset") != opset:
        raise ValueError(f"the cached file is not opset {opset}")


def _bytes_sha(array: Any) -> str:
    import hashlib

    return hashlib.sha256(array.tobytes()).hexdigest()


def runtime_label(name: str, options: RuntimeOptions) -> str:
    from verify.runtimes import make_runtime

    return make_runtime(name, options).label


def run_stage(runtime: str, artifact: Artifact, feeds: Sequence[dict[str, np.ndarray]],
              options: RuntimeOptions, preloaded: tuple[Runtime, float] | None = None, keep: bool = False,
              second: dict[str, np.ndarray] | None = None) -> RunResult:
    """Load `artifact` in `runtime` once (or take it `preloaded` in the background with its load's seconds,
    verify/pipeline/preload.py) and run it on every feed, each on a private copy of its input; every feed runs
    twice (the determinism guard, verify/judge/trust.py), and every input is checked unchanged. `keep`: the
    result holds the loaded torch module (`RunResult.module`). `second` (`second_feed`): one more run, at another
    shape inside the file's dynamic axes, kept in `RunResult.second` (`second_shape_stage` judges it)."""
    from verify.judge.trust import RepeatCheck, output_differences, run_guarded
    from verify.runtimes import make_runtime

    start = time.perf_counter()
    if preloaded is None:
        loaded = make_runtime(runtime, options).load(artifact)
    else:
        loaded, load_seconds = preloaded
        start -= load_seconds  # its seconds count its load, as a load here would
        if loaded.artifact is not artifact:
            raise RuntimeError(f"{runtime} was loaded in the background with another file than {artifact.label}")
    outputs, mutated = [], set()
    for feed in feeds:
        result, changed = run_guarded(loaded, feed)
        outputs.append(result)
        mutated.update(changed)
    seconds = time.perf_counter() - start
    differences: dict[str, float] = {}
    for feed, first in zip(feeds, outputs, strict=True):  # every input: one random on some inputs pools its noise
        again, changed = run_guarded(loaded, feed)
        mutated.update(changed)
        for name, value in output_differences(first, again).items():
            differences[name] = max(value, differences.get(name, 0.0))
    repeat = RepeatCheck(loaded.label, differences, sorted(mutated))
    at_second = None
    if second is not None:
        try:
            at_second = (second, run_guarded(loaded, second)[0])
        except Exception as exc:  # noqa: BLE001 - the file failing at a size its axes claim is the finding
            if raised_by_tool(exc):  # a bug of this tool's, not the model's or file's finding
                raise
            at_second = (second, library_reason(exc).split("; ")[0])
    return RunResult(runtime, loaded.label, artifact.label, outputs, seconds, repeat,
                     getattr(loaded, "module", None) if keep else None, at_second, _unjudged_notes(artifact, loaded))


def _unjudged_notes(artifact: Artifact, loaded: Runtime) -> list[str]:
    """A loaded file's methods besides forward, which no run judges (hunt 40: `verify export --model` of a model with
    an `@torch.jit.export` method wrote a file that has it, and said nothing)."""
    from verify.runtimes.torch_common import unjudged_methods_note

    return [] if artifact.path is None else unjudged_methods_note(artifact.path.name, getattr(loaded, "module", None))


def second_feed(artifact: Artifact, example: np.ndarray, dynamic: bool) -> dict[str, np.ndarray] | None:
    """The one seeded input at a second shape inside the dynamic axes an exported file claims (batch + 1, height and
    width + 32, within the range its format records; verify/inputs.py second_shape, as `verify artifact` runs it):
    a dynamic axis is certified only where the file was judged at another size. None for the in-memory model, a
    static export, or a file whose axes take no other size."""
    from exporter.formats.program import DYNAMIC_AXES
    from verify.inputs import SECOND_SHAPE_SEED, make_input, second_shape

    if not dynamic or artifact.path is None:
        return None
    shape = second_shape(example.shape, artifact.meta.dynamic_axes or DYNAMIC_AXES, artifact.meta.dynamic_ranges)
    return None if shape is None else {artifact.meta.input_name: make_input(shape, SECOND_SHAPE_SEED)}


def second_shape_stage(runs: Sequence[RunResult], build: BuildResult, settings: RunSettings,
                       artifacts: Mapping[str, Artifact], formats: Mapping[str, str]
                       ) -> tuple[list[str], list[str]]:
    """Each file's run at its second shape (`run_stage`'s `second`) judged as `verify artifact` judges it there
    (verify/folder/validate.py): against the model's float64 run, auto on per-output floors measured on that input
    (whatever tolerance the verdict used: an explicit one, calibrated by nobody at that size, would fail rounding
    there); a model with no float64 oracle has only its outputs' shapes checked (`SECOND_SHAPE_UNJUDGED`). One line
    per file that fails or does not run there, naming the axes that do not hold (each axis tried alone on the file
    again). A file traced at the example's size may carry that size inside it (a shape read as a Python number:
    `int(x.shape[-1])`), which no input of the example's shape can show. Returns the problems, and the note that
    says where the files were judged and how close they came (none where something failed)."""

    from verify.judge.compare import Tolerance, compare_outputs
    from verify.judge.graph_lift import floor_bounds
    from verify.judge.measure import measure_floors
    from verify.judge.summation import lifted
    from verify.runtimes import RuntimeOptions, default_runtime, make_runtime, runtimes_for

    example = build.named[0].array.shape
    eager = build.eager
    exact = runtimes_for(eager.format, float64=True)
    model = make_runtime(exact[0] if exact else default_runtime(eager.format), settings.runtime).load(eager)
    model64 = make_runtime(exact[0], RuntimeOptions(dtype="float64")).load(eager) \
        if exact and build.no_float64 is None else None
    references: dict[tuple[int, ...], tuple[dict[str, np.ndarray], dict[str, float]]] = {}
    auto = settings.tolerance if settings.tolerance.mode == "auto" else Tolerance()
    judged: list[tuple[str, float | None]] = []  # (run, worst ratio) of each file that agreed there
    held: list[str | None] = []  # a user model's float32 run there against its call check's (hunt 25a)
    check = getattr(build.built, "float64_calls", None)  # summed_outputs' run there is held to it too (review 22)
    same_runs = settings.runtime.device == "cpu" and settings.runtime.precision == "fp32"
    inductor = compiled_by_inductor(formats.values())

    def failure(run: RunResult, feed: dict[str, np.ndarray], outputs: dict[str, np.ndarray] | str) -> str | None:
        if isinstance(outputs, str):
            return f"fails to run ({outputs})"
        batch = [name for name, value in outputs.items() if value.ndim == 0 or value.shape[0] != feed_batch(feed)]
        if batch:  # compared below too, but this says it plainly
            return f"returns {batch[0]} of shape {tuple(outputs[batch[0]].shape)}, not following the input's batch"
        shape = tuple(next(iter(feed.values())).shape)
        if shape not in references:  # the model as the runs ran it, and in float64: its floors on this input
            try:
                low = model.run({k: v.copy() for k, v in feed.items()})
                fp64 = model64.run({k: v.copy() for k, v in feed.items()}) if model64 is not None else None
            except Exception as exc:  # noqa: BLE001 - the model itself does not take this size
                if raised_by_tool(exc):  # a bug of this tool's, not the model's or file's finding
                    raise
                return f"cannot be judged: the model itself fails there ({library_reason(exc)})"
            if fp64 is not None and same_runs:  # a floor measured there too: from the float32 run the watch held
                held.append(held_to_calls(build.built, [feed], [low], [f"at {'x'.join(map(str, shape))}"]))
            if fp64 is None:
                references[shape] = (low, {})
            else:  # a user's few-value head judged on its summation floor there too, as at the example's shape
                # and a large reduction on the laned graph's (verify/judge/graph_lift.py graph_bounds), as there too
                floors = lifted(measure_floors(low, fp64, settings.runtime.precision),
                                floor_bounds(eager, feed, low, fp64, inductor))
                references[shape] = (fp64, {name: floor.value for name, floor in floors.items()})
        reference, floors = references[shape]
        if model64 is None:  # no floor to judge values on: the outputs the model gives there, of its shapes
            other = {name: outputs[name].shape if name in outputs else None for name in reference}
            wrong = [name for name in reference if other[name] != reference[name].shape] + \
                [name for name in outputs if name not in reference]
            return None if not wrong else (f"returns {wrong[0]} of shape {other.get(wrong[0])}, where the model's is "
                                           f"{reference[wrong[0]].shape if wrong[0] in reference else None}")
        pair = compare_outputs(run.label, outputs, "the model", reference, auto, floors, kind="oracle",
                               require_all=True)
        if pair.passed:
            judged.append((run.label, pair.worst.ratio if pair.outputs else None))
            return None
        worst = pair.worst
        ratio = f", {worst.ratio:.3g}x its floor there" if worst.ratio is not None else ""
        return f"differs from the model ({worst.name}: {worst.reason}{ratio})"

    problems, seconds = _second_shapes(runs, failure, artifacts, formats, settings, example, judged)
    explicit = settings.tolerance.mode != "auto"
    unheld = any(held) or (check is not None and check.difference is not None and model64 is not None)
    if unheld and explicit:
        # the floors there come from a float32 run the call check never saw, and the verdict's own yardstick is the
        # explicit tolerance, which judges without a floor: the second shape is judged on it too (tests/test_trust.py,
        # tests/test_hunt13a.py: --rtol/--atol still judge a model whose float64 run is another function)
        auto = settings.tolerance
        del judged[:]
        problems, seconds = _second_shapes(runs, failure, artifacts, formats, settings, example, judged)
    elif unheld:
        # the floors at the second shape were lifted by a float32 run the call check never saw: the model's own there,
        # or the one that bounds its heads' sums there (verify/judge/summation.py summed_outputs sets the difference
        # itself). Review 22: each let a file 0.1 % off only at other sizes exit 0 ("judged at a second shape ... 0.3x")
        from verify.judge.trust import function_problems, function_record

        return function_problems(function_record(build.built)) + problems, []
    ratios = [(label, ratio) for label, ratio in judged if ratio is not None]
    if problems or not ratios:
        return problems, []
    label, ratio = max(ratios, key=lambda item: item[1])
    return problems, [f"each dynamic file was judged at a second shape inside its axes too "
                      f"({', '.join(dict.fromkeys('x'.join(map(str, shape)) for shape in seconds))}, against the model "
                      f"in float64 there): worst {label} {ratio:.1f}x its floor"]


def _second_shapes(runs: Sequence[RunResult], failure: Callable[..., str | None], artifacts: Mapping[str, Artifact],
                   formats: Mapping[str, str], settings: RunSettings, example: tuple[int, ...],
                   judged: list[tuple[str, float | None]]) -> tuple[list[str], list[tuple[int, ...]]]:
    """`second_shape_stage`'s loop: each file's run at its second shape judged by `failure`, and where it fails, each
    of its dynamic axes tried alone to name the ones that do not hold. Returns (problems, the shapes judged)."""
    import numpy as np

    from exporter.formats.program import DYNAMIC_AXES
    from verify.inputs import SECOND_SHAPE_SEED, make_input
    from verify.runtimes import make_runtime

    problems, seconds = [], []
    for run in runs:
        if run.second is None:
            continue
        feed, outputs = run.second
        shape = next(iter(feed.values())).shape
        seconds.append(shape)
        judged_before = len(judged)
        why = failure(run, feed, outputs)
        if why is None:
            continue
        file = artifacts[formats[run.runtime]]
        loaded = make_runtime(run.runtime, settings.runtime).load(file)
        axes = []
        for axis in [a for a in range(len(shape)) if shape[a] != example[a]]:
            alone = tuple(shape[a] if a == axis else example[a] for a in range(len(shape)))
            one = {name: np.ascontiguousarray(x[tuple(slice(0, n) for n in alone)]) if
                   all(n <= s for n, s in zip(alone, x.shape)) else make_input(alone, SECOND_SHAPE_SEED)
                   for name, x in feed.items()}  # a batch of 1 judged for an example of 2: the example's batch anew
            try:
                fails = failure(run, one, loaded.run({k: v.copy() for k, v in one.items()})) is not None
            except Exception as exc:  # noqa: BLE001 - a failed run at that size fails the axis
                if raised_by_tool(exc):  # a bug of this tool's, not the model's or file's finding
                    raise
                fails = True
            if fails:
                axes.append((file.meta.dynamic_axes or DYNAMIC_AXES).get(str(axis), f"axis {axis}"))
        del judged[judged_before:]  # the runs of each axis alone are no file's verdict
        names = " and ".join(axes) or "dynamic axes together"
        problems.append(f"{file.path.name if file.path is not None else run.artifact} in {run.label}: at "
                        f"{'x'.join(map(str, shape))}, inside the dynamic axes it declares (judged at "
                        f"{'x'.join(map(str, example))}), it {why}; its {names} {'does' if len(axes) == 1 else 'do'} "
                        "not hold (a size fixed inside the file, e.g. a shape traced as a number): export with "
                        "--static, or at the size you deploy")
    return problems, seconds


SECOND_SHAPE_UNJUDGED = ("the model has no float64 oracle, so at the second shape inside the dynamic axes only the "
                         "files' output shapes were checked, not their values: export with --static, or at the size "
                         "you deploy, for a verdict at that size")


def feed_batch(feed: Mapping[str, np.ndarray]) -> int:
    return int(next(iter(feed.values())).shape[0])


def oracle_stage(eager: Artifact, inputs: dict[str, np.ndarray], runs: list[RunResult],
                 options: RuntimeOptions | None = None, index: int = 0,
                 no_float64: Oracle | None = None) -> OracleResult:
    """On input `index`: the float64 outputs and the float32 noise floor per output, measured on the CPU
    whatever device the runs used (the floor is the CPU's float32 rounding of this model on this input);
    `no_float64`, the model's note, stands in for a model that cannot run in float64."""
    from verify.inputs import copy_feed
    from verify.judge.oracle import measure_oracle
    from verify.runtimes import default_runtime, make_runtime

    inputs = copy_feed(inputs)  # a model that writes into its input spoils only this copy
    runner = default_runtime(eager.format)
    fp32 = next((run.outputs[index] for run in runs if run.label == runner), None)
    if fp32 is None:
        fp32 = make_runtime(runner).load(eager).run(inputs)
    if no_float64 is not None:
        return OracleResult(fp32, no_float64)
    oracle = measure_oracle(eager, inputs, fp32, options)  # floors at the runs' precision
    if oracle is None:
        raise UsageError(f"No runtime can run {eager.label} in float64 to measure the noise floor")
    return OracleResult(fp32, oracle)


def oracles_stage(eager: Artifact, feeds: Sequence[dict[str, np.ndarray]], runs: list[RunResult],
                  options: RuntimeOptions | None = None, no_float64: Oracle | None = None,
                  batch: bool = False, between: Callable[[], None] | None = None, inductor: bool = False
                  ) -> list[OracleResult]:
    """`oracle_stage` on every input, each floor measured on its own input; with `batch` (a model whose samples
    are independent: a registered backbone, never the user's code) the float64 runs go once as one batch."""
    from verify.inputs import copy_feed
    from verify.judge.oracle import measure_oracles
    from verify.runtimes import default_runtime, make_runtime

    feeds = [copy_feed(feed) for feed in feeds]  # a model that writes into its input spoils only these copies
    runner = default_runtime(eager.format)
    fp32 = [next((run.outputs[index] for run in runs if run.label == runner), None) for index in range(len(feeds))]
    if any(outputs is None for outputs in fp32):
        loaded = make_runtime(runner).load(eager)
        fp32 = [loaded.run(feed) if outputs is None else outputs for feed, outputs in zip(feeds, fp32)]
    if no_float64 is not None:
        return [OracleResult(outputs, no_float64) for outputs in fp32]
    oracles = measure_oracles(eager, feeds, fp32, options, batch, between, inductor)  # floors at the runs' precision
    if oracles is None:
        raise UsageError(f"No runtime can run {eager.label} in float64 to measure the noise floor")
    # every input's rounding samples go on: the goldens keep as many inputs as fit (verify/folder/write.py)
    return [OracleResult(outputs, oracle) for outputs, oracle in zip(fp32, oracles)]


def pooled_judge_stage(runs: Sequence[RunResult], oracles: Sequence[OracleResult], tolerance: Tolerance,
                       memo: dict[tuple, PairResult] | None = None,
                       ) -> tuple[dict[str, NoiseFloor], list[list[PairResult]]]:
    """Each output's floor pooled over the inputs (per channel, the largest measured on any), then every input
    judged on it: the pairs, and each run against that input's oracle (README, "Evidence per verdict"). With
    `memo`, comparisons already made with these oracles and this tolerance (`judge_stage`) are taken from it."""
    from verify.judge.oracle import pooled_floors

    floors = pooled_floors([result.oracle.noise for result in oracles])
    judged = [judge_stage(runs, floors, tolerance, index, [OracleCheck("oracle", result.oracle.outputs, floors)]
                          * len(runs), memo=memo) for index, result in enumerate(oracles)]
    return floors, judged


PAIR_REFERENCES = ("earlier", "later")
"""Which run of a pair is its reference (`b`: its output order, the denominator of relative errors): the
earlier (export: the in-memory model, run first) or the later (`compare A B`: B, as numpy's
assert_allclose(actual, desired))."""


@dataclass(frozen=True)
class OracleCheck:
    """A run's float64 oracle on one input: the name the report gives it, its outputs, the floors it judges on."""

    label: str
    outputs: dict[str, np.ndarray]
    floors: Mapping[str, NoiseFloor]


def judge_stage(runs: Sequence[RunResult], floors: Mapping[str, NoiseFloor], tolerance: Tolerance, index: int = 0,
                oracles: Sequence[OracleCheck | None] = (), reference: str = "earlier",
                shared_only: bool = False, memo: dict[tuple, PairResult] | None = None) -> list[PairResult]:
    """On input `index`: every pair of runs on `floors` (the model's own, pooled over inputs, or in a comparison
    both sides' larger), then each run against its oracle (`oracles`, one per run; None or no outputs: none made)
    on that oracle's floors. Every output of either side is judged: one missing on the other side fails, unless
    `shared_only` (two different models, `compare A B`: judged on the outputs both have, the seed question's
    trunk vs body); a run against its own oracle is always judged on every output. `memo` (one per cell: the
    same floors and tolerance) keeps each comparison by input, labels and the very outputs compared (alive as long
    as the cell), and gives back any made before: the export judges the finished runs while it waits for a
    background file."""
    from verify.judge.compare import compare_outputs

    if reference not in PAIR_REFERENCES:
        raise ValueError(f"reference must be one of {PAIR_REFERENCES}, not {reference!r}")
    memo = {} if memo is None else memo
    pairs = []
    for i, first in enumerate(runs):
        for second in runs[i + 1:]:
            actual, desired = (second, first) if reference == "earlier" else (first, second)
            key = (index, "pair", actual.label, desired.label, id(actual.outputs[index]), id(desired.outputs[index]))
            if key not in memo:
                memo[key] = compare_outputs(actual.label, actual.outputs[index], desired.label,
                                            desired.outputs[index], tolerance, floors, require_all=not shared_only)
            pairs.append(memo[key])
    for run, check in zip(runs, oracles):
        if check is not None and check.outputs:
            key = (index, "oracle", run.label, check.label, id(run.outputs[index]), id(check.outputs))
            if key not in memo:
                memo[key] = compare_outputs(run.label, run.outputs[index], check.label, check.outputs, tolerance,
                                            check.floors, kind="oracle", require_all=True)
            pairs.append(memo[key])
    return pairs


def side_float32(artifact: Artifact, feeds: Sequence[dict[str, np.ndarray]], run: RunResult
                 ) -> list[dict[str, np.ndarray] | None]:
    """One side's float32 reference on each feed, as `side_oracles` measures its floor from it: the side's own run
    where that is its format's own runtime at its default settings; else, for a user's model (whose floor's float32
    runs are held to its call check: `held_to_calls`), that runtime's run here; else None (the oracle runs it)."""
    from verify.runtimes import default_runtime, make_runtime

    if run.label == default_runtime(artifact.format):
        return list(run.outputs)
    if getattr(artifact.built, "float64_calls", None) is None:
        return [None] * len(feeds)
    loaded = make_runtime(default_runtime(artifact.format)).load(artifact)
    return [loaded.run(feed) for feed in feeds]


def side_oracles(artifact: Artifact, feeds: Sequence[dict[str, np.ndarray]], run: RunResult,
                 settings: RunSettings, float32: Sequence[dict[str, np.ndarray] | None] | None = None,
                 inductor: bool = False) -> list[Oracle]:
    """One side of a comparison, on every feed: its float64 oracle where a runtime runs its format in float64, else
    (an ONNX file) the spread of its runtime's settings; the side's own run is its float32 reference only when it
    is the format's own runtime at its default settings (oracle_stage's rule: the label names any other device,
    precision or option), so a spread counts every level once, the default among them. `float32`: that reference
    already run (`side_float32`). `inductor`: the other side is Inductor's compiled code (`compiled_by_inductor`)."""
    from verify.judge.oracle import oracle_or_spread

    float32 = side_float32(artifact, feeds, run) if float32 is None else float32
    return [without_float64(artifact.built, settings)
            or oracle_or_spread(artifact, feed, float32[index], settings.runtime, inductor)
            for index, feed in enumerate(feeds)]


def every_input_finite(runs: Mapping[str, RunResult], build: BuildResult) -> bool:
    """Whether some run is finite on every input: `require_some_finite_run` cannot then refuse any, so the oracle
    may be measured before the other runs."""
    import numpy as np

    return bool(runs) and all(any(all(np.isfinite(v).all() for v in run.outputs[index].values())
                                 for run in runs.values()) for index in range(len(build.named)))


def require_some_finite_run(runs: list[dict], label: str) -> None:
    """When every run gives NaN/Inf on an input, the input is to blame (its scale overflows float32),
    not the models: a usage error, not a disagreement. Some runs finite and others not is a finding."""
    import numpy as np

    if runs and all(any(not np.isfinite(v).all() for v in run["outputs"].values()) for run in runs):
        run = runs[0]
        name, values = next((n, v) for n, v in run["outputs"].items() if not np.isfinite(v).all())
        raise UsageError(f"Input {label} drives every run to NaN/Inf ({int((~np.isfinite(values)).sum())} in "
                         f"{name} on {run['label']}); pass an input of ordinary scale, e.g. normalised images")


def worst_over_inputs(per_input: list[list[PairResult]], named: Sequence[NamedInput],
                      report: Report) -> list[PairResult]:
    """Each pair as judged on its worst input (a failure first, then the largest ratio); which input
    that was goes into the report when there are several."""
    worst = []
    for results in zip(*per_input):
        index = max(range(len(results)), key=lambda i: _badness(results[i]))
        worst.append(results[index])
        if len(named) > 1:
            report.input.setdefault("worst_input", {})[f"{results[index].a} vs {results[index].b}"] = \
                named[index].label
    return worst


def _badness(pair: PairResult) -> tuple[bool, float, float]:
    worst = pair.worst if pair.outputs else None
    return (not pair.passed, (worst.ratio or 0.0) if worst else 0.0, (worst.max_abs or 0.0) if worst else 0.0)


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


_CELL_LOCK = threading.RLock()
"""One cell at a time per process: a cell sets and restores torch's process-wide state (threads, RNG), so cells
started from several threads of a library caller run one after the other, not interleaved."""


@contextlib.contextmanager
def cell_context(request: CellRequest) -> Iterator[BackgroundExport | None]:
    """The background export's child (where one will run; pass it to build_stage) started before this process
    first imports torch, so that the child's imports (~3 s) overlap this process's as well as its build: the
    model reaches the child sooner. Then torch's state is isolated for the cell (`isolated_torch_state`) and the
    child given its core. The child is stopped if the cell fails. Cells in other threads wait (`_CELL_LOCK`)."""
    with _CELL_LOCK:
        child = background_child(request, take_core=False)
        try:
            with isolated_torch_state():
                if child is not None:
                    child.take_core()
                yield child
        except BaseException:
            if child is not None:
                child.cancel()
            raise


def run_cell(request: CellRequest, folder: Path, cache: Cache | None = None, progress: Progress | None = None,
             plan: CellPlan | None = None) -> CellOutcome:
    """Build, export into `folder`, run every runtime on every input, measure the oracle, judge: the Report
    of `verify export` (its `artifacts` left for the caller, who decides where the folder ends up)."""
    plan = plan or plan_cell(request)
    with cell_context(request) as child:
        build = build_stage(request, plan, cache, progress, child)
        return finish_cell(request, plan, build, folder, cache, progress)


def finish_cell(request: CellRequest, plan: CellPlan, build: BuildResult, folder: Path, cache: Cache | None = None,
                progress: Progress | None = None) -> CellOutcome:
    """The stages after the build: export each format into `folder`, run each runtime on every input,
    the oracle and the judging per input, each pair reported on its worst input. Runtimes whose file is still
    exporting in the background run last, after the oracle (the report lists the runs in the plan's order)."""
    import torch

    from exporter.formats import ExportContext, get_format
    from verify.judge.file_floor import NO_FILE_FLOOR
    from verify.judge.notes import explain_pairs
    from verify.judge.oracle import pooled_source
    from verify.pipeline.overlap import ArtifactsInFlight
    from verify.pipeline.preload import Preloads
    from verify.report import Report, RunRecord
    from verify.runtimes import runtime_class
    from verify.settings import input_dict, settings_dict

    progress = progress or NullProgress()
    spec, settings, export = request.spec, request.settings, request.export
    report = Report("export", settings_dict(settings, spec=str(spec), export=export.to_dict(),
                                             runtimes=list(plan.runtimes)), input_dict(build.named, settings))
    statuses: dict[str, str] = {"weights": build.cache}
    eager, feeds = build.eager, build.feeds
    context = ExportContext(build.built, torch.from_numpy(build.named[0].array), eager.meta, dynamic=export.dynamic,
                            shapes=input_shapes(build.named))
    export_cache = cache if spec.registered else None  # the user's code may change under the same name
    artifacts = ArtifactsInFlight({eager.format: eager})  # a background export is waited for when first run
    stores: list[threading.Thread] = []  # cache stores of the background files, joined before the outcome
    child = build.child or background_child(request)
    taken: tuple[str, ...] = ()
    if child is not None:  # started first, so the other formats' work overlaps it
        with progress.step("Exporting " + ", ".join(n for n in export.formats if get_format(n).overlaps
                                                    or get_format(n).rides_along) + " in the background"):
            taken = start_export_stage(context, export, folder, export_cache, artifacts, statuses, child, stores)
    for fmt in [name for name in export.formats if name not in taken]:
        takes = get_format(fmt).takes
        with progress.step(f"Exporting {fmt}" + (f" ({takes})" if takes else "")):
            exported = export_stage(context, fmt, export, folder, export_cache)
        artifacts[fmt] = exported.artifact
        statuses[f"export:{fmt}"] = exported.cache
    by_name: dict[str, RunResult] = {}
    oracles: list[OracleResult] | None = None
    preloads = Preloads(settings.runtime)

    def start_loads() -> list[str]:
        """Collect the files the child has finished and start the loads that may run now; the runtimes held."""
        artifacts.collect_ready()
        ready = [n for n in plan.runtimes if n not in by_name and not artifacts.in_flight(plan.formats[n])]
        held = [n for n in ready if preloads.wants(n)]  # loaded in a thread once no torch module runs beside it
        if not all(n in held or runtime_class(n).runs_natively for n in ready):
            return held
        for name in held:
            preloads.start(name, artifacts[plan.formats[name]])
        return []

    memo: dict[tuple, PairResult] = {}  # comparisons made while waiting, taken by the judging below
    inductor = compiled_by_inductor(plan.formats.values())  # every pair's floors model Inductor's order then
    judged_runs: set[str] = set()
    while len(by_name) < len(plan.runtimes):  # a runtime whose file is there (and loaded) first, in the plan's order
        held = start_loads()
        left = [name for name in plan.runtimes if name not in by_name]
        busy = {n for n in left if artifacts.in_flight(plan.formats[n]) or preloads.loading(n) or n in held}
        name = next((n for n in left if n not in busy), left[0])
        if oracles is not None and artifacts.in_flight(plan.formats[name]) and not set(by_name) <= judged_runs:
            # this process would only wait for the background file: judge the finished runs meanwhile
            judged_runs = set(by_name)
            pooled_judge_stage([by_name[n] for n in plan.runtimes if n in by_name], oracles, settings.tolerance, memo)
        if oracles is None and name in busy and every_input_finite(by_name, build):
            # while a background export or load finishes; a file that arrives meanwhile starts loading at once
            with progress.step("Running the float64 oracle"):
                oracles = oracles_stage(eager, feeds, list(by_name.values()), settings.runtime, build.no_float64,
                                        spec.registered, between=start_loads, inductor=inductor)
            continue
        with progress.step(f"Running {runtime_label(name, settings.runtime)}"):
            artifact = artifacts[plan.formats[name]]
            by_name[name] = run_stage(name, artifact, feeds, settings.runtime, preloads.take(name),
                                      keeps_module(name, artifact, settings, request.layers),
                                      second_feed(artifact, build.named[0].array, export.dynamic))
    runs = [by_name[name] for name in plan.runtimes]
    report.runs = [RunRecord(run.label, run.artifact, run.seconds) for run in runs]
    if oracles is None:
        with progress.step("Running the float64 oracle"):
            for index, item in enumerate(build.named):
                require_some_finite_run([run.on(index) for run in runs], item.label)
            oracles = oracles_stage(eager, feeds, runs, settings.runtime, build.no_float64, spec.registered,
                                    inductor=inductor)
    floors, judged = pooled_judge_stage(runs, oracles, settings.tolerance, memo)
    if settings.input_file is not None and build.no_float64 is None:  # seeded inputs are normal draws: they reach it
        from verify.judge.oracle import pooled_floors
        from verify.judge.reach import refuse_unreached

        with progress.step("Checking that the inputs reach the model's outputs"):
            refuse_unreached(eager, feeds, [o.oracle.outputs for o in oracles],
                             pooled_floors([o.oracle.noise for o in oracles]), settings.tolerance,
                             [item.label for item in build.named])
    first = oracles[0]
    report.floors, report.floor_source = floors, pooled_source(first.oracle.source, len(oracles))
    layer_notes: list[str] = []
    if request.layers:
        layer_files = [artifacts[fmt] for fmt in export.formats if fmt != eager.format]
        report.layers, layer_notes = layers_stage(build, layer_files, settings, progress, runs)
        if settings.layers is None:  # by default, not asked for: what it cannot judge is a note
            from verify.judge.layers import best_effort

            report.layers, unjudged = best_effort(report.layers)
            layer_notes += unjudged
        report.layer_verdict = layer_verdict(settings.layers is not None, report.layers, layer_files)
    files, unchecked = file_floor_stage(request, plan, build, runs, artifacts, progress,
                                        [o.oracle.outputs for o in oracles], [o.oracle.summed for o in oracles],
                                        context)
    agree = all(pair.passed for pairs in judged for pair in pairs)  # guard 3 guards a pass (a failure stands)
    report.problems, report.trust = trust_problems(runs, oracles, build, settings, files, unchecked, agree)
    from verify.judge.layers import unreached

    report.problems = unreached(settings.layers is True, report.layers, report.problems)
    shape_notes: list[str] = []
    if agree and not report.problems and any(run.second is not None for run in runs):  # a failure stands as it is
        with progress.step("Running each file at a second shape inside its dynamic axes"):
            report.problems, shape_notes = second_shape_stage(runs, build, settings, artifacts, plan.formats)
        shape_notes += [SECOND_SHAPE_UNJUDGED] if build.no_float64 is not None else []
        recorded_calls(report.trust, build.built)
    report.pairs = worst_over_inputs(judged, build.named, report)
    report.notes = explain_pairs(report) + ([build.no_float64.source] if build.no_float64 else []) \
        + ([NO_FILE_FLOOR] if unchecked is None else []) + layer_notes + shape_notes \
        + bounds_notes(artifacts.values()) + cached_file_notes(report, runs, plan.formats, statuses, export_cache) \
        + constant_output_notes([o.oracle.outputs for o in oracles]) + [note for run in runs for note in run.notes]
    for thread in stores:  # the files stay where the stores read them until the outcome is returned
        thread.join()
    return CellOutcome(report, build, artifacts, feeds[0], first, statuses, list(oracles))


def cached_file_notes(report: Report, runs: Iterable[RunResult], formats: Mapping[str, str],
                      statuses: Mapping[str, str], cache: Cache | None) -> list[str]:
    """A note for each file taken from the cache whose run failed a pair (newuser 48b): the table alone named a
    reduced precision, never that this run did not export the file, nor how to tell a wrong cached file apart."""
    failed = {name for pair in report.pairs if not pair.passed for name in (pair.a, pair.b)}
    failed |= {Path(isolation.candidate).name for isolation in report.layers or [] if isolation.exit_code}
    return [f"{Path(run.artifact).name} ({run.label}) was taken from the cache ({cache.root}), not exported by this "
            "run: export it again with --no-cache; if that passes, the cache held a wrong file "
            "(`verify cache clear`, and find out who can write that folder)"
            for run in runs if cache is not None and failed & {run.label, Path(run.artifact).name}
            and statuses.get(f"export:{formats.get(run.runtime)}") == HIT]


def constant_output_notes(float64: Sequence[Mapping[str, np.ndarray]]) -> list[str]:
    """A note where several inputs gave the model the same float64 outputs, bit for bit: the outputs do not depend on
    the input, so the verdict says only that the files compute that same constant (hunt 38: a model returning a
    buffer plus 0 x its input passed with no word of it, 0.0x its floor). [] with one input or outputs that move."""
    import numpy as np

    if len(float64) < 2 or not float64[0]:
        return []
    first = float64[0]
    if all(set(other) == set(first) and all(np.array_equal(other[name], first[name], equal_nan=True)
                                            for name in first) for other in float64[1:]):
        return [f"every one of the {len(float64)} inputs gave the model the same outputs ({', '.join(first)}), bit for "
                "bit: they do not depend on the input, and the verdict says only that every file computes that same "
                "constant; if the model should read its input, check its forward"]
    return []


def bounds_notes(artifacts: Iterable[Artifact]) -> list[str]:
    """A note for each file whose dynamic axes torch.export bounded (ArtifactMeta.bounded_axes): up to a size (export
    at the largest size deployed), or from a size above its own least (hunt 20b: `y if x.shape[-1] >= 16 else -y`
    exported at 32 px with exit 0, and the ONNX file computed y at 8 px where the model computes -y)."""
    notes = []
    for a in artifacts:
        bounds = a.meta.bounded_axes() if a.path is not None else ""
        if not bounds:
            continue
        advice = (["export at the largest size you deploy"] if a.meta.most_bounded() else []) \
            + (["inputs below a least size were not verified (a .pt2 refuses them, an ONNX file does not check "
                "them): deploy inputs of at least that size"] if a.meta.least_bounded() else [])
        notes.append(f"{a.path.name} accepts {bounds} only: torch.export bounded its dynamic axes tracing the "
                     f"{'x'.join(map(str, a.meta.input_shape))} input; {'; '.join(advice)}")
    return notes


def wants_layers(settings: RunSettings) -> bool:
    """Whether `verify export` runs the layer verdict when neither --layers nor --no-layers is given: judged as the
    layer verdict was calibrated (on the CPU in float32, every runtime option at its default, the auto tolerance:
    bench/calibrate_auto.py --layers, separation 10.7 where the outputs reach 2), unless $BACKBONE_VERIFY_LAYERS is 0.
    A registered backbone, and since sweep 21c a user's model (--model) too: 165 files of 17 torchvision architectures,
    their trunks, a pooled head, trained-like statistics, at 64 and 32 px, both ONNX exporters, none over 3.22x its
    own floor; where a random head made the outputs constant (vit_b_16's zero head) it was the only evidence."""
    from verify.judge.layers import layers_by_default
    from verify.runtimes import RuntimeOptions

    return settings.runtime == RuntimeOptions() and settings.tolerance.mode == "auto" and layers_by_default()


def layers_stage(build: BuildResult, files: Sequence[Artifact], settings: RunSettings, progress: Progress,
                 runs: Sequence[RunResult] = ()) -> tuple[list[Isolation], list[str]]:
    """The layer verdict (`--layers`, verify/explain/rerun.py layer_checks): every layer of each exported file
    re-run alone on the model's float64 values for its inputs (the first input), judged on its own floor. Each file
    is named as in the folder (not by the staging folder it was run from). A file's torch module is the one its run
    kept (`runs`, see `keeps_module`) where there is one, else loaded again."""
    from verify.explain.rerun import Candidate, isolation_factor, layer_checks

    kept = {run.artifact: run.module for run in runs if run.module is not None}
    with progress.step("Re-running every layer of the exported files on the model's float64 inputs"):
        return layer_checks(build.eager, [Candidate(f, file_label(f), kept.get(f.label)) for f in files],
                            build.named[0].array, isolation_factor(settings))


def layer_verdict(asked: bool, checks: Sequence[Any], files: Sequence[Artifact]) -> dict[str, Any]:
    """The report JSON's `layer_verdict`: run by default or asked for (--layers), the files with a layer judged, and
    the others. A check with no layer re-run judged nothing (review 19: `--layers` of a model whose ops are all
    functional, "no layer was re-run ... so its layers were not judged", was listed as judged)."""
    judged = [check.candidate for check in checks if check.layers]
    return {"run": "asked" if asked else "default", "judged": judged,
            "not_judged": [name for name in map(file_label, files) if name not in judged]}


def file_label(artifact: Artifact) -> str:
    """How the layer verdict names a file: as in the folder (not by the staging folder it was run from)."""
    return artifact.path.name if artifact.path is not None else artifact.label


def keeps_module(runtime: str, artifact: Artifact, settings: RunSettings, layers: bool) -> bool:
    """Whether a run keeps its loaded module for the layer verdict: the cell runs it (`layers`), and the run's module
    is the one the layer verdict would load (the file's float64-capable torch runtime, on the CPU in float32 with
    every option at its default); a run on CUDA or in another precision is not what the layers are re-run on."""
    from verify.explain.sides import file_runtime
    from verify.runtimes import RuntimeOptions

    return layers and settings.runtime == RuntimeOptions() and artifact.path is not None \
        and file_runtime(artifact) == runtime


def file_floor_stage(request: CellRequest, plan: CellPlan, build: BuildResult, runs: Sequence[RunResult],
                     artifacts: Mapping[str, Artifact], progress: Progress,
                     model_float64: Sequence[Mapping[str, np.ndarray]] | None = None,
                     summed: Sequence[Mapping[str, float]] = (), context: ExportContext | None = None
                     ) -> tuple[list[FileFloors], list[str] | None]:
    """Guard 3 (verify/judge/file_floor.py): where the model is the user's code and the auto tolerance judges on
    its floor, every exported file a runtime runs in float64 measures its own floor on every input; where none does
    (ONNX, AOTInductor), a witness of the model traced as those files were (`context`'s trace; verify/judge/
    file_witness.py) measures it instead. Returns the files' floors and the lines refusing files that could not run
    in float64; ([], []) where the guard does not apply, (witnesses, None) where it applies and no file can run in
    float64 (the report notes it where no witness could either)."""
    from exporter.errors import ArtifactError
    from verify.judge.file_floor import measure_file_floors, unrunnable_problem
    from verify.judge.file_witness import witness_floors, witness_traces
    from verify.runtimes import runtime_class

    settings = request.settings
    if request.spec.registered or build.no_float64 is not None or settings.tolerance.mode != "auto":
        return [], []
    eager = build.eager.format
    chosen = [run for run in runs if plan.formats[run.runtime] != eager and runtime_class(run.runtime).supports_float64]
    if not chosen:
        if context is None or not any(plan.formats[run.runtime] != eager for run in runs):
            return [], None if any(plan.formats[run.runtime] != eager for run in runs) else []
        with progress.step("Checking the model's floor against a private witness of its export's trace"):
            made = [artifacts[plan.formats[run.runtime]] for run in runs if plan.formats[run.runtime] != eager]
            witnesses, failures = witness_floors(context, witness_traces(context, made), build.feeds, model_float64,
                                                 summed)
        return (witnesses, [] if witnesses and not failures else None)
    same_runs = settings.runtime.device == "cpu" and settings.runtime.precision == "fp32"
    files, unrunnable = [], []
    with progress.step("Checking the model's floor against the exported files' own"):
        for run in chosen:
            artifact = artifacts[plan.formats[run.runtime]]
            label = f"{artifact.path.name if artifact.path is not None else artifact.label} in {run.label}"
            try:
                files.append(measure_file_floors(run.runtime, artifact, build.feeds,
                                                 run.outputs if same_runs else None, label, model_float64, summed))
            except ArtifactError as exc:
                unrunnable.append(unrunnable_problem(run.label, str(exc)))
    return files, unrunnable


def trust_problems(runs: list[RunResult], oracles: list[OracleResult], build: BuildResult,
                   settings: RunSettings, files: Sequence[FileFloors] = (), unrunnable: Sequence[str] | None = (),
                   agree: bool = True) -> tuple[list[str], dict[str, Any]]:
    """Why nothing can be judged (verify/judge/trust.py): a runtime that is not deterministic or changes its input,
    or (when the auto tolerance judges on it) a noise floor larger than rounding can produce for this model, or
    larger than an exported file's own (`files`, verify/judge/file_floor.py; `unrunnable`: files that could not
    measure theirs), checked on every input; and the evidence the guards decided on, for a stored result to be
    re-judged. Guard 3 guards a pass: where a pair already fails (`agree` False), the export is shown
    disagreeing (and its layer named), not refused as unjudged."""
    from verify.judge.file_floor import agreement_problems, model_floors
    from verify.judge.oracle import pooled_floors
    from verify.judge.trust import (
        accumulation_length,
        evidence,
        floor_problems,
        function_problems,
        function_record,
        likely_cause,
        repeat_problems,
    )

    model = getattr(build.built, "model", None)
    floors = pooled_floors([result.oracle.noise for result in oracles])  # every input is repeated: its allowance too
    checks = [run.repeat for run in runs if run.repeat is not None]
    bounded = build.no_float64 is None and model is not None
    k = accumulation_length(model, input_shape=build.named[0].array.shape) if bounded else None
    runtime = settings.runtime
    rounds_at = computes_in(runtime.precision, runtime.device, runtime.tf32)
    model_float32 = [model_floors(o.oracle) for o in oracles]  # guard 3 compares the held runs' float32 floors
    held_to_calls(build.built, build.feeds, [o.fp32 for o in oracles])  # the floor's float32 runs are the held ones
    calls = function_record(build.built)  # a user model's float64 runs held to its float32 calls (hunt 23a)
    record = evidence(checks, runtime.device, k, settings.tolerance.mode,
                      [(o.oracle.noise, o.oracle.outputs) for o in oracles], rounds_at, files, model_float32,
                      list(unrunnable or []), calls)
    cause = likely_cause(model) if model is not None else ""
    problems = repeat_problems(checks, runtime.device, floors, cause, rounds_at)
    if problems or settings.tolerance.mode != "auto":
        return problems, record
    # one file whose float64 run is the model's and whose floor agrees vouches for the floor every pair is judged on
    problems = (([] if files else list(unrunnable or [])) + agreement_problems(model_float32, files)) if agree else []
    if problems or k is None:
        return problems or function_problems(calls), record
    for result in oracles:
        found = floor_problems(result.oracle.noise, result.oracle.outputs, k)
        if found:
            return found, record
    # an oracle that is another function than the float32 model (hunt 23a): no floor measured against it is rounding
    return function_problems(calls), record


def held_to_calls(built: Any, feeds: Sequence[Mapping[str, np.ndarray]],
                  float32: Sequence[Mapping[str, np.ndarray] | None], where: Sequence[str] = ()) -> str | None:
    """A user model's float32 runs that floors are measured from (`float32`, one per feed: the eager runtime's CPU
    float32 outputs), each held to the run its call check watched on that input (exporter/call_watch.py
    `CallCheck.float32_difference`: bit for bit the float32 model run unwatched beside its watched run); the first
    that is not becomes the check's difference, which `function_problems` refuses and the evidence keeps. Hunt 25a: a
    model that counted its calls or read the stack (`verify.runtimes` on it, the watch not) gave the eager runtime's
    runs a float32-only term that lifted the floor, and a TorchScript file 0.1 % off exited 0 at 2.0x. `where`: what
    to call each feed (else "on input N"). Returns the difference found here (None: none, or no call check)."""
    check = getattr(built, "float64_calls", None)
    if check is None or check.difference is not None:
        return None
    for index, (feed, outputs) in enumerate(zip(feeds, float32, strict=True)):
        if outputs is None or len(feed) != 1:
            continue
        label = where[index] if index < len(where) else f"on input {index + 1}"
        found = check.float32_difference(next(iter(feed.values())), outputs, label)
        if found is not None:
            check.difference = found
            return found
    return None


def recorded_calls(trust: dict[str, Any] | None, built: Any) -> None:
    """`trust`'s record of a user model's call check (`float64_calls`, written by `trust_problems`) brought up to date
    after a later stage held another float32 run to it (`second_shape_stage`'s, hunt 25a). Review 22: the difference
    found at the second shape refused the run, but the record still said "differs: None", so a stored result (a
    matrix cell, a worker's report) whose problems list was emptied re-judged to agree: the evidence must carry every
    refusal it backs (verify/matrix/judging.py `judge_cell`)."""
    from verify.judge.trust import function_record

    if isinstance(trust, dict) and "float64_calls" in trust and getattr(built, "float64_calls", None) is not None:
        trust["float64_calls"] = [dict(call) for call in function_record(built)]


def request_dict(request: CellRequest) -> dict[str, Any]:
    """The request as plain data (what defines a cell; files named by path)."""
    from verify.cache import canonical

    return {"spec": canonical(request.spec), "settings": canonical(request.settings),
            "export": request.export.to_dict(), "runtimes": list(request.runtimes) if request.runtimes else None}


def request_content(request: CellRequest, plan: CellPlan) -> dict[str, Any] | None:
    """What determines a cell's result: the request with its input and weights file replaced by their
    content hashes, and the runtimes it resolved to. None when the weights cannot be pinned (a
    registered source read from elsewhere, e.g. the torch hub cache) or the model is the user's own code (it
    may change under the same name): such a result is not cached."""
    from verify.cache import file_sha256

    if not request.spec.registered:
        return None
    data = request_dict(request)
    data["runtimes"] = list(plan.runtimes)
    settings = dict(data["settings"])
    settings["input_file"] = None
    data["input"] = [{"shape": list(item.array.shape), "sha256": _bytes_sha(item.array)}
                     for item in plan.inputs_for()]  # content, not where the files are
    weights = request.settings.weights
    if weights not in PURE_WEIGHT_SOURCES:
        from exporter.weights import WEIGHT_SOURCES

        if weights in WEIGHT_SOURCES or not Path(weights).is_file():
            return None
        settings["weights"] = f"file sha256 {file_sha256(Path(weights))}"
    data["settings"] = settings
    return data


def compiled_by_inductor(formats: Iterable[str]) -> bool:
    """Whether a file of these formats is Inductor's compiled code (an AOTInductor package): the cell's floors then
    model Inductor's order too (verify/judge/graph_lift.py inductor_graph), for every pair of the cell."""
    from exporter.formats import get_format

    return any(get_format(fmt).compiled_by_inductor for fmt in formats)
