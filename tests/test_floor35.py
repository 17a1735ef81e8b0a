"""Floor 35: guard 3's witness of a user's model exported by the legacy ONNX exporter is the file's own trace (the
graph torch's tracer made inside that one torch.onnx.export, copied before it became ONNX: before, the witness traced
the model a second time, and a model counting its traces made the file and the witness differ; tests/test_review34.py
holds the CLI case); and a `verify` process SIGKILLed while its worker ran left an empty /tmp/verify-worker-* folder,
now removed by the next run that makes one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from exporter.formats import ExportContext, file_formats, get_format
from exporter.formats import onnx as onnx_format
from exporter.formats.eager import eager_artifact
from exporter.formats.onnx import OPSETS, OnnxOptions
from exporter.formats.program import ONNX_TRACES, onnx_exporting
from exporter.formats.torchscript import WITNESS_TRACE, KeptTrace
from exporter.user_model import UserModelSpec
from verify.judge.file_witness import LEGACY, witness_candidates
from verify.pipeline import isolation

ROOT = Path(__file__).resolve().parents[1]
DATA = next(name for name in file_formats() if not get_format(name).executes_code_on_load)
"""The ONNX format, taken from the registry: the one file format that is data."""
LEGACY_EXPORTER = next(name for name in OPSETS if name != OnnxOptions().exporter)
SHAPE = (1, 3, 8, 8)
FIRST_TRACE_SCALE = 2.0
"""What the model's first trace multiplies its output by (every later trace and eager run: 1)."""

MODEL = f"""
import torch
from torch import nn

SEEN = []


class Counted(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4).eval()

    def forward(self, x):
        y = self.bn(self.conv(x))
        if torch.jit.is_tracing():
            SEEN.append(1)
            if len(SEEN) == 1:
                return y * {FIRST_TRACE_SCALE}
        return y


def counted():
    return Counted()
"""


@pytest.fixture
def context(tmp_path):
    source = tmp_path / "floor35_model.py"
    source.write_text(MODEL)
    built = UserModelSpec.parse(f"{source}:counted").build(0, SHAPE, "synthetic")
    example = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    return ExportContext(built, example, eager_artifact(built, SHAPE).meta, dynamic=False)


def legacy_export(context: ExportContext, path: Path):
    return get_format(DATA).export(context, OnnxOptions(exporter=LEGACY_EXPORTER, opset=OPSETS[LEGACY_EXPORTER][1]),
                                   path)


def test_the_legacy_files_witness_is_its_own_trace_and_the_file_keeps_its_module_names(context, tmp_path):
    """The file is the model's first trace (x2): the witness made of the kept trace computes what the file computes,
    where a second trace (x1, as eager) would not; the file's node names keep the model's module scope."""
    import onnx
    import onnxruntime

    artifact = legacy_export(context, tmp_path / "model.onnx")
    kept = context.shared[ONNX_TRACES][LEGACY]
    assert isinstance(kept, KeptTrace)
    fmt, options = witness_candidates(jit_first=True)[0]
    entry = get_format(fmt)
    witness_ctx = ExportContext(context.built, context.example, context.meta, dynamic=False,
                                shared={WITNESS_TRACE: kept})
    with onnx_exporting():
        witness = entry.export(witness_ctx, options, tmp_path / str(entry.filename))
    module = torch.jit.load(str(witness.path))
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    session = onnxruntime.InferenceSession(str(artifact.path), providers=["CPUExecutionProvider"])
    file_out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        eager = context.built.model(x).numpy()
        ours = module(x).numpy()
        ours64 = module.double()(x.double()).numpy()
    scale = float(np.abs(eager).max())
    assert np.abs(file_out - FIRST_TRACE_SCALE * eager).max() < 1e-5 * scale  # the file: the first trace
    assert np.abs(ours - file_out).max() < 1e-5 * scale  # the witness computes what the file does
    assert np.abs(ours64 - file_out).max() < 1e-5 * scale  # in float64 too
    assert np.abs(ours - eager).max() > 0.5 * scale  # a second trace would be the eager model's
    names = [node.name for node in onnx.load(str(artifact.path)).graph.node]
    assert any(name.startswith("/conv/") for name in names), names  # not the ScriptModule's scope-less `/Conv`


