"""JUnit XML (the Jenkins/GitLab schema), one writer for every report: a report becomes suites of cases
(`Suite`, `Case`), and `junit_document` writes them, every attribute and text made legal XML
(verify/render/text.py). Every command's report gives rows (verify/render/rows.py) and `rows_junit` writes
them: one testsuite per group (a model, a matrix cell, an artifact folder), one testcase per row."""

from __future__ import annotations

import datetime
import platform
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from verify.render.rows import OUTCOMES, CheckRow, Group, pair_row
from verify.render.text import xml_text

if TYPE_CHECKING:
    from collections.abc import Sequence

    from verify.judge.compare import PairResult
    from verify.matrix import MatrixResult


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


def case(row: CheckRow) -> Case:
    return Case(row.classname or row.group.name, row.name, row.outcome, row.detail, row.seconds)


def pair_case(classname: str, pair: PairResult, subject: str = "") -> Case:
    """One judged pair as a testcase (verify/render/rows.py `pair_row`), the same for every command."""
    return case(pair_row(Group(classname), classname, pair, subject))


def row_suites(rows: Sequence[CheckRow]) -> list[Suite]:
    """One testsuite per group of rows, in order of first appearance, one testcase per row."""
    found: dict[Group, Suite] = {}
    for row in rows:
        suite = found.setdefault(row.group, Suite(row.group.name, seconds=row.group.seconds or 0.0, id=row.group.id))
        suite.cases.append(case(row))
        if row.group.seconds is None:
            suite.seconds += row.seconds
    return list(found.values())


def rows_junit(title: str, rows: Sequence[CheckRow], seconds: float | None = None) -> str:
    """The one JUnit rendering of every command's rows (a report, folder checks, the matrix, a detector)."""
    return junit_document(title, row_suites(rows), seconds)


def junit_xml(result: MatrixResult) -> str:
    """The matrix's rows (one testsuite per cell, one testcase per cell x pair) by the one JUnit writer."""
    return rows_junit("verify matrix", result.rows(), result.seconds)
