"""Hunt 32: passes nobody earned, attacked again on the newest paths (README, the attack log)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import invoke

SIDE = 4
"""The hand-written ONNX files' input side (1x3xSIDExSIDE): nothing is exported, nothing is built."""


def _flatten_file(path, batch_factor: int) -> None:
    """An ONNX file with this tool's recorded metadata (input 1x3xSIDExSIDE, batch dynamic): the input flattened to
    `[batch * batch_factor, -1]` (read from the tensor's own shape, so no checker or ONNX Runtime folds it away) and
    multiplied by a 48 x 2 weight. At batch_factor 2 the MatMul cannot run on any input its record takes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from exporter.artifacts import META_KEY, ArtifactMeta

    features = 3 * SIDE * SIDE
    weight = np.linspace(-1.0, 1.0, features * 2, dtype=np.float32).reshape(features, 2)
    constants = [numpy_helper.from_array(value, name) for name, value in (
        ("weight", weight), ("start", np.array([0], np.int64)), ("end", np.array([1], np.int64)),
        ("factor", np.array([batch_factor], np.int64)), ("rest", np.array([-1], np.int64)))]
    nodes = [helper.make_node("Shape", ["input"], ["shape"]),
             helper.make_node("Slice", ["shape", "start", "end"], ["batch"]),
             helper.make_node("Mul", ["batch", "factor"], ["rows"]),
             helper.make_node("Concat", ["rows", "rest"], ["flat_shape"], axis=0),
             helper.make_node("Reshape", ["input", "flat_shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "weight"], ["output0"])]
    graph = helper.make_graph(nodes, "flatten", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                               ["batch", 3, SIDE, SIDE])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 2])], constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    meta = ArtifactMeta(input_shape=[1, 3, SIDE, SIDE], output_names=["output0"], dynamic_axes={"0": "batch"})
    model.metadata_props.add(key=META_KEY, value=meta.to_json())
    onnx.save(model, path)


def test_compare_of_a_file_that_cannot_run_on_a_shape_it_records_is_a_failed_file(tmp_path):
    """Before: `verify compare` exited 2 (bad input) for a file that loads, records that it takes 1x3x4x4 and fails
    to run there, where `verify artifact` fails the same file (exit 1). It is a failed file now: exit 1, the side and
    the runtime's reason named, the JSON report written. A --shape the file does not record stays bad input (exit 2)."""
    good, bad, report = tmp_path / "good.onnx", tmp_path / "bad.onnx", tmp_path / "r.json"
    _flatten_file(good, 1)
    _flatten_file(bad, 2)
    shape = f"1x3x{SIDE}x{SIDE}"
    failed = invoke("compare", bad, good, "--shape", shape, "--samples", 1, "--json", report)
    assert failed.exit_code == 1, failed.output
    assert f"A ({bad}) fails on an input of {shape}, a shape its own record says it takes" in failed.output
    assert "MatMul" in failed.output and "A failed file, not bad input" in failed.output
    assert "no pair was judged" in failed.output and "figures are shown" not in failed.output
    written = json.loads(report.read_text())
    assert written["passed"] is False and any("fails on an input" in p for p in written["problems"])
    outside = invoke("compare", bad, good, "--shape", f"1x3x{SIDE + 1}x{SIDE}", "--samples", 1)
    assert outside.exit_code == 2, outside.output  # the user's shape, not one the file records: bad input


def test_a_matrix_cell_records_the_threads_it_ran_on_beside_the_background_export(monkeypatch):
    """Before: a matrix cell computed on one torch thread while the background export's child held the other core
    recorded `worker.threads: 2` (the count given back after the cell). The record now says both."""
    import torch

    import verify.matrix.cell as cell
    from exporter.export import ExportOptions
    from verify.matrix import MatrixRequest
    from verify.matrix.request import cell_id
    from verify.pipeline import overlap
    from verify.settings import RunSettings

    request = MatrixRequest.create(["resnet18"], ["batch"], ["body"], RunSettings(shape=(1, 3, 32, 32)),
                                   ExportOptions()).cells()[0]
    seen = {}

    def beside_a_child(job, cache, start):  # what a cell with a background export does to this process's threads
        threads = overlap._yield_core()
        seen["during"] = torch.get_num_threads()
        torch.set_num_threads(threads)
        return cell._blank(job)

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(cell, "_run_and_store", beside_a_child)
        result = cell.execute_cell(cell.CellJob(request, cell_id(request), None), lookup=False)
        assert result.worker["threads"] == 2 and result.worker["threads_beside_export"] == seen["during"] == 1
        monkeypatch.setattr(cell, "_run_and_store", lambda job, cache, start: cell._blank(job))
        alone = cell.execute_cell(cell.CellJob(request, cell_id(request), None), lookup=False)
        assert alone.worker["threads"] == 2 and "threads_beside_export" not in alone.worker
    finally:
        torch.set_num_threads(threads)


def test_a_registered_head_holding_drawn_values_no_reset_redraws_is_refused():
    """Landing 47 re-drew a registered head's layers from the build's seed through `reset_parameters`; a tensor of a
    layer without one (a head's `nn.Parameter(torch.rand(4))`) kept the values the registration drew, another in every
    process. Such a tensor is refused now, a constant one (ones) kept, and nn.MultiheadAttention (torch's
    `_reset_parameters`) drawn again from the seed."""
    import torch
    from torch import nn

    from exporter.errors import UsageError
    from exporter.families.detectors import own_options

    class Scaled(nn.Module):
        def __init__(self, scale):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.scale = nn.Parameter(scale)

    with pytest.raises(UsageError, match=r"box_head\.scale holds values drawn when the registration built it"):
        own_options({"box_head": Scaled(torch.rand(4) + 0.5)})
    drawn = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        options = {"box_head": Scaled(torch.ones(4)), "attention": nn.MultiheadAttention(8, 2)}
        torch.manual_seed(0)
        drawn.append(own_options(options))
    first, second = drawn
    assert torch.equal(first["box_head"].scale, torch.ones(4))
    assert torch.equal(first["box_head"].fc.weight, second["box_head"].fc.weight)
    assert torch.equal(first["attention"].in_proj_weight, second["attention"].in_proj_weight)
