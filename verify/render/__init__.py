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


_RUN: dict = {"command": "", "paths": {}, "code": None, "error": ""}
"""The reports the running command was asked for, once its refusals passed (`start_reports`); settled at exit."""


def start_reports(command: str, *, json: Path | None = None, junit: Path | None = None, markdown: Path | None = None,
                  html: Path | None = None) -> None:
    """The run starts: remove the files of an earlier run at these paths (clear_stale_reports), and remember them so
    that a run that ends otherwise than with its own verdict (an error, an interrupt) writes a report saying so."""
    clear_stale_reports(json, junit, markdown, html)
    paths = {kind: Path(path) for kind, path in (("json", json), ("junit", junit), ("markdown", markdown),
                                                 ("html", html)) if path is not None}
    _RUN.update(command=command, paths=paths, code=None, error="")


def reports_finished(code: int) -> None:
    """The command ended with its own verdict's code: it wrote its reports itself."""
    _RUN["code"] = code


def reports_failed(message: str) -> None:
    """Why the run is failing (the one line printed): what the failure reports will say."""
    _RUN["error"] = message


def settle_reports(exit_code: int) -> list[Path]:
    """At exit: a run that did not end with its own verdict's code (an error after its work started, an interrupt,
    a SIGTERM after its reports were written) gets a failure report at each path asked for: JSON `passed: false`
    with `exit_code` and `error`, JUnit one testcase in error, Markdown and HTML one line; so a CI job reading the
    file finds the failure, never nothing or a pass. A path that cannot be written is removed. Returns those
    written."""
    run, written = dict(_RUN), []
    _RUN.update(command="", paths={}, code=None, error="")
    if not run["paths"] or run["code"] == exit_code:
        return written
    message = run["error"] or f"the run ended with exit code {exit_code} before its verdict"
    for kind, path in run["paths"].items():
        try:
            _write_failure(kind, path, run["command"], message, exit_code)
            written.append(path)
        except BaseException:  # noqa: B036 - one that cannot be written, or a second interrupt (Ctrl-C twice, CI's
            import contextlib  # SIGINT then SIGTERM) landing in its write, must not leave the verdict's pass behind

            from verify.render.markdown import is_step_summary

            with contextlib.suppress(OSError):
                if not is_step_summary(path):
                    path.unlink()
    return written


def failure_json(command: str, message: str, exit_code: int) -> dict:
    """What a JSON report says of a run that ended in an error: the same `passed` and `command` keys as a verdict's."""
    from verify.report import SCHEMA_VERSION

    return {"schema_version": SCHEMA_VERSION, "command": command, "passed": False, "exit_code": exit_code,
            "error": message}


def is_failure_report(data: object) -> bool:
    """Whether `data` (a JSON report read back) is what `failure_json` writes: a run that ended before its verdict."""
    keys = failure_json("", "", 0).keys()
    return isinstance(data, dict) and set(data) <= keys and data.get("passed") is False \
        and isinstance(data.get("error"), str)


def _write_failure(kind: str, path: Path, command: str, message: str, exit_code: int) -> None:
    import html

    from exporter.fsio import write_text_atomic
    from verify.render.junit import Case, Suite, junit_document
    from verify.render.markdown import write_markdown
    from verify.render.text import md_text
    from verify.report import write_json_report

    title = f"verify {command}".strip()
    line = f"error (exit {exit_code}): {message}"
    if kind == "json":
        write_json_report(failure_json(command, message, exit_code), path)
    elif kind == "junit":
        write_text_atomic(path, junit_document(title, [Suite(title, [Case(title, "run", "error", line)])]))
    elif kind == "markdown":
        write_markdown(path, f"## ❌ {md_text(title)}\n\n**{md_text(line)}**\n")
    else:
        write_text_atomic(path, f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}: "
                                f"error</title></head><body><h1>{html.escape(title)}</h1><p>✗ {html.escape(line)}"
                                "</p></body></html>\n")
