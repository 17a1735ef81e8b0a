"""Shard reports merged into the whole matrix's report. A shard report is evidence, not a verdict: its matrix (cell ids
and fingerprint) is recomputed from the settings it records, each shard must hold exactly the cells the split gives
it, and every cell is judged again from its numbers. What it cannot show (a cell missing, foreign, doubled; a matrix
without cells) fails the merge (exit 1); reports that cannot be read are usage errors (exit 2)."""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from exporter.backbones import backbone_rows
from exporter.errors import UsageError, VerifyError
from exporter.spec import ModelSpec
from verify.matrix.detector_judging import judge_result
from verify.matrix.detectors import DETECTOR_VIEW, DetectorSpec, detector_formats
from verify.matrix.judging import kept_disagreement, tolerance_from
from verify.matrix.request import NOTHING_EXPORTED, fingerprint
from verify.matrix.result import (
    DISAGREE,
    ERROR,
    REPORT_KEY_ENV,
    CellResult,
    MatrixFailure,
    MatrixResult,
    verify_identity,
)
from verify.matrix.shards import assign_shards, spec_cost


@dataclass(frozen=True)
class ExpectedCell:
    id: str
    spec: str
    row: tuple[str, str, str]
    cost: float
    detector: tuple[tuple[str, ...], int] | None = None
    """A detector cell's formats and image count (what it is judged against); None for other cells."""


def expected_cells(settings: Any) -> list[ExpectedCell]:
    """Every cell the recorded settings define, with the id and cost `verify matrix` gives it."""
    from exporter.user_model import UserModelSpec
    from verify.cache import canonical, digest

    try:
        backbones, norms, views, models = ([str(x) for x in settings[k]] for k in ("backbones", "norms", "views",
                                                                                   "models"))
        shared = {"settings": settings["run"], "export": settings["export"], "runtimes": settings["runtimes"]}
        formats = [str(f) for f in settings["export"]["formats"]]
        shape = tuple(int(n) for n in settings.get("detector_shape") or ())
        detectors = [DetectorSpec(str(name), str(norm), shape) for name, norm in settings.get("detectors") or []]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MatrixFailure(f"The report's settings do not define a matrix ({type(exc).__name__}: {exc}); rerun "
                            "the matrix") from None
    try:
        rows = backbone_rows(backbones, norms, views)  # the rows `verify matrix` runs, by the same rule
    except VerifyError as exc:
        raise MatrixFailure(f"The report's matrix is not one this verify can build ({exc})") from None
    specs: list[Any] = [ModelSpec(*row) for row in rows] + detectors
    specs += [UserModelSpec(*text.rpartition(":")[::2]) for text in models]
    cells = []
    for spec in specs:
        try:
            size, judged = spec_cost(spec, len(formats)), None
            if spec.row[2] == DETECTOR_VIEW:  # judged against what the matrix asked of it, not what it claims
                spec.validate()
                judged = (detector_formats(formats), shape[0])
        except VerifyError as exc:
            raise MatrixFailure(f"The report's matrix names {spec}, which this verify cannot build ({exc})") from None
        ident = f"{spec.slug}-{digest({'spec': canonical(spec), **shared})[:10]}"
        cells.append(ExpectedCell(ident, str(spec), spec.row, size, judged))
    return cells


def runtime_count(settings: Any) -> int:
    """How many runs each backbone or user-model cell of the recorded settings makes: the runtimes `verify matrix`
    chooses for its formats (`choose_runtimes`), not a count the cells claim; without it a cell whose failing run
    was deleted with its pairs (3 runs recorded as 2) merged to exit 0."""
    from verify.pipeline.stages import choose_runtimes

    try:
        formats = [str(f) for f in settings["export"]["formats"]]
        asked = settings.get("runtimes")
        runtimes = None if asked is None else [str(r) for r in asked]
        chosen, _ = choose_runtimes(formats, runtimes, str(settings["run"]["runtime"]["precision"]))
    except (KeyError, TypeError, AttributeError) as exc:
        raise MatrixFailure(f"The report's settings name no runtimes or formats ({type(exc).__name__}: {exc}); "
                            "rerun the matrix") from None
    except VerifyError as exc:
        raise MatrixFailure(f"The report's runtimes are not ones this verify runs ({exc})") from None
    return len(chosen)


