"""Hunt 31: `explain --isolate` and `verify reduce` on user models of kinds never tried (LayerNorm over channels, GELU,
depthwise/grouped and transposed convs, Upsample, skips, attention, a Linear head with BatchNorm1d, two outputs, a
shared layer), with one-layer bugs seeded in their ONNX and .pt2 files. Each test failed before its fix:

- dynamo folds a transposed conv's or a 2-D Linear's BatchNorm into it, the node under the norm's scope: the
  ConvTranspose was fed the norm's own input (a correct file's layer "could not run", `explain --isolate` exit 1) and
  a Linear's weight error was named at its BatchNorm1d, judged on the norm's floor alone (rerun.py `FOLDS_INTO`);
- a Linear that `nn.MultiheadAttention` applies through `F.linear`, its zero bias kept by the legacy exporter's Gemm,
  was no layer, and `mha(t, t, t, need_weights=False)` itself was never re-run: an error in its in-projection or in
  out_proj's bias was named nowhere (rerun.py `functional_scopes`, `Replay`);
- an ExportedProgram's GroupNorm whose scope holds a dynamic shape's arithmetic was not re-run (rerun.py `_computing`);
- `verify reduce` of a .pt2 re-ran every layer before refusing it, and a correct one said "nothing to reduce", exit 0;
- the first divergence named the norm, not the transposed conv folded into it (localize.py `valueless`)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from exporter.errors import UsageError
from tests.helpers import varied_norm
from verify.explain.localize import first_divergence_beyond_floor
from verify.explain.reduce import ONNX_ONLY, reduce_sides
from verify.explain.rerun import isolate_fx, isolate_onnx, record_reference
from verify.explain.tracers import Side, Trace
from verify.judge.compare import AUTO_FACTOR

ONE_CHANNEL = 1e-3
"""A 0.1 % error in one output channel: the seeded one-layer bug."""
SCOPES = "pkg.torch.onnx.name_scopes"


_norm = varied_norm


class UpFold(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.bn = _norm(nn.BatchNorm2d(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.up(torch.relu(self.down(x))))


class HeadFold(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.flat = nn.Flatten()
        self.fc = nn.Linear(48, 16)
        self.bn1d = _norm(nn.BatchNorm1d(16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1d(self.fc(self.flat(x)))


class Attend(nn.Module):
    """Pre-norm attention: `mha` reads the norm's output (a value computed outside every module is no replayed call's
    input: the legacy exporter folds the tokens' transpose into attention's own)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 4, stride=4)
        self.norm = nn.LayerNorm(16)
        self.mha = nn.MultiheadAttention(16, 2, batch_first=True)  # out_proj's bias stays torch's zero
        self.head = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.norm(self.stem(x).flatten(2).transpose(1, 2))
        return self.head(self.mha(t, t, t, need_weights=False)[0])


