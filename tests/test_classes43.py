"""A fine-tuned detector with more than torchvision's 91 classes (Objects365's 365, LVIS's 1203) as a folder and as a
matrix cell: the manifest records the class count its export built it with (exporter/detector_manifest.py
`DetectorInfo.classes`, absent in an older folder: 91), the goldens' labels are bounded by it and Faster R-CNN's
class logits must be exactly that wide (verify/detect/goldens.py), and a matrix cell's stored count bounds its stored
labels the same way (verify/matrix/detector_judging.py). Before, `verify artifact` refused a 365-class export's own
folder (labels 275 to 364 "are 0 to 90"), and a matrix merge its own cell."""

from __future__ import annotations

import json

import numpy as np
import pytest

from exporter.detector_manifest import (
    DEFAULT_CLASSES,
    MAX_CLASSES,
    MIN_CLASSES,
    DetectorInfo,
    load_detector_manifest,
)
from exporter.errors import ArtifactError
from exporter.manifest import GOLDENS_NAME, MANIFEST_NAME, validate_as
from tests.helpers import NAME, edit_manifest, linked_copy, minimal_goldens, strip_signature
from verify.detect.folder import detector_integrity
from verify.detect.goldens import CLASS_SCORES, CLASSES, check_goldens
from verify.detect.match import Detections, Rules
from verify.folder.checks import CheckReport
from verify.judge.compare import Tolerance
from verify.matrix.detector_judging import _class_width, _replayed, judge_detector_cell, stored_classes
from verify.matrix.detectors import DETECTOR_FORMATS
from verify.matrix.proposal_judging import Malformed
from verify.matrix.result import DISAGREE, CellResult

FINE_TUNED = 365
"""Objects365's class count: more than torchvision's default."""
INFO = {"name": NAME, "norm": "frozen", "weights": "file:ft.pt", "weights_sha256": None}
SHAPE = [3, 32, 32]
CONTENT = f"{GOLDENS_NAME}: content"


def test_the_manifest_records_a_class_count_in_its_bounds():
    assert DEFAULT_CLASSES == CLASSES  # the goldens' default bound is the manifest's
    older = validate_as(DetectorInfo, INFO, "manifest")  # a folder written before the field: its labels below 91
    assert older.classes is None and older.label_bound == DEFAULT_CLASSES
    assert validate_as(DetectorInfo, {**INFO, "classes": FINE_TUNED}, "manifest").classes == FINE_TUNED
    assert validate_as(DetectorInfo, {**INFO, "classes": MAX_CLASSES}, "manifest").classes == MAX_CLASSES
    # a one-class RetinaNet or FCOS (sigmoid, no background) is a detector: before, its export ran, then failed
    # writing its own manifest
    assert validate_as(DetectorInfo, {**INFO, "classes": MIN_CLASSES}, "manifest").label_bound == MIN_CLASSES == 1
    for bad in (MIN_CLASSES - 1, MAX_CLASSES + 1, True, float(FINE_TUNED), str(FINE_TUNED), None):
        with pytest.raises(ArtifactError, match="classes"):
            validate_as(DetectorInfo, {**INFO, "classes": bad}, "manifest")
    assert validate_as(DetectorInfo, {**INFO, "classes": FINE_TUNED}, "manifest").label_bound == FINE_TUNED


def goldens(dense: dict[str, tuple[int, ...]], label: int) -> dict[str, dict[str, np.ndarray]]:
    return minimal_goldens(dense, label, SHAPE)


def check(dense: dict[str, tuple[int, ...]], label: int, classes: int | None) -> str:
    return check_goldens(goldens(dense, label), [SHAPE], list(dense), False, (), classes)


def test_goldens_labels_are_bounded_by_the_manifests_classes():
    logits = {f"{CLASS_SCORES}#0": (4, FINE_TUNED)}
    assert "all finite" in check(logits, FINE_TUNED - 1, FINE_TUNED)
    with pytest.raises(ArtifactError, match=f"labels are 0 to {FINE_TUNED - 1}"):
        check(logits, FINE_TUNED, FINE_TUNED)
    # the class logits' width pins the count: neither the default (an older folder) nor a widened one passes
    for recorded in (CLASSES, FINE_TUNED + 1, MAX_CLASSES):
        with pytest.raises(ArtifactError, match=f"records {recorded} classes"):
            check(logits, 0, recorded)
    # an older folder (no count): a bound of CLASSES, never a count (a fine-tuned head with fewer classes passes)
    assert "all finite" in check({f"{CLASS_SCORES}#0": (4, 12)}, 11, None)
    with pytest.raises(ArtifactError, match="records no class count"):
        check(logits, 0, None)
    with pytest.raises(ArtifactError, match=f"labels are 0 to {CLASSES - 1}"):
        check({f"{CLASS_SCORES}#0": (4, CLASSES)}, CLASSES, None)
    # a kind without per-class logit columns: the recorded count bounds its labels alone
    heads = {"head.classification_head.cls_logits#0": (1, 9 * FINE_TUNED, 2, 2)}
    assert "all finite" in check(heads, FINE_TUNED - 1, FINE_TUNED)
    with pytest.raises(ArtifactError, match=f"labels are 0 to {CLASSES - 1}"):
        check(heads, FINE_TUNED - 1, CLASSES)


