"""What `verify matrix` is asked to run is checked before any work (verify/matrix/request.py)."""

import pytest
from typer.testing import CliRunner

from exporter.errors import UsageError
from exporter.families.detectors import list_detectors
from verify.cli import app
from verify.matrix.request import MatrixRequest


@pytest.mark.parametrize("detector", list_detectors())
def test_a_whole_detector_is_refused_in_one_line_naming_the_command_that_verifies_it(detector):
    with pytest.raises(UsageError, match=f"verify export -b {detector}"):
        MatrixRequest.create(backbones=["resnet18", detector])
    result = CliRunner().invoke(app, ["matrix", "-b", detector])
    assert result.exit_code == 2 and "whole detector" in result.output
    assert "Traceback" not in result.output
