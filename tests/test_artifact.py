"""Export folders that prove themselves: `verify artifact`, `verify preflight`, CI formats,
atomic writes and safe loading."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from exporter.formats import default_formats, get_format
from exporter.formats.onnx import file_opset
from exporter.manifest import MANIFEST_SCHEMA, MANIFEST_SCHEMA_VERSION, file_sha256
from tests.conftest import SMALL, SMALL_SHAPE
from verify.cli import app
from verify.folder.validate import UNSIGNED_CODE_OPTION as TRUST
from verify.judge.compare import AUTO_FACTOR
from verify.judge.measure import measure_floors
from verify.judge.oracle import pooled_floors
from verify.render.markdown import ROWS_HEADER

runner = CliRunner()
EXPORT = ["export", "--backbone", SMALL, "--shape", "x".join(map(str, SMALL_SHAPE))]
"""What tests/conftest.py default_export runs (the `pristine` folder) and what tests here run again."""


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def pristine(default_export):
    """`verify export` of EXPORT, made once for the suite (tests/conftest.py); read only: `folder` copies it."""
    return default_export


@pytest.fixture
def folder(pristine, tmp_path):
    """A fresh copy of a good export folder, free to break."""
    return shutil.copytree(pristine, tmp_path / pristine.name)


def rewrite_manifest(folder, change):
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def rehash(folder, name):
    def change(manifest):
        manifest["files"][name].update(sha256=file_sha256(folder / name), size=(folder / name).stat().st_size)
    rewrite_manifest(folder, change)


def test_manifest_records_what_was_made(pristine):
    manifest = json.loads((pristine / "manifest.json").read_text())
    assert manifest["schema"] == MANIFEST_SCHEMA and manifest["schema_version"] == MANIFEST_SCHEMA_VERSION
    assert set(manifest["files"]) == {get_format(f).filename for f in default_formats()} | {"goldens.npz"}
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == file_sha256(pristine / name)
        assert entry["size"] == (pristine / name).stat().st_size
    assert manifest["files"]["model.onnx"]["opset"] == file_opset(pristine / "model.onnx")
    assert {"torch", "torchvision", "onnx", "onnxruntime", "python"} <= set(manifest["versions"])
    assert manifest["model"]["spec"] == "resnet18:frozen:body"
    assert manifest["model"]["weights"] == "synthetic:0" and len(manifest["model"]["weights_sha256"]) == 64
    assert manifest["input"] == {"name": "input", "shape": [1, 3, 64, 64], "dtype": "float32",
                                 "dynamic_axes": {"0": "batch", "2": "height", "3": "width"}}
    assert manifest["tolerance"] == {"mode": "auto", "factor": AUTO_FACTOR} and manifest["passed"] is True
    runs = {v["a"] for v in manifest["verdicts"]} | {v["b"] for v in manifest["verdicts"]} - {"oracle"}
    assert len(manifest["verdicts"]) == len(runs) * (len(runs) - 1) // 2 + len(runs)  # every pair, each vs oracle
    # every input the export judged on (they fit the goldens' budget): input 0 as `group.name`, input k `group@k.name`
    kept = manifest["goldens"]["inputs"]
    assert len(kept) == manifest["identity"]["input"]["count"]
    marks = [""] + [f"@{k}" for k in range(1, len(kept))]
    with np.load(pristine / "goldens.npz", allow_pickle=False) as goldens:
        assert sorted(goldens.files) == sorted([f"input{at}.input" for at in marks] + [
            f"{group}{at}.{output}" for at in marks for group in ("float32", "float64", "folded")
            for output in manifest["outputs"]])
        sets = [{g: {k: goldens[f"{g}{at}.{k}"] for k in manifest["outputs"]} for g in ("float32", "float64", "folded")}
                for at in marks]
    floors = pooled_floors([measure_floors(group["float32"], group["float64"], samples=[group["folded"]])
                            for group in sets])
    # exactly what `verify artifact` re-derives
    assert manifest["noise_floor"] == {name: floor.value for name, floor in floors.items()}


def test_good_folders_pass_every_check_named_by_manifest_or_folder(pristine, folder, tmp_path, monkeypatch):
    """One `verify artifact` of the good folder, named by its manifest.json, and of a copy, named by its folder:
    every check of both passes, each format's goldens run in each folder. A file a second shape's checks take as
    their reference is loaded once in each precision, whichever files it judges there (`_reference_runs`)."""
    from collections import Counter

    from verify.runtimes import Runtime

    loads: Counter = Counter()
    real = Runtime.load

    def counted(self, artifact):
        loads[(str(artifact.path), self.options.dtype)] += 1
        return real(self, artifact)

    monkeypatch.setattr(Runtime, "load", counted)
    result = invoke("artifact", pristine / "manifest.json", folder, "--json", tmp_path / "r.json",
                    TRUST)  # unsigned: TorchScript is code
    assert result.exit_code == 0, result.output
    assert str(pristine) in result.stdout and str(folder) in result.stdout
    data = json.loads((tmp_path / "r.json").read_text())
    assert all(c["passed"] for c in data["checks"])
    for where in (pristine, folder):
        names = [(c["runtime"], c["name"]) for c in data["checks"] if c["artifact"].startswith(str(where))]
        assert ("onnxruntime", "model.onnx: goldens float32") in names
        assert ("torchscript", "model.pt: goldens float64") in names
        assert "model.pt2: goldens float64" in {name for _, name in names}  # the .pt2 checked like the others
        assert ("onnxruntime", "model.onnx: shape 2x3x96x96") in names  # inside the dynamic axes
    assert loads and all(count == 1 for (path, dtype), count in loads.items() if dtype == "float64"), loads


def flip_byte(folder):
    path = folder / "model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def delete_file(folder):
    (folder / "model.pt").unlink()


def truncate(folder):
    path = folder / "model.onnx"
    path.write_bytes(path.read_bytes()[:1000])


def point_outside(folder):
    def change(manifest):
        manifest["files"]["../model.onnx"] = manifest["files"].pop("model.onnx")
    rewrite_manifest(folder, change)


def external_data_outside(folder):
    path = folder / "model.onnx"
    onnx.save_model(onnx.load(str(path)), str(path), save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    (folder / "weights.bin").rename(folder.parent / "weights.bin")
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../weights.bin"  # onnx refuses to write this itself; an attacker would not
    path.write_bytes(model.SerializeToString())
    rehash(folder, "model.onnx")  # only the external-data rule can catch it now


@pytest.mark.parametrize(("damage", "file", "reason"), [
    (flip_byte, "model.onnx", "sha256"),
    (delete_file, "model.pt", "missing"),
    (truncate, "model.onnx", "truncated"),
    (point_outside, "../model.onnx", "outside the artifact folder"),
    (external_data_outside, "model.onnx", "points outside"),  # onnx.checker or our own rule, whichever first
])
def test_damaged_folders_fail_naming_file_and_reason(folder, damage, file, reason):
    damage(folder)
    result = invoke("artifact", folder)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    failing = [line for line in result.stdout.splitlines() if "✗" in line]
    assert any(file in line and reason in line for line in failing), result.stdout


def test_another_model_fails_on_what_it_records_or_on_its_goldens(folder, tmp_path):
    """model.onnx swapped for another export's (other weights), its manifest entry (hash, exporter, opset) taken
    with it: integrity names the weights the file records; a forger who also rewrites that record is caught by the
    goldens. The other file is the legacy exporter's (seconds, not the dynamo translation's 8): what is checked is
    the weights it records and the outputs it computes, which either exporter's file carries."""
    other = invoke(*EXPORT, "--seed", "1", "--format", "onnx", "--onnx-exporter", "torchscript",
                   "--out", tmp_path / "other")
    assert other.exit_code == 0, other.output
    other_folder = tmp_path / "other" / "resnet18-frozen-body"
    shutil.copy(other_folder / "model.onnx", folder / "model.onnx")
    other_entry = json.loads((other_folder / "manifest.json").read_text())["files"]["model.onnx"]
    rewrite_manifest(folder, lambda manifest: manifest["files"]["model.onnx"].update(
        {key: other_entry[key] for key in get_format(other_entry["format"]).manifest_field_types}))
    rehash(folder, "model.onnx")
    result = invoke("artifact", folder, "--json", tmp_path / "r.json", TRUST)
    assert result.exit_code == 1
    checks = {(c["runtime"], c["name"]): c for c in json.loads((tmp_path / "r.json").read_text())["checks"]}
    assert "records weights 'synthetic:1', the manifest 'synthetic:0'" in checks[("integrity", "model.onnx")]["message"]
    assert checks[("torchscript", "model.pt: goldens float32")]["passed"] is True  # the other files still run

    model = onnx.load(str(folder / "model.onnx"))
    manifest = json.loads((folder / "manifest.json").read_text())
    for prop in model.metadata_props:  # the forger's edit: the file now claims the manifest's model
        meta = json.loads(prop.value)
        meta.update(weights=manifest["model"]["weights"], weights_sha256=manifest["model"]["weights_sha256"])
        prop.value = json.dumps(meta)
    onnx.save(model, str(folder / "model.onnx"))
    rehash(folder, "model.onnx")
    result = invoke("artifact", folder, "--json", tmp_path / "r.json", TRUST)
    assert result.exit_code == 1
    checks = {(c["runtime"], c["name"]): c for c in json.loads((tmp_path / "r.json").read_text())["checks"]}
    assert checks[("integrity", "model.onnx")]["passed"] is True
    assert checks[("onnxruntime", "model.onnx: goldens float32")]["passed"] is False
    assert checks[("torchscript", "model.pt: goldens float32")]["passed"] is True


