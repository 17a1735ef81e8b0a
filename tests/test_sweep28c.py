"""Sweep 28c: trust in detector folders and in results read back from disk (the matrix cache, shard reports).

- A whole detector's unsigned folder had no unmapped-module rule (review 24 held backbone folders to it): its ONNX
  file with one conv's weight off by 0.1 % in one channel and that conv's nodes stripped of their module scopes,
  rehashed, passed `verify artifact --rebuild --trust-unsigned-code` (201 of 202 layers re-run, the conv among "ops
  outside every layer"), exit 0.
- A stored integer or boolean output was judged again on its float floor (one float32 ulp of its largest value), where
  the comparator judges it exactly: an int64 id near 2**24 one apart (a floor of 2) failed only on its stored count,
  named "(edited numbers)", and with that count edited to 0 it passed.
- An integer past a float (valid JSON) in a shard report or a cached cell ended the merge, and the matrix, in
  "unexpected OverflowError ... please report it"."""

from __future__ import annotations

import json

import numpy as np
import pytest

from exporter.errors import UsageError
from tests.helpers import (
    ONE_CHANNEL_ERROR,
    checks,
    edit_manifest,
    invoke,
    linked_copy,
    rehash,
    rewrite,
    strip_signature,
)
from verify.detect.export import FILE_NAMES
from verify.folder.layers import UNSIGNED_UNMAPPED
from verify.judge.compare import AUTO_FACTOR, DISCRETE_NOTE, Tolerance, compare_arrays
from verify.judge.layers import LAYERS_ENV
from verify.matrix.judging import judge_output

ONNX, SCRIPTED = FILE_NAMES["onnx"], FILE_NAMES["torchscript"]
BUG_LAYER = "backbone.body.14.block.0.0"
"""The conv of the suite's detector whose 0.1 % one-channel error its outputs' verdict lets pass (hunt 22a)."""


# Detector folders: every weighted module of the rebuilt detector re-run --------------------------------------------
@pytest.fixture(scope="module")
def unscoped(detector_export, tmp_path_factory):
    """The suite's detector folder, unsigned and ONNX only (its TorchScript file dropped from the manifest too), its
    ONNX file with the largest output channel of BUG_LAYER's weight off by ONE_CHANNEL_ERROR and every node reading
    that weight stripped of its module scope (the legacy exporter's scoped node name), rehashed: a consistent folder
    again."""
    import onnx
    from onnx import numpy_helper

    where = tmp_path_factory.mktemp("sweep28c")
    folder = strip_signature(linked_copy(detector_export[1], where))
    (folder / SCRIPTED).unlink()
    edit_manifest(folder, lambda data: data["files"].pop(SCRIPTED))
    model = onnx.load(str(folder / ONNX))
    init = next(i for i in model.graph.initializer if i.name == f"{BUG_LAYER}.weight")
    weight = numpy_helper.to_array(init).copy()
    weight[int(np.abs(weight.reshape(len(weight), -1)).sum(axis=1).argmax())] *= 1 + ONE_CHANNEL_ERROR
    init.CopyFrom(numpy_helper.from_array(weight, init.name))
    nodes = [node for node in model.graph.node if init.name in node.input]
    assert nodes and all(node.name.startswith("/") for node in nodes)  # scoped as the exporter wrote them
    for i, node in enumerate(nodes):
        node.name = f"node_unscoped_{i}"
        kept = [p for p in node.metadata_props if p.key not in ("pkg.torch.onnx.name_scopes", "namespace")]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    onnx.save(model, str(where / "unscoped.onnx"))
    rewrite(folder / ONNX, (where / "unscoped.onnx").read_bytes())
    (where / "unscoped.onnx").unlink()
    rehash(folder, ONNX)
    return folder


def test_an_unsigned_detector_file_whose_edited_conv_lost_its_scopes_fails(unscoped, tmp_path, monkeypatch):
    """Before: `verify artifact --rebuild` passed every check ("every one of 201 layers of detector.onnx is within
    5x"), exit 0. Now the ONNX file fails, naming the conv it left unmapped; every other check passes: the outputs
    let the edit through. (An honest unsigned detector file re-runs every weighted module: tests/test_hunt24b.py's
    TorchScript file passes under the rule.)"""
    monkeypatch.delenv(LAYERS_ENV)  # the layer verdict by default, as outside the suite
    report = tmp_path / "a.json"
    result = invoke("artifact", unscoped, "--rebuild", "--json", report)
    assert result.exit_code == 1, result.output
    found = {c["name"]: c for c in checks(report)}
    layers = found.pop(f"{ONNX}: layers")
    assert not layers["passed"] and layers["details"]["layers"]["unmapped"] == [BUG_LAYER]
    assert UNSIGNED_UNMAPPED.format(names=BUG_LAYER) in layers["message"]
    assert all(layer["ratio"] <= AUTO_FACTOR for layer in layers["details"]["layers"]["layers"])  # re-run: all pass
    assert any(name.startswith("before NMS: onnxruntime") for name in found)
    assert all(c["passed"] for c in found.values()), [(n, c["message"]) for n, c in found.items() if not c["passed"]]


