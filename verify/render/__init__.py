"""Renderings of results: terminal tables, JUnit XML and Markdown of every command's rows (verify/render/rows.py),
the matrix's grid and a self-contained HTML page; JSON is verify/report.py `write_json_report` for every
command. Each module turns a result model into text; nothing here runs or judges."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from verify.matrix import MatrixResult


def write_outputs(result: MatrixResult, json_path: Path | None = None, junit_path: Path | None = None,
                  markdown_path: Path | None = None, html_path: Path | None = None) -> list[Path]:
    """Write the requested files (each atomically; Markdown appended when it is $GITHUB_STEP_SUMMARY; JSON
    by the strict writer every command uses); returns the paths written."""
    from exporter.fsio import write_text_atomic
    from verify.render.html_page import html_page
    from verify.render.junit import junit_xml
    from verify.render.markdown import markdown, write_markdown
    from verify.report import write_json_report

    writers = ((json_path, lambda path: write_json_report(result.to_dict(), path)),
               (junit_path, lambda path: write_text_atomic(path, junit_xml(result))),
               (markdown_path, lambda path: write_markdown(path, markdown(result))),
               (html_path, lambda path: write_text_atomic(path, html_page(result))))
    written = []
    for path, write in writers:
        if path:
            write(path)
            written.append(path)
    return written