def test_junit_and_markdown(folder, tmp_path):
    flip_byte(folder)
    result = invoke("artifact", folder, "--junit", tmp_path / "j.xml", "--markdown", tmp_path / "s.md",
                    "--json", tmp_path / "r.json")
    assert result.exit_code == 1
    checks = json.loads((tmp_path / "r.json").read_text())["checks"]
    root = ET.parse(tmp_path / "j.xml").getroot()
    assert root.tag == "testsuites"
    cases = root.findall("./testsuite/testcase")
    failures = root.findall("./testsuite/testcase/failure")
    assert int(root.get("tests")) == len(cases) == len(checks)
    assert int(root.get("failures")) == len(failures) == sum(not c["passed"] for c in checks) >= 1
    suite = root.find("testsuite")
    for attribute in ("name", "tests", "failures", "errors", "skipped", "time", "timestamp"):
        assert suite.get(attribute) is not None
    for case in cases:
        assert case.get("classname") and case.get("name") and float(case.get("time")) >= 0
    assert any("sha256" in f.get("message") for f in failures)
    text = (tmp_path / "s.md").read_text()
    assert text.startswith("## ❌ verify artifact") and "| " + " | ".join(ROWS_HEADER) + " |" in text
    assert text.count("❌ fail") == len(failures)