def check_report(report: MatrixResult, name: str) -> list[ExpectedCell]:
    """The report's matrix and fingerprint, recomputed from its settings: a report whose cells or fingerprint
    do not follow from the settings it records (relabelled, edited or from elsewhere) fails."""
    expected = expected_cells(report.settings)
    if not expected:
        raise MatrixFailure(f"{name} describes a matrix without cells: nothing was verified")
    if not report.settings["export"]["formats"]:  # read by expected_cells; `verify matrix` refuses such settings
        raise MatrixFailure(f"{name} describes a matrix that exports no file, {NOTHING_EXPORTED}; rerun the matrix "
                            "with a --runtime that runs a file")
    ids = [cell.id for cell in expected]
    claimed = [entry.get("id") if isinstance(entry, Mapping) else None for entry in report.matrix]
    if claimed != ids or [e.get("spec") for e in report.matrix] != [c.spec for c in expected]:
        raise MatrixFailure(f"{name} lists cells its own settings do not give ({len(claimed)} listed, "
                            f"{len(ids)} expected); merge reports exactly as `verify matrix --json` wrote them")
    if report.fingerprint != fingerprint(report.settings, ids):
        raise MatrixFailure(f"{name} has fingerprint {report.fingerprint!r}, but its settings and cells give "
                            f"{fingerprint(report.settings, ids)}; merge reports exactly as written")
    return expected


def _shard_of(report: MatrixResult, name: str) -> tuple[int, int] | None:
    if report.shard is None:
        return None
    try:
        index, count = report.shard["index"], report.shard["count"]
    except (KeyError, TypeError):
        index = count = None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (index, count)) or not 1 <= index <= count:
        raise MatrixFailure(f"{name} has no valid shard (got {report.shard!r}); merge reports exactly as written")
    return index, count


def _split(reports: Sequence[MatrixResult], names: Sequence[str]) -> int:
    """The shard count all reports share; refuses whole reports among shards and a shard given twice."""
    shards = [_shard_of(r, n) for r, n in zip(reports, names)]
    if any(s is None for s in shards):
        if len(reports) > 1:
            raise MatrixFailure("Only shard reports (--shard I/N) can be merged; a whole-matrix report is "
                                "already whole: give it alone")
        return 1
    count = shards[0][1]
    seen: dict[int, str] = {}
    for name, (index, total) in zip(names, shards):
        if total != count:
            raise MatrixFailure(f"{name} is shard {index}/{total}, the others are of {count}; merge shards of "
                                "one split")
        if index in seen:
            raise MatrixFailure(f"{name} and {seen[index]} are both shard {index}/{count}; give each shard once")
        seen[index] = name
    return count


def _gather(reports: Sequence[MatrixResult], names: Sequence[str], expected: list[ExpectedCell],
            count: int) -> dict[str, CellResult]:
    """Each cell once, in the report of the shard the split gives it; rows taken from the matrix."""
    by_id = {cell.id: cell for cell in expected}
    owner = dict(zip([c.id for c in expected], assign_shards([c.id for c in expected],
                                                             [c.cost for c in expected], count)))
    cells: dict[str, CellResult] = {}
    for name, report in zip(names, reports):
        index = report.shard["index"] if report.shard else 1
        for cell in report.cells:
            ident = cell.id if isinstance(cell.id, str) else repr(cell.id)
            if ident not in by_id:
                raise MatrixFailure(f"{name} holds cell {ident!r}, which is not a cell of this matrix; merge "
                                    "reports exactly as written")
            if ident in cells:
                raise MatrixFailure(f"Cell {by_id[ident].spec} ({ident}) appears more than once ({name})")
            if owner[ident] != index:
                raise MatrixFailure(f"{name} (shard {index}/{count}) holds cell {by_id[ident].spec}, which the "
                                    f"split gives to shard {owner[ident]}/{count}")
            backbone, norm, view = by_id[ident].row
            cells[ident] = replace(cell, id=ident, backbone=backbone, norm=norm, view=view, shard=report.shard
                                   and index)
    missing = [cell for cell in expected if cell.id not in cells]
    if missing:
        shards = sorted({owner[c.id] for c in missing})
        raise MatrixFailure(f"{len(missing)} of {len(expected)} cells missing: "
                            f"{', '.join(f'{c.spec} ({c.id})' for c in missing)}; rerun "
                            f"{'shard' if count > 1 else 'the matrix'}"
                            f"{' ' + ', '.join(f'{i}/{count}' for i in shards) if count > 1 else ''} and merge "
                            "every shard's report")
    return cells


