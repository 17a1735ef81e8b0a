"""The one result row every command's report exposes (`rows()`: `Report`, the folder `CheckReport`, the
`MatrixResult`); the one JUnit writer (verify/render/junit.py `rows_junit`) and the one Markdown writer
(verify/render/markdown.py `rows_markdown`) render them. A row is one check: a pair of runs, a
run against its oracle, a folder check, a problem that kept the runs from being judged, a cell that did
not run. Every string stays the model's own; the writers escape it (verify/render/text.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from verify.judge.precision import DISPLAY

if TYPE_CHECKING:
    from verify.judge.compare import PairResult

OUTCOMES = ("passed", "failure", "error", "skipped")


@dataclass(frozen=True)
class Group:
    """What a set of rows is about (a JUnit testsuite): a model, a matrix cell, an artifact folder."""

    name: str
    id: str | None = None
    seconds: float | None = None
    """Wall time of the group; None: the sum of its rows'."""


@dataclass(frozen=True)
class CheckRow:
    group: Group
    kind: str
    """pair, oracle, problem, verdict, error, check, or a detector's level."""
    name: str
    """What was checked, the same in every run of the same model (the JUnit testcase name)."""
    outcome: str
    """passed, failure, error or skipped."""
    detail: str = ""
    """One line: what passed, or why it failed."""
    where: str = ""
    """The worst output (and channel) of a pair; empty otherwise."""
    ratio: float | None = None
    """The worst distance as a multiple of the noise floor; None when not measured."""
    seconds: float = 0.0
    classname: str = ""

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"row outcome {self.outcome!r} is not one of {', '.join(OUTCOMES)}")

    @property
    def passed(self) -> bool:
        return self.outcome in ("passed", "skipped")


def format_ratio(ratio: float) -> str:
    return f"{ratio:.1f}" if ratio < 1000 else f"{ratio:.0f}"


def pair_case_name(a: str, b: str, outputs: list[str]) -> str:
    """`onnxruntime vs eager: layer1, layer2`: the pair and every output it compared (the same name in every
    run of the same model, so CI history follows it)."""
    return f"{a} vs {b}: {', '.join(outputs)}" if outputs else f"{a} vs {b}"


def pair_row(group: Group, classname: str, pair: PairResult, lead: str = "") -> CheckRow:
    """One judged pair, the same for every command: passed with its worst output, or failed with why (`lead`
    starts the message where one suite holds several models: the matrix's cell)."""
    name = pair_case_name(pair.a, pair.b, [o.name for o in pair.outputs])
    lead = f"{lead} " if lead else ""
    if not pair.outputs:
        return CheckRow(group, pair.kind, name, "failure", f"{lead}{pair.a} vs {pair.b}: no outputs were compared",
                        classname=classname)
    worst = pair.worst
    floor = f"{DISPLAY.get(worst.precision, worst.precision)} noise floor"  # the floor of the runs' precision
    ratio = f", {format_ratio(worst.ratio)}x the {floor}" if worst.ratio is not None else ""
    detail = f"{worst.where}: max abs {'-' if worst.max_abs is None else format(worst.max_abs, '.2e')}{ratio}"
    if pair.passed:
        return CheckRow(group, pair.kind, name, "passed", detail, worst.where, worst.ratio, classname=classname)
    return CheckRow(group, pair.kind, name, "failure",
                    f"{lead}{pair.a} vs {pair.b}: {worst.reason or 'outside the tolerance'} ({detail})",
                    worst.where, worst.ratio, classname=classname)