def test_a_torch_without_the_hook_keeps_no_trace_and_still_exports(context, tmp_path, monkeypatch):
    """Where `_create_jit_graph`'s module has no `_trace_and_get_graph_from_model` (another torch), nothing is kept
    and the file is exported as before: the witness traces the model again (today's fallback), no crash."""
    import importlib

    def stub(*_):
        raise AssertionError("not called")

    for name in ("torch.onnx._internal.torchscript_exporter.utils", "torch.onnx.utils"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "_create_jit_graph"):
            monkeypatch.setattr(module, "_create_jit_graph", stub)  # its globals: this test module's, no hook
    assert onnx_format._install_legacy_hook.__wrapped__() is False
    monkeypatch.undo()
    monkeypatch.setattr(onnx_format, "_install_legacy_hook", lambda: False)
    artifact = legacy_export(context, tmp_path / "model.onnx")
    assert artifact.path.is_file()
    assert LEGACY not in context.shared.get(ONNX_TRACES, {})


OWNER = """
import sys, time
from verify.pipeline.isolation import WORKER_PREFIX, private_folder
print(private_folder(WORKER_PREFIX), flush=True)
time.sleep(60)
"""


def test_a_killed_owners_worker_folder_is_swept_by_the_next_run(tmp_path, monkeypatch):
    """Before: `kill -9` of `verify` while its worker ran left /tmp/verify-worker-* behind for good. Now each such
    folder is named for its owner and held while the owner (or its worker) lives; the next run removes it once its
    owner is dead and nobody holds it, and leaves live, held and foreign folders alone."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                             env=dict(os.environ, TMPDIR=str(scratch), PYTHONPATH=str(ROOT)))
    try:
        folder = Path(owner.stdout.readline().strip())
        assert folder.parent == scratch and folder.is_dir()
        monkeypatch.setattr(isolation, "_SWEPT", set())
        assert isolation.sweep_stale(str(scratch)) == []  # its owner lives
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        owner.stdout.close()
    assert folder.is_dir()  # nothing of a SIGKILLed process cleans up after it
    held = scratch / f"{isolation.WORKER_PREFIX}{owner.pid}-held"  # a dead pid, but a live worker holds it
    held.mkdir()
    foreign = [scratch / f"{isolation.WORKER_PREFIX}abcdefgh", scratch / f"{isolation.SESSION_PREFIX}x-{owner.pid}"]
    for path in foreign:
        path.mkdir()
    isolation.hold(str(held))
    try:
        monkeypatch.setattr(isolation, "_SWEPT", set())
        started = time.perf_counter()
        assert isolation.sweep_stale(str(scratch)) == [str(folder)]
        assert time.perf_counter() - started < 1.0
        assert isolation.sweep_stale(str(scratch)) == []  # once a process for each folder
        assert held.is_dir() and all(path.is_dir() for path in foreign)
    finally:
        isolation.release(str(held))
    assert not held.exists() and str(held) not in isolation._HELD


def holds_its_folder(progress=None) -> tuple[str, bool]:
    """In a worker: the private folder its parent gave it, and whether it holds it."""
    from verify.judge.file_witness import PRIVATE_TMP

    folder = os.environ[PRIVATE_TMP]
    return folder, folder in isolation._HELD


def test_a_worker_holds_its_private_folder_and_the_parent_removes_it():
    """The worker holds its folder too, so an orphaned worker still at work keeps it; the parent removes it and lets
    go of it when the worker ends."""
    folder, held = isolation.run_isolated(holds_its_folder, what="test")
    assert held
    assert Path(folder).name.startswith(f"{isolation.WORKER_PREFIX}{os.getpid()}-")
    assert not Path(folder).exists() and folder not in isolation._HELD
