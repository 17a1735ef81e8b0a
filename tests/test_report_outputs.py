"""`verify export` and `verify compare` write JUnit and Markdown through the same writers as the matrix and the
folder checks (verify/render/pairs.py): one testcase per pair, named by the pair and its outputs; a problem that
kept the runs from being judged is a failing case, never a pass."""

import xml.etree.ElementTree as ET
from pathlib import Path

from typer.testing import CliRunner

from tests.data import untrusted
from verify.cli import app

TINY = "tests/data/tiny.py:make"
SHAPE = "1x3x32x32"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def cases(path: Path) -> list[ET.Element]:
    return list(ET.parse(path).getroot().iter("testcase"))


def test_export_writes_junit_and_markdown_one_case_per_pair(tmp_path):
    result = invoke("export", "--model", TINY, "--shape", SHAPE, "--format", "onnx", "--onnx-exporter", "torchscript",
                    "--out", tmp_path / "out",  # the reports' cases per pair, whichever exporter wrote the file
                    "--json", tmp_path / "r.json", "--junit", tmp_path / "j.xml", "--markdown", tmp_path / "s.md")
    assert result.exit_code == 0, result.output
    import json

    report = json.loads((tmp_path / "r.json").read_text())
    found = cases(tmp_path / "j.xml")
    assert len(found) == len(report["pairs"])
    assert {c.get("name").split(":")[0] for c in found} == {f"{p['a']} vs {p['b']}" for p in report["pairs"]}
    assert not any(c.find("failure") is not None for c in found)
    page = (tmp_path / "s.md").read_text()
    from verify.render.markdown import RESULT_TEXT

    assert page.startswith("## ✅ verify export") and page.count(RESULT_TEXT["passed"]) == len(report["pairs"])


def test_a_run_that_could_not_be_judged_is_a_failing_case(tmp_path):
    model = f"{untrusted.__file__}:jitter"
    result = invoke("compare", model, TINY, "--shape", SHAPE, "--junit", tmp_path / "j.xml", "--markdown",
                    tmp_path / "s.md")
    assert result.exit_code == 1, result.output
    failing = [c for c in cases(tmp_path / "j.xml") if c.find("failure") is not None]
    assert any(c.get("name") == "judgeable" and "not deterministic" in c.find("failure").get("message")
               for c in failing)
    assert (tmp_path / "s.md").read_text().startswith("## ❌ verify compare")


def test_the_same_path_twice_is_refused(tmp_path):
    result = invoke("export", "--model", TINY, "--json", tmp_path / "x", "--junit", tmp_path / "x")
    assert result.exit_code == 2 and "--json" in result.stderr and "--junit" in result.stderr


def test_a_pair_is_the_same_testcase_in_a_report_and_in_the_matrix():
    """One pair -> row function (verify/render/rows.py pair_row) for export, compare and the matrix, one rows ->
    testcases writer: the matrix's message only adds the cell's spec (its suite holds several models)."""
    import numpy as np

    from verify.judge.compare import AUTO_FACTOR, Tolerance, compare_outputs
    from verify.judge.noise_floor import NoiseFloor
    from verify.matrix import CellResult, MatrixResult
    from verify.render.junit import row_suites
    from verify.report import Report

    spec, floor = "resnet18:frozen:body", 1e-3
    base = np.zeros((1, 2, 2, 2))
    near, far = {"x": base + floor}, {"x": base + floor * (AUTO_FACTOR + 1)}
    pairs = [compare_outputs(label, outputs, "eager", {"x": base}, Tolerance(), {"x": NoiseFloor(floor)})
             for label, outputs in (("onnxruntime", near), ("torchscript", far))]
    assert [p.passed for p in pairs] == [True, False]
    report = Report("export", {"spec": spec}, {})
    report.pairs = pairs
    cell = CellResult("id", *spec.split(":"), "disagree", pairs=[p.to_dict() for p in pairs])
    matrix = MatrixResult({}, "fingerprint", [{"id": "id", "spec": spec}], [cell])
    ours = row_suites(report.rows())[0].cases[:2]
    theirs = row_suites(matrix.rows())[0].cases[:2]
    assert [(c.name, c.outcome) for c in ours] == [(c.name, c.outcome) for c in theirs]
    assert ours[0].message == theirs[0].message and "x the float32 noise floor" in ours[0].message
    assert theirs[1].message == f"{spec} {ours[1].message}" and ours[1].outcome == "failure"
    # the floor named is the one of the runs' precision (a bf16 run is judged on its BF16 floor)
    from verify.render.junit import pair_case

    bf16 = compare_outputs("eager", near, "eager", {"x": base}, Tolerance(),
                           {"x": NoiseFloor(floor, precision="bf16", float32=floor / 100)})
    assert "x the BF16 noise floor" in pair_case("export.m", bf16).message
