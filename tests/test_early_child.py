"""The background export's child starts before this process imports torch (verify/pipeline/stages.py
`cell_context`), so its imports overlap this process's and the model reaches it sooner; the default ONNX options
are checked without importing onnx (exporter/formats/onnx.py `OPSET_EVERY_ONNX_KNOWS`). Neither changes what a cell
computes: torch's thread count is the caller's again afterwards, and a failed build leaves no child behind."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from exporter.export import ExportOptions
from exporter.formats.onnx import OPSET_EVERY_ONNX_KNOWS, OPSET_MIN, OnnxOptions
from exporter.spec import ModelSpec
from verify.pipeline import overlap
from verify.settings import RunSettings

SHAPE = (1, 3, 32, 32)


def run_python(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, overlap.MODE_ENV: "on"})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_default_onnx_options_are_checked_without_importing_onnx():
    found = run_python(f"""
        import json, sys
        from exporter.formats.onnx import OnnxOptions
        for opset in ({OPSET_MIN}, 18, {OPSET_EVERY_ONNX_KNOWS}):
            OnnxOptions(opset=opset).validate() if opset >= 18 else OnnxOptions(exporter="torchscript", opset=opset)
        print(json.dumps({{"onnx": "onnx" in sys.modules}}))
    """)
    assert found == {"onnx": False}


@pytest.mark.parametrize("opset", [OPSET_MIN - 1, 10**6])
def test_an_opset_outside_the_installed_onnx_is_still_refused_naming_its_range(opset):
    from exporter.formats.onnx import installed_max_opset

    newest = installed_max_opset()
    with pytest.raises(Exception, match=f"between {OPSET_MIN} and {newest}|up to {newest}"):
        OnnxOptions(opset=opset)


def test_the_child_starts_before_torch_is_imported_and_the_threads_come_back(tmp_path):
    if overlap.usable_cpus() < overlap.MIN_CPUS:
        pytest.skip("one usable core: no child")
    found = run_python(f"""
        import json, sys
        from verify.pipeline import overlap
        seen = []
        start = overlap.BackgroundExport.__init__
        def spy(self, *args, **kwargs):
            seen.append("torch" in sys.modules)
            start(self, *args, **kwargs)
        overlap.BackgroundExport.__init__ = spy
        from exporter.export import ExportOptions
        from exporter.spec import ModelSpec
        from verify.api import verify_export
        from verify.settings import RunSettings
        from exporter.formats.onnx import OnnxOptions
        # the ONNX file alone: the child's format (its .pt2 and the TorchScript file would only add their time); the
        # legacy exporter, which goes to the child like the dynamo one (the child starts before either is chosen)
        report = verify_export(ModelSpec("resnet18", "frozen", "body"), RunSettings(shape={SHAPE!r}, samples=1),
                               out={str(tmp_path)!r}, cache=None, export=ExportOptions(
                                   formats=("onnx",), format_options=(OnnxOptions(exporter="torchscript"),)))
        import torch
        print(json.dumps({{"torch_at_start": seen, "passed": report.passed, "threads": torch.get_num_threads()}}))
    """)
    assert found["torch_at_start"] == [False] and found["passed"]
    fresh = run_python("import json, torch; print(json.dumps({'threads': torch.get_num_threads()}))")
    assert found["threads"] == fresh["threads"]  # the child's core given back: the process's own count again


def test_a_failed_build_stops_the_early_child_and_restores_the_threads(monkeypatch, tmp_path):
    import torch

    from verify.api import verify_export

    if overlap.usable_cpus() < overlap.MIN_CPUS:
        pytest.skip("one usable core: no child")
    monkeypatch.setenv(overlap.MODE_ENV, "on")
    children = []
    start = overlap.BackgroundExport.__init__

    def spy(self, *args, **kwargs):
        start(self, *args, **kwargs)
        children.append(self)

    def broken_build(*args, **kwargs):
        raise RuntimeError("the build failed")

    monkeypatch.setattr(overlap.BackgroundExport, "__init__", spy)
    monkeypatch.setattr(ModelSpec, "build", broken_build)
    threads = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="the build failed"):
        verify_export(ModelSpec("resnet18", "frozen", "body"), RunSettings(shape=SHAPE, samples=1), out=tmp_path,
                      export=ExportOptions(), cache=None)
    assert len(children) == 1
    child = children[0]
    child.process.wait(overlap.STOP_GRACE_SECONDS + 10)
    assert child.process.poll() is not None and not child.tmp.exists()
    assert torch.get_num_threads() == threads
