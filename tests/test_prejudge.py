"""Comparisons made while the export waits for a background file (verify/pipeline/stages.py `judge_stage`'s memo)
are the ones the final judging would have made: the same verdicts and figures, each comparison made once, and a
memo entry never stands in for other outputs that happen to carry the same labels. That an export judges its finished
runs while it waits for the ONNX file, and takes them from the memo at the end, is asserted on the background export of
tests/test_preload.py `test_a_pt2_that_arrives_during_the_oracle_starts_loading_before_the_oracle_ends` (one export
for both)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from exporter.backbones import build_model
from exporter.formats.eager import eager_artifact
from exporter.spec import ModelSpec
from exporter.weights import load_weights
from verify.inputs import seeded_inputs
from verify.judge import compare
from verify.judge.compare import Tolerance
from verify.pipeline.stages import oracles_stage, pooled_judge_stage, run_stage
from verify.runtimes import RuntimeOptions

SHAPE = (1, 3, 32, 32)
SAMPLES = 2


@pytest.fixture(scope="module")
def cell():
    """Three runs of resnet18 on two inputs (the second and third nudged by a few float32 steps), and the oracles."""
    built = build_model(ModelSpec("resnet18", "frozen", "body"), load_weights("synthetic", "resnet18", 0), 0)
    eager = eager_artifact(built, SHAPE)
    feeds = [{eager.meta.input_name: item.array} for item in seeded_inputs(SHAPE, 0, SAMPLES)]
    clean = run_stage("eager", eager, feeds, RuntimeOptions())

    def nudged(label, steps):
        outputs = [{k: np.nextafter(v, np.inf) if steps == 1 else v * np.float32(1 + 1e-6) for k, v in out.items()}
                   for out in clean.outputs]
        return replace(clean, label=label, outputs=outputs)

    runs = [clean, nudged("second", 1), nudged("third", 2)]
    return runs, oracles_stage(eager, feeds, [clean], batch=True)


def figures(judged):
    return [[p.to_dict() for p in pairs] for pairs in judged]


def test_a_memo_filled_while_waiting_gives_the_verdicts_judging_everything_at_the_end_gives(cell, monkeypatch):
    runs, oracles = cell
    made = []
    real = compare.compare_outputs

    def counted(*args, **kwargs):
        made.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(compare, "compare_outputs", counted)
    _, without = pooled_judge_stage(runs, oracles, Tolerance())
    everything = len(made)
    made.clear()
    memo: dict = {}
    pooled_judge_stage(runs[:2], oracles, Tolerance(), memo)  # the finished runs, while the third's file is awaited
    early = len(made)
    _, final = pooled_judge_stage(runs, oracles, Tolerance(), memo)
    assert figures(final) == figures(without)
    assert len(made) == everything  # nothing compared twice
    assert 0 < early < everything


def test_a_memo_entry_is_never_reused_for_other_outputs_under_the_same_labels(cell):
    runs, oracles = cell
    memo: dict = {}
    _, first = pooled_judge_stage(runs, oracles, Tolerance(), memo)
    broken = replace(runs[2], outputs=[{k: v + np.float32(1.0) for k, v in out.items()} for out in runs[2].outputs])
    _, again = pooled_judge_stage([runs[0], runs[1], broken], oracles, Tolerance(), memo)
    assert all(p.passed for pairs in first for p in pairs)
    assert any(not p.passed for pairs in again for p in pairs if "third" in (p.a, p.b))
