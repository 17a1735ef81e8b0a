"""A float64 run of an ONNX file: its graph with every float32 type made float64, run by onnx.reference.

ONNX Runtime's CPU provider has no float64 Conv or GlobalAveragePool, so an ONNX file had no float64 run and its floor
was only the spread of ONNX Runtime's optimisation levels, measured on the file itself: a file that rounds its outputs
below float32 lifted it (hunt 36). onnx.reference evaluates each operator in numpy in the dtypes it is given, so the
graph converted to float64 is the file's function run in float64, as `model.double()` runs a torch model: a cast to
float16 or an integer type the file makes stays what it is (it is part of what the file computes). Not registered as
a runtime (it runs no file in float32, and `verify export` judges its ONNX files on the model's own float64 oracle):
`verify compare` asks for it (verify/judge/file_floor.py `float64_file_oracles`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import onnx

FLOAT, DOUBLE = 1, 11
"""onnx.TensorProto's FLOAT and DOUBLE element types."""
DTYPE_ATTRIBUTES = ("to", "dtype")
"""Integer attributes that name an element type: Cast's `to`; RandomNormal/RandomUniform(Like), EyeLike, Multinomial's
`dtype`. A float32 one names the float64 one."""
FLOAT_VALUE_ATTRIBUTES = {"value_float": "value_floats"}
"""Constant's float attributes, which always give float32: made a float64 tensor `value` (with its list form)."""


def float64_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose graph (and every subgraph) computes in float64 wherever it computed in float32."""
    import onnx

    converted = onnx.ModelProto()
    converted.CopyFrom(model)
    _float64_graph(converted.graph)
    return converted


def _float64_graph(graph: onnx.GraphProto) -> None:
    """Initializers, inputs, outputs, value_info and each node's attributes of `graph`, in place."""
    for index, tensor in enumerate(graph.initializer):
        if tensor.data_type == FLOAT:
            graph.initializer[index].CopyFrom(_float64_tensor(tensor))
    for info in [*graph.input, *graph.output, *graph.value_info]:
        _float64_type(info.type)
    for node in graph.node:
        _float64_node(node)


def _float64_tensor(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """`tensor` (float32) as float64, its name kept (external data loaded already)."""
    import numpy as np
    from onnx import numpy_helper

    return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name)


def _float64_type(kind: onnx.TypeProto) -> None:
    """A tensor type (also inside a sequence or optional) that is float32, made float64."""
    field = kind.WhichOneof("value")
    if field == "tensor_type" and kind.tensor_type.elem_type == FLOAT:
        kind.tensor_type.elem_type = DOUBLE
    elif field in ("sequence_type", "optional_type"):
        _float64_type(getattr(kind, field).elem_type)


def _float64_node(node: onnx.NodeProto) -> None:
    """Each attribute of `node` that fixes a float32 type or holds float32 data, and its subgraphs, in place."""
    from onnx import AttributeProto, helper

    for index, attribute in enumerate(node.attribute):
        if attribute.name in DTYPE_ATTRIBUTES and attribute.type == AttributeProto.INT and attribute.i == FLOAT:
            attribute.i = DOUBLE
        elif attribute.type == AttributeProto.TENSOR and attribute.t.data_type == FLOAT:
            attribute.t.CopyFrom(_float64_tensor(attribute.t))  # Constant's and ConstantOfShape's value
        elif attribute.type == AttributeProto.GRAPH:
            _float64_graph(attribute.g)
        elif attribute.type == AttributeProto.GRAPHS:
            for graph in attribute.graphs:
                _float64_graph(graph)
        elif node.op_type == "Constant" and attribute.name in FLOAT_VALUE_ATTRIBUTES:
            value = helper.get_attribute_value(attribute)
            node.attribute[index].CopyFrom(helper.make_attribute("value", _float64_constant(value)))


def _float64_constant(value: Any) -> onnx.TensorProto:
    """A Constant's value_float (a scalar) or value_floats (a list) as a float64 tensor."""
    import numpy as np
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(value, dtype=np.float64))


class OnnxReference:
    """An ONNX file run in float64 by onnx.reference (`float64_model`); its feeds are made float64 here."""

    name = "onnx.reference"

    def __init__(self, path: str) -> None:
        import onnx
        from onnx.reference import ReferenceEvaluator

        model = onnx.load(path)
        self.evaluator = ReferenceEvaluator(float64_model(model))
        self.as_saved = ReferenceEvaluator(model)  # its own float32 rounding, to tell an operator's from ORT's
        self.output_names = list(self.evaluator.output_names)

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The float64 outputs on `feed` (float32 inputs are cast to float64, others kept)."""
        import numpy as np

        inputs = {name: value.astype(np.float64) if value.dtype == np.float32 else value
                  for name, value in feed.items()}
        return {name: np.asarray(value) for name, value in
                zip(self.output_names, self.evaluator.run(None, inputs), strict=True)}

    def run_float32(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The outputs of the file as saved (float32) on `feed`: where the runtime's float32 run is much further from
        the float64 run than this, the two implement an operator otherwise (verify/judge/file_floor.py
        `reference_disagreement`)."""
        import numpy as np

        return {name: np.asarray(value) for name, value in
                zip(self.output_names, self.as_saved.run(None, dict(feed)), strict=True)}
