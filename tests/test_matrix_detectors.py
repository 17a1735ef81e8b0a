"""Whole detectors in `verify matrix` (verify/matrix/detectors.py, detector_cell.py, detector_judging.py): a detector
cell runs beside a backbone cell through the path `verify export -b <detector>` takes, shows its rows in every
output, and its verdict is judged again from the numbers it stored, so a forged shard never merges into exit 0.
One matrix run for the module (the 320 detector and resnet18 at 64x64); everything else is checked before any
work or over that run's report."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace
from xml.etree import ElementTree

import pytest
from typer.testing import CliRunner

from exporter.errors import UsageError
from exporter.families.detectors import ANCHOR_MODULES, MIN_DETECTIONS
from tests.helpers import NAME
from verify.cli import app
from verify.detect.verdict import EAGER, ORACLE, RUNTIMES
from verify.judge.compare import AUTO_FACTOR, Tolerance
from verify.matrix import AGREE, DISAGREE, MatrixRequest, MatrixResult, load_result, merge_results
from verify.matrix.cell import CellJob, lookup_cell
from verify.matrix.detectors import DEFAULT_DETECTOR_SHAPE, DETECTOR_VIEW
from verify.render.matrix_table import matrix_annotations
from verify.settings import RunSettings

BACKBONE = "resnet18"
ORT = RUNTIMES["onnx"]


@pytest.fixture(scope="module")
def matrix_run(module_tmp):
    """`verify matrix -b NAME -b resnet18 --norm frozen` as shard 1/1 (a report merge takes) with every output, once;
    verify_detector spied on: what the matrix asked of the detector path and what it returned."""
    from verify.detect import check

    where = module_tmp("matrix-detectors")
    paths = {kind: where / f"m.{kind}" for kind in ("json", "xml", "md", "html")}
    made = []

    def spy(*args, _real=check.verify_detector, **kwargs):
        made.append((args, kwargs, _real(*args, **kwargs)))
        return made[-1][2]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(check, "verify_detector", spy)
        result = CliRunner().invoke(app, [
            "matrix", "-b", NAME, "-b", BACKBONE, "--norm", "frozen", "--shape", "1x3x64x64", "--format", "torchscript",
            "--format", "onnx", "--no-cache", "--shard", "1/1", "--json", str(paths["json"]), "--junit",
            str(paths["xml"]), "--markdown", str(paths["md"]), "--html", str(paths["html"])])
    report = load_result(paths["json"])
    detector = next(c for c in report.cells if c.view == DETECTOR_VIEW)
    return SimpleNamespace(result=result, calls=made, paths=paths, report=report, detector=detector)


def test_a_detector_cell_runs_beside_a_backbone_cell_and_both_agree(matrix_run):
    assert matrix_run.result.exit_code == 0, matrix_run.result.output
    rows = [(c.backbone, c.norm, c.view, c.verdict) for c in matrix_run.report.cells]
    assert rows == [(BACKBONE, "frozen", "body", AGREE), (NAME, "frozen", DETECTOR_VIEW, AGREE)]
    assert matrix_run.detector.cache == {"result": "off"}  # run every time, never from the cache
    assert f"ok   {NAME}:frozen:{DETECTOR_VIEW}  after NMS {ORT} vs {EAGER}" in matrix_run.result.output


def test_the_cell_is_the_export_commands_own_verdict_judged_again(matrix_run):
    """One call of verify_detector, as `verify export -b` makes it (dynamic ONNX); the cell's after-NMS pairs,
    recomputed from its stored detections, are that report's own, number for number."""
    (args, kwargs, report), = matrix_run.calls
    assert args[:3] == (NAME, "frozen", DEFAULT_DETECTOR_SHAPE) and kwargs["dynamic"] is True
    assert report.passed
    numbers = matrix_run.detector.detector
    assert numbers["after_nms"] == json.loads(json.dumps([d.to_dict() for d in report.detections]))
    labels = {(p["a"], p["b"]) for p in numbers["after_nms"]}
    assert labels == {(EAGER, ORACLE), *((r, ref) for r in ("torchscript", ORT) for ref in (EAGER, ORACLE))}
    assert all(min(p["matched_per_image"]) >= MIN_DETECTIONS for p in numbers["after_nms"])
    assert {(p["a"], p["b"]) for p in numbers["before_nms"]} == {(ORT, ORACLE), (ORT, EAGER)}
    assert 0 < matrix_run.detector.worst_ratio <= AUTO_FACTOR


