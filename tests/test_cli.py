"""The CLI through typer's CliRunner: exit codes and messages, for good and bad arguments."""

import json
import shutil

import pytest

from tests.conftest import SMALL, SMALL_SHAPE
from tests.helpers import invoke
from verify.api import RunSettings
from verify.folder.preflight import PreflightOptions
from verify.runtimes import RuntimeOptions, runtime_class

SMALL_ARGS = ["--backbone", SMALL, "--shape", "x".join(map(str, SMALL_SHAPE))]
"""What tests/conftest.py default_export_run exports (`exported`)."""


@pytest.fixture
def exported(default_export_run):
    """`verify export` of SMALL_ARGS (the default norm, frozen; every default format) with --json: the suite's one
    (tests/conftest.py default_export_run); (folder, JSON report, CLI result), read only."""
    return default_export_run


def test_export_passes_and_writes_json(exported):
    folder, report, result = exported
    runs = len(report["runs"])
    assert f"all {runs * (runs - 1) // 2 + runs} pairs agree" in result.stdout
    assert any("Exporting" in line and "onnx" in line  # progress goes to stderr (onnx in the background or not,
               for line in result.stderr.splitlines())  # as the machine's idle cores decide)
    assert report["passed"] is True and report["command"] == "export"
    assert (folder / "model.onnx").is_file() and (folder / "model.pt").is_file()


def test_compare_two_artifacts(exported):
    folder, _, _ = exported
    result = invoke("compare", folder / "model.onnx", folder / "model.pt")
    assert result.exit_code == 0, result.output
    assert "A vs B" in result.stdout


def test_compare_onnx_copied_alone_uses_its_recorded_shape(exported, tmp_path):
    folder, _, _ = exported
    lone = tmp_path / "elsewhere" / "backbone.onnx"
    lone.parent.mkdir()
    shutil.copy(folder / "model.onnx", lone)
    result = invoke("compare", lone, "resnet18:frozen:body", "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r.json").read_text())["input"]["shape"] == [1, 3, 64, 64]


def test_compare_specs_that_differ_exits_1():
    result = invoke("compare", "resnet18:batch:body", "resnet18:frozen-eps0:body", "--shape", "1x3x64x64")
    assert result.exit_code == 1, result.output
    assert "beyond rounding" in result.stdout


