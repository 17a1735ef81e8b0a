"""Hunt 24b: a detector folder's layer verdict, re-run by `verify artifact`. `verify export -b <detector>` runs the
layer verdict by default (hunt 23b), but its folder's check did not: `verify artifact <detector folder> --rebuild
--layers` was refused (exit 2), and `--rebuild` alone judged the outputs only, so an ONNX file with a 0.1 % one-channel
weight error that the outputs' verdict lets pass (3.3x the floor), rehashed into the manifest, passed every check of
that file.
Now each file's layers are re-run alone on the rebuilt detector's float64 values for an image this run drew
(verify/detect/folder.py `detector_folder_layers`, through check.py `detector_layer_checks`): asked for with `--layers`,
and by default with `--rebuild`, best effort, as the export runs it."""

from __future__ import annotations

import numpy as np
import pytest

from exporter.errors import UsageError
from tests.helpers import (
    ONE_CHANNEL_ERROR,
    checks,
    invoke,
    linked_copy,
    rehash,
    rewrite,
    scaled_onnx_weight,
    strip_signature,
)
from verify.detect.export import FILE_NAMES
from verify.folder.checks import CheckReport
from verify.folder.integrity import INTEGRITY
from verify.folder.layers import LAYERS_RUNTIME
from verify.folder.rebuild import REBUILD_CHECK
from verify.judge.compare import AUTO_FACTOR
from verify.judge.layers import LAYERS_ENV

ONNX, SCRIPTED = FILE_NAMES["onnx"], FILE_NAMES["torchscript"]
BUG_LAYER = "backbone.body.14.block.0.0"
"""The conv whose 0.1 % one-channel error the outputs' verdict lets pass (tests/test_hunt23b.py, hunt 22a)."""


@pytest.fixture(scope="module")
def seeded(detector_export, tmp_path_factory):
    """The suite's detector folder, unsigned, its ONNX file with the largest output channel of BUG_LAYER's weight off
    by ONE_CHANNEL_ERROR and rehashed into the manifest (integrity passes): (the folder, the channel)."""
    import onnx
    from onnx import numpy_helper

    where = tmp_path_factory.mktemp("hunt24b")
    folder = strip_signature(linked_copy(detector_export[1], where))
    model = onnx.load(str(folder / ONNX))
    weight = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == f"{BUG_LAYER}.weight"))
    channel = int(np.abs(weight.reshape(len(weight), -1)).sum(axis=1).argmax())
    scaled_onnx_weight(folder / ONNX, where / "seeded.onnx", f"{BUG_LAYER}.weight", channel, ONE_CHANNEL_ERROR)
    rewrite(folder / ONNX, (where / "seeded.onnx").read_bytes())
    (where / "seeded.onnx").unlink()
    rehash(folder, ONNX)
    return folder, channel


def judged(folder, tmp_path, *extra):
    report = tmp_path / "a.json"
    result = invoke("artifact", folder, "--rebuild", "--json", report, *extra)
    assert report.exists(), result.output
    return result, {c["name"]: c for c in checks(report)}


def assert_only_the_onnx_layers_fail(found, channel):
    """Integrity, the rebuild and every outputs' check pass: the outputs' verdict lets the seeded error through; the
    ONNX file's layer verdict names its layer and channel, far beyond its own floor."""
    layers = found.pop(f"{ONNX}: layers")
    assert found[REBUILD_CHECK]["passed"] and any(c["runtime"] == INTEGRITY for c in found.values())
    assert any(name.startswith("before NMS: onnxruntime") for name in found)
    assert all(c["passed"] for c in found.values() if not c.get("skipped")), \
        [(c["name"], c["message"]) for c in found.values() if not c["passed"]]
    assert not layers["passed"] and BUG_LAYER in layers["message"]
    worst = layers["details"]["layers"]["layers"][0]
    assert worst["module"] == BUG_LAYER and worst["channel"] == channel and worst["ratio"] > 100 * AUTO_FACTOR


