import time

import numpy as np
import pytest
import torch

from exporter.backbones import MISFIT_EXAMPLES, build_classifier, build_model, family_of
from exporter.errors import SetupError, UsageError
from exporter.families import FAMILIES
from exporter.spec import ModelSpec
from exporter.weights import (
    BRANCH_END_GAMMA_RANGE,
    GAMMA_RANGE,
    Weights,
    _synthetic_state_dict,
    load_weights,
    save_weights,
    state_dict_sha256,
    synthetic_weights,
)
from tests.conftest import SMALL, SMALL_SHAPE, family_backbone

FAMILY_BACKBONES = [family_backbone(f) for f in FAMILIES]


def outputs(spec, weights):
    model = build_model(spec, weights).model
    x = torch.randn(SMALL_SHAPE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return {k: v.numpy() for k, v in model(x).items()}


@pytest.mark.parametrize("backbone", FAMILY_BACKBONES)
def test_synthetic_weights_are_deterministic_per_seed(backbone):
    fresh = _synthetic_state_dict.__wrapped__  # bypass the in-process cache
    (a, digest), (b, _), (c, _) = fresh(backbone, 0), fresh(backbone, 0), fresh(backbone, 1)
    assert digest == state_dict_sha256(a) == synthetic_weights(backbone, 0).sha256  # remembered: these values'
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("backbone", FAMILY_BACKBONES)
def test_synthetic_weights_are_the_same_bits_on_any_thread_count(backbone):
    """Measured before the fix: resnet50's weights digest differed between 1 and 2 torch threads (the
    calibration passes' sums split by thread), so a warm run on another thread count missed the cache."""
    fresh = _synthetic_state_dict.__wrapped__
    threads = torch.get_num_threads()
    try:
        digests = []
        for count in (1, 2):
            torch.set_num_threads(count)
            digests.append(state_dict_sha256(fresh(backbone, 0)[0]))
            assert torch.get_num_threads() == count  # the caller's thread count is restored
    finally:
        torch.set_num_threads(threads)
    assert digests[0] == digests[1]


@pytest.mark.parametrize("backbone", FAMILY_BACKBONES)
def test_synthetic_statistics_are_calibrated(backbone):
    state = load_weights("synthetic", backbone).state_dict
    variances = torch.cat([v for k, v in state.items() if k.endswith("running_var")])
    means = torch.cat([v for k, v in state.items() if k.endswith("running_mean")])
    # spread over orders of magnitude like a trained network, not the init's ones and zeros
    assert variances.min() < 1e-2 < 1 < variances.max()
    assert means.abs().max() > 0.01
    out = outputs(ModelSpec(backbone, "batch", "body"), load_weights("synthetic", backbone))
    for name, value in out.items():
        assert np.isfinite(value).all()
        assert 1 < np.abs(value).max() < 1e3, name
        assert (value > 0).mean() > 0.2, f"{name} is mostly dead"


@pytest.mark.parametrize("backbone", FAMILY_BACKBONES)
def test_synthetic_residual_branches_end_in_small_gammas(backbone):
    """The family's hint: the norm that ends each residual branch has a small gamma, every other a normal one;
    the classifier's own norm momentum is kept (MobileNetV3's 0.01, ResNet's 0.1)."""
    from torch import nn

    model = build_classifier(backbone, None)
    default_momentum = {n: m.momentum for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    model.load_state_dict(load_weights("synthetic", backbone).state_dict)
    ends = {id(m) for m in family_of(backbone).branch_end_norms(model)}
    assert ends
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            low, high = BRANCH_END_GAMMA_RANGE if id(module) in ends else GAMMA_RANGE
            gamma = module.weight.detach()
            assert low <= float(gamma.min()) <= float(gamma.max()) <= high, name
            assert module.momentum == default_momentum[name]


def test_imagenet_weights_absent_is_a_clear_setup_error():
    start = time.perf_counter()
    with pytest.raises(SetupError) as info:
        load_weights("imagenet", SMALL)
    message = str(info.value)
    assert "resnet18-f37072fd.pth" in message and "--weights" in message and "\n" not in message
    assert time.perf_counter() - start < 5  # no download attempt, no hang


def test_imagenet_weights_from_the_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    synthetic = load_weights("synthetic", SMALL, seed=5)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    save_weights(synthetic, tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    cached = load_weights("imagenet", SMALL)
    assert cached.source == "imagenet:resnet18-f37072fd.pth"
    assert cached.sha256 == synthetic.sha256


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".safetensors"])
def test_weight_files_round_trip(tmp_path, suffix):
    synthetic = load_weights("synthetic", SMALL, seed=2)
    path = tmp_path / f"w{suffix}"
    save_weights(synthetic, path)
    loaded = load_weights(str(path), SMALL)
    assert loaded.sha256 == synthetic.sha256
    spec = ModelSpec(SMALL, "frozen", "body")
    for name, value in outputs(spec, loaded).items():
        np.testing.assert_array_equal(value, outputs(spec, synthetic)[name])


@pytest.mark.parametrize("backbone", FAMILY_BACKBONES)
def test_detection_checkpoint_loads_body_and_fpn(backbone, tmp_path):
    """A Faster R-CNN style checkpoint: backbone.body.* (FrozenBN, no num_batches_tracked; MobileNetV3's
    body keys are `features`' own), backbone.fpn.*, and heads that are ignored."""
    spec = ModelSpec(backbone, "frozen", "fpn")
    source = build_model(spec, load_weights("synthetic", backbone), seed=9).model
    checkpoint = {f"backbone.{k}": v for k, v in source.state_dict().items()}
    assert not any(k.endswith("num_batches_tracked") for k in checkpoint)
    checkpoint["rpn.head.conv.0.0.weight"] = torch.zeros(1)
    checkpoint["head.classification_head.conv.0.0.weight"] = torch.zeros(1)  # RetinaNet / FCOS
    torch.save(checkpoint, tmp_path / "detector.pth")
    loaded = load_weights(str(tmp_path / "detector.pth"), backbone)
    assert "fpn" in loaded.extra
    classifier = load_weights("synthetic", backbone).state_dict
    assert set(loaded.state_dict) == {k for k in classifier if not k.startswith(family_of(backbone).classifier_prefix)}
    rebuilt = build_model(spec, loaded, seed=0).model  # another seed: FPN must come from the file
    x = torch.randn(SMALL_SHAPE)
    with torch.no_grad():
        for name, value in rebuilt(x).items():
            torch.testing.assert_close(value, source(x)[name], rtol=0, atol=0)


class NotATensor:
    pass


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"conv1.weight": NotATensor()}, path)
    with pytest.raises(UsageError, match="Cannot read weights file"):
        load_weights(str(path), SMALL)


