"""Shapes 48: a --input folder of several sizes, exported with dynamic axes. torch.export asks of each stage's size
whether it is 1 and keeps the answer as a guard, so resnet18 traced at 32 px (its last stage 1x1) took only 2..32 px
and traced at 64 px refused 32 px: `verify export -b resnet18 --input inp` of a 32 px and a 64 px array exited 2 in
either order, with hints (--static, --shape) that are refused for such a folder (newuser 48, "Left"). A trace that
cannot take every input's shape is now made again without those size-1 checks, which takes them all; where no trace
can, the export is refused in one line that says to split the inputs by shape."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from exporter.errors import ExportError
from exporter.formats import FORMATS, get_format
from exporter.formats.program import accepted_ranges, export_program, takes_shape
from tests.helpers import invoke

torch = pytest.importorskip("torch")

SMALL, LARGE = (1, 3, 16, 16), (1, 3, 32, 32)

TINY_SOURCE = textwrap.dedent('''
    import torch
    from torch import nn


    class Tiny(nn.Module):
        """One stride-16 stage and a residual add: 1x1 at 16 px, 2x2 at 32 px (resnet18's last stage, smaller)."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, stride=16, padding=1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return {"out": y + self.bn(y)}


    def make() -> nn.Module:
        torch.manual_seed(0)
        return Tiny().eval()
''')


@pytest.fixture(scope="module")
def tiny():
    scope: dict = {}
    exec(compile(TINY_SOURCE, "tiny_shapes48", "exec"), scope)  # noqa: S102 - the test's own model source
    return scope["make"]()


def _zeros(shape):
    return torch.zeros(shape)


@pytest.mark.parametrize("example, other", [(SMALL, LARGE), (LARGE, SMALL)], ids=["small first", "large first"])
def test_a_dynamic_program_takes_every_input_shape(tiny, example, other):
    plain = export_program(tiny, torch.randn(example), True, "tiny")
    assert not takes_shape(plain, _zeros(other))  # the defect: a trace at either size refuses the other
    program = export_program(tiny, torch.randn(example), True, "tiny", [example, other])
    assert takes_shape(program, _zeros(example)) and takes_shape(program, _zeros(other))
    assert all(greatest is None for _, greatest in accepted_ranges(program).values())  # as the file records it
    with torch.inference_mode():
        for shape in (example, other):
            x = torch.randn(shape)
            assert program.module()(x)["out"].shape == tiny(x)["out"].shape


def test_a_program_taking_every_shape_is_kept_as_traced(tiny):
    """Inputs of sizes the plain trace takes (16 and 8 px: 1x1 at both) keep it, bounds and all."""
    shapes = [SMALL, (1, 3, 8, 8)]
    plain = export_program(tiny, torch.randn(SMALL), True, "tiny")
    assert accepted_ranges(export_program(tiny, torch.randn(SMALL), True, "tiny", shapes)) == accepted_ranges(plain)


def test_no_trace_taking_every_shape_is_refused_in_one_line():
    class Branching(torch.nn.Module):
        def forward(self, x):  # a Python branch on the width: every trace keeps it as a guard
            return x * 2 if x.shape[-1] >= 24 else x - 1

    with pytest.raises(ExportError) as caught:
        export_program(Branching(), torch.randn(SMALL), True, "branching", [SMALL, LARGE])
    message = str(caught.value)
    assert "\n" not in message
    assert "refuses an input of 1x3x32x32" in message, message
    assert "split the inputs into one folder per shape" in message, message


def test_export_of_a_user_model_passes_on_a_folder_of_two_sizes(tmp_path):
    """End to end through `verify export --model` (its worker and the pipeline's export context)."""
    (tmp_path / "tiny_shapes48.py").write_text(TINY_SOURCE)
    folder = tmp_path / "inputs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, shape in (("a.npy", LARGE), ("b.npy", SMALL)):
        np.save(folder / name, rng.standard_normal(shape).astype(np.float32))
    program = next(name for name in FORMATS if (get_format(name).filename or "").endswith(".pt2"))
    result = invoke("export", "--model", f"{tmp_path / 'tiny_shapes48.py'}:make", "--input", folder,
                    "--format", program, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
