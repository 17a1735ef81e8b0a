"""Results as data (`Report`), and their renderings: terminal table and JSON."""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from verify.judge.compare import OutputComparison, PairResult
from verify.judge.layers import Isolation, verdict_line
from verify.judge.noise_floor import NoiseFloor
from verify.judge.precision import describe as describe_precision
from verify.render.rows import CheckRow, Group, pair_row

SCHEMA_VERSION = 1


def versions() -> dict[str, str]:
    """Versions of everything that shapes the numbers."""
    from importlib import metadata

    found = {"python": platform.python_version()}
    for package in ("torch", "torchvision", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


@dataclass
class RunRecord:
    label: str
    artifact: str
    seconds: float


@dataclass
class Report:
    command: str
    settings: dict[str, Any]
    input: dict[str, Any]
    runs: list[RunRecord] = field(default_factory=list)
    pairs: list[PairResult] = field(default_factory=list)
    floors: dict[str, NoiseFloor | float] = field(default_factory=dict)
    """Per output: a NoiseFloor (per channel where the output has channels) or a plain float."""
    floor_source: str = ""
    artifacts: dict[str, str] = field(default_factory=dict)
    legend: dict[str, str] = field(default_factory=dict)
    """Short run labels used in pairs -> what they stand for."""
    notes: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=versions)
    trust: dict[str, Any] = field(default_factory=dict)
    """The numbers the guards decided on (verify/judge/trust.py `evidence`): a stored result is re-judged from them."""
    problems: list[str] = field(default_factory=list)
    """Why the runs could not be judged at all (not deterministic, a floor rounding cannot explain): any
    problem fails the report whatever its pairs say (verify/judge/trust.py)."""
    isolated: list[dict[str, Any]] = field(default_factory=list)
    """A failed report's files, each layer re-run alone on the torch model's float64 inputs (verify/explain/
    isolate.py name_culprits): which layers compute something different on their own. Explains; never passes."""
    layers: list[Isolation] = field(default_factory=list)
    """The layer verdict (`--layers`, verify/judge/layers.py): each file's layers re-run alone on the torch model's
    float64 inputs, judged on their own floors. A file with a layer that differs on its own fails the report."""
    layer_verdict: dict[str, Any] = field(default_factory=dict)
    """Where the layer verdict ran: `run` ("asked": --layers; "default": verify export's default, best effort), the
    files it `judged` and those it could `not_judge` (a note by default); empty where it did not run."""

    @property
    def passed(self) -> bool:
        return (bool(self.pairs) and all(pair.passed for pair in self.pairs) and not self.problems
                and all(check.passed for check in self.layers))

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    @property
    def subject(self) -> str:
        """The model judged (its spec), or `a vs b` for compare."""
        return self.settings.get("spec") or " vs ".join(filter(None, (self.settings.get("a"), self.settings.get("b"))))

    def rows(self) -> list[CheckRow]:
        """One row per pair, one failing row per problem that kept the runs from being judged, and a failing
        row when nothing was judged at all."""
        group = Group(self.subject or self.command, seconds=sum(run.seconds for run in self.runs))
        classname = f"{self.command}.{self.subject}"
        rows = [pair_row(group, classname, pair) for pair in self.pairs]
        rows += [CheckRow(group, "layers", f"layers {check.candidate}", "passed" if check.passed else "failure",
                          verdict_line(check), ratio=check.layers[0].ratio if check.layers else None,
                          classname=classname) for check in self.layers]
        rows += [CheckRow(group, "problem", "judgeable", "failure", problem, classname=classname)
                 for problem in self.problems]
        if not self.pairs and not self.problems:
            rows.append(CheckRow(group, "verdict", "verdict", "failure", "no pairs were judged", classname=classname))
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "command": self.command,
            "passed": self.passed,
            "settings": self.settings,
            "input": self.input,
            "versions": self.versions,
            "noise_floor": self.floor_dict(),
            "runs": [vars(r) for r in self.runs],
            "pairs": [p.to_dict() for p in self.pairs],
            "artifacts": self.artifacts,
            "legend": self.legend,
            "notes": self.notes,
            "problems": self.problems,
            "trust": self.trust,
            **({"isolated": self.isolated} if self.isolated else {}),
            **({"layers": [{**check.to_dict(), "passed": check.passed} for check in self.layers]}
               if self.layers else {}),
            **({"layer_verdict": self.layer_verdict} if self.layer_verdict else {}),
        }


    @property
    def precision(self) -> str:
        """The precision the floors were measured at (fp32 unless a run asked for another)."""
        floors = [NoiseFloor.of(f) for f in self.floors.values()]
        return next((f.precision for f in floors if f is not None), "fp32")

    def floor_dict(self) -> dict[str, Any]:
        """`per_output` keeps the plain per-output floats readers expect; `detail` adds the channels."""
        floors = {name: NoiseFloor.of(value) for name, value in self.floors.items()}
        return {"source": self.floor_source, "precision": self.precision,
                "per_output": {name: f.to_dict()["value"] for name, f in floors.items() if f is not None},
                "detail": {name: f.to_dict() for name, f in floors.items() if f is not None}}


