"""`verify explain` between two detectors pairs Faster R-CNN's box-head rows by proposal
(verify/detect/explain.py): a reordering of the same proposals is the same function, and while locating a real
difference, the box head's rows line up so the reordering is never named as the first divergence."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from exporter.families.detectors import PER_PROPOSAL_MODULES, build_detector, calibration_image
from verify.detect.eager_runs import run_eager
from verify.detect.explain import explain_built
from verify.detect.proposals import PROPOSALS
from verify.explain.localize import EQUIVALENCE_RTOL

NAME = "fasterrcnn_mobilenet_v3_large_320_fpn"
SPECS = (f"{NAME}:frozen", f"{NAME}:frozen reordered")
CHANGED = "roi_heads.box_head.fc7"
"""The module given a real change downstream of the proposals."""
EDIT = 1e-3
"""A relative edit of one row of its weight: far above float64 rounding, far below a reordering's effect."""


def _reversed(output):
    boxes, losses = output
    return [b.flip(0) for b in boxes], losses


@pytest.fixture(scope="module")
def sides():
    """A: the detector as built. B: a copy whose RPN hands the same proposals to the box head in reverse."""
    built = build_detector(NAME, "frozen", "synthetic", 0)
    model = copy.deepcopy(built.model)
    model.rpn.register_forward_hook(lambda module, args, output: _reversed(output))
    return built, dataclasses.replace(built, model=model)


@pytest.fixture(scope="module")
def image():
    return calibration_image(0)


def test_the_reordering_is_real_by_index(sides, image):
    """Guard for the tests below: compared row by row, the reversed box head differs far beyond rounding."""
    a, b = (run_eager(side, [image], float64=True).dense for side in sides)
    name = f"{PER_PROPOSAL_MODULES[0]}#0"
    assert a[name].shape == b[name].shape
    assert np.abs(a[name] - b[name]).max() > EQUIVALENCE_RTOL * np.abs(a[name]).max()


def test_the_same_proposals_in_another_order_are_equivalent(sides, image):
    result = explain_built(sides, SPECS, image, "calibration image")
    assert result.equivalent and result.exit_code == 0, result.headline()
    assert result.first_divergence is None
    assert {f"{m}#0" for m in PER_PROPOSAL_MODULES} | {PROPOSALS} <= set(result.outputs)
    assert all(d["max_rel"] <= EQUIVALENCE_RTOL for d in result.float64_difference.values())


def test_a_real_change_after_the_reordering_is_located_at_its_module(sides, image):
    """With the reordering and an edit of fc7, the first divergence is fc7, not the pooled features whose rows
    the reordering moved (the index comparison's answer)."""
    a, b = sides
    model = copy.deepcopy(b.model)
    with torch.no_grad():
        model.get_submodule(CHANGED).weight[0] *= 1 + EDIT
    result = explain_built([a, dataclasses.replace(b, model=model)], SPECS, image, "calibration image")
    assert not result.equivalent and result.exit_code == 1
    assert result.first_divergence == CHANGED, result.divergence_text()
    assert result.float64_difference[PROPOSALS]["max_rel"] <= EQUIVALENCE_RTOL
