"""Hunt 7c: whole detectors attacked through what a runtime can return after NMS (verify/detect/match.py) and through
the detector's JSON report. Each test failed before its fix: a NaN score matched by IoU passed (Python's max() drops
a NaN ratio), a duplicate box at the score threshold or past the cap passed as a rounding borderline, two sides of
empty boxes passed with nothing matched (an infinite IoU band), and the report had no version a program could check."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from exporter.families.detectors import MIN_IMAGE_SIDE
from tests.helpers import DETECTION_FLOOR as FLOOR
from tests.helpers import DETECTION_RULES as RULES
from tests.helpers import detection_grid as grid
from verify.cli.detector import write_outputs
from verify.detect.export import FILE_NAMES
from verify.detect.match import (
    EXPLAIN_FACTOR,
    Detections,
    compare_detections,
    iou_band,
    measure_detection_floor,
)
from verify.detect.proposals import LOGITS, PROPOSALS, derive_bands
from verify.detect.report import REPORT_KIND, REPORT_SCHEMA_VERSION, DetectorReport
from verify.detect.runners import _RUNNERS
from verify.detect.verdict import EAGER, ORACLE, RUNTIMES, judge_runs
from verify.judge.compare import AUTO_FACTOR, Tolerance

TORCHSCRIPT = RUNTIMES["torchscript"]


def judge(run: Detections, ref: Detections):
    return compare_detections("run", [run], "ref", [ref], FLOOR, RULES, None, AUTO_FACTOR)


def _strict(token: str) -> float:
    raise ValueError(f"non-standard JSON token {token}")


def _nan_box(d: Detections) -> Detections:
    boxes = d.boxes.copy()
    boxes[0, 2] = math.nan
    return Detections(boxes, d.scores, d.labels)


def test_a_runtime_returning_a_nan_box_fails_and_every_report_renders(rejudge):
    report, data = rejudge(_nan_box, "nanbox")
    pair = _pair(report)
    assert report.exit_code == 1 and not pair.passed and data["exit_code"] == 1
    assert any("not a finite number" in u.reason for u in pair.unexplained)


@pytest.mark.parametrize("side", ["run", "reference"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_matched_detection_with_a_score_that_is_not_a_number_fails(side, value):
    ref = grid(10, 1)
    scores = ref.scores.copy()
    scores[3] = value
    bad = Detections(ref.boxes.copy(), scores, ref.labels.copy())
    pair = judge(bad, ref) if side == "run" else judge(ref, bad)
    assert pair.matched == 10  # matched by IoU: only the score can fail it
    assert not pair.passed
    assert "not finite" in pair.verdict()
    assert pair.to_dict()["worst_score_ratio"] is None  # the JSON holds no Infinity token


def test_a_lone_detection_with_a_nan_box_is_never_a_borderline():
    ref = grid(10, 1)
    boxes = ref.boxes.copy()
    boxes[3, 0] = math.nan
    scores = ref.scores.copy()
    scores[3] = RULES.score_thresh  # on the threshold: a sound box would pass as a score-threshold borderline
    run = Detections(boxes, scores, ref.labels.copy())
    pair = judge(run, Detections(ref.boxes, scores, ref.labels))
    assert not pair.passed
    assert [b.side for b in pair.borderline] == ["reference"]  # the sound box the run lacks is one
    assert [u.side for u in pair.unexplained if "not a finite number" in u.reason] == ["run"]


def _with_duplicate(ref: Detections, k: int) -> Detections:
    return Detections(np.vstack([ref.boxes, ref.boxes[k:k + 1]]), np.r_[ref.scores, ref.scores[k]],
                      np.r_[ref.labels, ref.labels[k]])


def test_a_duplicated_box_at_the_score_threshold_is_a_duplicate_not_a_borderline():
    ref = grid(10, 1)
    scores = ref.scores.copy()
    scores[2] = RULES.score_thresh + FLOOR.scores  # within rounding of the threshold
    ref = Detections(ref.boxes, scores, ref.labels)
    pair = judge(_with_duplicate(ref, 2), ref)
    assert pair.matched == 10 and not pair.passed and not pair.borderline
    assert "duplicate" in pair.unexplained[0].reason


def test_two_same_class_boxes_just_past_the_nms_threshold_within_rounding_are_not_duplicates():
    """The duplicate rule leaves rounding its band: an IoU a hair over the threshold is what float32 NMS may keep."""
    a = np.array([0.0, 0.0, 100.0, 100.0])
    # b shifted so that IoU(a, b) = nms_thresh + a little less than the rounding band
    shift = 100.0 * (1 - RULES.nms_thresh) / (1 + RULES.nms_thresh)
    b = a + np.array([shift, 0, shift, 0]) - np.array([1e-7, 0, 1e-7, 0])
    run = Detections(np.stack([a, b]), np.array([0.9, RULES.score_thresh]), np.array([1, 1]))
    ref = run.take([0])
    pair = judge(run, ref)
    assert pair.passed, pair.verdict()
    assert [x.reason for x in pair.borderline] == ["score threshold"]


def test_a_detection_past_the_models_cap_is_never_a_cap_borderline():
    ref = grid(RULES.detections_per_img, 3)
    ref = Detections(ref.boxes / 4, ref.scores, ref.labels)  # 50 boxes, none overlapping
    extra = Detections(np.vstack([ref.boxes, [[300.0, 300.0, 310.0, 310.0]]]),
                       np.r_[ref.scores, ref.scores.min() + FLOOR.scores], np.r_[ref.labels, 1])
    pair = judge(extra, ref)
    assert not pair.passed and not pair.borderline
    assert "more than the model keeps" in pair.unexplained[0].reason


def test_a_floor_is_not_inflated_by_two_detections_eager_kept_differently():
    """Eager float32 keeps a neighbour of one float64 detection (IoU 0.6, as an NMS tie can): before, that pair set a
    6-pixel floor of detections, and a runtime 3 pixels off on every box passed."""
    fp64 = grid(20, 4)
    rng = np.random.default_rng(4)
    boxes = fp64.boxes + rng.uniform(-1, 1, fp64.boxes.shape) * FLOOR.boxes
    boxes[0] = fp64.boxes[0] + [6.0, 0.0, 6.0, 0.0]
    floor = measure_detection_floor([Detections(boxes, fp64.scores, fp64.labels)], [fp64])
    assert floor.boxes <= FLOOR.boxes and floor.matched == len(fp64) - 1
    shifted = Detections(fp64.boxes + 3.0, fp64.scores, fp64.labels)
    pair = compare_detections("runtime", [shifted], "ref", [fp64], floor, RULES)
    assert not pair.passed and pair.worst_box_ratio > AUTO_FACTOR


@pytest.mark.parametrize("factor", [EXPLAIN_FACTOR * 10, 1e7])
def test_a_loose_factor_never_makes_a_lost_detection_a_rounding_borderline(factor):
    """Before: at a factor of 1e7 here (1e6 on real score floors of 5e-6) the score band spanned every score, and a
    run missing a 0.5-score detection passed as a `score threshold` borderline. The factor still loosens matched
    values."""
    ref = grid(10, 1)
    pair = compare_detections("run", [ref.take(np.arange(1, 10))], "ref", [ref], FLOOR, RULES, None, factor)
    assert not pair.passed and not pair.borderline and len(pair.unexplained) == 1
    shifted = Detections(ref.boxes + EXPLAIN_FACTOR * 2 * FLOOR.boxes, ref.scores, ref.labels)
    assert compare_detections("run", [shifted], "ref", [ref], FLOOR, RULES, None, factor).passed
    floors = {PROPOSALS: 1e-4, f"{LOGITS}0": 1e-5}
    assert derive_bands(floors, factor) == derive_bands(floors, EXPLAIN_FACTOR)


def test_empty_boxes_on_both_sides_match_nothing_and_fail():
    ref = grid(10, 1)
    flat = ref.boxes.copy()
    flat[:, 2] = flat[:, 0]  # zero width: torchvision's NMS never sees such a box (remove_small_boxes)
    both = Detections(flat, ref.scores, ref.labels)
    assert iou_band(flat[0], flat[0], AUTO_FACTOR * FLOOR.boxes) == 0.0
    pair = judge(both, both)
    assert pair.matched == 0 and not pair.passed and not pair.borderline
    assert "nothing to judge" in pair.verdict()


@pytest.fixture(scope="module")
def rejudge(detector_export):
    """judge_runs on the suite's detector export (tests/conftest.py), its TorchScript file run for real and its
    detections then changed by `tamper` (per image), as a runtime could return them: the report and its JSON."""
    exported, folder, _, where = detector_export
    path = folder / FILE_NAMES["torchscript"]
    inputs = [torch.as_tensor(image) for image in exported.images]
    eager, oracle = exported.references[EAGER], exported.references[ORACLE]
    ran = []  # the file's one real run (the same images each time), a fresh copy per case: 2-3 s a case less

    def run(tamper, name: str) -> tuple[DetectorReport, dict]:
        real = _RUNNERS["torchscript"]

        def tampered(*args, **kwargs):
            if not ran:
                ran.append(real(*args, **kwargs))
            result = copy.deepcopy(ran[0])
            result.detections = [tamper(d) for d in result.detections]
            return result

        report = DetectorReport(exported.name, exported.norm, exported.weights, exported.shape, ("torchscript",),
                                AUTO_FACTOR, images=exported.images)
        with pytest.MonkeyPatch.context() as patch:
            patch.setitem(_RUNNERS, "torchscript", tampered)
            judge_runs(report, exported.judging, inputs, eager, oracle, {"torchscript": path}, Tolerance())
        out = where / f"hunt7c-{name}.json"
        written = write_outputs(report, out, *(where / f"hunt7c-{name}.{ext}" for ext in ("xml", "md", "html")))
        assert len(written) == 4  # every report renders whatever the runtime returned
        return report, json.loads(out.read_text(), parse_constant=_strict)
    return run


def _pair(report: DetectorReport):
    return next(p for p in report.detections if p.a == TORCHSCRIPT and p.b == ORACLE)


def test_a_runtime_returning_its_detections_reversed_still_agrees(rejudge):
    report, data = rejudge(lambda d: d.take(np.arange(len(d))[::-1]), "reversed")
    assert report.exit_code == 0, report.summary()
    assert data["schema_version"] == REPORT_SCHEMA_VERSION and data["kind"] == REPORT_KIND
    assert data["passed"] and data["exit_code"] == 0


def test_a_runtime_returning_a_nan_score_fails_and_the_json_stays_strict(rejudge):
    def nan_score(d: Detections) -> Detections:
        scores = d.scores.copy()
        scores[0] = math.nan
        return Detections(d.boxes, scores, d.labels)

    report, data = rejudge(nan_score, "nan")
    pair = _pair(report)
    assert pair.matched == sum(pair.reference_per_image)  # every box matched: the score alone must fail it
    assert report.exit_code == 1 and not pair.passed
    assert data["exit_code"] == 1 and not data["passed"]
    row = next(r for r in data["after_nms"] if r["a"] == TORCHSCRIPT and r["b"] == ORACLE)
    assert row["worst_score_ratio"] is None


def test_a_runtime_returning_a_duplicated_box_fails_named(rejudge):
    report, _ = rejudge(lambda d: _with_duplicate(d.take(np.arange(len(d) - 1)), 0), "duplicate")
    pair = _pair(report)
    assert not pair.passed and report.exit_code == 1
    assert any("duplicate" in u.reason for u in pair.unexplained)


def test_explain_on_a_detector_image_too_small_to_draw_is_a_one_line_usage_error():
    from typer.testing import CliRunner

    from exporter.families.detectors import MIN_IMAGE_SIDE
    from tests.helpers import NAME
    from verify.cli import app

    side = MIN_IMAGE_SIDE - 1
    result = CliRunner().invoke(app, ["explain", f"{NAME}:frozen", f"{NAME}:frozen", "--shape", f"1x3x{side}x{side}"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}" in lines[0], result.output


def test_a_detector_checkpoint_holding_nan_is_refused_in_one_line(tmp_path):
    import torchvision.models.detection as detection

    from exporter.errors import UsageError
    from exporter.families.detectors import DETECTORS, build_detector
    from tests.helpers import NAME

    state = getattr(detection, NAME)(weights=None, weights_backbone=None, **DETECTORS.get(NAME).options).state_dict()
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    build_detector(NAME, weights=str(path))  # the sound file loads
    state["roi_heads.box_predictor.cls_score.bias"][3] = math.nan
    torch.save(state, path)
    with pytest.raises(UsageError, match="NaN or infinite values in 1 tensors") as error:
        build_detector(NAME, weights=str(path))
    assert "roi_heads.box_predictor.cls_score.bias" in str(error.value) and "\n" not in str(error.value)


def test_a_detector_that_detects_nothing_on_every_image_fails_and_proves_nothing(tmp_path):
    """Every score under the threshold: eager float32 and float64 agree on no detection at all, which is no
    evidence; the export exits 1 naming why, and its folder gets no manifest (it never validates)."""
    import torchvision.models.detection as detection
    from typer.testing import CliRunner

    from exporter.families.detectors import DETECTORS
    from exporter.manifest import MANIFEST_NAME
    from tests.helpers import NAME
    from verify.cli import app

    state = getattr(detection, NAME)(weights=None, weights_backbone=None, **DETECTORS.get(NAME).options).state_dict()
    state["roi_heads.box_predictor.cls_score.weight"].zero_()
    state["roi_heads.box_predictor.cls_score.bias"][1:] = -50.0  # every class but the background scores ~e^-50
    torch.save(state, tmp_path / "blind.pt")
    result = CliRunner().invoke(app, ["export", "-b", NAME, "--weights", str(tmp_path / "blind.pt"), "--format",
                                      "torchscript", "--out", str(tmp_path / "out"),
                                      "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 1, result.output
    data = json.loads((tmp_path / "r.json").read_text(), parse_constant=_strict)
    assert not data["passed"] and data["after_nms"] == []
    assert any("share no detection" in problem for problem in data["problems"])
    assert not list((tmp_path / "out").rglob(MANIFEST_NAME))


def _one_line_usage_error(args: list[str]) -> str:
    from typer.testing import CliRunner

    from verify.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "unexpected" not in lines[0], result.output
    return lines[0]


@pytest.mark.parametrize("height, width", [(MIN_IMAGE_SIDE, 4000), (1, 400)])
def test_an_image_the_detector_would_resize_to_nothing_is_refused_before_the_build(tmp_path, monkeypatch, height,
                                                                                   width):
    """Before: `unexpected RuntimeError: Input and output sizes should be greater than 0` from deep in the model."""
    from PIL import Image

    from exporter.families import detectors
    from tests.helpers import NAME

    monkeypatch.setattr(detectors, "build_detector", lambda *a, **k: pytest.fail("built"))
    Image.new("RGB", (width, height), (90, 40, 200)).save(tmp_path / "strip.png")
    sources = [["--input", str(tmp_path / "strip.png")]]
    if height >= MIN_IMAGE_SIDE:
        sources.append(["--shape", f"1x3x{height}x{width}"])
    for source in sources:
        line = _one_line_usage_error(["export", "-b", NAME, *source, "--out", str(tmp_path / "out")])
        assert f"a {height}x{width} image becomes 0x" in line
        assert not (tmp_path / "out").exists()
    if height >= MIN_IMAGE_SIDE:
        line = _one_line_usage_error(["explain", f"{NAME}:frozen", f"{NAME}:batch", "--shape",
                                      f"1x3x{height}x{width}"])
        assert f"a {height}x{width} image becomes 0x" in line
