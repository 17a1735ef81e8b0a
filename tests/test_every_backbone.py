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

DEEPEST = {"resnet152"}
"""Beside each family's first, the backbones whose other norms are built and checked here: the deepest ResNet, where
a norm's floor-to-bound share is largest (the bound's share grows with depth; the shares of all 102 models at 128x128
are measured in the README; the family's first, tests/test_trust.py). The ones between (resnet34/50/101,
wide_resnet50_2, resnext50_32x4d) are not built again in their other norms: the suite's 10 minutes (7 s of
wide_resnet50_2's 19 s went there). Their exported norm is judged in full like every backbone's."""
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
    exports every default format on the suite's seeded inputs; the deeper or wider ones export their ONNX file
    alone (the .pt2's torch.export trace, save and load cost 35 s for resnet152 on 2 cores, and TorchScript 2-3 s,
    testing nothing that the family's first does not), and are judged on one input (pooling over inputs is the
    family's first's, and tests/test_evidence.py's, to show).
    No false failure added: the export's eager run repeated bit for bit on every input and its float32 floors
    are a small share of the rounding bound (what verify/judge/trust.py guards, asserted here from the report's
    evidence); every other norm of the family is built and checked for the same (tests/test_trust.py)."""
    first = first_of_its_family(backbone)
    # the deeper or wider ones: the ONNX file alone (their TorchScript scripting tests nothing the family's first
    # does not, and cost 2-3 s each of the suite's 10 minutes for the deepest)
    formats = default_formats() if first else ("onnx",)
    settings = RunSettings(shape=TINY, samples=None if first else 1)
    report = verify_export(ModelSpec(backbone, EXPORTED_NORM, "body"), settings, out=tmp_path,
                           export=ExportOptions(formats=formats,
                                                format_options=(OnnxOptions(exporter="torchscript"),)))
    assert_all_agree(report)
    assert {run.label for run in report.runs} >= {"eager", "onnxruntime"} | ({"torchscript"} if first else set())
    eager, = [check for check in report.trust["repeats"] if check["label"] == "eager"]
    assert set(eager["differences"].values()) == {0.0} and not eager["mutated"]
    ratios = floor_bound_ratios(report.trust)
    assert ratios and max(ratios) < 1.0, ratios
    if not first and backbone not in DEEPEST:
        return
    for norm in family_of(backbone).norms:
        if norm != EXPORTED_NORM:
            assert_deterministic_and_under_the_bound(backbone, norm)