def test_preflight_cpu_go_and_latency_budget(pristine, tmp_path):
    result = invoke("preflight", pristine, "--provider", "cpu", "--runs", "5", "--json", tmp_path / "p.json")
    assert result.exit_code == 0, result.output
    assert "GO: model.onnx on CPUExecutionProvider" in result.stdout
    latency = [c for c in json.loads((tmp_path / "p.json").read_text())["checks"] if c["name"] == "latency"][0]
    assert 0 < latency["details"]["p50_ms"] <= latency["details"]["p90_ms"]
    assert len(latency["details"]["runs_ms"]) == 5
    slow = invoke("preflight", pristine, "--runs", "3", "--max-latency-ms", "0.0001")
    assert slow.exit_code == 1
    assert "NO-GO" in slow.stdout
    verdict = slow.stdout.strip().splitlines()[-1]  # over budget, and for nothing else: the goldens still match
    assert "goldens match" in verdict and verdict.endswith("; failed: latency"), verdict


def test_preflight_torchscript_runtime(pristine):
    result = invoke("preflight", pristine, "--runtime", "torchscript", "--runs", "2", TRUST)
    assert result.exit_code == 0, result.output
    assert "GO: model.pt on torch cpu" in result.stdout


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the machine without CUDA")
def test_preflight_cuda_without_cuda_exits_2(pristine):
    result = invoke("preflight", pristine, "--provider", "cuda")
    assert result.exit_code == 2
    assert "CUDA is not available" in result.stderr
    assert "GO" not in result.stdout


