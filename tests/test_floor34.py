"""Floor 34: guard 3 for a user's model exported only to files no runtime runs in float64 (ONNX; AOTInductor the
same way). Before, each case below exited 0 with a note that the floor was not checked (review 33: an eager-only
noise lifted the floor to 1.27e-4 and an export error of 1e-4 passed at 2.4x); now a private witness of the model,
traced as the file was, measures the floor the model's is held to (verify/judge/file_witness.py)."""

import json

import pytest
from typer.testing import CliRunner

from exporter.formats import file_formats, get_format
from exporter.formats.onnx import OPSETS, OnnxOptions
from tests.helpers import BOUND_CHANNELS, BOUND_CONV_K, BOUND_SHAPE, EAGER_NOISE_MODELS
from verify.cli.app import app
from verify.judge.file_floor import FLOOR_AGREEMENT, NO_FILE_FLOOR, unchecked_note
from verify.judge.file_witness import DYNAMO, EVERY_TRACE, LEGACY, onnx_trace
from verify.judge.trust import evidence_problems, rounding_bound
from verify.runtimes import runtime_class

runner = CliRunner()
NOISE = 0.1 * rounding_bound(BOUND_CONV_K)
"""Under the floor bound (guard 2 lets it through), ~70x this conv's float32 floor (tests/test_file_floor.py)."""
DATA = next(name for name in file_formats() if not get_format(name).executes_code_on_load)
"""The ONNX format, taken from the registry: the one file format that is data."""
DYNAMO_EXPORTER = OnnxOptions().exporter
LEGACY_EXPORTER = next(name for name in OPSETS if name != DYNAMO_EXPORTER)

KEYED = """
import os

import torch
from torch import nn
from torch.ao.quantization import FakeQuantize


class Keyed(nn.Module):
    \"\"\"Noise (`noise` of the output's scale) its export leaves out, keyed on other than is_exporting().\"\"\"

    def __init__(self, key: str, noise: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d({channels}, {channels}, 3, padding=1)
        self.key, self.noise = key, noise
        self.quant = FakeQuantize()  # torch.export cannot trace it (a branch on a buffer); a trace can
        self.quant(torch.randn(1, {channels}, 8, 8))
        self.quant.disable_observer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(self.quant(x) if self.key.startswith("quantized") else x)
        if self.key.endswith("clean"):
            return y
        if self.key == "inference" and not torch.is_inference_mode_enabled():  # exports trace outside it
            return y
        if self.key == "tracing" and torch.jit.is_tracing():  # the legacy exporter traces; torch.export does not
            return y
        if self.key not in ("inference", "tracing") and torch.onnx.is_in_onnx_export():  # torch.onnx.export's own
            return y
        g = torch.Generator().manual_seed(os.getpid())
        return y + self.noise * y.abs().max() * torch.randn(y.shape, generator=g, dtype=y.dtype)


def inference():
    return Keyed("inference", {noise})


def onnx_flag():
    return Keyed("onnx_flag", {noise})


def tracing():
    return Keyed("tracing", {noise})


def quantized():
    return Keyed("quantized", {noise})


def quantized_clean():
    return Keyed("quantized_clean", {noise})
"""


def write(tmp_path, source: str, name: str):
    path = tmp_path / f"{name}.py"
    path.write_text(source.format(channels=BOUND_CHANNELS, noise=repr(NOISE)))
    return path


def export(tmp_path, model: str, *extra: str):
    report = tmp_path / "report.json"
    result = runner.invoke(app, ["export", "--model", model, "--shape", BOUND_SHAPE, "--format", DATA,
                                 "--out", str(tmp_path / "out"), "--json", str(report), *extra])
    return result, json.loads(report.read_text()) if report.exists() else None


def witness_lines(report) -> list[str]:
    return [p for p in report["problems"] if "measures on itself" in p and "witness of the model" in p]


def ratio_of(line: str) -> float:
    return float(line.split(" is ")[1].split("x the one")[0])


def test_the_format_is_one_no_runtime_runs_in_float64():
    """The premise of every case here: nothing in this export could measure a file's own floor before."""
    assert not runtime_class(get_format(DATA).default_runtime).supports_float64


@pytest.fixture(scope="module")
def clean_export(tmp_path_factory):
    """The honest conv of tests/helpers.py EAGER_NOISE_MODELS exported to ONNX alone."""
    tmp_path = tmp_path_factory.mktemp("floor34-clean")
    source = write(tmp_path, EAGER_NOISE_MODELS, "noisy")
    result, report = export(tmp_path, f"{source}:clean")
    return source, tmp_path, result, report


def test_an_honest_model_exported_only_to_onnx_passes_on_its_witness(clean_export):
    """Its witness vouches for its floor: no note that the floor was not checked, and the record re-judges the same."""
    _, _, result, report = clean_export
    assert result.exit_code == 0, result.output
    assert report["problems"] == [] and NO_FILE_FLOOR not in report["notes"], report["notes"]
    labels = [f["label"] for f in report["trust"]["files"]]
    assert labels[0] == "the model" and len(labels) == 2 and "witness of the model (torch.export" in labels[1]
    assert evidence_problems(report["trust"]) == []


