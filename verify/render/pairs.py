"""A `Report` (verify export / compare) as JUnit suites and a Markdown page, through the one JUnit writer
(verify/render/junit.py) and the one Markdown writer (verify/render/markdown.py) the matrix and the folder
checks use: one testcase per pair named by the pair and the outputs it compared, and one failing case per
problem that kept the runs from being judged."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from verify.render.junit import Case, Suite, junit_document, pair_case
from verify.render.markdown import Code, MarkdownPage, markdown_page, write_markdown
from verify.render.tiles import format_ratio

if TYPE_CHECKING:
    from verify.judge.compare import PairResult
    from verify.report import Report


def report_suites(report: Report) -> list[Suite]:
    subject = report.settings.get("spec") or " vs ".join(filter(None, (report.settings.get("a"),
                                                                      report.settings.get("b"))))
    classname = f"{report.command}.{subject}"
    suite = Suite(subject or report.command, seconds=sum(run.seconds for run in report.runs))
    suite.cases += [pair_case(classname, pair) for pair in report.pairs]
    suite.cases += [Case(classname, "judgeable", "failure", problem) for problem in report.problems]
    if not report.pairs and not report.problems:
        suite.cases.append(Case(classname, "verdict", "failure", "no pairs were judged"))
    return [suite]


def report_page(report: Report) -> MarkdownPage:
    rows = [[f"{p.a} vs {p.b}", Code(p.worst.where) if p.outputs else "-", _ratio(p),
             "✅ agree" if p.passed else "❌ differ"] for p in report.pairs]
    failed = sum(not p.passed for p in report.pairs)
    summary = (f"not judged: {len(report.problems)} problem(s)" if report.problems else
               f"{failed} of {len(report.pairs)} pairs disagree" if failed else f"all {len(report.pairs)} pairs agree")
    return MarkdownPage(f"verify {report.command}", report.passed, summary,
                        [report.settings.get("tolerance_text", "")],
                        header=["pair", "worst output", "x floor", "verdict"], align=["---", "---", "---:", "---"],
                        rows=rows, sections=[("Not judged", [("problem", p) for p in report.problems]),
                                             ("Notes", [("note", n) for n in report.notes])])


def _ratio(pair: PairResult) -> str:
    worst = pair.worst if pair.outputs else None
    return format_ratio(worst.ratio) if worst is not None and worst.ratio is not None else "-"


def write_report_outputs(report: Report, junit_path: Path | None, markdown_path: Path | None) -> list[Path]:
    """JUnit and Markdown of an export or compare report (Markdown appended when it is the step summary)."""
    from exporter.fsio import write_text_atomic

    written = []
    if junit_path:
        write_text_atomic(junit_path, junit_document(f"verify {report.command}", report_suites(report)))
        written.append(junit_path)
    if markdown_path:
        write_markdown(markdown_path, markdown_page(report_page(report)))
        written.append(markdown_path)
    return written
