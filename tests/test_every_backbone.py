"""Every registered backbone through `verify_export` (its own file: the costliest tests, so that pytest-xdist's
per-file distribution can balance them against test_export.py); each one built and exported once, its other
norms checked for the two trust guards next to it (tests/test_trust.py)."""

import pytest

from exporter.backbones import BACKBONES, family_of, list_backbones
from exporter.export import ExportOptions
from exporter.formats import default_formats
from exporter.formats.onnx import OnnxOptions
from exporter.spec import ModelSpec
from tests.conftest import SMALL, family_backbone
from tests.helpers import TINY, assert_all_agree, assert_deterministic_and_under_the_bound
from verify.api import RunSettings, verify_export
from verify.judge.trust import rounding_bound

BETWEEN = {"resnet34", "resnet101"}
"""ResNets whose depth lies between two checked for every norm (resnet18, resnet50, resnet152) with the same blocks:
their other norms are not built again here (the suite's time; the rounding bound grows with depth, and the deepest
is checked). Their exported norm is judged in full like every backbone's."""
EXPORTED_NORM = "frozen"
"""The norm each backbone is exported with; the export's own guards show it deterministic and under the bound."""


def first_of_its_family(backbone: str) -> bool:
    return backbone == family_backbone(BACKBONES.get(backbone).family)


def floor_bound_ratios(evidence: dict) -> list[float]:
    """Each input's and output's floor as a share of its rounding bound, from a report's trust evidence."""
    return [output["floor"] / (rounding_bound(evidence["k"], output["precision"]) * output["scale"])
            for outputs in evidence["inputs"] for output in outputs.values() if output["scale"] > 0]


@pytest.mark.parametrize("backbone", [b for b in list_backbones() if b != SMALL])
def test_every_backbone_passes_and_every_norm_is_deterministic_and_under_the_bound(backbone, tmp_path):
    """Every registered backbone builds, takes its weights, exports and agrees. The first of each family
    exports every default format on the suite's seeded inputs; the deeper or wider ones leave out .pt2, whose
    torch.export trace, save and load cost 35 s for resnet152 alone on 2 cores and test nothing that the family's
    first does not, and are judged on one input (pooling over inputs is the family's first's, and
    tests/test_evidence.py's, to show).
    No false failure added: the export's eager run repeated bit for bit on every input and its float32 floors
    are a small share of the rounding bound (what verify/judge/trust.py guards, asserted here from the report's
    evidence); every other norm of the family is built and checked for the same (tests/test_trust.py)."""
    first = first_of_its_family(backbone)
    formats = default_formats() if first else tuple(f for f in default_formats() if f != "pt2")
    settings = RunSettings(shape=TINY, samples=None if first else 1)
    report = verify_export(ModelSpec(backbone, EXPORTED_NORM, "body"), settings, out=tmp_path,
                           export=ExportOptions(formats=formats,
                                                format_options=(OnnxOptions(exporter="torchscript"),)))
    assert_all_agree(report)
    assert {run.label for run in report.runs} >= {"eager", "torchscript", "onnxruntime"}
    eager, = [check for check in report.trust["repeats"] if check["label"] == "eager"]
    assert set(eager["differences"].values()) == {0.0} and not eager["mutated"]
    ratios = floor_bound_ratios(report.trust)
    assert ratios and max(ratios) < 1.0, ratios
    if backbone in BETWEEN:  # its norms' floor-to-bound shares lie between its family's shallower and deeper ones'
        return
    for norm in family_of(backbone).norms:
        if norm != EXPORTED_NORM:
            assert_deterministic_and_under_the_bound(backbone, norm)
