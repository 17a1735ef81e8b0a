"""Hunt 16a: matrix options, artifact/preflight options and the pytest plugin, attacked (each defect has a test
here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from exporter.errors import UsageError
from tests.helpers import invoke

REPO = Path(__file__).resolve().parent.parent
TINY_FACTORY = f"{REPO / 'tests' / 'data' / 'tiny.py'}:make"


def _no_matrix_run(monkeypatch):
    import verify.matrix

    def refuse(*args, **kwargs):
        raise AssertionError("the matrix ran")

    monkeypatch.setattr(verify.matrix, "run_matrix", refuse)


@pytest.mark.parametrize("weights", ["file", "imagenet"])
def test_matrix_refuses_weights_beside_a_user_model_before_any_cell(tmp_path, monkeypatch, weights):
    """Before: `verify matrix -b resnet18 --model tiny.py:make --weights r18.pth` ran and judged every backbone cell
    (7.4 s for resnet18:batch:body at 1x3x32x32), then failed the model's cell with "--weights ... applies to
    registered backbones" (an error cell, `✗ 1 of 2 cells agree, 1 failed to run`). Now refused in one line, exit 2,
    before any cell runs, as `verify export --model F --weights W` and `verify matrix --model F --weights W` (no -b)
    refuse it: the run's settings, recorded once for every row, would name weights the model's row never loaded."""
    _no_matrix_run(monkeypatch)
    if weights == "file":
        weights = tmp_path / "r18.pth"
        weights.write_bytes(b"not read")
    result = invoke("matrix", "-b", "resnet18", "-n", "batch", "--model", TINY_FACTORY, "--weights", weights,
                    "--shape", "1x3x32x32", "--no-cache")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "brings its own weights" in lines[0] and "two matrix runs" in lines[0], result.output
    assert "unexpected" not in result.output


def test_matrix_request_refuses_weights_beside_a_user_model():
    """The same refusal in the Python API (MatrixRequest.create), before any cell request is made."""
    from verify.api import RunSettings
    from verify.matrix import MatrixRequest

    with pytest.raises(UsageError, match="brings its own weights"):
        MatrixRequest.create(["resnet18"], ["batch"], models=[TINY_FACTORY], settings=RunSettings(weights="imagenet"))
    request = MatrixRequest.create(["resnet18"], ["batch"], models=[TINY_FACTORY])  # the factory's weights: fine
    assert request.models and request.backbones == ("resnet18",)


@pytest.fixture(scope="module")
def torchscript_folder(module_tmp):
    """resnet18:batch:body at 1x3x32x32, TorchScript only: a folder with no ONNX file."""
    from exporter.export import ExportOptions
    from exporter.spec import ModelSpec
    from verify.api import RunSettings, verify_export

    out = module_tmp("ts-only")
    report = verify_export(ModelSpec("resnet18", "batch", "body"), RunSettings(shape=(1, 3, 32, 32), samples=1),
                           out=out, export=ExportOptions(formats=("torchscript",)))
    assert report.passed
    return out / "resnet18-batch-body"


def test_artifact_refuses_ort_opt_level_for_folders_without_an_onnx_file(torchscript_folder, monkeypatch):
    """Before: `verify artifact FOLDER --ort-opt-level basic --trust-unsigned-code` on a folder holding model.pt and
    no ONNX file hashed and ran everything, "all 11 checks passed", exit 0: an option no check read. Now refused in one
    line (exit 2) from the manifests alone, before any file is hashed; the same in `validate()`."""
    import verify.folder.validate as validate_module
    from verify.folder.validate import validate
    from verify.runtimes import RuntimeOptions, runtime_class

    def refuse(*args, **kwargs):
        raise AssertionError("a folder was checked")

    monkeypatch.setattr(validate_module, "check_integrity", refuse)
    result = invoke("artifact", torchscript_folder, "--ort-opt-level", "basic", "--trust-unsigned-code")
    assert result.exit_code == 2, result.output
    assert result.output.strip().count("\n") == 0 and "drop --ort-opt-level" in result.output, result.output
    options = RuntimeOptions(plugins={"onnxruntime": runtime_class("onnxruntime").Options(opt_level="basic")})
    with pytest.raises(UsageError, match="drop --ort-opt-level"):
        validate([torchscript_folder], options, trust_unsigned_code=True)


def test_artifact_takes_ort_opt_level_when_one_folder_holds_an_onnx_file(torchscript_folder, default_export):
    """The refusal is by what the folders hold: beside a folder with model.onnx, the option is read (and the
    TorchScript folder is still checked)."""
    result = invoke("artifact", torchscript_folder, default_export, "--ort-opt-level", "basic",
                    "--trust-unsigned-code")
    assert result.exit_code == 0, result.output
    assert "onnxruntime(opt=basic) · model.onnx" in result.output and "torchscript · model.pt" in result.output


PLUGIN_USER_TEST = '''
import logging

import torch
from torch import nn


class Exported(nn.Module):
    """torch.export takes another branch: the .pt2 file computes 1% more than eager."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        if torch.compiler.is_exporting():
            y = y * 1.01
        return y