def _matched(matrix_run) -> str:
    """`50 of 50`: what the ONNX Runtime vs eager pair of the run matched, as the rows say it."""
    pair = next(p for p in matrix_run.detector.detector["after_nms"] if (p["a"], p["b"]) == (ORT, EAGER))
    return f"{pair['matched']} of {sum(pair['reference_per_image'])}"


def test_every_output_shows_the_detector_rows(matrix_run):
    suites = {s.get("name"): s for s in ElementTree.parse(matrix_run.paths["xml"]).getroot().iter("testsuite")}
    cases = [c.get("name") for c in suites[f"{NAME}:frozen:{DETECTOR_VIEW}"].iter("testcase")]
    assert {f"after NMS {ORT} vs {ORACLE}", f"before NMS {ORT} vs {EAGER}", f"proposals {ORT} vs {EAGER}"} <= set(cases)
    markdown = matrix_run.paths["md"].read_text()
    assert "### Whole detectors" in markdown
    assert f"{_matched(matrix_run)} detections matched, 0 unmatched explained" in markdown
    html = matrix_run.paths["html"].read_text()
    assert f"after NMS {ORT} vs {EAGER}" in html and "0 unexplained" in html


def test_the_terminal_table_lists_the_detector_rows_once_under_it(matrix_run):
    """In the table layout a detector cell's row has no runtime-pair entries: its rows (only its) follow the table."""
    from rich.console import Console

    from verify.render.matrix_table import render_matrix

    console = Console(width=400, record=True, color_system=None)
    render_matrix(merge_results([load_result(matrix_run.paths["json"])]), console, layout="table")
    text = console.export_text()
    assert text.count(f"after NMS {ORT} vs {EAGER}  {_matched(matrix_run)} detections matched") == 1
    assert f"{BACKBONE}:frozen:body  torchscript vs eager" not in text


def test_merge_judges_the_stored_numbers_again_and_agrees(matrix_run):
    """Both levels after NMS and the proposal pairings are recomputed at merge: the export report's own, number for
    number (the pairings from the stored proposals and RPN candidates, not read from the shard)."""
    merged = merge_results([load_result(matrix_run.paths["json"])], ["shard"])
    assert merged.exit_code == 0, merged.summary()
    cell = next(c for c in merged.cells if c.view == DETECTOR_VIEW)
    assert cell.detector["after_nms"] == matrix_run.detector.detector["after_nms"]
    (_, _, report), = matrix_run.calls
    assert cell.detector["proposals"] == json.loads(json.dumps([p.to_dict() for p in report.proposals]))
    assert [(p["a"], p["b"]) for p in cell.detector["proposals"]] == [(EAGER, ORACLE), (ORT, ORACLE), (ORT, EAGER)]
    assert set(cell.detector["proposal_boxes"]) == {EAGER, ORACLE, ORT} and cell.detector["rpn_candidates"]


def _detector_cell(data: dict) -> dict:
    return next(c for c in data["cells"] if c["view"] == DETECTOR_VIEW)


def _score(data: dict) -> None:
    _detector_cell(data)["detector"]["runs"][ORT][0]["scores"][0] += 1e-3


def _box(data: dict) -> None:
    _detector_cell(data)["detector"]["runs"][ORT][0]["boxes"][0][0] += 1.0


def _drop_runtime(data: dict) -> None:
    numbers = _detector_cell(data)["detector"]
    del numbers["runs"][ORT]
    numbers["after_nms"] = [p for p in numbers["after_nms"] if ORT not in (p["a"], p["b"])]
    numbers["before_nms"] = []


def _dense(data: dict) -> None:
    worst = max(_detector_cell(data)["detector"]["before_nms"][0]["outputs"], key=lambda o: o["ratio"])
    worst["ratio"], worst["max_abs"] = 2 * AUTO_FACTOR * worst["ratio"], 2 * AUTO_FACTOR * worst["max_abs"]