def write_json_report(data: dict[str, Any], path: Path) -> None:
    """Strict JSON: a number that is not finite is written as null, with why in `null_reason` beside it."""
    from exporter.fsio import write_json

    write_json(path, json_safe(data))


def json_safe(data: Any) -> Any:
    """A copy fit for strict JSON: NaN and Infinity become null and the nearest object gets (or extends)
    `null_reason` naming the field and what it was; numpy scalars become numbers, tuples lists."""
    import math

    def value(item: Any, where: str, reasons: list[str]) -> Any:
        if type(item).__module__ == "numpy" and hasattr(item, "item"):
            item = item.item()
        if isinstance(item, float) and not math.isfinite(item):
            reasons.append(f"{where}: {'NaN' if math.isnan(item) else 'Inf' if item > 0 else '-Inf'}")
            return None
        if isinstance(item, dict):
            return obj(item)
        if isinstance(item, (list, tuple)):
            return [value(x, f"{where}[{i}]", reasons) for i, x in enumerate(item)]
        return item

    def obj(mapping: dict) -> dict:
        reasons: list[str] = []
        out = {key: value(item, str(key), reasons) for key, item in mapping.items()}
        if reasons:
            why = f"not finite: {', '.join(reasons)}"
            out["null_reason"] = f"{out['null_reason']}; {why}" if isinstance(out.get("null_reason"), str) else why
        return out

    return value(data, "value", [])


def _num(value: float | None, fmt: str = ".2e") -> str:
    return "-" if value is None else format(value, fmt)


def verdict_text(output: OutputComparison) -> str:
    if output.passed:
        return "[green]✓ agree[/]"
    if output.reason.startswith("shape"):
        return "[red]✗ shape[/]"
    if "NaN" in output.reason:
        return "[red]✗ NaN/Inf[/]"
    return "[red]✗ differ[/]"


LAYOUTS = ("auto", "table", "lines")
"""auto: the table on an interactive terminal where it fits unwrapped, else one line per pair."""


def pair_line(pair: PairResult, out: OutputComparison, precision: str = "fp32") -> str:
    """`FAIL onnxruntime vs eager  layer4[c=39]  7.8x floor  max abs 2.2e-05`: one greppable line, plain text
    (the caller escapes it for rich)."""
    from verify.render.text import terminal_text

    mark = "ok" if out.passed else "FAIL"
    parts = [f"{mark:<4} {terminal_text(f'{pair.a} vs {pair.b}')}", terminal_text(out.where)]
    if out.ratio is not None:
        parts.append(f"{out.ratio:.1f}x floor")
        if precision != "fp32" and out.float32_ratio is not None:
            parts[-1] += f" ({out.float32_ratio:.0f}x fp32 floor)"
    if out.max_abs is not None:
        parts.append(f"max abs {out.max_abs:.1e}")
    if not out.passed and (out.ratio is None or not out.reason.endswith("out of tolerance")) and out.reason:
        parts.append(terminal_text(out.reason))
    return "  ".join(parts)


def pair_annotations(report: Report) -> list[str]:
    """GitHub workflow annotations: one per disagreeing pair (its worst output and ratio), one per problem."""
    from verify.render.console import error_annotation

    found = []
    for pair in report.pairs:
        if pair.outputs and not pair.passed:
            worst = pair.worst
            # over the finite elements only: beside a NaN or Inf it would read as a near miss
            ratio = f" is {worst.ratio:.1f}x the noise floor" if worst.ratio is not None and not worst.nonfinite else ""
            legend = "".join(f" ({label} = {report.legend[label]})" for label in (pair.a, pair.b)
                             if label in report.legend)  # an annotation is read without the log's legend
            found.append(error_annotation(f"verify {report.command}: {pair.a} vs {pair.b} differ",
                                          f"{pair.a} vs {pair.b}{legend}: {worst.where}{ratio}"
                                          f"{'; ' + worst.reason if worst.reason else ''} "
                                          f"({report.settings.get('tolerance_text', '')})"))
    found += [error_annotation(f"verify {report.command}: not judged", problem) for problem in report.problems]
    if not report.pairs:
        found.append(error_annotation(f"verify {report.command}: no pairs", "no pairs were judged"))
    return found


