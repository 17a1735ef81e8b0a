"""Speed 30: the layer verdict re-runs every file's layers and measures their floors at one torch thread count. Tried
and refused: starting it while the background ONNX file is still on its way (this process on one thread, the child
on the other core) and going on at two once the child is done; the floors cached by the first file (one thread) then
judged the next file's re-runs (two threads), and correct layers of a ResNet-50 `.pt2` went from 1.0x to 2.4x their
floor, by timing alone. The child is a stand-in here (no second interpreter) that takes a core and whose ONNX file is
late: the run's timing is the test's choice, not the machine's."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from exporter.export import ExportOptions
from exporter.formats import FORMATS, get_format
from exporter.spec import ModelSpec
from tests.conftest import SMALL, SMALL_SHAPE
from verify.judge.layers import LAYERS_ENV
from verify.pipeline import overlap, stages
from verify.settings import RunSettings

SPEC = ModelSpec(SMALL, "frozen", "body")
SETTINGS = RunSettings(shape=SMALL_SHAPE, samples=1)
"""default_export's model (its files are the stand-in child's), on one input."""
OVERLAPS = next(name for name in FORMATS if get_format(name).overlaps)
RIDES = next(name for name in FORMATS if get_format(name).rides_along)


class StandIn:
    """A background export in this process: it takes a core as the real child does (this process's torch on a thread
    fewer until `cancel`), hands over `kept` (default_export's files, this model's) copied, and says the overlapping
    file is not there until it is waited for (then, every file taken, it gives the core back)."""

    def __init__(self, kept: dict) -> None:
        self.kept, self.threads, self.waiting = kept, None, set(kept)

    def take_core(self) -> None:
        if self.threads is None:
            self.threads = overlap._yield_core()

    def cancel(self) -> None:
        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)
            self.threads = None

    def send(self, context, options, formats) -> None:
        pass

    def ready(self, fmt: str) -> bool:
        return fmt != OVERLAPS

    def wait(self, fmt: str, folder: Path):
        artifact = self.kept[fmt]
        shutil.copy(artifact.path, folder / artifact.path.name)
        self.waiting.discard(fmt)
        if not self.waiting:  # as the child: stopped, its core given back, once every file was taken
            self.cancel()
        return replace(artifact, path=folder / artifact.path.name)


@pytest.fixture
def two_threads():
    """At least MIN_CPUS torch threads for the test (the suite's xdist workers run one, where the child would have no
    core to take and the test skipped in every CI run), the count restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(max(threads, overlap.MIN_CPUS))
    yield
    torch.set_num_threads(threads)


def test_the_layer_verdict_runs_at_one_thread_count_when_the_onnx_file_is_late(default_export, tmp_path, monkeypatch,
                                                                                 two_threads):
    import torch

    import verify.explain.rerun as rerun
    from exporter.artifacts import Artifact
    from verify.api import verify_export

    kept = {fmt: Artifact(fmt, get_format(fmt).read_meta(default_export / get_format(fmt).filename),
                          path=default_export / get_format(fmt).filename) for fmt in (OVERLAPS, RIDES)}
    child, seen, checks = StandIn(kept), [], rerun.layer_checks

    def layer_checks(reference, candidates, *args, **kwargs):
        def taken():
            for candidate in candidates:
                seen.append((candidate.artifact.format, torch.get_num_threads(), child.threads is None))
                yield candidate
        found = checks(reference, taken(), *args, **kwargs)
        seen.append(("end", torch.get_num_threads(), child.threads is None))
        return found

    monkeypatch.setenv(LAYERS_ENV, "1")  # the layer verdict by default, as `verify export` runs it (off in the suite)
    monkeypatch.setattr(stages, "background_child", lambda request, take_core=True: child)
    monkeypatch.setattr(rerun, "layer_checks", layer_checks)
    report = verify_export(SPEC, SETTINGS, out=tmp_path, export=ExportOptions(formats=(OVERLAPS, RIDES)), cache=None)
    assert sorted(fmt for fmt, _, _ in seen[:-1]) == sorted((OVERLAPS, RIDES)) and seen[-1][0] == "end"
    assert len({threads for _, threads, _ in seen}) == 1, seen  # floors and re-runs at one count
    assert all(gone for _, _, gone in seen), seen  # after the child gave its core back: both cores, as serially
    assert report.layers and all(check.passed for check in report.layers) and report.passed
