"""Review 21: today's change (hunts 24a-24c) reviewed as a user and as an attacker. `verify artifact --rebuild` runs the
layer verdict by default now, and an AOTInductor package's note (the layer verdict does not read that format) named
the folder's private snapshot, /tmp/backbone-verify-folder-*/model_aoti.pt2, a copy gone once the command ends, where
every other check names the folder's own file (verify/folder/integrity.py failure_reason). The layer checks now show
such a path as the folder's (verify/folder/layers.py `in_folder`), for backbone and detector folders alike."""

from __future__ import annotations

from exporter.artifacts import Artifact
from exporter.formats.eager import eager_artifact
from exporter.user_model import FACTORY_WEIGHTS, UserModelSpec
from verify.explain.rerun import Candidate, layer_checks
from verify.folder.checks import CheckReport
from verify.folder.integrity import SNAPSHOT_PREFIX, snapshot_folder
from verify.folder.layers import LAYERS_RUNTIME, add_layer_checks
from verify.inputs import make_input

MODEL, SHAPE = "tests/data/tiny.py:make", (1, 3, 32, 32)


def test_a_file_the_layer_verdict_cannot_read_is_named_in_the_folder_not_its_snapshot(tmp_path):
    """Before: 'model_aoti.pt2: its layers were not checked (... not aoti (/tmp/backbone-verify-folder-x/
    model_aoti.pt2) ...)', the path of the private copy the check read, removed when the command ends. Now the folder's
    own path, as the load and golden checks of the same file show it."""
    folder = tmp_path / "resnet18-frozen-body"
    folder.mkdir()
    (folder / "model_aoti.pt2").write_bytes(b"package")
    holder = snapshot_folder(folder)  # as verify artifact reads every folder: its private copy
    reference = eager_artifact(UserModelSpec.parse(MODEL).build(0, SHAPE, FACTORY_WEIGHTS), SHAPE)
    package = Artifact("aoti", reference.meta, path=holder.name + "/model_aoti.pt2")
    checks, notes = layer_checks(reference, [Candidate(package, "model_aoti.pt2")], make_input(SHAPE, 0))
    assert not checks and len(notes) == 1 and SNAPSHOT_PREFIX in notes[0], notes  # what the rerun says
    report = CheckReport("artifact")
    add_layer_checks("folder", report, checks, notes, asked=False)
    check, = report.checks
    assert check.skipped and check.name == "model_aoti.pt2: layers" and check.runtime == LAYERS_RUNTIME
    assert str(folder / "model_aoti.pt2") in check.message and SNAPSHOT_PREFIX not in check.message, check.message
    holder.cleanup()