def _pairs_table(report: Report, verbose: bool) -> Any:
    from rich.table import Table

    from verify.render.text import markup

    table = Table(title=markup(_title(report)), title_justify="left")
    table.add_column("pair", no_wrap=True)
    table.add_column("output", no_wrap=True)
    for column in ("max abs", "max rel", "mismatched", "x floor"):
        table.add_column(column, justify="right", no_wrap=True)
    if report.precision != "fp32":
        table.add_column("x fp32 floor", justify="right", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    for pair in report.pairs:
        rows = pair.outputs if verbose else [pair.worst]
        for i, out in enumerate(rows):
            cells = [markup(f"{pair.a} vs {pair.b}") if i == 0 else "", markup(out.where),
                     _num(out.max_abs), _num(out.max_rel), f"{out.mismatch_fraction:.2%}", _num(out.ratio, ".1f")]
            if report.precision != "fp32":
                cells.append(_num(out.float32_ratio, ".0f"))
            table.add_row(*cells, verdict_text(out), end_section=verbose and i == len(rows) - 1)
    return table


def _title(report: Report) -> str:
    title = f"{report.command}: {report.settings.get('tolerance_text', '')}"
    if report.precision != "fp32":
        title += f", at {describe_precision(report.precision)} precision"
    return title


def render_pairs(report: Report, console: Any, verbose: bool = False, layout: str = "auto",
                 annotate: bool | None = None) -> None:
    """One row per pair (its worst output), or per pair and output when `verbose`: a table on an interactive
    terminal where it fits, else one line each (`pair_line`); then floors, notes, problems and the verdict.
    `annotate` (default: under GitHub Actions) adds a workflow annotation per disagreement."""
    from rich.markup import escape

    from verify.render.console import annotate as write_annotations
    from verify.render.console import fits, github_actions, line_layout, print_line
    from verify.render.text import markup

    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    for short, meaning in report.legend.items():
        print_line(console, f"{markup(short)} = {markup(meaning)}")
    table = _pairs_table(report, verbose)
    lines = layout == "lines" or layout == "auto" and (line_layout(console) or not fits(console, table))
    if lines:
        print_line(console, markup(_title(report)))
        for pair in report.pairs:
            for out in pair.outputs if verbose else [pair.worst]:
                style = "green" if out.passed else "bold red"
                print_line(console, f"[{style}]{escape(pair_line(pair, out, report.precision))}[/]")
    else:
        console.print(table)
    _render_footer(report, console)
    if github_actions() if annotate is None else annotate:
        write_annotations(console, pair_annotations(report))


def floor_line(report: Report, escape: Callable[[str], str] = str) -> str:
    """The floors every "x floor" figure divides by, as one line (empty without floors); `escape` each name and the
    source (the terminal's markup, or nothing for Markdown, which escapes the whole line)."""
    if not report.floors:
        return ""
    floors = {name: NoiseFloor.of(value) for name, value in report.floors.items()}
    text = ", ".join(f"{escape(name)} {f.value:.2e}" + (f" ({float(f.bulk.max()):.2e} away from its peaks)"
                                                        if f.bulk is not None else "")
                     for name, f in floors.items() if f is not None)
    per_channel = " (per output; each channel is judged on its own floor)" \
        if any(f is not None and f.channels is not None for f in floors.values()) else ""
    return f"{describe_precision(report.precision)} noise floor ({escape(report.floor_source)}): {text}{per_channel}"


def _render_footer(report: Report, console: Any) -> None:
    from verify.render.console import print_line
    from verify.render.text import markup

    line = floor_line(report, markup)
    if line:
        print_line(console, f"[dim]{line}[/]")
    for note in report.notes:
        print_line(console, f"[yellow]•[/] {markup(note)}")
    for problem in report.problems:
        print_line(console, f"[bold red]✗[/] {markup(problem)}")
    for check in report.layers:
        mark = "[bold green]✓[/]" if check.passed else "[bold red]✗[/]"
        print_line(console, f"{mark} layers: {markup(verdict_line(check))}")
    failed = [p for p in report.pairs if not p.passed]
    unequal = [check for check in report.layers if check.named]
    unjudged = [check for check in report.layers if not check.passed and not check.named]
    if report.problems:
        shown = "the pairs' figures are shown but no verdict stands on them" if report.pairs else "no pair was judged"
        print_line(console, f"[bold red]✗ not judged: {len(report.problems)} problem(s) above; {shown}[/]")
    elif failed:
        print_line(console, f"[bold red]✗ {len(failed)} of {len(report.pairs)} pairs disagree[/]")
    elif unequal:
        print_line(console, f"[bold red]✗ the outputs agree, and {len(unequal)} of {len(report.layers)} files have "
                            "layers that differ on their own (above)[/]")
    elif unjudged:
        print_line(console, f"[bold red]✗ the outputs agree, and the layers of {len(unjudged)} of {len(report.layers)} "
                            "files could not all be re-run (above): no layer verdict was reached[/]")
    elif report.pairs:
        worst = max((p.worst for p in report.pairs), key=lambda o: o.ratio or 0.0)
        layers = f" and every layer of {len(report.layers)} files is within its own floor" if report.layers else ""
        print_line(console, f"[bold green]✓ all {len(report.pairs)} pairs agree{layers}[/] "
                            f"[dim](worst: {markup(worst.where)} {markup(worst.verdict())})[/]")
    else:
        print_line(console, "[bold red]✗ no pairs were judged[/]")
