"""Tampered export folders never pass: a table of hand-made tampers, each a failed check naming the
file or field and the reason (exit 1, no traceback, strict JSON written), signed folders refused when
changed, and a property test that mutates a valid manifest and goldens at random.

One signed export of resnet18 at 1x3x32x32, ONNX only (legacy exporter), serves every case (copied per case)."""

from __future__ import annotations

import datetime
import json
import math
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from exporter.manifest import (
    GOLDENS_NAME,
    HISTORY_FIELDS,
    MANIFEST_NAME,
    SCHEMA_FILE,
    SIGNATURE_NAME,
    file_sha256,
    loads_strict,
)
from verify.cli import app
from verify.folder.validate import validate
from verify.judge.compare import AUTO_FACTOR

SHAPE = "1x3x32x32"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path


def make_keys(folder: Path, name: str, curve=None) -> KeyPair:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(curve or ec.SECP256R1())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return KeyPair(private, public)


@pytest.fixture(scope="module")
def keys(module_tmp):
    folder = module_tmp("keys")
    return {"ci": make_keys(folder, "ci"), "other": make_keys(folder, "other")}


@pytest.fixture(scope="module")
def signed(module_tmp, keys):
    """The one export every case copies: resnet18 body, 1x3x32x32, ONNX only (torch's legacy exporter: every
    tamper here edits the folder, whichever exporter wrote the file; 4x faster), signed with the `ci` key."""
    out = module_tmp("signed")
    result = invoke("export", "-b", "resnet18", "--shape", SHAPE, "--format", "onnx", "--onnx-exporter",
                    "torchscript", "--sign-key", keys["ci"].private, "--out", out)
    assert result.exit_code == 0, result.output
    return out / "resnet18-frozen-body"


def copy(folder: Path, where: Path) -> Path:
    return Path(shutil.copytree(folder, where / folder.name))


# Tampering helpers ---------------------------------------------------------------------------

def read_manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST_NAME).read_text())


def write_manifest(folder: Path, data: dict, indent: int | None = 2) -> None:
    (folder / MANIFEST_NAME).write_text(json.dumps(data, indent=indent, allow_nan=True))


