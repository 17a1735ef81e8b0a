"""A new user's first paths (hunt 13c): factories and forwards that take what a factory cannot give, Lightning
checkpoints, --weights that nothing loads, and a Markdown report that quotes its floors. Each test fails without
its fix."""

import numpy as np
import torch
import torchvision
from typer.testing import CliRunner

from exporter.weights import load_weights_file
from verify.cli.app import app

runner = CliRunner()
MODELS = """
import torch
from torch import nn


class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x, mask):
        return self.conv(x) * mask


def make(channels):
    return nn.Conv2d(3, channels, 3, padding=1)


def two():
    return Two()


def two_examples():
    return Two(), (torch.randn(1, 3, 16, 16), torch.ones(1, 4, 16, 16))


def conv():
    torch.manual_seed(0)
    return nn.Conv2d(3, 4, 3, padding=1)
"""


def one_line(result) -> str:
    return " ".join(result.output.split())


def export(tmp_path, factory: str, *extra: str):
    source = tmp_path / "models.py"
    source.write_text(MODELS)
    return runner.invoke(app, ["export", "--model", f"{source}:{factory}", "--shape", "1x3x16x16", "--format", "onnx",
                               "--out", str(tmp_path / "out"), *extra])


def test_a_factory_that_takes_arguments_says_so(tmp_path):
    """Before: 'raised TypeError: make() missing 1 required positional argument' from inside the call."""
    result = export(tmp_path, "make")
    assert result.exit_code == 2, result.output
    assert "takes arguments (channels)" in one_line(result) and "def make():" in one_line(result)


def test_a_model_of_two_inputs_is_refused_saying_what_to_wrap(tmp_path):
    """Before: the forward failed on one input and the message blamed the shape ('pass the input shape it takes
    with --shape'), which cannot give a second input."""
    for factory in ("two", "two_examples"):
        result = export(tmp_path, factory)
        assert result.exit_code == 2, result.output
        assert "only a model of one NCHW image tensor is verified" in one_line(result), (factory, result.output)


def test_a_lightning_checkpoint_loads_the_weights_it_wraps(tmp_path):
    """Before: a Lightning-style checkpoint ({'state_dict': {'model.conv1.weight': ...}, 'epoch': 3}, .ckpt) was
    refused for its suffix, and as .pt its keys were '122 unexpected keys, e.g. model.conv1.weight'."""
    torch.manual_seed(0)
    state = torchvision.models.resnet18().state_dict()
    plain, wrapped = tmp_path / "plain.pt", tmp_path / "wrapped.ckpt"
    torch.save(state, plain)
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3}, wrapped)
    assert load_weights_file(wrapped).sha256 == load_weights_file(plain).sha256


def test_a_checkpoint_whose_keys_are_the_models_own_is_read_as_it_is(tmp_path):
    """Only a prefix every key shares is a wrapper's: a backbone checkpoint (`body.`) keeps its keys."""
    from exporter.weights import without_wrapper_prefix

    keys = {"body.conv1.weight": torch.zeros(1), "body.bn1.weight": torch.zeros(1)}
    assert list(without_wrapper_prefix(keys)) == list(keys)
    mixed = {"conv1.weight": torch.zeros(1), "fc.weight": torch.zeros(1)}
    assert list(without_wrapper_prefix(mixed)) == list(mixed)


def test_weights_that_no_side_loads_are_refused_in_compare(tmp_path):
    """Before: `compare a.onnx b.onnx --weights w.pth` judged the files (their own weights), exit 0, and the report
    recorded w.pth as the weights."""
    weights = tmp_path / "w.pth"
    torch.save({"x": torch.zeros(1)}, weights)
    files = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(b"not read: refused first")
        files.append(str(path))
    result = runner.invoke(app, ["compare", *files, "--weights", str(weights)])
    assert result.exit_code == 2, result.output
    assert "drop --weights" in one_line(result)


def test_the_markdown_report_quotes_the_floors_its_ratios_divide_by(tmp_path):
    """Before: the Markdown page gave each pair as 'N x floor' and never the floor."""
    page = tmp_path / "r.md"
    result = export(tmp_path, "conv", "--markdown", str(page))
    assert result.exit_code == 0, result.output
    line = next(line for line in page.read_text().splitlines() if line.startswith("- `noise floor`"))
    assert np.isfinite(float(line.rsplit("output0 ", 1)[1].split()[0].strip(",")))


def test_a_lightning_checkpoint_of_a_whole_detector_loads(tmp_path):
    """Before (review of hunt 13c): the detector's own checkpoint reader unwrapped only `module.`: a Lightning
    checkpoint ({'state_dict': {'model.backbone...': ...}}) was 'not a ... checkpoint: N missing ... keys'."""
    from exporter.families.detectors import build_detector
    from tests.helpers import NAME

    built = build_detector(NAME)
    wrapped = tmp_path / "detector.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in built.model.state_dict().items()}, "epoch": 1}, wrapped)
    loaded = build_detector(NAME, weights=str(wrapped))
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(),
                                                 built.model.state_dict().values(), strict=True))
