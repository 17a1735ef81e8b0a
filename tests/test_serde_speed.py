"""exporter/serde_speed.py: torch.export.load with type hints looked up once per class loads the very same program."""

import typing

import pytest
import torch
from torch import nn

from exporter.serde_speed import remember_type_hints


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4).eval()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = torch.relu(self.norm(self.conv(x)))
        return {"a": y, "b": y.mean(dim=(2, 3))}


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    path = tmp_path_factory.mktemp("pt2") / "small.pt2"
    torch.manual_seed(0)
    batch = torch.export.Dim("batch", min=1, max=8)
    program = torch.export.export(Small().eval(), (torch.randn(2, 3, 8, 8),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


def _load(path):
    program = torch.export.load(str(path))
    return program, program.module()


def test_a_program_loads_the_same_with_remembered_type_hints(archive, monkeypatch):
    from torch._export.serde import serialize

    monkeypatch.setattr(serialize, "typing", typing)  # torch as it comes, whatever ran in this worker before
    plain, plain_module = _load(archive)
    assert remember_type_hints() and remember_type_hints()  # installed once, then left as it is
    assert serialize.typing is not typing and serialize.typing.get_origin is typing.get_origin
    remembered, module = _load(archive)
    assert str(remembered.graph) == str(plain.graph)
    assert str(remembered.range_constraints) == str(plain.range_constraints)
    assert remembered.graph_signature == plain.graph_signature
    for name, value in plain.state_dict.items():
        assert torch.equal(remembered.state_dict[name], value)
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        expected, got = plain_module(x), module(x)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_other_callers_get_typings_own_answers():
    from torch._export.serde import serialize

    remember_type_hints()

    class Other:
        value: "int"

    hints = serialize.typing.get_type_hints(Other)
    assert hints == typing.get_type_hints(Other) == {"value": int}
    hints["changed"] = str  # a caller's copy, not the remembered answer
    from torch._export.serde import schema

    first = serialize.typing.get_type_hints(schema.Graph, globalns=vars(schema))
    first["changed"] = str
    assert "changed" not in serialize.typing.get_type_hints(schema.Graph, globalns=vars(schema))


class Strided(nn.Module):
    """Sizes that become shape expressions under dynamic height and width ((s1 - 1)//2 + 1, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, stride=2)
        self.b = nn.Conv2d(4, 4, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = torch.relu(self.a(x))
        return {"y": y, "z": self.b(y) + self.b(y).mean(dim=(2, 3), keepdim=True)}


@pytest.fixture(scope="module")
def dynamic_archive(tmp_path_factory):
    path = tmp_path_factory.mktemp("pt2") / "strided.pt2"
    torch.manual_seed(0)
    dim = torch.export.Dim
    program = torch.export.export(Strided().eval(), (torch.randn(2, 3, 33, 41),), dynamic_shapes=(
        {0: dim("batch", min=1, max=8), 2: dim("height", min=16, max=256), 3: dim("width", min=16, max=256)},))
    torch.export.save(program, str(path))
    return path


def test_a_dynamic_program_loads_the_same_with_each_shape_expression_parsed_once(dynamic_archive, monkeypatch):
    from torch._export.serde import serialize

    from exporter.serde_speed import remember_sym_exprs

    plain_parse = getattr(serialize.GraphModuleDeserializer._parse_sym_expr, "__wrapped__",
                          serialize.GraphModuleDeserializer._parse_sym_expr)
    calls = []

    def counted(self, expr_str, hint=None):
        calls.append(expr_str)
        return plain_parse(self, expr_str, hint)

    monkeypatch.setattr(serialize.GraphModuleDeserializer, "_parse_sym_expr", counted)  # torch as it comes
    plain, plain_module = _load(dynamic_archive)
    asked = len(calls)
    assert remember_sym_exprs() and remember_sym_exprs()  # installed once over what it found, then left as it is
    calls.clear()
    remembered, module = _load(dynamic_archive)
    assert 0 < len(calls) < asked and len(calls) == len(set(calls))  # each string parsed once, not every time
    assert str(remembered.graph) == str(plain.graph)
    assert str(remembered.range_constraints) == str(plain.range_constraints)
    for a, b in zip(plain.graph.nodes, remembered.graph.nodes):
        assert str(a.meta.get("val")) == str(b.meta.get("val"))  # the symbolic sizes each node carries
    x = torch.randn(3, 3, 50, 37)
    with torch.no_grad():
        expected, got = plain_module(x), module(x)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def _members(path):
    """Each entry's bytes by its name under the archive's root (the root is named after the file), but for the
    random id torch gives every save."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        return {name.split("/", 1)[1]: archive.read(name) for name in archive.namelist()
                if not name.endswith("/serialization_id")}


def test_a_dynamic_program_saves_the_same_archive_with_each_shape_expression_printed_once(tmp_path, monkeypatch):
    from torch._export.serde import serialize

    from exporter import serde_speed

    torch.manual_seed(0)
    dim = torch.export.Dim
    program = torch.export.export(Strided().eval(), (torch.randn(2, 3, 33, 41),), dynamic_shapes=(
        {0: dim("batch", min=1, max=8), 2: dim("height", min=16, max=256), 3: dim("width", min=16, max=256)},))
    plain_print = getattr(serialize._print_sympy, "__wrapped__", serialize._print_sympy)
    printed = []

    def counted(s):
        printed.append(s)
        return plain_print(s)

    monkeypatch.setattr(serialize, "_print_sympy", counted)  # torch as it comes, counted
    torch.export.save(program, str(tmp_path / "plain.pt2"))
    asked = len(printed)
    assert serde_speed.remember_sym_prints() and serde_speed.remember_sym_prints()  # once, then left as it is
    printed.clear()
    torch.export.save(program, str(tmp_path / "remembered.pt2"))
    assert 0 < len(printed) < asked  # each expression object printed once, not every time it is met
    assert _members(tmp_path / "remembered.pt2") == _members(tmp_path / "plain.pt2")

    monkeypatch.setattr(serde_speed, "PRINT_MEMO_SIZE", 1)  # the memo starting over after every entry
    monkeypatch.setattr(serialize, "_print_sympy", counted)
    serde_speed.remember_sym_prints()
    torch.export.save(program, str(tmp_path / "evicted.pt2"))
    assert _members(tmp_path / "evicted.pt2") == _members(tmp_path / "plain.pt2")