def test_rebuild_layers_names_a_one_channel_error_the_outputs_let_pass(seeded, tmp_path):
    """Before: `verify artifact <detector folder> --rebuild --layers` was refused (exit 2, 'a whole detector's folder,
    which the layer verdict (--layers) does not re-run'). Now each file's layers are judged: the TorchScript file's all
    within its own floor, the seeded ONNX file's named (3230x where its outputs stood at 3.3x: exit 1). Asked for, it
    runs whatever BACKBONE_VERIFY_LAYERS says (the suite sets 0)."""
    folder, channel = seeded
    result, found = judged(folder, tmp_path, "--layers", "--trust-unsigned-code")
    assert result.exit_code == 1, result.output
    script = found[f"{SCRIPTED}: layers"]
    assert script["passed"] and len(script["details"]["layers"]["layers"]) > 150 and not script.get("skipped")
    assert_only_the_onnx_layers_fail(found, channel)


def test_rebuild_runs_the_layer_verdict_by_default_best_effort(seeded, tmp_path, monkeypatch):
    """Before: `verify artifact <detector folder> --rebuild` judged the seeded folder's outputs only, and every check of
    its ONNX file passed (with --trust-unsigned-code: exit 0), though the export that wrote such a file fails it by
    default. Now `--rebuild` runs the layer verdict as the export does: the ONNX file fails; the unsigned TorchScript
    file, not loaded, is a skipped layers check (best effort; its load check fails as before)."""
    folder, channel = seeded
    monkeypatch.delenv(LAYERS_ENV)  # the suite turns the default off (tests/conftest.py SUITE_LAYERS)
    result, found = judged(folder, tmp_path)
    assert result.exit_code == 1, result.output
    script = found.pop(f"{SCRIPTED}: layers")
    assert script["skipped"] and "not loaded" in script["message"] and script["runtime"] == LAYERS_RUNTIME
    assert not found.pop(f"{SCRIPTED}: load")["passed"]
    assert_only_the_onnx_layers_fail(found, channel)


def test_without_a_rebuild_or_with_a_bad_setting_the_layer_verdict_is_refused_before_any_work(tmp_path, monkeypatch):
    """The layer verdict's reference is the detector the folder names, built here: without --rebuild none is run (and
    asking for it is refused before any work); BACKBONE_VERIFY_LAYERS other than 0 or 1 is refused before any work, as
    for the export (0 turns the default off: verify/judge/layers.py `layers_by_default`)."""
    from verify.detect import folder as detector_folder

    def never(*args, **kwargs):
        raise AssertionError("the folder was read")

    monkeypatch.setattr(detector_folder, "detector_integrity", never)
    with pytest.raises(UsageError, match="--rebuild"):
        detector_folder.check_detector_folder(tmp_path, CheckReport("artifact"), layers=True)
    monkeypatch.setenv(LAYERS_ENV, "yes")
    with pytest.raises(UsageError, match=LAYERS_ENV):
        detector_folder.check_detector_folder(tmp_path, CheckReport("artifact"), rebuild=True)


def test_preflight_rebuild_layers_judges_a_detector_targets_layers(seeded, tmp_path):
    """Before: `verify preflight <detector folder> --rebuild --layers` was refused (exit 2, 'takes no --layers'),
    where a backbone folder's preflight judges its target's layers. Now the target's layers are re-run on the rebuilt
    detector (`detector_folder_layers`): the seeded ONNX file is NO-GO, its layer named, though its goldens match."""
    report = tmp_path / "p.json"
    result = invoke("preflight", seeded[0], "--rebuild", "--layers", "--runs", "1", "--warmup", "0", "--json", report)
    assert result.exit_code == 1, result.output
    found = {c["name"]: c for c in checks(report)}
    layers = found[f"{ONNX}: layers"]
    assert not layers["passed"] and BUG_LAYER in layers["message"]
    assert "NO-GO" in result.output and f"{SCRIPTED}: layers" not in found
