"""Witness 46: guard 3 holds like to like. A correct user model whose norm-folded rounding sample lifted its channel
floors over FLOOR_AGREEMENT x its held run's (hunt 29: mobilenet_v3_small's features at 128 px, 4.09x) was refused as
"not judged" against its own export: a file's (or witness's) own floor has no such sample. The model's side of guard
3 is now its held float32 run's floor (verify/judge/file_floor.py `model_floors`); a float32-only term its export
leaves out is still refused."""

import json

import pytest
from typer.testing import CliRunner

from exporter.formats import file_formats, get_format
from exporter.formats.eager import eager_artifact
from exporter.user_model import FACTORY_WEIGHTS, UserModelSpec
from verify.cli.app import app
from verify.inputs import seeded_inputs
from verify.judge.file_floor import FLOOR_AGREEMENT, agreement_ratio, model_floors
from verify.judge.file_witness import witness_candidates
from verify.judge.oracle import measure_oracles
from verify.judge.trust import evidence_problems

runner = CliRunner()
SHAPE = (1, 3, 8, 8)
DATA = next(name for name in file_formats() if not get_format(name).executes_code_on_load)
"""The ONNX format, from the registry: no runtime runs it in float64, a private witness stands in."""
PROGRAM = witness_candidates()[0][0]
"""The format the witness is exported as (torch.export's .pt2), from the registry: a file run in float64 itself."""

SOURCE = """
import torch
from torch import nn


class Folds(nn.Module):
    \"\"\"Channel 1 sums rounded inputs by integer weights exactly and its norm's inexact scale rounds once after it;
    folded, every product rounds (channel 0, unnormed, rounds as that folded channel does and sets the output's
    floor). `term`: a factor float32 rounds to 1.0005 and float64 to 1.0 (review 26), only where not exporting.\"\"\"

    def __init__(self, term: bool = False) -> None:
        super().__init__()
        ints = torch.randint(-3, 4, (1, 32, 3, 3), generator=torch.Generator().manual_seed(0)).float()
        self.conv = nn.Conv2d(32, 2, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(2, eps=0.0).eval()
        with torch.no_grad():
            self.conv.weight.copy_(torch.cat([ints * torch.tensor(0.3), ints]))
            self.bn.running_var.fill_(1.0)
            self.bn.weight.copy_(torch.tensor([1.0, 0.3]))
        self.term = term

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(torch.round(x.repeat(1, 11, 1, 1)[:, :32] * 4)))
        if self.term and not torch.compiler.is_exporting():
            y = y * ((y * 0 + 1e-42) * 1e21 * 1e21)
        return y


def folds():
    return Folds()


def term():
    return Folds(term=True)
"""


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("witness46") / "folds.py"
    path.write_text(SOURCE)
    return path


def export(tmp_path, model: str, fmt: str):
    report = tmp_path / f"{fmt}.json"
    result = runner.invoke(app, ["export", "--model", model, "--shape", "x".join(map(str, SHAPE)), "--format", fmt,
                                 "--no-layers", "--out", str(tmp_path / fmt), "--json", str(report)])
    return result, json.loads(report.read_text())


def guard3_lines(report) -> list[str]:
    return [line for line in report["problems"] if "measures on itself" in line]


def test_the_folded_sample_lifts_the_models_floor_over_the_agreement_its_held_run_does_not(source):
    """The premise, measured: the verdicts' floor (with the folded sample) over FLOOR_AGREEMENT x the held run's on
    some input, which a file's own floor equals; guard 3 reads the held run's."""
    built = UserModelSpec.parse(f"{source}:folds").build(0, SHAPE, FACTORY_WEIGHTS)
    eager = eager_artifact(built, SHAPE)
    feeds = [{eager.meta.input_name: item.array} for item in seeded_inputs(SHAPE, 0)]
    oracles = measure_oracles(eager, feeds, [None] * len(feeds))
    assert all(oracle.samples for oracle in oracles)
    lifts = [agreement_ratio(oracle.float32[name], model_floors(oracle)[name])
             for oracle in oracles for name in oracle.float32]
    assert max(lifts) > FLOOR_AGREEMENT and min(lifts) >= 1.0, lifts


@pytest.mark.parametrize("fmt", [DATA, PROGRAM])
def test_a_correct_model_whose_folded_sample_lifts_its_floor_is_judged(source, tmp_path, fmt):
    """Before: exit 1, "The model's float32 floor of output0 is 5x the one ... measures on itself" (input 3), with a
    witness (ONNX) and with the .pt2 itself alike. The stored evidence re-judges the same."""
    result, report = export(tmp_path, f"{source}:folds", fmt)
    assert result.exit_code == 0, result.output
    assert report["problems"] == [] and len(report["trust"]["files"]) == 2, report["problems"]
    assert evidence_problems(report["trust"]) == []


def test_a_float32_only_term_its_export_leaves_out_is_still_refused(source, tmp_path):
    """Review 26's term, in eager only: the held run's floor carries it, the witness's does not."""
    result, report = export(tmp_path, f"{source}:term", DATA)
    assert result.exit_code == 1, result.output
    lines = guard3_lines(report)
    assert len(lines) == 1 and float(lines[0].split(" is ")[1].split("x the one")[0]) > FLOOR_AGREEMENT, lines
