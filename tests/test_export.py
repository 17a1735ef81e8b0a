"""`verify_export` end to end on small backbones and inputs."""

import json

import numpy as np
import pytest

from exporter.export import ExportOptions
from exporter.formats import default_formats
from exporter.formats.onnx import OnnxOptions
from exporter.formats.torchscript import TorchScriptOptions
from exporter.norms import list_norms
from exporter.spec import ModelSpec
from tests.conftest import SMALL, SMALL_SHAPE
from verify.api import RunSettings, verify_export
from verify.judge.compare import AUTO_FACTOR, Tolerance

TINY = (1, 3, 32, 32)


def assert_all_agree(report):
    failing = [(p.a, p.b, p.worst.name, p.worst.ratio) for p in report.pairs if not p.passed]
    assert report.passed, failing
    assert report.exit_code == 0


FROZEN_BODY = ModelSpec(SMALL, "frozen", "body")
"""The export two tests here judge: made once (`frozen_body`)."""


@pytest.fixture(scope="module")
def frozen_body(module_tmp):
    """(report, out folder) of `verify_export` of FROZEN_BODY at SMALL_SHAPE with the default formats."""
    out = module_tmp("frozen-body")
    return verify_export(FROZEN_BODY, RunSettings(shape=SMALL_SHAPE), out=out), out


@pytest.mark.parametrize("view", ["body", "fpn", "trunk"])
@pytest.mark.parametrize("norm", list_norms())
def test_every_norm_and_view_passes(norm, view, tmp_path, frozen_body):
    spec = ModelSpec(SMALL, norm, view)
    report = (frozen_body[0] if spec == FROZEN_BODY else
              verify_export(spec, RunSettings(shape=SMALL_SHAPE), out=tmp_path))
    assert_all_agree(report)
    runs = [r.label for r in report.runs]
    assert len(runs) == len(default_formats()) + 1  # eager plus one runtime per exported format
    expected = {(b, a) for i, a in enumerate(runs) for b in runs[i + 1:]} | {(r, "oracle") for r in runs}
    assert {(p.a, p.b) for p in report.pairs} == expected
    # each run against the oracle sits near the floor: rounding, not a loose bound
    assert all(p.worst.ratio < AUTO_FACTOR for p in report.pairs if p.kind == "oracle")


@pytest.mark.parametrize("options", [
    ExportOptions(format_options=(OnnxOptions(exporter="torchscript", opset=17),)),
    ExportOptions(format_options=(TorchScriptOptions(method="trace"),), dynamic=False),
], ids=["legacy-onnx-opset17", "trace-static"])
def test_export_options(options, tmp_path):
    import onnx

    report = verify_export(ModelSpec(SMALL, "frozen", "body"), RunSettings(shape=SMALL_SHAPE), out=tmp_path,
                           export=options)
    assert_all_agree(report)
    model = onnx.load(report.artifacts["onnx"])
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if options.dynamic:
        assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]
        assert model.opset_import[0].version == options.options_for("onnx").opset
        assert json.loads((tmp_path / "resnet18-frozen-body" / "manifest.json").read_text())["files"]["model.onnx"][
            "opset"] == options.options_for("onnx").opset
    else:
        assert [d.dim_value for d in dims] == list(SMALL_SHAPE)


def test_artifact_folder_and_report(frozen_body):
    report, out = frozen_body
    folder = out / "resnet18-frozen-body"
    names = sorted(p.name for p in folder.iterdir())
    from exporter.formats import get_format

    assert names == sorted(["goldens.npz", "manifest.json", *(get_format(f).filename for f in default_formats())])
    assert not [p for p in out.iterdir() if p.name.startswith(".") and "staging" in p.name]
    data = report.to_dict()
    json.dumps(data)  # machine-readable as is
    runs = len(default_formats()) + 1
    assert data["passed"] is True and len(data["pairs"]) == runs * (runs - 1) // 2 + runs
    assert {"torch", "torchvision", "onnx", "onnxruntime", "python"} <= set(data["versions"])
    assert data["settings"]["spec"] == "resnet18:frozen:body"
    assert data["input"]["shape"] == list(SMALL_SHAPE)
    first = data["pairs"][0]["outputs"][0]
    assert {"max_abs", "max_rel", "mismatch_fraction", "worst_index", "ratio", "floor"} <= set(first)


def test_decimal_mode_fails_rounding_and_says_so(tmp_path):
    """assert_almost_equal's decimal=7 fails correct exports; the note explains it is rounding."""
    report = verify_export(ModelSpec(SMALL, "frozen", "body"),
                           RunSettings(shape=SMALL_SHAPE, tolerance=Tolerance.from_options(decimal=7)),
                           out=tmp_path)
    assert report.exit_code == 1
    failing = [p for p in report.pairs if not p.passed]
    assert failing and all(p.worst.ratio < AUTO_FACTOR for p in failing)
    assert any("this is rounding" in note and "decimal=" in note for note in report.notes)


def test_input_file_is_used(tmp_path):
    x = np.random.default_rng(7).standard_normal((2, 3, 48, 40)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    report = verify_export(ModelSpec(SMALL, "batch", "trunk"), RunSettings(input_file=tmp_path / "x.npy"),
                           out=tmp_path / "out")
    assert_all_agree(report)
    assert report.input["shape"] == [2, 3, 48, 40]
    assert report.pairs[0].outputs[0].shape_a == [2, 512, 2, 2]
