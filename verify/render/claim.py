"""The report files a command line names, claimed the moment the `verify` script starts (verify/__main__.py), before
the CLI loads: an earlier run's report at one of those paths is removed there, so that a run stopped before its own
checks (a SIGTERM 0.1 s in; the CLI's import alone takes 0.3-0.5 s) never leaves it behind as if it were its own
(surface 29: `verify export ... --json out.json` killed 0.1-0.3 s in exited 143 beside the earlier run's pass).
Standard library only: it runs before anything else is imported."""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path

REPORT_OPTIONS = ("--json", "--junit", "--markdown", "--html")
"""The options that name a report file, in every command (each checked by verify/cli/options.py check_output_file)."""
STEP_SUMMARY = "GITHUB_STEP_SUMMARY"
"""GitHub's per-step summary file: appended to, never replaced (verify/render/markdown.py)."""
HELP = "--help"
CLAIM_READ_LIMIT = 64 * 2**20
"""Bytes read, at most, to tell whether a file is an earlier report; a larger one is left to the run's own checks."""
_JUNIT_ROOT = re.compile(r"(<\?xml[^>]*\?>\s*)?<testsuites[\s>/]")
_MARKDOWN_HEADINGS = ("## ✅", "## ❌")  # verify/render/markdown.py markdown_page, failure reports included


def report_arguments(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """The report paths `argv` names (`--json PATH`, `--json=PATH`) and every other argument (an option's value
    given as `--opt=VALUE` counted as VALUE), up to a `--` (after it, all are arguments); none of either with
    `--help`, which runs nothing."""
    reports: list[str] = []
    others: list[str] = []
    tokens = list(argv)
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token == "--":
            others += tokens[index + 1:]
            break
        if token == HELP:
            return [], []
        name, equals, value = token.partition("=")
        if name in REPORT_OPTIONS:
            if equals:
                reports.append(value)
            elif index + 1 < len(tokens):
                index += 1
                reports.append(tokens[index])
        else:
            others.append(value if equals and name.startswith("--") else token)
        index += 1
    return reports, others


def claim_report_paths(argv: Sequence[str]) -> list[Path]:
    """Remove each file at a report path `argv` names that reads as a report of this tool (`is_earlier_report`) and
    that no other argument names or lies above (a shard report `verify matrix merge` reads, a folder `verify artifact`
    checks, the --input file): the run's checks refuse those later, and anything else waits for them
    (verify/render `start_reports`). $GITHUB_STEP_SUMMARY is never removed. Returns the paths removed; a path that
    cannot be read or removed is left as it is, for those checks to name."""
    reports, others = report_arguments(argv)
    removed = []
    for text in dict.fromkeys(reports):
        path = Path(text)
        try:
            if not text or _is_step_summary(path) or _named_by(path, others) or not is_earlier_report(path):
                continue
            path.unlink()
        except (OSError, ValueError):
            continue
        removed.append(path)
    return removed


def is_earlier_report(path: Path) -> bool:
    """Whether the regular file at `path` (or that a link there points to) is a report of this tool: JSON whose top
    level has a true or false `passed` (every command's, failure reports included), JUnit XML (a `testsuites` root),
    Markdown opening with the verdict's heading, or an HTML page whose title names verify."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_size > CLAIM_READ_LIMIT:
            return False  # a FIFO or a device is never opened
        with open(path, "rb") as handle:
            text = handle.read(CLAIM_READ_LIMIT).decode("utf-8")
    except (OSError, ValueError):
        return False
    head = text.lstrip()
    if head.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            return False
        return isinstance(data, dict) and isinstance(data.get("passed"), bool)
    if _JUNIT_ROOT.match(head) or head.startswith(_MARKDOWN_HEADINGS):
        return True
    title = re.search(r"<title>([^<]*)</title>", head[:4096])
    return head[:15].lower() == "<!doctype html>" and title is not None and "verify" in title.group(1)


def _is_step_summary(path: Path) -> bool:
    summary = os.environ.get(STEP_SUMMARY)
    return bool(summary) and _same(path, Path(summary))


def _named_by(path: Path, others: list[str]) -> bool:
    """Whether another argument names `path` (the same file, or a folder holding it); `file.py:factory` names
    file.py."""
    real = Path(os.path.realpath(path))
    for text in others:
        for candidate in {text, text.partition(":")[0]}:
            if not candidate or not os.path.exists(candidate):
                continue
            if _same(path, Path(candidate)) or os.path.isdir(candidate) \
                    and real.is_relative_to(os.path.realpath(candidate)):
                return True
    return False


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return os.path.realpath(a) == os.path.realpath(b)
