"""Go/no-go checks as data, and their renderings: terminal lines, JSON, JUnit XML, Markdown."""

from __future__ import annotations

import datetime
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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

    def to_dict(self) -> dict[str, Any]:
        return {"command": self.command, "passed": self.passed, "summary": self.summary,
                "versions": self.versions, "checks": [asdict(c) for c in self.checks]}


def render_checks(report: CheckReport, console: Any) -> None:
    """One line per check, grouped by artifact, then the go/no-go line."""
    from rich.markup import escape

    current = None
    for check in report.checks:
        if check.artifact != current:
            current = check.artifact
            console.print(f"[bold]{escape(current)}[/]", soft_wrap=True)
        mark = "[yellow]-[/]" if check.skipped else ("[green]✓[/]" if check.passed else "[red]✗[/]")
        message = f": {escape(' '.join(check.message.split()))}" if check.message else ""
        console.print(f"  {mark} {escape(check.runtime)} · {escape(check.name)}{message}", highlight=False,
                      soft_wrap=True)  # one line per check, for logs and grep
    if report.summary:
        style = "bold green" if report.passed else "bold red"
        console.print(f"[{style}]{escape(report.summary)}[/]", soft_wrap=True)


def junit_xml(report: CheckReport) -> str:
    """JUnit XML in the common (Jenkins/GitLab) schema: one testsuite per artifact, one
    testcase per artifact x runtime x check."""
    import xml.etree.ElementTree as ET

    suites: dict[str, list[Check]] = {}
    for check in report.checks:
        suites.setdefault(check.artifact, []).append(check)
    root = ET.Element("testsuites", name=f"verify {report.command}", tests=str(len(report.checks)),
                      failures=str(sum(not c.passed and not c.skipped for c in report.checks)),
                      errors="0", skipped=str(sum(c.skipped for c in report.checks)),
                      time=f"{sum(c.seconds for c in report.checks):.3f}")
    stamp = datetime.datetime.now().replace(microsecond=0).isoformat()
    for artifact, checks in suites.items():
        suite = ET.SubElement(root, "testsuite", name=artifact, tests=str(len(checks)),
                              failures=str(sum(not c.passed and not c.skipped for c in checks)), errors="0",
                              skipped=str(sum(c.skipped for c in checks)),
                              time=f"{sum(c.seconds for c in checks):.3f}", timestamp=stamp,
                              hostname=platform.node() or "localhost")
        for check in checks:
            case = ET.SubElement(suite, "testcase", classname=f"{artifact}.{check.runtime}", name=check.name,
                                 time=f"{check.seconds:.3f}")
            if check.skipped:
                ET.SubElement(case, "skipped", message=check.message)
            elif not check.passed:
                failure = ET.SubElement(case, "failure", message=check.message, type="verify")
                failure.text = check.message
            elif check.message:
                ET.SubElement(case, "system-out").text = check.message
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def markdown(report: CheckReport) -> str:
    """A summary for a CI job page."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    failed = sum(not c.passed and not c.skipped for c in report.checks)
    head = "✅" if report.passed else "❌"
    lines = [f"## {head} verify {report.command}", "",
             f"{len(report.checks) - failed} of {len(report.checks)} checks passed.", ""]
    if report.summary:
        lines += [f"**{cell(report.summary)}**", ""]
    lines += ["| artifact | runtime | check | result | detail |", "| --- | --- | --- | --- | --- |"]
    for c in report.checks:
        result = "skipped" if c.skipped else ("✅ pass" if c.passed else "❌ fail")
        lines.append(f"| {cell(c.artifact)} | {cell(c.runtime)} | {cell(c.name)} | {result} | {cell(c.message)} |")
    return "\n".join(lines) + "\n"


def write_outputs(report: CheckReport, json_path: Path | None, junit_path: Path | None,
                  markdown_path: Path | None) -> list[Path]:
    """Write every output asked for, whatever the checks found; a path that cannot be written does not
    keep the others from being written (its error is raised after them)."""
    from exporter.errors import VerifyError
    from exporter.fsio import write_text_atomic
    from verify.report import write_json_report

    written, errors = [], []
    writers = ((json_path, lambda p: write_json_report(report.to_dict(), p)),
               (junit_path, lambda p: write_text_atomic(p, junit_xml(report))),
               (markdown_path, lambda p: write_text_atomic(p, markdown(report))))
    for path, write in writers:
        if path:
            try:
                write(path)
            except VerifyError as exc:
                errors.append(exc)
                continue
            written.append(path)
    if errors:
        raise errors[0]
    return written
