"""Report injection: labels, paths, messages and notes hold what an attacker (a tampered folder, a shard
report, a user model's names) or an accident put there: control characters, XML and HTML closers,
backticks, pipes, newlines. Every renderer must keep its format: JUnit parses, Markdown carries no raw HTML
and one table row per row, the HTML page no tag of theirs, the terminal one line per pair, GitHub
annotations one line each, JSON the exact strings."""

from __future__ import annotations

import io
import json
import re
import shutil
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from verify.cli import app
from verify.folder.checks import Check, CheckReport, check_annotations, render_checks
from verify.folder.checks import junit_xml as checks_junit
from verify.folder.checks import markdown as checks_markdown
from verify.judge.compare import AUTO_FACTOR, OutputComparison, PairResult, Tolerance
from verify.matrix import CellResult, MatrixResult
from verify.render import write_outputs
from verify.render.html_page import html_page
from verify.render.junit import junit_xml as matrix_junit
from verify.render.junit import rows_junit
from verify.render.markdown import ROWS_HEADER, STEP_SUMMARY
from verify.render.markdown import markdown as matrix_markdown
from verify.render.matrix_table import matrix_annotations, render_matrix
from verify.render.pairs import report_markdown
from verify.render.text import gh_data, gh_property, md_text, one_line, xml_text
from verify.report import Report, pair_annotations, render_pairs

MALICIOUS = {
    "control": "a\x00b\x07c\x1b[31mred\x1b[0m\x7f\x9b\x08",
    "closing-tag": "</failure></testcase></testsuite><testcase name='forged'>",
    "cdata": "]]><![CDATA[x]]>--><!--",
    "backticks": "``` `code` ```\\`",
    "script": "<script>alert(1)</script><img src=x onerror=alert(1)>",
    "pipes": "a | b || c\\|d |",
    "newlines": "line1\nline2\r\nok   forged vs line  1.0x floor\n::error::forged\n| x | y |",
    "bidi": "safe\u202etxt.exe\u2066",
    "xml-nonchars": "\ufffe\uffff\udfff\ud800\x0b\x0c",  # lone surrogates, not a pair
    "markdown": "[click](javascript:alert(1)) ![i](http://x/y.png) **b** _i_ # h <!-- c -->",
    "entities": "&lt;script&gt; &amp; &#60;b&#62; &#x3C;",
    "github": "%0A::error title=x::y,z:w %25 \r",
    "rich-markup": "[bold red]x[/] [link=http://x]y[/link] \\[z]",
}
IDS = list(MALICIOUS)
RAW_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff\ufffe\uffff]")
OWN_HTML_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "span", "table", "thead",
                 "tbody", "tr", "th", "td", "a", "br", "details", "summary", "code", "ul", "li"}
MARKDOWN_TAGS = {"h2", "h3", "p", "strong", "em", "table", "thead", "tbody", "tr", "th", "td", "ul", "li", "code"}
runner = CliRunner()


def comparison(name: str, passed: bool, channel: int | None = 3, reason: str = "") -> OutputComparison:
    ratio = AUTO_FACTOR / 2 if passed else AUTO_FACTOR * 1.5
    return OutputComparison(name, [1, 4, 2, 2], [1, 4, 2, 2], passed,
                            reason or ("" if passed else "3 of 16 elements out of tolerance"), max_abs=2.2e-5,
                            max_rel=1e-6, mismatched=0 if passed else 3, total=16, floor=1e-6, ratio=ratio,
                            channel=channel)


def pairs_with(evil: str) -> list[PairResult]:
    return [PairResult("onnxruntime", "eager", [comparison("layer4", False, reason=evil)]),
            PairResult(f"{evil}", "eager", [comparison(evil, True)]),
            PairResult("torchscript", evil, [comparison("layer3", False)])]


def report_with(evil: str) -> Report:
    tolerance = Tolerance()
    return Report("export", {"tolerance": tolerance.to_dict(), "tolerance_text": tolerance.describe()}, {},
                  pairs=pairs_with(evil), floor_source=evil, legend={evil: evil}, notes=[evil], problems=[])


