"""Results as data (`Report`), and their renderings: terminal table and JSON."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from verify.compare import OutputComparison, PairResult
from verify.oracle import NoiseFloor
from verify.precision import describe as describe_precision

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

    @property
    def passed(self) -> bool:
        return bool(self.pairs) and all(pair.passed for pair in self.pairs)

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

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


def render_pairs(report: Report, console: Any, verbose: bool = False) -> None:
    """One row per pair (its worst output), or per pair and output when `verbose`."""
    from rich.markup import escape
    from rich.table import Table

    precision = describe_precision(report.precision)
    title = f"{report.command}: {report.settings.get('tolerance_text', '')}"
    if report.precision != "fp32":
        title += f", at {precision} precision"
    table = Table(title=escape(title), title_justify="left")
    table.add_column("pair", overflow="fold")
    table.add_column("output", no_wrap=True)
    for column in ("max abs", "max rel", "mismatched", "x floor"):
        table.add_column(column, justify="right", no_wrap=True)
    if report.precision != "fp32":
        table.add_column("x fp32 floor", justify="right", no_wrap=True)
    table.add_column("verdict")
    for pair in report.pairs:
        rows = pair.outputs if verbose else [pair.worst]
        for i, out in enumerate(rows):
            cells = [escape(f"{pair.a} vs {pair.b}") if i == 0 else "", escape(out.where),
                     _num(out.max_abs), _num(out.max_rel), f"{out.mismatch_fraction:.2%}", _num(out.ratio, ".1f")]
            if report.precision != "fp32":
                cells.append(_num(out.float32_ratio, ".0f"))
            table.add_row(*cells, verdict_text(out), end_section=verbose and i == len(rows) - 1)
    for short, meaning in report.legend.items():
        console.print(f"{escape(short)} = {escape(meaning)}")
    console.print(table)
    if report.floors:
        floors = {name: NoiseFloor.of(value) for name, value in report.floors.items()}
        text = ", ".join(f"{name} {f.value:.2e}" for name, f in floors.items() if f is not None)
        per_channel = " (per output; each channel is judged on its own floor)" \
            if any(f is not None and f.channels is not None for f in floors.values()) else ""
        console.print(f"[dim]{precision} noise floor ({escape(report.floor_source)}): {text}{per_channel}[/]")
    for note in report.notes:
        console.print(f"[yellow]•[/] {escape(note)}")
    failed = [p for p in report.pairs if not p.passed]
    if failed:
        console.print(f"[bold red]✗ {len(failed)} of {len(report.pairs)} pairs disagree[/]")
    elif report.pairs:
        worst = max((p.worst for p in report.pairs), key=lambda o: o.ratio or 0.0)
        console.print(f"[bold green]✓ all {len(report.pairs)} pairs agree[/] "
                      f"[dim](worst: {escape(worst.where)} {escape(worst.verdict())})[/]")
    else:
        console.print("[bold red]✗ no pairs were judged[/]")
