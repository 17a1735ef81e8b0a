"""One result row model (verify/render/rows.py `CheckRow`) behind every command's JUnit and Markdown, and the
matrix JSON through the strict writer, read back as typed models (issue 15, item 3)."""

from __future__ import annotations

import dataclasses
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from exporter.errors import UsageError
from verify.folder.checks import Check, CheckReport
from verify.folder.checks import junit_xml as checks_junit
from verify.folder.checks import markdown as checks_markdown
from verify.judge.compare import AUTO_FACTOR, PairResult, Tolerance, compare_outputs
from verify.judge.noise_floor import NoiseFloor
from verify.matrix import CellResult, MatrixResult, load_result
from verify.matrix.result import REPORT_KEY_ENV
from verify.render import write_outputs
from verify.render.junit import junit_xml as matrix_junit
from verify.render.junit import rows_junit
from verify.render.markdown import RESULT_TEXT, ROWS_HEADER
from verify.render.pairs import report_markdown
from verify.render.rows import OUTCOMES, CheckRow, Group
from verify.report import Report

SPEC = "resnet18:frozen:body"
FLOOR = 1e-3


def judged_pairs() -> list[PairResult]:
    """One pair within the allowance, one outside it (the comparator decides, from AUTO_FACTOR)."""
    base = np.zeros((1, 2, 2, 2))
    sides = (("onnxruntime", base + FLOOR), ("torchscript", base + FLOOR * (AUTO_FACTOR + 1)))
    return [compare_outputs(label, {"x": value}, "eager", {"x": base}, Tolerance(), {"x": NoiseFloor(FLOOR)})
            for label, value in sides]


def report() -> Report:
    return Report("export", {"spec": SPEC, "tolerance_text": Tolerance().describe()}, {}, pairs=judged_pairs(),
                  problems=["not deterministic: two runs of eager differ"])


def checks() -> CheckReport:
    found = CheckReport("artifact", summary="NO-GO")
    found.checks = [Check("a", "integrity", "sha256", True), Check("a", "onnxruntime", "goldens", False, "7x"),
                    Check("b", "onnxruntime", "latency", True, skipped=True)]
    return found


def matrix(**cell_fields) -> MatrixResult:
    pairs = [p.to_dict() for p in judged_pairs()]
    cells = [CellResult("c1", *SPEC.split(":"), "disagree", pairs=pairs, **cell_fields),
             CellResult("c2", "tiny.py:make", "", "", "error", error="worker died")]
    return MatrixResult({"run": {"tolerance": Tolerance().to_dict()}}, "f" * 16,
                        [{"id": c.id, "spec": c.spec} for c in cells], cells)


MODELS = {"report": report, "checks": checks, "matrix": matrix}


@pytest.mark.parametrize("make", MODELS.values(), ids=list(MODELS))
def test_every_result_model_exposes_the_same_rows(make):
    rows = make().rows()
    assert rows and all(type(row) is CheckRow and row.outcome in OUTCOMES for row in rows)


def junit_counts(text: str) -> dict[str, int]:
    cases = list(ET.fromstring(text).iter("testcase"))
    found = {outcome: sum(c.find(outcome) is not None for c in cases) for outcome in ("failure", "error", "skipped")}
    return {**found, "passed": len(cases) - sum(found.values())}


def test_junit_of_every_command_is_its_rows():
    """The JUnit each command writes has one testcase per row, with the row's outcome."""
    texts = {"report": rows_junit("verify export", report().rows()), "checks": checks_junit(checks()),
             "matrix": matrix_junit(matrix())}
    for name, text in texts.items():
        rows = MODELS[name]().rows()
        assert junit_counts(text) == {o: sum(r.outcome == o for r in rows) for o in OUTCOMES}, name
    # the report's problem is a failing row, the matrix's cell that did not run an error row
    assert any(r.kind == "problem" and not r.passed for r in report().rows())
    assert [r.outcome for r in matrix().rows() if r.group.name == "tiny.py:make"] == ["error"]


