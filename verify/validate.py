"""`verify artifact`: an export folder proves itself. Integrity first (every file present, size
and sha256 as recorded, nothing referenced outside the folder), then every artifact that passed
it runs in each runtime that can run it, on the golden input and at a second input shape."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.artifacts import Artifact, ArtifactMeta
from exporter.errors import ArtifactError, UsageError, VerifyError
from exporter.formats import FORMATS, get_format
from exporter.fsio import require_inside
from exporter.manifest import (
    GOLDENS_NAME,
    MANIFEST_NAME,
    MANIFEST_SCHEMA,
    MANIFEST_SCHEMA_VERSION,
    file_sha256,
    read_goldens,
)
from verify.checks import Check, CheckReport
from verify.compare import Tolerance, compare_outputs
from verify.runtimes import RuntimeOptions, make_runtime, runtimes_for

if TYPE_CHECKING:
    import numpy as np


@dataclass
class ArtifactFolder:
    folder: Path
    manifest: dict[str, Any]
    verified: dict[str, Path]
    """Files whose size and hash matched the manifest."""

    @property
    def label(self) -> str:
        return str(self.folder)

    def tolerance(self) -> Tolerance:
        recorded = self.manifest.get("tolerance") or {}
        return Tolerance(**{k: v for k, v in recorded.items() if k in Tolerance.__dataclass_fields__})

    def floors(self) -> dict[str, float]:
        return {k: float(v) for k, v in (self.manifest.get("noise_floor") or {}).items()}

    def artifact(self, name: str) -> Artifact:
        entry = self.manifest["files"][name]
        spec = self.manifest.get("input", {})
        meta = ArtifactMeta(input_name=spec.get("name", "input"), input_shape=list(spec.get("shape", [])),
                            output_names=list(self.manifest.get("outputs", [])),
                            dynamic_axes=dict(spec.get("dynamic_axes") or {}),
                            spec=self.manifest.get("model", {}).get("spec"), exporter=entry.get("exporter"))
        return Artifact(entry["format"], meta, path=self.verified[name])


def resolve_folder(path: Path) -> tuple[Path, Path]:
    """A folder or its manifest.json -> (folder, manifest path)."""
    if not path.exists():
        raise UsageError(f"{path} does not exist")
    if path.is_dir():
        return path, path / MANIFEST_NAME
    if path.name == MANIFEST_NAME:
        return path.parent, path
    raise UsageError(f"{path} is neither an export folder nor its {MANIFEST_NAME}")


def load_manifest(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ArtifactError(f"no {MANIFEST_NAME} in {path.parent}: an incomplete export or not an export folder")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != MANIFEST_SCHEMA:
        raise ArtifactError(f"{path} is not a {MANIFEST_SCHEMA} manifest")
    if manifest.get("schema_version") != MANIFEST_SCHEMA_VERSION:
        raise ArtifactError(f"{path} has schema version {manifest.get('schema_version')}; this verify reads "
                            f"{MANIFEST_SCHEMA_VERSION}")
    if not isinstance(manifest.get("files"), dict) or GOLDENS_NAME not in manifest["files"]:
        raise ArtifactError(f"{path} lists no files or no {GOLDENS_NAME}")
    return manifest


def check_integrity(path: Path, report: CheckReport) -> ArtifactFolder | None:
    folder, manifest_path = resolve_folder(path)
    label = str(folder)
    try:
        manifest = load_manifest(manifest_path)
    except ArtifactError as exc:
        report.add(Check(label, "integrity", MANIFEST_NAME, False, str(exc)))
        return None
    report.add(Check(label, "integrity", MANIFEST_NAME, True,
                     f"schema {manifest['schema_version']}, {manifest.get('model', {}).get('spec', '?')}"))
    verified: dict[str, Path] = {}
    for name, entry in manifest["files"].items():
        start = time.perf_counter()
        check = report.add(Check(label, "integrity", name, False))
        try:
            file = require_inside(folder, name, "manifest entry")
            if not file.is_file():
                raise ArtifactError(f"{name} is missing")
            size = file.stat().st_size
            if size != entry.get("size"):
                raise ArtifactError(f"{name}: size {size} bytes, manifest says {entry.get('size')} "
                                    "(truncated or replaced)")
            digest = file_sha256(file)
            if digest != entry.get("sha256"):
                raise ArtifactError(f"{name}: sha256 {digest[:12]}… does not match the manifest's "
                                    f"{str(entry.get('sha256'))[:12]}… (modified)")
            if entry.get("format") in FORMATS and get_format(entry["format"]).is_file:
                get_format(entry["format"]).check_integrity(file, folder)
        except ArtifactError as exc:
            check.message = str(exc)
        else:
            check.passed, check.message = True, f"{size} bytes, sha256 ok"
            verified[name] = file
        check.seconds = time.perf_counter() - start
    return ArtifactFolder(folder, manifest, verified)


def second_shape(shape: Sequence[int], dynamic_axes: dict[str, str]) -> tuple[int, ...] | None:
    """Another shape inside the recorded dynamic axes: batch + 1, height and width + 32."""
    if not dynamic_axes:
        return None
    bump = {0: 1, 2: 32, 3: 32}
    return tuple(s + bump.get(i, 0) if str(i) in dynamic_axes else s for i, s in enumerate(shape))


def golden_checks(art: ArtifactFolder, options: RuntimeOptions, report: CheckReport,
                  runtimes: Sequence[str] | None = None) -> None:
    """Each verified artifact in each runtime that runs it, against the goldens and at a second shape."""
    label = art.label
    if GOLDENS_NAME not in art.verified:
        report.add(Check(label, "goldens", GOLDENS_NAME, False, "goldens failed integrity; nothing to judge"))
        return
    goldens = read_goldens(art.verified[GOLDENS_NAME])
    inputs = goldens["input"]
    tolerance, floors = art.tolerance(), art.floors()
    for name, entry in art.manifest["files"].items():
        fmt = entry.get("format")
        if fmt not in FORMATS or not get_format(fmt).is_file:
            continue
        for runtime_name in runtimes or runtimes_for(fmt):
            if name not in art.verified:
                report.add(Check(label, runtime_name, f"{name}: load", False,
                                 "not loaded: it failed the integrity check", skipped=False))
                continue
            _run_goldens(art, name, runtime_name, options, inputs, goldens, tolerance, floors, report)


def _run_goldens(art: ArtifactFolder, name: str, runtime_name: str, options: RuntimeOptions,
                 inputs: dict[str, np.ndarray], goldens: dict, tolerance: Tolerance, floors: dict[str, float],
                 report: CheckReport) -> None:
    label = art.label
    start = time.perf_counter()
    try:
        runtime = make_runtime(runtime_name, options).load(art.artifact(name))
        outputs = runtime.run(inputs)
    except VerifyError as exc:
        if not isinstance(exc, ArtifactError):
            raise  # usage or environment: exit 2, not a failed check
        report.add(Check(label, runtime_name, f"{name}: load and run", False, str(exc)))
        return
    report.add(Check(label, runtime.label, f"{name}: load and run", True,
                     f"{time.perf_counter() - start:.2f}s", seconds=time.perf_counter() - start))
    for kind, reference in (("float32", goldens["float32"]), ("float64", goldens["float64"])):
        if kind == "float64" and not reference:  # a model with no float64 oracle (its manifest has no floor)
            report.add(Check(label, runtime.label, f"{name}: goldens {kind}", False,
                             "none recorded: the model cannot run in float64", skipped=True))
            continue
        pair = compare_outputs(runtime.label, outputs, f"golden {kind}", reference, tolerance, floors,
                               require_all=True)
        worst = pair.worst
        ratio = f", {worst.ratio:.1f}x floor" if worst.ratio is not None else ""
        message = (f"worst {worst.name}: max abs {worst.max_abs:.2e}{ratio}" if pair.passed else
                   f"{worst.name}: {worst.reason}, max abs {worst.max_abs if worst.max_abs is not None else 0:.2e}"
                   f"{ratio} ({tolerance.describe()})")
        report.add(Check(label, runtime.label, f"{name}: goldens {kind}", pair.passed, message,
                         details=pair.to_dict()))
    shape = second_shape(next(iter(inputs.values())).shape, art.manifest.get("input", {}).get("dynamic_axes") or {})
    if shape is not None:
        report.add(_second_shape_check(art, name, runtime, shape, tolerance))


def _second_shape_check(art: ArtifactFolder, name: str, runtime, shape: tuple[int, ...],
                        tolerance: Tolerance) -> Check:
    """At a shape with no goldens, judge against a float64 run of a verified artifact that a
    runtime can run in float64, when the folder has one; else check the output shapes follow."""
    from verify.inputs import make_input
    from verify.oracle import noise_floors

    input_name = art.manifest.get("input", {}).get("name", "input")
    x = {input_name: make_input(shape, 1)}
    label, title = art.label, f"{name}: shape {'x'.join(map(str, shape))}"
    try:
        outputs = runtime.run(x)
    except VerifyError as exc:
        return Check(label, runtime.label, title, False, str(exc))
    bad = [k for k, v in outputs.items() if v.ndim == 0 or v.shape[0] != shape[0] or not v.size]
    if bad:
        return Check(label, runtime.label, title, False, f"outputs {bad} do not follow the batch of {shape[0]}")
    exact = [(n, names[0]) for n, e in art.manifest["files"].items()
             if n in art.verified and (names := runtimes_for(e.get("format", ""), float64=True))]
    if not exact or tolerance.mode != "auto":
        return Check(label, runtime.label, title, True, "runs; output shapes follow the input")
    reference, runner = exact[0]
    fp64 = make_runtime(runner, RuntimeOptions(dtype="float64")).load(art.artifact(reference)).run(x)
    fp32 = make_runtime(runner).load(art.artifact(reference)).run(x)
    pair = compare_outputs(runtime.label, outputs, f"{reference} float64", fp64, tolerance, noise_floors(fp32, fp64),
                           require_all=True)
    worst = pair.worst
    return Check(label, runtime.label, title, pair.passed,
                 f"vs {reference} in float64: worst {worst.name} {worst.ratio or 0:.1f}x floor",
                 details=pair.to_dict())


def validate(paths: Sequence[Path], options: RuntimeOptions | None = None) -> CheckReport:
    report = CheckReport("artifact")
    for path in paths:
        resolve_folder(path)  # usage errors (a path that does not exist) before any work
    for path in paths:
        art = check_integrity(path, report)
        if art is not None:
            golden_checks(art, options or RuntimeOptions(), report)
    failed = sum(not c.passed and not c.skipped for c in report.checks)
    report.summary = (f"all {len(report.checks)} checks passed" if report.passed else
                      f"{failed} of {len(report.checks)} checks failed")
    return report