def _drop_anchors(data: dict) -> None:
    """The anchors (judged as a dense tensor since hunt 19a) cut out of every before-NMS pair alike (review 18: the
    pairs still compared the same tensors, and the merge exited 0)."""
    for pair in _detector_cell(data)["detector"]["before_nms"]:
        pair["outputs"] = [o for o in pair["outputs"] if not o["name"].startswith(ANCHOR_MODULES["fasterrcnn"])]


def _drop_final_nms(data: dict) -> None:
    """The decoded candidates (judged before NMS since hunt 21a) cut out of every before-NMS pair alike: the decoding
    would be judged after NMS only again (hunt 21b's check, for Faster R-CNN too)."""
    for pair in _detector_cell(data)["detector"]["before_nms"]:
        pair["outputs"] = [o for o in pair["outputs"] if not o["name"].startswith("final_nms.")]


def _proposal(data: dict) -> None:
    _detector_cell(data)["detector"]["proposals"][0]["unexplained"] = ["a proposal in one run only"]


def _drop_proposal_check(data: dict) -> None:
    _detector_cell(data)["detector"]["proposals"].pop()


def _lone_proposal(data: dict) -> None:
    """An ONNX Runtime proposal moved where no RPN candidate is: unpaired and unexplained, while the shard's pairings
    still list nothing unexplained."""
    numbers = _detector_cell(data)["detector"]
    numbers["proposal_boxes"][ORT][0][0] = [0.0, 0.0, 1.0, 1.0]
    assert all(p["unexplained"] == [] for p in numbers["proposals"])


def _moved_proposal(data: dict) -> None:
    """An ONNX Runtime proposal moved by twice the factor times the floor of proposal boxes (still paired)."""
    import numpy as np

    from verify.detect.proposals import ProposalCheck, pair_boxes
    from verify.judge.measure import measure_floor

    boxes = _detector_cell(data)["detector"]["proposal_boxes"]
    eager, oracle = ([np.asarray(image) for image in boxes[label]] for label in (EAGER, ORACLE))
    floor = measure_floor(*(np.concatenate(side) for side in pair_boxes(ProposalCheck(EAGER, ORACLE), eager,
                                                                         oracle)[:2])).value
    boxes[ORT][0][0] = [v + 2 * AUTO_FACTOR * floor for v in boxes[ORT][0][0]]


def _paired_count(data: dict) -> None:
    _detector_cell(data)["detector"]["proposals"][1]["paired_per_image"][0] -= 1


def _no_numbers(data: dict) -> None:
    _detector_cell(data)["detector"] = None


def _backbone_pairs(data: dict) -> None:
    """The detector cell dressed as a backbone cell, with resnet18's passing pairs and runs."""
    cell, backbone = _detector_cell(data), data["cells"][0]
    cell.update(detector=None, pairs=backbone["pairs"], runs=backbone["runs"], trust=backbone["trust"])


def _no_images(data: dict) -> None:
    for runs in _detector_cell(data)["detector"]["runs"].values():
        runs.clear()


@pytest.mark.parametrize("forge", [_score, _box, _drop_runtime, _dense, _proposal, _drop_proposal_check, _no_numbers,
                                   _backbone_pairs, _no_images, _lone_proposal, _moved_proposal, _paired_count,
                                   _drop_anchors, _drop_final_nms])
def test_a_forged_shard_pass_never_merges_into_exit_0(matrix_run, forge, tmp_path):
    """The shard still says `agree` and `passed`; the merge judges its numbers again and fails it (exit 1)."""
    data = json.loads(matrix_run.paths["json"].read_text())
    forge(data)
    assert _detector_cell(data)["verdict"] == AGREE and _detector_cell(data)["passed"] is True
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(data))
    merged = merge_results([MatrixResult.from_dict(copy.deepcopy(data))], [forged])
    cell = next(c for c in merged.cells if c.view == DETECTOR_VIEW)
    assert (merged.exit_code, cell.verdict) == (1, DISAGREE), cell.problems
    assert cell.problems and all(not row.passed for row in cell.rows() if row.kind == "verdict")
    assert any(f"{NAME}:frozen:{DETECTOR_VIEW}" in note for note in matrix_annotations(merged))  # CI annotates it
    result = CliRunner().invoke(app, ["matrix", "merge", str(forged)])
    assert result.exit_code == 1 and "1 of 2 cells agree, 1 disagree" in result.output