def _detector_layers(monkeypatch, signed: bool, asked: bool, rerun: list[str]):
    """detector_folder_layers on a stand-in folder whose rebuilt detector is a conv, a frozen norm and a weightless
    anchor generator, its one ONNX file re-running the modules `rerun`, each within its floor."""
    from types import SimpleNamespace

    import torch
    from torchvision.ops.misc import FrozenBatchNorm2d

    import verify.detect.check as check_module
    import verify.folder.layers as layers
    from verify.detect.folder import detector_folder_layers
    from verify.folder.checks import CheckReport
    from verify.judge.layers import Isolation, LayerError

    model = torch.nn.ModuleDict({"conv": torch.nn.Conv2d(3, 4, 3), "norm": FrozenBatchNorm2d(4),
                                 "anchor_generator": torch.nn.Identity()})

    def checked(built, files, image, factor):
        return [Isolation(built.name, ONNX, factor, [LayerError(name, 0, 0.5, 1e-7, 2e-7) for name in rerun],
                          skipped=["anchor_generator"])], []

    monkeypatch.setattr(check_module, "detector_layer_checks", checked)
    monkeypatch.setattr(layers, "layer_files", lambda art, report, names, asked=True: list(names))
    manifest = SimpleNamespace(files={ONNX: SimpleNamespace(format="onnx")}, images=[None],
                               model_files=lambda: [ONNX])
    art = SimpleNamespace(rebuilt=SimpleNamespace(model=model, name="detector"), signature_verified=signed,
                          manifest=manifest, verified={ONNX: None}, images=[None, torch.zeros(3, 8, 8)],
                          label="folder")
    report = CheckReport("artifact")
    detector_folder_layers(art, report, asked)
    return {check.name: check for check in report.checks}[f"{ONNX}: layers"]


@pytest.mark.parametrize("asked", [False, True])
def test_a_detector_folder_is_held_to_every_weighted_module_unless_signed(monkeypatch, asked):
    """Unsigned, by default or with --layers: the norm left out fails the file, named; the conv and the norm re-run
    (the weightless anchor generator never is) pass; a signed folder's files are the export's own, judged as before."""
    left_out = _detector_layers(monkeypatch, False, asked, ["conv"])
    assert not left_out.passed and not left_out.skipped
    assert UNSIGNED_UNMAPPED.format(names="norm") in left_out.message
    assert left_out.details["layers"]["unmapped"] == ["norm"]
    assert _detector_layers(monkeypatch, False, asked, ["conv", "norm"]).passed
    assert _detector_layers(monkeypatch, True, asked, ["conv"]).passed


# Stored integer and boolean outputs: judged exactly again ---------------------------------------------------------
def _stored(actual: np.ndarray, desired: np.ndarray) -> dict:
    """The comparator's record of one output, as a matrix cell stores it (its floor measured as the oracle does)."""
    from verify.judge.measure import measure_floor

    floor = measure_floor(desired, desired if desired.dtype.kind in "biu" else desired.astype(np.float64))
    return json.loads(json.dumps(compare_arrays("ids", actual, desired, Tolerance(), floor).to_dict()))


def test_a_stored_integer_output_one_apart_fails_judged_exactly_whatever_its_count_says():
    """An int64 output near 2**24 (a packed id) one apart at one element: its floor (one float32 ulp of 2**24) is 2,
    so its ratio is 0.5. The comparator fails it exactly; judged again, it failed only on its stored count, as
    "(edited numbers)", and with the count edited to 0 it passed. It fails now, judged exactly, saying so."""
    desired = (np.arange(64, dtype=np.int64) + (1 << 24)).reshape(1, 8, 8)
    actual = desired.copy()
    actual[0, 3, 3] += 1
    stored = _stored(actual, desired)
    assert not stored["passed"] and stored["allowed"] == 0 and stored["ratio"] <= AUTO_FACTOR  # what the merge reads
    said = judge_output(stored, Tolerance())
    assert said.startswith("1 of 64 elements of this integer or boolean output differ, judged exactly")
    assert DISCRETE_NOTE in said and "edited" not in said
    stored["mismatched"] = 0
    assert DISCRETE_NOTE in judge_output(stored, Tolerance())


@pytest.mark.parametrize("dtype", [np.int64, np.bool_])
def test_stored_equal_discrete_outputs_pass_and_a_float_output_is_judged_on_its_floor(dtype):
    """An index or a mask equal on both sides still passes; a float output (its `allowed` the factor times its floor)
    keeps the floor's judgement: within the factor passes."""
    desired = (np.arange(64).reshape(1, 8, 8) % 3).astype(dtype)
    assert judge_output(_stored(desired.copy(), desired), Tolerance()) is None
    scores = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 8, 8)
    nudged = scores.copy()
    nudged[0, 0, 0] = np.nextafter(scores[0, 0, 0], np.float32(2))
    record = _stored(nudged, scores)
    assert record["allowed"] > 0 and judge_output(record, Tolerance()) is None


