"""JUnit XML (the Jenkins/GitLab schema), one writer for every report: a report becomes suites of cases
(`Suite`, `Case`), and `junit_document` writes them, every attribute and text made legal XML
(verify/render/text.py). The matrix: one testsuite per cell, one testcase per cell x pair, named by the
pair and the outputs it compared; `verify artifact`/`preflight`: verify/folder/checks.py `check_suites`."""

from __future__ import annotations

import datetime
import platform
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from verify.judge.precision import DISPLAY
from verify.render.text import xml_text
from verify.render.tiles import format_ratio

if TYPE_CHECKING:
    from verify.judge.compare import PairResult
    from verify.matrix import MatrixResult

OUTCOMES = ("passed", "failure", "error", "skipped")


@dataclass
class Case:
    classname: str
    name: str
    outcome: str = "passed"
    """passed, failure, error or skipped."""
    message: str = ""
    """The one-line reason (failure, error, skipped) or what passed (written to system-out)."""
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"JUnit case outcome {self.outcome!r} is not one of {', '.join(OUTCOMES)}")


@dataclass
class Suite:
    name: str
    cases: list[Case] = field(default_factory=list)
    seconds: float = 0.0
    id: str | None = None

    def count(self, outcome: str) -> int:
        return sum(case.outcome == outcome for case in self.cases)


def junit_document(title: str, suites: list[Suite], seconds: float | None = None) -> str:
    """The XML text: a testsuites root, one testsuite per suite, one testcase per case."""
    import xml.etree.ElementTree as ET

    total = sum(s.seconds for s in suites) if seconds is None else seconds
    root = ET.Element("testsuites", name=xml_text(title), tests=str(sum(len(s.cases) for s in suites)),
                      failures=str(sum(s.count("failure") for s in suites)),
                      errors=str(sum(s.count("error") for s in suites)),
                      skipped=str(sum(s.count("skipped") for s in suites)), time=f"{total:.3f}")
    stamp = datetime.datetime.now().replace(microsecond=0).isoformat()
    host = xml_text(platform.node() or "localhost")
    for suite in suites:
        extra = {"id": xml_text(suite.id)} if suite.id else {}
        element = ET.SubElement(root, "testsuite", name=xml_text(suite.name), **extra, tests=str(len(suite.cases)),
                                failures=str(suite.count("failure")), errors=str(suite.count("error")),
                                skipped=str(suite.count("skipped")), time=f"{suite.seconds:.3f}", timestamp=stamp,
                                hostname=host)
        for case in suite.cases:
            _case(ET.SubElement(element, "testcase", classname=xml_text(case.classname), name=xml_text(case.name),
                                time=f"{case.seconds:.3f}"), case)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _case(element: object, case: Case) -> None:
    import xml.etree.ElementTree as ET

    message = xml_text(case.message)
    if case.outcome == "skipped":
        ET.SubElement(element, "skipped", message=message)
    elif case.outcome in ("failure", "error"):
        ET.SubElement(element, case.outcome, message=message, type="verify").text = message
    elif message:
        ET.SubElement(element, "system-out").text = message


def pair_case_name(a: str, b: str, outputs: list[str]) -> str:
    """`onnxruntime vs eager: layer1, layer2`: the pair and every output it compared (the same name in every
    run of the same model, so CI history follows it)."""
    return f"{a} vs {b}: {', '.join(outputs)}" if outputs else f"{a} vs {b}"


def pair_case(classname: str, pair: PairResult, subject: str = "") -> Case:
    """One judged pair as a testcase, the same for every command: passed with its worst output, or failed with
    why (`subject` leads the message where the suite holds several models: the matrix's cell)."""
    name = pair_case_name(pair.a, pair.b, [o.name for o in pair.outputs])
    lead = f"{subject} " if subject else ""
    if not pair.outputs:
        return Case(classname, name, "failure", f"{lead}{pair.a} vs {pair.b}: no outputs were compared")
    worst = pair.worst
    floor = f"{DISPLAY.get(worst.precision, worst.precision)} noise floor"  # the floor of the runs' precision
    ratio = f", {format_ratio(worst.ratio)}x the {floor}" if worst.ratio is not None else ""
    detail = f"{worst.where}: max abs {'-' if worst.max_abs is None else format(worst.max_abs, '.2e')}{ratio}"
    if pair.passed:
        return Case(classname, name, "passed", detail)
    return Case(classname, name, "failure",
                f"{lead}{pair.a} vs {pair.b}: {worst.reason or 'outside the tolerance'} ({detail})")


def matrix_suites(result: MatrixResult) -> list[Suite]:
    suites = []
    for cell in result.cells:
        suite = Suite(cell.spec, seconds=cell.seconds, id=cell.id)
        classname = f"matrix.{cell.spec}"
        if cell.error:
            suite.cases.append(Case(classname, "run cell", "error", cell.error))
        suite.cases += [pair_case(classname, pair, cell.spec) for pair in ([] if cell.error else cell.pair_results())]
        if not cell.error and not any(c.outcome == "failure" for c in suite.cases) and not cell.passed \
                or not cell.error and not suite.cases:
            why = "; ".join([*map(str, cell.problems), *cell.notes]) or (
                "no pairs were judged" if not suite.cases else f"verdict {cell.verdict}")
            suite.cases.append(Case(classname, "verdict", "failure", f"{cell.spec}: {why}"))
        suites.append(suite)
    return suites


def junit_xml(result: MatrixResult) -> str:
    return junit_document("verify matrix", matrix_suites(result), result.seconds)
