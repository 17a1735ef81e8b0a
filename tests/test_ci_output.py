"""Readable where it runs (issue 18): without a TTY, in CI, at 80 columns, every pair name, output, ratio and
verdict is on one line, in a fixed greppable form; progress is a line per finished stage; colour only where
it shows; GitHub Actions gets workflow annotations; every default a help text or page states is the
constant's."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from verify.cli import app
from verify.folder.checks import Check, CheckReport, render_checks
from verify.judge.compare import AUTO_FACTOR, OutputComparison, PairResult, Tolerance
from verify.matrix import CellResult, MatrixResult
from verify.render import console as consoles
from verify.render.html_page import html_page
from verify.render.junit import junit_xml as matrix_junit
from verify.render.matrix_table import render_matrix
from verify.report import Report, render_pairs

WIDTH = 80
"""What rich falls back to without a terminal: the width a CI log gets."""
RUNTIMES = ("onnxruntime", "torchscript", "exportedprogram", "aotinductor", "eager")
LINE = re.compile(r"^(ok  |FAIL) (?P<pair>\S+ vs \S+)  (?P<where>\S+)  (?P<ratio>[\d.]+)x floor  "
                  r"max abs (?P<abs>\S+)$")
CI_NAMES = consoles.CI_VARIABLES + ("NO_COLOR", "FORCE_COLOR", "COLUMNS", "TTY_COMPATIBLE", "TTY_INTERACTIVE")
ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(autouse=True)
def no_ci(monkeypatch):
    """Each test states the environment it is about; the one running the suite (a CI job) does not leak in."""
    for name in CI_NAMES:
        monkeypatch.delenv(name, raising=False)


def comparison(name: str, ratio: float, channel: int = 39) -> OutputComparison:
    passed = ratio <= AUTO_FACTOR
    return OutputComparison(name, [1, 512, 2, 2], [1, 512, 2, 2], passed, "" if passed else
                            "12 of 2048 elements out of tolerance", max_abs=2.2e-5 * ratio, max_rel=1e-6,
                            mismatched=0 if passed else 12, total=2048, floor=2.2e-5, ratio=ratio, channel=channel)


def every_pair(fail: set[str] = frozenset()) -> list[PairResult]:
    """Every runtime pair and every runtime against the oracle, as `verify export` judges them: the longest
    names the table wrapped over four lines."""
    pairs = []
    for i, a in enumerate(RUNTIMES):
        for b in RUNTIMES[i + 1:] + ("oracle",):
            ratio = AUTO_FACTOR * 1.56 if a in fail else AUTO_FACTOR * 0.3
            pairs.append(PairResult(a, b, [comparison("layer3", ratio / 2, 7), comparison("layer4", ratio)],
                                    kind="oracle" if b == "oracle" else "runtime"))
    return pairs


def export_report(command: str = "export", fail: set[str] = frozenset()) -> Report:
    tolerance = Tolerance()
    return Report(command, {"tolerance": tolerance.to_dict(), "tolerance_text": tolerance.describe()}, {},
                  pairs=every_pair(fail), floors={"layer3": 1e-6, "layer4": 2.2e-5}, floor_source="eager(float64)")


def matrix_result(fail: set[str] = frozenset()) -> MatrixResult:
    pairs = [p.to_dict() for p in every_pair(fail)]
    agreeing = [p.to_dict() for p in every_pair()]
    cells = [CellResult("c0", "mobilenet_v3_large", "frozen_eps0", "body", "disagree" if fail else "agree",
                        pairs=pairs),
             CellResult("c1", "resnet18", "batch", "body", "agree", pairs=agreeing)]
    tolerance = Tolerance()
    return MatrixResult({"run": {"tolerance": tolerance.to_dict()}, "tolerance_text": tolerance.describe()},
                        "f" * 16, [{"id": c.id, "spec": c.spec} for c in cells], cells=cells)


def plain(render, *args, width: int = WIDTH, **kwargs) -> list[str]:
    """What the renderer writes to a file (a CI log): no TTY, rich's fallback width."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width)
    assert not console.is_terminal
    render(*args, console, **kwargs)
    return buffer.getvalue().splitlines()


