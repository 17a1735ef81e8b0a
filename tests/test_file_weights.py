"""The floor bound of a model file counts only the weights a node reads (exporter/formats/onnx.py weight_shapes):
an initializer no node reads lifted K, and with it the most rounding may produce, as a spare parameter did for a
model in memory (hunt 8b)."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from exporter.errors import UsageError
from exporter.formats import get_format
from verify.explain.reduce import check_piece
from verify.judge.compare import AUTO_FACTOR
from verify.judge.trust import accumulation_length

SPARE = (1, 100_000)


def _conv_file(path, spare: bool, in_subgraph: bool = False):
    weight = numpy_helper.from_array(np.ones((2, 2, 3, 3), np.float32), "w")
    conv = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    nodes, initializers = [conv], [weight]
    if spare:
        initializers.append(numpy_helper.from_array(np.zeros(SPARE, np.float32), "spare"))
    if in_subgraph:  # a weight read only inside an If branch still counts
        inner = numpy_helper.from_array(np.ones((4, 4), np.float32), "inner")
        initializers.append(inner)
        branch = helper.make_graph([helper.make_node("MatMul", ["m", "inner"], ["z"])], "branch", [],
                                   [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
        nodes.append(helper.make_node("If", ["cond"], ["out"], then_branch=branch, else_branch=branch))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])], initializers)
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_an_initializer_no_node_reads_does_not_lift_the_bound(tmp_path):
    onnx_format = get_format("onnx")
    plain = onnx_format.weight_shapes(_conv_file(tmp_path / "plain.onnx", spare=False))
    spare = onnx_format.weight_shapes(_conv_file(tmp_path / "spare.onnx", spare=True))
    assert spare == plain == [(2, 2, 3, 3)]
    shape = (1, 2, 8, 8)
    assert accumulation_length(parameters=spare, input_shape=shape) \
        < accumulation_length(parameters=[*spare, SPARE], input_shape=shape)


def test_a_weight_read_in_a_subgraph_counts(tmp_path):
    shapes = get_format("onnx").weight_shapes(_conv_file(tmp_path / "if.onnx", spare=True, in_subgraph=True))
    assert sorted(shapes) == [(2, 2, 3, 3), (4, 4)]


def test_an_unused_initializer_does_not_lift_a_reduced_pieces_floor_bound(tmp_path):
    """`verify reduce --check`: a piece 5 % off its stored float64 reference, its stored floor raised to match, was
    refused as "not a noise floor"; with a 100,000-wide initializer no node reads it reported "does not reproduce"."""
    rng = np.random.default_rng(0)
    path = _conv_file(tmp_path / "piece.onnx", spare=True)
    weight = numpy_helper.to_array(onnx.load(str(path)).graph.initializer[0])
    x = rng.standard_normal((1, 2, 8, 8)).astype(np.float32)
    reference = torch.nn.functional.conv2d(torch.from_numpy(x).double(), torch.from_numpy(weight).double(),
                                           padding=1).numpy() * 1.05
    np.savez(tmp_path / "piece.npz", **{"input:x": x, "reference": reference,
                                        "floor": np.full(2, 0.02 * np.abs(reference).max()),
                                        "factor": np.float64(AUTO_FACTOR)})
    with pytest.raises(UsageError, match="not a noise floor"):
        check_piece(path)
