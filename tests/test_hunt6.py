"""Hunt on the culprit naming of failed reports (verify/explain/isolate.py `failing_files`, `name_culprits`,
`culprit_note`): only the files that differ from the float64 oracle are isolated; a file isolation cannot read is the
side named; a folded norm is named with its conv; a graph without module scopes draws no conclusion; layers of
another shape are reported as such instead of ending the isolation with a runtime's raw error."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import SMALL, SMALL_SHAPE
from tests.helpers import invoke
from verify.explain.isolate import ORACLE_PAIR, failing_files, name_culprits
from verify.explain.rerun import NO_LAYERS
from verify.judge.compare import AUTO_FACTOR, OutputComparison, PairResult
from verify.judge.layers import Isolation, LayerError, culprit_note
from verify.report import Report, RunRecord
from verify.settings import RunSettings

SPEC = f"{SMALL}:frozen:body"
FILES = {"torchscript": "out/model.pt", "exported": "out/model.pt2", "onnxruntime": "out/model.onnx"}


def report_of(tmp_path, *args) -> tuple[int, dict]:
    path = tmp_path / "report.json"
    result = invoke(*args, "--json", path)
    return result.exit_code, json.loads(path.read_text())


def pair(a: str, b: str, passed: bool, kind: str = "runtime") -> PairResult:
    shape = list(SMALL_SHAPE)
    return PairResult(a, b, [OutputComparison("layer2", shape, shape, passed)], kind)


def export_report(off: str) -> Report:
    """An export report in which run `off` alone computes something else: it fails against every other run and the
    oracle, as `verify export` pairs them."""
    labels = ["eager", *FILES]
    pairs = [pair(a, b, off not in (a, b)) for i, a in enumerate(labels) for b in labels[:i]]
    pairs += [pair(label, "oracle", label != off, ORACLE_PAIR) for label in labels]
    runs = [RunRecord("eager", f"{SPEC} (eager)", 0.0), *[RunRecord(k, v, 0.0) for k, v in FILES.items()]]
    return Report("export", {"spec": SPEC}, {}, runs=runs, pairs=pairs, artifacts=dict(FILES))


def test_an_export_isolates_only_the_file_that_differs_from_the_oracle():
    """Before: every file of a failed pair was isolated, so the .pt2 that agreed got 'the difference builds up
    across layers' and the TorchScript file 'its layers were not isolated'."""
    assert failing_files(export_report("onnxruntime")) == [FILES["onnxruntime"]]
    assert failing_files(export_report("exported")) == [FILES["exported"]]


def test_without_a_failed_oracle_pair_every_file_of_a_failed_pair_is_isolated():
    report = export_report("nothing")
    report.pairs[0] = pair(report.pairs[0].a, report.pairs[0].b, False)
    failed = {report.pairs[0].a, report.pairs[0].b}
    assert failing_files(report) == [FILES[label] for label in FILES if label in failed]


def test_a_torchscript_side_is_the_one_isolated_and_named(default_export):
    """Before: with the model as A, the note named the model ('resnet18:frozen:body: its layers were not
    isolated') and spoke of an --isolate flag the user never gave. A TorchScript file's modules are now re-run too
    (each leaf keeps its compiled forward): the file is the candidate, whichever side it was given as."""
    torchscript = str(default_export / "model.pt")
    report = Report("compare", {"a": SPEC, "b": torchscript}, {})
    name_culprits(report, [(SPEC, torchscript)], RunSettings(shape=SMALL_SHAPE))
    (note,) = report.notes
    assert note.startswith("isolated: every one of") and torchscript in note, note
    assert "--isolate" not in note
    (isolated,) = report.isolated
    assert isolated["candidate"] == torchscript and isolated["reference"].startswith(SPEC) and isolated["layers"]


def test_a_culprit_note_names_the_norm_folded_into_the_conv():
    """Before: an ONNX conv with its batch norm folded in was noted as the conv alone, so an error in the norm's
    statistics read as the conv's (render_isolation said 'computed with', the report's note did not)."""
    conv = LayerError("layer2.0.conv2", 0, 2 * AUTO_FACTOR, 1e-3, 1e-7, ["layer2.0.bn2"], 5)
    note = culprit_note(Isolation("ref", "model.onnx", AUTO_FACTOR, [conv]))
    assert "layer2.0.conv2 (computed with layer2.0.bn2)" in note and "channel 5" in note


def test_a_file_without_module_scopes_is_said_not_isolated():
    """Before: an ONNX file whose nodes carry no module scopes got 'every one of 0 layers ... is within 5x its own
    float32 floor; the difference builds up across layers', a conclusion drawn from nothing."""
    note = culprit_note(Isolation("ref", "model.onnx", AUTO_FACTOR, note=NO_LAYERS))
    assert note == f"model.onnx: its layers were not isolated ({NO_LAYERS})"


WIDE = '''
import sys
sys.path.insert(0, {root!r})
from tests.data.tiny import TinyNet, _stage


def make():
    model = TinyNet()
    model.stage1, model.stage2 = _stage(8, 24, 2), _stage(24, 32, 2)
    return model.eval()
'''
"""tests/data/tiny.py:make with a wider stage1: the same module names, other shapes from stage1 on."""


def test_layers_of_another_shape_are_named_not_a_failed_isolation(tmp_path):
    """Before: the first layer that could not take the reference's values ended the whole isolation with the
    runtime's raw error ('its layers were not isolated (Given groups=1, weight of size ...)'; with an ONNX file,
    '[ONNXRuntimeError] : 1 : FAIL : ... Incompatible dimensions'), so no layer was judged."""
    wide = tmp_path / "wide.py"
    wide.write_text(WIDE.format(root=str(Path(__file__).resolve().parents[1])))
    code, report = report_of(tmp_path, "compare", "tests/data/tiny.py:make", f"{wide}:make", "--shape", "1x3x32x32")
    assert code == 1
    (isolated,) = report["isolated"]
    assert isolated["unrunnable"] and isolated["layers"], isolated
    (note,) = [note for note in report["notes"] if "isolated" in note]
    reshaped = isolated["reshaped"]  # the wider stage ran on the reference's values: more channels (sweep 27d)
    refused = len(isolated["unrunnable"]) - len(reshaped)
    assert note.startswith("isolated:") and (not refused or f"{refused} could not run" in note), note
    assert all(f"{path} " in note for path in reshaped) and "returned another shape" in note, note
