"""The ONNX export in a background process (verify/pipeline/overlap.py), the `.pt2` with it from the same trace: the
same files and verdicts as the serial export, the model traced once, a child's failure is one line with the exit
code of any export failure and leaves nothing behind, and an interrupted or killed parent takes its child with it."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exporter.errors import ExportError
from exporter.export import ExportOptions
from exporter.spec import ModelSpec
from verify.pipeline import overlap
from verify.settings import RunSettings

SPEC = ModelSpec("resnet18", "frozen", "body")
SHAPE = (1, 3, 32, 32)
SETTINGS = RunSettings(shape=SHAPE, samples=1)
"""One input per verdict: what runs in the child does not depend on how many inputs the verdicts take."""
FORMATS = ("torchscript", "pt2", "onnx")
RUNTIMES = ("eager", "torchscript", "exported", "onnxruntime")
COMPARED_FILES = ("model.onnx", "model.pt2", "goldens.npz")
"""Files whose bytes are a function of the model and input (a TorchScript archive's are not, run to run)."""
CHILD_APPEARS_S = 120.0
CHILD_GONE_S = overlap.STOP_GRACE_SECONDS + 10.0


def use_mode(patch: pytest.MonkeyPatch, mode: str) -> None:
    """`mode`, whatever the suite's workers set (tests/conftest.py sets `off` in one-core xdist workers)."""
    patch.setenv(overlap.MODE_ENV, mode)


def export_with(mode: str, out: Path, traces: list[str], cache=None):
    """`verify_export` in `mode` with `cache` (a verify.cache.Cache, or None); `traces` gets one entry per
    `torch.export` trace made in this process."""
    from exporter.formats import program
    from verify.api import verify_export

    def counted(context):
        traces.append(str(context.built.spec))
        return trace(context)

    trace = program.trace_exported_program
    with pytest.MonkeyPatch.context() as patch:
        use_mode(patch, mode)
        patch.setattr(program, "trace_exported_program", counted)
        return verify_export(SPEC, SETTINGS, out=out, export=ExportOptions(formats=FORMATS),
                             runtimes=RUNTIMES, cache=cache)


@contextlib.contextmanager
def one_torch_thread():
    """One torch thread here and in the processes started (OMP_NUM_THREADS), as in the suite's xdist workers: on n > 1
    threads the overlapped parent runs on n - 1 while its child lives, and float32 rounds by the thread count (README
    "Speed"), so run alone (`pytest tests/test_export_overlap.py`, two threads) the serial export's goldens and
    figures differed from the overlapped one's in their last digits."""
    import torch

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def serial_and_overlapped(module_tmp):
    """mode -> (report, folder, traces made in this process): the same export made serially (no cache) and with
    ONNX and the `.pt2` in the background, into an empty cache of its own ("cache": that Cache, which
    test_a_background_export_is_stored_in_the_cache_and_a_hit_leaves_the_child_the_pt2_alone exports from again)."""
    from verify.cache import Cache

    found = {"cache": Cache(module_tmp("cache"))}
    with one_torch_thread():
        for mode in ("off", "on"):
            out, traces = module_tmp(mode), []
            found[mode] = (export_with(mode, out, traces, found["cache"] if mode == "on" else None), out / SPEC.slug,
                           traces)
    return found


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_overlapped_export_writes_the_serial_files(serial_and_overlapped):
    (_, serial, _), (_, overlapped, _) = serial_and_overlapped["off"], serial_and_overlapped["on"]
    assert sorted(p.name for p in serial.iterdir()) == sorted(p.name for p in overlapped.iterdir())
    for name in COMPARED_FILES:
        assert digest(serial / name) == digest(overlapped / name), name


def test_overlapped_export_reaches_the_serial_verdicts(serial_and_overlapped):
    """Every pair and oracle check, in the same order, with the same figures: the runs whose files were still in the
    child ran after the oracle, and the report lists them in the runtimes' order all the same."""
    (serial, _, _), (overlapped, _, _) = serial_and_overlapped["off"], serial_and_overlapped["on"]

    def verdicts(report):
        return [(p.a, p.b, p.kind, p.passed, p.worst.name, p.worst.max_abs) for p in report.pairs]

    assert verdicts(serial) == verdicts(overlapped)
    assert [r.label for r in serial.runs] == [r.label for r in overlapped.runs]
    assert {r.label for r in overlapped.runs} == set(RUNTIMES)
    assert all(p.passed for p in overlapped.pairs) and not overlapped.problems


def test_the_model_is_traced_once_and_in_the_child_when_it_exports(serial_and_overlapped):
    """Serially one trace serves the `.pt2` and ONNX; with the background export this process traces nothing (the
    child's one trace made both files, which are the serial ones: the test above)."""
    assert len(serial_and_overlapped["off"][2]) == 1
    assert serial_and_overlapped["on"][2] == []


def test_the_mode_decides_and_an_unknown_one_is_refused(monkeypatch):
    from exporter.errors import UsageError

    use_mode(monkeypatch, "off")
    assert not overlap.can_overlap(user_model=False)
    use_mode(monkeypatch, "on")
    assert overlap.can_overlap(user_model=False) == (overlap.usable_cpus() >= overlap.MIN_CPUS)
    assert not overlap.can_overlap(user_model=True)  # a user's model is never pickled into another process
    monkeypatch.setenv(overlap.MODE_ENV, "sometimes")
    with pytest.raises(UsageError, match=overlap.MODE_ENV):
        overlap.can_overlap(user_model=False)


def _garbage_job(self, job: bytes) -> None:
    self._send.send_bytes(b"not a pickle")


def _unloadable_model(context) -> bytes:
    return b"not a torch.save archive"


@pytest.mark.parametrize("patched, said", [
    ("_model_bytes", "The background onnx export failed"),  # the child raises: its own one-line error
    ("_write", "without a result"),  # the child dies before its export: exit code and its last stderr line
])
def test_a_failed_background_export_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, patched, said):
    from typer.testing import CliRunner

    from verify.cli import app

    if overlap.usable_cpus() < overlap.MIN_CPUS:
        pytest.skip("one usable core: the export stays in this process")
    replacement = _unloadable_model if patched == "_model_bytes" else _garbage_job
    if patched == "_model_bytes":
        monkeypatch.setattr(overlap, patched, replacement)
    else:
        monkeypatch.setattr(overlap.BackgroundExport, patched, replacement)
    use_mode(monkeypatch, "on")
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr("tempfile.tempdir", None)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["export", "-b", SPEC.backbone, "--shape", "x".join(map(str, SHAPE)),
                                      "--format", "onnx", "--out", str(out), "--no-cache"])
    assert result.exit_code == ExportError.exit_code, result.output
    errors = [line for line in result.output.splitlines() if said in line]
    assert len(errors) == 1 and overlap.MODE_ENV in errors[0], result.output
    assert not out.exists() or not any(out.iterdir())  # no folder, no staging left
    assert not any(temp.glob("verify-onnx-export-*")), list(temp.iterdir())


