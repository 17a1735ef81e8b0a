"""Hunt 26b: a model against its own traced files. A TorchScript trace bakes a constant made from x.dtype in as float32
(explain called the pair another function at 1.5e-8 relative); a .pt2 creates `torch.arange(n, dtype=x.dtype)` in
float32 (its float64 run failed with a dtype mismatch and `compare` exited 2)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from tests.helpers import traced_file
from verify.cli import app
from verify.explain.localize import CONSTANT_ROUNDING_RTOL, EQUIVALENCE_RTOL

MODEL = '''
import torch
from torch import nn


class Const(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.scale = scale

    def forward(self, x):
        return self.conv(x) * x.new_tensor(self.scale)


class Anchors(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y @ torch.diag(torch.arange(y.shape[-1], dtype=x.dtype) * 0.1)


def const():
    torch.manual_seed(0)
    return Const(0.1).eval()


def off():
    torch.manual_seed(0)
    return Const(0.1 * (1 + 1e-4)).eval()


def anchors():
    torch.manual_seed(0)
    return Anchors().eval()
'''


@pytest.fixture
def models(tmp_path):
    import importlib.util

    path = tmp_path / "m.py"
    path.write_text(MODEL)
    spec = importlib.util.spec_from_file_location("hunt26b_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return path, module


def _explain(tmp_path, a: str, b: str) -> tuple[int, dict]:
    report = tmp_path / "e.json"
    result = CliRunner().invoke(app, ["explain", a, b, "--shape", "1x3x32x32", "--json", str(report)])
    return result.exit_code, json.loads(report.read_text()) if report.exists() else {"output": result.output}


def test_traced_float32_constant_is_the_same_function(models, tmp_path):
    path, module = models
    traced = traced_file(module.const, tmp_path / "const.pt")
    code, report = _explain(tmp_path, f"{path}:const", str(traced))
    rel = report["float64_difference"]["output0"]["max_rel"]
    assert EQUIVALENCE_RTOL < rel <= CONSTANT_ROUNDING_RTOL  # the trace's float32 constant, seen in float64
    assert code == 0, report["verdict"]
    assert report["how"] == "float32-floor" and "fixes in float32" in report["float64_note"]
    assert report["verdict"].startswith("equivalent within float32 rounding")


def test_traced_real_difference_stays_another_function(models, tmp_path):
    path, module = models
    traced = traced_file(module.off, tmp_path / "off.pt")  # the constant 1e-4 off: a real change, not its rounding
    code, report = _explain(tmp_path, f"{path}:const", str(traced))
    assert code == 1
    assert report["how"] == "float64" and report["float64_note"] is None
    assert report["float64_difference"]["output0"]["max_rel"] > CONSTANT_ROUNDING_RTOL


def test_pt2_creating_float32_runs_in_float64(models, tmp_path):
    from verify.runtimes.torch_common import created_in_float64

    path, module = models
    x = torch.randn(1, 3, 32, 32)
    target = tmp_path / "anchors.pt2"
    torch.export.save(torch.export.export(module.anchors(), (x,)), str(target))
    loaded = torch.export.load(str(target)).module().double()
    assert created_in_float64(loaded) == 1  # the arange, and nothing else
    torch.testing.assert_close(loaded(x.double()), module.anchors().double()(x.double()), rtol=0, atol=0)
    result = CliRunner().invoke(app, ["compare", f"{path}:anchors", str(target), "--shape", "1x3x32x32"])
    assert result.exit_code == 0, result.output
    assert "dtype" not in result.output


def test_traced_float32_creation_runs_in_float64(models, tmp_path):
    """The trace's float32 arange is cast to float64 where it is created (sweep 28d,
    verify/runtimes/torchscript.py created_in_float64_script): the file's float64 run exists and the pair is judged
    (it exited 2, 'this file fixes float32 inside')."""
    path, module = models
    traced = traced_file(module.anchors, tmp_path / "anchors.pt")  # TorchScript keeps the trace's float32 arange
    result = CliRunner().invoke(app, ["compare", f"{path}:anchors", str(traced), "--shape", "1x3x32x32"])
    assert result.exit_code == 0, result.output
    assert "dtype" not in result.output and "agree" in result.output
