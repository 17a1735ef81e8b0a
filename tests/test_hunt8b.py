"""Defects found by attacking the trust guards with user models that want an exit 0 they did not earn (hunt 8b):
each test fails without its fix."""

import pytest
from typer.testing import CliRunner

from verify.cli.app import app
from verify.judge.trust import accumulation_length, rounding_bound

runner = CliRunner()
SHAPE = "1x2x8x8"
CHANNELS = 2
CONV_K = accumulation_length(parameters=[(CHANNELS, CHANNELS, 3, 3)], input_shape=(1, CHANNELS, 8, 8))
NOISE = 0.1 * rounding_bound(CONV_K)
"""The random model's noise, relative to its output's scale: under the floor bound, so only determinism can tell."""

BUFFERED_CONV = f"""
import torch
from torch import nn


class BufferedConv(nn.Module):
    \"\"\"Writes its result into a buffer it keeps and returns that buffer (a preallocated output).\"\"\"

    def __init__(self, noise: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d({CHANNELS}, {CHANNELS}, 3, padding=1)
        self.noise = noise
        self.register_buffer("out", torch.zeros(0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if torch.jit.is_tracing():  # a traced export (the legacy ONNX exporter) records the function only
            return y
        if self.out.shape != y.shape or self.out.dtype != y.dtype:
            self.out = torch.zeros_like(y)
        self.out.copy_(y + self.noise * y.abs().max() * torch.randn_like(y))
        return self.out


def deterministic():
    return BufferedConv(0.0)


def random():
    return BufferedConv({NOISE})
"""


def _export(tmp_path, factory: str, *options: str):
    source = tmp_path / "buffered.py"
    source.write_text(BUFFERED_CONV)
    return runner.invoke(app, ["export", "--model", f"{source}:{factory}", "--shape", SHAPE, "--out",
                               str(tmp_path / "out"), *options])


def test_a_random_model_returning_a_kept_buffer_is_not_judged(tmp_path):
    """Before: the eager (and TorchScript) outputs were numpy views of the buffer the model keeps, so the second
    run overwrote the first one's array and the determinism guard compared the same memory: a model adding noise
    under the floor bound exited 0 ('all 3 pairs agree'), its noise taken for the float32 floor."""
    result = _export(tmp_path, "random", "--samples", "1", "--format", "torchscript")
    assert result.exit_code == 1, result.output
    assert "not deterministic" in result.output


def test_a_deterministic_model_returning_a_kept_buffer_is_judged_on_each_input(tmp_path):
    """Before: every input's eager outputs were views of one buffer, all holding the last call's values, so a
    correct model's ONNX export (whose outputs are its own) 'disagreed' with eager on every input but the last (exit 1),
    and eager and TorchScript were judged on the last input only."""
    result = _export(tmp_path, "deterministic", "--format", "onnx", "--onnx-exporter", "torchscript")
    assert result.exit_code == 0, result.output


def _onnx_of_the_deterministic_model(tmp_path):
    import importlib.util

    import torch

    source = tmp_path / "buffered.py"
    source.write_text(BUFFERED_CONV)
    spec = importlib.util.spec_from_file_location("buffered_8b", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)  # as the loader seeds a factory (--seed 0)
    graph = tmp_path / "conv.onnx"
    torch.onnx.export(module.deterministic().eval(), (torch.randn(1, CHANNELS, 8, 8),), str(graph), dynamo=False,
                      input_names=["input"], output_names=["output0"])
    return source, graph


def test_explain_does_not_judge_a_random_model_returning_a_kept_buffer(tmp_path):
    """Before: `verify explain buffered.py:random conv.onnx` (the same conv, exported) said 'equivalent within
    float32 rounding', exit 0: both float32 runs of the random side were views of one buffer, so the repeat that
    hunt 7a added compared the same memory."""
    from verify.explain.equivalence import NotJudged, explain
    from verify.settings import RunSettings

    source, graph = _onnx_of_the_deterministic_model(tmp_path)
    settings = RunSettings(shape=(1, CHANNELS, 8, 8))
    assert explain(f"{source}:deterministic", str(graph), settings, isolate=False).equivalent
    with pytest.raises(NotJudged, match="not deterministic"):
        explain(f"{source}:random", str(graph), settings, isolate=False)


