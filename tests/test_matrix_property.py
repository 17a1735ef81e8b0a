"""Property (issue 14): no edit of a cached cell result or of a shard report turns a disagreeing cell into exit 0.

One real disagreeing matrix is built once (resnet18 at 1x3x32x32, judged at a factor below its own worst ratio);
hypothesis then edits what a run reads back."""

from __future__ import annotations

import contextlib
import copy
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.errors import VerifyError
from tests.conftest import matrix_cache_copy
from tests.helpers import request
from verify.matrix import (
    AGREE,
    REPORT_KEY_ENV,
    SHARD_ENV,
    MatrixResult,
    merge_results,
)
from verify.matrix.cell import CellJob, lookup_cell
from verify.matrix.judging import FLOAT_FIELDS
from verify.matrix.request import cell_id, fingerprint

EXAMPLES = int(os.environ.get("MATRIX_EXAMPLES", "20"))
"""Examples per property (the nightly-style run: MATRIX_EXAMPLES=200)."""
PROPERTY = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
KEY = "shared CI secret"


@contextlib.contextmanager
def environ(**values):
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def failing(module_tmp, two_cell_matrix):
    """The disagreeing matrix as two shard reports (plain and signed with KEY), and a copy of its cache: the suite's
    two-cell matrix (tests/conftest.py), at FAILING_SHARE of its worst ratio."""
    _, factor, _, shards = two_cell_matrix
    cache = matrix_cache_copy(two_cell_matrix, module_tmp("property"))
    with environ(**dict.fromkeys((*SHARD_ENV, REPORT_KEY_ENV))):
        plain = [json.loads(json.dumps(s.to_dict(), default=str)) for s in shards]
    with environ(**{REPORT_KEY_ENV: KEY}):
        signed = [json.loads(json.dumps(s.to_dict(), default=str)) for s in shards]
    assert merge_results([MatrixResult.from_dict(r) for r in plain]).exit_code == 1
    return {"cache": cache, "factor": factor, "plain": plain, "signed": signed}


def outputs_of(reports):
    return [o for r in reports for c in r["cells"] for p in c["pairs"] for o in p["outputs"]]


NUMBERS = st.one_of(st.none(), st.just(0.0), st.floats(allow_nan=False, allow_infinity=False, width=32),
                    st.floats(min_value=0, max_value=10), st.text(max_size=3), st.booleans())
VERDICTS = st.sampled_from(["agree", "disagree", "error", "AGREE", "", None, True])


@st.composite
def edits(draw, numbers: bool):
    """A list of edits: (what, where, value), applied in order."""
    kinds = ["verdict", "flags", "drop_pair", "drop_output", "drop_cell", "drop_run", "fingerprint",
             "shard", "problems", "error", "counts", "matrix"] + (["number", "copy_pass"] if numbers else [])
    return draw(st.lists(st.tuples(st.sampled_from(kinds), st.integers(0, 10 ** 6),
                                   st.one_of(NUMBERS, VERDICTS), st.sampled_from(FLOAT_FIELDS)),
                         min_size=1, max_size=6))