def test_disagrees(assert_exports_agree):
    logging.getLogger("users.own").warning("the user's own warning")
    torch.manual_seed(0)
    trace = logging.getLogger("torch.__trace")
    before = list(trace.handlers)
    try:
        assert_exports_agree(Exported().eval(), torch.randn(1, 3, 16, 16), formats=["pt2"])
    finally:
        assert list(trace.handlers) == before  # put back as they were
'''


def test_plugin_failure_log_holds_no_torch_tracer_debug_lines(tmp_path):
    """Before: a failing `assert_exports_agree` (formats=["pt2"]) showed, under "Captured log call", the user's own
    warning and then 54 (torchscript + pt2) lines `DEBUG torch.__trace:structured.py:28` and the like, empty: pytest
    9.1 attaches its capture handlers to every non-propagating logger, and torch's structured-trace logger is one,
    always at DEBUG. Now the plugin takes them off that logger while its own exports run: the verdict and the user's
    own log lines remain."""
    (tmp_path / "test_user.py").write_text(PLUGIN_USER_TEST)
    env = {"PYTHONPATH": str(REPO), "PATH": "", "HOME": str(tmp_path), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "c")}
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "verify.pytest_plugin", "-p", "no:backbone_verify",
                           "-p", "no:randomly", "-p", "no:cacheprovider", "-q", "test_user.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    text = done.stdout
    assert done.returncode == 1, text + done.stderr
    assert "AssertionError: exports of test_disagrees disagree: exported vs eager" in text, text
    assert "Captured log call" in text and "the user's own warning" in text, text
    captured = text[text.index("Captured log call"):]
    assert "torch.__trace" not in captured and "DEBUG" not in captured, captured


@pytest.mark.parametrize("value", ["inf", "1e309"])
def test_matrix_refuses_a_timeout_that_never_ends(monkeypatch, value):
    """Before: `verify matrix --model tiny.py:make --timeout inf` passed typer's `min=1`, started the model's worker,
    then ended in "unexpected OverflowError: cannot convert float infinity to integer" (the workers' wait), exit 2;
    `verify export --timeout inf` was refused as "must be a finite number". Now the same one line, before any work."""
    _no_matrix_run(monkeypatch)
    result = invoke("matrix", "--model", TINY_FACTORY, "--shape", "1x3x16x16", "--no-cache", "--timeout", value)
    assert result.exit_code == 2, result.output
    assert "must be a finite number" in result.output and "unexpected" not in result.output


def test_run_matrix_refuses_a_timeout_that_is_no_finite_number():
    """The Python API: run_matrix(timeout=inf) reached the same OverflowError; refused before any cell now."""
    from verify.matrix import MatrixRequest, run_matrix

    request = MatrixRequest.create(models=[TINY_FACTORY])
    for value in (float("inf"), "5", 0):
        with pytest.raises(UsageError, match="timeout must be"):
            run_matrix(request, timeout=value)


def test_matrix_with_a_timeout_of_weeks_runs_its_cells():
    """Before: `--timeout 3e6` (35 days, finite) ended in "unexpected OverflowError: timeout is too large" once the
    worker ran (the OS wait takes at most ~24 days). Now the workers are waited for in steps of WAIT_CAP_S."""
    result = invoke("matrix", "--model", TINY_FACTORY, "--shape", "1x3x16x16", "--no-cache", "--format", "onnx",
                    "--onnx-exporter", "torchscript", "--timeout", "3e6")  # the wait, not the exporter, is the subject
    assert result.exit_code == 0, result.output
    assert "unexpected" not in result.output and "1 of 1 cells agree" in result.output
    from verify.matrix.workers import WAIT_CAP_S

    assert WAIT_CAP_S * 1000 < 2**31 - 1  # poll() takes milliseconds as a C int


def _plugin_failure(tmp_path, module, example, **options) -> str:
    from verify.pytest_plugin import assert_exports_agree

    with pytest.raises(pytest.fail.Exception) as failed:
        assert_exports_agree(module, example, out=tmp_path, **options)
    return str(failed.value)


def _conv():
    import torch

    return torch.nn.Conv2d(3, 4, 3).eval()


def _casts_inside():
    """A module whose float64 run returns float32 (it casts inside): the auto tolerance has no oracle."""
    import torch

    class Casts(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(1, 4, 2, 2) + 0 * x.sum()

    return Casts().eval()


@pytest.mark.parametrize("case", ["nan", "empty", "casts", "opset", "onnx_exporter", "runtimes", "cuda"])
def test_plugin_failures_name_the_plugins_arguments_not_the_clis_flags(tmp_path, case):
    """Before: a plugin failure named CLI flags the plugin does not take: "... pass --rtol/--atol or --decimal" (a
    model that casts inside), "Input /tmp/.../Net-input.npy holds 1 Inf of 768 values; ... pass another --input" (a
    file the plugin wrote itself, left behind), "drop --opset or add --format onnx", "drop --onnx-exporter ...",
    "add --runtime torchscript, or leave out --format torchscript", "drop --device cuda". Now the words are the
    plugin's arguments (tolerance=..., another example, opset, 'onnx' to formats, device="cuda"), and a refused
    example is refused before anything is written."""
    import torch

    from tests.conftest import cuda_available

    if case == "cuda" and cuda_available():
        pytest.skip("a GPU is here: device='cuda' runs")
    x = torch.randn(1, 3, 16, 16)
    if case == "nan":
        x[0, 0, 0, 0] = float("inf")
    arguments = {
        "nan": (_conv(), x, {}, "another example"),
        "empty": (_conv(), torch.randn(0, 3, 16, 16), {}, "is empty"),
        "casts": (_casts_inside(), x, {"formats": ["torchscript"]}, "tolerance=Tolerance.from_options("),
        "opset": (_conv(), x, {"formats": ["torchscript"], "opset": 17}, "drop opset or add 'onnx' to formats"),
        "onnx_exporter": (_conv(), x, {"formats": ["torchscript"], "onnx_exporter": "torchscript"},
                          "drop onnx_exporter or add 'onnx' to formats"),
        "runtimes": (_conv(), x, {"formats": ["torchscript", "onnx"], "runtimes": ["onnxruntime"]},
                     "add 'torchscript' to runtimes, or leave 'torchscript' out of formats"),
        "cuda": (_conv(), x, {"formats": ["torchscript"], "device": "cuda"}, 'drop device="cuda"'),
    }
    module, example, options, expected = arguments[case]
    message = _plugin_failure(tmp_path, module, example, **options)
    assert expected in message and " --" not in message, message
    if case in ("nan", "empty"):
        assert "Input example" in message and not any(tmp_path.iterdir())


def test_plugin_refuses_what_is_not_a_module(tmp_path):
    """Before: `assert_exports_agree(lambda x: x * 2, x, ...)` failed with "function() returned a tuple of 2 (function,
    Tensor); expected an nn.Module or a (module, example_input) tuple": the function was taken for a factory."""
    import torch

    message = _plugin_failure(tmp_path, lambda x: x * 2, torch.randn(1, 3, 16, 16), formats=["torchscript"])
    assert "module must be a torch.nn.Module" in message and "got function" in message, message


@pytest.mark.parametrize("command", ["export", "matrix"])
def test_cache_dir_with_no_cache_is_refused(tmp_path, monkeypatch, command):
    """Before: `--cache-dir D --no-cache` (export and matrix) ran with no cache and dropped D without a word: an option
    nothing read. Now one line, exit 2, before any work."""
    _no_matrix_run(monkeypatch)
    own = ["--format", "onnx", "--out", tmp_path / "out"] if command == "export" else []
    result = invoke(command, "-b", "resnet18", "-n", "batch", "--shape", "1x3x32x32", *own,
                    "--cache-dir", tmp_path / "cache", "--no-cache")
    assert result.exit_code == 2, result.output
    assert "names the cache that --no-cache turns off" in result.output and not (tmp_path / "out").exists()


def test_export_with_the_cache_turned_off_by_the_environment_stores_nothing(tmp_path, monkeypatch):
    """Before: `BACKBONE_VERIFY_NO_CACHE=1 verify export ... --cache-dir D` stored its ONNX export in D (and read it on
    the next run), where the README says the variable computes everything for matrix and export, and the matrix did
    ignore D. Now export computes everything too."""
    from verify.cache import ENV_OFF, Cache

    monkeypatch.setenv(ENV_OFF, "1")
    folder = tmp_path / "cache"
    result = invoke("export", "-b", "resnet18", "-n", "batch", "--shape", "1x3x32x32", "--samples", "1", "--format",
                    "onnx", "--onnx-exporter", "torchscript", "--out", tmp_path / "out", "--cache-dir", folder)
    assert result.exit_code == 0, result.output
    assert not folder.exists() or not any(Cache(folder).info()["entries"].values())


def test_folder_checks_refuse_a_trust_flag_that_is_not_a_bool(torchscript_folder):
    """Before: `validate([folder], trust_unsigned_code="false")` (a value read from the environment) was truthy: the
    unsigned folder's model.pt, a file whose loading can run code, was loaded and run ("all 11 checks passed");
    `preflight(..., trust_unsigned_code="no")` the same, and `rebuild="no"` rebuilt. Now a TypeError before any work,
    as `layers="yes"` already was."""
    from verify.folder.preflight import PreflightOptions, preflight
    from verify.folder.validate import validate

    with pytest.raises(TypeError, match="trust_unsigned_code must be True or False"):
        validate([torchscript_folder], trust_unsigned_code="false")
    with pytest.raises(TypeError, match="rebuild must be True or False"):
        validate([torchscript_folder], rebuild="no")
    with pytest.raises(TypeError, match="trust_unsigned_code must be True or False"):
        preflight(torchscript_folder, PreflightOptions(runtime="torchscript", runs=1, warmup=0),
                  trust_unsigned_code="no")
    with pytest.raises(TypeError, match="rebuild must be True or False"):
        PreflightOptions(rebuild="no")
    with pytest.raises(TypeError, match="tf32 must be True, False or None"):
        PreflightOptions(provider="cuda", tf32="yes")


def test_folder_checks_refuse_options_of_the_wrong_kind_and_tf32_off_cuda(torchscript_folder):
    """Before: `validate(folder, "onnxruntime")` and `preflight(folder, "cpu")` ended in "AttributeError: 'str' object
    has no attribute 'plugins'" / "'weights_file'"; `validate(..., RuntimeOptions(tf32=True))` on the CPU ignored
    tf32 and passed, where the CLI refuses --tf32 off CUDA."""
    from verify.folder.preflight import preflight
    from verify.folder.validate import validate
    from verify.runtimes import RuntimeOptions

    with pytest.raises(TypeError, match="options must be a verify.runtimes.RuntimeOptions"):
        validate(torchscript_folder, "onnxruntime")
    with pytest.raises(TypeError, match="options must be a verify.folder.preflight.PreflightOptions"):
        preflight(torchscript_folder, "cpu")
    with pytest.raises(UsageError, match="sets TF32 on CUDA"):
        validate([torchscript_folder], RuntimeOptions(tf32=True), trust_unsigned_code=True)