def _children_running_overlap(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and overlap.__name__.encode() in cmdline:
            found.append(int(entry.name))
    return found


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has exited; only its parent's wait remains


def _reaches_niceness(pid: int, wanted: int) -> bool:
    """Whether the child lowers its own priority to `wanted` (it does so first thing) before the deadline."""
    deadline = time.monotonic() + CHILD_APPEARS_S
    while time.monotonic() < deadline:
        try:
            if os.getpriority(os.PRIO_PROCESS, pid) == wanted:
                return True
        except OSError:  # gone already
            return False
        time.sleep(0.05)
    return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the child through /proc")
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_an_interrupted_export_takes_its_child_with_it(tmp_path, how):
    if overlap.usable_cpus() < overlap.MIN_CPUS:
        pytest.skip("one usable core: no child")
    out = tmp_path / "out"
    env = {**os.environ, overlap.MODE_ENV: "on", "BACKBONE_VERIFY_NO_CACHE": "1"}
    parent = subprocess.Popen([sys.executable, "-c", "from verify.cli import main; main()", "export", "-b",
                               SPEC.backbone, "--shape", "x".join(map(str, SHAPE)), "--out", str(out)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + CHILD_APPEARS_S
        children: list[int] = []
        while not children and parent.poll() is None and time.monotonic() < deadline:
            children = _children_running_overlap(parent.pid)
            time.sleep(0.05)
        assert children, "the background export never started"
        assert _reaches_niceness(children[0], min(os.getpriority(os.PRIO_PROCESS, 0) + overlap.CHILD_NICE, 19))
        parent.send_signal(how)
        code = parent.wait(CHILD_GONE_S)
        deadline = time.monotonic() + CHILD_GONE_S
        while not all(_gone(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(_gone(pid) for pid in children)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    assert code == (143 if how == signal.SIGTERM else -signal.SIGKILL)
    if how == signal.SIGTERM:  # a killed parent cannot tidy; its staging folder is removed by the next export
        assert not out.exists() or not any(out.iterdir())


def test_a_background_export_is_stored_in_the_cache_and_a_hit_leaves_the_child_the_pt2_alone(
        serial_and_overlapped, tmp_path, monkeypatch):
    """Mode on: the first export's ONNX file, made by the child, goes into the cache (the `.pt2`, code, never does);
    the second takes it from there (checked and judged like any cached file), sends the child started before the
    build the `.pt2` alone, stops it once that is there, and reaches the same figures. The first is the module's
    overlapped export, made into an empty cache."""
    if overlap.usable_cpus() < overlap.MIN_CPUS:
        pytest.skip("one usable core: no child")
    cache = serial_and_overlapped["cache"]
    first, first_folder, _ = serial_and_overlapped["on"]
    assert cache.info()["entries"] == {"export": 1}

    def figures(report):
        return {(p.a, p.b, o.name): o.max_abs for p in report.pairs for o in p.outputs}

    jobs, stopped = [], []
    send = overlap.BackgroundExport.send

    def recorded_send(self, context, options, formats):
        jobs.append(formats)
        send(self, context, options, formats)

    cancel = overlap.BackgroundExport.cancel

    def recorded_cancel(self):
        cancel(self)
        stopped.append(self.process.poll())

    monkeypatch.setattr(overlap.BackgroundExport, "send", recorded_send)
    monkeypatch.setattr(overlap.BackgroundExport, "cancel", recorded_cancel)
    with one_torch_thread():
        second = export_with("on", tmp_path / "b", [], cache)
    assert second.passed and figures(second) == figures(first) and jobs == [("pt2",)]
    assert stopped and stopped[0] is not None  # the child was stopped once done, not left to the end of the process
    assert digest(first_folder / "model.onnx") == digest(tmp_path / "b" / SPEC.slug / "model.onnx")


def test_a_model_that_cannot_go_to_a_child_is_exported_here(tmp_path, monkeypatch):
    from exporter.formats.onnx import OnnxOptions
    from verify.api import verify_export

    def not_picklable(context):
        raise overlap.NotPicklable("Can't pickle local object")

    use_mode(monkeypatch, "on")
    monkeypatch.setattr(overlap, "_model_bytes", not_picklable)
    options = ExportOptions(formats=("onnx",), format_options=(OnnxOptions("torchscript"),))
    report = verify_export(SPEC, SETTINGS, out=tmp_path, export=options,
                           runtimes=("eager", "onnxruntime"), cache=None)
    assert report.passed and (tmp_path / SPEC.slug / "model.onnx").is_file()


def test_the_child_starts_before_the_build_and_a_failed_build_stops_it(monkeypatch):
    """Its imports overlap the build (the parent's torch import and weights); a build that fails leaves no child."""
    from exporter import backbones
    from verify.pipeline.stages import CellRequest, build_stage, plan_cell

    if overlap.usable_cpus() < overlap.MIN_CPUS:
        pytest.skip("one usable core: no child")
    use_mode(monkeypatch, "on")
    seen = []

    def failing_build(*args, **kwargs):
        seen.extend(_children_running_overlap(os.getpid()))
        raise RuntimeError("a build that fails")

    monkeypatch.setattr(backbones, "build_model", failing_build)
    request = CellRequest(SPEC, SETTINGS, ExportOptions(formats=FORMATS))
    with pytest.raises(RuntimeError, match="a build that fails"):
        build_stage(request, plan_cell(request))
    assert len(seen) == 1, "no background child was running while the model was built"
    deadline = time.monotonic() + CHILD_GONE_S
    while not _gone(seen[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(seen[0])


class _Finished:
    """A background export that is over: its one artifact is there, or its failure is."""

    def __init__(self, artifact: str | None) -> None:
        self.artifact, self.cancelled = artifact, False

    def ready(self, fmt: str) -> bool:
        return True

    def wait(self, fmt: str, folder: Path) -> str:
        if self.artifact is None:
            raise ExportError("the background export failed")
        return self.artifact

    def cancel(self) -> None:
        self.cancelled = True


def test_a_failed_format_stops_the_other_formats_of_its_child():
    artifacts, collected, background = overlap.ArtifactsInFlight(), [], _Finished(None)
    for fmt in ("pt2", "onnx"):
        artifacts.expect(fmt, background, Path("."), collected.append)
    with pytest.raises(ExportError):
        artifacts.collect_ready()
    assert background.cancelled and not artifacts.pending and not collected


def test_this_process_yields_a_core_to_the_child_while_it_lives():
    """Two busy processes on two cores left this process's OpenMP threads waiting for each other (the build's
    calibration passes and every run); once the child is done or stopped the runs have every thread again."""
    import torch

    if overlap.usable_cpus() < overlap.MIN_CPUS:
        pytest.skip("one usable core: no child")
    threads = torch.get_num_threads()
    torch.set_num_threads(overlap.CHILD_THREADS + 1)
    try:
        child = overlap.BackgroundExport("onnx")
        assert torch.get_num_threads() == 1
        child.cancel()
        assert torch.get_num_threads() == overlap.CHILD_THREADS + 1 and child.process.poll() is not None
    finally:
        torch.set_num_threads(threads)


def test_every_module_the_child_imports_ahead_exists_here():
    """The child's pre-imports are skipped quietly where a torch lacks one (a slower export, never a failure), so
    a module renamed in the installed torch or onnxscript shows here."""
    import importlib.util

    from verify.pipeline.overlap import CHILD_IMPORTS

    assert [name for name in CHILD_IMPORTS if importlib.util.find_spec(name) is None] == []
