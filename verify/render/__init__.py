"""Renderings of one `MatrixResult`: terminal table, JSON, JUnit XML, Markdown and a self-contained
HTML page. Each module turns the same result model into text; nothing here runs or judges."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from verify.matrix import MatrixResult

def write_outputs(result: MatrixResult, json_path: Path | None = None, junit_path: Path | None = None,
                  markdown_path: Path | None = None, html_path: Path | None = None) -> list[Path]:
    """Write the requested files (each atomically; Markdown appended when it is $GITHUB_STEP_SUMMARY);
    returns the paths written."""
    from exporter.fsio import write_text_atomic
    from verify.render.html_page import html_page
    from verify.render.json_report import json_text
    from verify.render.junit import junit_xml
    from verify.render.markdown import markdown, write_markdown

    written = []
    for path, render in ((json_path, json_text), (junit_path, junit_xml), (markdown_path, markdown),
                         (html_path, html_page)):
        if path:
            (write_markdown if render is markdown else write_text_atomic)(path, render(result))
            written.append(path)
    return written
