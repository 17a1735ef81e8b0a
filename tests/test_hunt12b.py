"""Defects found by user models that want an exit 0 they did not earn (hunt 12b): each test fails without its fix."""

from torch import nn
from typer.testing import CliRunner

from tests.helpers import BOUND_CHANNELS, BOUND_CONV_K, BOUND_OTHER_IN_FLOAT64, BOUND_SHAPE
from verify.cli.app import app
from verify.judge.file_floor import FLOOR_AGREEMENT
from verify.judge.trust import accumulation_length, read_parameters, rounding_bound

runner = CliRunner()
SHAPE, CHANNELS, CONV_K, OTHER_IN_FLOAT64 = BOUND_SHAPE, BOUND_CHANNELS, BOUND_CONV_K, BOUND_OTHER_IN_FLOAT64
SPARE_FAN_IN = 100 * CONV_K
"""A parameter only the meta run reads, wide enough to lift the bound 100-fold had it counted."""
META_AWARE = """
import torch
from torch import nn


class MetaAware(nn.Module):
    def __init__(self, factor: float, spare: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d({channels}, {channels}, 3, padding=1)
        self.unused = nn.Parameter(torch.zeros(1, spare))
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if x.is_meta:  # only the run that counts the parameters the forward reads is on the meta device
            y = y + 0 * self.unused.sum()
        if y.dtype == torch.float64:
            return y * self.factor
        return y


def make():
    return MetaAware({factor}, {spare})
"""


def test_a_forward_that_reads_a_wide_parameter_only_on_meta_does_not_lift_the_floor_bound(tmp_path):
    """Before: K counted the parameters ops read while the model ran on the meta device, and a forward can tell
    (`x.is_meta`): one that read a 14,600-wide spare parameter there only lifted the bound 100-fold, and its float64
    computing another function (10x the bound: refused without the spare) passed, 'all 3 pairs agree' (exit 0), its
    difference taken for the float32 floor. The read is now followed on fake tensors, which say they are on the CPU."""
    factor = 1 + OTHER_IN_FLOAT64 * rounding_bound(CONV_K)
    source = tmp_path / "meta_aware.py"
    source.write_text(META_AWARE.format(channels=CHANNELS, factor=repr(factor), spare=SPARE_FAN_IN))
    result = runner.invoke(app, ["export", "--model", f"{source}:make", "--shape", SHAPE, "--format", "torchscript",
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert "not a noise floor" in result.output
    assert f"K={CONV_K} " in result.output


class ReadsOnMeta(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1)
        self.unused = nn.Parameter(nn.init.zeros_(nn.Linear(SPARE_FAN_IN, 1).weight.detach()))

    def forward(self, x):
        y = self.conv(x)
        if x.is_meta or x.device.type == "meta":
            y = y + 0 * self.unused.sum()
        return y


def test_the_read_parameters_run_does_not_look_like_a_meta_run():
    """Before: `read_parameters` listed `unused`, which the forward reads only when its input is on the meta
    device; now only the conv's weight and bias are read."""
    model = ReadsOnMeta()
    read = {id(p) for p in read_parameters(model, (1, CHANNELS, 8, 8))}
    assert read == {id(model.conv.weight), id(model.conv.bias)}
    assert accumulation_length(model, input_shape=(1, CHANNELS, 8, 8)) == CONV_K


class KeptList(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1)
        self.lin = nn.Linear(CHANNELS * 8 * 8, CHANNELS * 8 * 8)
        self.kept = [self.lin.weight]  # read through a list, not through `lin`

    def forward(self, x):
        return self.conv(x).flatten(1) @ self.kept[0]


def test_a_parameter_read_other_than_through_its_module_counts():
    """Before: on the meta device an op read the real `lin.weight` (the list holds the parameter itself, not the
    copy the run swaps in), and K left it out: a bound too tight for the model it judged. Now it counts."""
    model = KeptList()
    read = {id(p) for p in read_parameters(model, (1, CHANNELS, 8, 8))}
    assert read == {id(model.conv.weight), id(model.conv.bias), id(model.lin.weight)}



class KeepsFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1)
        self.first = None  # set on the first call, added at zero weight after

    def forward(self, x):
        y = self.conv(x)
        if self.first is None:
            self.first = y.detach()
        return y + 0 * self.first


def test_counting_the_reads_leaves_what_the_forward_assigns_as_it_was():
    """Before: the counting run left the meta tensor the forward assigned (`self.first`) in the model, and its next
    real call raised 'Tensor on device meta is not on the expected device cpu!'. Now the model is left as it was."""
    import torch

    model = KeepsFirst()
    read_parameters(model, (1, CHANNELS, 8, 8))
    assert model.first is None
    x = torch.randn(1, CHANNELS, 8, 8)
    assert torch.equal(model(x), model.conv(x))

NOISE = 0.1 * rounding_bound(CONV_K)
"""The eager-only noise, relative to the output's scale: under the floor bound, so only determinism could tell."""
INPUT_SEEDED = """
import torch
from torch import nn


class InputSeeded(nn.Module):
    \"\"\"Eager only: adds noise seeded by its input's values, so the same input twice gives the same output.\"\"\"

    def __init__(self, noise: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d({channels}, {channels}, 3, padding=1)
        self.noise = noise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if torch.compiler.is_exporting() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
            return y
        g = torch.Generator().manual_seed(int(abs(x.sum().item()) * 1e6) % (2 ** 31))
        return y + self.noise * y.abs().max() * torch.randn(y.shape, generator=g, dtype=y.dtype)


def make():
    return InputSeeded({noise})
"""


def test_eager_noise_seeded_by_the_input_is_not_taken_for_the_floor(tmp_path):
    """Before: a forward whose eager path adds noise seeded by its input's values (0.1x the floor bound; the same
    input twice gives the same bits, so the determinism guard passes; float32 and float64 draw other numbers) and
    whose export leaves the noise out exited 0: 'all 3 pairs agree', the float32 floor measured at 3e-5, ~70x this
    conv's real floor (4.3e-7), the export 3e-5 off eager. Guard 3 (verify/judge/file_floor.py) refuses it: the
    .pt2's own floor, measured in float64, is the conv's."""
    source = tmp_path / "input_seeded.py"
    source.write_text(INPUT_SEEDED.format(channels=CHANNELS, noise=repr(NOISE)))
    result = runner.invoke(app, ["export", "--model", f"{source}:make", "--shape", SHAPE, "--format", "pt2",
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    refusal = ("x the one model.pt2 in exported measures on itself (its float32 run against its float64 run, less "
               "what that differs from the model's; input ")
    assert "The model's float32 floor of output0 is " in result.output and refusal in result.output, result.output
    assert f"over the {FLOOR_AGREEMENT:g}x that rounding differences allow" in result.output, result.output
    assert "✗ not judged" in result.output and "FAIL" not in result.output, result.output  # refused, not disagreeing
