"""A `Report` (verify export / compare) as JUnit and Markdown: its rows (`Report.rows`) through the one JUnit
writer (verify/render/junit.py) and the one Markdown writer (verify/render/markdown.py) every command uses."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from verify.render.junit import rows_junit
from verify.render.markdown import rows_markdown, write_markdown

if TYPE_CHECKING:
    from verify.report import Report


def summary(report: Report) -> str:
    failed = sum(not p.passed for p in report.pairs)
    unequal = sum(bool(check.named) for check in report.layers)
    unjudged = sum(not check.passed and not check.named for check in report.layers)
    return (f"not judged: {len(report.problems)} problem(s)" if report.problems else
            f"{failed} of {len(report.pairs)} pairs disagree" if failed else
            f"{unequal} of {len(report.layers)} files have layers that differ on their own" if unequal else
            f"{unjudged} of {len(report.layers)} files' layers were not all re-run" if unjudged else
            f"all {len(report.pairs)} pairs agree" if report.pairs else "no pairs were judged")


def report_markdown(report: Report) -> str:
    from verify.report import floor_line

    floor = floor_line(report)
    return rows_markdown(f"verify {report.command}", report.passed, summary(report), report.rows(),
                         [report.settings.get("tolerance_text", "")],
                         [("noise floor", floor)] * bool(floor) + [("note", n) for n in report.notes])


def write_report_outputs(report: Report, junit_path: Path | None, markdown_path: Path | None) -> list[Path]:
    """JUnit and Markdown of an export or compare report (Markdown appended when it is the step summary)."""
    from exporter.fsio import write_text_atomic

    written = []
    if junit_path:
        write_text_atomic(junit_path, rows_junit(f"verify {report.command}", report.rows()))
        written.append(junit_path)
    if markdown_path:
        write_markdown(markdown_path, report_markdown(report))
        written.append(markdown_path)
    return written