def test_a_matrix_cell_bounds_its_stored_labels_by_its_stored_classes():
    assert stored_classes({}) is None  # a cell stored before the count was: CLASSES bounds its labels
    assert stored_classes({"classes": FINE_TUNED}) == FINE_TUNED
    assert stored_classes({"classes": MIN_CLASSES}) == MIN_CLASSES
    for bad in (MIN_CLASSES - 1, MAX_CLASSES + 1, True, float(FINE_TUNED), str(FINE_TUNED), None):
        with pytest.raises(Malformed, match="class count"):
            stored_classes({"classes": bad})
    found = Detections.of({"boxes": np.array([[1.0, 1.0, 5.0, 5.0]]), "scores": np.array([0.9]),
                           "labels": np.array([FINE_TUNED - 1])})
    rules = Rules(0.05, 0.5, 100)
    assert _replayed([found], [found], rules, NAME, (320, 320), FINE_TUNED) == []
    with pytest.raises(Malformed, match=f"labels outside 0 to {CLASSES - 1}"):
        _replayed([found], [found], rules, NAME, (320, 320), CLASSES)
    dense = [{"outputs": [{"name": f"{CLASS_SCORES}#0", "shape_b": [100, FINE_TUNED]}]}]
    assert _class_width(dense, FINE_TUNED, NAME) == []
    assert f"records {CLASSES} classes" in _class_width(dense, CLASSES, NAME)[0]
    assert f"records none (at most {CLASSES})" in _class_width(dense, None, NAME)[0]
    assert _class_width([{"outputs": [{"name": f"{CLASS_SCORES}#0", "shape_b": [100, 12]}]}], None, NAME) == []


def test_a_cell_storing_no_int_class_count_disagrees():
    cell = CellResult("c", NAME, "frozen", "detector", "agree", detector={"classes": True})
    judged = judge_detector_cell(cell, Tolerance(), DETECTOR_FORMATS, 1)
    assert judged.verdict == DISAGREE
    assert any("class count True" in problem for problem in judged.problems), judged.problems


@pytest.fixture
def unsigned(detector_export, tmp_path):
    """The suite's 91-class detector export (tests/conftest.py), unsigned, as hard links: an edit is a new file."""
    _, signed, result, _ = detector_export
    assert result.exit_code == 0, result.output
    return strip_signature(linked_copy(signed, tmp_path / "folder"))


def content(folder) -> tuple[bool, str]:
    report = CheckReport("artifact")
    detector_integrity(folder, report)
    check, = [c for c in report.checks if c.name == CONTENT]
    return check.passed, check.message


def test_an_export_records_its_classes_and_a_folder_without_them_still_passes(unsigned):
    assert json.loads((unsigned / MANIFEST_NAME).read_text())["detector"]["classes"] == CLASSES
    edit_manifest(unsigned, lambda data: data["detector"].pop("classes"))  # as written before the field
    assert "classes" not in load_detector_manifest(unsigned / MANIFEST_NAME).to_json()  # never written as null
    report = CheckReport("artifact")
    art = detector_integrity(unsigned, report)
    assert art is not None and art.sound, [c.message for c in report.checks if not c.passed]
    edit_manifest(unsigned, lambda data: data["detector"].update(classes=FINE_TUNED))  # widened by hand
    passed, message = content(unsigned)
    assert not passed and f"records {FINE_TUNED} classes" in message


def test_a_matrix_cell_stores_its_class_count_and_the_merge_reads_it_back():
    """A detector cell stored no class count, so a fine-tuned cell with more than 91 classes could never merge (its
    labels were capped at 91): the cell stores the report's `classes`, and the merge reads it back as the bound."""
    from verify.detect.report import DetectorReport
    from verify.judge.compare import AUTO_FACTOR
    from verify.matrix.detector_cell import detector_numbers
    from verify.matrix.detector_judging import stored_classes

    report = DetectorReport("fasterrcnn_mobilenet_v3_large_320_fpn", "batch", "file:ft.pt", (1, 3, 320, 320), (),
                            AUTO_FACTOR, classes=365)
    stored = json.loads(json.dumps(detector_numbers(report)))
    assert stored["classes"] == 365 and stored_classes(stored) == 365
