"""Hunt 9b: the floor bound K of a model file, and files read from disk after they were checked. Each test fails
without its fix."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from exporter.manifest import MANIFEST_NAME, load_manifest
from verify.cli.app import app
from verify.judge.trust import accumulation_length, rounding_bound

runner = CliRunner()
SHAPE = "1x2x8x8"
CHANNELS = 2
CONV_K = accumulation_length(parameters=[(CHANNELS, CHANNELS, 3, 3)], input_shape=(1, CHANNELS, 8, 8))
OTHER_IN_FLOAT64 = 10.0
"""How far the model's float64 is from its float32, in units of its floor bound: refused on its own."""
SPARE_FAN_IN = 100 * CONV_K
"""A parameter the forward never reads, wide enough to lift the bound 100-fold had it counted."""
SPARE_MODEL = """
import torch
from torch import nn


class Spare(nn.Module):
    def __init__(self, spare: int, factor: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d({channels}, {channels}, 3, padding=1)
        self.unused = nn.Parameter(torch.zeros(1, spare))
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.dtype == torch.float64:
            return y * self.factor
        return y


def other():
    return Spare(0, {factor})


def spare_file():
    return Spare({spare}, 1.0)
"""


def _load(source: Path, name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_spare_parameter_of_a_torchscript_file_does_not_lift_the_floor_bound(tmp_path):
    """Before: a TorchScript file's K counted every parameter it holds, so `verify compare model.py:other spare.pt`
    (the model's float64 10x the bound away from its float32: refused against a file without the spare) exited 0,
    'all 3 pairs agree', with a 100,000-wide parameter the file's forward never reads. Measured on a 2-channel conv
    at 1x2x8x8 with its float64 1 % off: 284x the bound, refused; with the spare TorchScript file as B, exit 0."""
    import torch

    factor = 1 + OTHER_IN_FLOAT64 * rounding_bound(CONV_K)
    source = tmp_path / "spare.py"
    source.write_text(SPARE_MODEL.format(channels=CHANNELS, factor=repr(factor), spare=SPARE_FAN_IN))
    torch.manual_seed(0)  # as the loader seeds a factory (--seed 0): the file's conv is the model's
    scripted = torch.jit.script(_load(source, "spare_9b").spare_file().eval())
    torch.jit.save(scripted, str(tmp_path / "spare.pt"))
    result = runner.invoke(app, ["compare", f"{source}:other", str(tmp_path / "spare.pt"), "--shape", SHAPE,
                                 "--samples", "1"])
    assert result.exit_code == 1, result.output
    assert "not a noise floor" in result.output


TORCHSCRIPT_READS = """
import torch
from torch import nn


class Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.fetched = nn.Parameter(torch.zeros(3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unused = self.fetched  # fetched, never read by an op
        return self.helper(x)

    @torch.jit.export
    def helper(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


class Reads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = Inner()
        self.in_branch = nn.Parameter(torch.ones(4, 4))
        self.in_loop = nn.Parameter(torch.ones(4, 4))
        self.stack = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
        self.spare = nn.Parameter(torch.ones(5, 5))
        self.owner = nn.Linear(4, 4)  # never called: its weight is read through `alias` only
        self.alias = nn.Linear(4, 4)
        self.alias.weight = self.owner.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        if bool(y.sum() > 1e9):
            y = y @ self.in_branch
        for _ in range(2):
            y = y @ self.in_loop
        for layer in self.stack:
            y = layer(y)
        return self.alias(y)
"""


def test_a_torchscript_file_counts_what_its_forward_reads_anywhere(tmp_path):
    """A parameter read in a branch, a loop, a called method, a module list or through a module sharing it counts
    (once); a spare one and one only fetched do not (before: all of them counted)."""
    import torch

    from exporter.formats import get_format

    source = tmp_path / "reads.py"
    source.write_text(TORCHSCRIPT_READS)
    model = _load(source, "reads_9b").Reads().eval()
    path = tmp_path / "reads.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    unread = ("spare", "inner.fetched", "owner.bias")
    expected = [tuple(p.shape) for name, p in model.named_parameters() if name not in unread]
    assert sorted(get_format("torchscript").weight_shapes(path)) == sorted(expected)


CANCELLING_MODEL = """
import torch
from torch import nn


class Cancelling(nn.Module):
    \"\"\"A conv whose output is shifted by a large constant and back: float32 loses digits there that float64
    keeps, a floor far above what rounding in K accumulations of the output's magnitude can produce.\"\"\"

    def __init__(self, spare: int, shift: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d({channels}, {channels}, 3, padding=1)
        self.unused = nn.Parameter(torch.zeros(1, spare))
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.conv(x) + self.shift) - self.shift
"""
SHIFT = 100.0 * CONV_K
"""Float32's spacing at the shift, SHIFT * 2^-23, is 50x the floor bound (2 * K * 2^-23) of an output of unit scale."""


@pytest.mark.parametrize("spare", [0, SPARE_FAN_IN])
def test_two_pt2_files_are_held_to_the_floor_bound(tmp_path, spare):
    """Before: a .pt2 side had no K of its own (it borrowed the other side's), so `verify compare a.pt2 a.pt2` had
    no floor bound at all: a graph whose float32 floor was 7.8x what rounding can produce (refused against the
    model it came from) exited 0, 'all 3 pairs agree', every tolerance widened by it. Now K comes from the
    archive's parameters that a node reads: a spare one does not lift it."""
    import torch

    source = tmp_path / "cancelling.py"
    source.write_text(CANCELLING_MODEL.format(channels=CHANNELS))
    torch.manual_seed(0)  # the conv's weights: torch seeds its global RNG anew in every process (6.7x-11.6x the bound)
    model = _load(source, f"cancelling_9b_{spare}").Cancelling(spare, SHIFT).eval()
    path = tmp_path / "cancelling.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(1, CHANNELS, 8, 8),)), str(path))
    result = runner.invoke(app, ["compare", str(path), str(path), "--shape", SHAPE, "--samples", "1"])
    assert result.exit_code == 1, result.output
    assert "not a noise floor" in result.output


def _retargeted(source: Path, target: Path, op: str) -> None:
    """`source`, a .pt2 archive, with its conv node calling `op`: an archive `scan_archive` refuses."""
    import json
    import zipfile

    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as out:
        for name in archive.namelist():
            data = archive.read(name)
            if name.endswith("models/model.json"):
                program = json.loads(data)
                for node in program["graph_module"]["graph"]["nodes"]:
                    node["target"] = op if "conv2d" in node["target"] else node["target"]
                data = json.dumps(program).encode()
            out.writestr(name, data)


def test_a_pt2_file_is_loaded_from_the_bytes_its_scan_read(tmp_path, monkeypatch):
    """Before: load_program scanned the archive by its path and torch.export.load opened the path again, so an
    archive renamed over it between the two was loaded unscanned (here one whose node calls builtins.print: torch
    tried to resolve it). Now the file is read once into a private copy, and that copy is scanned and loaded."""
    import torch

    from exporter.formats import pt2

    source = tmp_path / "cancelling.py"
    source.write_text(CANCELLING_MODEL.format(channels=CHANNELS))
    model = _load(source, "cancelling_9b_race").Cancelling(0, 0.0).eval()
    x = torch.randn(1, CHANNELS, 8, 8)
    path, crafted = tmp_path / "model.pt2", tmp_path / "crafted.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(path))
    _retargeted(path, crafted, "builtins.print")
    real_check = pt2._check_program

    def check_then_swap(*args):
        real_check(*args)
        if crafted.exists():
            os.replace(crafted, path)

    monkeypatch.setattr(pt2, "_check_program", check_then_swap)
    loaded = pt2.load_program(path)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


# A checked file is the file loaded ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny CNN's export (ONNX and TorchScript) at 1x3x16x16."""
    out = tmp_path_factory.mktemp("hunt9b") / "out"
    model = Path(__file__).parent / "data" / "tiny.py"
    result = runner.invoke(app, ["export", "--model", f"{model}:make", "--shape", "1x3x16x16", "--format", "onnx",
                                 "--format", "torchscript", "--samples", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    (folder,) = out.iterdir()
    return folder


def _other_onnx(source: Path, target: Path) -> None:
    """`source` with one weight scaled by 1 %: a loadable ONNX file that is not the one the manifest lists."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    init = max(model.graph.initializer, key=lambda i: numpy_helper.to_array(i).size)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.01, init.name))
    onnx.save(model, str(target))


def _swap_after_the_checks(monkeypatch, folder: Path, tmp_path: Path, loader) -> list[str]:
    """Rename another model.onnx over the folder's after its sha256 matched (when the goldens' content is checked,
    before any load: the window a rename race needs), and record the sha256 of every file a runtime loads."""
    from exporter.manifest import file_sha256
    from verify.folder import validate as validate_module

    other = tmp_path / "other.onnx"
    _other_onnx(folder / "model.onnx", other)
    real_goldens, real_make = validate_module._goldens, loader.make_runtime
    loaded: list[str] = []

    def goldens_then_swap(art):
        os.replace(other, folder / "model.onnx")
        return real_goldens(art)

    def spying_make_runtime(*args, **kwargs):
        runtime = real_make(*args, **kwargs)
        real_load = runtime.load

        def load(artifact):
            loaded.append(file_sha256(artifact.path))
            return real_load(artifact)

        runtime.load = load
        return runtime

    monkeypatch.setattr(validate_module, "_goldens", goldens_then_swap)
    monkeypatch.setattr(loader, "make_runtime", spying_make_runtime)
    return loaded


def test_verify_artifact_loads_the_bytes_it_hashed(tiny_folder, tmp_path, monkeypatch):
    """Before: the checks hashed model.onnx by its path and the runtime opened that path again later, so a file
    renamed over it in between was the one run: the loaded file's sha256 was the other file's, and its goldens
    check failed for a file integrity never saw. Now every check and load reads one private snapshot of the folder."""
    from verify.folder import validate as validate_module

    folder = Path(shutil.copytree(tiny_folder, tmp_path / tiny_folder.name))
    onnx_sha256 = load_manifest(folder / MANIFEST_NAME).files["model.onnx"].sha256
    loaded = _swap_after_the_checks(monkeypatch, folder, tmp_path, validate_module)
    report = validate_module.validate([folder], trust_unsigned_code=True)
    listed = {entry.sha256 for entry in load_manifest(folder / MANIFEST_NAME).files.values()}
    assert onnx_sha256 in loaded and set(loaded) <= listed, loaded
    assert report.passed, [(c.name, c.message) for c in report.checks if not c.passed]


def test_verify_preflight_loads_the_bytes_it_hashed(tiny_folder, tmp_path, monkeypatch):
    """Before: the same swap made preflight load and time the other model.onnx."""
    from verify.folder import preflight as preflight_module

    folder = Path(shutil.copytree(tiny_folder, tmp_path / tiny_folder.name))
    onnx_sha256 = load_manifest(folder / MANIFEST_NAME).files["model.onnx"].sha256
    loaded = _swap_after_the_checks(monkeypatch, folder, tmp_path, preflight_module)
    report = preflight_module.preflight(folder, preflight_module.PreflightOptions(runs=1, warmup=0))
    assert loaded == [onnx_sha256]
    assert report.passed, report.summary


def test_the_snapshot_is_removed_and_messages_name_the_folder(tiny_folder, tmp_path, monkeypatch):
    """The private copy leaves nothing behind, and a failure names the folder given, never the copy."""
    import gc

    from verify.folder.integrity import SNAPSHOT_PREFIX
    from verify.folder.preflight import PreflightOptions, preflight
    from verify.folder.validate import validate

    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))  # this test's snapshots only
    folder = Path(shutil.copytree(tiny_folder, tmp_path / tiny_folder.name))
    assert validate([folder], trust_unsigned_code=True).passed
    assert preflight(folder, PreflightOptions(runs=1, warmup=0)).passed
    (folder / MANIFEST_NAME).unlink()
    report = validate([folder])
    assert not report.passed and str(folder) in report.checks[0].message, report.checks[0].message
    gc.collect()
    assert not [name for name in os.listdir(private) if name.startswith(SNAPSHOT_PREFIX)]


MASKED_BORDER = """
import torch
from torch import nn


class Bordered(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        mask = torch.ones_like(y, dtype=torch.bool)
        mask[:, :, 1:-1, 1:-1] = False
        return y.masked_fill(mask, -1e9)


def make():
    return Bordered()
"""


def test_a_guard_of_torchs_symbolic_arithmetic_loads(tmp_path):
    """A slice of a dynamic-shape tensor makes torch.export write `torch.sym_max(...)` into the program's guards: the
    archive scan refused it ("reads the attribute 'sym_max'"), so `verify export --format pt2` of such a model exited
    2. torch's symbolic arithmetic is allowed; any other attribute of torch still is not."""
    from typer.testing import CliRunner

    from exporter.errors import ArtifactError
    from exporter.formats.pt2 import TORCH_SYMBOLIC, _check_expression
    from verify.cli.app import app

    source = tmp_path / "bordered.py"
    source.write_text(MASKED_BORDER)
    result = CliRunner().invoke(app, ["export", "--model", f"{source}:make", "--shape", "1x3x16x16", "--format",
                                      "pt2", "--samples", "1", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    allowed = {"L", "torch"}
    for name in TORCH_SYMBOLIC:
        _check_expression(tmp_path / "a.pt2", f"torch.{name}(1, 2) == 2", allowed, "guard")
    for guard in ("torch.load(1) == 2", "torch.sym_max.__globals__ == 2", "torch.ops.aten.add(1, 2) == 3"):
        with pytest.raises(ArtifactError, match="reads the attribute"):
            _check_expression(tmp_path / "a.pt2", guard, allowed, "guard")
