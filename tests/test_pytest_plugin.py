"""The pytest plugin from the inside: a throwaway user test file run by pytester (in-process, nothing
installed; the plugin loaded with -p, its entry point blocked so an installed copy cannot register twice)."""

import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True, scope="module")
def _native_modules_kept_by_pytester():
    """pytester's in-process runs remove every module first imported during them from sys.modules, and an extension
    module imported a second time in one process aborts it: onnx's nanobind (SIGABRT, 'refusing to add duplicate
    key') when test_render_safety ran after this module, torch's `_inductor_test` library (RuntimeError 'Only a single
    TORCH_LIBRARY') when test_export did. pytester keeps here every module but the user test files it runs, and what
    the exports load natively is imported before any run."""
    import onnx  # noqa: F401
    import onnx_ir  # noqa: F401
    import onnxruntime  # noqa: F401
    import onnxscript  # noqa: F401
    import torch.onnx  # noqa: F401
    from _pytest import pytester

    def snapshot(self):
        return pytester.SysModulesSnapshot(preserve=lambda name: not name.split(".")[0].startswith(("test_",
                                                                                                     "conftest")))

    with pytest.MonkeyPatch.context() as patch:
        if hasattr(pytester.Pytester, "_Pytester__take_sys_modules_snapshot"):
            patch.setattr(pytester.Pytester, "_Pytester__take_sys_modules_snapshot", snapshot)
        yield

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_ARGS = ("-p", "verify.pytest_plugin", "-p", "no:backbone_verify")

USER_TESTS = '''
import torch
from torch import nn
from torch.nn import functional as F

from verify.pytest_plugin import assert_exports_agree as check_exports


class Embedder(nn.Module):
    """A small CNN whose features are L2-normalised, as retrieval models do."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 16, 3, stride=2, padding=1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"embedding": F.normalize(self.body(x), dim=1)}


class DeployPathEmbedder(Embedder):
    """A deployment path for the exporters that looks equivalent: rsqrt with a larger eps."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.body(x)
        if torch.jit.is_scripting():  # TorchScript compiles this branch only
            return {"embedding": y * torch.rsqrt((y * y).sum(1, keepdim=True) + 1e-3)}
        else:
            exporting = torch.onnx.is_in_onnx_export()
            deploy = y * torch.rsqrt((y * y).sum(1, keepdim=True) + 1e-3)
            return {"embedding": deploy if exporting else F.normalize(y, dim=1)}


def make(cls):
    torch.manual_seed(0)
    return cls().eval()


def test_correct_model(assert_exports_agree, tmp_path):
    report = assert_exports_agree(make(Embedder), torch.randn(1, 3, 32, 32))
    assert report.passed and (tmp_path / "test_correct_model" / "manifest.json").is_file()


def test_helper_with_its_own_folder(tmp_path):
    model = make(Embedder).train()
    report = check_exports(model, torch.randn(1, 3, 32, 32), out=tmp_path / "mine", formats=["onnx"],
                           onnx_exporter="torchscript", name="embedder")
    assert report.passed and (tmp_path / "mine" / "embedder" / "model.onnx").is_file()
    assert model.training and next(model.parameters()).dtype == torch.float32  # copied: left as it was


def test_tampered_export(assert_exports_agree):
    assert_exports_agree(make(DeployPathEmbedder), torch.randn(1, 3, 32, 32), formats=["torchscript", "onnx"],
                         onnx_exporter="torchscript")
'''


@pytest.fixture
def run_user_tests(pytester):
    pytester.makepyfile(test_user_model_exports=USER_TESTS)
    return pytester.runpytest(*PLUGIN_ARGS, "-q")


def test_plugin_passes_a_correct_model_and_fails_a_tampered_export_with_the_table(run_user_tests):
    result = run_user_tests
    result.assert_outcomes(passed=2, failed=1)
    text = result.stdout.str()
    failure = text[text.index("test_tampered_export"):]
    assert "AssertionError: exports of test_tampered_export disagree: " in failure
    assert "on output 'embedding'" in failure and "report " in failure
    for expected in ("x floor", "torchscript vs eager", "onnxruntime vs eager", "✗ differ", "embedding",
                     "beyond rounding", "pairs disagree"):
        assert expected in failure, expected
    assert "\x1b[" not in failure  # plain text, no terminal colour codes


def test_plugin_module_imports_nothing_heavy():
    """Installed, the plugin loads in every pytest run of the user's: it must not import torch at startup."""
    code = "import sys, verify.pytest_plugin; print(sorted(m for m in ('torch', 'numpy', 'onnx') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": ""}).stdout.strip()
    assert out == "[]"


def test_entry_point_is_declared():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"backbone_verify": "verify.pytest_plugin"}


FAILING_USER_TESTS = '''
import torch
from torch import nn

from verify.pytest_plugin import assert_exports_agree as check_exports


class Unscriptable(nn.Module):
    def forward(self, x):
        double = lambda t: t * 2  # noqa: E731 (TorchScript compiles no lambda)
        return {"out": double(x)}


def small(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3)).eval()


def test_export_fails(assert_exports_agree):
    assert_exports_agree(Unscriptable(), torch.randn(1, 3, 8, 8), formats=["torchscript"])


def test_folder_holds_another_export(tmp_path):
    options = dict(out=tmp_path, name="net", formats=["onnx"], onnx_exporter="torchscript")
    check_exports(small(0), torch.randn(1, 3, 8, 8), **options)
    check_exports(small(1), torch.randn(1, 3, 8, 8), **options)


def test_bad_example(assert_exports_agree):
    assert_exports_agree(small(0), torch.randn(3, 8, 8))
'''


def test_plugin_failures_before_a_verdict_are_one_line_with_what_to_do(pytester):
    """An export that cannot be made, an out folder holding another export, a bad example: each test fails
    with one line naming what failed and what to do, and no traceback into the plugin's own code."""
    pytester.makepyfile(test_failing_user_exports=FAILING_USER_TESTS)
    # a subprocess: a second in-process run after the one above aborted torch (SIGABRT) on this machine
    result = pytester.runpytest_subprocess(*PLUGIN_ARGS, "-q", "-p", "no:randomly", "-n", "0")
    result.assert_outcomes(failed=3)
    text = result.stdout.str()
    expected = {"test_export_fails": ("exporting test_export_fails failed, so nothing was compared",
                                      "torch.jit.script", "trace=True"),
                "test_folder_holds_another_export": ("called wrongly", "already holds a different export",
                                                     "another out= or name="),
                "test_bad_example": ("called wrongly", "one float NCHW tensor")}
    for test, words in expected.items():
        section = text[text.index(f"_ {test} _"):].splitlines()[1]  # the line under the test's header
        assert all(word in section for word in words), (test, section)
    for noise in ("Traceback", "During handling", "direct cause", "verify/api.py", "verify/pipeline/stages.py"):
        assert noise not in text, noise
