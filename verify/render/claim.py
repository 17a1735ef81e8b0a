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
STREAM_FOLDERS = ("/dev", "/dev/fd")
"""Folders whose entries are devices or standard streams (/dev/stdout, /dev/fd/1), never a report file (a folder below
them, /dev/shm, holds files); anything under /proc is one too (/proc/self/fd/1)."""


VALUE_OPTIONS = frozenset({
    "--atol", "--backbone", "--cache-dir", "--check", "--checkpoint", "--decimal", "--detector-shape", "--device",
    "--factor", "--format", "--input", "--jobs", "--max-latency-ms", "--max-size", "--model", "--norm",
    "--onnx-exporter", "--opset", "--ort-opt-level", "--out", "--precision", "--provider", "--rtol", "--runs",
    "--runtime", "--samples", "--seed", "--shape", "--shard", "--shard-count", "--sign-key", "--timeout",
    "--verify-key", "--view", "--warmup", "--weights", "-b", "-j", "-n", "-o", *REPORT_OPTIONS})
"""Every option of every command that takes a value (the next argument, or `--opt=VALUE`, `-bVALUE`): review 30,
`verify export --model --json r.json` (typer reads `--json` as --model's value, r.json as an extra argument, a usage
error) removed r.json. tests/test_review30.py checks this set and FLAG_OPTIONS against the CLI's own options."""
FLAG_OPTIONS = frozenset({
    "--isolate", "--layers", "--no-cache", "--no-layers", "--no-normalize", "--no-tf32", "--normalize", "--overwrite",
    "--rebuild", "--static", "--tf32", "--trace", "--trust-unsigned-code", "--verbose", "-v", HELP})
"""Every option that takes no value. An option in neither set (a plug-in's) is taken to take one: its next argument
is never claimed."""
MANIFEST_SCHEMA = "backbone-verify/manifest"
"""exporter/manifest.py MANIFEST_SCHEMA (not imported: standard library only): an export folder's manifest.json has a
top-level `passed` too, and is never an earlier report (review 30: `verify compare F/model.pt ... --json
F/manifest.json --no-cach`, a usage error, removed the folder's manifest)."""


def report_arguments(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """The report paths `argv` names (`--json PATH`, `--json=PATH`) and every other argument (an option's value
    counted as one), read as click reads them: an option's value is the next argument whatever it looks like, short
    options cluster (`-vb NAME`, `-bNAME`), and after a `--` all are arguments; none of either with `--help` where it
    is an option (it runs nothing)."""
    reports: list[str] = []
    others: list[str] = []
    tokens = list(argv)
    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        if token == "--":
            others += tokens[index:]
            break
        if token == HELP:
            return [], []
        if not token.startswith("-") or token == "-":
            others.append(token)
            continue
        name, value = _option_and_value(token)
        if name in FLAG_OPTIONS:
            continue
        if value is None:
            if index == len(tokens):
                break
            value, index = tokens[index], index + 1
        (reports if name in REPORT_OPTIONS else others).append(value)
    return reports, others


def _option_and_value(token: str) -> tuple[str, str | None]:
    """The option a token names and its value where the token holds it (`--opt=VALUE`, `-bVALUE`, `-vbVALUE`);
    a cluster of flags alone (`-vv`) is a flag."""
    if token.startswith("--"):
        name, equals, value = token.partition("=")
        return name, value if equals else None
    for position in range(1, len(token)):
        name = "-" + token[position]
        if name not in FLAG_OPTIONS:
            return name, token[position + 1:] or None
    return "-" + token[-1], None


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
            if not text or names_a_stream(text) or _is_step_summary(path) or _named_by(path, others) \
                    or not is_earlier_report(path):
                continue
            path.unlink()
        except (OSError, ValueError):
            continue
        removed.append(path)
    return removed


def names_a_stream(text: str | Path) -> bool:
    """Whether a report path is `-` or names a device or a stream (STREAM_FOLDERS, /proc) by its name, its folder's
    real place or its link's target: a report is a new file renamed over its path, so `--json /dev/stdout` with
    stdout redirected to a file replaced the link /dev/stdout itself with the report, as root (hunt 27), and `-`
    wrote a file named `-`."""
    text = os.fspath(text)
    if text == "-":
        return True
    absolute = os.path.abspath(text)
    places = [absolute, os.path.join(os.path.realpath(os.path.dirname(absolute)), os.path.basename(absolute))]
    try:
        if os.path.islink(absolute):
            places.append(os.path.join(os.path.dirname(absolute), os.readlink(absolute)))
    except (OSError, ValueError):
        pass
    return any(os.path.dirname(place) in STREAM_FOLDERS or place == "/proc" or place.startswith("/proc/")
               for place in map(os.path.normpath, places))


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
        return isinstance(data, dict) and isinstance(data.get("passed"), bool) \
            and data.get("schema") != MANIFEST_SCHEMA
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