@pytest.mark.parametrize(("source", "message"), [
    ("missing.pt", "does not exist"),
    ("foo", "Unknown weights 'foo'"),
])
def test_bad_weight_sources(source, message):
    with pytest.raises(UsageError, match=message):
        load_weights(source, SMALL)


def test_weights_of_another_backbone_do_not_fit(tmp_path):
    path = tmp_path / "r34.safetensors"
    save_weights(load_weights("synthetic", "resnet34"), path)
    with pytest.raises(UsageError, match="do not fit resnet18"):
        build_model(ModelSpec(SMALL, "frozen", "body"), load_weights(str(path), SMALL))


def test_a_misfit_checkpoint_is_one_bounded_line(tmp_path):
    """Another family's checkpoint: every key misfits, and the message counts them and names a few."""
    import re

    other = load_weights("synthetic", "mobilenet_v3_small")
    path = tmp_path / "mobilenet.safetensors"
    save_weights(other, path)
    with pytest.raises(UsageError) as info:
        build_model(ModelSpec(SMALL, "frozen", "body"), load_weights(str(path), SMALL))
    message = str(info.value)
    expected = set(build_model(ModelSpec(SMALL, "frozen", "trunk"), load_weights("synthetic", SMALL)).model
                   .state_dict())
    found = re.fullmatch(r"Weights .* do not fit resnet18: (\d+) unexpected keys, e\.g\. (.*?); (\d+) missing keys, "
                         r"e\.g\. (.*); pass weights of resnet18", message)
    assert found, message
    assert int(found[1]) == len(other.state_dict)
    assert int(found[3]) == len(expected)  # all but fc, which a backbone-only checkpoint may leave out
    for examples in (found[2], found[4]):
        assert len(examples.removesuffix(", …").split(", ")) == MISFIT_EXAMPLES
    assert "\n" not in message


def test_fpn_weights_that_do_not_fit_are_a_usage_error(tmp_path):
    spec = ModelSpec(SMALL, "frozen", "fpn")
    model = build_model(spec, load_weights("synthetic", SMALL)).model
    state = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    state["backbone.fpn.layer_blocks.0.0.weight"] = torch.zeros(1, 1, 1, 1)
    torch.save(state, tmp_path / "det.pth")
    with pytest.raises(UsageError, match="FPN weights .* do not fit"):
        build_model(spec, load_weights(str(tmp_path / "det.pth"), SMALL))


def test_weights_digest_follows_every_change_to_a_tensor():
    """The digest is that of what the weights hold when it is asked for: an in-place edit, a write through `.data`
    or a numpy view (which torch does not count as a change), a replaced tensor or an added part."""
    weights = synthetic_weights(SMALL, 0)
    weights = Weights(weights.source, {k: v.clone() for k, v in weights.state_dict.items()})
    first = weights.sha256
    assert weights.sha256 == first == state_dict_sha256(weights.state_dict)
    with torch.no_grad():
        weights.state_dict["conv1.weight"][0, 0, 0, 0] += 1
    edited = weights.sha256
    assert edited != first and edited == state_dict_sha256(weights.state_dict)
    weights.state_dict["bn1.running_mean"].data.add_(1.0)
    weights.state_dict["bn1.weight"].numpy()[0] = 5.0
    quiet = weights.sha256
    assert quiet != edited and quiet == state_dict_sha256(weights.state_dict)
    edited = quiet
    weights.state_dict["conv1.weight"] = weights.state_dict["conv1.weight"].clone().fill_(0)
    assert weights.sha256 not in (first, edited)
    weights.extra["fpn"] = {"w": torch.ones(2)}
    assert weights.sha256 == state_dict_sha256({**weights.state_dict, "fpn.w": torch.ones(2)})


def test_computing_synthetic_weights_leaves_the_callers_global_rng_as_it_was():
    """Before: the seeded init set torch's global RNG and left it there on a computation, not on a copy read from the
    weights store, so a library caller's next draw depended on which happened (determ 47)."""
    from exporter.weights import _computed_state_dict

    torch.manual_seed(123)
    state = torch.get_rng_state()
    _computed_state_dict("mobilenet_v3_small", 0)
    assert torch.equal(torch.get_rng_state(), state)
