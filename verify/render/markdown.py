"""Markdown for a CI job page (GitHub's $GITHUB_STEP_SUMMARY, a GitLab/Jenkins artifact), one writer for
every report: a report's rows (verify/render/rows.py) become a `MarkdownPage` (`rows_page`; the matrix adds
its grid of cells x pairs) and `markdown_page` writes it, every string that is not
the writer's own escaped (verify/render/text.py): no raw HTML, no formatting, one table row per row.

`--markdown "$GITHUB_STEP_SUMMARY"` appends to that file (other steps and commands write there too);
any other path is replaced atomically."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from verify.render.claim import STEP_SUMMARY
from verify.render.rows import format_ratio
from verify.render.text import md_code, md_text
from verify.render.tiles import tiles

if TYPE_CHECKING:
    from collections.abc import Sequence

    from verify.matrix import MatrixResult
    from verify.render.rows import CheckRow

RESULT_TEXT = {"passed": "✅ pass", "failure": "❌ fail", "error": "⚠️ error", "skipped": "skipped"}
"""The result column of the rows table, per outcome."""
ROWS_HEADER = ["subject", "check", "worst output", "x floor", "result", "detail"]
ROWS_ALIGN = ["---", "---", "---", "---:", "---", "---"]
EMOJI = {"ok": "✅", "near": "✅", "fail": "❌", "error": "⚠️", "none": "·"}


class Code(str):
    """A table cell or list item shown as a code span (a model spec, a path), still escaped."""


@dataclass
class MarkdownPage:
    title: str
    passed: bool
    summary: str = ""
    """Shown in bold under the title."""
    facts: list[str] = field(default_factory=list)
    """Shown on one line after the summary, separated by ` · `."""
    intro: str = ""
    header: list[str] = field(default_factory=list)
    align: list[str] = field(default_factory=list)
    """Per column: `---`, `---:`; left when missing."""
    rows: list[list[str]] = field(default_factory=list)
    sections: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)
    """(heading, [(subject, text)]): a bullet list per heading, the subject as code."""
    footnote: str = ""


def _inline(text: str) -> str:
    return md_code(text) if isinstance(text, Code) else md_text(text)


def markdown_page(page: MarkdownPage) -> str:
    lines = [f"## {'✅' if page.passed else '❌'} {md_text(page.title)}", ""]
    lead = " · ".join([f"**{md_text(page.summary)}**"] * bool(page.summary) + [md_text(f) for f in page.facts])
    if lead:
        lines += [lead, ""]
    if page.intro:
        lines += [md_text(page.intro), ""]
    if page.header:
        align = [page.align[i] if i < len(page.align) else "---" for i in range(len(page.header))]
        lines += ["| " + " | ".join(_inline(h) for h in page.header) + " |", "| " + " | ".join(align) + " |"]
        for row in page.rows:
            cells = [_inline(c) for c in row] + [""] * (len(page.header) - len(row))
            lines.append("| " + " | ".join(cells[:len(page.header)]) + " |")
    for heading, items in page.sections:
        if items:
            lines += ["", f"### {md_text(heading)}", ""]
            lines += [f"- {md_code(subject)}: {md_text(text)}" for subject, text in items]
    if page.footnote:
        lines += ["", f"_{md_text(page.footnote)}_"]
    return "\n".join(lines) + "\n"


def table_row(row: CheckRow) -> list[str]:
    return [Code(row.group.name), row.name, Code(row.where) if row.where else "-",
            "-" if row.ratio is None else format_ratio(row.ratio), RESULT_TEXT[row.outcome], row.detail]


def rows_page(title: str, passed: bool, summary: str, rows: Sequence[CheckRow], facts: Sequence[str] = (),
              notes: Sequence[tuple[str, str]] = ()) -> MarkdownPage:
    """The one table of every command's rows (verify/render/rows.py): one table row per row, then the notes."""
    failed = sum(not row.passed for row in rows)
    return MarkdownPage(title, passed, summary, [f for f in facts if f],
                        f"{len(rows) - failed} of {len(rows)} checks passed.", ROWS_HEADER, ROWS_ALIGN,
                        [table_row(row) for row in rows], [("Notes", list(notes))])


def rows_markdown(title: str, passed: bool, summary: str, rows: Sequence[CheckRow], facts: Sequence[str] = (),
                  notes: Sequence[tuple[str, str]] = ()) -> str:
    """The one Markdown rendering of a report's rows (export, compare, artifact, preflight)."""
    return markdown_page(rows_page(title, passed, summary, rows, facts, notes))


def matrix_page(result: MatrixResult) -> MarkdownPage:
    """The matrix's grid (cells x pairs, the tiles every rendering of it shows), then its failed rows."""
    columns = result.pair_columns()
    rows = []
    for cell in result.cells:
        entries = [f"{EMOJI[t.level]} {t.ratio_text}".strip() for t in tiles(result, cell).values()]
        verdict = {"agree": "✅ agree", "disagree": "❌ disagree", "error": "⚠️ error"}[cell.verdict]
        rows.append([Code(cell.spec), *entries, verdict])
    failed = [c for c in result.cells if not c.passed]
    items = [(row.group.name, row.detail) for row in result.rows() if not row.passed]
    items += [(c.spec, n) for c in failed for n in c.notes]
    detectors = [(row.group.name, f"{row.name}: {row.detail}") for c in result.cells if c.detector is not None
                 for row in c.rows() if row.passed]  # a whole detector's levels (its failures are above)
    cache, footnote = result.cache, ""
    if cache.get("hits") or cache.get("misses"):
        hits, misses = sum(cache.get("hits", {}).values()), sum(cache.get("misses", {}).values())
        footnote = f"cache: {hits} hits, {misses} misses · cells {result.fingerprint}"
    return MarkdownPage(
        "verify matrix", result.exit_code == 0, result.summary(),
        [result.settings.get("tolerance_text", ""), f"{result.seconds:.0f} s"],
        "Each entry: the worst output's distance as a multiple of the float32 noise floor.",
        ["cell", *columns, "verdict"], ["---", *("---:" for _ in columns), "---"], rows,
        [("What failed", items), ("Whole detectors", detectors)], footnote)


def markdown(result: MatrixResult) -> str:
    return markdown_page(matrix_page(result))


def is_step_summary(path: Path) -> bool:
    """Whether `path` is the file GitHub Actions set as this step's summary."""
    summary = os.environ.get(STEP_SUMMARY)
    return bool(summary) and Path(path).resolve() == Path(summary).resolve()


def write_markdown(path: Path, text: str) -> None:
    """Append to $GITHUB_STEP_SUMMARY (a blank line first when it already holds something); replace any
    other file atomically."""
    from exporter.errors import UsageError
    from exporter.fsio import write_text_atomic

    if not is_step_summary(path):
        write_text_atomic(path, text)
        return
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(("\n" if handle.tell() else "") + text)
    except OSError as exc:
        raise UsageError(f"Cannot append to {STEP_SUMMARY} {path}: {exc.strerror or exc}; check the "
                         "runner's environment") from None
