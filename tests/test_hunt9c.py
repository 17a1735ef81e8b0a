"""Hunt 9c: a shard report's numbers are evidence to judge again, and with per-element bulk floors (oracle.PEAK_FACTOR)
a pair's figures must be the floors its cell recorded, and those the floors its evidence holds (the floor bound
judged them). Each test edits a real failing shard report in one way and merges it: exit 1, the edit named.

The failing cell: a user model whose output carries a 1e6 peak per channel, its export shifting every other element
by 0.05 (the bulk floor is ~1e-7, the per-output floor ~0.1), so its per-output ratio is under the factor and only
the bulk floor fails it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exporter.export import ExportOptions
from tests.helpers import invoke, masked_conv_source
from verify.api import RunSettings
from verify.cache import ENV_OFF
from verify.judge.compare import AUTO_FACTOR, Tolerance
from verify.matrix import REPORT_KEY_ENV, SHARD_ENV, MatrixRequest, load_result, run_matrix
from verify.matrix.result import verify_identity

SHAPE = (1, 3, 16, 16)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in (*SHARD_ENV, REPORT_KEY_ENV, ENV_OFF):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def reports(module_tmp):
    """Shard 1/1 reports of the bordered model's correct and shifted exports (ONNX), as `verify matrix --json`
    writes them."""
    out = module_tmp("hunt9c")
    source = out / "bordered.py"
    source.write_text(masked_conv_source("1e6"))
    written = {}
    for factory in ("correct", "shifted"):
        request = MatrixRequest.create(models=[f"{source}:{factory}"], settings=RunSettings(shape=SHAPE),
                                       export=ExportOptions(formats=("onnx",)))
        result = run_matrix(request, shard=(1, 1))
        written[factory] = out / f"{factory}.json"
        written[factory].write_text(json.dumps(result.to_dict()))
    return written


def _outputs(cell):
    return [output for pair in cell["pairs"] for output in pair["outputs"]]


def _merge(path: Path, tmp_path: Path, edit=None):
    data = json.loads(path.read_text())
    if edit is not None:
        edit(data["cells"][0])
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(data))
    result = invoke("matrix", "merge", edited, "--json", tmp_path / "merged.json")
    return result, load_result(tmp_path / "merged.json").cells[0] if (tmp_path / "merged.json").exists() else None


def _agree(cell):
    """What every stored flag says of a pass: no element out of tolerance, no problem."""
    cell.update(verdict="agree", passed=True, problems=[])
    for output in _outputs(cell):
        output.update(mismatched=0, passed=True, reason="")


def test_the_reports_as_written_merge_to_their_verdicts(reports, tmp_path):
    """The correct export's report, with its bulk floors, merges to exit 0; the shifted one's fails only on its
    bulk floor: its per-output ratio is under the factor."""
    assert _merge(reports["correct"], tmp_path)[0].exit_code == 0
    result, cell = _merge(reports["shifted"], tmp_path)
    assert result.exit_code == 1, result.output
    floors = cell.noise_floor["detail"]["output0"]
    assert "bulk" in floors and "bulk_floor" in cell.trust["inputs"][0]["output0"]
    failing = [o for o in _outputs(json.loads(reports["shifted"].read_text())["cells"][0]) if o["mismatched"]]
    assert failing and all(o["output_ratio"] < AUTO_FACTOR < o["ratio"] for o in failing)


def test_a_failing_run_deleted_with_its_pairs_fails(reports, tmp_path):
    """Before: the settings' default runtimes (runtimes: null) gave no run count, so a cell without its failing
    ONNX Runtime run and its pairs (eager vs oracle left) merged to exit 0."""
    def drop(cell):
        _agree(cell)
        cell["runs"] = [run for run in cell["runs"] if run["label"] == "eager"]
        cell["pairs"] = [pair for pair in cell["pairs"] if "onnxruntime" not in (pair["a"], pair["b"])]

    result, cell = _merge(reports["shifted"], tmp_path, drop)
    assert result.exit_code == 1, result.output
    assert any("1 runs recorded, 2 expected" in p for p in cell.problems), cell.problems


def test_a_channel_floor_set_to_null_fails(reports, tmp_path):
    """Before: with `channel_floor` null the ratio had only to equal max |a-b| / the output's floor, the per-output
    ratio (0.42x, a 1e6 peak's rounding) that hid the shifted bulk: exit 0."""
    def null(cell):
        _agree(cell)
        for output in _outputs(cell):
            output.update(channel=None, channel_floor=None, ratio=output["output_ratio"])

    result, cell = _merge(reports["shifted"], tmp_path, null)
    assert result.exit_code == 1, result.output
    assert any("worst element" in p for p in cell.problems), cell.problems


@pytest.mark.parametrize("drop_bulk", [False, True])
def test_a_bulk_element_judged_on_its_channels_floor_fails(reports, tmp_path, drop_bulk):
    """Before: `channel_floor` set to the channel's floor (as if the worst element were a peak) and the ratio to
    max |a-b| over it passed every check (at most the channel's floor, ratio between the two bounds), with or without
    the record's bulk floors deleted: exit 0."""
    def as_peak(cell):
        _agree(cell)
        detail = cell["noise_floor"]["detail"]["output0"]
        for output in _outputs(cell):
            if output["channel"] is not None:
                output["channel_floor"] = detail["channels"][output["channel"]]
                output["ratio"] = max(output["output_ratio"], output["max_abs"] / output["channel_floor"])
        if drop_bulk:
            del detail["bulk"], detail["bulk_limits"]

    result, cell = _merge(reports["shifted"], tmp_path, as_peak)
    assert result.exit_code == 1, result.output
    expected = "away from its peaks" if drop_bulk else "worst element"
    assert any(expected in p for p in cell.problems), cell.problems


def _raise_floors(cell, scale: float, detail: bool):
    _agree(cell)
    for output in _outputs(cell):
        output["floor"] *= scale
        if output["channel_floor"] is not None:
            output["channel_floor"] *= scale
        output["ratio"] /= scale
        output["output_ratio"] /= scale
    if detail:
        record = cell["noise_floor"]["detail"]["output0"]
        record["value"] *= scale
        for key in ("channels", "bulk"):
            record[key] = [v * scale for v in record[key]]


@pytest.mark.parametrize("detail", [False, True])
def test_floors_raised_past_the_evidence_fail(reports, tmp_path, detail):
    """Before: each pair's `floor`, `channel_floor` and ratios scaled consistently (and the recorded floors with them)
    passed: nothing tied a pair's floor to the evidence the floor bound judged. Exit 0."""
    scale = 2 * max(o["ratio"] for o in _outputs(json.loads(reports["shifted"].read_text())["cells"][0])) / \
        Tolerance().factor
    result, cell = _merge(reports["shifted"], tmp_path, lambda c: _raise_floors(c, scale, detail))
    assert result.exit_code == 1, result.output
    expected = "evidence measured" if detail else "is not the recorded"
    assert any(expected in p for p in cell.problems), cell.problems


def test_a_count_of_elements_out_of_tolerance_fails_whatever_the_figures(reports, tmp_path):
    """Every floor raised consistently, in the pairs, the record and the evidence (its output scales with them, so the
    floor bound holds), but the stored count of elements out of tolerance left: before, that count was never read
    (exit 0)."""
    source = json.loads(reports["shifted"].read_text())["cells"][0]
    scale = 2 * max(o["ratio"] for o in _outputs(source)) / Tolerance().factor
    counts = [o["mismatched"] for o in _outputs(source)]

    def everywhere(cell):
        _raise_floors(cell, scale, detail=True)
        for output, count in zip(_outputs(cell), counts):
            output["mismatched"] = count
        for measured in cell["trust"]["inputs"]:  # the scales too: the floor bound is then met
            for key in ("floor", "bulk_floor", "scale", "bulk_scale"):
                measured["output0"][key] *= scale

    result, cell = _merge(reports["shifted"], tmp_path, everywhere)
    assert result.exit_code == 1, result.output
    assert any("elements out of tolerance" in p for p in cell.problems), cell.problems


@pytest.mark.parametrize("change", ["drop", "other"])
def test_a_report_written_by_another_verify_is_refused(reports, tmp_path, change):
    """Before: a report recorded only its libraries' versions, so one written by another verify (whose rules kept no
    bulk floors, say) merged and was judged by this verify's rules as though this verify had measured it: exit 0."""
    data = json.loads(reports["correct"].read_text())
    if change == "drop":
        data["versions"] = {k: v for k, v in data["versions"].items() if k not in verify_identity()}
    else:
        data["versions"]["verify-source"] = "0" * len(verify_identity()["verify-source"])
    path = tmp_path / "other.json"
    path.write_text(json.dumps(data))
    result = invoke("matrix", "merge", path)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "another verify" in lines[0], result.output


TWO_OUTPUTS = '''
import torch
from torch import nn


class Two(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor):
        b = self.b(x)
        if torch.compiler.is_exporting():  # an export bug in the second output only
            b = b + 0.05
        return self.a(x), b


def shifted():
    return Two()
'''


def test_an_output_deleted_from_every_pair_fails(module_tmp, tmp_path):
    """Before: the pairs had only to compare the same outputs, so the failing output removed from every pair (its
    floor still recorded and in the evidence) left a passing cell: exit 0."""
    source = module_tmp("hunt9c-two") / "two.py"
    source.write_text(TWO_OUTPUTS)
    request = MatrixRequest.create(models=[f"{source}:shifted"], settings=RunSettings(shape=SHAPE),
                                   export=ExportOptions(formats=("onnx",)))
    report = tmp_path / "two.json"
    report.write_text(json.dumps(run_matrix(request, shard=(1, 1)).to_dict()))
    result, cell = _merge(report, tmp_path)
    assert result.exit_code == 1, result.output
    failing = {o["name"] for o in _outputs(json.loads(report.read_text())["cells"][0]) if o["mismatched"]}
    assert len(failing) == 1, failing

    def delete(cell):
        _agree(cell)
        for pair in cell["pairs"]:
            pair["outputs"] = [o for o in pair["outputs"] if o["name"] not in failing]

    result, cell = _merge(report, tmp_path, delete)
    assert result.exit_code == 1, result.output
    assert any("compared in no pair" in p for p in cell.problems), cell.problems
