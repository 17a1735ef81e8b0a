"""`verify artifact --rebuild` (verify/folder/rebuild.py): an unsigned folder's goldens are its reference, so a
consistent rewrite of them (every hash and floor updated) decides what agrees. Rebuilt from the model the
manifest names, the reference is this run's own: widened floors no longer pass a broken file, an edited float64
golden is named, and a folder that is not the named model's export fails. Each test edits a hard-linked copy of
the suite's shared default export (an edited file is replaced, never written through the link)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from exporter.errors import ArtifactError
from exporter.manifest import GOLDENS_NAME, MANIFEST_NAME, GoldenSet, read_golden_sets, write_goldens
from exporter.weights import save_weights, synthetic_weights
from tests.conftest import SMALL
from tests.helpers import ONE_CHANNEL_ERROR, checks, edit_manifest, invoke, rehash
from verify.folder.rebuild import REBUILD_CHECK, REFERENCE_RTOL, weights_source
from verify.judge.measure import measure_floors
from verify.judge.oracle import channel_floors_sha256, pooled_floors

WIDENED = 1000.0
"""How many times its real rounding the rewritten float32 goldens sit from the float64 ones."""
VISIBLE_ERROR = ONE_CHANNEL_ERROR * 10
"""The seeded file bug: one output channel of the last convolution scaled by 1 %."""


@pytest.fixture
def folder(default_export, tmp_path):
    copy = tmp_path / default_export.name
    shutil.copytree(default_export, copy, copy_function=os.link)
    return copy


def broken_onnx(folder) -> None:
    """model.onnx with one output channel of its last 3x3 convolution off, rehashed into the manifest."""
    path = folder / "model.onnx"
    model = onnx.load(path)
    init = [i for i in model.graph.initializer if i.name.endswith("conv2.weight")][-1]
    weight = numpy_helper.to_array(init).copy()
    weight[int(np.abs(weight).sum(axis=(1, 2, 3)).argmax())] *= 1 + VISIBLE_ERROR
    init.CopyFrom(numpy_helper.from_array(weight, init.name))
    path.unlink()
    onnx.save(model, path)
    rehash(folder, "model.onnx")


def rewrite_goldens(folder, change) -> None:
    """`change(goldens)` edits the groups of each stored input in place; the goldens are rewritten and every record
    updated to match (the goldens' hash, the floors re-derived and pooled as `verify artifact` derives them): a
    consistent folder."""
    count = len(json.loads((folder / MANIFEST_NAME).read_text())["goldens"].get("inputs") or [None])
    sets = read_golden_sets(folder / GOLDENS_NAME, count)
    for goldens in sets:
        change(goldens)
    (folder / GOLDENS_NAME).unlink()
    (name, x), = sets[0]["input"].items()
    write_goldens(folder, name, x, sets[0]["float32"], sets[0]["float64"], sets[0]["folded"] or None,
                  more=[GoldenSet(g["input"][name], g["float32"], g["float64"], g["folded"]) for g in sets[1:]])
    floors = pooled_floors([measure_floors(g["float32"], g["float64"], samples=[g["folded"]] if g["folded"] else [])
                            for g in sets])
    edit_manifest(folder, lambda m: m.update(noise_floor={k: f.value for k, f in floors.items()},
                                             channel_floors_sha256=channel_floors_sha256(floors)))
    rehash(folder, GOLDENS_NAME)


def widen(goldens) -> None:
    for name, fp64 in goldens["float64"].items():
        goldens["float32"][name] = (fp64 + WIDENED * (goldens["float32"][name] - fp64)).astype(np.float32)
    goldens["folded"] = {}


def results(folder, tmp_path, *extra) -> dict[str, dict]:
    report = tmp_path / f"r{len(list(tmp_path.glob('r*.json')))}.json"
    invoke("artifact", folder, "--json", report, *extra)
    return {c["name"]: c for c in checks(report)}


def test_a_fresh_folder_is_its_rebuilt_models_export(folder, tmp_path):
    found = results(folder, tmp_path, "--rebuild")
    assert found[REBUILD_CHECK]["passed"], found[REBUILD_CHECK]
    assert found["model.onnx: goldens float64"]["passed"] and found["model.onnx: goldens float32"]["passed"]


def test_widened_floors_pass_a_broken_file_unless_the_reference_is_rebuilt(folder, tmp_path):
    broken_onnx(folder)
    assert not results(folder, tmp_path)["model.onnx: goldens float64"]["passed"]  # the bug is visible
    rewrite_goldens(folder, widen)
    assert results(folder, tmp_path)["model.onnx: goldens float64"]["passed"]  # the attack, without --rebuild
    rebuilt = results(folder, tmp_path, "--rebuild")
    assert rebuilt[REBUILD_CHECK]["passed"]  # the float64 goldens were left as they were
    assert not rebuilt["model.onnx: goldens float64"]["passed"]
    assert not rebuilt["model.onnx: goldens float32"]["passed"]


def test_an_edited_float64_golden_is_named_and_nothing_is_loaded(folder, tmp_path):
    def shift(goldens):
        name = sorted(goldens["float64"])[-1]
        array = goldens["float64"][name]
        array[0, 0] += 10 * REFERENCE_RTOL * np.abs(array).max()

    rewrite_goldens(folder, shift)
    assert results(folder, tmp_path)["noise floors"]["passed"]  # consistent
    found = results(folder, tmp_path, "--rebuild")
    check = found[REBUILD_CHECK]
    assert not check["passed"] and "golden" in check["message"] and "edited or come from another model" in \
        check["message"]
    assert "not loaded: the folder's reference could not be rebuilt" in found["model.onnx: load"]["message"]


def test_another_checkpoint_fails_the_rebuild_on_its_sha256(folder, tmp_path):
    other = tmp_path / "other.safetensors"
    save_weights(synthetic_weights(SMALL, seed=1), other)
    found = results(folder, tmp_path, "--rebuild", "--checkpoint", other)
    check = found[REBUILD_CHECK]
    assert not check["passed"] and "not an export of the model it names" in check["message"]
    assert "\n" not in check["message"]


def test_weights_this_machine_cannot_reproduce_are_asked_for():
    with pytest.raises(ArtifactError, match="pass that file with --checkpoint FILE"):
        weights_source("file:resnet18.pth", None)
    assert weights_source("synthetic:7", None) == ("synthetic", 7)


def test_a_checkpoint_without_rebuild_is_a_usage_error(folder, tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    result = invoke("artifact", folder, "--checkpoint", weights)
    assert result.exit_code == 2 and "add --rebuild" in result.output


def test_preflight_says_no_go_to_the_broken_file_only_when_rebuilt(folder):
    broken_onnx(folder)
    rewrite_goldens(folder, widen)
    preflight = ("preflight", folder, "--runs", 1, "--warmup", 0)
    assert invoke(*preflight).exit_code == 0  # GO: the widened floors pass the broken file
    rebuilt = invoke(*preflight, "--rebuild")
    assert rebuilt.exit_code == 1 and "NO-GO" in rebuilt.output, rebuilt.output
    verdict = rebuilt.output.strip().splitlines()[-1]  # the NO-GO is the broken file's, the rebuild itself passed
    failed = verdict.partition("; failed: ")[2].split(", ")  # its goldens, and its second shape against the rebuild
    assert verdict.startswith("NO-GO: model.onnx") and "model.onnx: goldens" in failed, verdict
    assert all(name.startswith("model.onnx: ") for name in failed), verdict
    assert "✓ rebuild · reference: rebuilt" in rebuilt.output, rebuilt.output


def test_an_input_chosen_to_hide_a_bug_hides_nothing_from_a_rebuild(folder, tmp_path):
    """The stem convolution scaled by 1 % is invisible on an all-zero input (no bias: it outputs 0 either way).
    Goldens made honestly by the model on zeros, floors re-derived: plain `verify artifact` passes the broken file,
    and a rebuild that judged on the folder's own input would too; a rebuild judges on this run's seeded input."""
    from exporter.backbones import build_model
    from exporter.formats.eager import eager_artifact
    from exporter.spec import ModelSpec
    from exporter.weights import load_weights
    from verify.judge.oracle import folded_samples, measure_oracle
    from verify.runtimes import make_runtime

    path = folder / "model.onnx"
    model = onnx.load(path)
    stem = next(i for i in model.graph.initializer if i.name.split(".")[-2:] == ["conv1", "weight"]
                and "layer" not in i.name)
    stem.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(stem) * np.float32(1 + VISIBLE_ERROR), stem.name))
    path.unlink()
    onnx.save(model, path)
    rehash(folder, "model.onnx")

    made: dict = {}  # the model, built once for every stored input

    def zeros(goldens):
        (name, x), = goldens["input"].items()
        goldens["input"] = {name: np.zeros_like(x)}
        if not made:
            made["eager"] = eager_artifact(build_model(ModelSpec(SMALL, "frozen", "body"),
                                                       load_weights("synthetic", SMALL)), x.shape)
        eager = made["eager"]
        goldens["float32"] = make_runtime("eager").load(eager).run(goldens["input"])
        goldens["float64"] = measure_oracle(eager, goldens["input"], goldens["float32"]).outputs
        goldens["folded"] = (folded_samples(eager, goldens["input"]) or [{}])[0]

    rewrite_goldens(folder, zeros)
    assert results(folder, tmp_path)["model.onnx: goldens float64"]["passed"]  # the hiding input works on its own
    rebuilt = results(folder, tmp_path, "--rebuild")
    assert rebuilt[REBUILD_CHECK]["passed"], rebuilt[REBUILD_CHECK]  # the zero-input goldens are the model's
    assert "seeded input" in rebuilt[REBUILD_CHECK]["message"]
    assert not rebuilt["model.onnx: goldens float64"]["passed"]
