"""Verdicts at the deployment's precision, and runs that leave no global torch state behind."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from exporter.api import get_backbone
from exporter.errors import SetupError, UsageError
from exporter.export import ExportOptions, export_model
from exporter.formats.eager import eager_artifact
from exporter.formats.onnx import OnnxOptions
from exporter.spec import ModelSpec
from tests.conftest import SMALL, SMALL_SHAPE, cpu_and_cuda
from verify.api import RunSettings, explain_pairs, verify_export
from verify.inputs import make_input
from verify.judge.compare import AUTO_FACTOR, Tolerance, compare_outputs
from verify.judge.notes import REDUCED_PRECISION_RATIOS
from verify.judge.oracle import measure_oracle
from verify.judge.precision import PrecisionProbe, precision_scope
from verify.report import Report
from verify.runtimes import RuntimeOptions, make_runtime


@pytest.fixture(scope="module")
def artifacts(module_tmp):
    built = get_backbone(SMALL, "frozen", "body")
    eager = eager_artifact(built, SMALL_SHAPE)
    x = make_input(SMALL_SHAPE, 0)
    folder = module_tmp("precision")
    found = {"eager": eager}
    for fmt in ("torchscript", "onnx"):
        found[fmt] = export_model(built, eager.meta, torch.from_numpy(x), folder,
                                  ExportOptions(format_options=(OnnxOptions(exporter="torchscript"),)), fmt)
    return found, {"input": x}


def run(name, artifacts, **options):
    found, inputs = artifacts
    runtime = make_runtime(name, RuntimeOptions(**options))
    artifact = next(a for a in found.values() if a.format in runtime.formats)
    return runtime.load(artifact).run(inputs)


def torch_flags():
    return (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32, torch.is_autocast_enabled("cpu"))


# ------------------------------------------------------------------------------------------------
# scoping
# ------------------------------------------------------------------------------------------------


def test_precision_scope_restores_every_flag_it_sets_even_on_error():
    before = torch_flags()
    with precision_scope("fp32", "cpu", tf32=True):
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    assert torch_flags() == before
    with pytest.raises(RuntimeError, match="inside"), precision_scope("bf16", "cpu", tf32=False):
        assert torch.is_autocast_enabled("cpu") and not torch.backends.cudnn.allow_tf32
        raise RuntimeError("inside")
    assert torch_flags() == before


@pytest.mark.parametrize("name", ["eager", "torchscript"])
def test_a_run_leaves_the_torch_flags_as_it_found_them(name, artifacts):
    before = torch_flags()
    for options in ({"tf32": True}, {"tf32": False}, {"precision": "bf16"}):
        run(name, artifacts, **options)
        assert torch_flags() == before, options


@pytest.mark.parametrize("device", cpu_and_cuda())
def test_two_configurations_in_either_order_give_identical_numbers(device, artifacts):
    """Each run sets its own precision and restores the globals: order cannot matter."""
    first = {"device": device, "precision": "bf16"}
    second = {"device": device, "tf32": False}
    forward = [run("eager", artifacts, **first), run("eager", artifacts, **second)]
    backward = [run("eager", artifacts, **second), run("eager", artifacts, **first)]
    for a, b in ((forward[0], backward[1]), (forward[1], backward[0])):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(forward[0]["layer1"], forward[1]["layer1"])  # bf16 really ran


# ------------------------------------------------------------------------------------------------
# bf16 on the CPU: the verdicts
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bf16_report(module_tmp):
    return verify_export(get_backbone(SMALL, "frozen", "body").spec,
                         RunSettings(shape=SMALL_SHAPE, runtime=RuntimeOptions(precision="bf16")),
                         out=module_tmp("bf16"), runtimes=("eager", "torchscript"),
                         export=ExportOptions(formats=("torchscript",)))


def test_eager_and_torchscript_agree_at_bf16(bf16_report):
    report = bf16_report
    assert report.passed, [(p.a, p.b, p.worst.where, p.worst.ratio) for p in report.pairs]
    assert {r.label for r in report.runs} == {"eager(bf16)", "torchscript(bf16)"}
    assert report.precision == "bf16" and report.to_dict()["noise_floor"]["precision"] == "bf16"
    worst = max((p.worst for p in report.pairs if p.kind == "oracle"), key=lambda o: o.ratio)
    low, _ = REDUCED_PRECISION_RATIOS["bf16"]
    assert worst.precision == "bf16" and worst.float32_ratio > low  # bf16 error, by the float32 yardstick
    assert worst.verdict().startswith("agrees at BF16 precision (")
    assert "x the BF16 floor; " in worst.verdict() and "x the float32 floor)" in worst.verdict()


@pytest.fixture(scope="module")
def oracle_and_runs(artifacts):
    found, inputs = artifacts
    fp32 = run("eager", artifacts)
    bf16_oracle = measure_oracle(found["eager"], inputs, fp32, RuntimeOptions(precision="bf16"))
    return fp32, run("eager", artifacts, precision="bf16"), bf16_oracle


def test_a_float32_run_judged_at_bf16_passes(oracle_and_runs):
    fp32, _, oracle = oracle_and_runs
    pair = compare_outputs("eager", fp32, "oracle", oracle.outputs, Tolerance(), oracle.noise, kind="oracle")
    assert pair.passed and pair.worst.precision == "bf16" and pair.worst.ratio < 1


def test_a_bf16_run_judged_at_float32_fails_and_the_note_names_the_precision_flag(oracle_and_runs):
    _, bf16, oracle = oracle_and_runs
    pair = compare_outputs("eager(bf16)", bf16, "oracle", oracle.outputs, Tolerance(), oracle.float32,
                           kind="oracle")
    assert not pair.passed and pair.worst.precision == "fp32" and pair.worst.ratio > AUTO_FACTOR
    report = Report("export", {"tolerance": Tolerance().to_dict(), "tolerance_text": Tolerance().describe(),
                               "runtime": {"device": "cpu"}}, {}, pairs=[pair], floors=oracle.float32)
    (note,) = explain_pairs(report)
    assert "--precision bf16" in note and "float32 noise floor" in note


def test_a_real_error_at_bf16_is_still_beyond_rounding(oracle_and_runs):
    _, bf16, oracle = oracle_and_runs
    broken = {k: v.copy() for k, v in bf16.items()}
    broken["layer2"][0, 3] += 50 * oracle.noise["layer2"].value
    pair = compare_outputs("eager(bf16)", broken, "oracle", oracle.outputs, Tolerance(), oracle.noise)
    report = Report("export", {"tolerance": Tolerance().to_dict(), "tolerance_text": Tolerance().describe(),
                               "runtime": {"device": "cpu"}}, {}, pairs=[pair], floors=oracle.noise)
    (note,) = explain_pairs(report)
    assert not pair.passed and "BF16 noise floor" in note and "beyond rounding" in note


def test_fp16_runs_on_the_cpu_at_fp16(artifacts):
    out = run("eager", artifacts, precision="fp16")
    assert np.isfinite(out["layer4"]).all()
    assert not np.array_equal(out["layer1"], run("eager", artifacts)["layer1"])


# ------------------------------------------------------------------------------------------------
# refusals: a run at another precision than asked is an error, never a pass
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_onnx_runtime_refuses_a_precision_it_cannot_run(precision):
    with pytest.raises(UsageError, match="ONNX Runtime runs the exported float32 graph"):
        make_runtime("onnxruntime", RuntimeOptions(precision=precision))


@pytest.mark.parametrize("name", ["eager", "torchscript", "onnxruntime"])
def test_tf32_on_the_cpu_is_refused(name):
    with pytest.raises(UsageError, match="tf32 is a CUDA precision"):
        make_runtime(name, RuntimeOptions(precision="tf32"))


@pytest.mark.parametrize("name", ["eager", "onnxruntime"])
def test_unknown_precision_is_refused(name):
    with pytest.raises(UsageError, match="Unknown precision 'fp8'"):
        make_runtime(name, RuntimeOptions(precision="fp8"))


def test_the_probe_catches_a_model_that_ignores_autocast():
    class Stubborn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            with torch.autocast("cpu", enabled=False):
                return self.conv(x.float())

    probe = PrecisionProbe()
    with torch.inference_mode(), precision_scope("bf16", "cpu"), probe.watch():
        Stubborn()(torch.ones(1, 3, 8, 8))
    with pytest.raises(SetupError, match="asked for bf16 .* but ran 1 conv"):
        probe.check("bf16", "stubborn")


def test_the_probe_refuses_to_confirm_what_it_did_not_see():
    with pytest.raises(SetupError, match="cannot be confirmed"):
        PrecisionProbe().check("bf16", "nothing")


# ------------------------------------------------------------------------------------------------
# CUDA: TF32 (runs where a GPU is lent)
# ------------------------------------------------------------------------------------------------


@pytest.mark.needs_cuda
@pytest.mark.parametrize("name", ["eager", "torchscript", "onnxruntime"])
def test_tf32_runs_agree_at_tf32_and_not_at_float32(name, artifacts):
    found, inputs = artifacts
    oracle = measure_oracle(found["eager"], inputs, None, RuntimeOptions(device="cuda", precision="tf32"))
    out = run(name, artifacts, device="cuda", precision="tf32")
    at_tf32 = compare_outputs(name, out, "oracle", oracle.outputs, Tolerance(), oracle.noise)
    at_fp32 = compare_outputs(name, out, "oracle", oracle.outputs, Tolerance(), oracle.float32)
    assert at_tf32.passed, at_tf32.worst.verdict()
    assert not at_fp32.passed


def test_a_format_no_runtime_runs_at_the_precision_is_refused_before_any_work(tmp_path, monkeypatch):
    """The default runtimes at bf16 leave ONNX Runtime out: exporting model.onnx into a folder that then
    passes, the file never run, would be a pass for a file nobody verified. Refused, naming what to do."""
    import exporter.weights

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the refusal")

    monkeypatch.setattr(exporter.weights, "load_weights", no_work)
    settings = RunSettings(shape=SMALL_SHAPE, runtime=RuntimeOptions(precision="bf16"))
    with pytest.raises(UsageError, match=r"No runtime runs onnx at bf16 .*--format torchscript --format pt2"):
        verify_export(ModelSpec(SMALL, "frozen", "body"), settings, out=tmp_path)
    assert not any(tmp_path.iterdir())
