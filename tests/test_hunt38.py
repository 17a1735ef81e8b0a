"""Hunt 38: files, folders and shards. ONNX Runtime's load failures kept its C++ banner (`Load model from X failed:
/onnxruntime_src/...h:46 void onnxruntime::...(...)`) and said nothing about what to do; a shard report of other
settings was refused with two equal fingerprints for a reason."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from exporter.errors import ArtifactError
from exporter.formats import open_artifact
from exporter.messages import MAX_MESSAGE
from verify.matrix.merge import _difference
from verify.runtimes import make_runtime
from verify.runtimes.onnxruntime import LOAD_ADVICE, OnnxRuntime, ort_reason

BANNER = ("[ONNXRuntimeError] : 1 : FAIL : Load model from /tmp/x/model.onnx failed:/onnxruntime_src/onnxruntime/"
          "core/graph/model_load_utils.h:46 void onnxruntime::model_load_utils::ValidateOpsetForDomain(const std::"
          "unordered_map<std::__cxx11::basic_string<char>, int>&, const onnxruntime::logging::Logger&, bool, const "
          "std::string&, int) Opset 99 is under development and support for this is limited.")
RUN_BANNER = ("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running Reshape node. "
              "Name:'' Status Message: /onnxruntime_src/onnxruntime/core/providers/cpu/tensor/reshape_helper.h:91 "
              "onnxruntime::ReshapeHelper::ReshapeHelper(const onnxruntime::TensorShape&, onnxruntime::"
              "TensorShapeVector&, bool) input_shape_size == requested_shape_size was false.")


@pytest.mark.parametrize("raw, kept", [
    (BANNER, "Opset 99 is under development and support for this is limited."),
    (RUN_BANNER, "Non-zero status code returned while running Reshape node. Name:'' Status Message: "
                 "input_shape_size == requested_shape_size was false."),
], ids=["load", "run"])
def test_onnx_runtimes_cpp_places_are_cut_from_its_reason(raw, kept):
    assert ort_reason(RuntimeError(raw)) == kept


def test_an_onnx_runtime_load_failure_is_one_line_that_says_what_to_do(tmp_path):
    """A file declaring an opset of another domain this ONNX Runtime does not know passes onnx.checker and every
    file check; ONNX Runtime refuses it with a 600-character banner, which the CLI cut before any advice."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["out"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 99)])
    model.ir_version = 8
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ArtifactError) as caught:
        make_runtime(OnnxRuntime.name).load(open_artifact(path))
    message = str(caught.value)
    assert "Opset 99" in message and message.endswith(LOAD_ADVICE) and len(message) <= MAX_MESSAGE
    assert "onnxruntime_src" not in message and "::" not in message and "Load model from" not in message
    assert "\n" not in message and "*guarantees*" not in message


def test_a_shard_of_other_settings_names_the_setting_not_two_equal_fingerprints():
    settings = {"run": {"tolerance": {"mode": "auto", "factor": 5.0}}, "backbones": ["resnet18"]}
    edited = {"run": {"tolerance": {"mode": "auto", "factor": 1000.0}}, "backbones": ["resnet18"]}
    first = SimpleNamespace(fingerprint="f", settings=settings)
    said = _difference(SimpleNamespace(fingerprint="f", settings=edited), first)
    assert said == "settings.run.tolerance.factor 1000.0 vs 5.0"
    assert _difference(SimpleNamespace(fingerprint="g", settings=settings), first) == "fingerprint g vs f"