# ------------------------------------------------------------------------------------------------
# One line per pair, whole, at 80 columns without a TTY
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["export", "compare"])
@pytest.mark.parametrize("verbose", [False, True], ids=["worst", "verbose"])
def test_pair_report_is_one_whole_line_per_pair(command, verbose):
    report = export_report(command, fail={"onnxruntime"})
    lines = plain(render_pairs, report, verbose=verbose)
    for pair in report.pairs:
        for out in pair.outputs if verbose else [pair.worst]:
            found = [m for m in map(LINE.match, lines) if m and m["pair"] == f"{pair.a} vs {pair.b}"
                     and m["where"] == out.where]
            assert len(found) == 1, (pair.a, pair.b, out.where, lines)
            match = found[0]
            assert match.group(1).strip() == ("ok" if out.passed else "FAIL")
            assert (match["ratio"], match["abs"]) == (f"{out.ratio:.1f}", f"{out.max_abs:.1e}")
    failed = sum(not p.passed for p in report.pairs)
    assert f"✗ {failed} of {len(report.pairs)} pairs disagree" in lines


def test_check_report_is_one_whole_line_per_check():
    report = CheckReport("artifact", summary="NO-GO: 1 check failed")
    for runtime in RUNTIMES:
        report.add(Check("artifacts/resnet50-frozen-body", runtime, f"model-{runtime}.bin: goldens float32",
                         runtime != "onnxruntime", f"layer4[c=39]: {AUTO_FACTOR * 1.56:.1f}x the noise floor"))
    lines = plain(render_checks, report)
    for check in report.checks:
        mark = "✓" if check.passed else "✗"
        assert f"  {mark} {check.runtime} · {check.name}: {check.message}" in lines
    assert lines[-1] == report.summary


def test_matrix_report_is_one_whole_line_per_cell_and_pair():
    result = matrix_result(fail={"torchscript"})
    lines = plain(render_matrix, result)
    for cell in result.cells:
        for pair in cell.pair_results():
            expected = f"{'ok' if pair.passed else 'FAIL':<4} {cell.spec}  {pair.a} vs {pair.b}  {pair.worst.where}  " \
                       f"{pair.worst.ratio:.1f}x floor"
            assert sum(line.startswith(expected) for line in lines) == 1, (expected, lines)
    assert lines[-1].endswith(result.summary())


def test_the_table_is_kept_where_it_fits_a_terminal():
    report = export_report()
    wide = Console(file=io.StringIO(), width=200, force_terminal=True, color_system=None)
    render_pairs(report, wide)
    assert "┃" in wide.file.getvalue() and not any(LINE.match(s) for s in wide.file.getvalue().splitlines())
    narrow = Console(file=io.StringIO(), width=WIDTH, force_terminal=True, color_system=None)
    render_pairs(report, narrow)  # the table would wrap the names: lines instead
    assert sum(bool(LINE.match(s)) for s in narrow.file.getvalue().splitlines()) == len(report.pairs)


def test_ci_gets_lines_even_on_a_terminal(monkeypatch):
    monkeypatch.setenv("CI", "true")
    console = Console(file=io.StringIO(), width=200, force_terminal=True, color_system=None)
    render_pairs(export_report(), console)
    assert "┃" not in console.file.getvalue()
    monkeypatch.setenv("CI", "false")  # GitLab and others spell "off" too
    assert not consoles.in_ci()


# ------------------------------------------------------------------------------------------------
# Consoles: colour where it shows, no redraw in CI, COLUMNS honoured
# ------------------------------------------------------------------------------------------------

ANSI = re.compile("\x1b\\[")


def printed(console: Console, text: str = "[red]✗ differ[/]") -> str:
    console.print(text)
    return console.file.getvalue()


@pytest.mark.parametrize(("env", "colour"), [
    ({}, False),                                         # a pipe: plain
    ({"GITHUB_ACTIONS": "true", "CI": "true"}, True),    # GitHub's log shows colour
    ({"GITHUB_ACTIONS": "true", "NO_COLOR": "1"}, False),
    ({"CI": "1", "FORCE_COLOR": "1"}, True),
    ({"FORCE_COLOR": "1"}, True),
    ({"NO_COLOR": "1", "FORCE_COLOR": "1"}, False),
])
def test_make_console_honours_the_environment(monkeypatch, env, colour):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    console = consoles.make_console(file=io.StringIO())
    assert bool(ANSI.search(printed(console))) == colour
    assert consoles.line_layout(console)  # a file: lines, whatever colour
    assert isinstance(consoles.progress_for(console), consoles.LineProgress)  # and never a redrawn spinner
    assert not console.is_terminal or not consoles.in_ci()  # in CI not even rich's live display redraws


def test_columns_sets_the_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "132")
    assert consoles.make_console(file=io.StringIO()).width == 132


