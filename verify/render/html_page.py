"""One self-contained HTML page (inline CSS, no script, nothing fetched): a heatmap of the worst ratio
to the float32 noise floor per cell x pair, then per cell the table `verify export` prints."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from verify.render.text import html_text as escape
from verify.render.tiles import Tile, tiles

if TYPE_CHECKING:
    from verify.matrix import CellResult, MatrixResult

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#1d2430;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px}
.summary{font-size:16px;margin:6px 0 14px} .pass{color:#146c2e} .fail{color:#b3261e} .error{color:#8e24aa}
.meta{color:#5b6472;font-size:12px;margin:2px 0}
table{border-collapse:collapse;margin:6px 0}
th,td{border:1px solid #d7dce3;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#f3f5f8;font-weight:600} td.l,th.l{text-align:left}
table.heat td.t{min-width:64px;font-variant-numeric:tabular-nums}
table.heat td.t a{color:inherit;text-decoration:none;display:block}
details{border:1px solid #d7dce3;border-radius:6px;padding:6px 10px;margin:8px 0}
summary{cursor:pointer;font-weight:600} .notes li{margin:2px 0}
.legend span{display:inline-block;padding:2px 8px;margin-right:4px;border-radius:3px}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
"""


def tile_colour(tile: Tile, factor: float) -> str:
    """Green at zero, amber at the allowance (factor x floor) when passing; red, darker the further
    beyond, when failing; grey where the pair is absent."""
    if tile.level == "error":
        return "hsl(290,45%,85%)"
    if not tile.present:
        return "hsl(215,15%,94%)"
    ratio = tile.ratio or 0.0
    if tile.passed:
        share = min(ratio / factor, 1.0) if factor > 0 else 0.0
        return f"hsl({130 - 85 * share:.0f},65%,{82 - 10 * share:.0f}%)"
    beyond = min(math.log10(max(ratio / factor, 1.0)) / 3, 1.0) if factor > 0 else 1.0
    return f"hsl(4,75%,{68 - 26 * beyond:.0f}%)"


def _num(value: Any, fmt: str = ".2e") -> str:
    return "-" if value is None else format(value, fmt)