def _ort_boxes(data: dict) -> list:
    return _detector_cell(data)["detector"]["proposal_boxes"][ORT][0]


MALFORMED = {
    "a NaN coordinate": lambda data: _ort_boxes(data)[0].__setitem__(0, float("nan")),
    "a box of 3 coordinates": lambda data: _ort_boxes(data).__setitem__(0, [1.0, 2.0, 3.0]),
    "a string coordinate": lambda data: _ort_boxes(data)[0].__setitem__(0, "1.5"),
    "boxes far outside the image": lambda data: _ort_boxes(data)[0].__setitem__(2, 1e308),
    "no proposal boxes": lambda data: _detector_cell(data)["detector"].pop("proposal_boxes"),
    "no RPN candidates": lambda data: _detector_cell(data)["detector"].pop("rpn_candidates"),
    "no RPN constants": lambda data: _detector_cell(data)["detector"].pop("rpn_rules"),
    "a candidate score of NaN": lambda data: _detector_cell(data)["detector"]["rpn_candidates"][0]["scores"]
    .__setitem__(0, float("nan")),
    "candidate boxes as a string": lambda data: _detector_cell(data)["detector"]["rpn_candidates"][0]
    .__setitem__("boxes", "0 0 1 1"),
}


@pytest.mark.parametrize("forge", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_proposal_numbers_fail_the_cell_in_one_line(matrix_run, forge, tmp_path):
    """Read from a file, a NaN token is refused (exit 2, one line); anything else fails the cell (exit 1) with one
    problem line that says its numbers cannot be judged."""
    data = json.loads(matrix_run.paths["json"].read_text())
    forge(data)
    merged = merge_results([MatrixResult.from_dict(copy.deepcopy(data))], ["forged"])
    cell = next(c for c in merged.cells if c.view == DETECTOR_VIEW)
    assert (merged.exit_code, cell.verdict) == (1, DISAGREE)
    problem, = cell.problems
    assert "numbers cannot be judged" in problem and "\n" not in problem
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(data))
    result = CliRunner().invoke(app, ["matrix", "merge", str(forged)])
    assert result.exit_code in (1, 2) and "Traceback" not in result.output, result.output
    if result.exit_code == 2:
        assert len(result.output.strip().splitlines()) == 1 and "NaN" in result.output


@pytest.mark.parametrize("options", [["--decimal", "3"], ["--runtime", "onnxruntime"], ["--static"],
                                     ["--opset", "17"], ["--format", "pt2"], ["--device", "cuda"]])
def test_an_option_a_detector_does_not_apply_is_refused_in_one_line(options):
    result = CliRunner().invoke(app, ["matrix", "-b", NAME, "-b", BACKBONE, *options])
    assert result.exit_code == 2, result.output
    assert "whole detector" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_shapes_that_would_apply_to_nothing_are_refused():
    alone = CliRunner().invoke(app, ["matrix", "-b", NAME, "--shape", "1x3x64x64"])
    assert alone.exit_code == 2 and "--detector-shape" in alone.output
    none = CliRunner().invoke(app, ["matrix", "-b", BACKBONE, "--detector-shape", "1x3x320x320"])
    assert none.exit_code == 2 and "no -b names a detector" in none.output


def test_the_library_refuses_what_the_cli_refuses():
    with pytest.raises(UsageError, match="--decimal does not apply to a whole detector"):
        MatrixRequest.create(backbones=[NAME], settings=RunSettings(tolerance=Tolerance.from_options(decimal=3)))
    with pytest.raises(UsageError, match=f"{NAME} has none of the norms fused"):
        MatrixRequest.create(backbones=[NAME], norms=["fused"])


def test_a_detector_cell_is_never_looked_up_in_the_cache(tmp_path):
    from verify.cache import CacheStats

    request = MatrixRequest.create(backbones=[NAME], norms=["frozen"])
    cell, = request.cells()
    assert lookup_cell(CellJob(cell, "id", str(tmp_path)), CacheStats()) == (None, False)
