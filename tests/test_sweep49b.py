"""Sweep 49b: dense-prediction and upsampling models as users' models (tests/data/sweep49b_models.py,
bench/sweep49b_models.py), their correct exports by both ONNX exporters and seeded bugs in their files. Each test failed
before its fix:

- a correct dynamic .pt2 of a bicubic `F.interpolate(scale_factor=2)` was refused on load ("a symbolic expression
  ("Max(Integer(1), TruncToInt(Mul(Float('2.0', precision=53), ...") holds a string outside Symbol('name')"), so
  `verify export --model` of a U-Net upsampling bicubic exited 2: sympy writes a float as `Float('2.0', precision=53)`,
  a numeral in a string, which the .pt2 scan took for code (exporter/formats/pt2.py `_check_expression`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from exporter.errors import ArtifactError
from exporter.formats.program import export_program
from exporter.formats.pt2 import _check_expression, _symbolic_names, load_program


class Bicubic(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="bicubic", align_corners=False))


def test_a_dynamic_bicubic_upsample_loads(tmp_path: Path):
    """Before: refused on load, its sizes holding `Float('2.0', precision=53)`. After: it loads and computes the
    model's own values at another size inside its dynamic axes."""
    model = Bicubic().eval()
    path = tmp_path / "model.pt2"
    torch.export.save(export_program(model, torch.randn(1, 3, 8, 8), True, "bicubic"), str(path))
    program = load_program(path)
    x = torch.randn(2, 3, 6, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(program(x), model(x))


@pytest.mark.parametrize("text", ["Float('2.0; 1')", "Float('os')", "Float(Symbol('s0'), 'x')", "Float('2.0' + 'e1')",
                                  "Float('\uff12')", f"Float('{'1' * 4301}')"])
def test_a_float_holds_only_a_numeral(text: str):
    """The other side of the same fix: a string in a Float that is not one numeral, or one outside its first argument,
    is still refused."""
    with pytest.raises(ArtifactError):
        _check_expression(Path("model.pt2"), text, _symbolic_names(), "symbolic expression")
