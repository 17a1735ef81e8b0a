"""A detector export that fails on an image its own transform scales by a factor neither whole nor one over a whole
number says the resize may be the cause (the documented upstream mismatch, verify/detect/verdict.py RESIZE_ISSUE) and
how to judge the rest: a 240x400 photo failed at 1.5e6x the floor with no word of why."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from exporter.families.detectors import DETECTORS
from verify.detect.verdict import RESIZE_ISSUE, resize_notes


def _built(kind_has_min_size: bool):
    name = next(n for n in DETECTORS.names() if ("min_size" in DETECTORS.get(n).options) == kind_has_min_size)
    return SimpleNamespace(name=name, detector=DETECTORS.get(name))


@pytest.mark.parametrize("shape, noted", [((240, 400), True), ((330, 330), True), ((320, 320), False),
                                          ((640, 640), False), ((160, 160), False), ((256, 320), False)])
def test_an_image_scaled_by_an_uneven_factor_is_named(shape, noted):
    built = _built(True)
    side = built.detector.options["min_size"]
    notes = resize_notes(built, [torch.zeros(3, *shape)])
    assert bool(notes) == noted, notes
    if noted:
        assert RESIZE_ISSUE in notes[0] and f"--shape 1x3x{side}x{side}" in notes[0] and "x".join(map(str, shape)) \
            in notes[0]


def test_a_detector_resizing_every_image_to_its_fixed_size_gets_no_note():
    assert resize_notes(_built(False), [torch.zeros(3, 240, 400)]) == []
