"""A runtime that `loads_in_background` (here the .pt2's) is loaded in a thread while the export runs the other
runtimes and the oracle (verify/pipeline/preload.py): its runs and every verdict stay in the caller's thread, its
failure is the same one line as a load in the caller's, and a load never taken leaves no result behind."""

from __future__ import annotations

import threading
import time

import pytest

from exporter.errors import ArtifactError
from exporter.export import ExportOptions
from exporter.formats.onnx import OnnxOptions
from exporter.spec import ModelSpec
from verify.pipeline import overlap, preload
from verify.pipeline.preload import Preloads
from verify.runtimes import RuntimeOptions, runtime_class
from verify.settings import RunSettings

SPEC = ModelSpec("resnet18", "frozen", "body")
SETTINGS = RunSettings(shape=(1, 3, 32, 32), samples=2)
SLOW_LOAD_S = 1.0
"""Long enough that the export has other work to do while the .pt2 loads."""


class _FakeArtifact:
    label = "fake.pt2"


def _patched_make_runtime(monkeypatch, load):
    import verify.runtimes as runtimes

    class Loaded:
        artifact = None

        def load(self, artifact):
            load(artifact)
            self.artifact = artifact
            return self

    monkeypatch.setattr(runtimes, "make_runtime", lambda name, options=None: Loaded())


@pytest.fixture(autouse=True)
def pt2_loads_in_the_background(monkeypatch):
    """The .pt2's runtime is this module's example of a slow load: it declares a background load here (by default it
    loads in the caller, verify/runtimes/exported.py says why)."""
    monkeypatch.setattr(runtime_class("exported"), "loads_in_background", True)


def test_only_a_runtime_that_declares_it_loads_in_the_background():
    preloads = Preloads(RuntimeOptions())
    assert preloads.wants("exported")
    assert runtime_class("exported").loads_in_background
    assert not any(preloads.wants(name) for name in ("eager", "torchscript", "onnxruntime"))
    assert preloads.take("exported") is None  # never started: the caller loads it itself


def test_a_failed_background_load_raises_its_own_error_when_taken(monkeypatch):
    threads = []

    def failing(artifact):
        threads.append(threading.current_thread())
        raise ArtifactError(f"{artifact.label} cannot be loaded by torch.export.load: truncated")

    import sys

    _patched_make_runtime(monkeypatch, failing)
    before = sys.getswitchinterval()
    preloads = Preloads(RuntimeOptions())
    preloads.start("exported", _FakeArtifact())
    assert not preloads.wants("exported")  # one load per runtime
    with pytest.raises(ArtifactError, match="fake.pt2 cannot be loaded by torch.export.load: truncated"):
        preloads.take("exported")
    assert threads and threads[0] is not threading.main_thread()
    assert preloads.take("exported") is None  # taken once: nothing kept
    assert sys.getswitchinterval() == before  # restored however the load ended


def test_a_background_load_is_waited_for_counts_its_seconds_and_cuts_the_switch_interval_meanwhile(monkeypatch):
    import sys

    seen = []

    def slow(artifact):
        seen.append(sys.getswitchinterval())
        time.sleep(SLOW_LOAD_S)

    _patched_make_runtime(monkeypatch, slow)
    before = sys.getswitchinterval()
    assert before > preload.SWITCH_INTERVAL_S  # the interpreter's default: what there is to cut
    preloads = Preloads(RuntimeOptions())
    artifact = _FakeArtifact()
    preloads.start("exported", artifact)
    assert preloads.loading("exported")
    loaded, seconds = preloads.take("exported")
    assert loaded.artifact is artifact and seconds >= SLOW_LOAD_S
    assert not preloads.loading("exported")
    assert seen == [preload.SWITCH_INTERVAL_S] and sys.getswitchinterval() == before


