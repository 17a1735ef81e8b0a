"""JUnit XML (the Jenkins/GitLab schema): one testsuite per cell, one testcase per cell x pair."""

from __future__ import annotations

import datetime
import platform
from typing import TYPE_CHECKING

from verify.render import format_ratio

if TYPE_CHECKING:
    from verify.matrix import MatrixResult


def junit_xml(result: MatrixResult) -> str:
    import xml.etree.ElementTree as ET

    from verify.matrix import pair_name

    cases = sum(max(1, len(c.pairs)) if not c.error else 1 for c in result.cells)
    failures = sum(sum(not p["passed"] for p in c.pairs) for c in result.cells if not c.error)
    errors = sum(bool(c.error) for c in result.cells)
    root = ET.Element("testsuites", name="verify matrix", tests=str(cases), failures=str(failures),
                      errors=str(errors), time=f"{result.seconds:.3f}")
    stamp = datetime.datetime.now().replace(microsecond=0).isoformat()
    for cell in result.cells:
        pairs = cell.pair_results()
        suite = ET.SubElement(root, "testsuite", name=cell.spec, id=cell.id,
                              tests=str(1 if cell.error else len(pairs)),
                              failures=str(0 if cell.error else sum(not p.passed for p in pairs)),
                              errors=str(int(bool(cell.error))), skipped="0", time=f"{cell.seconds:.3f}",
                              timestamp=stamp, hostname=platform.node() or "localhost")
        if cell.error:
            case = ET.SubElement(suite, "testcase", classname=f"matrix.{cell.id}", name="run cell", time="0")
            ET.SubElement(case, "error", message=cell.error, type="verify").text = cell.error
            continue
        for pair in pairs:
            name = pair_name(pair)
            case = ET.SubElement(suite, "testcase", classname=f"matrix.{cell.id}", name=name, time="0")
            worst = pair.worst
            ratio = f"{format_ratio(worst.ratio)}x the float32 noise floor" if worst.ratio is not None else ""
            detail = f"{worst.name}: max abs {worst.max_abs if worst.max_abs is not None else '-'}"
            detail += f", {ratio}" if ratio else ""
            if not pair.passed:
                message = f"{cell.spec} {name}: {worst.reason or 'outside the tolerance'} ({detail})"
                ET.SubElement(case, "failure", message=message, type="verify").text = message
            else:
                ET.SubElement(case, "system-out").text = detail
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
