"""Guard 3 (verify/judge/file_floor.py): a user model's floor is checked against each exported file's own floor,
so noise the eager model adds and its export leaves out is not taken for rounding."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.helpers import BOUND_CHANNELS, BOUND_CONV_K, BOUND_SHAPE, EAGER_NOISE_MODELS
from verify.cli.app import app
from verify.judge.file_floor import FLOOR_AGREEMENT, NO_FILE_FLOOR, FileFloors, agreement_problems, floors_record
from verify.judge.noise_floor import NoiseFloor
from verify.judge.trust import evidence, evidence_problems, rounding_bound

runner = CliRunner()
NOISE = 0.1 * rounding_bound(BOUND_CONV_K)
"""Well under the floor bound (guard 2 lets it through), ~70x this conv's real float32 floor."""


def export(tmp_path, factory: str, *formats: str, extra: tuple[str, ...] = ()):
    source = tmp_path / "noisy.py"
    source.write_text(EAGER_NOISE_MODELS.format(channels=BOUND_CHANNELS, noise=repr(NOISE)))
    report = tmp_path / f"{factory}.json"
    result = runner.invoke(app, ["export", "--model", f"{source}:{factory}", "--shape", BOUND_SHAPE,
                                 *[arg for fmt in formats for arg in ("--format", fmt)],
                                 "--out", str(tmp_path / factory), "--json", str(report), *extra])
    return result, json.loads(report.read_text()) if report.exists() else None


@pytest.mark.parametrize("factory", ["make", "float32_only", "float64_only"])
def test_eager_only_noise_in_any_dtype_is_refused(tmp_path, factory):
    """Before: each exited 0 ('all 3 pairs agree'): the noise, in float32, float64 or both, made the floor ~70x the
    conv's rounding, under the floor bound, and the export without it agreed within it."""
    result, report = export(tmp_path, factory, "pt2")
    assert result.exit_code == 1, result.output
    lines = [p for p in report["problems"] if "measures on itself" in p]
    assert len(lines) == 1 and "model.pt2 in exported" in lines[0], report["problems"]
    ratio = float(lines[0].split("is ")[1].split("x the one")[0])
    assert ratio > FLOOR_AGREEMENT


def test_a_clean_model_passes_with_its_files_floors_recorded(tmp_path):
    result, report = export(tmp_path, "clean", "pt2")
    assert result.exit_code == 0, result.output
    assert report["problems"] == [] and NO_FILE_FLOOR not in report["notes"]
    assert evidence_problems(report["trust"]) == []  # re-judged from the record: the same verdict
    files = report["trust"]["files"]
    assert [f["label"] for f in files] == ["the model", "model.pt2 in exported"]


def test_an_export_bug_is_shown_disagreeing_not_refused_as_unjudged(tmp_path):
    """A file 0.1 % off: exit 1 on its pairs, no guard problem, and its layers isolated (a guard problem would
    have stopped the isolation: `verify export` names layers only where nothing was refused)."""
    result, report = export(tmp_path, "off", "pt2")
    assert result.exit_code == 1, result.output
    assert report["problems"] == [], report["problems"]
    assert not all(pair["passed"] for pair in report["pairs"])
    assert any("model.pt2" in note and "its own float32 floor" in note for note in report["notes"]), report["notes"]


def test_onnx_only_exports_say_the_floor_was_not_checked_where_no_witness_runs_in_float64(tmp_path):
    """Floor 34: an ONNX-only export is held to a private witness; a model whose trace casts to float32 has none that
    runs in float64, and its report still says the floor was not checked."""
    result, report = export(tmp_path, "casts", "onnx")
    assert result.exit_code == 0, result.output
    assert NO_FILE_FLOOR in report["notes"]


def test_a_file_that_cannot_run_in_float64_is_not_judged(tmp_path):
    """Its floor could not be checked: an export whose graph casts to float32 is refused, fail closed."""
    result, report = export(tmp_path, "casts", "pt2")
    assert result.exit_code == 1, result.output
    lines = [p for p in report["problems"] if "could not run in float64" in p]
    assert lines and "add --format torchscript" in lines[0], report["problems"]
    assert not any("No file floors are recorded" in p for p in report["problems"])  # recorded: what could not run
    assert report["trust"]["unrunnable"] == lines


def test_a_user_model_at_bf16_is_held_to_its_float32_floors(tmp_path):
    """Before (review of hunt 13a): every user model at --precision bf16 was refused: the record kept the model's
    bf16 floor beside the file's float32 one ('6.55e+04x'), and the parent re-derived guard 3 from it."""
    result, report = export(tmp_path, "clean", "pt2", extra=("--precision", "bf16"))
    assert not any("measures on itself" in p for p in report["problems"]), report["problems"]
    assert result.exit_code == 0, result.output


def test_compare_holds_a_user_model_to_the_float64_files_own_floor(tmp_path):
    """Before: `verify compare noisy.py:make clean/model.pt2` exited 0: the pair judged on the larger floor, the
    noisy model's own."""
    result, _ = export(tmp_path, "clean", "pt2")
    assert result.exit_code == 0, result.output
    report, file = tmp_path / "compare.json", str(tmp_path / "clean" / "noisy-clean" / "model.pt2")
    result = runner.invoke(app, ["compare", f"{tmp_path / 'noisy.py'}:make", file, "--shape", BOUND_SHAPE,
                                 "--json", str(report)])
    assert result.exit_code == 1, result.output
    problems = json.loads(report.read_text())["problems"]
    assert any("model.pt2 in B" in p and "measures on itself" in p for p in problems), problems
    result = runner.invoke(app, ["compare", f"{tmp_path / 'noisy.py'}:clean", file, "--shape", BOUND_SHAPE])
    assert result.exit_code == 0, result.output


def floors(*channels: float) -> dict[str, NoiseFloor]:
    values = np.asarray(channels)
    return {"out": NoiseFloor(float(values.max()), values)}


@pytest.mark.parametrize("ratio, refused", [(FLOOR_AGREEMENT * 0.99, False), (FLOOR_AGREEMENT * 1.01, True)])
def test_one_channel_over_the_agreement_is_refused(ratio, refused):
    """Per channel: a quiet channel's floor lifted by noise under the loudest channel's is still seen."""
    model = [floors(1.0, 1e-2 * ratio)]
    file = FileFloors("model.pt2 in exported", [floors(1.0, 1e-2)])
    assert bool(agreement_problems(model, [file])) == refused


def test_the_evidence_re_derives_guard_3_and_refuses_a_malformed_record():
    model = [floors(1.0, 1.0)]
    record = evidence([], "cpu", None, "auto", [(model[0], {"out": np.ones((1, 2, 2, 2))})],
                      files=[FileFloors("model.pt2 in exported", [floors(1.0, 1.0 / (2 * FLOOR_AGREEMENT))])])
    record["repeats"] = [{"label": "eager", "differences": {"out": 0.0}, "mutated": []}]
    assert any("measures on itself" in p for p in evidence_problems(record))
    record["files"] = record["files"][:1]  # the files' floors left out, the model's kept
    assert any("no usable file floor evidence" in p for p in evidence_problems(record))
    assert evidence_problems(record, files=False) == []  # guard 3 guards a pass: a failing pair stands as it is
    record["files"] = floors_record([FileFloors("the model", [floors(1.0, 1.0)]),
                                     FileFloors("model.pt2 in exported", [floors(1.0, 1.0)])])
    assert evidence_problems(record) == []