def test_preflight_refuses_a_tampered_folder(folder):
    flip_byte(folder)
    result = invoke("preflight", folder)
    assert result.exit_code == 1
    assert "NO-GO" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "NO-GO: model.onnx fails its integrity checks", result.stdout
    assert "does not match the manifest's" in result.stdout and "(modified)" in result.stdout, result.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["artifact", "nowhere"], "nowhere does not exist"),
    (["preflight", "nowhere"], "nowhere does not exist"),
])
def test_artifact_usage_errors(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke(*args)
    assert result.exit_code == 2 and message in result.stderr


# What the process tests need is a folder being written: the legacy ONNX exporter and no .pt2 (whose trace, save
# and load are most of an export on 2 cores) make it seconds.
FAST = ("--format", "torchscript", "--format", "onnx", "--onnx-exporter", "torchscript")


def export_process(out, *extra):
    return subprocess.Popen([sys.executable, "-m", "verify.cli", *EXPORT, *FAST, "--out", str(out), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_killed_export_leaves_no_folder_that_validates(tmp_path):
    process = export_process(tmp_path)
    deadline = time.monotonic() + 120
    staged = []
    while time.monotonic() < deadline and not staged:
        staged = [p for p in tmp_path.glob(".resnet18-frozen-body.staging-*") if (p / "model.pt").exists()]
        time.sleep(0.05)
    assert staged, "the export never started writing"
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    assert not (tmp_path / "resnet18-frozen-body").exists()
    assert not list(tmp_path.glob("*.lock")) and not list(tmp_path.glob(".*.lock"))  # the lock is no file
    for path in [tmp_path / "resnet18-frozen-body", *staged]:
        assert invoke("artifact", path).exit_code != 0
    # the next export cleans up after the killed one and publishes a folder that validates
    assert invoke(*EXPORT, *FAST, "--out", tmp_path).exit_code == 0
    assert [p.name for p in tmp_path.iterdir()] == ["resnet18-frozen-body"]
    assert invoke("artifact", tmp_path / "resnet18-frozen-body", TRUST).exit_code == 0


def test_kill_between_the_two_renames_keeps_the_previous_export(tmp_path):
    """A replacement killed after retiring the old folder and before renaming the new one in: the next
    export into that folder puts the old one back first, so nothing was lost at any moment but a rename."""
    from exporter.fsio import staged_folder

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    retired = tmp_path / f".model.retired-{dead.pid}-0000abcd"
    retired.mkdir()
    (retired / "manifest.json").write_text("old")
    seen = []
    with staged_folder(tmp_path / "model", may_replace=lambda final: seen.append(final.joinpath("manifest.json")
                                                                                 .read_text())) as staging:
        (staging / "manifest.json").write_text("new")
    assert seen == ["old"]  # restored, then judged by the caller before being replaced
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert (tmp_path / "model" / "manifest.json").read_text() == "new"


def test_two_exports_with_different_seeds_into_the_same_out_at_once(tmp_path):
    """Both race for one folder name: one publishes, the other refuses with a clear line; never a silent loss."""
    processes = {seed: export_process(tmp_path, "--seed", str(seed)) for seed in (0, 1)}
    results = {seed: (p.wait(timeout=300), p.stderr.read()) for seed, p in processes.items()}
    assert sorted(code for code, _ in results.values()) == [0, 2], results
    winner = next(seed for seed, (code, _) in results.items() if code == 0)
    _, refusal = results[1 - winner]
    assert "already holds a different export (seed" in refusal and "--overwrite" in refusal, refusal
    assert "Traceback" not in refusal
    assert [p.name for p in tmp_path.iterdir()] == ["resnet18-frozen-body"]  # no lock, staging or retired left
    manifest = json.loads((tmp_path / "resnet18-frozen-body" / "manifest.json").read_text())
    assert manifest["identity"]["seed"] == winner and manifest["model"]["weights"] == f"synthetic:{winner}"
    assert invoke("artifact", tmp_path / "resnet18-frozen-body", TRUST).exit_code == 0
