"""Views and norm variants, for every family: what torchvision builds, module for module."""

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from exporter.api import get_backbone
from exporter.backbones import build_model
from exporter.families import FAMILIES
from exporter.norms import conv_bn_pairs, fold_batchnorms, get_norm
from exporter.spec import ModelSpec
from exporter.weights import load_weights, save_weights
from tests.conftest import SMALL_SHAPE, family_backbone
from verify.explain.localize import EQUIVALENCE_RTOL
from verify.explain.structure import canonical_modules

FAMILY_NAMES = FAMILIES.names()


def run(model, x):
    with torch.no_grad():
        return {k: v.numpy() for k, v in model(x).items()}


def norm_modules(model):
    return [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]


def norm_attributes(model):
    """Class and every plain attribute of each norm (eps, momentum, affine, ...), in module order."""
    return [(type(m).__name__, {k: v for k, v in vars(m).items() if not k.startswith("_") and k != "training"})
            for m in norm_modules(model)]


@pytest.fixture(scope="module")
def x():
    return torch.randn(SMALL_SHAPE, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_views_name_their_outputs(family, x):
    shapes = {}
    for view in FAMILIES.get(family).views:
        built = get_backbone(family_backbone(family), "frozen", view.name)
        outputs = run(built.model, x)
        assert list(outputs) == built.output_names == list(view.outputs)
        assert not built.model.training
        for name, value in outputs.items():  # one name, one quantity, whichever view computes it
            assert shapes.setdefault(name, value.shape) == value.shape, (view.name, name)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_views_share_the_classifiers_modules_and_values(family, x):
    """Canonical module names line up across views (the fpn's `body.` stripped), and the trunk's
    output is the body's output of the same name, bit for bit."""
    backbone = family_backbone(family)
    built = {v.name: get_backbone(backbone, "batch", v.name) for v in FAMILIES.get(family).views}
    names = {v: {n for n in canonical_modules(b.model, b.view.prefix) if not n.startswith("fpn")}
             for v, b in built.items()}
    assert names["body"] == names["trunk"] == names["fpn"] - {"body"}
    trunk_out, body_out = run(built["trunk"].model, x), run(built["body"].model, x)
    for name in trunk_out:
        np.testing.assert_array_equal(trunk_out[name], body_out[name])


def cache_as_imagenet(backbone, torch_home: Path):
    """Our synthetic weights where torchvision looks for IMAGENET1K_V1: its detection builder then loads
    them itself and builds its backbone as it does for trained weights (norm_layer=FrozenBatchNorm2d)."""
    import torchvision

    entry = torchvision.models.get_model_weights(backbone)["IMAGENET1K_V1"]
    path = torch_home / "hub" / "checkpoints" / Path(entry.url).name
    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(load_weights("synthetic", backbone), path)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_fpn_and_body_are_torchvisions_detection_backbone(family, x, tmp_path, monkeypatch):
    """Our backbone:frozen:fpn is `<detector>(weights_backbone=...).backbone` as torchvision builds it
    when it loads backbone weights: same modules and names, same norm classes and attributes, same outputs."""
    import torchvision.models.detection as detection

    backbone, builder = next(iter(FAMILIES.get(family).detection_builders.items()))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache_as_imagenet(backbone, tmp_path)
    theirs = getattr(detection, builder)(weights=None, weights_backbone="IMAGENET1K_V1").backbone.eval()
    fpn = get_backbone(backbone, "frozen", "fpn").model
    body = get_backbone(backbone, "frozen", "body").model
    assert norm_attributes(fpn) == norm_attributes(theirs)
    assert all(type(m) is FrozenBatchNorm2d for m in norm_modules(theirs))
    theirs.load_state_dict(fpn.state_dict())  # strict: the FPN's own init differs, nothing else
    with torch.no_grad():
        reference = theirs(x)
        reference_body = theirs.body(x)
    for mine, ref in zip(run(fpn, x).values(), reference.values(), strict=True):
        np.testing.assert_array_equal(mine, ref.numpy())
    for mine, ref in zip(run(body, x).values(), reference_body.values(), strict=True):
        np.testing.assert_array_equal(mine, ref.numpy())
    # without backbone weights torchvision builds the same modules (with the builder's BatchNorm2d)
    untrained = getattr(detection, builder)(weights=None, weights_backbone=None).backbone
    untrained.load_state_dict(get_backbone(backbone, "batch", "fpn").model.state_dict())


def torchvision_reference(backbone, norm):
    """The classifier as torchvision's own code makes each variant: its default norm (`batch`), the
    detection builders' `norm_layer=FrozenBatchNorm2d` (`frozen`), then `overwrite_eps(model, 0.0)` as
    they do for the ResNet-50 COCO_V1 weights (`frozen-eps0`)."""
    import torchvision
    from torchvision.models.detection._utils import overwrite_eps

    builder = getattr(torchvision.models, backbone)
    if norm == "batch":
        return builder(weights=None)
    model = builder(weights=None, norm_layer=FrozenBatchNorm2d)
    if norm == "frozen-eps0":
        overwrite_eps(model, 0.0)
    return model


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_norm_variants_are_what_torchvision_builds(family):
    """Every norm's class and attributes as torchvision builds them (frozen is also checked against the detection
    builder itself above); fused leaves no norm and a bias in every conv that had one."""
    backbone = family_backbone(family)
    count = len(norm_modules(torchvision_reference(backbone, "batch")))
    for norm in FAMILIES.get(family).norms:
        model = get_backbone(backbone, norm, "body").model
        if get_norm(norm).fold:
            assert norm_modules(model) == []
            assert sum(1 for m in model.modules() if isinstance(m, nn.Conv2d) and m.bias is not None) >= count
        else:
            assert norm_attributes(model) == norm_attributes(torchvision_reference(backbone, norm)), norm
            assert len(norm_modules(model)) == count


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_norm_variants_carry_the_same_weights(family):
    backbone = family_backbone(family)
    batch = get_backbone(backbone, "batch").model
    for norm in FAMILIES.get(family).norms:
        if get_norm(norm).fold or norm == "batch":
            continue
        other = get_backbone(backbone, norm).model
        for (name, a), (_, b) in zip(batch.named_modules(), other.named_modules(), strict=True):
            if isinstance(a, nn.BatchNorm2d):
                for attr in ("weight", "bias", "running_mean", "running_var"):
                    torch.testing.assert_close(getattr(a, attr).detach(), getattr(b, attr), rtol=0, atol=0,
                                               msg=f"{norm}: {name}.{attr}")


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_float64_equivalence_of_variants(family, x):
    """Variants compute the classifier's function exactly when their norms' eps is the classifier's (fused is
    the classifier folded); any other eps is another function, far beyond float64 rounding."""
    backbone = family_backbone(family)
    outputs, eps = {}, {}
    for norm in FAMILIES.get(family).norms:
        built = get_backbone(backbone, norm)
        outputs[norm] = run(built.float64(), x.double())
        eps[norm] = {m.eps for m in norm_modules(built.model)} or eps["batch"]
    for norm, result in outputs.items():
        for name, value in result.items():
            rel = np.abs(value - outputs["batch"][name]).max() / np.abs(outputs["batch"][name]).max()
            if eps[norm] == eps["batch"]:
                assert rel < EQUIVALENCE_RTOL, (norm, name, rel)
            else:
                assert rel > 1e3 * EQUIVALENCE_RTOL, (norm, name, rel)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_fused_float32_weights_are_the_exact_fold_rounded_once(family):
    built = get_backbone(family_backbone(family), "fused")
    for (name, p32), (_, p64) in zip(built.model.named_parameters(), built.float64().named_parameters(),
                                     strict=True):
        assert p64.dtype == torch.float64
        torch.testing.assert_close(p32, p64.float(), rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_fold_finds_every_conv_bn_pair(family):
    """The traced graph's pairs are every norm, each after the conv the family's mapping names."""
    spec = ModelSpec(family_backbone(family), "batch", "body")
    model = build_model(spec, load_weights("synthetic", spec.backbone)).model
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    fold_partner = FAMILIES.get(family).fold_partner
    assert conv_bn_pairs(model) == [(fold_partner(n), n) for n in norms]
    assert fold_batchnorms(model) == len(norms) > 0
    assert fold_batchnorms(model) == 0


def test_a_build_draws_no_random_init_it_would_overwrite(monkeypatch):
    """build_model loads every value of the classifier, so torchvision's random init (most of a build's time) is
    skipped: no init function draws values (it runs on the meta device's shapes only), and every value is the
    weights'."""
    calls = []

    def spy(tensor, *args, _real, _name, **kwargs):
        if not tensor.is_meta:
            calls.append(_name)
        return _real(tensor, *args, **kwargs)

    weights = load_weights("synthetic", "resnet18")
    for name in ("kaiming_normal_", "kaiming_uniform_", "normal_", "uniform_", "constant_", "ones_", "zeros_"):
        monkeypatch.setattr(nn.init, name, partial(spy, _real=getattr(nn.init, name), _name=name))
    built = build_model(ModelSpec("resnet18", "frozen", "body"), weights)
    assert calls == []
    body = {k: v for k, v in built.model.state_dict().items()}
    assert all(torch.equal(value, weights.state_dict[key]) for key, value in body.items())


def test_a_norm_with_values_outside_its_state_dict_is_built_with_its_own_init(monkeypatch):
    """A norm that keeps a tensor no state dict holds (a non-persistent buffer) would keep the uninitialised memory
    of an uninitialised build: such a model is built with the builder's own init, so the tensor is the norm's."""
    from dataclasses import replace

    from exporter.backbones import holds_values_outside_state
    from exporter.norms import NORMS

    class Gained(FrozenBatchNorm2d):
        def __init__(self, channels, *args, **kwargs):
            super().__init__(channels, *args, **kwargs)
            self.register_buffer("gain", torch.full((channels,), 2.0), persistent=False)

        def forward(self, x):
            return super().forward(x) * self.gain.view(1, -1, 1, 1)

    monkeypatch.setitem(NORMS._items, "frozen", replace(NORMS.get("frozen"), make_layer=lambda: Gained))
    weights = load_weights("synthetic", "resnet18")
    built = build_model(ModelSpec("resnet18", "frozen", "body"), weights)
    gains = [m.gain for m in built.model.modules() if isinstance(m, Gained)]
    assert gains and all(torch.equal(gain, torch.full_like(gain, 2.0)) for gain in gains)
    assert holds_values_outside_state(built.model)
    assert not holds_values_outside_state(build_model(ModelSpec("resnet18", "batch", "body"), weights).model)