def test_the_pt2_loads_after_the_torch_runs_and_beside_the_oracle_with_the_same_verdicts(tmp_path, monkeypatch):
    """The .pt2 is loaded off the main thread once no torch module runs beside it (a torch run takes the GIL back
    after every operator), slowed so that the oracle has to run meanwhile; its runs are made on the main thread; the
    report is that of a load in the main thread (same runs, same verdicts)."""
    import exporter.formats.pt2 as pt2
    import verify.pipeline.stages as stages
    from verify.api import verify_export

    monkeypatch.setenv(overlap.MODE_ENV, "off")  # the formats are there at once: only the load overlaps
    events: list[tuple[str, str]] = []
    real_load, real_oracles, real_run = pt2.load_program, stages.oracles_stage, stages.run_stage

    def slow_load(path):
        events.append(("load starts", threading.current_thread().name))
        time.sleep(SLOW_LOAD_S)
        loaded = real_load(path)
        events.append(("load ends", threading.current_thread().name))
        return loaded

    def oracles(*args, **kwargs):
        events.append(("oracle", threading.current_thread().name))
        return real_oracles(*args, **kwargs)

    def run_stage(name, *args, **kwargs):
        result = real_run(name, *args, **kwargs)
        events.append((f"{name} runs end", threading.current_thread().name))
        return result

    monkeypatch.setattr(pt2, "load_program", slow_load)
    monkeypatch.setattr(stages, "oracles_stage", oracles)
    monkeypatch.setattr(stages, "run_stage", run_stage)
    runtimes = ("eager", "exported")
    report = verify_export(SPEC, SETTINGS, out=tmp_path / "pre", export=ExportOptions(formats=("pt2",)),
                           runtimes=runtimes, cache=None)
    kinds = [kind for kind, _ in events]
    assert kinds.index("eager runs end") < kinds.index("load starts")  # held back while eager ran
    assert kinds.index("oracle") < kinds.index("load ends")  # the oracle ran beside it
    threads = dict(events)
    assert threads["load starts"] == "load exported" and threads["oracle"] == threading.main_thread().name

    monkeypatch.setattr(runtime_class("exported"), "loads_in_background", False)
    events.clear()
    serial = verify_export(SPEC, SETTINGS, out=tmp_path / "serial", export=ExportOptions(formats=("pt2",)),
                           runtimes=runtimes, cache=None)
    kinds = [kind for kind, _ in events]
    assert kinds.index("load ends") < kinds.index("oracle")
    assert {thread for _, thread in events} == {threading.main_thread().name}
    assert report.passed and serial.passed
    assert [run.label for run in report.runs] == [run.label for run in serial.runs]
    assert [(p.a, p.b, p.passed) for p in report.pairs] == [(p.a, p.b, p.passed) for p in serial.pairs]


def test_a_pt2_that_arrives_during_the_oracle_starts_loading_before_the_oracle_ends(tmp_path, monkeypatch):
    """Before: the loop looked for finished files only between stages, so a .pt2 the child sent a moment after the
    oracle began waited for the whole oracle before its load started (cold resnet50: 3.9 s of load after a 3.3 s
    oracle, none beside it). Here the child's files are hidden until the oracle has begun, and the oracle waits
    until the .pt2 is really there: its load must start on its thread before the oracle ends.
    The same export is tests/test_prejudge.py's (one background export for both, the suite's minutes): the ONNX
    file is looked for only when its runtime's turn comes (its readiness hidden), so the export must wait for it:
    before that wait it judges the runs it has, and the final judging takes them from the memo."""
    import exporter.formats.pt2 as pt2
    import verify.pipeline.stages as stages
    from verify.api import verify_export

    if overlap.usable_cpus() < overlap.MIN_CPUS:
        pytest.skip("one usable core: no background export")
    monkeypatch.setenv(overlap.MODE_ENV, "on")
    events: list[tuple[str, str]] = []
    oracle_began = threading.Event()
    children: list[overlap.BackgroundExport] = []
    real_ready, real_oracles, real_load = overlap.BackgroundExport.ready, stages.oracles_stage, pt2.load_program
    real_judge = stages.pooled_judge_stage
    calls: list[tuple[list[str], int]] = []

    def gated_ready(self, fmt):
        children.append(self)
        return fmt != "onnx" and oracle_began.is_set() and real_ready(self, fmt)

    def oracles(*args, **kwargs):
        deadline = time.monotonic() + 300
        while not real_ready(children[-1], "pt2") and time.monotonic() < deadline:
            time.sleep(0.05)
        events.append(("oracle starts", threading.current_thread().name))
        oracle_began.set()
        result = real_oracles(*args, **kwargs)
        events.append(("oracle ends", threading.current_thread().name))
        return result

    def load(path):
        events.append(("load starts", threading.current_thread().name))
        return real_load(path)

    def judge(runs, oracles, tolerance, memo=None):
        calls.append(([run.runtime for run in runs], len(memo or {})))
        return real_judge(runs, oracles, tolerance, memo)

    monkeypatch.setattr(overlap.BackgroundExport, "ready", gated_ready)
    monkeypatch.setattr(stages, "oracles_stage", oracles)
    monkeypatch.setattr(pt2, "load_program", load)
    monkeypatch.setattr(stages, "pooled_judge_stage", judge)
    # the ONNX file is awaited, not judged for its translation: the legacy exporter's (dynamo's costs ~2 s more)
    export = ExportOptions(formats=("torchscript", "pt2", "onnx"),
                           format_options=(OnnxOptions(exporter="torchscript"),))
    report = verify_export(SPEC, SETTINGS, out=tmp_path, export=export,
                           runtimes=("eager", "torchscript", "exported", "onnxruntime"), cache=None)
    kinds = [kind for kind, _ in events]
    assert kinds.index("oracle starts") < kinds.index("load starts") < kinds.index("oracle ends"), events
    assert dict(events)["load starts"] == "load exported"
    assert report.passed
    # tests/test_prejudge.py: the runs judged while the ONNX file was awaited, and the memo the final judging took
    *waiting, final = calls
    assert waiting and all("onnxruntime" not in runs and len(runs) >= 2 for runs, _ in waiting)
    assert final[0] == ["eager", "torchscript", "exported", "onnxruntime"] and final[1] > 0
