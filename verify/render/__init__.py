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
    from exporter.fsio import json_text, write_text_atomic
    from verify.render.html_page import html_page
    from verify.render.junit import junit_xml
    from verify.render.markdown import markdown, write_markdown
    from verify.report import json_safe

    rendered = [(path, write, render()) for path, write, render in (
        (json_path, write_text_atomic, lambda: json_text(json_safe(result.to_dict()))),
        (junit_path, write_text_atomic, lambda: junit_xml(result)),
        (markdown_path, write_markdown, lambda: markdown(result)),
        (html_path, write_text_atomic, lambda: html_page(result))) if path]
    # every text is rendered before any is written: a rendering that fails leaves none of the set written
    for path, write, text in rendered:
        write(path, text)
    return [path for path, _, _ in rendered]


def clear_stale_reports(*paths: Path | None) -> None:
    """Remove the report files a run was asked to write, once the run starts: a run that ends in an error writes
    none, and the files of an earlier run must not stand in for it (a passing --json, --junit or --markdown stayed
    beside the exit 2 of a checkpoint that could not be read). $GITHUB_STEP_SUMMARY is appended to, never removed."""
    import contextlib

    from exporter.fsio import path_kind
    from verify.render.markdown import is_step_summary

    for path in paths:
        if path is not None and path_kind(Path(path)) is None and not is_step_summary(Path(path)):
            with contextlib.suppress(FileNotFoundError):
                Path(path).unlink()
