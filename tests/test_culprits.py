"""A failed verdict names the layer (verify/explain/isolate.py name_culprits): when `verify compare` finds A and B
apart, or `verify export` finds one of its own files apart from the model, every layer of the file is re-run
alone on the torch model's float64 inputs, and the layers that differ on their own are named in the report's
notes and its JSON `isolated`. A passing report carries no `isolated` key; a pair isolation cannot read is said
in a note, and the verdict stays what it was."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import SMALL, SMALL_SHAPE
from tests.helpers import CULPRIT_CHANNEL, CULPRIT_LAYER, edit_onnx_exports, invoke, scaled_onnx_channel

SPEC = f"{SMALL}:frozen:body"
SHAPE = "x".join(map(str, SMALL_SHAPE))
LAYER, CHANNEL = CULPRIT_LAYER, CULPRIT_CHANNEL


def seed_bug(path, out) -> None:
    """`path` with one output channel of LAYER's weight off by ONE_CHANNEL_ERROR, saved to `out`."""
    scaled_onnx_channel(path, out)


def report_of(tmp_path, *args) -> tuple[int, dict]:
    path = tmp_path / "report.json"
    result = invoke(*args, "--json", path)
    return result.exit_code, json.loads(path.read_text())


def test_a_failed_compare_names_the_edited_layer(default_export, tmp_path):
    bad = tmp_path / "bad.onnx"
    seed_bug(default_export / "model.onnx", bad)
    code, report = report_of(tmp_path, "compare", bad, SPEC, "--shape", SHAPE)
    assert code == 1
    (isolated,) = report["isolated"]
    assert isolated["named"] == [LAYER] and isolated["layers"][0]["channel"] == CHANNEL
    assert any(note.startswith("isolated: 1 of") and LAYER in note for note in report["notes"])


def test_a_passing_compare_isolates_nothing(default_export, tmp_path):
    code, report = report_of(tmp_path, "compare", default_export / "model.onnx", SPEC, "--shape", SHAPE)
    assert code == 0 and "isolated" not in report
    assert not any(note.startswith("isolated") for note in report["notes"])


def test_two_files_apart_keep_their_verdict_and_say_why_nothing_was_isolated(default_export, tmp_path):
    bad = tmp_path / "bad.onnx"
    seed_bug(default_export / "model.onnx", bad)
    code, report = report_of(tmp_path, "compare", bad, default_export / "model.onnx", "--shape", SHAPE)
    assert code == 1 and "isolated" not in report
    assert any("its layers were not isolated" in note and "torch model" in note for note in report["notes"])


@pytest.fixture
def buggy_onnx_exporter(monkeypatch):
    """The ONNX exporter stands in for an exporter bug: its file is written with one channel off."""
    edit_onnx_exports(monkeypatch, lambda path: seed_bug(path, path))


def test_an_export_whose_file_is_off_names_the_layer(tmp_path, buggy_onnx_exporter):
    """The legacy ONNX exporter writes the file (half this test's time went to dynamo's trace and decompositions):
    what is shown here is the export's own isolation of its file; a dynamo file's layer is named by the compare tests
    above."""
    code, report = report_of(tmp_path, "export", "-b", SMALL, "--shape", SHAPE, "--format", "onnx",
                             "--onnx-exporter", "torchscript", "--out", tmp_path / "out")
    assert code == 1
    (isolated,) = report["isolated"]
    assert isolated["candidate"].endswith("model.onnx") and isolated["named"][0] == LAYER
    assert np.isfinite(isolated["layers"][0]["ratio"])
    assert all(run["artifact"].startswith(str(tmp_path / "out" / f"{SMALL}-frozen-body")) for run in report["runs"]
               if run["label"] != "eager"), "runs name their files where they are, not the staging folder"


def test_the_pytest_plugin_names_the_layer_of_a_file_that_differs(tmp_path, buggy_onnx_exporter):
    """`assert_exports_agree` fails with the same culprit note, isolated against the caller's own module (which no
    name resolves: it is built again from the plugin's spec)."""
    import torch

    from exporter.backbones import build_model
    from exporter.spec import ModelSpec
    from exporter.weights import load_weights
    from verify.inputs import make_input
    from verify.pytest_plugin import assert_exports_agree

    module = build_model(ModelSpec(SMALL, "frozen", "body"), load_weights("synthetic", SMALL)).model
    # a seeded example: torch's global RNG is seeded anew in every process (the bug's ratio was 35x-129x over 6 seeds)
    example = torch.from_numpy(make_input(SMALL_SHAPE, 0))
    with pytest.raises(AssertionError) as failed:
        assert_exports_agree(module, example, out=tmp_path, formats=["onnx"], onnx_exporter="torchscript")
    message = str(failed.value)
    assert "isolated: 1 of" in message and LAYER in message, message