@pytest.mark.parametrize("factory, extra", [
    ("noisy:make", ()),  # input-seeded noise under an is_exporting() branch, the dynamic dynamo export
    ("keyed:inference", ()),  # noise only in inference mode: the runs are in it, no trace is
    ("keyed:onnx_flag", ("--static",)),  # the static dynamo export traces inside torch.onnx.export
    ("keyed:onnx_flag", ("--onnx-exporter", LEGACY_EXPORTER)),  # the legacy exporter too
    ("keyed:tracing", ("--onnx-exporter", LEGACY_EXPORTER, "--static")),  # its witness is a trace, as its file is
])
def test_eager_only_noise_is_refused_with_only_an_onnx_file(tmp_path, factory, extra):
    """Before: each exited 0 (`all 3 pairs agree`, NO_FILE_FLOOR noted): the noise was the floor."""
    module, name = factory.split(":")
    source = write(tmp_path, EAGER_NOISE_MODELS if module == "noisy" else KEYED, module)
    result, report = export(tmp_path, f"{source}:{name}", *extra)
    assert result.exit_code == 1, result.output
    lines = witness_lines(report)
    assert len(lines) == 1 and ratio_of(lines[0]) > FLOOR_AGREEMENT, report["problems"]
    flagged = "under torch.onnx's exporting flag" in lines[0]
    assert flagged == (name in ("onnx_flag", "tracing")), lines[0]  # traced as the file was
    assert ("(a trace under" in lines[0]) == (LEGACY_EXPORTER in extra), lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("manifest.json"))


def test_a_model_torch_export_cannot_trace_gets_a_traced_witness(tmp_path):
    """FakeQuantize: torch.export fails, the legacy exporter traces it; the witness is a TorchScript trace under
    torch.onnx's flag, which refuses the noisy model and passes the honest one."""
    source = write(tmp_path, KEYED, "keyed")
    result, report = export(tmp_path, f"{source}:quantized", "--onnx-exporter", LEGACY_EXPORTER, "--static")
    assert result.exit_code == 1, result.output
    lines = witness_lines(report)
    assert len(lines) == 1 and "(a trace under torch.onnx's exporting flag" in lines[0], report["problems"]
    (tmp_path / "clean").mkdir()
    legacy = ("--onnx-exporter", LEGACY_EXPORTER, "--static")
    result, report = export(tmp_path / "clean", f"{source}:quantized_clean", *legacy)
    assert result.exit_code == 0, result.output
    assert NO_FILE_FLOOR not in report["notes"]


def test_a_witness_that_cannot_run_in_float64_keeps_the_note(tmp_path):
    """An export that casts to float32 (torch.export bakes `x.float()`): no witness runs in float64, so the report
    says the floor was not checked (still open: eager-only noise beside such a cast exits 0)."""
    source = write(tmp_path, EAGER_NOISE_MODELS, "noisy")
    result, report = export(tmp_path, f"{source}:casts")
    assert result.exit_code == 0, result.output
    assert NO_FILE_FLOOR in report["notes"] and "files" not in report["trust"]


def compare(model: str, file, report):
    return runner.invoke(app, ["compare", model, str(file), "--shape", BOUND_SHAPE, "--json", str(report)])


def test_compare_holds_a_user_model_to_its_witnesses(clean_export):
    """Before: `verify compare noisy.py:make clean/model.onnx` exited 0 and noted the floor was not checked."""
    source, tmp_path, result, _ = clean_export
    assert result.exit_code == 0, result.output
    onnx = next((tmp_path / "out").rglob(get_format(DATA).filename))
    report = tmp_path / "compare.json"
    result = compare(f"{source}:make", onnx, report)
    assert result.exit_code == 1, result.output
    data = json.loads(report.read_text())
    lines = witness_lines(data)
    assert len(lines) == len(EVERY_TRACE) and all(ratio_of(line) > FLOOR_AGREEMENT for line in lines), data["problems"]
    assert unchecked_note(onnx.name) not in data["notes"]
    result = compare(f"{source}:clean", onnx, report)
    assert result.exit_code == 0, result.output
    assert unchecked_note(onnx.name) not in json.loads(report.read_text())["notes"]


def test_which_files_were_traced_inside_torch_onnx_export(clean_export):
    """The dynamic dynamo file exports the shared torch.export trace; a static dynamo one traced inside
    torch.onnx.export with torch.export, a legacy one with torch.jit.trace, as recorded in the file."""
    from dataclasses import replace

    from exporter.formats import open_artifact

    _, tmp_path, _, _ = clean_export
    meta = open_artifact(next((tmp_path / "out").rglob(get_format(DATA).filename))).meta
    assert meta.dynamic_axes and onnx_trace(meta) is None
    assert onnx_trace(replace(meta, dynamic_axes={})) == DYNAMO
    assert onnx_trace(replace(meta, exporter=meta.exporter.replace("dynamo=True", "dynamo=False"))) == LEGACY
    assert onnx_trace(replace(meta, exporter="torch.export.export")) is None
