"""What `verify matrix` is asked to run is checked before any work (verify/matrix/request.py)."""

import pytest
from typer.testing import CliRunner

from exporter.errors import UsageError
from exporter.families.detectors import DETECTORS, Detector, list_detectors
from verify.cli import app
from verify.matrix.detectors import unstored_outputs
from verify.matrix.request import MatrixRequest


@pytest.mark.parametrize("detector", [name for name in list_detectors() if not unstored_outputs(name)])
def test_a_whole_detector_is_a_cell_and_an_option_it_does_not_apply_is_refused_in_one_line(detector):
    """Detector cells (tests/test_matrix_detectors.py runs one) are planned beside the backbones' without any work."""
    request = MatrixRequest.create(backbones=["resnet18", detector])
    assert [c.spec.row[0] for c in request.cells()].count(detector) >= 1
    with pytest.raises(UsageError, match="does not apply to a whole detector"):
        MatrixRequest.create(backbones=["resnet18", detector], runtimes=["onnxruntime"])
    result = CliRunner().invoke(app, ["matrix", "-b", detector, "--decimal", "3"])
    assert result.exit_code == 2 and "whole detector" in result.output
    assert "Traceback" not in result.output


OTHER_OUTPUTS = Detector("detector_of_other_outputs", "some_other_kind", None, ("batch",), {},
                         builder="fasterrcnn_resnet50_fpn")
"""A detector of a kind no cell stores the outputs of (every registered kind is stored since stop 45's keypoints)."""


@pytest.mark.parametrize("detector", [*(name for name in list_detectors() if unstored_outputs(name)),
                                      OTHER_OUTPUTS.name])
def test_a_detector_whose_outputs_a_cell_does_not_store_is_refused_in_one_line(detector):
    """Review of stop 44: a kind whose per-detection outputs a cell does not store is no cell at all."""
    with DETECTORS.adding(OTHER_OUTPUTS.name, OTHER_OUTPUTS), \
            pytest.raises(UsageError, match="does not store") as caught:
        MatrixRequest.create(backbones=["resnet18", detector])
    assert "\n" not in str(caught.value) and f"verify export -b {detector}" in str(caught.value)