def apply(reports, changes, agreeing_cell=None):
    """Edit the reports' dicts in place (each edit at a position taken modulo what exists)."""
    for what, where, value, field in changes:
        report = reports[where % len(reports)]
        cells = report["cells"]
        cell = cells[where % len(cells)] if cells else None
        if what == "verdict" and cell:
            cell["verdict"] = value
        elif what == "flags":
            report.update(passed=True, exit_code=0, summary="2 of 2 cells agree")
            for c in cells:
                c.update(verdict="agree", passed=True)
                for p in c["pairs"]:
                    p["passed"] = True
                    for o in p["outputs"]:
                        o.update(passed=True, mismatched=0, reason="")
        elif what == "drop_pair" and cell and cell["pairs"]:
            failing = [p for p in cell["pairs"] if not p["passed"]] or cell["pairs"]
            cell["pairs"].remove(failing[where % len(failing)])
        elif what == "drop_output" and cell and cell["pairs"]:
            pair = cell["pairs"][where % len(cell["pairs"])]
            if pair["outputs"]:
                pair["outputs"].pop(where % len(pair["outputs"]))
        elif what == "drop_cell" and cells:
            cells.pop(where % len(cells))
        elif what == "drop_run" and cell and cell["runs"]:
            cell["runs"].pop(where % len(cell["runs"]))
        elif what == "fingerprint":
            report["fingerprint"] = fingerprint(report["settings"], [c["id"] for c in cells])
        elif what == "shard":
            report["shard"] = None if value is None else {"index": 1 + where % 2, "count": 1 + where % 3}
        elif what == "problems" and cell:
            cell["problems"] = []
        elif what == "error" and cell:
            cell["error"] = None
        elif what == "counts":
            report["counts"] = {"agree": len(cells), "disagree": 0, "error": 0}
        elif what == "matrix":
            report["matrix"] = [m for m in report["matrix"] if m["id"] in {c["id"] for c in cells}]
        elif what == "number":
            outputs = [o for c in cells for p in c["pairs"] for o in p["outputs"]]
            if outputs:
                outputs[where % len(outputs)][field] = value
        elif what == "copy_pass" and cell and agreeing_cell is not None:
            keep = {"id": cell["id"], "backbone": cell["backbone"], "norm": cell["norm"], "view": cell["view"]}
            source = copy.deepcopy(agreeing_cell)  # copied first: the cell edited may be the agreeing one itself
            cell.clear()
            cell.update(source, **keep)


def never_exit_0(reports, key=None):
    with environ(**{REPORT_KEY_ENV: key}):
        try:
            loaded = [MatrixResult.from_dict(r) for r in reports]
            merged = merge_results(loaded)
        except VerifyError:
            return
    assert merged.exit_code != 0, merged.summary()
    assert not merged.passed


@PROPERTY
@given(changes=edits(numbers=False))
def test_no_edit_of_verdicts_structure_or_fingerprint_passes_a_merge(failing, changes):
    reports = copy.deepcopy(failing["plain"])
    apply(reports, changes)
    never_exit_0(reports)


@PROPERTY
@given(changes=edits(numbers=True))
def test_with_a_report_key_no_edit_at_all_passes_a_merge(failing, changes):
    reports = copy.deepcopy(failing["signed"])
    agreeing = next((c for r in reports for c in r["cells"] if all(p["passed"] for p in c["pairs"])), None)
    apply(reports, changes, agreeing)
    never_exit_0(reports, KEY)


@PROPERTY
@given(changes=edits(numbers=True))
def test_no_edit_of_a_cached_result_is_served_as_a_pass(failing, changes):
    """Whatever a cached entry says (its checksum redone by `store`), the lookup serves a disagreement or
    nothing (the cell then runs): never a pass."""
    from verify.cache import Cache, CacheStats
    from verify.matrix.cell import _result_key

    cells = request(failing["factor"]).cells()
    cache = Cache(failing["cache"])
    report = {"cells": [], "settings": {}, "matrix": []}
    for cell in cells:
        job = CellJob(cell, cell_id(cell), str(failing["cache"]))
        _, key = _result_key(job, cache)
        entry = cache.load("result", key)
        assert entry is not None
        report["cells"].append(copy.deepcopy(entry.data))
    passing = next(iter(failing["plain"]))["cells"][0]
    apply([report], changes, {**passing, "verdict": AGREE})
    for cell, data in zip(cells, report["cells"]):
        job = CellJob(cell, cell_id(cell), str(failing["cache"]))
        scratch = Cache(failing["cache"].parent / "scratch")
        _, key = _result_key(job, scratch)
        scratch.store("result", key, data=data)
        served, _ = lookup_cell(CellJob(cell, job.id, str(scratch.root)), CacheStats())
        assert served is None or served.verdict == "disagree"