def edit(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        data = read_manifest(folder)
        change(data)
        write_manifest(folder, data)
    return damage


def rehash(folder: Path, name: str) -> None:
    data = read_manifest(folder)
    data["files"][name].update(sha256=file_sha256(folder / name), size=(folder / name).stat().st_size)
    write_manifest(folder, data)


def read_goldens(folder: Path, allow_pickle: bool = False) -> dict[str, np.ndarray]:
    """The test's own view of the goldens (it may read back a pickle it wrote itself)."""
    with np.load(folder / GOLDENS_NAME, allow_pickle=allow_pickle) as data:
        return {key: data[key] for key in data.files}


def write_goldens(folder: Path, arrays: dict, hashed: bool = True) -> None:
    with open(folder / GOLDENS_NAME, "wb") as handle:
        np.savez(handle, **arrays)
    if hashed:
        rehash(folder, GOLDENS_NAME)


def goldens(change: Callable[[dict], None]) -> Callable[[Path], None]:
    """Change the goldens and update their hash in the manifest (so only the content checks can catch it)."""
    def damage(folder: Path) -> None:
        arrays = read_goldens(folder)
        change(arrays)
        write_goldens(folder, arrays)
    return damage


def text_edit(old: str, new: str) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        text = (folder / MANIFEST_NAME).read_text()
        assert old in text
        (folder / MANIFEST_NAME).write_text(text.replace(old, new, 1))
    return damage


def scale_floor(factor: float) -> Callable[[dict], None]:
    def change(data: dict) -> None:
        data["noise_floor"]["layer2"] *= factor
    return change


def truncate_model(folder: Path) -> None:
    path = folder / "model.onnx"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def symlink_model(folder: Path) -> None:
    outside = folder.parent / "elsewhere.onnx"
    (folder / "model.onnx").rename(outside)
    (folder / "model.onnx").symlink_to(outside)


def symlink_manifest(folder: Path) -> None:
    outside = folder.parent / "manifest-elsewhere.json"
    (folder / MANIFEST_NAME).rename(outside)
    (folder / MANIFEST_NAME).symlink_to(outside)


def external_data_unlisted(folder: Path) -> None:
    """The weights moved to external data beside the model, the model's new hash recorded, the data not."""
    path = folder / "model.onnx"
    onnx.save_model(onnx.load(str(path)), str(path), save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    rehash(folder, "model.onnx")


def external_data_listed_for_nothing(folder: Path) -> None:
    (folder / "weights.bin").write_bytes(b"\0" * 64)
    data = read_manifest(folder)
    data["files"]["weights.bin"] = {"sha256": file_sha256(folder / "weights.bin"), "size": 64,
                                    "format": "external-data", "of": "model.onnx"}
    write_manifest(folder, data)


def only_goldens(folder: Path) -> None:
    (folder / "model.onnx").unlink()
    edit(lambda m: m["files"].pop("model.onnx"))(folder)


def format_renamed(folder: Path) -> None:
    def change(data: dict) -> None:
        entry = data["files"]["model.onnx"]
        entry["format"] = "torchscript"
        del entry["opset"]
    edit(change)(folder)


def export_disagreed(data: dict) -> None:
    data["verdicts"][0]["passed"] = False
    data["passed"] = False


def with_pickle(arrays: dict) -> None:
    arrays["float32.layer1"] = np.array([{"x": 1}, None], dtype=object)


def nan_input(arrays: dict) -> None:
    arrays["input.input"][0, 0, 0, 0] = np.nan


def goldens_not_npz(folder: Path) -> None:
    (folder / GOLDENS_NAME).write_text("not an archive")
    rehash(folder, GOLDENS_NAME)


def unsigned(folder: Path) -> None:
    (folder / SIGNATURE_NAME).unlink()
    edit(lambda m: m.pop("signature"))(folder)


def consistent_goldens_edit(folder: Path) -> None:
    """Change the float64 goldens far below float32 rounding and record everything to match (hash, floors):
    every check but the signature sees a consistent folder."""
    arrays = read_goldens(folder)
    arrays["float64.layer1"] = arrays["float64.layer1"] * (1 + 1e-12)
    write_goldens(folder, arrays, hashed=False)
    data = read_manifest(folder)
    from verify.judge.measure import measure_floors
    from verify.judge.oracle import channel_floors_sha256, pooled_floors

    # every stored input's groups (input k's keys are `group@k.name`), the floors pooled over them
    marks = sorted({k.split(".", 1)[0].partition("@")[2] for k in arrays})
    groups = [{g: {k.split(".", 1)[1]: v for k, v in arrays.items() if k.split(".", 1)[0] == g + (f"@{m}" if m else "")}
               for g in ("float32", "float64", "folded")} for m in marks]
    floors = pooled_floors([measure_floors(group["float32"], group["float64"],
                                           samples=[group["folded"]] if group["folded"] else []) for group in groups])
    data["noise_floor"] = {name: floor.value for name, floor in floors.items()}
    data["channel_floors_sha256"] = channel_floors_sha256(floors)
    data["files"][GOLDENS_NAME].update(sha256=file_sha256(folder / GOLDENS_NAME),
                                       size=(folder / GOLDENS_NAME).stat().st_size)
    write_manifest(folder, data)


@dataclass(frozen=True)
class Tamper:
    id: str
    damage: Callable[[Path], None]
    fragment: str
    """Found in a failing check (its name and message)."""
    command: str = "artifact"
    key: str | None = None
    """`--verify-key` with this key pair's public key."""


TAMPERED = [
    Tamper("floor-raised", edit(scale_floor(10.0)), "noise_floor['layer2'] is"),
    Tamper("floor-lowered", edit(scale_floor(0.5)), "never taken on trust"),
    Tamper("floor-nan", text_edit('"layer3": ', '"layer3": NaN, "x": '), "not strict JSON: NaN"),
    Tamper("summation-floor-added", edit(lambda m: m.update(summation_floor={"layer2": [1.0]})),
           "a registered backbone's folder has none"),
    Tamper("summation-floor-elsewhere", edit(lambda m: m.update(summation_floor={"logits": [1.0]})),
           "outputs with no noise_floor"),
    Tamper("factor-raised", edit(lambda m: m["tolerance"].update(factor=40.0)), "may tighten a verdict, never loosen"),
    Tamper("factor-nan", text_edit(f'"factor": {AUTO_FACTOR}', '"factor": NaN'), "not strict JSON: NaN"),
    Tamper("factor-overflow", text_edit(f'"factor": {AUTO_FACTOR}', '"factor": 1e999'), "1e999 overflows"),
    Tamper("tolerance-mode-unknown", edit(lambda m: m["tolerance"].update(mode="lenient")), "Input tag 'lenient'"),
    Tamper("decimal-loosest", edit(lambda m: m.update(tolerance={"mode": "decimal", "decimal": -400})),
           "tolerance.decimal"),
    Tamper("format-pickle", edit(lambda m: m["files"]["model.onnx"].update(format="pickle")), "Input tag 'pickle'"),
    Tamper("format-renamed", format_renamed, "model.onnx is not a torchscript file"),
    Tamper("opset-lie", edit(lambda m: m["files"]["model.onnx"].update(opset=7)), "records opset 7, the file 18"),
    Tamper("exporter-lie", edit(lambda m: m["files"]["model.onnx"].update(exporter="torch.jit.trace")),
           "records exporter"),
    Tamper("unlisted-file", lambda f: (f / "notes.txt").write_text("hi"), "1 unlisted in the manifest: notes.txt"),
    Tamper("hidden-temp-file", lambda f: (f / ".manifest.json.4242.tmp").write_text("{"), "hidden: a temporary file"),
    Tamper("subfolder", lambda f: (f / "extra").mkdir(), "extra/ (a folder)"),
    Tamper("only-goldens", only_goldens, "lists no model artifact"),
    Tamper("goldens-not-npz", goldens_not_npz, "goldens.npz is not an npz archive"),
    Tamper("goldens-pickle", goldens(with_pickle), "pickled object array; refusing to unpickle"),
    Tamper("goldens-input-nan", goldens(nan_input), "input.input holds 1 NaN/Inf"),
    Tamper("goldens-input-shape", goldens(lambda a: a.update({"input.input": a["input.input"][:, :, :16, :16]})),
           "the manifest records float32 [1, 3, 32, 32]"),
    Tamper("goldens-input-float64", goldens(lambda a: a.update({"input.input": a["input.input"].astype(np.float64)})),
           "input.input is float64"),
    Tamper("goldens-float64-edited", goldens(lambda a: a.update({"float64.layer3": a["float64.layer3"] * 1.01})),
           "noise_floor['layer3']"),
    Tamper("goldens-float32-dropped", goldens(lambda a: a.pop("float32.layer4")), "holds float32 outputs"),
    Tamper("goldens-extra-array", goldens(lambda a: a.update({"notes.x": np.zeros(2)})), "'notes.x', outside"),
    Tamper("goldens-unhashed-edit", lambda f: write_goldens(f, {**read_goldens(f), "input.input": np.zeros(
        (1, 3, 32, 32), np.float32)}, hashed=False), "goldens.npz: sha256"),
    Tamper("model-truncated", truncate_model, "truncated"),
    Tamper("model-symlinked", symlink_model, "model.onnx is a symbolic link"),
    Tamper("manifest-symlinked", symlink_manifest, "manifest.json is a symbolic link"),
    Tamper("external-data-unlisted", external_data_unlisted, "weights.bin that the manifest does not list"),
    Tamper("external-data-for-nothing", external_data_listed_for_nothing, "which does not reference it"),
    Tamper("schema-version-1", edit(lambda m: m.update(schema_version=1)), "schema version 1; this verify reads 2"),
    Tamper("unknown-field", edit(lambda m: m.update(trust_me=True)), "trust_me: Extra inputs are not permitted"),
    Tamper("duplicate-key", text_edit('"passed": true,', '"passed": false, "passed": true,'),
           "key 'passed' appears twice"),
    Tamper("manifest-not-json", lambda f: (f / MANIFEST_NAME).write_text("{ nope"), "is not strict JSON"),
    Tamper("manifest-missing", lambda f: (f / MANIFEST_NAME).unlink(), "no manifest.json"),
    Tamper("export-disagreed", edit(export_disagreed), "the export itself recorded 1 of 3 pairs disagreeing"),
    Tamper("input-shape-lie", edit(lambda m: m["input"].update(shape=[1, 3, 64, 64])), "records input shape"),
    Tamper("dynamic-axes-removed", edit(lambda m: m["input"].update(dynamic_axes={})), "records dynamic axes"),
    Tamper("weights-lie", edit(lambda m: m["model"].update(weights="imagenet")), "records weights 'synthetic:0'"),
    Tamper("verdict-dropped", edit(lambda m: m["verdicts"].pop()), "not every pair of the runs"),
    Tamper("signature-declared-missing", lambda f: (f / SIGNATURE_NAME).unlink(), "but model.sig is missing"),
    Tamper("signature-undeclared", edit(lambda m: m.pop("signature")), "model.sig"),
    Tamper("signature-missing", lambda f: (f / SIGNATURE_NAME).unlink(), "not signed: no model.sig", key="ci"),
    Tamper("unsigned-folder", unsigned, "not signed: no model.sig", key="ci"),
    Tamper("signature-other-key", lambda f: None, "was made with another key", key="other"),
    Tamper("signature-garbage", lambda f: (f / SIGNATURE_NAME).write_text("{}"), "does not verify", key="ci"),
    Tamper("signed-then-edited", consistent_goldens_edit, "changed since signing: goldens.npz, manifest.json",
           key="ci"),
    Tamper("signed-then-added", lambda f: (f / "notes.txt").write_text("hi"), "added since signing: notes.txt",
           key="ci"),
    Tamper("preflight-floor-raised", edit(scale_floor(10.0)), "noise_floor['layer2'] is", command="preflight"),
    Tamper("preflight-goldens-pickle", goldens(with_pickle), "refusing to unpickle", command="preflight"),
    Tamper("preflight-signed-then-edited", consistent_goldens_edit, "changed since signing", command="preflight",
           key="ci"),
]


@pytest.mark.parametrize("case", TAMPERED, ids=[c.id for c in TAMPERED])
def test_tampered_folder_never_passes(case, signed, keys, tmp_path):
    folder = copy(signed, tmp_path)
    case.damage(folder)
    args = [case.command, folder, "--json", tmp_path / "r.json"]
    if case.command == "preflight":
        args += ["--runs", "1", "--warmup", "0"]
    if case.key:
        args += ["--verify-key", keys[case.key].public]
    result = invoke(*args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "unexpected" not in result.output
    report = loads_strict((tmp_path / "r.json").read_text())  # strict JSON, always written
    assert report["passed"] is False
    failing = [f"{c['name']}: {c['message']}" for c in report["checks"] if not c["passed"] and not c["skipped"]]
    assert any(case.fragment in line for line in failing), failing
    assert all("\n" not in line and len(line) < 600 for line in failing)
    assert "passed" not in report["summary"] if case.command == "artifact" else report["summary"].startswith("NO-GO")


def test_the_signed_export_passes_artifact_and_preflight_with_its_key(signed, keys, tmp_path):
    result = invoke("artifact", signed, "--verify-key", keys["ci"].public, "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    checks = {c["name"]: c for c in loads_strict((tmp_path / "r.json").read_text())["checks"]}
    assert checks["signature"]["passed"] and not checks["signature"]["skipped"]
    assert checks["model.onnx: goldens float64"]["passed"]
    without_key = invoke("artifact", signed, "--json", tmp_path / "r2.json")
    assert without_key.exit_code == 0
    skipped = {c["name"]: c for c in loads_strict((tmp_path / "r2.json").read_text())["checks"]}["signature"]
    assert skipped["skipped"] and "pass --verify-key" in skipped["message"]
    go = invoke("preflight", signed, "--verify-key", keys["ci"].public, "--runs", "2", "--warmup", "0")
    assert go.exit_code == 0 and "GO: model.onnx" in go.stdout


def test_only_the_signature_catches_a_consistent_edit(signed, keys, tmp_path):
    """Goldens changed and every record updated to match: integrity alone cannot tell; the signature does."""
    folder = copy(signed, tmp_path)
    consistent_goldens_edit(folder)
    assert invoke("artifact", folder).exit_code == 0
    refused = invoke("artifact", folder, "--verify-key", keys["ci"].public)
    assert refused.exit_code == 1 and "changed since signing: goldens.npz, manifest.json" in refused.stdout
    assert "model.onnx: load: not loaded: the folder failed its integrity checks" in refused.stdout


def test_published_schema_validates_the_written_manifest(signed):
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text())).validate(read_manifest(signed))


def test_one_bad_folder_fails_its_checks_not_the_run(signed, tmp_path):
    """Goldens that are not an npz: that folder's check fails naming the file; the next folder is still
    checked; JSON, JUnit and Markdown are all written."""
    (tmp_path / "bad").mkdir()
    (tmp_path / "good").mkdir()
    bad, good = copy(signed, tmp_path / "bad"), copy(signed, tmp_path / "good")
    goldens_not_npz(bad)
    out = {name: tmp_path / name for name in ("r.json", "j.xml", "s.md")}
    result = invoke("artifact", bad, good, "--json", out["r.json"], "--junit", out["j.xml"], "--markdown",
                    out["s.md"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    checks = loads_strict(out["r.json"].read_text())["checks"]
    mine = {str(bad): [c for c in checks if c["artifact"] == str(bad)],
            str(good): [c for c in checks if c["artifact"] == str(good)]}
    assert any(c["name"] == "goldens.npz: content" and "goldens.npz is not an npz archive" in c["message"]
               for c in mine[str(bad)])
    assert mine[str(good)] and all(c["passed"] or c["skipped"] for c in mine[str(good)])
    assert any(c["name"] == "model.onnx: goldens float32" for c in mine[str(good)])
    assert len(ET.parse(out["j.xml"]).getroot().findall("./testsuite")) == 2
    assert "not an npz archive" in out["s.md"].read_text()


@pytest.mark.parametrize(("option", "key", "message"), [
    ("--verify-key", "private", "is a private key: give the public one"),
    ("--verify-key", "missing", "does not exist"),
    ("--verify-key", "rsa", "not an elliptic-curve key"),
    ("--verify-key", "p192", "is on curve secp192r1"),
])
def test_bad_keys_are_usage_errors_before_any_work(option, key, message, signed, keys, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    paths = {"private": keys["ci"].private, "missing": tmp_path / "nowhere.pem"}
    if key == "rsa":
        paths["rsa"] = tmp_path / "rsa.pub.pem"
        paths["rsa"].write_bytes(rsa.generate_private_key(65537, 2048).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    if key == "p192":
        paths["p192"] = make_keys(tmp_path, "p192", ec.SECP192R1()).public
    result = invoke("artifact", signed, option, paths[key])
    assert result.exit_code == 2 and message in result.stderr and "integrity" not in result.stdout


def test_export_with_a_public_key_as_signing_key_refuses_before_building(keys, tmp_path):
    result = invoke("export", "-b", "resnet18", "--shape", SHAPE, "--format", "onnx", "--sign-key",
                    keys["ci"].public, "--out", tmp_path)
    assert result.exit_code == 2 and "is not a PEM private key (it is a public key" in result.stderr
    assert "Building" not in result.stderr and not list(tmp_path.iterdir())


# The property: random mutations never pass unless harmless ----------------------------------------
#
# Harmless, judged on the outcome (so two changes that cancel are no change), means the folder differs from
# the signed original only in
#   - the manifest's history (exporter.manifest.HISTORY_FIELDS: `created`, `versions`, `identity`, each
#     verdict's `worst_output`, `worst_max_abs`, `worst_ratio`, `null_reason`), which no artifact check can
#     re-derive and no verdict reads;
#   - a tighter tolerance: `tolerance.factor` a float in (0, AUTO_FACTOR];
#   - what JSON equality ignores: key order and whitespace;
#   - the goldens' bytes (their recorded sha256 and size being the file's), with the same input bit for bit
#     and the same output keys, dtypes and shapes, each output element moved by at most (AUTO_FACTOR + r)
#     noise floors, r being the largest ratio to the floor that the unmutated folder's own runtime measured
#     on that output: a move a correct runtime can still be judged against is within the verdict's
#     tolerance, not a loosening of it (a larger one fails for sure: |runtime - moved golden| >= move - r
#     floors > AUTO_FACTOR floors).
# Anything else must fail. Neutral (key order, whitespace, a valid `created`, goldens re-saved and their hash
# recorded) must also pass: the checks do not simply fail everything.

HISTORY = {("versions",), ("identity",), ("verdicts", "worst_output"), ("verdicts", "worst_max_abs"),
           ("verdicts", "worst_ratio"), ("verdicts", "null_reason"), ("created",)}


def test_history_is_what_the_manifest_module_says():
    assert {f.replace("[]", "") for f in HISTORY_FIELDS} == {".".join(h) for h in HISTORY}


def _history(path: tuple) -> bool:
    return path[:1] in HISTORY or (len(path) == 3 and path[0] == "verdicts" and ("verdicts", path[2]) in HISTORY)


def differences(old, new, path=()) -> list[tuple]:
    """Paths where two JSON documents differ (types count: 1 is not 1.0 nor True; NaN differs from itself)."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in old.keys() | new.keys():
            found += [(*path, key)] if key not in old or key not in new else differences(old[key], new[key],
                                                                                          (*path, key))
        return found
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, (*path, i))]
    return [] if type(old) is type(new) and old == new else [path]


def _tighter(manifest: dict) -> bool:
    factor = manifest.get("tolerance", {}).get("factor") if isinstance(manifest.get("tolerance"), dict) else None
    return type(factor) is float and 0 < factor <= AUTO_FACTOR


def _valid_created(manifest: dict) -> bool:
    try:
        return datetime.datetime.fromisoformat(manifest["created"]).tzinfo is not None
    except (KeyError, TypeError, ValueError):
        return False


def compare_arrays(old: dict, folder: Path, floors: dict, ratios: dict) -> tuple[bool, bool]:
    """(the same arrays, within the tolerance as defined above) of the goldens in `folder` against `old`."""
    try:
        new = read_goldens(folder, allow_pickle=True)
    except Exception:  # not even an npz: not the same arrays
        return False, False
    if old.keys() != new.keys() or any(old[k].dtype != new[k].dtype or old[k].shape != new[k].shape for k in old):
        return False, False
    same = all(old[k].tobytes() == new[k].tobytes() for k in old)
    within = all(old[k].tobytes() == new[k].tobytes() if k.split(".", 1)[0].partition("@")[0] == "input" else
                 bool(np.all(np.abs(new[k].astype(np.float64) - old[k]) <= (AUTO_FACTOR + ratios[k.split(".", 1)[1]])
                             * floors[k.split(".", 1)[1]]))
                 for k in old)
    return same, within


@pytest.fixture(scope="module")
def ratios(signed) -> dict[str, float]:
    """Per output, the largest ratio to the floor the unmutated folder's runtime measured against its goldens."""
    report = validate([signed])
    assert report.passed
    found: dict[str, float] = {}
    for check in report.checks:
        if "goldens float" in check.name:
            for output in check.details["outputs"]:
                found[output["name"]] = max(found.get(output["name"], 0.0), output["ratio"])
            for each in check.details.get("ratios", []):  # every stored input's, where the goldens keep several
                for name, ratio in [(n, r) for n, r in each.items() if r is not None]:
                    found[name] = max(found.get(name, 0.0), ratio)
    return found


def judge_outcome(pristine: dict, arrays: dict, folder: Path, manifest: dict,
                  ratios: dict) -> tuple[bool, bool]:
    """(harmless, neutral) of the folder as mutated, by the definitions above."""
    changed = differences(pristine, manifest)
    goldens_same, goldens_within = compare_arrays(arrays, folder, pristine["noise_floor"], ratios)
    entry = manifest.get("files", {}).get(GOLDENS_NAME) if isinstance(manifest.get("files"), dict) else None
    hashed = isinstance(entry, dict) and entry.get("sha256") == file_sha256(folder / GOLDENS_NAME) \
        and entry.get("size") == (folder / GOLDENS_NAME).stat().st_size
    rehashed = {("files", GOLDENS_NAME, "sha256"), ("files", GOLDENS_NAME, "size")} if hashed else set()
    harmless = goldens_within and all(_history(p) or p in rehashed or (p == ("tolerance", "factor") and
                                                                        _tighter(manifest)) for p in changed)
    neutral = goldens_same and hashed and all(p in rehashed or p == ("created",) for p in changed) \
        and _valid_created(manifest)
    return harmless, neutral


def _paths(data, prefix=()) -> tuple[list[tuple], list[tuple]]:
    """(leaf paths, object paths) of a JSON document."""
    leaves, objects = [], []
    if isinstance(data, dict):
        objects.append(prefix)
        items = data.items()
    elif isinstance(data, list):
        items = enumerate(data)
    else:
        return [prefix], []
    for key, value in items:
        more_leaves, more_objects = _paths(value, (*prefix, key))
        leaves += more_leaves
        objects += more_objects
    return leaves, objects


def _get(data, path):
    for key in path:
        data = data[key]
    return data


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10 ** 6), 10 ** 6) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6)


def mutate_manifest(data: dict, draw, log: list[str]) -> int | None:
    """One random change to the manifest document; returns the indent to write it with."""
    leaves, objects = _paths(data)
    op = draw(st.sampled_from(["replace", "scale", "delete", "add", "created", "reorder", "reindent", "tighten"]))
    if op == "created":
        data["created"] = draw(st.datetimes(timezones=st.just(datetime.timezone.utc))).isoformat()
    elif op == "reorder":
        target = _get(data, draw(st.sampled_from(objects)))
        items = [(k, target.pop(k)) for k in draw(st.permutations(list(target)))]
        target.update(items)
    elif op == "reindent":
        indent = draw(st.sampled_from([None, 0, 1, 4]))
        log.append(f"indent {indent}")
        return indent
    elif op == "tighten":
        data["tolerance"]["factor"] = draw(st.floats(min_value=0.01, max_value=AUTO_FACTOR))
    elif op == "add":
        path = draw(st.sampled_from(objects))
        target = _get(data, path)
        key = draw(st.text(max_size=8).filter(lambda k: k not in target))
        target[key] = draw(json_values)
        log.append(f"add {path}.{key!r} = {target[key]!r}")
        return 2
    else:
        path = draw(st.sampled_from(leaves))
        *head, last = path
        parent, old = _get(data, head), _get(data, path)
        if op == "delete":
            del parent[last]
            log.append(f"delete {path}")
            return 2
        if op == "scale" and isinstance(old, (int, float)) and not isinstance(old, bool):
            new = old * draw(st.sampled_from([0.0, -1.0, 0.5, 1.5, 2.0, 1 + 1e-6, 10.0, 1e6, math.nan, math.inf]))
            parent[last] = int(new) if isinstance(old, int) and math.isfinite(new) else new
        elif op == "replace":
            parent[last] = draw(json_values)
        log.append(f"{op} {path}: {old!r} -> {parent[last]!r}")
        return 2
    log.append(op)
    return 2


def mutate_goldens(arrays: dict, draw, floors: dict, log: list[str]) -> None:
    """One random change to the golden arrays: material where it changes a value (an output element moves
    by at least 3 noise floors, an input element by at least 1, its values being ~N(0, 1)), or a re-save."""
    key = draw(st.sampled_from(sorted(arrays)))
    op = draw(st.sampled_from(["perturb", "nonfinite", "dtype", "drop", "add", "reshape", "object", "resave"]))
    array = arrays[key]
    numeric = array.dtype.kind == "f"
    if op == "resave":
        items = [(k, arrays.pop(k)) for k in draw(st.permutations(sorted(arrays)))]
        arrays.update(items)
    elif op == "perturb" and numeric:
        group, _, name = key.partition(".")
        size = 1.0 if group == "input" or name not in floors else 3.0 * floors[name]
        changed = array.copy()
        changed.flat[draw(st.integers(0, array.size - 1))] += (draw(st.sampled_from([-1.0, 1.0])) * size
                                                               * draw(st.floats(min_value=1.0, max_value=1e3)))
        arrays[key] = changed
    elif op == "nonfinite" and numeric:
        changed = array.copy()
        changed.flat[draw(st.integers(0, array.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        arrays[key] = changed
    elif op == "dtype" and numeric:
        arrays[key] = array.astype(draw(st.sampled_from([d for d in (np.float16, np.float32, np.float64)
                                                          if d != array.dtype])))
    elif op == "drop":
        del arrays[key]
    elif op == "add":
        arrays[draw(st.sampled_from(["float32.extra", "float64.extra", "input.other", "junk", "input."]))] = array
    elif op == "reshape":
        arrays[key] = array.reshape(draw(st.sampled_from([(-1,), (1, *array.shape), array.shape[::-1]])))
    elif op == "object":
        arrays[key] = np.array([None, 1], dtype=object)
    log.append(f"goldens {op} {key}")


@settings(max_examples=int(os.environ.get("TAMPER_EXAMPLES", "30")), deadline=None, database=None,
          derandomize=not os.environ.get("TAMPER_EXAMPLES"), suppress_health_check=[HealthCheck.too_slow],
          phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink])
@given(data=st.data())
def test_random_mutations_never_pass_unless_harmless(signed, keys, ratios, data):
    """Mutate the signed folder's manifest and goldens at random (goldens first, their hash usually
    updated, so the content checks are reached): a pass means the outcome is harmless, a neutral outcome
    passes, and with --verify-key only a folder whose every byte is unchanged passes."""
    draw = data.draw
    pristine = read_manifest(signed)
    arrays = read_goldens(signed)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / signed.name
        folder.mkdir()
        for entry in signed.iterdir():  # the model file is never mutated here: shared, not copied
            (os.link if entry.name == "model.onnx" else shutil.copy2)(entry, folder / entry.name)
        log: list[str] = []
        manifest, indent = read_manifest(folder), 2
        goldens_changes = draw(st.integers(0, 2))
        for _ in range(goldens_changes):  # goldens first: a rehash must not undo a manifest change drawn later
            mutated = read_goldens(folder, allow_pickle=True)
            mutate_goldens(mutated, draw, pristine["noise_floor"], log)
            with open(folder / GOLDENS_NAME, "wb") as handle:
                np.savez(handle, **mutated)
            if draw(st.sampled_from([True, True, True, False])):  # mostly past the hash, to the content checks
                manifest["files"][GOLDENS_NAME] = {**manifest["files"][GOLDENS_NAME],
                                                   "sha256": file_sha256(folder / GOLDENS_NAME),
                                                   "size": (folder / GOLDENS_NAME).stat().st_size}
                log.append("goldens hash recorded")
        for _ in range(draw(st.integers(0 if goldens_changes else 1, 2))):
            indent = mutate_manifest(manifest, draw, log)
        (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=indent, allow_nan=True))
        harmless, neutral = judge_outcome(pristine, arrays, folder, manifest, ratios)

        report = validate([folder])
        failed = [f"{c.name}: {c.message}" for c in report.checks if not c.passed and not c.skipped]
        event("passed" if report.passed else f"failed at {failed[0].split(':')[0]}")
        if report.passed:
            assert harmless, f"passed after {log}"
        else:
            assert not neutral, f"a neutral change failed: {log}: {failed}"
        if report.passed:  # the signature refuses any change of a byte, harmless or not
            unchanged = all((folder / f).read_bytes() == (signed / f).read_bytes()
                            for f in (MANIFEST_NAME, GOLDENS_NAME))
            assert validate([folder], verify_key=keys["ci"].public).passed == unchanged, log