def _heatmap(result: MatrixResult) -> str:
    head = "".join(f"<th>{escape(a)}<br>vs {escape(b)}</th>" for _, a, b in result.pair_sides())
    rows = []
    for cell in result.cells:
        row = tiles(result, cell)
        entries = []
        for name, tile in row.items():
            tip = f"{cell.spec} · {name}"
            if tile.present:
                tip += f" · worst {tile.output}: {tile.ratio_text}x floor · {'agree' if tile.passed else 'differ'}"
            ink = ";color:#fff" if tile.level == "fail" else ""
            entries.append(f'<td class="t" style="background:{tile_colour(tile, result.factor)}{ink}" '
                           f'title="{escape(tip)}"><a href="#{escape(cell.id)}">{escape(tile.text)}</a></td>')
        verdict = {"agree": '<span class="pass">✓ agree</span>', "disagree": '<span class="fail">✗ differ</span>',
                   "error": '<span class="error">! error</span>'}[cell.verdict]
        rows.append(f'<tr><td class="l">{escape(cell.backbone)}</td><td class="l">{escape(cell.norm)}</td>'
                    f'<td class="l">{escape(cell.view)}</td>{"".join(entries)}<td class="l">{verdict}</td></tr>')
    return (f'<table class="heat"><thead><tr><th class="l">backbone</th><th class="l">norm</th>'
            f'<th class="l">view</th>{head}<th class="l">verdict</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _legend(factor: float) -> str:
    samples = [("0", Tile(True, True, 0.0, level="ok")), (f"{factor / 2:g}", Tile(True, True, factor / 2, level="ok")),
               (f"{factor:g} (allowed)", Tile(True, True, factor, level="near")),
               (f"{factor * 10:g}", Tile(True, False, factor * 10, level="fail")),
               (f"{factor * 1000:g}", Tile(True, False, factor * 1000, level="fail"))]
    spans = "".join(f'<span style="background:{tile_colour(t, factor)}{";color:#fff" if not t.passed else ""}">'
                    f"{escape(label)}</span>" for label, t in samples)
    return f'<p class="legend meta">x float32 noise floor: {spans}</p>'


def _detector_table(cell: CellResult) -> str:
    """A whole detector's rows: each level's pairs (matched counts, unmatched explained and not, worst ratio)."""
    rows = "".join(f'<tr><td class="l">{escape(row.name)}</td><td>{_num(row.ratio, ".1f")}</td>'
                   f'<td class="l"><span class="{"pass" if row.passed else "fail"}">'
                   f'{"✓" if row.passed else "✗"}</span> {escape(row.detail)}</td></tr>' for row in cell.rows())
    return ('<table><thead><tr><th class="l">check</th><th>x floor</th><th class="l">detail</th></tr></thead>'
            f"<tbody>{rows}</tbody></table>")


def _cell_details(result: MatrixResult, cell: CellResult) -> str:
    status = {"agree": "pass", "disagree": "fail", "error": "error"}[cell.verdict]
    title = (f'<span class="{status}">{"✓" if cell.passed else "✗" if cell.verdict == "disagree" else "!"}</span> '
             f"{escape(cell.spec)} <code>{escape(cell.id)}</code>")
    parts = [f'<details id="{escape(cell.id)}"{" open" if not cell.passed else ""}><summary>{title}</summary>']
    if cell.error:
        parts.append(f'<p class="error">{escape(cell.error)}</p>')
    rows = []
    for pair in cell.pair_results():
        for i, out in enumerate(pair.outputs):
            verdict = '<span class="pass">✓ agree</span>' if out.passed else \
                f'<span class="fail">✗ {escape(out.reason or "differ")}</span>'
            rows.append(f'<tr><td class="l">{escape(f"{pair.a} vs {pair.b}") if i == 0 else ""}</td>'
                        f'<td class="l">{escape(out.name)}</td><td>{_num(out.max_abs)}</td><td>{_num(out.max_rel)}</td>'
                        f"<td>{out.mismatch_fraction:.2%}</td><td>{_num(out.ratio, '.1f')}</td>"
                        f'<td class="l">{verdict}</td></tr>')
    if cell.detector is not None and not cell.error:
        parts.append(_detector_table(cell))
    if rows:
        parts.append('<table><thead><tr><th class="l">pair</th><th class="l">output</th><th>max abs</th>'
                     '<th>max rel</th><th>mismatched</th><th>x floor</th><th class="l">verdict</th></tr></thead>'
                     f'<tbody>{"".join(rows)}</tbody></table>')
    floors = cell.noise_floor.get("per_output") or {}
    if floors:
        text = ", ".join(f"{name} {_num(value)}" for name, value in floors.items() if name != "null_reason")
        parts.append(f'<p class="meta">float32 noise floor ({escape(str(cell.noise_floor.get("source", "")))}): '
                     f"{escape(text)}</p>")
    if cell.notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{escape(n)}</li>" for n in cell.notes) + "</ul>")
    cached = " · result from the cache" if cell.cache.get("result") == "hit" else ""
    parts.append(f'<p class="meta">{cell.computed_seconds or cell.seconds:.1f} s to compute{cached}</p></details>')
    return "".join(parts)


def _shape_text(shape: Any) -> str:
    """A recorded input shape as `1x3x32x32`; anything else (a merged report's `input` is shown, never judged) `-`."""
    if not isinstance(shape, list) or not shape or not all(isinstance(n, int) for n in shape):
        return "-"
    return "x".join(str(n) for n in shape)


def html_page(result: MatrixResult) -> str:
    status = {0: "pass", 1: "fail", 2: "error"}[result.exit_code]
    mark = "✓" if result.exit_code == 0 else "✗"
    settings = result.settings
    run = settings.get("run", {})
    shape = _shape_text(result.cells[0].input.get("shape") if result.cells else None)
    facts = [
        f"tolerance: {settings.get('tolerance_text', '')}",
        f"input {shape}, weights {run.get('weights')}, seed {run.get('seed')}",
        f"formats: {', '.join(settings.get('export', {}).get('formats', []))}",
        f"device: {run.get('runtime', {}).get('device', '')}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in result.versions.items()),
        f"matrix {result.fingerprint} · {len(result.cells)} of {len(result.matrix)} cells · "
        f"{result.seconds:.0f} s with {result.jobs} job{'s' if result.jobs != 1 else ''} · {result.created}",
    ]
    body = [f"<h1>verify matrix</h1><p class=\"summary {status}\">{mark} {escape(result.summary())}</p>",
            "".join(f'<p class="meta">{escape(f)}</p>' for f in facts),
            "<h2>Worst ratio to the float32 noise floor, per cell and pair</h2>", _legend(result.factor),
            _heatmap(result), "<h2>Cells</h2>", *(_cell_details(result, c) for c in result.cells)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>verify matrix: {escape(result.summary())}</title><style>{CSS}</style></head>"
            f"<body>{''.join(body)}</body></html>\n")

