import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from exporter.backbones import build_model, get_backbone
from exporter.norms import fold_batchnorms, list_norms
from exporter.spec import ModelSpec
from exporter.weights import load_weights
from tests.conftest import SMALL, SMALL_SHAPE


def run(model, x):
    with torch.no_grad():
        return {k: v.numpy() for k, v in model(x).items()}


@pytest.fixture(scope="module")
def x():
    return torch.randn(SMALL_SHAPE, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(("view", "names", "spatial"), [
    ("body", ["layer1", "layer2", "layer3", "layer4"], [16, 8, 4, 2]),
    ("fpn", ["p2", "p3", "p4", "p5", "pool"], [16, 8, 4, 2, 1]),
    ("trunk", ["layer4"], [2]),
])
def test_views_name_their_outputs(view, names, spatial, x):
    built = get_backbone(SMALL, "frozen", view)
    outputs = run(built.model, x)
    assert list(outputs) == names == built.output_names
    assert [o.shape[-1] for o in outputs.values()] == spatial
    assert not built.model.training


def test_trunk_and_body_compute_layer4_identically(x):
    body = get_backbone(SMALL, "batch", "body")
    trunk = get_backbone(SMALL, "batch", "trunk")
    # same torchvision modules under the same names, as nn.Sequential(*children[:-2]) would be
    assert [n for n, _ in trunk.model.named_children()] == ["conv1", "bn1", "relu", "maxpool", "layer1",
                                                            "layer2", "layer3", "layer4"]
    np.testing.assert_array_equal(run(body.model, x)["layer4"], run(trunk.model, x)["layer4"])


def test_fpn_view_is_torchvisions_detection_backbone(x):
    """Our resnet50:batch:fpn is fasterrcnn_resnet50_fpn(weights=None).backbone, key for key."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    ours = get_backbone("resnet50", "batch", "fpn").model
    theirs = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).backbone.eval()
    theirs.load_state_dict(ours.state_dict())  # strict: same modules, same names
    mine, reference = run(ours, x), run(theirs, x)
    for level, key in zip(["p2", "p3", "p4", "p5", "pool"], ["0", "1", "2", "3", "pool"]):
        np.testing.assert_array_equal(mine[level], reference[key].numpy() if hasattr(reference[key], "numpy")
                                      else reference[key])


def norm_modules(model):
    return [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]


def test_norm_variants_layer_types():
    batch = get_backbone(SMALL, "batch").model
    frozen = get_backbone(SMALL, "frozen").model
    eps0 = get_backbone(SMALL, "frozen-eps0").model
    fused = get_backbone(SMALL, "fused").model
    assert len(norm_modules(batch)) == 20 and all(type(m) is nn.BatchNorm2d for m in norm_modules(batch))
    assert all(type(m) is FrozenBatchNorm2d and m.eps == 1e-5 for m in norm_modules(frozen))
    assert all(type(m) is FrozenBatchNorm2d and m.eps == 0.0 for m in norm_modules(eps0))
    assert norm_modules(fused) == []
    assert all(m.bias is not None for m in fused.modules() if isinstance(m, nn.Conv2d))


def test_norm_variants_carry_the_same_weights():
    batch = get_backbone(SMALL, "batch").model
    frozen = get_backbone(SMALL, "frozen-eps0").model
    for (name, a), (_, b) in zip(batch.named_modules(), frozen.named_modules()):
        if isinstance(a, nn.BatchNorm2d):
            for attr in ("weight", "bias", "running_mean", "running_var"):
                torch.testing.assert_close(getattr(a, attr).detach(), getattr(b, attr), rtol=0, atol=0,
                                           msg=f"{name}.{attr}")


def test_float64_equivalence_of_variants(x):
    """batch, frozen and fused compute one function; eps 0 computes another."""
    outputs = {}
    for norm in list_norms():
        model = get_backbone(SMALL, norm).float64()
        outputs[norm] = run(model, x.double())["layer4"]
    scale = np.abs(outputs["batch"]).max()
    for norm in ("frozen", "fused"):
        assert np.abs(outputs[norm] - outputs["batch"]).max() / scale < 1e-10, norm
    assert np.abs(outputs["frozen-eps0"] - outputs["batch"]).max() / scale > 1e-4


def test_fused_float32_weights_are_the_exact_fold_rounded_once():
    built = get_backbone(SMALL, "fused")
    for (name, p32), (_, p64) in zip(built.model.named_parameters(), built.float64().named_parameters()):
        assert p64.dtype == torch.float64
        torch.testing.assert_close(p32, p64.float(), rtol=0, atol=0, msg=name)


def test_fold_finds_every_conv_bn_pair():
    model = build_model(ModelSpec(SMALL, "batch", "body"), load_weights("synthetic", SMALL)).model
    assert fold_batchnorms(model) == 20
    assert fold_batchnorms(model) == 0
