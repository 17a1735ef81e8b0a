"""Newuser 48b: the README's later sections run as a new user copies them (README "Newuser 48b")."""
from __future__ import annotations

from pathlib import Path

import pytest

from exporter.formats import file_formats, get_format
from verify.cache import Cache
from verify.judge.compare import OutputComparison, PairResult
from verify.judge.layers import Isolation, LayerError
from verify.pipeline.stages import HIT, MISS, RunResult, cached_file_notes
from verify.report import Report

DATA = next(name for name in file_formats() if not get_format(name).executes_code_on_load)
CODE = next(name for name in file_formats() if get_format(name).executes_code_on_load)
FACTOR = 5.0


def run(fmt: str) -> RunResult:
    runtime = get_format(fmt).default_runtime
    return RunResult(runtime, runtime, f"/out/model-{fmt}.file", [{}], 0.0)


def pair(a: str, b: str, passed: bool) -> PairResult:
    return PairResult(a, b, [OutputComparison("out", [1], [1], passed=passed)])


@pytest.fixture
def cells(tmp_path: Path):
    runs = [run(DATA), run(CODE)]
    formats = {r.runtime: fmt for r, fmt in zip(runs, (DATA, CODE), strict=True)}
    statuses = {f"export:{DATA}": HIT, f"export:{CODE}": MISS}
    return runs, formats, statuses, Cache(tmp_path / "cache")


def notes_for(cells, pairs: list[PairResult], layers: list[Isolation] | None = None, cache: bool = True) -> list[str]:
    runs, formats, statuses, store = cells
    report = Report("export", {}, {}, pairs=pairs)
    report.layers = layers
    return cached_file_notes(report, runs, formats, statuses, store if cache else None)


def test_a_failing_file_taken_from_the_cache_is_named_with_what_to_do(cells):
    """A planted ONNX entry (valid metadata, one channel's weights 0.1 % off) failed at 2274x with a note naming FP16
    and nothing about the cache: the user could not tell a wrong cached file from a wrong export."""
    runs, _, _, store = cells
    data, code = runs
    notes = notes_for(cells, [pair(data.label, code.label, False), pair(code.label, "eager", True)])
    assert len(notes) == 1
    assert Path(data.artifact).name in notes[0] and str(store.root) in notes[0]
    assert "--no-cache" in notes[0] and "verify cache clear" in notes[0]


def test_no_note_for_a_cached_file_that_passed_or_a_file_this_run_exported(cells):
    data, code = cells[0]
    assert notes_for(cells, [pair(data.label, "eager", True), pair(code.label, "eager", False)]) == []
    assert notes_for(cells, [pair(data.label, "eager", False)], cache=False) == []


def test_a_cached_file_that_fails_only_its_layer_verdict_is_named(cells):
    data = cells[0][0]
    layer = LayerError("conv1", 0, FACTOR * 200, 1e-3, 1e-6)
    beyond = Isolation("eager", Path(data.artifact).name, FACTOR, [layer])
    within = Isolation("eager", Path(data.artifact).name, FACTOR, [LayerError("conv1", 0, FACTOR / 2, 1e-6, 1e-6)])
    assert len(notes_for(cells, [pair(data.label, "eager", True)], [beyond])) == 1
    assert notes_for(cells, [pair(data.label, "eager", True)], [within]) == []
