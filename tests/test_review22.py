"""Review 22: hunt 25a and review 21 reviewed as a user and as an attacker. Every float32 run a user model's floor is
measured from must be, bit for bit, the unwatched run its call check kept (verify/pipeline/stages.py `held_to_calls`);
realistic models (ResNet-18, MobileNetV3, EfficientNet-B0, a ViT, channels_last, MultiheadAttention, F.interpolate, a
Linear head) at 1 and 2 threads were not refused. A difference found at the second shape refused the run, but the
stored evidence (`float64_calls`) still said the calls agreed, so a stored result whose problems list was emptied
re-judged to agree."""

from __future__ import annotations

import json

import pytest

from exporter.export import ExportOptions
from exporter.user_model import UserModelSpec
from tests.helpers import invoke
from verify.api import RunSettings, verify_export
from verify.judge.trust import OTHER_FUNCTION, evidence_problems

SHAPE = "1x3x32x32"
MODEL = '''
import sys

import torch
from torch import nn


def _runtime():
    """Whether a runtime of the tool's runs this call and the call watch is not on the stack."""
    frame, runtime = sys._getframe(1), False
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name.startswith("exporter.call_watch"):
            return False
        runtime = runtime or name.startswith("verify.runtimes")
        frame = frame.f_back
    return runtime


class Second(nn.Module):
    """x1.0005 in float32 only, only at a size other than the example's, only where the watch is not on the stack."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        if torch.jit.is_scripting():
            return y
        return self.cheat(x, y)

    @torch.jit.ignore
    def cheat(self, x, y):
        if x.dtype == torch.float32 and x.shape[-1] != 32 and _runtime():
            return y * 1.0005
        return y


def second():
    return Second()


class Both(Second):
    """Its float32 runs unwatched x(1 + 5e-7) at the example's size (within an explicit --rtol 1e-5), x1.0005 at others;
    the file 0.1 % off at other sizes."""

    def forward(self, x):
        y = self.conv(x)
        if torch.jit.is_scripting():
            return y * 1.001 if x.dtype == torch.float32 and x.shape[-1] != 32 else y
        return self.cheat(x, y)

    @torch.jit.ignore
    def cheat(self, x, y):
        if x.dtype == torch.float32 and _runtime():
            return y * (1.0000005 if x.shape[-1] == 32 else 1.0005)
        return y


def both():
    return Both()


class Head(nn.Module):
    """Fed its Linear head 1e5x its input in float32 only, only at a size other than the example's, only while a hook of
    the tool's is on the head (the run that bounds the head's sums there): the file is 0.1 % off at that size only."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        z = self.conv(x).mean((2, 3))
        if torch.jit.is_scripting():
            y = self.fc(z)
            return y * 1.001 if x.dtype == torch.float32 and x.shape[-1] != 32 else y
        return self.inflate(x, z)

    @torch.jit.ignore
    def inflate(self, x, z):
        if x.dtype == torch.float32 and x.shape[-1] != 32 and len(self.fc._forward_hooks) > 0:
            z = z * 100000.0
        return self.fc(z)


def summed():
    return Head()
'''


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    source = tmp_path_factory.mktemp("review22") / "models.py"
    source.write_text(MODEL)
    return source


def test_a_difference_at_the_second_shape_is_in_the_stored_evidence(models, tmp_path):
    """Before: exit 1 with the call check's line in `problems`, but `trust.float64_calls` recorded 'differs: None' (the
    record was written before the second shape was judged): re-judged from its evidence alone (a matrix cell's cache
    entry, a worker's report, its problems emptied), the result agreed."""
    report = tmp_path / "report.json"
    result = invoke("export", "--model", f"{models}:second", "--shape", SHAPE, "--format", "torchscript",
                    "--out", tmp_path / "out", "--json", report, "--no-layers")
    assert result.exit_code == 1, result.output
    data = json.loads(report.read_text())
    assert len(data["problems"]) == 1 and "at 2x3x64x64, the float32 output0" in data["problems"][0], data["problems"]
    recorded = data["trust"]["float64_calls"]
    assert len(recorded) == 1 and recorded[0]["differs"] is not None, recorded
    assert "at 2x3x64x64" in recorded[0]["differs"]
    rejudged = evidence_problems(data["trust"])  # what a reader derives with the stored problems list emptied
    assert len(rejudged) == 1 and rejudged[0].endswith(OTHER_FUNCTION), rejudged


def test_the_run_that_bounds_a_heads_sums_at_the_second_shape_is_held(models, tmp_path):
    """Before: `verify_export(..., isolate=False)` passed, 'each dynamic file was judged at a second shape ... worst
    torchscript 0.3x its floor', for a TorchScript file 0.1 % off at every size but the example's: the run that bounds
    the head's sums there (verify/judge/summation.py summed_outputs, the tool's hook on the head) fed it 1e5x its input;
    summed_outputs set the call check's difference, but the second shape's verdict only read the model's own run there.
    (`verify export` in a worker is refused by the parent's re-judging of the evidence: the first test.)"""
    report = verify_export(UserModelSpec.parse(f"{models}:summed"), RunSettings(shape=SHAPE, layers=False),
                           out=tmp_path / "out", export=ExportOptions(formats=("torchscript",)), cache=None,
                           isolate=False)
    assert not report.passed
    assert len(report.problems) == 1, report.problems
    assert "in the run that bounds its heads' sums, the float32 output0" in report.problems[0], report.problems
    assert report.problems[0].endswith(OTHER_FUNCTION)
    assert not any("judged at a second shape" in note for note in report.notes), report.notes


def test_an_explicit_tolerance_does_not_judge_the_second_shape_on_an_unheld_floor(models, tmp_path):
    """Before: exit 0 with --rtol 1e-5, 'judged at a second shape ... worst torchscript 2.0x its floor', for a file
    0.1 % off at every size but the example's: the held check found the eager runs' difference at the example's size
    (recorded, not refused: an explicit tolerance judges without a floor there), and the second shape, judged on
    floors whatever the tolerance, took its floor from the model's unheld float32 run (x1.0005). Now the second shape
    is judged on the explicit tolerance where the floors there are not held (it judges without a floor, as at the
    example's shape): the file fails there."""
    report = tmp_path / "report.json"
    result = invoke("export", "--model", f"{models}:both", "--shape", SHAPE, "--format", "torchscript",
                    "--out", tmp_path / "out", "--json", report, "--no-layers", "--rtol", "1e-5", "--atol", "1e-6")
    assert result.exit_code == 1, result.output
    data = json.loads(report.read_text())
    assert len(data["problems"]) == 1, data["problems"]
    assert "inside the dynamic axes it declares" in data["problems"][0]
    assert "differs from the model" in data["problems"][0]
    assert not any("judged at a second shape" in note for note in data["notes"]), data["notes"]
