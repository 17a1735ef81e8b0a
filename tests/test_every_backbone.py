"""Every registered backbone through `verify_export` (its own file: the costliest tests, so that pytest-xdist's
per-file distribution can balance them against test_export.py)."""

import pytest

from exporter.backbones import BACKBONES, list_backbones
from exporter.export import ExportOptions
from exporter.formats import default_formats
from exporter.formats.onnx import OnnxOptions
from exporter.spec import ModelSpec
from tests.conftest import SMALL, family_backbone
from tests.test_export import TINY, assert_all_agree
from verify.api import RunSettings, verify_export


def first_of_its_family(backbone: str) -> bool:
    return backbone == family_backbone(BACKBONES.get(backbone).family)


@pytest.mark.parametrize("backbone", [b for b in list_backbones() if b != SMALL])
def test_every_backbone_passes(backbone, tmp_path):
    """Every registered backbone builds, takes its weights, exports and agrees. The first of each family
    exports every default format; the deeper or wider ones leave out .pt2, whose torch.export trace, save and
    load cost 35 s for resnet152 alone on 2 cores and test nothing that the family's first does not."""
    formats = default_formats() if first_of_its_family(backbone) else tuple(f for f in default_formats()
                                                                              if f != "pt2")
    report = verify_export(ModelSpec(backbone, "frozen", "body"), RunSettings(shape=TINY), out=tmp_path,
                           export=ExportOptions(formats=formats,
                                                format_options=(OnnxOptions(exporter="torchscript"),)))
    assert_all_agree(report)
    assert {run.label for run in report.runs} >= {"eager", "torchscript", "onnxruntime"}