class UpNorm(nn.Module):
    """A GroupNorm after a transposed conv, its output's dynamic sizes read back for a reshape."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(4, 4, 2, stride=2)
        self.gn = nn.GroupNorm(2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.gn(self.up(self.down(x)))
        n, c, h, w = y.shape
        return y.flatten(2).reshape(n, c, h, w)


def _built(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return cls().eval()


def _reference(model: nn.Module, x: torch.Tensor):
    return record_reference(Side(None, model, copy.deepcopy(model).double()), x.numpy())


def _node(op: str, inputs: list[str], outputs: list[str], scope: list[str], **attrs):
    from onnx import helper

    node = helper.make_node(op, inputs, outputs, name=f"node_{outputs[0]}", **attrs)
    node.metadata_props.add(key=SCOPES, value=repr(["", *scope, outputs[0]]))
    return node


def _save(path, nodes, initializers: dict[str, np.ndarray], shape, out_shape):
    """A graph as dynamo writes it (each node's module scopes in its metadata), saved to `path`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(out_shape))],
        [numpy_helper.from_array(np.ascontiguousarray(a, dtype=np.float32), name) for name, a in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _folded(head: nn.Module, norm: nn.Module, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """The head's weight and bias with the norm folded in (its output channels along `axis` of the weight)."""
    scale = (norm.weight / (norm.running_var + norm.eps).sqrt()).detach().double().numpy()
    weight = head.weight.detach().double().numpy()
    view = [1] * weight.ndim
    view[axis] = -1
    bias = (head.bias.detach().double().numpy() - norm.running_mean.double().numpy()) * scale \
        + norm.bias.detach().double().numpy()
    return weight * scale.reshape(view), bias


def _seeded(weight: np.ndarray, axis: int, channel: int) -> np.ndarray:
    bad = weight.copy()
    index = [slice(None)] * bad.ndim
    index[axis] = channel
    bad[tuple(index)] *= 1 + ONE_CHANNEL
    return bad


def _up_fold_file(path, model: UpFold, weight: np.ndarray, bias: np.ndarray):
    down = {"down.weight": model.down.weight.detach().numpy(), "down.bias": model.down.bias.detach().numpy()}
    nodes = [_node("Conv", ["input", "down.weight", "down.bias"], ["conv2d"], ["down"], pads=[1, 1, 1, 1],
                   strides=[2, 2]),
             _node("Relu", ["conv2d"], ["relu"], []),
             _node("Shape", ["input"], ["sym_size"], ["up"], start=2, end=3),  # a dynamic size, under `up`'s scope
             _node("ConvTranspose", ["relu", "up.weight", "up.bias"], ["output0"], ["bn"], strides=[2, 2])]
    return _save(path, nodes, {**down, "up.weight": weight, "up.bias": bias}, (1, 3, 8, 8), (1, 4, 8, 8))


def test_a_transposed_conv_with_its_norm_folded_in_is_one_layer(tmp_path):
    """Before: the ConvTranspose under `bn`'s scope was fed `bn`'s own input, 4 channels for its 8: a correct file's
    layer "could not run" (`explain --isolate` exit 1, `reduce` exit 2 "give the torch model the file was exported
    from"). After: `up (computed with bn)`, within its floor; its output channel 1 0.1 % off is named first."""
    model = _built(UpFold)
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    ref = _reference(model, x)
    weight, bias = _folded(model.up, model.bn, axis=1)
    honest, _ = isolate_onnx(ref, _up_fold_file(tmp_path / "honest.onnx", model, weight, bias), AUTO_FACTOR)
    assert not honest.unrunnable and not honest.skipped, honest
    (up,) = [layer for layer in honest.layers if layer.module == "up"]
    assert up.fused_with == ["bn"] and up.ratio <= AUTO_FACTOR and not honest.named, honest.layers
    seeded, _ = isolate_onnx(ref, _up_fold_file(tmp_path / "seeded.onnx", model, _seeded(weight, 1, 1), bias),
                             AUTO_FACTOR)
    assert [(layer.module, layer.channel) for layer in seeded.named] == [("up", 1)], seeded.layers


def test_a_linear_with_its_batchnorm1d_folded_in_is_named_at_the_linear(tmp_path):
    """Before: dynamo's Gemm of `fc` with `bn1d` folded in, under `bn1d`'s scope, was the layer `bn1d`, judged on the
    norm's floor alone: `fc`'s row 5 0.1 % off read "bn1d: 266x its own floor" (attention model, hunt 31). After:
    `fc (computed with bn1d)`, on the pair's floor (its Linear's summation floor carried through the norm)."""
    model = _built(HeadFold)
    x = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    ref = _reference(model, x)
    weight, bias = _folded(model.fc, model.bn1d, axis=0)

    def gemm_file(path, w):
        nodes = [_node("Flatten", ["input"], ["view"], ["flat"]),
                 _node("Gemm", ["view", "fc.weight", "fc.bias"], ["output0"], ["bn1d"], transB=1)]
        return _save(path, nodes, {"fc.weight": w, "fc.bias": bias}, (1, 3, 4, 4), (1, 16))

    honest, _ = isolate_onnx(ref, gemm_file(tmp_path / "honest.onnx", weight), AUTO_FACTOR)
    (fc,) = [layer for layer in honest.layers if layer.module == "fc"]
    assert fc.fused_with == ["bn1d"] and fc.ratio <= AUTO_FACTOR and not honest.named, honest.layers
    seeded, _ = isolate_onnx(ref, gemm_file(tmp_path / "seeded.onnx", _seeded(weight, 0, 5)), AUTO_FACTOR)
    assert [layer.module for layer in seeded.named] == ["fc"] and seeded.named[0].fused_with == ["bn1d"]


@pytest.fixture(scope="module")
def attention(tmp_path_factory):
    """The attention model, its reference's values, and its legacy ONNX file (0.5 s; dynamo's first export: 9 s)."""
    import onnx

    model = _built(Attend)
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    path = tmp_path_factory.mktemp("hunt31") / "attend.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=18)
    return model, _reference(model, x), onnx.load(str(path))


def _edited(graph, folder, name: str, pick, edit) -> str:
    """A copy of `graph` whose initializer `pick` chooses (by name and value) is changed by `edit`, saved."""
    import onnx
    from onnx import numpy_helper

    graph = copy.deepcopy(graph)
    (init,) = [i for i in graph.graph.initializer if pick(i.name, numpy_helper.to_array(i))]
    array = numpy_helper.to_array(init).copy()
    edit(array)
    init.CopyFrom(numpy_helper.from_array(array, init.name))
    path = folder / f"{name}.onnx"
    onnx.save(graph, str(path))
    return path


def _own_bias(graph, path):
    """A copy of `graph` whose out_proj bias (an Identity of the norm's equal zero bias) is its own initializer, its
    channel 3 shifted by 0.01."""
    import onnx
    from onnx import numpy_helper

    graph = copy.deepcopy(graph)
    (alias,) = [node for node in graph.graph.node if node.output[0] == "mha.out_proj.bias"]
    assert alias.op_type == "Identity"
    graph.graph.node.remove(alias)
    bias = np.zeros(16, np.float32)
    bias[3] = 0.01
    graph.graph.initializer.append(numpy_helper.from_array(bias, "mha.out_proj.bias"))
    onnx.save(graph, str(path))
    return path


def test_attention_and_its_out_projection_are_layers_of_a_legacy_onnx_file(attention, tmp_path):
    """Before: in the legacy exporter's file (out_proj's zero bias kept as the Gemm's third input, an Identity of the
    norm's equal zero bias or an initializer of its own) neither `mha` nor `mha.out_proj` was re-run: out_proj's bias
    shifted by 0.01 failed the outputs and named nothing, and so did a 0.1 % error in the value part of the
    in-projection (`mha` "not re-run"). After: each is named, the honest file within its floors, nothing skipped."""
    model, ref, graph = attention
    honest, _ = isolate_onnx(ref, _edited(graph, tmp_path, "honest", lambda n, _: n == "stem.bias", lambda a: None),
                             AUTO_FACTOR)
    assert {"mha", "mha.out_proj"} <= {layer.module for layer in honest.layers}, honest.layers
    assert not honest.named and not honest.skipped and not honest.unrunnable, honest

    bias, _ = isolate_onnx(ref, _own_bias(graph, tmp_path / "bias.onnx"), AUTO_FACTOR)
    assert max(bias.named, key=lambda layer: layer.ratio).module == "mha.out_proj", bias.layers

    in_proj = model.mha.in_proj_weight.detach().numpy().T  # the legacy MatMul's (16, 48) initializer

    def value_part(array):
        array[:, 40] *= 1 + ONE_CHANNEL  # the value projection's channel 8

    part, _ = isolate_onnx(ref, _edited(graph, tmp_path, "in_proj", lambda _, a: a.shape == in_proj.shape
                                        and np.array_equal(a, in_proj), value_part), AUTO_FACTOR)
    assert [layer.module for layer in part.named] == ["mha"], part.layers


def test_a_groupnorm_whose_scope_holds_a_dynamic_shapes_arithmetic_is_rerun():
    """Before: torch.export computed the output's dynamic sizes under `gn`'s scope from the input's: those nodes read
    values from outside the layer, and `gn` was "not re-run" (its GroupNorm 0.1 % off in a .pt2: named nowhere)."""
    from torch.export import Dim, export

    model = _built(UpNorm)
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    ref = _reference(model, x)
    program = export(model, (x,), dynamic_shapes={"x": {2: Dim("h", min=4, max=64), 3: Dim("w", min=4, max=64)}})
    module = program.module()
    honest = isolate_fx(ref, module, AUTO_FACTOR)
    assert {layer.module for layer in honest.layers} == {"down", "up", "gn"} and not honest.skipped, honest
    assert not honest.named
    with torch.no_grad():
        module.gn.weight[1] *= 1 + ONE_CHANNEL
    assert [layer.module for layer in isolate_fx(ref, module, AUTO_FACTOR).named] == ["gn"]


def test_reduce_refuses_a_file_it_cannot_write_before_rerunning_its_layers(tmp_path, monkeypatch):
    """Before: `verify reduce model.pt2 f.py:make` re-ran every layer, then refused ("reduce writes ONNX pieces")
    where one differed and said "nothing to reduce", exit 0, where none did. Now refused first, whatever the layers."""
    import verify.explain.reduce as reduce_module
    from exporter.artifacts import Artifact, ArtifactMeta
    from exporter.formats.eager import EagerFormat

    model = _built(HeadFold)
    side = Side(Artifact(EagerFormat.name, ArtifactMeta()), model, copy.deepcopy(model).double())
    monkeypatch.setattr(reduce_module, "isolate_sides", lambda *a, **k: pytest.fail("its layers were re-run"))
    with pytest.raises(UsageError) as refused:
        reduce_sides(side, side, np.zeros((1, 3, 4, 4), np.float32), tmp_path / "piece")
    assert str(refused.value) == ONNX_ONLY and not (tmp_path / "piece").exists()


def test_the_first_divergence_names_the_transposed_conv_folded_into_its_norm():
    """Before: a dynamic export's shape arithmetic under `up`'s scope was read as `up`'s value (another shape, never
    compared), which stopped the search for the conv folded into `bn`: "first divergence: bn". After: `up`, computed
    with `bn`."""
    ref_values = [("down", 0, np.ones((1, 8, 4, 4))), ("up", 0, np.ones((1, 4, 8, 8))),
                  ("bn", 0, np.ones((1, 4, 8, 8)))]
    ref = Trace(ref_values, exact=True, float32={(n, c): v.astype(np.float32) for n, c, v in ref_values})
    other = Trace([("down", 0, np.ones((1, 8, 4, 4), np.float32)), ("up", 0, np.array([8], np.int64)),
                   ("bn", 0, np.full((1, 4, 8, 8), 1.01, np.float32))], exact=False)
    found = first_divergence_beyond_floor(ref, other, AUTO_FACTOR, neighbours=True)
    assert found is not None and (found.module, found.fused_with) == ("up", ["bn"]), found


def test_the_isolation_lines_say_which_call_of_a_shared_module_differs():
    """Before: a conv called twice whose both calls differed printed "• shared: 2964x" and "• shared: 1866x", with no
    way to tell the calls apart (the JSON had them); the culprit note already said "(call 2)"."""
    import io

    from rich.console import Console

    from verify.judge.layers import Isolation, LayerError
    from verify.render.layers import render_isolation

    buffer = io.StringIO()
    layers = [LayerError("shared", call, ratio, 1e-3, 1e-7) for call, ratio in ((0, 2964.0), (1, 1866.0))]
    render_isolation(Isolation("m (eager)", "m.onnx", 5.0, layers=layers), Console(file=buffer, width=120,
                                                                                   color_system=None))
    lines = [line.strip() for line in buffer.getvalue().splitlines() if line.strip().startswith("•")]
    assert [line.split(":")[0] for line in lines] == ["• shared", "• shared (call 2)"], lines
