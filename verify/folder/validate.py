"""`verify artifact`: an export folder proves itself, and fails closed.

Integrity first: the manifest against its schema (exporter/manifest.py); the signature, when a public
key is given; every file in the folder listed (nothing extra, hidden or linked); each file's size and
sha256, its format from the registry and what the file itself records (opset, exporter, input, outputs,
model); the goldens' content; the noise floors re-derived from the goldens (never taken from the
manifest); the tolerance (a recorded one may tighten the verdict, never loosen it); the export's own
verdict. Only a folder that passed all of that has its artifacts run, each in every runtime that runs
it, on the golden input and at a second input shape. Whatever a folder holds, it fails its own checks;
the other folders are still checked.

The sha256 checks prove a folder consistent, not who made it: anyone who can write the folder can rewrite
the manifest to match. So a file whose loading can run code (a format with `executes_code_on_load`:
TorchScript, .pt2, AOTInductor) is loaded only from a folder whose signature verified with the key given,
or when the caller says so explicitly (`trust_unsigned_code`, `--trust-unsigned-code`); otherwise its load
check fails, naming both ways. ONNX files are data and are checked either way."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.artifacts import Artifact, ArtifactMeta
from exporter.errors import ArtifactError, SetupError, UsageError
from exporter.formats import get_format
from exporter.manifest import (
    EXTERNAL_DATA_FORMAT,
    GOLDENS_FORMAT,
    GOLDENS_NAME,
    AutoTolerance,
    ExternalDataFile,
    FileEntry,
    Manifest,
    load_manifest,
    read_golden_sets,
)
from verify.detect.folder import check_detector_folder
from verify.folder.checks import Check, CheckReport
from verify.folder.integrity import (
    FLOOR_RTOL,
    INTEGRITY,
    SIGN_HOW,  # noqa: F401 (part of this module's interface)
    UNSIGNED_CODE_OPTION,  # noqa: F401 (part of this module's interface)
    CheckedFolder,
    Skipped,  # noqa: F401 (part of this module's interface)
    check_bytes,
    check_folder,
    failure_reason,
    is_detector_folder,
    resolve_folder,
    run_check,
)
from verify.folder.layers import folder_layer_checks
from verify.folder.rebuild import REBUILD_ONLY, rebuild_backbone, rebuilt_reference
from verify.inputs import second_shape
from verify.judge.compare import AUTO_FACTOR, PairResult, Tolerance, compare_outputs
from verify.runtimes import RuntimeOptions, make_runtime, refuse_unused_options, runtimes_for
from verify.runtimes.torch_common import unjudged_methods_note

if TYPE_CHECKING:
    import numpy as np

@dataclass
class ArtifactFolder(CheckedFolder):
    manifest: Manifest
    recorded: dict[str, ArtifactMeta] = field(default_factory=dict)
    """What each verified model file records about itself (read back after its hash matched)."""
    goldens: dict[str, dict[str, np.ndarray]] | None = None
    """Read and checked: {'input': ..., 'float32': ..., 'float64': ...}, of the first stored input."""
    golden_sets: list[dict[str, dict[str, np.ndarray]]] = field(default_factory=list)
    """Every stored input's goldens, in order (the first is `goldens`): each file is judged on each (a `--rebuild`
    replaces them with its own)."""
    golden_labels: list[str] = field(default_factory=list)
    """What each of `golden_sets` is (the manifest's `goldens.inputs`; `the golden input` where it keeps one)."""
    floors: dict[str, Any] = field(default_factory=dict)
    """Re-derived from the goldens (float32 vs float64), never the manifest's: a NoiseFloor (per channel where
    the output has channels) per output."""
    tolerances: list[Tolerance] = field(default_factory=list)
    """Every tolerance a verdict must pass: auto (at most the default factor) first."""
    failed: set[str] = field(default_factory=set)
    """The files that failed a check of their own goldens (or to load and run): no other file's reference."""
    rebuilt: Artifact | None = None
    """The model the folder names, rebuilt here (`--rebuild`, verify/folder/rebuild.py), as an eager artifact:
    the layer verdict's float64 reference (verify/folder/layers.py); None when not rebuilt."""
    shape_references: dict[tuple[str, str, tuple[int, ...]], Any] = field(default_factory=dict)
    """(reference, runner, shape) -> the reference's float64 and float32 outputs at that second shape, or what its
    run raised: each reference is loaded and run once per check of the folder, whichever files it judges there (it
    was loaded twice for each: 6 of the 8 loads of a trusted check of a default folder)."""

    def artifact(self, name: str) -> Artifact:
        entry, spec = self.manifest.files[name], self.manifest.input
        meta = ArtifactMeta(input_name=spec.name, input_shape=list(spec.shape),
                            output_names=list(self.manifest.outputs), dynamic_axes=dict(spec.dynamic_axes),
                            spec=self.manifest.model.spec, exporter=getattr(entry, "exporter", None))
        return Artifact(entry.format, meta, path=self.verified[name])


def check_integrity(path: Path, report: CheckReport, verify_key: Path | None = None,
                    trust_unsigned_code: bool = False) -> ArtifactFolder | None:
    """Every folder-level check, added to `report`; the folder (with `sound` set, and whether its signature
    verified) unless its manifest could not be read at all."""
    content = [(f"{GOLDENS_NAME}: content", _goldens), ("noise floors", _floors), ("tolerance", _tolerance),
               ("export verdict", _export_verdict)]
    return check_folder(path, report, verify_key, trust_unsigned_code, load_manifest,
                        lambda m: f"schema {m.schema_version}, {m.model.spec}", ArtifactFolder, _file, content)


def _file(art: ArtifactFolder, name: str, entry: FileEntry) -> str:
    """A listed file: a regular file of the recorded size and sha256, and what its format says it is."""
    file = art.folder / name
    size = check_bytes(art.folder, name, entry)
    if isinstance(entry, ExternalDataFile):
        model = art.manifest.files[entry.of]
        if name not in {c.name for c in get_format(model.format).companion_files(art.folder / entry.of)}:
            raise ArtifactError(f"{name} is listed as external data of {entry.of}, which does not reference it")
    elif entry.format not in (GOLDENS_FORMAT, EXTERNAL_DATA_FORMAT):  # a model file (Manifest.model_files)
        return f"{size} bytes, sha256 ok, " + _model_file(art, name, entry, file)
    return f"{size} bytes, sha256 ok"


def _model_file(art: ArtifactFolder, name: str, entry: FileEntry, file: Path) -> str:
    """The file is of its recorded format and records what the manifest says (read back, nothing loaded)."""
    fmt = get_format(entry.format)
    if not fmt.claims(file):
        raise ArtifactError(f"{name} is not a {entry.format} file (by its name and content), as the manifest says")
    meta = fmt.read_meta(file)
    actual = fmt.manifest_fields(Artifact(fmt.name, meta, path=file))
    for key in fmt.manifest_field_types:
        if getattr(entry, key) != actual.get(key):
            raise ArtifactError(f"{name}: the manifest records {key} {getattr(entry, key)!r}, the file "
                                f"{actual.get(key)!r}")
    fmt.check_integrity(file, art.folder)
    for companion in fmt.companion_files(file):
        listed = art.manifest.files.get(companion.name)
        if companion.parent.resolve() != art.folder.resolve() or not isinstance(listed, ExternalDataFile) \
                or listed.of != name:
            raise ArtifactError(f"{name} references external data {companion.name} that the manifest does not "
                                "list as its external data")
        if companion.name not in art.verified:
            raise ArtifactError(f"{name}: its external data {companion.name} failed its own check")
    _same_record(art.manifest, name, meta)
    art.recorded[name] = meta
    return f"{entry.format}, its recorded metadata matches"


def _same_record(manifest: Manifest, name: str, meta: ArtifactMeta) -> None:
    """What the model file records about itself at export equals what the manifest says."""
    pairs = [("input name", meta.input_name, manifest.input.name),
             ("input shape", list(meta.input_shape), list(manifest.input.shape)),
             ("outputs", list(meta.output_names), list(manifest.outputs)),
             ("model", meta.spec, manifest.model.spec),
             ("weights", meta.weights, manifest.model.weights),
             ("weights sha256", meta.weights_sha256, manifest.model.weights_sha256)]
    if meta.dynamic_axes:  # formats that record no axes (TorchScript runs any shape) have none to compare
        pairs.append(("dynamic axes", dict(meta.dynamic_axes), dict(manifest.input.dynamic_axes)))
    for what, recorded, claimed in pairs:
        if recorded != claimed:
            raise ArtifactError(f"{name} records {what} {recorded!r}, the manifest {claimed!r}")


def _goldens(art: ArtifactFolder) -> str:
    """Exactly the arrays the manifest describes, for every input its goldens keep, of the right dtypes and shapes,
    all finite."""
    if GOLDENS_NAME not in art.verified:
        raise ArtifactError(f"{GOLDENS_NAME} failed its integrity check; nothing to judge against")
    layout = getattr(art.manifest, "goldens", None)  # a manifest's layout; absent from a bare record: one input
    count = layout.count if layout is not None else 1
    sets = read_golden_sets(art.verified[GOLDENS_NAME], count)
    stored = sum(1 for s in sets if s["input"])
    if count > 1 and stored != count:  # said first: not a missing float64 output of the inputs past the last
        raise ArtifactError(f"{GOLDENS_NAME} holds {stored} input{'s' if stored != 1 else ''} (input, input@k), the "
                            f"manifest's goldens.inputs names {count}")
    for group in ("float64", "folded"):  # the export keeps each for every input or for none
        if any(bool(s.get(group)) != bool(sets[0].get(group)) for s in sets):
            raise ArtifactError(f"{GOLDENS_NAME} holds {group} outputs for some of its inputs only")
    for index, goldens in enumerate(sets):
        _golden_set(art, goldens, f"@{index}" if index else "")
    art.goldens, art.golden_sets = sets[0], sets
    art.golden_labels = list((layout.inputs if layout is not None else None) or ["the golden input"])
    x = next(iter(sets[0]["input"].values()))
    what = f"{count} inputs" if count > 1 else "input"
    return (f"{what} {'x'.join(map(str, x.shape))} float32, {len(art.manifest.outputs)} outputs in float32 and "
            "float64, all finite")


def _golden_set(art: ArtifactFolder, goldens: dict[str, dict[str, np.ndarray]], at: str) -> None:
    """One stored input's arrays (`at`: how its keys are marked, `@k` for input k >= 1)."""
    import numpy as np

    spec, outputs = art.manifest.input, art.manifest.outputs
    if list(goldens["input"]) != [spec.name]:
        raise ArtifactError(f"{GOLDENS_NAME} holds inputs {[f'input{at}.{n}' for n in sorted(goldens['input'])]}, "
                            f"the manifest one named "
                            f"{spec.name!r}")
    x = goldens["input"][spec.name]
    if str(x.dtype) != spec.dtype or list(x.shape) != list(spec.shape):
        raise ArtifactError(f"{GOLDENS_NAME}: input{at}.{spec.name} is {x.dtype} {list(x.shape)}, the manifest records "
                            f"{spec.dtype} {list(spec.shape)}")
    no_oracle = not art.manifest.noise_floor  # your own model that cannot run in float64 (explicit tolerance)
    for kind, dtype in (("float32", np.float32), ("float64", np.float64)):
        if kind == "float64" and no_oracle and not goldens[kind]:
            continue
        if set(goldens[kind]) != set(outputs):
            raise ArtifactError(f"{GOLDENS_NAME} holds {kind}{at} outputs {sorted(goldens[kind])}, the manifest "
                                f"{sorted(outputs)}")
        for output, array in goldens[kind].items():
            # an index or a mask is kept as the runs returned it, the same dtype in both (review 24: a model returning
            # an argmax exported, exit 0, and its folder failed here); verify/judge/compare.py judges it exactly
            discrete = array.dtype.kind in "biu" and goldens["float32"][output].dtype == array.dtype and (
                not goldens["float64"] or goldens["float64"].get(output, array).dtype == array.dtype)
            if not (array.dtype == dtype or discrete) or array.size == 0 or array.ndim == 0 \
                    or array.shape[0] != x.shape[0]:
                raise ArtifactError(f"{GOLDENS_NAME}: {kind}{at}.{output} is {array.dtype} {list(array.shape)}; "
                                    f"expected non-empty {np.dtype(dtype)} (or one integer or boolean dtype in both) "
                                    f"with the input's batch of {x.shape[0]}")
    for output in outputs if goldens["float64"] else []:
        if goldens["float32"][output].shape != goldens["float64"][output].shape:
            raise ArtifactError(f"{GOLDENS_NAME}: float32{at}.{output} and float64{at}.{output} differ in shape")
    folded = goldens.get("folded") or {}
    if folded and (set(folded) != set(outputs) or any(
            folded[o].dtype != np.float32 or folded[o].shape != goldens["float32"][o].shape for o in outputs)):
        raise ArtifactError(f"{GOLDENS_NAME}: the folded{at} sample must hold every output as float32 of the goldens' "
                            "shapes, or be absent")
    for kind in ("input", "float32", "float64", "folded"):
        for key, array in goldens.get(kind, {}).items():
            bad = int((~np.isfinite(array)).sum())
            if bad:
                raise ArtifactError(f"{GOLDENS_NAME}: {kind}{at}.{key} holds {bad} NaN/Inf; goldens must be finite")


def _floors(art: ArtifactFolder) -> str:
    """The floors the verdicts use, measured from the goldens; the manifest's must be the same numbers."""
    import numpy as np

    from verify.judge.measure import measure_floors
    from verify.judge.oracle import pooled_floors
    from verify.judge.summation import lifted

    if art.goldens is None:
        raise ArtifactError(f"not derived: {GOLDENS_NAME} failed its checks")
    if not art.manifest.noise_floor and not art.goldens["float64"]:
        art.floors = {}
        return "none: the model has no float64 oracle, so its recorded explicit tolerance judges alone"
    # raised to the recorded summation floors of a user's few-value head, as the export's were (taken as the goldens)
    bounds = {name: np.asarray(bound) for name, bound in (art.manifest.summation_floor or {}).items()}
    # each stored input's floors, pooled as the export pooled them (per channel, the largest over the inputs)
    derived = pooled_floors([lifted(measure_floors(goldens["float32"], goldens["float64"],
                                                   samples=[goldens["folded"]] if goldens.get("folded") else []),
                                    bounds) for goldens in art.golden_sets])
    for output in art.manifest.outputs:
        recorded = art.manifest.noise_floor[output]
        measured = derived[output].value if output in derived else None
        if measured is None or not math.isclose(recorded, measured, rel_tol=FLOOR_RTOL, abs_tol=0.0):
            raise ArtifactError(f"noise_floor[{output!r}] is {recorded:.4g} in the manifest, but its goldens give "
                                f"{measured if measured is None else format(measured, '.4g')} (float32 vs float64); "
                                "a floor is re-derived, never taken on trust")
    from verify.judge.oracle import channel_floors_sha256

    if art.manifest.channel_floors_sha256 is None:
        raise ArtifactError("the manifest records no channel_floors_sha256; re-export the folder")
    if art.manifest.channel_floors_sha256 != channel_floors_sha256(derived):
        raise ArtifactError("the per-channel floors re-derived from the goldens are not the ones the export "
                            "recorded (channel_floors_sha256); a floor is re-derived, never taken on trust")
    art.floors = derived
    over = f", each channel's largest over its {len(art.golden_sets)} inputs" if len(art.golden_sets) > 1 else ""
    return f"re-derived from the goldens (float32 vs float64{over}); the manifest records the same"


def _tolerance(art: ArtifactFolder) -> str:
    """Auto at the default factor always applies; a recorded factor below it tightens; a recorded
    decimal/allclose tolerance applies as well; a recorded factor above the default is refused."""
    recorded = art.manifest.tolerance
    if isinstance(recorded, AutoTolerance):
        if recorded.factor > AUTO_FACTOR:
            raise ArtifactError(f"tolerance.factor {recorded.factor:g} is above the default {AUTO_FACTOR:g}: a "
                                "manifest may tighten a verdict, never loosen it (re-export without --factor)")
        art.tolerances = [Tolerance(factor=recorded.factor)]
        return art.tolerances[0].describe() + (" (the default)" if recorded.factor == AUTO_FACTOR else
                                               f" (tighter than the default {AUTO_FACTOR:g})")
    extra = Tolerance(**recorded.model_dump())
    if not art.manifest.noise_floor and art.goldens is not None and not art.goldens["float64"]:
        # no float64 oracle (your own model; the goldens hold no float64 group): no floor for auto
        art.tolerances = [extra]
        return f"{extra.describe()} (no float64 oracle, so no auto floor)"
    art.tolerances = [Tolerance(), extra]
    return f"{extra.describe()}, and auto at the default factor {AUTO_FACTOR:g} as well"


def _export_verdict(art: ArtifactFolder) -> str:
    verdicts = art.manifest.verdicts
    if not art.manifest.passed:
        failed = [f"{v.a} vs {v.b}" for v in verdicts if not v.passed]
        raise ArtifactError(f"the export itself recorded {len(failed)} of {len(verdicts)} pairs disagreeing "
                            f"({', '.join(failed[:3])}{', …' if len(failed) > 3 else ''}); a folder whose export "
                            "disagreed never passes")
    return f"the export's {len(verdicts)} pairs agreed"


def judge(art: ArtifactFolder, a_label: str, outputs: dict, b_label: str, reference: dict,
          floors: dict[str, Any] | None = None) -> tuple[PairResult, Tolerance]:
    """The pair under every tolerance the folder applies: the first that fails decides, else the first."""
    results = [(compare_outputs(a_label, outputs, b_label, reference, tolerance,
                                art.floors if floors is None else floors, require_all=True), tolerance)
               for tolerance in art.tolerances]
    return next(((p, t) for p, t in results if not p.passed), results[0])


def judge_inputs(art: ArtifactFolder, a_label: str, outputs: Sequence[dict], b_label: str,
                 kind: str) -> tuple[PairResult, Tolerance, dict[str, Any]]:
    """A file's outputs on each stored input (`outputs`, in the goldens' order) judged against that input's `kind`
    goldens on the pooled floors: the pair on its worst input (a failure first, then the largest ratio), its
    tolerance, and its details, naming that input where the goldens keep several."""
    sets = art.golden_sets or [art.goldens or {}]
    judged = [judge(art, a_label, out, b_label, goldens[kind]) for out, goldens in zip(outputs, sets, strict=True)]
    index = max(range(len(judged)), key=lambda i: _badness(judged[i][0]))
    pair, tolerance = judged[index]
    details = pair.to_dict()
    if len(judged) > 1:
        labels = art.golden_labels or [f"input {i}" for i in range(len(judged))]
        details.update(input=labels[index], inputs=len(judged),
                       failed_inputs=[labels[i] for i, (p, _) in enumerate(judged) if not p.passed],
                       ratios=[{o.name: o.ratio for o in p.outputs} for p, _ in judged])  # per input, per output
    return pair, tolerance, details


def _badness(pair: PairResult) -> tuple[bool, float, float]:
    worst = pair.worst if pair.outputs else None
    return (not pair.passed, (worst.ratio or 0.0) if worst else 0.0, (worst.max_abs or 0.0) if worst else 0.0)


def worst_input_note(details: dict[str, Any]) -> str:
    """`; worst of 8 inputs: normal1, seed 0` (failing on 3) where the goldens keep several."""
    if "inputs" not in details:
        return ""
    failed = len(details["failed_inputs"])
    return f"; worst of {details['inputs']} inputs: {details['input']}" + (f" (fails on {failed})" if failed else "")


def golden_checks(art: ArtifactFolder, options: RuntimeOptions, report: CheckReport,
                  runtimes: Sequence[str] | None = None) -> None:
    """Each verified artifact in each runtime that runs it, against the goldens and at a second shape;
    nothing is loaded from a folder that failed a folder-level check. The second shapes are judged after every
    file's goldens: a file that failed its own is nobody's reference there (hunt 30)."""
    later: list[Callable[[], None]] = []
    for name, entry in art.manifest.model_files().items():
        names = list(runtimes or runtimes_for(entry.format))
        if not names:
            report.add(Check(art.label, INTEGRITY, f"{name}: runtimes", False,
                             f"no registered runtime runs {entry.format}; nothing would check it"))
        for runtime_name in names:
            if not art.sound or name not in art.verified:
                why = art.unsound_because if not art.sound else "it failed its integrity check"
                report.add(Check(art.label, runtime_name, f"{name}: load", False, f"not loaded: {why}"))
                continue
            if not art.may_load(name):
                report.add(Check(art.label, runtime_name, f"{name}: load", False, art.refusal(name)))
                continue
            before = len(report.checks)
            try:
                later.extend(_run_goldens(art, name, runtime_name, options, report))
            except SetupError:
                raise
            except Exception as exc:  # whatever the file does in a runtime fails this check only
                del report.checks[before:]
                report.add(Check(art.label, runtime_name, f"{name}: load and run", False, failure_reason(exc)))
            if not all(check.passed or check.skipped for check in report.checks[before:]):
                art.failed.add(name)
    for second in later:
        second()


def _run_goldens(art: ArtifactFolder, name: str, runtime_name: str, options: RuntimeOptions,
                 report: CheckReport) -> list[Callable[[], None]]:
    """The file's goldens checks, added; its second-shape check, returned to run once every file's goldens are in."""
    assert art.goldens is not None
    label = art.label
    start = time.perf_counter()
    runtime = make_runtime(runtime_name, options).load(art.artifact(name))
    sets = art.golden_sets or [art.goldens]
    outputs = [runtime.run(goldens["input"]) for goldens in sets]
    on = f" on {len(sets)} inputs" if len(sets) > 1 else ""
    report.add(Check(label, runtime.label, f"{name}: load and run", True,
                     f"{time.perf_counter() - start:.2f}s{on}", seconds=time.perf_counter() - start))
    for note in unjudged_methods_note(name, getattr(runtime, "module", None)):  # a note, as a layer note is
        report.add(Check(label, runtime.label, f"{name}: other methods", True, note, skipped=True))
    for kind in ("float32", "float64"):
        if kind == "float64" and not art.goldens[kind]:  # a model with no float64 oracle (and no floor)
            report.add(Check(label, runtime.label, f"{name}: goldens {kind}", False,
                             "none recorded: the model cannot run in float64", skipped=True))
            continue
        pair, tolerance, details = judge_inputs(art, runtime.label, outputs, f"golden {kind}", kind)
        report.add(Check(label, runtime.label, f"{name}: goldens {kind}", pair.passed,
                         _pair_message(pair, tolerance) + worst_input_note(details), details=details))
    return second_shape_check(art, runtime, name, report)


def second_shape_check(art: ArtifactFolder, runtime, name: str, report: CheckReport) -> list[Callable[[], None]]:
    """The loaded file `name`'s check at a second shape inside its dynamic axes, returned to run once every file's
    goldens are in (none for a static folder; a skipped check where its ranges take only the golden shape)."""
    if not art.manifest.input.dynamic_axes:
        return []
    ranges = art.recorded[name].dynamic_ranges if name in art.recorded else {}
    shape = second_shape(art.manifest.input.shape, art.manifest.input.dynamic_axes, ranges)
    if shape is None:
        report.add(Check(art.label, runtime.label, f"{name}: second shape", False,
                         f"accepts only the golden shape ({art.recorded[name].bounded_axes()})", skipped=True))
        return []
    title = f"{name}: shape {'x'.join(map(str, shape))}"
    judged = lambda: _second_shape(art, runtime, shape, name)  # noqa: E731
    return [lambda: report.add(run_check(art.label, runtime.label, title, judged))]



def _pair_message(pair: PairResult, tolerance: Tolerance) -> str:
    worst = pair.worst
    ratio = f", {worst.ratio:.1f}x floor" if worst.ratio is not None else ""
    if pair.passed:
        return f"worst {worst.name}: max abs {worst.max_abs:.2e}{ratio}"
    return (f"{worst.name}: {worst.reason}, max abs {worst.max_abs if worst.max_abs is not None else 0:.2e}"
            f"{ratio} ({tolerance.describe()})")


def _second_shape(art: ArtifactFolder, runtime, shape: tuple[int, ...], name: str) -> str:
    """At a shape with no goldens, judge against a float64 run of the rebuilt model (`--rebuild`), else of another
    verified artifact that a runtime can run in float64 and whose recorded ranges take `shape`, when the folder has one
    (floors measured there, auto tolerance); else check that the output shapes follow. A folder file as the reference
    vouches only for the files' agreement: one traced at the example's size may carry that size inside it as every
    file of the folder does. Never the file `name` itself: against its own float64 run a file judges only its float32
    rounding (hunt 30: a TorchScript file with a layer4 conv dilated, invisible at 32 px, passed at 64 px that way)."""
    from verify.inputs import SECOND_SHAPE_SEED, make_input
    from verify.judge.measure import measure_floors
    from verify.judge.summation import lifted

    x = {art.manifest.input.name: make_input(shape, SECOND_SHAPE_SEED)}
    outputs = runtime.run(x)
    bad = [k for k, v in outputs.items() if v.ndim == 0 or v.shape[0] != shape[0] or not v.size]
    if bad:
        raise ArtifactError(f"outputs {bad} do not follow the batch of {shape[0]}")
    exact = [(n, names[0]) for n, e in art.manifest.model_files().items()
             if n != name and n not in art.failed and n in art.verified and art.may_load(n)
             and _takes(art.recorded.get(n), shape)
             and (names := runtimes_for(e.format, float64=True))]
    if art.rebuilt is not None:  # the model the folder names, built here: not a file whose own size may be baked in
        exact = [("the rebuilt model", runtimes_for(art.rebuilt.format, float64=True)[0])]
    for reference, runner in exact:
        try:
            fp64, fp32 = _reference_runs(art, reference, runner, shape, x)
            break
        except SetupError:
            raise
        except Exception:  # a file that cannot run fails its own checks; it must not fail the file judged here
            if art.rebuilt is not None:
                raise
    else:
        return ("runs; output shapes follow the input (no other file here that passed its own goldens runs in float64 "
                "at this shape; --rebuild judges it against the model where it can be rebuilt)")
    auto = art.tolerances[0]  # auto, at most the default factor: the floors here are measured, not recorded
    floors = lifted(measure_floors(fp32, fp64), _second_summation_floors(art, fp64))
    pair = compare_outputs(runtime.label, outputs, f"{reference} float64", fp64, auto,
                           {name: floor.value for name, floor in floors.items()}, require_all=True)
    worst = pair.worst
    message = f"vs {reference} in float64: worst {worst.name} {worst.ratio or 0:.1f}x floor"
    if not pair.passed:
        raise ArtifactError(f"{message} ({auto.describe()})")
    return message


def _reference_runs(art: ArtifactFolder, reference: str, runner: str, shape: tuple[int, ...],
                    x: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """`reference` (a folder file, or the rebuilt model) run by `runner` on `x` in float64 and in float32, once per
    check of the folder (`ArtifactFolder.shape_references`): what its run raised is raised again for the next file."""
    key = (reference, runner, shape)
    if key not in art.shape_references:
        source = art.rebuilt if art.rebuilt is not None else art.artifact(reference)
        try:
            art.shape_references[key] = (make_runtime(runner, RuntimeOptions(dtype="float64")).load(source).run(x),
                                         make_runtime(runner).load(source).run(x))
        except Exception as exc:  # noqa: BLE001 - kept, and raised to each file this reference would judge
            art.shape_references[key] = exc
    found = art.shape_references[key]
    if isinstance(found, BaseException):
        raise found
    return found


def _takes(meta: ArtifactMeta | None, shape: tuple[int, ...]) -> bool:
    """Whether a file's recorded dynamic ranges take `shape` (torch.export's least, 2, read as 1 as `second_shape`
    reads it): a bounded reference refuses a shape another file accepts."""
    from exporter.artifacts import LEAST_DYNAMIC_SIZE

    for axis, (least, greatest) in (meta.dynamic_ranges if meta is not None else {}).items():
        size = shape[int(axis)]
        if (greatest is not None and size > greatest) or (least is not None and least > LEAST_DYNAMIC_SIZE
                                                          and size < least):
            return False
    return True


def _second_summation_floors(art: ArtifactFolder, fp64: dict[str, np.ndarray]) -> dict[str, float]:
    """The summation floors the export lifted a user's few-value head to (`summation_floor`, on the golden input),
    for the second shape, where no model runs to measure them: each output's recorded bound times how much smaller its
    float64 values are there than in the goldens (never more than recorded, which the goldens vouch for). Without it
    the one float32 run of a file measured the head's floor alone, and an untouched folder of a user's model ending in
    Linear(256, 10), exported with exit 0 (its second shape judged on the lifted floor), failed `verify artifact` at
    5.7x there (hunt 18a)."""
    import numpy as np

    bounds: dict[str, float] = {}
    sets = [(s.get("float64") or {}) for s in (getattr(art, "golden_sets", None) or [art.goldens or {}])]
    for name, bound in (art.manifest.summation_floor or {}).items():
        golden, there = [g[name] for g in sets if name in g and np.size(g[name])], fp64.get(name)
        if not golden or there is None or not np.size(there):
            continue
        peak = max(float(np.max(np.abs(g))) for g in golden)  # the bound is the largest over the stored inputs
        ratio = min(1.0, float(np.max(np.abs(there))) / peak) if peak > 0 else 1.0
        bounds[name] = float(np.max(bound)) * ratio
    return bounds


def option_flags(plugins: Any) -> list[str]:
    """The runtimes' own options given (not left at their defaults), as their flags."""
    from exporter.plugin_options import option_fields

    flags = []
    for given in dict(plugins or {}).values():
        default = type(given)()
        flags += [spec.flag for item, spec in option_fields(type(given))
                  if getattr(given, item.name) != getattr(default, item.name)]
    return flags


def read_inputs(verify_key: Path | None, weights_file: Path | None) -> dict[str, Path]:
    """The files a check reads besides the folders, by their option (no report may be written over them)."""
    return {what: path for what, path in (("--verify-key", verify_key), ("--checkpoint", weights_file)) if path}


def require_flags(**flags: Any) -> None:
    """TypeError unless each is True or False: `trust_unsigned_code="no"` (or a "false" read from the environment) is
    truthy, and loaded unsigned files that can run code; `rebuild="no"` rebuilt."""
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, not {type(value).__name__} {value!r}")


def _refuse_unread_options(paths: Sequence[Path], options: Any) -> None:
    """A runtime's own option (--ort-opt-level) when no folder holds a file that runtime runs would be read by no
    check (exit 0 with the option dropped): refused from the manifests alone, before any file is hashed. A folder
    whose manifest cannot be read is left to its own integrity check, which fails it."""
    names: list[str] = []
    for path in paths:
        try:
            manifest = load_manifest(resolve_folder(path)[1])
        except (ArtifactError, ValueError):
            return
        names += [name for entry in manifest.model_files().values() for name in runtimes_for(entry.format)]
    if names:
        refuse_unused_options(names, options)


LAYERS_NEED_REBUILD = ("--layers re-runs each file's layers on the float64 values of the model the folder names, "
                       "which only --rebuild builds: pass --rebuild with it (and --checkpoint FILE where the folder's "
                       "weights were a file)")


def validate(paths: Sequence[Path], options: RuntimeOptions | None = None,
             verify_key: Path | None = None, trust_unsigned_code: bool = False, rebuild: bool = False,
             weights_file: Path | None = None, layers: bool | None = None) -> CheckReport:
    """Check every folder; one folder's failures never stop the others (only an environment problem
    does, as SetupError). A code-executing file is loaded only from a folder whose signature verified with
    `verify_key`, or with `trust_unsigned_code` (module doc). With `rebuild`, each folder's reference is
    re-derived from the model it names (verify/folder/rebuild.py; `weights_file` for a checkpoint), and with
    `layers` too, every layer of each file is judged against it (verify/folder/layers.py); `layers` None (the
    default): with `rebuild`, as `verify export` runs it, best effort unless $BACKBONE_VERIFY_LAYERS is 0; False: not
    run. Paths may be given as text; one folder alone may be given without a list."""
    paths = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(path) for path in paths]
    verify_key = Path(verify_key) if verify_key is not None else None
    weights_file = Path(weights_file) if weights_file is not None else None
    if weights_file is not None and not rebuild:  # as the CLI refuses --checkpoint without --rebuild
        raise UsageError(REBUILD_ONLY.format(option="weights_file"))
    require_flags(rebuild=rebuild, trust_unsigned_code=trust_unsigned_code,
                  **({} if layers is None else {"layers": layers}))
    if options is not None and not isinstance(options, RuntimeOptions):
        raise TypeError(f"options must be a verify.runtimes.RuntimeOptions or None, not {type(options).__name__}")
    if options is not None and options.tf32 is not None and options.device != "cuda":  # as the CLI refuses --tf32
        raise UsageError(f"tf32={options.tf32} sets TF32 on CUDA, and these checks run on {options.device}, where "
                         "there is no TF32; leave tf32 at None, or set device='cuda'")
    if layers and not rebuild:
        raise UsageError(LAYERS_NEED_REBUILD)
    if verify_key is not None:
        from exporter.signing import check_public_key

        check_public_key(verify_key)  # a usage error, before any work
    report = CheckReport("artifact", inputs=read_inputs(verify_key, weights_file))
    for path in paths:
        resolve_folder(path)  # usage errors (a path that does not exist) before any work
    from verify.judge.layers import layers_by_default

    by_default = layers is None and rebuild and layers_by_default()  # a bad variable: exit 2 before any work
    flags = option_flags(options.plugins if options else {})
    detector = next((path for path in paths if is_detector_folder(path)), None) if flags else None
    if detector is not None:  # a whole detector's check runs each framework's defaults: they would be dropped
        raise UsageError(f"{detector} is a whole detector's folder, whose check runs each framework's defaults and "
                         f"takes no {flags[0]}; drop {', '.join(flags)}, or check the other folders on their own")
    if flags:
        _refuse_unread_options(paths, options)
    for path in paths:
        if is_detector_folder(path):
            check_detector_folder(path, report, verify_key, trust_unsigned_code, rebuild=rebuild,
                                  weights_file=weights_file, layers=layers)  # None: by default, best effort
            continue
        art = check_integrity(path, report, verify_key, trust_unsigned_code)
        if art is not None and rebuild:
            rebuilt_reference(art, report, lambda art=art: rebuild_backbone(art, weights_file))
        if art is not None:
            golden_checks(art, options or RuntimeOptions(), report)
            if layers or by_default:
                folder_layer_checks(art, report, asked=bool(layers))
            art.close()
    failed = sum(not c.passed and not c.skipped for c in report.checks)
    report.summary = (f"all {len(report.checks)} checks passed" if report.passed else
                      f"{failed} of {len(report.checks)} checks failed")
    return report