def checks_with(evil: str) -> CheckReport:
    report = CheckReport("artifact", summary=f"NO-GO: {evil}")
    report.checks = [Check(evil, "integrity", f"{evil}: sha256", False, evil),  # added raw: a merged/loaded report
                     Check(evil, "onnxruntime", f"model.onnx: goldens {evil}", True, evil),
                     Check("folder", evil, "latency", False, f"p50 {evil}", skipped=False),
                     Check("folder", "onnxruntime", evil, True, "", skipped=True)]
    return report


def matrix_with(evil: str) -> MatrixResult:
    pairs = [p.to_dict() for p in pairs_with(evil)]
    cells = [CellResult("c1", "resnet18", "frozen", "body", "disagree", pairs=pairs, notes=[evil]),
             CellResult("c2", evil, evil, evil, "agree", pairs=[pairs[1]]),
             CellResult("c3", f"{evil}.py:make", "", "", "error", error=evil)]
    tolerance = Tolerance()
    return MatrixResult({"run": {"tolerance": tolerance.to_dict()}, "tolerance_text": tolerance.describe()},
                        "f" * 16, [{"id": c.id, "spec": c.spec} for c in cells], cells=cells,
                        versions={"torch": evil}, cache={"hits": {"result": 1}, "misses": {}})


# ------------------------------------------------------------------------------------------------
# JUnit: always well formed, nothing forged
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("evil", MALICIOUS.values(), ids=IDS)
def test_junit_is_well_formed_and_forges_no_testcase(evil):
    report = report_with(evil)
    for text, expected_cases in ((checks_junit(checks_with(evil)), 4), (matrix_junit(matrix_with(evil)), 3 + 1 + 1),
                                 (rows_junit("verify export", report.rows()), len(report.pairs))):
        root = ET.fromstring(text.encode("utf-8"))
        cases = root.findall("./testsuite/testcase")
        assert len(cases) == expected_cases == int(root.get("tests"))
        assert not any(c.get("name") == "forged" for c in root.iter())
        for element in root.iter():
            for value in element.attrib.values():
                assert "\n" not in value and not RAW_CONTROL.search(value)
            assert not RAW_CONTROL.search(element.text or "")
        failures = root.findall(".//failure")
        assert len(failures) == int(root.get("failures")) >= 1


def test_junit_keeps_what_it_escaped_readable():
    root = ET.fromstring(checks_junit(checks_with(MALICIOUS["control"])))
    message = root.find(".//failure").get("message")
    assert message == xml_text(MALICIOUS["control"]) and "\\x1b[31mred" in message


# ------------------------------------------------------------------------------------------------
# Markdown: no raw HTML, one table row per row, no formatting of theirs
# ------------------------------------------------------------------------------------------------


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []
        self.comments: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes += attrs

    def handle_comment(self, data):
        self.comments.append(data)


def parsed(html: str) -> Tags:
    tags = Tags()
    tags.feed(html)
    return tags


