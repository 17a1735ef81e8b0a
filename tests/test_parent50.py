"""Stop 50: a parent module's own ops are a layer. torchvision's FeaturePyramidNetwork upsamples and adds in its own
forward, between its children's calls: a Resize edited in that top-down path failed the outputs and no layer was
named, the report said only that the ops "were not re-run (in the forward of fpn)". Each value such ops give a child
(or return) is now re-run from the reference's recorded values and judged on the float32 rounding of the parent's own
forward on them (verify/explain/rerun.py `onnx_parent_units`, `fx_parent_units`, `parent_floor`), named by the
parent's path with "(own ops)" (verify/judge/layers.py `OWN_OPS`)."""

from __future__ import annotations

import copy

import onnx
import pytest
import torch
from torch.nn import functional as F

from exporter.artifacts import Artifact, ArtifactMeta
from exporter.formats.eager import EagerFormat
from verify.explain.rerun import _children_first, isolate_fx, isolate_onnx, record_reference
from verify.explain.tracers import Side
from verify.judge.compare import AUTO_FACTOR
from verify.judge.layers import OWN_OPS, Isolation, LayerError, culprit_note


class TopDown(torch.nn.Module):
    """An FPN's neck: a dict of features in, its own forward upsampling the upper lateral and adding it to the lower."""

    def __init__(self) -> None:
        super().__init__()
        self.lat = torch.nn.ModuleList([torch.nn.Conv2d(4, 4, 1), torch.nn.Conv2d(8, 4, 1)])
        self.out = torch.nn.ModuleList([torch.nn.Conv2d(4, 4, 3, padding=1) for _ in range(2)])

    def forward(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        top = self.lat[1](feats["c2"])
        low = self.lat[0](feats["c1"]) + F.interpolate(top, size=feats["c1"].shape[-2:], mode="nearest")
        return {"p1": self.out[0](low), "p2": self.out[1](top)}


class Cat(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, b], 1)


class Mix(torch.nn.Module):
    """Its own `* 2` feeds a child that takes two tensors, whose inputs are not recorded: no layer, never guessed."""

    def __init__(self) -> None:
        super().__init__()
        self.cat = Cat()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cat(x * 2.0, x)


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = torch.nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.neck, self.mix = TopDown(), Mix()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c1 = self.c1(x)
        p = self.neck({"c1": c1, "c2": self.c2(c1)})
        return self.mix(p["p1"]), p["p2"]


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """The model, its input, its reference recorded once, its ONNX files (dynamo and legacy) and program."""
    model = Net().eval()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    side = Side(Artifact(EagerFormat.name, ArtifactMeta(spec="parent50")), model, copy.deepcopy(model).double())
    folder = tmp_path_factory.mktemp("parent50")
    files = {}
    for dynamo in (True, False):
        files[dynamo] = folder / f"net-{'dynamo' if dynamo else 'legacy'}.onnx"
        torch.onnx.export(model, (x,), str(files[dynamo]), dynamo=dynamo, input_names=["input"])
    return {"x": x, "ref": record_reference(side, x.numpy()), "onnx": files,
            "program": torch.export.export(model, (x,))}


def edited(path, dest, kind: str):
    """A copy of the ONNX file with the neck's Resize made linear, or the Add reading it made a Sub."""
    model = onnx.load(str(path))
    resize = next(node for node in model.graph.node if node.op_type == "Resize")
    if kind == "linear":
        next(a for a in resize.attribute if a.name == "mode").s = b"linear"
    else:
        next(node for node in model.graph.node if node.op_type == "Add" and resize.output[0] in node.input) \
            .op_type = "Sub"
    onnx.save(model, str(dest))
    return dest


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "legacy"])
@pytest.mark.parametrize("kind", ["linear", "sub"])
def test_an_edited_top_down_path_names_its_parent_first(net, tmp_path, dynamo, kind):
    """Before: no layer named (the Resize and Add in no layer). After: the neck's own ops, first."""
    result = isolate_onnx(net["ref"], edited(net["onnx"][dynamo], tmp_path / "bad.onnx", kind), AUTO_FACTOR)[0]
    first = result.named[0] if result.named else None
    assert first is not None and first.module == "neck" and first.own_ops, (result.named, result.outside)
    assert [layer.module for layer in result.named] == ["neck"]  # the children, fed recorded values, are not named
    assert f"differ on their own: neck{OWN_OPS} " in culprit_note(result)


def test_an_edited_programs_top_down_path_names_its_parent(net):
    """The same in a .pt2's graph: the neck's `add` made a `sub`."""
    program = copy.deepcopy(net["program"]).module()
    upsample = next(n for n in program.graph.nodes if "upsample" in str(n.target))
    add = next(user for user in upsample.users if user.target is torch.ops.aten.add.Tensor)
    add.target = torch.ops.aten.sub.Tensor
    program.recompile()
    result = isolate_fx(net["ref"], program, AUTO_FACTOR)
    assert [(layer.module, layer.own_ops) for layer in result.named] == [("neck", True)], result.named


def test_correct_files_judge_the_parents_own_ops_and_name_none(net):
    """A correct file's parent layers are within their floors; what no call recorded stays outside, where it is."""
    results = [isolate_onnx(net["ref"], path, AUTO_FACTOR)[0] for path in net["onnx"].values()]
    results.append(isolate_fx(net["ref"], net["program"].module(), AUTO_FACTOR))
    for result in results:
        own = [layer for layer in result.layers if layer.own_ops]
        assert [layer.module for layer in own] == ["neck"] and not result.named, (own, result.named)
        assert "neck" not in result.outside_in and "mix" in result.outside_in, result.outside_in


def test_a_child_is_named_before_its_parents_own_ops():
    """children first: a named layer inside a named parent's own ops comes before it, whatever the ratios."""
    result = Isolation("model", "model.onnx", AUTO_FACTOR, layers=[
        LayerError("neck", 0, 100 * AUTO_FACTOR, 1e-3, 1e-7, own_ops=True),
        LayerError("neck.lat.0", 0, 10 * AUTO_FACTOR, 1e-4, 1e-7), LayerError("c1", 0, 2 * AUTO_FACTOR, 1e-4, 1e-7)])
    _children_first(result, set())
    assert [layer.module for layer in result.layers] == ["neck.lat.0", "neck", "c1"]
