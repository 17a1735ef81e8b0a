"""Sweep 21c: the layer verdict by default for a user's own model (`--model`), and a .pt2 whose symbolic sizes are
too long to read says what to do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import invoke

SHAPE = "1x3x32x32"


def test_export_of_a_users_model_runs_the_layer_verdict_by_default(tmp_path, monkeypatch):
    """Before: `verify export --model f.py:make` judged the outputs alone unless --layers (its floors were never
    calibrated on users' models); sweep 21c measured 165 files of 17 architectures within 3.22x their own floors, and
    found models whose outputs say nothing (a zero head). Now it runs by default, best effort, as for a backbone."""
    from verify.judge.layers import LAYERS_ENV

    monkeypatch.delenv(LAYERS_ENV, raising=False)
    report = tmp_path / "r.json"
    result = invoke("export", "--model", "tests/data/tiny.py:make", "--shape", SHAPE, "--samples", "1", "--format",
                    "onnx", "--no-cache", "--out", tmp_path / "out", "--json", report)
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["layer_verdict"] == {"run": "default", "judged": ["model.onnx"], "not_judged": []}
    assert data["layers"][0]["passed"] and data["layers"][0]["layers"], "its layers were re-run and judged"


def test_a_symbolic_expression_too_long_to_read_says_what_to_do():
    """Before: a correct dynamic export of swin_t (64 px) was refused after a 5-minute export with "is not a short
    string; loading would evaluate it; refused", and nothing said what to do. Now the one line names --static and the
    other formats."""
    from exporter.errors import ArtifactError
    from exporter.formats.pt2 import MAX_EXPRESSION, _check_expression

    long = "+".join(["s0"] * (MAX_EXPRESSION // 2))
    with pytest.raises(ArtifactError) as caught:
        _check_expression(Path("model.pt2"), long, set(), "symbolic expression")
    said = str(caught.value)
    assert "--static" in said and "--format torchscript" in said and len(said.splitlines()) == 1
    _check_expression(Path("model.pt2"), "+".join(["s0"] * 100), set(), "symbolic expression")  # short: read