# Integers past a float, nesting past any report: one line, never an unexpected error --------------------------------
def _report(value_text: str) -> str:
    """A shard report's text whose one pair output's `max_abs` is `value_text` (written as text: JSON's writer would
    need Python's recursion for a deep one)."""
    from verify.matrix.result import SCHEMA, SCHEMA_VERSION

    cell = {"id": "c", "backbone": "resnet18", "norm": "batch", "view": "body", "verdict": "agree",
            "pairs": [{"a": "onnxruntime", "b": "eager", "outputs": [{"max_abs": "HERE"}]}]}
    report = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "settings": {}, "fingerprint": "f", "matrix": [],
              "cells": [cell]}
    return json.dumps(report).replace('"HERE"', value_text)


@pytest.mark.parametrize(("value", "said"), [("1" + "0" * 400, "max_abs holds an integer past int64"),
                                             ("[" * 900 + "]" * 900, "nests deeper than")], ids=["int", "deep"])
def test_a_report_holding_what_no_report_holds_is_refused_in_one_line(tmp_path, value, said):
    """Both are valid JSON a reader takes. An integer of 401 digits ended the merge in "unexpected OverflowError: int
    too large to convert to float ... please report it"; a value nested 900 deep in a cell's `input` or `trust`
    printed "2 of 2 cells agree", then "unexpected RecursionError ... please report it" (exit 2 both). Now each is a
    malformed report, named where, before anything is judged or written."""
    from exporter.messages import MAX_MESSAGE
    from verify.matrix.result import load_result

    path = tmp_path / "shard.json"
    path.write_text(_report(value))
    with pytest.raises(UsageError) as caught:
        load_result(path)
    assert "cells[0].pairs[0].outputs[0].max_abs" in str(caught.value) and said in str(caught.value)
    assert len(str(caught.value)) <= MAX_MESSAGE  # the path to a deep value is cut: one line
    result = invoke("matrix", "merge", path, "--json", tmp_path / "merged.json")
    assert result.exit_code == 2 and said in result.output and "unexpected" not in result.output
    assert "agree" not in result.output and not (tmp_path / "merged.json").exists()


@pytest.mark.parametrize("ratio", [10 ** 400, "DEEP"], ids=["int", "deep"])
def test_a_cached_cell_holding_what_no_report_holds_is_computed_again(tmp_path, ratio):
    """A cache entry is anyone's input: one whose pair ratio was 10**400 (its floors recorded, so it reached the
    judge) raised OverflowError out of the lookup, which `verify matrix` runs before any cell; one nested past any
    report was served as a stored failure. Neither is a stored result now: the cell runs again, as for any entry the
    lookup cannot use."""
    from tests.helpers import request
    from verify.cache import Cache, CacheStats
    from verify.matrix.cell import CellJob, _result_key, lookup_cell
    from verify.matrix.request import cell_id
    from verify.matrix.result import MAX_DEPTH

    cell = request().cells()[0]
    job = CellJob(cell, cell_id(cell), str(tmp_path))
    _, key = _result_key(job, Cache(tmp_path))
    deep: list = []
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    output = {"name": "layer4", "max_abs": 1.0, "floor": 1e-6, "ratio": deep if ratio == "DEEP" else ratio,
              "shape_b": [1, 512, 1, 1]}
    Cache(tmp_path).store("result", key, data={
        "id": job.id, "backbone": "resnet18", "norm": "batch", "view": "body", "verdict": "disagree",
        "pairs": [{"a": "onnxruntime", "b": "torchscript", "kind": "runtime", "outputs": [output]}],
        "noise_floor": {"detail": {"layer4": {"value": 1e-6, "precision": "fp32"}}}})
    assert lookup_cell(job, CacheStats()) == (None, True)


def test_what_reports_hold_is_within_bounds():
    """What the walk refuses is what no report holds: int64's extremes, floats, booleans and MAX_DEPTH levels pass;
    a nesting past Python's recursion limit is walked without recursion."""
    from verify.matrix.result import INT64, MAX_DEPTH, out_of_bounds

    assert out_of_bounds({"a": [1, {"b": INT64 - 1, "c": -INT64}], "d": 1e300, "e": True}) is None
    assert out_of_bounds({"a": [1, {"b": INT64}]}) == "a[1].b holds an integer past int64"
    deep: list = []
    for _ in range(MAX_DEPTH - 1):  # MAX_DEPTH lists, one in the other
        deep = [deep]
    assert out_of_bounds(deep) is None
    assert out_of_bounds([deep]) == f"{'[0]' * MAX_DEPTH} nests deeper than {MAX_DEPTH} levels"
    for _ in range(5000):
        deep = [deep]
    assert "nests deeper than" in out_of_bounds(deep)