def test_markdown_of_every_report_is_one_table_row_per_row():
    for text, rows in ((report_markdown(report()), report().rows()), (checks_markdown(checks()), checks().rows())):
        table = [line for line in text.splitlines() if line.startswith("| ")]
        assert len(table) == len(rows) + 2  # the header, its alignment, then one line per row
        assert table[0].count(" | ") == len(ROWS_HEADER) - 1
        for outcome in OUTCOMES:
            assert sum(RESULT_TEXT[outcome] in line for line in table[2:]) == sum(r.outcome == outcome for r in rows)


def test_a_row_refuses_an_outcome_no_writer_knows():
    with pytest.raises(ValueError, match="outcome"):
        CheckRow(Group("m"), "pair", "a vs b", "maybe")


def test_a_matrix_cell_parses_its_pairs_once():
    cell = matrix().cells[0]
    assert cell.pair_results() is cell.pair_results()
    emptied = dataclasses.replace(cell, pairs=[])
    assert emptied.pair_results() == [] and len(cell.pair_results()) == 2


def test_matrix_json_is_strict_and_reads_back_typed_and_authentic(tmp_path, monkeypatch):
    """A number that is not finite (a spread, a floor) is null with why, never a bare NaN token; the report
    reads back as typed results with its HMAC intact."""
    monkeypatch.setenv(REPORT_KEY_ENV, "secret")
    result = matrix(trust={"spread": float("inf")}, noise_floor={"per_output": {"x": float("nan")}})
    path = tmp_path / "m.json"
    write_outputs(result, json_path=path)

    def refuse(token):
        raise AssertionError(f"bare {token} written")

    cell = json.loads(path.read_text(), parse_constant=refuse)["cells"][0]
    assert cell["trust"]["spread"] is None and "Inf" in cell["trust"]["null_reason"]
    assert cell["noise_floor"]["per_output"]["x"] is None
    loaded = load_result(path)
    assert loaded.authentic is True
    assert [p.passed for p in loaded.cells[0].pair_results()] == [p.passed for p in judged_pairs()]
    assert [r.outcome for r in loaded.rows()] == [r.outcome for r in result.rows()]


def test_a_report_with_a_bare_nan_token_is_refused(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps(matrix(trust={"spread": float("nan")}).to_dict()))
    assert "NaN" in path.read_text()
    with pytest.raises(UsageError, match="not strict JSON"):
        load_result(path)


@pytest.fixture(scope="module")
def tiny_onnx(module_tmp):
    from typer.testing import CliRunner

    from verify.cli import app

    out = module_tmp("rows-tiny-onnx")
    result = CliRunner().invoke(app, ["export", "--model", "tests/data/tiny.py:make", "--format", "onnx",
                                      "--shape", "1x3x32x32", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return next(out.rglob("model.onnx"))


def test_an_onnx_files_floor_is_the_same_spread_at_any_opt_level(tiny_onnx, tmp_path):
    """compare's spread floor of an ONNX file counts every optimisation level once, the default among them,
    whatever level the run itself used (oracle_stage's rule): the floor does not move with --ort-opt-level."""
    from typer.testing import CliRunner

    from verify.cli import app
    from verify.runtimes.onnxruntime import DEFAULT_OPT_LEVEL, SPREAD_LEVELS

    floors = {}
    for level in (DEFAULT_OPT_LEVEL, *SPREAD_LEVELS):
        path = tmp_path / f"{level}.json"
        result = CliRunner().invoke(app, ["compare", str(tiny_onnx), str(tiny_onnx), "--shape", "1x3x32x32",
                                          "--ort-opt-level", level, "--json", str(path)])
        assert result.exit_code == 0, result.output
        floors[level] = json.loads(path.read_text())["noise_floor"]["detail"]
    assert all(found == floors[DEFAULT_OPT_LEVEL] for found in floors.values()), floors
