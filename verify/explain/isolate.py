"""Isolated per-layer error for the commands: `verify explain A B --isolate`, and the culprit note of a failed
`verify compare` / `verify export` (which layers' own computation differs, apart from error they inherited). The
re-running itself is verify/explain/rerun.py; the records and their texts verify/judge/layers.py."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from exporter.errors import UsageError
from verify.api import RunSettings, input_shape_for, resolve_source, settings_inputs, source_kind
from verify.explain.equivalence import require_one_function
from verify.explain.rerun import isolate_sides, isolation_factor
from verify.explain.sides import load_sides
from verify.explain.tracers import Side
from verify.inputs import refuse_blank_inputs, seeded_input
from verify.judge.layers import Isolation, culprit_note
from verify.pipeline.isolation import USER_CODE_TIMEOUT, run_isolated
from verify.progress import NullProgress, Progress

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np

    from exporter.artifacts import Artifact
    from verify.report import Report


def user_code(a: str, b: str) -> list[str]:
    """The sides that are the user's own code (they run in a worker)."""
    return [str(k) for k in (source_kind(a), source_kind(b)) if getattr(k, "runs_user_code", False)]


def load_pair(a: str, b: str, settings: RunSettings, progress: Progress) -> tuple[list[Side], np.ndarray]:
    """Both sides loaded and lined up, and the input (--input's first, else the seeded one)."""
    given = settings_inputs(settings)
    # --input's own shape where --shape names none: a model is built for the inputs it is given (as compare does)
    shaped = settings if settings.shape or not given else replace(settings, shape=tuple(given[0].array.shape))
    with progress.step("Loading both sides to re-run their layers"):
        artifacts = [resolve_source(a, shaped), resolve_source(b, shaped)]
        sides = load_sides(*artifacts)
    named = given or [seeded_input(input_shape_for(artifacts, settings), settings.seed)]
    refuse_blank_inputs(named[:1])  # the culprit is looked for on the first input alone
    if given:  # review 35: an input that moves no output finds no culprit, whatever the file's layers hold
        from verify.judge.reach import refuse_unreached_sources

        refuse_unreached_sources(artifacts, given[:1], settings.tolerance)
    require_one_function(sides, named[0].array)  # the reference's own recorded run is under hooks, not watched
    return sides, named[0].array


def isolate_report(a: str, b: str, settings: RunSettings | None = None, progress: Progress | None = None,
                   timeout: float | None = USER_CODE_TIMEOUT, isolate: bool = True) -> Isolation:
    """`verify explain A B --isolate`: the layers whose own computation differs, ranked by their own ratio.
    A side that is the user's own code runs the whole report in a worker (verify.pipeline.isolation)."""
    settings, progress = settings or RunSettings(), progress or NullProgress()
    user = user_code(a, b)
    if isolate and user:
        return run_isolated(isolate_report, a, b, settings, what=f"Your model {' and '.join(user)}",
                            timeout=timeout, progress=progress, isolate=False)
    sides, x = load_pair(a, b, settings, progress)
    with progress.step("Re-running every layer on the reference's own inputs"):
        result, _, _ = isolate_sides(*sides, x, isolation_factor(settings))
    return result




ORACLE_PAIR = "oracle"
"""PairResult.kind of a run judged against the float64 oracle."""


def failing_files(report: Report) -> list[str]:
    """The exported files of `report` whose run failed against the float64 oracle (each once, in run order): the
    candidates whose layers `name_culprits` re-runs. A file that agrees with the oracle is not one, though it
    fails against the file that does not; when no oracle pair failed, every file a failed pair ran."""
    failed_pairs = [pair for pair in report.pairs if not pair.passed]
    failed = ({pair.a for pair in failed_pairs if pair.kind == ORACLE_PAIR}
              or {label for pair in failed_pairs for label in (pair.a, pair.b)})
    files = set(report.artifacts.values())
    return list(dict.fromkeys(run.artifact for run in report.runs if run.label in failed and run.artifact in files))


def name_culprits(report: Report, candidates: list[tuple[str, str]], settings: RunSettings | None = None,
                  progress: Progress | None = None, timeout: float | None = USER_CODE_TIMEOUT,
                  isolate: Callable[[str, str], Isolation] | None = None) -> None:
    """For each (file, torch model) of a failed report: every layer of the file re-run alone on the model's
    float64 inputs (`isolate`, default `isolate_report`); the layers that differ on their own become one note and
    the report's `isolated` record. A file the isolation cannot read (TorchScript, a graph without module scopes)
    gets a note saying so; nothing here changes a verdict."""
    isolate = isolate or (lambda candidate, reference: isolate_report(candidate, reference, settings, progress,
                                                                       timeout))
    for candidate, reference in candidates:
        try:
            result = isolate(candidate, reference)
        except Exception as exc:  # noqa: BLE001 - an explanation that fails never hides the verdict it explains
            said = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            report.notes.append(f"{file_side(candidate, reference)}: its layers were not isolated ({said})")
            continue
        report.isolated.append(result.to_dict())
        report.notes.append(culprit_note(result))


def isolate_against(reference: Artifact, x: np.ndarray, settings: RunSettings) -> Callable[[str, str], Isolation]:
    """`name_culprits`' isolation against a reference that is already built (the pytest plugin's in-memory
    module, which no name resolves): each file opened and its layers re-run on `reference`'s float64 values."""
    def isolate(candidate: str, _label: str) -> Isolation:
        sides = load_sides(reference, resolve_source(candidate, settings))
        result, _, _ = isolate_sides(*sides, x, isolation_factor(settings))
        return result
    return isolate


def file_side(candidate: str, reference: str) -> str:
    """The side of a pair that is a file (the one isolation re-runs), whichever order the pair was given in."""
    try:
        return next((side for side in (candidate, reference) if isinstance(source_kind(side), Path)), candidate)
    except UsageError:  # a side that no longer resolves: the candidate, as given
        return candidate
