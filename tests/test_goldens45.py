"""Goldens 45: a backbone folder's goldens keep every input the export judged on (as many as fit
GOLDENS_BUDGET_BYTES, at least the first), and plain `verify artifact` / `verify preflight` judge every file on every
stored input on the floors pooled over them. Before, the goldens kept `normal0` alone: a 1 % error in one output
channel of the last convolution, in a channel that is 0 after the ReLU on normal0, passed plain `verify artifact`.
Each test edits an ONNX-only hard-linked copy of the suite's shared default export (SUITE_SAMPLES inputs)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from exporter.errors import ArtifactError
from exporter.manifest import (
    GOLDENS_MORE_KEYS,
    GOLDENS_NAME,
    MANIFEST_NAME,
    GoldenSet,
    goldens_that_fit,
    parse_manifest,
    read_golden_sets,
    write_goldens,
)
from tests.conftest import SUITE_SAMPLES
from tests.helpers import checks, edit_manifest, invoke, onnx_only, rehash, scaled_onnx_weight
from verify.judge.measure import measure_floors
from verify.judge.oracle import channel_floors_sha256, pooled_floors

DEAD_CHANNEL_ERROR = 0.01
"""The file bug: one output channel of the last convolution (layer4.1.conv2) scaled by 1 %."""
LAST_CONV = "layer4.1.conv2.weight"
ONNX_FILE = "model.onnx"


def manifest(folder) -> dict:
    return json.loads((folder / MANIFEST_NAME).read_text())


def golden_sets(folder) -> list[dict]:
    return read_golden_sets(folder / GOLDENS_NAME, len(manifest(folder)["goldens"].get("inputs") or [None]))


def rewrite(folder, sets: list[dict]) -> None:
    """The goldens rewritten to hold `sets`, every record updated to match (layout, hash, floors pooled as `verify
    artifact` re-derives them): a consistent folder."""
    (name, x), = sets[0]["input"].items()
    (folder / GOLDENS_NAME).unlink()
    write_goldens(folder, name, x, sets[0]["float32"], sets[0]["float64"], sets[0]["folded"] or None,
                  more=[GoldenSet(s["input"][name], s["float32"], s["float64"], s["folded"]) for s in sets[1:]])
    floors = pooled_floors([measure_floors(s["float32"], s["float64"], samples=[s["folded"]] if s["folded"] else [])
                            for s in sets])

    def change(data):
        data.update(noise_floor={k: f.value for k, f in floors.items()}, channel_floors_sha256=channel_floors_sha256(
            floors))
        labels = data["goldens"].pop("inputs", None)
        data["goldens"].pop("more", None)
        if len(sets) > 1:
            data["goldens"].update(inputs=labels[:len(sets)], more=GOLDENS_MORE_KEYS)
    edit_manifest(folder, change)
    rehash(folder, GOLDENS_NAME)


def copy(default_export, where, name: str):
    return onnx_only(shutil.copytree(default_export, where / name / default_export.name, copy_function=os.link))


def results(folder, tmp_path, *command) -> tuple[int, dict[str, dict]]:
    report = tmp_path / f"r{len(list(tmp_path.glob('r*.json')))}.json"
    result = invoke(*(command or ("artifact",)), folder, "--json", report)
    return result.exit_code, {c["name"]: c for c in checks(report)}


@pytest.fixture(scope="module")
def dead_channel(default_export) -> int:
    """A channel of layer4 that is 0 everywhere on normal0 (the first input) and largest on some other input."""
    sets = golden_sets(default_export)
    first = sets[0]["float64"]["layer4"][0]
    others = np.max([s["float64"]["layer4"][0].reshape(first.shape[0], -1).max(axis=1) for s in sets[1:]], axis=0)
    dead = np.flatnonzero((first == 0).all(axis=(1, 2)))
    return int(dead[np.argmax(others[dead])])


def test_the_export_keeps_every_input_it_judged_on(default_export):
    data = manifest(default_export)
    labels = data["goldens"]["inputs"]
    assert len(labels) == data["identity"]["input"]["count"] == SUITE_SAMPLES  # all fit the budget
    assert labels[0].startswith("normal0") and data["goldens"]["more"] == GOLDENS_MORE_KEYS
    sets = golden_sets(default_export)
    assert len(sets) == SUITE_SAMPLES
    assert len({s["input"]["input"].tobytes() for s in sets}) == SUITE_SAMPLES  # distinct inputs, same shape


def test_a_dead_channel_on_normal0_fails_now_and_passed_with_one_golden(default_export, dead_channel, tmp_path):
    """The same broken file in the folder as exported (every input) and in the folder as exported before (the
    goldens of normal0 alone, floors re-derived on it): the latter is how this defect passed."""
    now, before = copy(default_export, tmp_path, "now"), copy(default_export, tmp_path, "before")
    rewrite(before, golden_sets(before)[:1])
    for folder in (now, before):
        path = folder / ONNX_FILE
        scaled_onnx_weight(path, tmp_path / "scaled.onnx", LAST_CONV, dead_channel, DEAD_CHANNEL_ERROR)
        path.unlink()
        shutil.move(tmp_path / "scaled.onnx", path)
        rehash(folder, ONNX_FILE)
    code, found = results(now, tmp_path)
    assert code == 1
    for kind in ("float32", "float64"):
        check = found[f"{ONNX_FILE}: goldens {kind}"]
        assert not check["passed"], check
        assert check["details"]["inputs"] == SUITE_SAMPLES and "normal0" not in check["details"]["input"]
        assert check["details"]["failed_inputs"] and not any(i.startswith("normal0")
                                                             for i in check["details"]["failed_inputs"])
        assert f"worst of {SUITE_SAMPLES} inputs" in check["message"]
    code, found = results(before, tmp_path)
    assert code == 0, found  # one golden input: the channel is 0 on it either way
    code, found = results(now, tmp_path, "preflight")
    assert code == 1 and not found[f"{ONNX_FILE}: goldens"]["passed"]


def test_an_honest_folder_passes_on_every_input_and_an_old_single_input_folder_still_verifies(default_export,
                                                                                               tmp_path):
    honest, old = copy(default_export, tmp_path, "honest"), copy(default_export, tmp_path, "old")
    rewrite(old, golden_sets(old)[:1])
    assert "inputs" not in manifest(old)["goldens"]  # the layout of every folder written before
    code, found = results(honest, tmp_path)
    assert code == 0, found
    assert found[f"{ONNX_FILE}: goldens float64"]["details"]["inputs"] == SUITE_SAMPLES
    assert f"{SUITE_SAMPLES} inputs" in found[f"{GOLDENS_NAME}: content"]["message"]
    code, found = results(old, tmp_path)
    assert code == 0, found
    assert "inputs" not in found[f"{ONNX_FILE}: goldens float64"]["details"]


def test_the_budget_keeps_at_least_the_first_input(monkeypatch):
    import exporter.manifest

    one = GoldenSet(np.zeros((1, 3, 4, 4), np.float32), {"y": np.zeros((1, 2), np.float32)},
                    {"y": np.zeros((1, 2), np.float64)})
    sets = [one] * 4
    monkeypatch.setattr(exporter.manifest, "GOLDENS_BUDGET_BYTES", 1)
    assert goldens_that_fit(sets) == 1
    monkeypatch.setattr(exporter.manifest, "GOLDENS_BUDGET_BYTES", 2 * one.nbytes + 1)
    assert goldens_that_fit(sets) == 2
    monkeypatch.setattr(exporter.manifest, "GOLDENS_BUDGET_BYTES", 4 * one.nbytes)
    assert goldens_that_fit(sets) == 4


@pytest.mark.parametrize("index", [0, SUITE_SAMPLES - 1])
def test_an_edited_golden_of_any_input_fails_as_input_0s_does(default_export, tmp_path, index):
    """Unhashed: the goldens' sha256. Rehashed: the floors re-derived from them. Rewritten consistently (floors
    re-derived and recorded): the file is judged against them, and that input is named."""
    folder = copy(default_export, tmp_path, "edited")
    at = f"@{index}" if index else ""
    with np.load(folder / GOLDENS_NAME) as data:
        arrays = {key: data[key] for key in data.files}
    arrays[f"float32{at}.layer1"] = arrays[f"float32{at}.layer1"] * np.float32(1.01)
    (folder / GOLDENS_NAME).unlink()
    np.savez(folder / GOLDENS_NAME, **arrays)
    code, found = results(folder, tmp_path)
    assert code == 1 and not found[GOLDENS_NAME]["passed"] and "sha256" in found[GOLDENS_NAME]["message"]
    rehash(folder, GOLDENS_NAME)
    code, found = results(folder, tmp_path)
    assert code == 1 and not found["noise floors"]["passed"], found["noise floors"]
    sets = golden_sets(default_export)
    sets[index]["float64"]["layer1"] = sets[index]["float64"]["layer1"] * 1.01
    sets[index]["float32"]["layer1"] = sets[index]["float32"]["layer1"] * np.float32(1.01)
    sets[index]["folded"]["layer1"] = sets[index]["folded"]["layer1"] * np.float32(1.01)
    rewrite(folder, sets)
    code, found = results(folder, tmp_path)
    check = found[f"{ONNX_FILE}: goldens float64"]
    assert code == 1 and not check["passed"] and check["details"]["failed_inputs"] == [check["details"]["input"]]
    assert check["details"]["input"] == manifest(folder)["goldens"]["inputs"][index]


def test_a_member_of_an_input_the_manifest_does_not_keep_is_refused(default_export, tmp_path):
    folder = copy(default_export, tmp_path, "extra")
    with np.load(folder / GOLDENS_NAME) as data:
        arrays = {key: data[key] for key in data.files}
    arrays[f"float32@{SUITE_SAMPLES}.layer1"] = arrays["float32.layer1"]
    (folder / GOLDENS_NAME).unlink()
    np.savez(folder / GOLDENS_NAME, **arrays)
    rehash(folder, GOLDENS_NAME)
    with pytest.raises(ArtifactError, match=f"outside the {SUITE_SAMPLES} inputs"):
        golden_sets(folder)
    code, found = results(folder, tmp_path)
    assert code == 1 and not found[f"{GOLDENS_NAME}: content"]["passed"]


def test_the_layout_names_its_inputs_and_their_keys_together(default_export):
    data = manifest(default_export)
    data["goldens"].pop("more")
    with pytest.raises(ArtifactError, match="inputs and more are given together"):
        parse_manifest(json.dumps(data))
    data["goldens"].pop("inputs")
    assert parse_manifest(json.dumps(data)).goldens.count == 1  # an older folder's layout