def test_seed_question_spec_pair_agrees_on_layer4(tmp_path):
    result = invoke("compare", "resnet18:batch:trunk", "resnet18:frozen:body", "--shape", "1x3x64x64",
                    "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert "layer4" in result.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    [pair] = [p for p in report["pairs"] if p["kind"] == "runtime"]
    assert [o["name"] for o in pair["outputs"]] == ["layer4"]  # judged on what both sides have
    assert any(n.startswith("B alone has layer1, layer2, layer3") for n in report["notes"]), report["notes"]


@pytest.mark.parametrize(("args", "message"), [
    (["export", "--backbone", "vgg16"], "Unknown backbone 'vgg16'; choose one of: resnet18"),
    (["export", "--norm", "layernorm"], "Unknown norm 'layernorm'; choose one of: batch, frozen"),
    (["export", "--view", "head"], "Unknown view 'head'"),
    (["export", *SMALL_ARGS, "--weights", "imagenet"], "not in the local cache"),
    (["export", *SMALL_ARGS, "--weights", "missing.safetensors"], "does not exist"),
    (["export", *SMALL_ARGS, "--decimal", "5", "--atol", "1e-3"], "either --decimal or --rtol/--atol"),
    (["export", "--backbone", "resnet18", "--shape", "224x224"], "Bad shape"),
    (["export", *SMALL_ARGS, "--onnx-exporter", "tf2onnx"], "'tf2onnx' is not one of 'dynamo', 'torchscript'"),
    (["export", *SMALL_ARGS, "--runtime", "tensorrt"], "Unknown runtime 'tensorrt'"),
    (["export", *SMALL_ARGS, "--device", "tpu"], "'tpu' is not one of 'cpu', 'cuda'"),
    (["compare", "missing.onnx", "resnet18"], "missing.onnx does not exist"),
    (["compare", "model.tflite", "resnet18"], "Cannot tell the format"),
    (["compare", "resnet18:frozen:body", "resnet18:frozen:fpn", "--shape", "1x3x32x32"], "share no output"),
    (["compare", "resnet18:batch:body", "resnet18:frozen:body", "--shape", "1x1x32x32"],
     "input channels (RGB), the shape 1x1x32x32 gives it 1"),
    (["explain", "resnet18:batch:body", "resnet18:frozen:body", "--shape", "1x1x32x32"], "input channels (RGB)"),
    (["compare", "resnet18", "resnet18", "--shape", "1x3x32x32", "--json", "."], ". is a directory"),
    (["export", *SMALL_ARGS, "--factor", "3", "--decimal", "4"], "--factor sets the auto mode"),
])
def test_bad_arguments_exit_2_with_one_line(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()[-1]) > 10


def test_corrupt_onnx_exits_2(exported, tmp_path):
    folder, _, _ = exported
    data = bytearray((folder / "model.onnx").read_bytes())
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(bytes(data[: len(data) // 3]))
    result = invoke("compare", bad, "resnet18:frozen:body")
    assert result.exit_code == 2, result.output
    assert "corrupt.onnx" in result.stderr and "onnx.checker" in result.stderr
    assert "Traceback" not in result.output


def test_list_shows_registries():
    result = invoke("list")
    assert result.exit_code == 0
    for name in ("resnet50", "wide_resnet50_2", "frozen-eps0", "fused", "trunk", "onnxruntime"):
        assert name in result.stdout


def test_help_lists_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    assert "export" in result.stdout and "compare" in result.stdout


def test_foreign_onnx_without_our_metadata_uses_its_graph_input(tmp_path):
    """An ONNX file from elsewhere: input name and static shape read from the graph itself. The file alone, from the
    legacy exporter (which exporter wrote it is not the question; the dynamo one's translation is most of an export)."""
    import onnx

    out = tmp_path / "static"
    assert invoke("export", "--norm", "frozen", "--backbone", "resnet18", "--shape", "1x3x48x48", "--static",
                  "--format", "onnx", "--onnx-exporter", "torchscript", "--runtime", "onnxruntime",
                  "--out", out).exit_code == 0
    model = onnx.load(str(out / "resnet18-frozen-body" / "model.onnx"))
    del model.metadata_props[:]
    model.graph.input[0].name = "images"
    for node in model.graph.node:
        node.input[:] = ["images" if name == "input" else name for name in node.input]
    onnx.save(model, str(tmp_path / "foreign.onnx"))
    result = invoke("compare", tmp_path / "foreign.onnx", "resnet18:frozen:body", "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r.json").read_text())["input"]["shape"] == [1, 3, 48, 48]


def test_empty_input_file_is_refused(tmp_path):
    import numpy as np

    np.save(tmp_path / "empty.npy", np.zeros((0, 3, 32, 32), np.float32))
    result = invoke("compare", "resnet18", "resnet18", "--input", tmp_path / "empty.npy")
    assert result.exit_code == 2 and "empty.npy holds an empty array (shape 0x3x32x32)" in result.stderr


def test_an_unexpected_failure_is_one_line_and_exit_2(monkeypatch):
    import verify.api

    def broken(*args, **kwargs):
        raise ValueError("something nobody planned for\nsecond line")

    monkeypatch.setattr(verify.api, "compare", broken)
    result = invoke("compare", "resnet18", "resnet18")
    assert result.exit_code == 2
    assert "unexpected ValueError: second line" in result.stderr and "VERIFY_DEBUG" in result.stderr
    assert "Traceback" not in result.output


def test_help_imports_nothing_heavy_and_keeps_bracketed_defaults():
    """`verify --help` stays instant because no heavy library is imported to print it."""
    import subprocess
    import sys

    code = ("import sys; from verify.cli import app; from typer.testing import CliRunner; "
            "r = CliRunner().invoke(app, ['export', '--help']); print(r.stdout); "
            "print(sorted(m for m in ('torch', 'numpy', 'onnx', 'onnxruntime', 'torchvision') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    text = " ".join(result.stdout.split())
    assert "[default: the input's, else recorded, else 1x3x224x224]" in text  # not eaten as rich markup
    assert "[default: each framework's own default]" in text


def test_check_lines_read_cleanly():
    import io

    from rich.console import Console

    from verify.folder.checks import Check, CheckReport, render_checks

    report = CheckReport("artifact", [Check("folder", "integrity", "model.onnx", True, "sha256 ok"),
                                      Check("folder", "onnxruntime", "goldens", False, "3.0x\nfloor")])
    buffer = io.StringIO()
    render_checks(report, Console(file=buffer, width=40))
    lines = buffer.getvalue().splitlines()
    assert lines[1] == "  ✓ integrity · model.onnx: sha256 ok"
    assert lines[2] == "  ✗ onnxruntime · goldens: 3.0x floor"
    assert "-[" not in buffer.getvalue()


@pytest.mark.parametrize(("build", "message"), [
    (lambda: RunSettings(seed=-1), "seed must be between 0"),
    (lambda: RunSettings(runtime=RuntimeOptions().replacing(runtime_class("onnxruntime"), opt_level="max")),
     "--ort-opt-level 'max' is not one of"),
    (lambda: RunSettings(runtime=RuntimeOptions(device="tpu")), "Unknown device"),
    (lambda: PreflightOptions(runs=0), "--runs must be between 1"),
    (lambda: PreflightOptions(warmup=10**9), "--warmup must be"),
    (lambda: PreflightOptions(max_latency_ms=float("nan")), "must be a finite number"),
    (lambda: PreflightOptions(provider="tpu"), "Unknown provider"),
])
def test_the_library_refuses_what_the_cli_refuses(build, message):
    from exporter.errors import UsageError

    with pytest.raises(UsageError, match=message):
        build()


def test_same_export_again_replaces_silently_and_overwrite_replaces_another(tmp_path):
    args = ["export", "--backbone", "resnet18", "--shape", "1x3x32x32", "--onnx-exporter", "torchscript",
            "--runtime", "eager", "--runtime", "onnxruntime", "--out", tmp_path]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    manifest = tmp_path / "resnet18-frozen-body" / "manifest.json"
    identity = json.loads(manifest.read_text())["identity"]
    assert identity["seed"] == 0 and identity["spec"] == "resnet18:frozen:body"
    assert identity["export"]["onnx"]["exporter"] == "torchscript" and identity["input"]["shape"] == [1, 3, 32, 32]
    again = invoke(*args)
    assert again.exit_code == 0 and "error" not in again.stderr
    assert json.loads(manifest.read_text())["identity"] == identity
    other = invoke(*args, "--seed", "1", "--overwrite")
    assert other.exit_code == 0, other.output
    assert json.loads(manifest.read_text())["identity"]["seed"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["resnet18-frozen-body"]


def test_cli_enums_match_the_library():
    """The CLI's device choices are the library's: a device added there must be added here."""
    from verify.cli import options
    from verify.folder.preflight import PROVIDERS
    from verify.runtimes import DEVICES

    assert [e.value for e in options.Device] == list(DEVICES) == list(PROVIDERS)


def test_runtimes_without_formats_export_what_they_run_and_an_unrun_format_is_refused(tmp_path):
    """--runtime onnxruntime alone exports the ONNX file only (not files that nobody would run); a --format
    that no --runtime runs is refused before any work: it would sit unverified in a folder that passed."""
    result = invoke("export", "-b", "resnet18", "--shape", "1x3x32x32", "--onnx-exporter", "torchscript",
                    "--runtime", "onnxruntime", "--out", tmp_path / "a")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "a" / "resnet18-frozen-body" / "manifest.json").read_text())
    assert {entry["format"] for entry in manifest["files"].values() if entry["format"] != "goldens"} == {"onnx"}

    refused = invoke("export", "-b", "resnet18", "--shape", "1x3x32x32", "--runtime", "eager", "--format", "onnx",
                     "--out", tmp_path / "b")
    assert refused.exit_code == 2 and "No --runtime runs the exported onnx" in refused.stderr
    assert not (tmp_path / "b").exists()

    nothing = invoke("export", "-b", "resnet18", "--shape", "1x3x32x32", "--runtime", "eager", "--out", tmp_path / "c")
    assert nothing.exit_code == 2 and "Nothing to export" in nothing.stderr and "Building" not in nothing.stderr
