"""Go/no-go checks as data (`CheckReport`, its `rows()`), and their renderings: terminal lines, JSON, JUnit XML,
Markdown (the last two by the one writer of rows)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from verify.render.rows import CheckRow, Group
from verify.report import versions


@dataclass
class Check:
    artifact: str
    """The artifact folder (or file) the check is about."""
    runtime: str
    """`integrity`, or the runtime that ran it."""
    name: str
    passed: bool
    message: str = ""
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False


@dataclass
class CheckReport:
    command: str
    checks: list[Check] = field(default_factory=list)
    summary: str = ""
    """The go/no-go line."""
    versions: dict[str, str] = field(default_factory=versions)
    inputs: dict[str, Path] = field(default_factory=dict)
    """Files the run read besides the folders, by what they are (`--verify-key`, `--checkpoint`): never written
    over by a report."""

    @property
    def passed(self) -> bool:
        return all(c.passed or c.skipped for c in self.checks) and bool(self.checks)

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def add(self, check: Check) -> Check:
        """Record `check`; its message is kept to one printable line (it may quote a tampered file)."""
        check.message = "".join(ch if ch.isprintable() else " " for ch in " ".join(str(check.message).split()))
        self.checks.append(check)
        return check

    def rows(self) -> list[CheckRow]:
        """One row per artifact x runtime x check, named `runtime: check` (the check names the file and what
        it compared), grouped by artifact."""
        return [CheckRow(Group(c.artifact), "check", f"{c.runtime}: {c.name}",
                         "skipped" if c.skipped else "passed" if c.passed else "failure", c.message,
                         seconds=c.seconds, classname=f"{c.artifact}.{c.runtime}") for c in self.checks]

    def to_dict(self) -> dict[str, Any]:
        return {"command": self.command, "passed": self.passed, "summary": self.summary,
                "versions": self.versions, "checks": [asdict(c) for c in self.checks]}


def render_checks(report: CheckReport, console: Any, annotate: bool | None = None) -> None:
    """One line per check, grouped by artifact, then the go/no-go line (every line whole at any width, for logs
    and grep); `annotate` (default: under GitHub Actions) adds a workflow annotation per failed check."""
    from verify.render.console import annotate as write_annotations
    from verify.render.console import github_actions, print_line
    from verify.render.text import markup

    current = None
    for check in report.checks:
        if check.artifact != current:
            current = check.artifact
            print_line(console, f"[bold]{markup(current)}[/]")
        mark = "[yellow]-[/]" if check.skipped else ("[green]✓[/]" if check.passed else "[red]✗[/]")
        message = f": {markup(check.message)}" if check.message else ""
        print_line(console, f"  {mark} {markup(check.runtime)} · {markup(check.name)}{message}")
    if report.summary:
        style = "bold green" if report.passed else "bold red"
        print_line(console, f"[{style}]{markup(report.summary)}[/]")
    if github_actions() if annotate is None else annotate:
        write_annotations(console, check_annotations(report))


def check_annotations(report: CheckReport) -> list[str]:
    """GitHub workflow annotations: one per failed check, titled by the artifact, runtime and check."""
    from verify.render.console import error_annotation

    found = [error_annotation(f"verify {report.command}: {c.runtime} {c.name}", f"{c.artifact}: {c.message}")
             for c in report.checks if not c.passed and not c.skipped]
    if not report.checks:
        found.append(error_annotation(f"verify {report.command}: nothing checked", report.summary or "no checks ran"))
    return found


def junit_xml(report: CheckReport) -> str:
    """JUnit XML in the common (Jenkins/GitLab) schema: the report's rows by the one JUnit writer."""
    from verify.render.junit import rows_junit

    return rows_junit(f"verify {report.command}", report.rows())


def markdown(report: CheckReport) -> str:
    """The checks as a Markdown page for a CI job page: the report's rows by the one Markdown writer."""
    from verify.render.markdown import rows_markdown

    return rows_markdown(f"verify {report.command}", report.passed, report.summary, report.rows())


def _refuse_over_inputs(report: CheckReport, *paths: Path | None) -> None:
    """A report written over a file the run read (a `--json pub.pem` replaced the public key it had just verified
    with, so the next check refused the key; a checkpoint likewise) is refused before anything is written."""
    import os

    from exporter.errors import UsageError

    for path in paths:
        for what, source in report.inputs.items():
            if path is not None and os.path.lexists(path) and os.path.exists(source) \
                    and os.path.samefile(path, source):
                raise UsageError(f"the report {path} is the {what} file this run read; write the report elsewhere "
                                 f"(nothing was written)")


def write_outputs(report: CheckReport, json_path: Path | None, junit_path: Path | None,
                  markdown_path: Path | None) -> list[Path]:
    """Write every output asked for, whatever the checks found. Every text is rendered before any is written (a
    rendering that fails leaves none of the set); a path that cannot be written does not keep the others from being
    written (its error is raised after them), and each file is written whole or not at all."""
    from exporter.errors import VerifyError
    from exporter.fsio import json_text, write_text_atomic
    from verify.render.markdown import write_markdown
    from verify.report import json_safe

    _refuse_over_inputs(report, json_path, junit_path, markdown_path)
    rendered = [(path, write, render()) for path, write, render in (
        (json_path, write_text_atomic, lambda: json_text(json_safe(report.to_dict()))),
        (junit_path, write_text_atomic, lambda: junit_xml(report)),
        (markdown_path, write_markdown, lambda: markdown(report))) if path]
    written, errors = [], []
    for path, write, text in rendered:
        try:
            write(path, text)
        except VerifyError as exc:
            errors.append(exc)
            continue
        written.append(path)
    if errors:
        raise errors[0]
    return written
