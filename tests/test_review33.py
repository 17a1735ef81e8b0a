"""Review 33: passes nobody earned. Inputs of zeros, on which no weight of a first layer reaches the outputs, were
judged and passed (an export whose first conv was 1 % off exited 0 with `--input zeros.npy --static`, and the pytest
plugin passed it on `torch.zeros(...)`); a matrix that exports no file (`--runtime eager`) judged eager against its own
float64 run and passed, and a forged shard report of such settings merged to exit 0."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from exporter.formats import file_formats
from tests.helpers import invoke
from verify.inputs import BLANK_HOW, NamedInput, refuse_blank_inputs
from verify.matrix import REPORT_KEY_ENV, SHARD_ENV
from verify.matrix.merge import expected_cells
from verify.matrix.request import NOTHING_EXPORTED, fingerprint
from verify.runtimes import RUNTIMES, runtime_class

SHAPE = (1, 3, 16, 16)
EAGER = next(name for name in RUNTIMES if not set(runtime_class(name).formats) & set(file_formats()))
"""The in-memory runtime: it runs no file."""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in (*SHARD_ENV, REPORT_KEY_ENV):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def zeros(tmp_path):
    path = tmp_path / "zeros.npy"
    np.save(path, np.zeros(SHAPE, np.float32))
    return path


def _one_line_refusal(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Building" not in result.output and "Loading" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("command", [
    ("export", "-b", "resnet18", "--static"),
    ("compare", "resnet18:batch:body", "resnet18:frozen-eps0:body"),
    ("explain", "resnet18:batch:body", "resnet18:frozen-eps0:body"),
    ("matrix", "-b", "resnet18", "-n", "batch", "--no-cache"),
])
def test_an_input_of_zeros_is_refused_before_any_work(command, zeros, tmp_path):
    """Before: `verify export --model first_conv_off.py:make --format pt2 --format onnx --static --input zeros.npy`
    exited 0 ("all 6 pairs agree", 0.8x the floor) with the model's first conv scaled by 1.01 in both files (the same
    run on a seeded input: 4 of 6 pairs disagree). On zeros a first layer's weights reach no output."""
    out = ("--out", tmp_path / "out") if command[0] == "export" else ()
    line = _one_line_refusal(invoke(*command, "--input", zeros, *out))
    assert line.startswith(f"error: Input {zeros} holds only zeros: {BLANK_HOW}"), line
    assert not (tmp_path / "out").exists()


def test_a_folder_is_refused_only_when_every_input_is_zeros(tmp_path):
    blank = [NamedInput(f"{i}.npy", np.zeros(SHAPE, np.float32)) for i in range(2)]
    with pytest.raises(Exception, match=f"Each of the 2 inputs holds only zeros: {BLANK_HOW}"):
        refuse_blank_inputs(blank)
    one = np.zeros(SHAPE, np.float32)
    one[0, 1, 2, 3] = 0.5
    refuse_blank_inputs([*blank, NamedInput("c.npy", one)])  # one input with content is evidence: judged
    refuse_blank_inputs(None)  # seeded inputs


def test_the_pytest_plugin_refuses_an_example_of_zeros(tmp_path):
    """Before: assert_exports_agree(model, torch.zeros(1, 3, 32, 32), dynamic=False, formats=[pt2, onnx]) passed the
    same 1 %-off first conv (the same call on torch.randn failed it)."""
    from verify.pytest_plugin import assert_exports_agree

    out = tmp_path / "out"
    with pytest.raises(pytest.fail.Exception) as failed:
        assert_exports_agree(nn.Conv2d(3, 4, 3), torch.zeros(SHAPE), out=out)
    message = str(failed.value)
    assert f"example holds only zeros: {BLANK_HOW}" in message and "torch.randn(1, 3, 16, 16)" in message, message
    assert not out.exists()


@pytest.mark.parametrize("rows", [("-b", "resnet18", "-n", "batch"), ("--model", "tests/data/tiny.py:make")])
def test_a_matrix_that_exports_no_file_is_refused(rows, tmp_path):
    """Before: `verify matrix -b resnet18 -n batch --runtime eager` exited 0, "1 of 1 cells agree": its one pair,
    eager vs oracle, is the run the floor is measured from (1.0x). `verify export --runtime eager` refused it."""
    line = _one_line_refusal(invoke("matrix", *rows, "--runtime", EAGER, "--shape", "1x3x16x16", "--no-cache",
                                    "--json", tmp_path / "m.json"))
    assert line.startswith(f"error: Nothing to export: --runtime {EAGER} runs no file format, {NOTHING_EXPORTED}")
    assert not (tmp_path / "m.json").exists()


def test_a_shard_report_rewritten_to_export_no_file_does_not_merge(two_cell_matrix, tmp_path):
    """Before: the two-cell matrix's failing shards, their settings rewritten to `--runtime eager` with no format
    (cell ids and fingerprint recomputed as the merge does) and every file's run, pairs and repeat dropped, merged to
    exit 0 ("2 of 2 cells agree"): the merge took settings `verify matrix` never writes."""
    failing = two_cell_matrix[3]
    names = []
    for index, result in enumerate(failing, 1):
        data = result.to_dict()
        data["settings"].update(runtimes=[EAGER])
        data["settings"]["export"]["formats"] = []
        expected = expected_cells(data["settings"])
        data["matrix"] = [{"id": cell.id, "spec": cell.spec} for cell in expected]
        data["fingerprint"] = fingerprint(data["settings"], [cell.id for cell in expected])
        for cell in data["cells"]:
            cell["id"] = next(e.id for e in expected if e.spec == cell["spec"])
            cell["runs"] = [run for run in cell["runs"] if run["label"] == EAGER]
            cell["pairs"] = [pair for pair in cell["pairs"] if pair["a"] == EAGER]
            cell["trust"]["repeats"] = [r for r in cell["trust"]["repeats"] if r["label"] == EAGER]
            cell.update(verdict="agree", passed=True)
        path = tmp_path / f"shard{index}.json"
        path.write_text(json.dumps(data))
        names.append(path)
    assert not all(r.passed for r in failing)  # the files really disagree
    result = invoke("matrix", "merge", *names, "--json", tmp_path / "merged.json")
    assert result.exit_code == 1, result.output
    assert f"describes a matrix that exports no file, {NOTHING_EXPORTED}" in result.output, result.output
    merged = tmp_path / "merged.json"
    assert not merged.exists() or json.loads(merged.read_text())["passed"] is False
