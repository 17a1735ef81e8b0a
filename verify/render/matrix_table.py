"""The terminal picture: rows backbone x norm x view, columns runtime pairs, each entry the worst
output's ratio to the float32 noise floor with its verdict symbol, coloured."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from verify.render import tiles

if TYPE_CHECKING:
    from verify.matrix import CellResult, MatrixResult

STYLES = {"ok": "green", "near": "yellow", "fail": "bold red", "error": "bold magenta", "none": "dim"}


def cell_line(cell: CellResult) -> str:
    """One line per finished cell, for logs (rich markup)."""
    from rich.markup import escape

    mark = {"agree": "[green]✓[/]", "disagree": "[red]✗[/]", "error": "[magenta]![/]"}[cell.verdict]
    worst = f" worst {cell.worst_ratio:.1f}x floor" if cell.worst_ratio is not None else ""
    cached = " [dim](cached)[/]" if cell.cache.get("result") == "hit" else ""
    error = f": {escape(cell.error)}" if cell.error else ""
    return f"{mark} {escape(cell.spec)}{worst} [dim]{cell.seconds:.1f}s[/]{cached}{error}"


def short_names(labels: list[str], least: int = 3) -> dict[str, str]:
    """The shortest prefix of at least `least` characters that still tells the labels apart."""
    for size in range(least, max((len(label) for label in labels), default=least) + 1):
        short = {label: label[:size] for label in labels}
        if len(set(short.values())) == len(short):
            return short
    return {label: label for label in labels}


def render_matrix(result: MatrixResult, console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    sides = result.pair_sides()
    labels = list(dict.fromkeys(label for _, a, b in sides for label in (a, b)))
    rows = max((len(cell.spec) for cell in result.cells), default=20) + 8 + 12  # spec columns, borders, verdict
    full = rows + sum(max(len(a), len(b) + 3, 6) + 3 for _, a, b in sides) <= console.width
    short = {label: label for label in labels} if full else short_names(labels)
    from rich import box

    table = Table(title=escape(f"matrix: {result.settings.get('tolerance_text', '')}; entries: worst "
                               "output, x float32 noise floor"), title_justify="left",
                  box=box.HEAVY_HEAD if full else box.SIMPLE_HEAD, show_edge=full, pad_edge=full)
    for name in ("backbone", "norm", "view"):
        table.add_column(name, overflow="ellipsis")
    for _, a, b in sides:
        table.add_column(escape(f"{short[a]}\n{'vs ' if full else ''}{short[b]}"), justify="right", no_wrap=True,
                         min_width=5)
    table.add_column("verdict" if full else "", no_wrap=True)
    verdicts = {"agree": "[green]✓ agree[/]", "disagree": "[red]✗ differ[/]", "error": "[magenta]! error[/]"}
    if not full:
        verdicts = {"agree": "[green]✓[/]", "disagree": "[red]✗[/]", "error": "[magenta]![/]"}
    for cell in result.cells:
        row = tiles(result, cell)
        table.add_row(escape(cell.backbone), escape(cell.norm), escape(cell.view),
                      *(f"[{STYLES[t.level]}]{t.text}[/]" for t in row.values()), verdicts[cell.verdict])
    console.print(table)
    if not full:
        legend = ", ".join(f"{short[label]} = {label}" for label in labels)
        console.print(f"[dim]columns: the first run vs the second; {escape(legend)}[/]", soft_wrap=True)
    for cell in result.cells:
        if cell.error:
            console.print(f"[magenta]![/] {escape(cell.spec)}: {escape(cell.error)}", soft_wrap=True)
        for note in cell.notes:
            console.print(f"[yellow]•[/] {escape(cell.spec)}: {escape(note)}", soft_wrap=True)
    style = {0: "bold green", 1: "bold red", 2: "bold magenta"}[result.exit_code]
    mark = "✓" if result.exit_code == 0 else "✗"
    console.print(f"[{style}]{mark} {escape(result.summary())}[/]")
