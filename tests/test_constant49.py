"""Stop 49: a model whose outputs do not depend on its input passed with no word of it (hunt 38: `self.b + 0 *
x.sum()`, exported and judged at 0.0x its floor, exit 0). The verdict is honest (every file computes the same
constant), so it stands; the report now says what it rests on (verify/pipeline/stages.py `constant_output_notes`)."""

from __future__ import annotations

import numpy as np

from tests.helpers import invoke
from verify.pipeline.stages import constant_output_notes

MODEL = "tests/data/constant49_models.py:ignores"


def test_outputs_equal_on_every_input_are_noted():
    same = {"out": np.arange(4.0)}
    assert constant_output_notes([same, {"out": np.arange(4.0)}])
    assert not constant_output_notes([same, {"out": np.arange(4.0) + 1e-12}])  # an output that moves at all
    assert not constant_output_notes([same])  # one input tells nothing


def test_an_export_of_a_model_that_ignores_its_input_says_so(tmp_path):
    result = invoke("export", "--model", MODEL, "--shape", "1x3x4x4", "--format", "onnx", "--static", "--samples",
                    "2", "--no-layers", "--no-cache", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "gave the model the same outputs" in " ".join(result.output.split()), result.output
