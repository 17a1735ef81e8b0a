"""Review 32: a detector's recorded class count is cross-checked against its heads' widths for every kind. Before,
only Faster R-CNN's class logits (one column a class) pinned it: a RetinaNet, FCOS or SSDlite folder's manifest (or a
matrix cell) with `classes` raised from 91 to 365 let its goldens' labels reach 364, widening every NMS rounding band
a label offsets. Their class heads hold their anchors' classes a location, the box heads four columns an anchor."""

from __future__ import annotations

import numpy as np
import pytest

from exporter.errors import ArtifactError
from tests.helpers import minimal_goldens
from verify.detect.goldens import CLASS_HEADS, CLASSES, check_goldens
from verify.matrix.detector_judging import _class_width

RAISED = 365
"""A class count an attacker writes over the true one, to let labels up to RAISED - 1 through."""
SHAPE = [3, 32, 32]
(CLS, BOX), (CLS_LEVELS, BOX_LEVELS) = CLASS_HEADS


def heads(anchors: int, classes: int) -> dict[str, tuple[int, ...]]:
    """RetinaNet's (FCOS's: one anchor) class and box heads at two levels, and SSDlite's, as they are recorded."""
    return {**{f"{CLS}#{level}": (1, anchors * classes, side, side) for level, side in enumerate((4, 2))},
            **{f"{BOX}#{level}": (1, anchors * 4, side, side) for level, side in enumerate((4, 2))}}


def ssd_heads(anchors: int, classes: int) -> dict[str, tuple[int, ...]]:
    return {**{f"{CLS_LEVELS}{level}.1#0": (1, anchors * classes, side, side) for level, side in enumerate((4, 2))},
            **{f"{BOX_LEVELS}{level}.1#0": (1, anchors * 4, side, side) for level, side in enumerate((4, 2))}}


def goldens(dense: dict[str, tuple[int, ...]], label: int) -> dict[str, dict[str, np.ndarray]]:
    return minimal_goldens(dense, label, SHAPE)


KINDS = {"retinanet": heads(9, CLASSES), "fcos": heads(1, CLASSES), "ssd": ssd_heads(6, CLASSES)}


@pytest.mark.parametrize("kind", KINDS)
def test_a_raised_class_count_is_refused_by_the_heads_widths(kind):
    dense = KINDS[kind]
    assert "all finite" in check_goldens(goldens(dense, CLASSES - 1), [SHAPE], list(dense), False, (), CLASSES)
    assert "all finite" in check_goldens(goldens(dense, CLASSES - 1), [SHAPE], list(dense), False, (), None)
    with pytest.raises(ArtifactError, match=f"records {RAISED} classes"):  # labels up to 364 hidden behind it
        check_goldens(goldens(dense, RAISED - 1), [SHAPE], list(dense), False, (), RAISED)
    pairs = [{"outputs": [{"name": name, "shape_b": list(shape)} for name, shape in dense.items()]}]
    assert _class_width(pairs, CLASSES, kind) == [] and _class_width(pairs, None, kind) == []
    assert f"records {RAISED} classes" in _class_width(pairs, RAISED, kind)[0]


def test_a_fine_tuned_head_passes_with_its_own_count_and_an_older_folder_within_the_default():
    for dense in (heads(9, RAISED), ssd_heads(6, RAISED)):
        assert "all finite" in check_goldens(goldens(dense, RAISED - 1), [SHAPE], list(dense), False, (), RAISED)
        with pytest.raises(ArtifactError, match="records no class count"):  # no count recorded: at most CLASSES
            check_goldens(goldens(dense, 0), [SHAPE], list(dense), False, (), None)
    fewer = heads(9, 12)  # an older folder's fine-tuned head with fewer classes fitted the default bound
    assert "all finite" in check_goldens(goldens(fewer, 11), [SHAPE], list(fewer), False, (), None)
    # a class head whose width its box head's anchors do not divide is no detector's
    odd = {**heads(9, CLASSES), f"{CLS}#1": (1, 9 * CLASSES + 1, 2, 2)}
    with pytest.raises(ArtifactError, match=f"{CLS}#1"):
        check_goldens(goldens(odd, 0), [SHAPE], list(odd), False, (), CLASSES)


def refusal(klass: type) -> str:
    from exporter.errors import UsageError
    from exporter.user_model import _refuse_detector

    with pytest.raises(UsageError) as caught:
        _refuse_detector(klass.__new__(klass), "det.py:make")  # read from its class alone: no build needed
    return str(caught.value)


def test_a_detector_model_is_refused_with_its_own_torchvision_class():
    """SSDlite's class is SSD, whose lowercase name began ssd300_vgg16's: a registered SSDlite returned by --model was
    called "not verified yet (... VGG-16 ...)"; a user's subclass of Mask R-CNN was sent to the Faster R-CNN path."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.ssd import SSD

    from exporter.families.detectors import DETECTORS

    ssdlite = refusal(SSD)
    assert "not verified yet" not in ssdlite and "--weights det.pt" in ssdlite
    assert any(DETECTORS.get(name).kind == "ssd" and name in ssdlite for name in DETECTORS.names())

    class Fine(MaskRCNN):
        pass

    mask = refusal(Fine)
    masks = [name for name in DETECTORS.names() if DETECTORS.get(name).kind == "maskrcnn"]
    assert masks and "--weights det.pt" in mask and all(name in mask for name in masks)
    assert "not verified yet" not in mask
