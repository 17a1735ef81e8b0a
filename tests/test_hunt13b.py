"""Hunt 13b: a whole detector's folded float32 rounding in the goldens (verify/detect/goldens.py `_check_folded`,
`golden_samples`), attacked. Most edits of the folded group were already refused (README, hunt 13b); what was not
is tested here."""

from __future__ import annotations

import numpy as np
import pytest

from exporter.errors import ArtifactError
from exporter.manifest import GOLDENS_NAME
from verify.detect.goldens import DENSE, _check_folded, golden_samples

NAMES = ("rpn.head.cls_logits#0", "rpn.head.bbox_pred#0")
RPN_ERROR = 1e-4
"""The relative weight error seeded in the channel the folded sample lifts most. Which channel that is comes from
float32 rounding, so from the machine: channel 5, 54, 36 and 47 on 2 and 1 threads with AVX-512, 2 threads with ATen's
AVX2 kernels and 1 thread with them; an error of 1e-5 there was 12.7x, 7.8x, 6.2x and 2.5x (a pass) its lifted floor,
one of 1e-4 is 129x, 78x, 62x and 28x."""


def goldens(folded_names: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
    """One image's float32 dense tensors, and a folded group holding `folded_names` of them."""
    tensors = {f"0.{DENSE}.{name}": np.zeros((1, 3, 2, 2), np.float32) for name in NAMES}
    return {"float32": tensors, "folded": {key: tensors[key].copy() for key in tensors
                                           if key.removeprefix(f"0.{DENSE}.") in folded_names}}


def test_a_folded_group_lacking_a_tensor_names_what_it_lacks_and_what_to_do():
    """Before: `goldens.npz: folded.0.dense.rpn.head.cls_logits#0 is missing one of the folded detector's dense
    tensors (...)` (a folder whose folded group lost one tensor, rehashed): read as if the tensor named lacked
    something, and nothing said what to do."""
    with pytest.raises(ArtifactError) as error:
        _check_folded(goldens(NAMES[1:]), 1, list(NAMES))
    message = str(error.value)
    assert message.startswith(f"{GOLDENS_NAME} lacks folded.0.{DENSE}.{NAMES[0]}, one of")
    assert "re-export" in message and "\n" not in message


def test_a_folded_tensor_the_folder_does_not_judge_is_named_as_held():
    with pytest.raises(ArtifactError) as error:
        _check_folded(goldens(NAMES), 1, list(NAMES[:1]))
    assert str(error.value).startswith(f"{GOLDENS_NAME} holds folded.0.{DENSE}.{NAMES[1]}, not one of")


def test_a_complete_folded_group_is_each_images_sample_and_none_is_none():
    arrays = goldens(NAMES)
    _check_folded(arrays, 1, list(NAMES))
    assert [set(s) for s in golden_samples(arrays, 1)] == [set(NAMES)]
    assert golden_samples(goldens(()), 1) == []


@pytest.mark.slow
def test_the_folded_sample_does_not_hide_a_one_channel_error_on_the_rpn_head():
    """The suite's seeded one-channel error (tests/helpers.py one_channel_error) sits in the box head's fc7, whose
    per-proposal rows get no folded sample: nothing showed a tensor the sample does lift still catching an error.
    Measured (2 threads, AVX-512, 1x3x320x320, seed 0): the sample lifts rpn.head.bbox_pred#2 channel 5's floor 2.8x;
    a 1e-5 relative weight error in that channel is 12.7x the lifted floor (28.5x without), 2e-6 passes (3.3x; 9.2x
    without), so the margin halved; RPN_ERROR stays caught on every level whichever channel the machine's rounding
    lifts most."""
    import copy
    from dataclasses import replace

    import torch

    from exporter.families.detectors import build_detector, calibration_image
    from tests.helpers import NAME
    from verify.detect.eager_runs import concat_dense, folded_samples, run_eager
    from verify.judge.compare import AUTO_FACTOR, Tolerance, compare_arrays
    from verify.judge.measure import measure_floors

    built = build_detector(NAME)
    images = [calibration_image(0)]
    eager, oracle = run_eager(built, images, float64=False), run_eager(built, images, float64=True)
    sample = concat_dense(folded_samples(built, images), images)
    names = [name for name in sample if name.startswith("rpn.head.bbox_pred#")]
    floors = measure_floors({n: eager.dense[n] for n in names}, {n: oracle.dense[n] for n in names}, samples=[sample])
    alone = measure_floors({n: eager.dense[n] for n in names}, {n: oracle.dense[n] for n in names})
    lift = {(n, c): floors[n].channels[c] / alone[n].channels[c] for n in names for c in range(len(alone[n].channels))}
    (name, channel), most = max(lift.items(), key=lambda item: item[1])
    assert most > 1  # the sample does lift this channel: the error sits where it helps most
    model = copy.deepcopy(built.model)
    with torch.no_grad():
        model.rpn.head.bbox_pred.weight[channel] *= 1 + RPN_ERROR
    tampered = run_eager(replace(built, model=model), images, float64=False)
    worst = max((compare_arrays(n, tampered.dense[n], oracle.dense[n], Tolerance(factor=AUTO_FACTOR), floors[n])
                 for n in names), key=lambda output: output.ratio)
    assert worst.ratio > AUTO_FACTOR and not worst.passed, worst.verdict()
