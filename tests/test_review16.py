"""Review 16 of the change 13f3d96..9d98693 (worst_floor, run_together, the export folder's creation race, the
synthetic weights' cache, runs named removed, hunt 16a): what was confirmed by running it. The flaky
tests/test_trust.py::test_sigterm_exits_143_wherever_it_lands (a folder left in --out after SIGTERM, twice in ~25
loaded runs): a SIGTERM whose exception is swallowed where it lands (an "Exception ignored in" weakref callback or
__del__; verify/cli/base.py's own comment measured one in importlib's module-lock callback) lets the export go on
to publish its folder, and the run still exits 143, "terminated (SIGTERM)"."""

from __future__ import annotations

import pytest

from tests.conftest import SMALL
from tests.helpers import invoke

SHAPE = "1x3x32x32"


def test_a_publish_check_that_raises_keeps_the_folder_from_appearing(tmp_path, monkeypatch):
    """exporter.fsio.PUBLISH_CHECKS run under the lock before a staging folder takes its final name: one that raises
    leaves neither the folder, nor its staging, nor the --out folder the export created."""
    from exporter import fsio

    class Stopped(KeyboardInterrupt):
        pass

    def stop() -> None:
        raise Stopped

    monkeypatch.setattr(fsio, "PUBLISH_CHECKS", [stop])
    out = tmp_path / "out"
    with pytest.raises(Stopped), fsio.staged_folder(out / "model") as staging:
        (staging / "weights.txt").write_text("written")
    assert not out.exists(), list(out.iterdir())
    monkeypatch.setattr(fsio, "PUBLISH_CHECKS", [])  # control: without the check the folder appears
    with fsio.staged_folder(out / "model") as staging:
        (staging / "weights.txt").write_text("written")
    assert (out / "model" / "weights.txt").read_text() == "written"


def test_a_sigterm_swallowed_where_it_landed_publishes_no_folder(tmp_path, monkeypatch):
    """What the SIGTERM handler leaves when its Terminated is swallowed where it lands (verify/cli/base.py's
    `_received`), with the run going on. Before: `verify export -b resnet18 --shape 1x3x32x32 --format onnx` went on
    to the end, published out/resnet18-frozen-body, and exited 143 "terminated (SIGTERM)": a folder in --out after
    a SIGTERM (tests/test_trust.py::test_sigterm_exits_143_wherever_it_lands's flaky failure)."""
    from verify.cli import base

    monkeypatch.setitem(base._received, "SIGTERM", True)
    monkeypatch.setitem(base._received, "reported", False)
    out = tmp_path / "out"
    result = invoke("export", "-b", SMALL, "--shape", SHAPE, "--format", "onnx", "--onnx-exporter", "torchscript",
                    "--out", out, "--no-cache")
    assert result.exit_code == 143, result.output
    assert not out.exists() or list(out.iterdir()) == [], list(out.iterdir())


def test_layers_whose_node_names_are_initializer_names_still_run_as_one_graph():
    """run_together prefixes every name but the shared initializers', and node names went through the same rule: two
    units with a node named like an initializer (`W`) gave two nodes of one name, which ONNX Runtime refuses, so
    every layer ran piece by piece again (the same numbers, one session a layer). Before: run_together -> None."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from verify.explain.rerun import Unit, run_together

    weights = [numpy_helper.from_array(np.ones((4, c, 3, 3), np.float32), name) for c, name in ((3, "W"), (4, "V"))]
    nodes = [helper.make_node("Conv", ["x", "W"], ["h"], name="W", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["h", "V"], ["y"], name="W", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x, h = np.ones((1, 3, 8, 8), np.float32), np.ones((1, 4, 8, 8), np.float32)
    jobs = [(Unit("a", 0, [0], {"x": None}, "h"), {"x": x}, (1, 4, 8, 8)),
            (Unit("b", 0, [1], {"h": ("a", 0)}, "y"), {"h": h}, (1, 4, 8, 8))]
    assert run_together(model, jobs) is not None