def _first_difference(a: Any, b: Any, at: str) -> str | None:
    """The first setting (a dotted path) where `a` and `b` differ, with both values, or None when they are equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted({*a, *b}, key=str):
            found = _first_difference(a.get(key), b.get(key), f"{at}.{key}" if at else str(key))
            if found:
                return found
        return None
    return None if a == b else f"{at or 'settings'} {a!r} vs {b!r}"


def _difference(report: MatrixResult, first: MatrixResult) -> str:
    """What differs between two reports that must describe one run: the fingerprint, else the first setting, else
    the cells (a fingerprint is edited along with its settings as easily as not)."""
    if report.fingerprint != first.fingerprint:
        return f"fingerprint {report.fingerprint} vs {first.fingerprint}"
    return _first_difference(report.settings, first.settings, "settings") or "the same settings, other cells"


def merge_results(reports: Sequence[MatrixResult], sources: Sequence[object] | None = None) -> MatrixResult:
    """Join shard reports of one matrix into its whole report, every cell judged again from its numbers under
    the matrix's tolerance; anything that keeps it from showing every cell judged exactly once fails."""
    if not reports:
        raise UsageError("Give the shard reports to merge (verify matrix --shard I/N --json ...)")
    names = [str(s) for s in (sources or [f"report {i + 1}" for i in range(len(reports))])]
    if os.environ.get(REPORT_KEY_ENV):
        for name, report in zip(names, reports):
            if report.authentic is not True:
                raise MatrixFailure(f"{name} carries no valid HMAC for ${REPORT_KEY_ENV}: it was edited after it "
                                    f"was written, or its job ran without the key; set the same ${REPORT_KEY_ENV} "
                                    "in every shard job and rerun them")
    own = verify_identity()
    for name, report in zip(names, reports):
        theirs = {key: report.versions.get(key) for key in own}
        if theirs != own:  # its numbers were measured, and its floors kept, by other rules (e.g. before bulk floors)
            raise UsageError(f"{name} was written by another verify ({', '.join(f'{k} {v}' for k, v in theirs.items())}"
                             f"; this is {', '.join(f'{k} {v}' for k, v in own.items())}): its numbers are judged "
                             "by this verify's rules; rerun the shards with the verify that merges them")
    first = reports[0]
    expected = check_report(first, names[0])
    for name, report in zip(names[1:], reports[1:]):
        if (report.fingerprint, report.settings, report.matrix) != (first.fingerprint, first.settings, first.matrix):
            raise MatrixFailure(f"{name} is from a different matrix or settings than {names[0]} "
                                f"({_difference(report, first)}); merge only shards of one run")
        if report.versions != first.versions:
            changed = sorted(k for k in {*report.versions, *first.versions}
                             if report.versions.get(k) != first.versions.get(k))
            raise UsageError(f"{name} ran with other library versions than {names[0]} ({', '.join(changed)}); "
                             "run every shard in the same environment")
    count = _split(reports, names)
    cells = _gather(reports, names, expected, count)
    tolerance = tolerance_from((first.settings.get("run") or {}).get("tolerance"))
    runs = runtime_count(first.settings)
    from verify.cache import CacheStats

    stats = CacheStats()
    for report in reports:
        with contextlib.suppress(AttributeError, TypeError, ValueError):
            stats.add(report.cache)
    ordered = sorted(reports, key=lambda r: r.shard["index"] if r.shard else 1)
    return MatrixResult(
        settings=first.settings, fingerprint=first.fingerprint, matrix=first.matrix,
        cells=[_merged_cell(cells[c.id], judge_result(cells[c.id], tolerance, c.detector, runs)) for c in expected],
        shard=None,
        merged=[{"index": r.shard["index"] if r.shard else 1, "count": count, "seconds": r.seconds, "jobs": r.jobs,
                 "cells": len(r.cells)} for r in ordered],
        versions=first.versions, seconds=max(r.seconds for r in reports), jobs=max(r.jobs for r in reports),
        cache={"dir": None, **stats.to_dict()},
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


UNSIGNED_NOTE = ("the shards are unsigned: each cell was judged again from its stored numbers, checked to be "
                 "consistent, not who wrote them (eager's and the oracle's, which measure the floors, included); "
                 f"set ${REPORT_KEY_ENV} in every shard job and in the merge to bind them")
"""Said by `verify matrix merge` without the report key (review 35): a shard edited consistently merges as written."""


def _merged_cell(stored: CellResult, judged: CellResult) -> CellResult:
    """A cell its shard recorded as failed stays failed (review 35): a stored failure can only fail the merge, so it is
    read back, where a stored pass never is. A shard whose RUN_FOUND problem alone was cut (its verdict left as
    "disagree") had merged to exit 0; one edited in both places is caught by the report key only (REPORT_KEY_ENV)."""
    if stored.verdict not in (DISAGREE, ERROR):
        return judged
    return kept_disagreement(judged, [str(p) for p in stored.problems] if isinstance(stored.problems, list) else []
                             or [f"its shard recorded it as {stored.verdict!r}"])
