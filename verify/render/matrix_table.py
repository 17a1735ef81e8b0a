"""The terminal picture: rows backbone x norm x view, columns runtime pairs, each entry the worst
output's ratio to the float32 noise floor with its verdict symbol, coloured."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from verify.render.tiles import tiles

if TYPE_CHECKING:
    from verify.matrix import CellResult, MatrixResult

LAYOUTS = ("auto", "table", "lines")
STYLES = {"ok": "green", "near": "yellow", "fail": "bold red", "error": "bold magenta", "none": "dim"}


def cell_line(cell: CellResult) -> str:
    """One line per finished cell, for logs (rich markup)."""
    from verify.render.text import markup

    mark = {"agree": "[green]✓[/]", "disagree": "[red]✗[/]", "error": "[magenta]![/]"}[cell.verdict]
    worst = f" worst {cell.worst_ratio:.1f}x floor" if cell.worst_ratio is not None else ""
    cached = " [dim](cached)[/]" if cell.cache.get("result") == "hit" else ""
    error = f": {markup(cell.error)}" if cell.error else ""
    return f"{mark} {markup(cell.spec)}{worst} [dim]{cell.seconds:.1f}s[/]{cached}{error}"


def short_names(labels: list[str], least: int = 3) -> dict[str, str]:
    """The shortest prefix of at least `least` characters that still tells the labels apart."""
    for size in range(least, max((len(label) for label in labels), default=least) + 1):
        short = {label: label[:size] for label in labels}
        if len(set(short.values())) == len(short):
            return short
    return {label: label for label in labels}


def detector_lines(cell: CellResult) -> list[str]:
    """A whole detector's cell, one plain line per row (`ok   fasterrcnn_...:frozen:detector  after NMS onnxruntime vs
    eager  50 of 50 detections matched, ...`): its table row has no runtime-pair columns."""
    from verify.render.text import terminal_text

    if cell.detector is None:
        return []
    return [f"{'ok' if row.passed else 'FAIL':<4} {terminal_text(cell.spec)}  {terminal_text(row.name)}  "
            f"{terminal_text(row.detail)}" for row in cell.rows() if row.kind != "verdict"]


def matrix_lines(result: MatrixResult) -> list[str]:
    """One plain line per cell x pair, `FAIL resnet18:frozen:body  onnxruntime vs eager  layer4[c=39]  7.8x
    floor  max abs 2.2e-05` (`ok` when it agrees), and `ERROR spec  message` for a cell that did not run."""
    from verify.render.text import terminal_text

    lines: list[str] = []
    for cell in result.cells:
        spec = terminal_text(cell.spec)
        if cell.error:
            lines.append(f"ERROR {spec}  {terminal_text(cell.error)}")
            continue
        start = len(lines)
        lines += detector_lines(cell)
        for pair in cell.pair_results():
            if not pair.outputs:
                lines.append(f"FAIL {spec}  {terminal_text(f'{pair.a} vs {pair.b}')}  no outputs compared")
                continue
            worst = pair.worst
            parts = [f"{'ok' if pair.passed else 'FAIL':<4} {spec}", terminal_text(f"{pair.a} vs {pair.b}"),
                     terminal_text(worst.where)]
            if worst.ratio is not None:
                parts.append(f"{worst.ratio:.1f}x floor")
            if worst.max_abs is not None:
                parts.append(f"max abs {worst.max_abs:.1e}")
            if not pair.passed and worst.ratio is None and worst.reason:
                parts.append(terminal_text(worst.reason))
            lines.append("  ".join(parts))
        if not cell.pairs and cell.detector is None:
            lines.append(f"FAIL {spec}  no pairs were judged")
        lines += [f"FAIL {spec}  not judged: {terminal_text(str(problem))}" for problem in cell.problems]
        if not cell.passed and not any(line.startswith("FAIL") for line in lines[start:]):
            lines.append(f"FAIL {spec}  {terminal_text(_verdict_reason(cell))}")  # every pair passed, yet it fails
    return lines


def _verdict_reason(cell: CellResult) -> str:
    """Why a cell fails when no pair row says why (its `verdict` row in the JUnit and Markdown)."""
    detail = next((row.detail for row in cell.rows() if row.kind == "verdict"), f"verdict {cell.verdict}")
    return detail.removeprefix(f"{cell.spec}: ")


def matrix_annotations(result: MatrixResult) -> list[str]:
    """GitHub workflow annotations: one per disagreeing cell x pair, one per cell that did not run."""
    from verify.render.console import error_annotation

    found = []
    for cell in result.cells:
        if cell.error:
            found.append(error_annotation(f"verify matrix: {cell.spec} did not run", cell.error))
        found += [error_annotation(f"verify matrix: {cell.spec} {row.name} fails", row.detail)
                  for row in ([] if cell.error or cell.detector is None else cell.rows()) if not row.passed]
        if not cell.error and cell.detector is None:  # what keeps a cell from agreeing besides its pairs
            found += [error_annotation(f"verify matrix: {cell.spec} not judged", str(problem))
                      for problem in cell.problems]
            found += [error_annotation(f"verify matrix: {cell.spec} {row.name} fails", row.detail)
                      for row in cell.rows() if row.kind == "verdict" and not cell.problems]
        for pair in [] if cell.error else cell.pair_results():
            if pair.outputs and not pair.passed:
                worst = pair.worst
                ratio = f" is {worst.ratio:.1f}x the noise floor" if worst.ratio is not None and not worst.nonfinite \
                    else ""
                found.append(error_annotation(
                    f"verify matrix: {cell.spec} {pair.a} vs {pair.b} differ",
                    f"{cell.spec} {pair.a} vs {pair.b}: {worst.where}{ratio}"
                    f"{'; ' + worst.reason if worst.reason else ''} (allowed {result.factor:g}x)"))
    return found


def _matrix_table(result: MatrixResult, console: Any) -> tuple[Any, bool, dict[str, str]]:
    from rich import box
    from rich.table import Table

    from verify.render.text import markup

    sides = result.pair_sides()
    labels = list(dict.fromkeys(label for _, a, b in sides for label in (a, b)))
    rows = max((len(cell.spec) for cell in result.cells), default=20) + 8 + 12  # spec columns, borders, verdict
    full = rows + sum(max(len(a), len(b) + 3, 6) + 3 for _, a, b in sides) <= console.width
    short = {label: label for label in labels} if full else short_names(labels)
    table = Table(title=markup(f"matrix: {result.settings.get('tolerance_text', '')}; entries: worst "
                               "output, x float32 noise floor"), title_justify="left",
                  box=box.HEAVY_HEAD if full else box.SIMPLE_HEAD, show_edge=full, pad_edge=full)
    for name in ("backbone", "norm", "view"):
        table.add_column(name, no_wrap=True)
    for _, a, b in sides:
        table.add_column(markup(f"{short[a]}\n{'vs ' if full else ''}{short[b]}"), justify="right", no_wrap=True,
                         min_width=5)
    table.add_column("verdict" if full else "", no_wrap=True)
    verdicts = {"agree": "[green]✓ agree[/]", "disagree": "[red]✗ differ[/]", "error": "[magenta]! error[/]"}
    if not full:
        verdicts = {"agree": "[green]✓[/]", "disagree": "[red]✗[/]", "error": "[magenta]![/]"}
    for cell in result.cells:
        row = tiles(result, cell)
        table.add_row(markup(cell.backbone), markup(cell.norm), markup(cell.view),
                      *(f"[{STYLES[t.level]}]{t.text}[/]" for t in row.values()), verdicts[cell.verdict])
    return table, full, short


def render_matrix(result: MatrixResult, console: Any, layout: str = "auto", annotate: bool | None = None) -> None:
    """The table on an interactive terminal where it fits unwrapped, else `matrix_lines`; then errors, notes
    and the summary; `annotate` (default: under GitHub Actions) adds workflow annotations."""
    from rich.markup import escape

    from verify.render.console import annotate as write_annotations
    from verify.render.console import fits, github_actions, line_layout, print_line
    from verify.render.text import markup

    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    table, full, short = _matrix_table(result, console)
    layout_lines = layout == "lines" or layout == "auto" and (line_layout(console) or not fits(console, table))
    if layout_lines:
        print_line(console, markup(f"matrix: {result.settings.get('tolerance_text', '')}"))
        for line in matrix_lines(result):
            style = "green" if line.startswith("ok") else "bold red"
            print_line(console, f"[{style}]{escape(line)}[/]")
    else:
        console.print(table)
        if not full:
            legend = ", ".join(f"{short[label]} = {label}" for label in short)
            print_line(console, f"[dim]columns: the first run vs the second; {markup(legend)}[/]")
        for line in [line for cell in result.cells if not cell.error for line in detector_lines(cell)]:
            print_line(console, f"[{'green' if line.startswith('ok') else 'bold red'}]{escape(line)}[/]")
    for cell in result.cells:
        if cell.error:
            print_line(console, f"[magenta]![/] {markup(cell.spec)}: {markup(cell.error)}")
        for problem in cell.problems if not layout_lines else []:  # the line layout has them already
            print_line(console, f"[bold red]✗[/] {markup(cell.spec)}: not judged: {markup(str(problem))}")
        for note in cell.notes:
            print_line(console, f"[yellow]•[/] {markup(cell.spec)}: {markup(note)}")
    style = {0: "bold green", 1: "bold red", 2: "bold magenta"}[result.exit_code]
    mark = "✓" if result.exit_code == 0 else "✗"
    print_line(console, f"[{style}]{mark} {markup(result.summary())}[/]")
    if github_actions() if annotate is None else annotate:
        write_annotations(console, matrix_annotations(result))
