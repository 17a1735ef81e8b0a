"""Defects found by trying today's new code as a user and an attacker would: each test fails without its fix."""

import math

import numpy as np
import pytest

from exporter.backbones import build_model
from exporter.errors import UsageError
from exporter.formats.eager import eager_artifact
from exporter.spec import MAX_INPUT_ELEMENTS, ModelSpec
from exporter.weights import load_weights
from verify import inputs as inputs_module
from verify.inputs import MAX_SAMPLE_VALUES, seeded_inputs
from verify.judge.trust import repeat_problems
from verify.pipeline.stages import run_stage
from verify.runtimes import RuntimeOptions

SHAPE = (1, 3, 32, 32)
NOISE = 1e-4
"""Below the rounding bound the floor guard allows for resnet18 at 32 px: only a repeat can tell it is random."""


@pytest.fixture(scope="module")
def resnet18():
    return build_model(ModelSpec("resnet18", "frozen", "body"), load_weights("synthetic", "resnet18", 0), 0)


def test_a_model_random_on_a_later_input_only_is_not_deterministic(resnet18):
    """Random only on non-negative inputs (the uniform samples, never the first, normal one): before the fix only
    the first input ran twice, so its noise passed into every channel's pooled floor and the verdict was exit 0."""
    import torch

    def noisy_on_uniform(module, args, out):
        if args[0].amin() < 0:
            return out
        return {name: value + NOISE * torch.randn_like(value) for name, value in out.items()}

    eager = eager_artifact(resnet18, SHAPE)
    feeds = [{eager.meta.input_name: item.array} for item in seeded_inputs(SHAPE, 0, 2)]
    assert feeds[0][eager.meta.input_name].min() < 0 <= feeds[1][eager.meta.input_name].min()
    hook = resnet18.model.register_forward_hook(noisy_on_uniform)
    try:
        run = run_stage("eager", eager, feeds, RuntimeOptions())
    finally:
        hook.remove()
    problems = repeat_problems([run.repeat], "cpu", {})
    assert len(problems) == 1 and "not deterministic" in problems[0]


def test_a_clean_model_is_deterministic_on_every_input(resnet18):
    eager = eager_artifact(resnet18, SHAPE)
    feeds = [{eager.meta.input_name: item.array} for item in seeded_inputs(SHAPE, 0, 3)]
    run = run_stage("eager", eager, feeds, RuntimeOptions())
    assert run.repeat.differences and not any(run.repeat.differences.values())
    assert repeat_problems([run.repeat], "cpu", {}) == []


def test_seeded_inputs_beyond_the_budget_are_refused_before_any_is_drawn(monkeypatch):
    """--samples times the largest allowed input was drawn in full (64 x 256 MiB) before anything said no."""
    drawn = []

    def placeholder(kind, shape, seed, index):
        drawn.append(kind)
        return np.zeros(1, np.float32)

    monkeypatch.setattr(inputs_module, "sample_array", placeholder)
    shape = (1, 1, 1, MAX_INPUT_ELEMENTS)
    fits = MAX_SAMPLE_VALUES // math.prod(shape)
    assert len(seeded_inputs(shape, 0, fits)) == fits
    drawn.clear()
    with pytest.raises(UsageError, match="--samples") as refused:
        seeded_inputs(shape, 0, fits + 1)
    assert drawn == [] and "\n" not in str(refused.value)


CHILD_EXIT_S = 60.0
"""The child only imports this project's light modules before it waits for its job."""


def test_a_background_child_whose_parent_is_killed_removes_its_folder(tmp_path):
    """A parent killed by SIGKILL cannot tidy: the child, seeing its lifeline close, removed nothing before the fix
    (/tmp/verify-onnx-export-* folders, with whatever the export had written, were left behind)."""
    import os
    import subprocess

    from verify.pipeline import overlap

    folder = tmp_path / "verify-onnx-export-x"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"half written")
    child_reads, parent_writes = os.pipe()
    parent_reads, child_writes = os.pipe()
    try:
        child = subprocess.Popen(overlap.child_command(child_reads, child_writes, folder), stdin=subprocess.PIPE,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 pass_fds=(child_reads, child_writes))
    finally:
        for fd in (child_reads, child_writes):
            os.close(fd)
    try:
        child.stdin.close()  # what the parent's death does to the lifeline
        assert child.wait(CHILD_EXIT_S) == 1
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for fd in (parent_reads, parent_writes):
            os.close(fd)
    assert not folder.exists()


def test_a_detector_image_that_is_not_rgb_is_refused_before_the_build(monkeypatch):
    """A 1-channel array broadcast against the RGB mean into a grey image and was judged as one (exit 0); a 2-channel
    one was an 'unexpected RuntimeError'."""
    from exporter.families import detectors
    from verify.detect.check import verify_detector

    def no_build(*args, **kwargs):
        raise AssertionError("the detector was built for an input it cannot take")

    monkeypatch.setattr(detectors, "build_detector", no_build)
    for channels in (1, 2, 4):
        image = np.zeros((channels, 32, 32), np.float32)
        with pytest.raises(UsageError, match="RGB images") as refused:
            verify_detector("ssdlite320_mobilenet_v3_large", images=[image])
        assert f"{channels}x32x32" in str(refused.value)
    with pytest.raises(UsageError, match="RGB images"):
        verify_detector("ssdlite320_mobilenet_v3_large", images=[np.zeros((1, 3, 32, 32), np.float32)])


def test_a_proposal_with_a_nan_coordinate_fails_the_pairing_instead_of_crashing():
    """A run whose RPN gives a NaN box (a broken export) made the assignment infeasible: an 'unexpected ValueError'
    (exit 2) where a failed pairing (exit 1) is the verdict."""
    from verify.detect.match import Detections
    from verify.detect.proposals import Bands, ProposalCheck, RpnRules, align_rows, explain_lone, pair_proposals

    ref = np.array([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [40.0, 0.0, 60.0, 12.0]])
    for broken in ([0], [0, 1, 2]):
        run = ref.copy()
        run[broken, 0] = np.nan
        assert pair_proposals(run, ref) == [(i, i) for i in range(len(ref)) if i not in broken]
    run = ref.copy()
    run[1, 2] = np.inf
    assert pair_proposals(run, ref) == [(0, 0), (2, 2)]
    check = ProposalCheck("run", "ref")
    rows = {"roi_heads.box_predictor.cls_score#0": np.arange(len(ref) * 2.0).reshape(len(ref), 2)}
    _, _, lone = align_rows([rows], [rows], [run], [ref], ["roi_heads.box_predictor.cls_score"], check)
    assert lone == [([1], [1])] and check.paired_per_image == [len(ref) - 1]
    rules = RpnRules(nms_thresh=0.7, post_nms_top_n=len(ref), score_thresh=0.05)
    candidates = Detections.of({"boxes": ref, "scores": np.full(len(ref), rules.score_thresh),
                                "labels": np.zeros(len(ref), np.int64)})  # all borderline, were the box matched
    explain_lone(check, 0, "run", run[1], candidates, rules, Bands(1.0, 1.0))
    assert not check.passed and not check.borderline