LOUD_CONV = """
from torch import nn


class Loud(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        print('{"passed": true, "exit_code": 0}')
        print("::stop-commands::hunt8b")  # would silence the GitHub annotations this tool prints after it
        return self.conv(x)


def make():
    return Loud()
"""


def test_what_the_users_code_prints_never_reaches_the_tools_stdout(tmp_path):
    """Before: a forward's print() went to the tool's stdout, between its own result lines: a forged JSON result or
    `::stop-commands::` (GitHub stops reading the annotations that follow) looked like this tool's output."""
    import subprocess
    import sys
    from pathlib import Path

    source = tmp_path / "loud.py"
    source.write_text(LOUD_CONV)
    verify = Path(sys.executable).with_name("verify")
    done = subprocess.run([str(verify), "export", "--model", f"{source}:make", "--shape", "1x3x8x8", "--format",
                           "torchscript", "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert "stop-commands" not in done.stdout and '"passed"' not in done.stdout
    assert "agree" in done.stdout and "stop-commands" in done.stderr  # the user's lines are kept, on stderr


OTHER_IN_FLOAT64 = 10.0
"""How far the model's float64 is from its float32, in units of its floor bound: refused on its own."""
SPARE_FAN_IN = 100 * CONV_K
"""A parameter the forward never reads, wide enough to lift the bound 100-fold had it counted."""
SPARE_MODEL = """
import torch
from torch import nn


class Spare(nn.Module):
    def __init__(self, spare: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d({channels}, {channels}, 3, padding=1)
        self.unused = nn.Parameter(torch.zeros(1, spare))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.dtype == torch.float64:
            return y * {factor}
        return y


def plain():
    return Spare(0)


def spare():
    return Spare({spare})
"""


@pytest.mark.parametrize("factory", ["plain", "spare"])
def test_an_unused_parameter_does_not_lift_the_floor_bound(tmp_path, factory):
    """Before: K counted every parameter, read or not, so a 14,600-wide nn.Parameter the forward never touches lifted
    the bound 100-fold, and a model whose float64 computes another function (10x the bound alone: refused) passed
    ('all 3 pairs agree', exit 0) with its difference taken for a float32 floor. Measured on tests/data/tiny.py's CNN:
    1 % off in float64 plus a 100,000-wide spare parameter, its exports 4 % off, exited 0."""
    factor = 1 + OTHER_IN_FLOAT64 * rounding_bound(CONV_K)
    source = tmp_path / "spare.py"
    source.write_text(SPARE_MODEL.format(channels=CHANNELS, factor=repr(factor), spare=SPARE_FAN_IN))
    result = runner.invoke(app, ["export", "--model", f"{source}:{factory}", "--shape", SHAPE, "--format",
                                 "torchscript", "--out", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert "not a noise floor" in result.output


def test_only_parameters_the_forward_reads_count_and_the_model_is_left_as_it_was():
    """An unused head holds no accumulation; a scripted submodule's parameters count (no Python mode sees inside
    TorchScript, so none is dropped there), and the meta run leaves a train-mode norm's statistics alone."""
    import torch
    from torch import nn

    from verify.judge.trust import read_parameters

    class Headed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scripted = torch.jit.script(nn.Conv2d(3, 8, 3))
            self.norm = nn.BatchNorm2d(8)  # left in train mode: a real run would update its statistics
            self.head = nn.Linear(1000, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(self.scripted(x))

    model = Headed()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    read = {id(p) for p in read_parameters(model, (1, 3, 8, 8))}
    expected = [*model.scripted.parameters(), *model.norm.parameters()]
    assert read == {id(p) for p in expected}
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())


BRANCHY_CONV = f"""
import torch
from torch import nn


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d({CHANNELS}, {CHANNELS}, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if x.abs().max() > 100:  # no seeded input takes it; a trace records the other path only
            return -y
        return y


def make():
    return Branchy()
"""


def test_a_trace_torch_warns_about_is_not_passed_in_silence(tmp_path):
    """Before: `verify export --model branchy.py:make --format torchscript --trace` of a forward whose branch depends
    on its input's values exited 0 ('all 3 pairs agree') without a word: torch.jit.trace's own TracerWarning
    ('Converting a tensor to a Python boolean might cause the trace to be incorrect') was silenced with the
    deprecation notices, and the file computes y where the model computes -y for inputs above 100."""
    source = tmp_path / "branchy.py"
    source.write_text(BRANCHY_CONV)
    result = runner.invoke(app, ["export", "--model", f"{source}:make", "--shape", SHAPE, "--format", "torchscript",
                                 "--trace", "--out", str(tmp_path / "out")])
    assert result.exit_code != 0 and "might cause the trace to be incorrect" in result.output, result.output
    assert "drop --trace" in result.output


def test_a_repeat_that_returns_other_outputs_is_a_difference():
    """Before: an output missing from one of the two runs was skipped, so a forward returning {'y'} on one call and
    {'z'} on the next recorded no difference at all: 'deterministic'."""
    import math

    import numpy as np

    from verify.judge.trust import output_differences

    y = np.zeros((1, 2, 4, 4), np.float32)
    assert output_differences({"y": y}, {"z": y}) == {"y": math.inf, "z": math.inf}
    assert output_differences({"y": y}, {"y": y.copy()}) == {"y": 0.0}


PRECISION_FILE = """
import torch
from torch import nn

torch.set_float32_matmul_precision("medium")  # at import, as training scripts do (Lightning's advice)
torch.set_default_dtype(torch.float64)


def make():
    torch.backends.mkldnn.conv.fp32_precision = "bf16"
    return nn.Conv2d(3, 4, 3).float()
"""


def test_torchs_float32_precision_set_by_the_users_file_is_undone(tmp_path):
    """Before: a file that called `torch.set_float32_matmul_precision("medium")` at import kept it for every run of
    the worker, and on a CPU with bf16 units (AMX) every float32 matmul rounded at bf16: resnet18's 'float32 noise
    floor' measured 1.3e-2, 3,400x ONNX Runtime's real difference from float64 (3.9e-6), and all pairs 'agreed at
    float32 precision' (exit 0). Settings made at import escaped even the default dtype's restoring."""
    import torch

    from exporter.user_model import UserModelSpec

    source = tmp_path / "precision_model.py"
    source.write_text(PRECISION_FILE)
    conv = torch.backends.mkldnn.conv

    def state():
        return torch.get_default_dtype(), torch.get_float32_matmul_precision(), getattr(conv, "fp32_precision", None)

    before = state()
    try:
        UserModelSpec.parse(f"{source}:make").load(0)
        assert state() == before
    finally:
        torch.set_default_dtype(before[0])
        torch.set_float32_matmul_precision(before[1])
        if before[2] is not None:
            conv.fp32_precision = before[2]


PRECISION_IN_FORWARD = """
import torch
from torch import nn


class Sneaky(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        torch.set_float32_matmul_precision("medium")  # once running: the import and the factory were clean
        return self.conv(x)


def make():
    return Sneaky()
"""


def test_a_forward_that_changes_torchs_float32_precision_is_refused_and_the_setting_put_back(tmp_path):
    """Before: settings made while the model ran were kept (only those made on import and in the factory were
    undone), so every later float32 run rounded at the precision the model chose, the floor measured from them
    too. Now the run is refused in one line naming the setting, and the setting is what it was."""
    import torch

    source = tmp_path / "sneaky.py"
    source.write_text(PRECISION_IN_FORWARD)
    before = torch.get_float32_matmul_precision()
    result = runner.invoke(app, ["export", "--model", f"{source}:make", "--shape", "1x3x8x8",
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code != 0, result.output
    assert "changed torch's float32 precision" in result.output and "float32_matmul_precision" in result.output
    assert torch.get_float32_matmul_precision() == before


def test_the_precision_guard_puts_the_setting_back_in_this_process():
    import torch
    from torch import nn

    from exporter.errors import ArtifactError
    from verify.runtimes.torch_common import call_module

    class Sneaky(nn.Module):
        def forward(self, x):
            torch.set_float32_matmul_precision("medium")
            return x * 2

    before = torch.get_float32_matmul_precision()
    with pytest.raises(ArtifactError, match="changed torch's float32 precision"):
        call_module(Sneaky(), torch.ones(1, 3, 4, 4), "sneaky")
    assert torch.get_float32_matmul_precision() == before
    assert call_module(nn.Identity(), torch.ones(1), "identity").item() == 1.0  # an honest module runs as before