def rendered_markdown(text: str) -> str:
    """The page as a CommonMark + GFM-tables renderer with raw HTML allowed sees it (what would get through)."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": True}).enable("table").render(text)


@pytest.mark.parametrize("evil", MALICIOUS.values(), ids=IDS)
def test_markdown_has_no_raw_html_and_one_row_per_row(evil):
    for text, rows, columns in ((checks_markdown(checks_with(evil)), 4, len(ROWS_HEADER)),
                                (report_markdown(report_with(evil)), len(report_with(evil).pairs), len(ROWS_HEADER)),
                                (matrix_markdown(matrix_with(evil)), 3, 2 + len(matrix_with(evil).pair_columns()))):
        assert "<" not in text and ">" not in text.replace("&gt;", "")
        html = rendered_markdown(text)
        tags = parsed(html)
        assert set(tags.tags) <= MARKDOWN_TAGS, set(tags.tags) - MARKDOWN_TAGS
        assert not tags.attributes or all(name == "style" for name, _ in tags.attributes)  # alignment only
        assert not tags.comments
        assert tags.tags.count("tr") == rows + 1  # the header and one row per row
        for row in re.findall(r"<tr>(.*?)</tr>", html, re.S):
            assert len(re.findall(r"<t[hd][ >]", row)) == columns
        table = [line for line in text.splitlines() if line.startswith("|")]
        assert len(table) == rows + 2


def test_markdown_escapes_formatting_and_keeps_plain_names_as_code():
    assert md_text("**b** [l](x) `c` a|b <i> &amp;") == \
        r"\*\*b\*\* \[l\](x) \`c\` a\|b &lt;i&gt; &amp;amp;"
    text = matrix_markdown(matrix_with("fine"))
    assert "| `resnet18:frozen:body` |" in text


# ------------------------------------------------------------------------------------------------
# HTML page, terminal, annotations, JSON
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("evil", MALICIOUS.values(), ids=IDS)
def test_html_page_holds_no_tag_of_theirs(evil):
    page = html_page(matrix_with(evil))
    page.encode("utf-8")  # a lone surrogate from a JSON report could not even be written
    tags = parsed(page)
    assert set(tags.tags) <= OWN_HTML_TAGS and "script" not in tags.tags and "img" not in tags.tags
    assert not any(name.startswith("on") for name, _ in tags.attributes)
    assert not tags.comments and not RAW_CONTROL.search(page)


def terminal(render, *args, **kwargs) -> list[str]:
    buffer = io.StringIO()
    render(*args, Console(file=buffer, width=80), **kwargs)
    return buffer.getvalue().splitlines()


@pytest.mark.parametrize("evil", MALICIOUS.values(), ids=IDS)
def test_terminal_shows_one_line_per_pair_and_nothing_the_terminal_runs(evil):
    report, matrix, checks = report_with(evil), matrix_with(evil), checks_with(evil)
    for lines, expected in ((terminal(render_pairs, report, annotate=False), len(report.pairs)),
                            (terminal(render_matrix, matrix, annotate=False), 4)):
        verdicts = [line for line in lines if line.startswith(("ok ", "FAIL "))]
        assert len(verdicts) == expected, lines  # a newline in a name forges no verdict line
        assert not any(RAW_CONTROL.search(line) for line in lines)
    lines = terminal(render_checks, checks, annotate=False)
    assert len([line for line in lines if line.startswith(("  ✓", "  ✗", "  -"))]) == len(checks.checks)
    assert not any(RAW_CONTROL.search(line) for line in lines)


def unescape_data(text: str) -> str:
    return text.replace("%0D", "\r").replace("%0A", "\n").replace("%25", "%")


@pytest.mark.parametrize("evil", MALICIOUS.values(), ids=IDS)
def test_annotations_stay_one_command_each(evil):
    for commands, failing in ((pair_annotations(report_with(evil)), 2), (matrix_annotations(matrix_with(evil)), 3),
                              (check_annotations(checks_with(evil)), 2)):
        assert len(commands) == failing
        for command in commands:
            assert "\n" not in command and "\r" not in command and not RAW_CONTROL.search(command)
            match = re.fullmatch(r"::error title=([^:,]*)::(.*)", command)
            assert match, command
            assert "\n" not in unescape_data(match.group(2))  # the message is one line once GitHub reads it
    printed = terminal(render_pairs, report_with(evil), annotate=True)
    assert len([line for line in printed if line.startswith("::")]) == 2


def test_github_escaping_follows_the_runner_rules():
    assert gh_data("50%\r\nnext") == "50%25%0D%0Anext"
    assert gh_property("a:b,c%") == "a%3Ab%2Cc%25"
    assert unescape_data(gh_data("100% sure\nreally")) == "100% sure\nreally"


@pytest.mark.parametrize("evil", MALICIOUS.values(), ids=IDS)
def test_json_keeps_the_exact_strings(evil, tmp_path):
    write_outputs(matrix_with(evil), json_path=tmp_path / "m.json")
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["cells"][0]["notes"] == [evil] and data["cells"][2]["error"] == evil


def test_one_line_shows_controls_and_flattens_whitespace():
    assert one_line("a\n\tb\x1b[0m\u202ec") == "a b\\x1b[0m\\u202ec"


# ------------------------------------------------------------------------------------------------
# Files: written where asked, nothing else touched; $GITHUB_STEP_SUMMARY appended to
# ------------------------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("evil", MALICIOUS.values(), ids=IDS)
def test_written_files_are_only_those_asked_for(evil, tmp_path):
    (tmp_path / "sentinel.txt").write_text("keep")
    before = snapshot(tmp_path)
    out = tmp_path / "out"
    paths = {kind: out / f"r.{kind}" for kind in ("json", "xml", "md", "html")}
    written = write_outputs(matrix_with(evil), paths["json"], paths["xml"], paths["md"], paths["html"])
    assert sorted(written) == sorted(paths.values())
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("out/")} == before
    assert set(after) - set(before) == {f"out/r.{kind}" for kind in paths}
    ET.parse(paths["xml"])


def test_markdown_appends_to_the_step_summary_and_replaces_other_files(tmp_path, monkeypatch):
    summary, other = tmp_path / "summary.md", tmp_path / "other.md"
    summary.write_text("## earlier step\n")
    other.write_text("stale\n")
    monkeypatch.setenv(STEP_SUMMARY, str(summary))
    for _ in range(2):
        write_outputs(matrix_with("x"), markdown_path=summary)
        write_outputs(matrix_with("x"), markdown_path=other)
    text = summary.read_text()
    assert text.startswith("## earlier step\n") and text.count("verify matrix") == 2
    assert other.read_text().count("verify matrix") == 1 and "stale" not in other.read_text()


# ------------------------------------------------------------------------------------------------
# End to end: a folder whose name is an attack, checked by `verify artifact` in a GitHub job
# ------------------------------------------------------------------------------------------------

FOLDER_NAME = "r<script>|`x`]]>\x1b[31m\nline & [b]"
"""Everything a file name may hold (no NUL, no slash) that a report could mistake for its own syntax."""


@pytest.fixture(scope="module")
def tiny_export(module_tmp):
    out = module_tmp("tiny-export")
    result = runner.invoke(app, ["export", "--model", str(Path(__file__).parent / "data" / "tiny.py") + ":make_dict",
                                 "--format", "onnx", "--shape", "1x3x32x32", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return next(out.iterdir())


def run_artifact(folder: Path, tmp_path: Path, **env: str):
    outputs = {kind: tmp_path / "reports" / name for kind, name in
               (("junit", "j.xml"), ("markdown", "s.md"), ("json", "r.json"))}
    args = ["artifact", str(folder)] + [a for kind, path in outputs.items() for a in (f"--{kind}", str(path))]
    return runner.invoke(app, args, env={"GITHUB_ACTIONS": "true", STEP_SUMMARY: "", **env}), outputs


@pytest.mark.parametrize("broken", [False, True], ids=["intact", "one-byte-flipped"])
def test_an_attack_folder_name_reaches_no_report_raw(tiny_export, tmp_path, broken):
    folder = shutil.copytree(tiny_export, tmp_path / "work" / FOLDER_NAME)
    if broken:
        model = folder / "model.onnx"
        data = bytearray(model.read_bytes())
        data[len(data) // 2] ^= 0xFF
        model.write_bytes(bytes(data))
    (tmp_path / "sentinel.txt").write_text("keep")
    before = snapshot(tmp_path)
    result, outputs = run_artifact(folder, tmp_path)
    assert result.exit_code == (1 if broken else 0), result.output
    assert "Traceback" not in result.output
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("reports/")} == before  # the folder untouched
    assert set(after) - set(before) == {f"reports/{p.name}" for p in outputs.values()}
    root = ET.parse(outputs["junit"]).getroot()
    assert (int(root.get("failures")) >= 1) == broken
    markdown = outputs["markdown"].read_text()
    assert "<" not in markdown and set(parsed(rendered_markdown(markdown)).tags) <= MARKDOWN_TAGS
    assert json.loads(outputs["json"].read_text())["checks"][0]["artifact"].endswith(FOLDER_NAME)
    lines = result.stdout.splitlines()
    assert not any(RAW_CONTROL.search(line) for line in lines)
    annotations = [line for line in lines if line.startswith("::error")]
    failed = [line for line in lines if line.startswith("  ✗")]
    assert len(annotations) == len(failed) == (len(failed) if broken else 0)
    if broken:
        assert failed and any("sha256" in line for line in failed)  # one line that names the problem
        assert all(re.fullmatch(r"::error title=[^:,]*::.*", line) for line in annotations)
