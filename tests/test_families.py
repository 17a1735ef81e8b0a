"""MobileNetV3, the second family: exported under every runtime, explained against torchvision's truth."""

import pytest
import torch
from torch import nn

from exporter.api import get_backbone
from exporter.backbones import list_backbones
from exporter.export import ExportOptions
from exporter.families import FAMILIES
from exporter.families.mobilenet_v3 import SE_GATE_BIAS_STD
from exporter.formats import default_formats
from exporter.formats.onnx import OnnxOptions
from exporter.spec import ModelSpec
from exporter.weights import load_weights
from tests.conftest import SMALL_SHAPE
from verify.api import RunSettings, verify_export
from verify.explain.equivalence import explain
from verify.explain.localize import EQUIVALENCE_RTOL

MOBILENETS = [b for b in list_backbones() if b.startswith("mobilenet_v3")]
SETTINGS = RunSettings(shape=SMALL_SHAPE)
HEADLINE = ("mobilenet_v3_small", "frozen")
"""The fpn cell exported in every default format: the small one, for the suite's 10 minutes (the large one's fpn cost
twice as much); the large one's body exports every default format in tests/test_every_backbone.py (the family's
first, the dynamo ONNX exporter on its hard-swish and SE blocks), its fpn TorchScript and the legacy ONNX here, and
the whole detector built on it in tests/conftest.py `detector_export`. This cell's ONNX file is the legacy exporter's
too (stop 48: the cell alone went from 24.8 to 20.3 s at a load of 3-4); the dynamo exporter's fpn (its extra
blocks, top-down upsampling) is judged on resnet18's in tests/test_export.py (fused x fpn)."""
NON_HEADLINE_FORMATS = tuple(fmt for fmt in default_formats() if fmt != "pt2")


def norms(model):
    return [(n, m) for n, m in model.named_modules() if "BatchNorm" in type(m).__name__]


@pytest.mark.parametrize("norm", FAMILIES.get("mobilenet_v3").norms)
@pytest.mark.parametrize("backbone", MOBILENETS)
def test_fpn_export_agrees_under_every_runtime(backbone, norm, tmp_path):
    """`verify export -b <backbone> --view fpn --norm <norm>`: the headline cell with every default format, the others
    without the .pt2, whose torch.export trace is most of what is left; the ONNX file from the legacy exporter (4x
    faster to export; where the dynamo one is judged on these blocks: HEADLINE)."""
    headline = (backbone, norm) == HEADLINE
    export = ExportOptions(formats=default_formats() if headline else NON_HEADLINE_FORMATS,
                           format_options=(OnnxOptions(exporter="torchscript"),))
    report = verify_export(ModelSpec(backbone, norm, "fpn"), SETTINGS, out=tmp_path, export=export)
    failing = [(p.a, p.b, p.worst.name, p.worst.ratio) for p in report.pairs if not p.passed]
    assert report.passed and report.exit_code == 0, failing
    runs = [r.label for r in report.runs]
    assert len(runs) == len(export.formats) + 1  # eager and one runtime per exported format, every one judged
    assert {p.a for p in report.pairs} == set(runs)
    assert {p.worst.name for p in report.pairs} <= {"p4", "p5", "pool"}


def test_small_fpn_is_torchvisions_extractor_applied_to_small():
    """No torchvision detector is built on mobilenet_v3_small; its fpn is the large one's extractor on small."""
    from torchvision.models import mobilenet_v3_small
    from torchvision.models.detection.backbone_utils import _mobilenet_extractor
    from torchvision.ops.misc import FrozenBatchNorm2d

    ours = get_backbone("mobilenet_v3_small", "frozen", "fpn").model
    theirs = _mobilenet_extractor(mobilenet_v3_small(weights=None, norm_layer=FrozenBatchNorm2d), True, 6).eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(SMALL_SHAPE)
    with torch.no_grad():
        for mine, ref in zip(ours(x).values(), theirs(x).values(), strict=True):
            torch.testing.assert_close(mine, ref, rtol=0, atol=0)


def test_explain_classifier_vs_detection_body_names_eps():
    """torchvision's truth: the detection builder's FrozenBatchNorm2d keeps its own eps (1e-5), not the
    classifier's (1e-3), so the two bodies compute different functions from the same weights; explain
    says so, and names eps at the first norm."""
    a, b = "mobilenet_v3_large:batch:body", "mobilenet_v3_large:frozen:body"
    result = explain(a, b, SETTINGS)
    assert not result.equivalent and result.exit_code == 1 and result.how == "float64"
    assert all(d["max_rel"] > 1e3 * EQUIVALENCE_RTOL for d in result.float64_difference.values())
    batch = norms(get_backbone("mobilenet_v3_large", "batch", "body").model)
    frozen = norms(get_backbone("mobilenet_v3_large", "frozen", "body").model)
    eps_a, eps_b = f"{batch[0][1].eps:g}", f"{frozen[0][1].eps:g}"
    assert eps_a != eps_b
    first_norm = batch[0][0]
    assert result.first_divergence == first_norm
    assert f"{first_norm}: eps {eps_a} vs {eps_b}" in result.divergence_text()
    assert f"{first_norm}: BatchNorm2d vs FrozenBatchNorm2d" in result.divergence_text()
    kinds = {}
    for diff in result.structural_differences:
        kinds.setdefault((diff.kind, diff.a, diff.b), []).append(diff.module)
    assert kinds == {("type", "BatchNorm2d", "FrozenBatchNorm2d"): [n for n, _ in batch],
                     ("eps", eps_a, eps_b): [n for n, _ in batch]}


def test_explain_fused_names_each_norms_conv():
    result = explain("mobilenet_v3_large:batch:body", "mobilenet_v3_large:fused:body", SETTINGS)
    assert result.equivalent
    model = dict(get_backbone("mobilenet_v3_large", "batch", "body").model.named_modules())
    folded = [d for d in result.structural_differences if d.kind == "folded"]
    assert len(folded) == len([m for m in model.values() if isinstance(m, nn.BatchNorm2d)])
    for diff in folded:
        partner = diff.b.removeprefix("folded into ")
        assert isinstance(model[partner], nn.Conv2d), diff
        assert partner == FAMILIES.get("mobilenet_v3").fold_partner(diff.module)


@pytest.mark.parametrize("backbone", MOBILENETS)
def test_synthetic_weights_are_trained_like(backbone):
    """Depthwise norms see variances above the classifier's eps (torchvision's fan-out init leaves them
    below it), and SE gates spread over (0, 1) instead of sitting at 0.5."""
    from torchvision.ops.misc import SqueezeExcitation

    from exporter.backbones import build_classifier

    model = build_classifier(backbone, None)
    model.load_state_dict(load_weights("synthetic", backbone).state_dict)
    model.eval()
    convs = dict(model.named_modules())
    family = FAMILIES.get("mobilenet_v3")
    for name, norm in norms(model):
        conv = convs[family.fold_partner(name)]
        if conv.groups > 1:
            assert float(norm.running_var.median()) > norm.eps, name
    gates = []
    hooks = [m.scale_activation.register_forward_hook(lambda _m, _i, out: gates.append(out.flatten()))
             for m in model.modules() if isinstance(m, SqueezeExcitation)]
    with torch.no_grad():
        model(torch.randn(SMALL_SHAPE, generator=torch.Generator().manual_seed(0)))
    for hook in hooks:
        hook.remove()
    assert gates and float(torch.cat(gates).std()) > SE_GATE_BIAS_STD / 6 / 2