def test_progress_writes_a_line_per_finished_stage_without_redrawing():
    console = Console(file=io.StringIO(), width=WIDTH)
    progress = consoles.progress_for(console)
    assert isinstance(progress, consoles.LineProgress)
    with progress.step("Exporting onnx"):
        pass
    with pytest.raises(RuntimeError), progress.step("Running [bold]onnxruntime[/]"):
        raise RuntimeError("boom")
    lines = console.file.getvalue().splitlines()
    assert re.fullmatch(r"✓ Exporting onnx \(\d+\.\ds\)", lines[0])
    assert lines[1] == "✗ Running [bold]onnxruntime[/]" and len(lines) == 2
    assert "\r" not in console.file.getvalue() and not ANSI.search(console.file.getvalue())
    terminal = Console(file=io.StringIO(), force_terminal=True, force_interactive=True)
    assert type(consoles.progress_for(terminal)) is consoles.SpinnerProgress


# ------------------------------------------------------------------------------------------------
# GitHub Actions: annotations; JUnit names for GitLab/Jenkins
# ------------------------------------------------------------------------------------------------


def annotations(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("::")]


@pytest.mark.parametrize("value", ["true", "false", None])
def test_annotations_under_github_actions(monkeypatch, value):
    if value is not None:
        monkeypatch.setenv("GITHUB_ACTIONS", value)
    report, result = export_report(fail={"onnxruntime"}), matrix_result(fail={"onnxruntime"})
    pair_lines, matrix_lines = plain(render_pairs, report), plain(render_matrix, result)
    check_report = CheckReport("preflight", summary="NO-GO")
    check_report.add(Check("folder", "onnxruntime", "model.onnx: goldens", False, "layer4[c=39]: 7.8x the floor"))
    check_lines = plain(render_checks, check_report)
    if value != "true":
        assert not annotations(pair_lines + matrix_lines + check_lines)
        return
    failing = [p for p in report.pairs if not p.passed]
    assert len(annotations(pair_lines)) == len(failing) >= 1
    for pair, line in zip(failing, annotations(pair_lines)):
        assert line.startswith(f"::error title=verify export%3A {pair.a} vs {pair.b} differ::")
        assert f"{pair.worst.where} is {pair.worst.ratio:.1f}x the noise floor" in line
    assert len(annotations(matrix_lines)) == sum(not p.passed for p in result.cells[0].pair_results())
    assert all("mobilenet_v3_large%3Afrozen_eps0%3Abody" in line and "x the noise floor" in line
               for line in annotations(matrix_lines))
    assert annotations(check_lines) == ["::error title=verify preflight%3A onnxruntime model.onnx%3A goldens::"
                                        "folder: layer4[c=39]: 7.8x the floor"]


def test_junit_names_carry_the_pair_and_outputs():
    import xml.etree.ElementTree as ET

    result = matrix_result(fail={"onnxruntime"})
    root = ET.fromstring(matrix_junit(result))
    names = [case.get("name") for case in root.iter("testcase")]
    assert names[:2] == ["onnxruntime vs torchscript: layer3, layer4", "onnxruntime vs exportedprogram: layer3, layer4"]
    failure = root.find(".//failure").get("message")
    assert "onnxruntime vs torchscript" in failure and "layer4[c=39]" in failure and "x the float32 noise" in failure


# ------------------------------------------------------------------------------------------------
# Every default a help text or page states is the constant's
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["export"], ["compare"], ["explain"], ["matrix"]])
def test_factor_help_states_the_constant(command):
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    stated = re.search(r"--factor <float> .*?\[default: ([\d.]+)\]", text)
    assert stated and float(stated.group(1)) == AUTO_FACTOR, text


def test_html_legend_and_tolerance_text_state_the_constant():
    page = html_page(matrix_result())
    assert f"{AUTO_FACTOR:g} (allowed)" in page
    assert f"&lt;= {AUTO_FACTOR:g} x noise floor" in page
    tighter = matrix_result()
    tighter.settings["run"]["tolerance"]["factor"] = AUTO_FACTOR / 2
    assert f"{AUTO_FACTOR / 2:g} (allowed)" in html_page(tighter)


def test_readme_states_the_default_factor_as_the_constant():
    readme = (ROOT / "README.md").read_text()
    stated = re.findall(r"<= ([\d.]+) x (?:float32 )?noise floor", readme)
    stated += re.findall(r"default factor\s+\(([\d.]+)\)", readme)
    stated += re.findall(r"--factor[^\n]*?\[default: ([\d.]+)\]", readme)
    assert stated and all(float(value) == AUTO_FACTOR for value in stated), stated
