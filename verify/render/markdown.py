"""A CI job summary (GitHub's $GITHUB_STEP_SUMMARY): the verdict, the matrix, what failed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from verify.render import tiles

if TYPE_CHECKING:
    from verify.matrix import MatrixResult

EMOJI = {"ok": "✅", "near": "✅", "fail": "❌", "error": "⚠️", "none": "·"}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(result: MatrixResult) -> str:
    columns = result.pair_columns()
    head = "✅" if result.exit_code == 0 else "❌"
    lines = [f"## {head} verify matrix", "", f"**{_cell(result.summary())}** · "
             f"{_cell(result.settings.get('tolerance_text', ''))} · {result.seconds:.0f} s", "",
             "Each entry: the worst output's distance as a multiple of the float32 noise floor.", "",
             "| cell | " + " | ".join(_cell(c) for c in columns) + " | verdict |",
             "| --- | " + " | ".join("---:" for _ in columns) + " | --- |"]
    for cell in result.cells:
        row = tiles(result, cell)
        entries = [f"{EMOJI[t.level]} {t.ratio_text}".strip() for t in row.values()]
        verdict = {"agree": "✅ agree", "disagree": "❌ disagree", "error": "⚠️ error"}[cell.verdict]
        lines.append(f"| `{_cell(cell.spec)}` | " + " | ".join(entries) + f" | {verdict} |")
    problems = [c for c in result.cells if not c.passed]
    if problems:
        lines += ["", "### What failed", ""]
        for cell in problems:
            if cell.error:
                lines.append(f"- `{_cell(cell.spec)}`: {_cell(cell.error)}")
            for note in cell.notes:
                lines.append(f"- `{_cell(cell.spec)}`: {_cell(note)}")
    cache = result.cache
    if cache.get("hits") or cache.get("misses"):
        hits, misses = sum(cache.get("hits", {}).values()), sum(cache.get("misses", {}).values())
        lines += ["", f"<sub>cache: {hits} hits, {misses} misses · cells {result.fingerprint}</sub>"]
    return "\n".join(lines) + "\n"
