"""`verify preflight` judges a dynamic file at a second shape inside its axes on the CPU provider, as `verify artifact`
does (verify/folder/preflight.py, verify/folder/validate.py `second_shape_check`): a file wrong only at sizes its
goldens never saw is NO-GO, not GO."""

from __future__ import annotations

import pytest

from exporter.manifest import MANIFEST_NAME, load_manifest
from tests.helpers import invoke, linked_copy, rehash
from verify.folder.preflight import PreflightOptions, preflight
from verify.runtimes import runtimes_for

FACTORY = '''
import torch
from torch import nn


class Reach(nn.Module):
    """At 8 px the 5 x 5 convolution sees a 2 x 2 map: its corner taps fall in the padding, whatever they hold."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.down = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.mix = nn.Conv2d(8, 8, 5, padding=2)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)

    def forward(self, x):
        return self.mix(torch.relu(self.down(x)))


def make():
    return Reach().eval()
'''
SHAPE = "1x3x8x8"
CORNER_ERROR = 0.1
"""Added to the corner tap of every filter of `mix` in the target file: nothing at 8 px, everything at 40."""


@pytest.fixture(scope="module")
def reach_folder(module_tmp):
    """The model above exported (every default format, unsigned) at SHAPE; its folder and preflight's target file."""
    where = module_tmp("preflight47")
    (where / "reach.py").write_text(FACTORY)
    result = invoke("export", "--model", f"{where / 'reach.py'}:make", "--shape", SHAPE, "--out", where / "out")
    assert result.exit_code == 0, result.output
    folder, = (where / "out").iterdir()
    files = load_manifest(folder / MANIFEST_NAME).model_files()
    target, = [name for name, entry in files.items() if PreflightOptions().runtime in runtimes_for(entry.format)]
    return folder, target


def _shape_checks(report, target):
    return [c for c in report.checks if c.name.startswith(f"{target}: shape ")]


def test_a_correct_dynamic_file_is_judged_at_a_second_shape_and_go(reach_folder):
    folder, target = reach_folder
    report = preflight(folder, trust_unsigned_code=True)
    assert report.passed, [(c.name, c.message) for c in report.checks]
    checks = _shape_checks(report, target)
    assert len(checks) == 1 and checks[0].passed and " in float64: worst " in checks[0].message, checks


def test_a_file_wrong_only_outside_its_goldens_size_is_no_go(reach_folder, tmp_path):
    """Before: GO ("goldens match (0.9x floor)"): the edited taps never touch the 8 px goldens. Now the file is run at
    2x3x40x40 against another file of the folder in float64 (trusted here), and NO-GO names that check."""
    import onnx
    from onnx import numpy_helper

    folder, target = reach_folder
    copy = linked_copy(folder, tmp_path)
    model = onnx.load(str(copy / target))
    init = next(i for i in model.graph.initializer if i.name.endswith("mix.weight"))
    weight = numpy_helper.to_array(init).copy()
    weight[:, :, 0, 0] += CORNER_ERROR
    init.CopyFrom(numpy_helper.from_array(weight, init.name))
    (copy / target).unlink()  # never through the hard link to the module's export
    onnx.save(model, str(copy / target))
    rehash(copy, target)
    report = preflight(copy, trust_unsigned_code=True)
    assert not report.passed and report.summary.startswith("NO-GO")
    goldens = [c for c in report.checks if c.name == f"{target}: goldens"]
    assert goldens and all(c.passed for c in goldens), goldens
    checks = _shape_checks(report, target)
    assert len(checks) == 1 and not checks[0].passed and checks[0].name in report.summary, checks

