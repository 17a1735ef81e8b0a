import time

import numpy as np
import pytest
import torch

from exporter.backbones import build_model
from exporter.errors import SetupError, UsageError
from exporter.spec import ModelSpec
from exporter.weights import _synthetic_state_dict, load_weights, save_weights
from tests.conftest import SMALL, SMALL_SHAPE


def outputs(spec, weights):
    model = build_model(spec, weights).model
    x = torch.randn(SMALL_SHAPE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return {k: v.numpy() for k, v in model(x).items()}


def test_synthetic_weights_are_deterministic_per_seed():
    fresh = _synthetic_state_dict.__wrapped__  # bypass the in-process cache
    a, b, c = fresh(SMALL, 0), fresh(SMALL, 0), fresh(SMALL, 1)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_synthetic_statistics_are_calibrated():
    state = load_weights("synthetic", SMALL).state_dict
    variances = torch.cat([v for k, v in state.items() if k.endswith("running_var")])
    means = torch.cat([v for k, v in state.items() if k.endswith("running_mean")])
    # spread over orders of magnitude like a trained network, not the init's ones and zeros
    assert variances.min() < 1e-2 < 1 < variances.max()
    assert means.abs().max() > 0.01
    out = outputs(ModelSpec(SMALL, "batch", "body"), load_weights("synthetic", SMALL))
    for name, value in out.items():
        assert np.isfinite(value).all()
        assert 1 < np.abs(value).max() < 1e3, name
        assert (value > 0).mean() > 0.2, f"{name} is mostly dead"


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


def test_detection_checkpoint_loads_body_and_fpn(tmp_path):
    """A Faster R-CNN style checkpoint: backbone.body.* (FrozenBN, no num_batches_tracked),
    backbone.fpn.*, and heads that are ignored."""
    spec = ModelSpec(SMALL, "frozen", "fpn")
    source = build_model(spec, load_weights("synthetic", SMALL), seed=9).model
    checkpoint = {f"backbone.{k}": v for k, v in source.state_dict().items()}
    assert not any(k.endswith("num_batches_tracked") for k in checkpoint)
    checkpoint["rpn.head.conv.0.0.weight"] = torch.zeros(1)
    checkpoint["head.classification_head.conv.0.0.weight"] = torch.zeros(1)  # RetinaNet / FCOS
    torch.save(checkpoint, tmp_path / "detector.pth")
    loaded = load_weights(str(tmp_path / "detector.pth"), SMALL)
    assert "fpn" in loaded.extra
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


def test_fpn_weights_that_do_not_fit_are_a_usage_error(tmp_path):
    spec = ModelSpec(SMALL, "frozen", "fpn")
    model = build_model(spec, load_weights("synthetic", SMALL)).model
    state = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    state["backbone.fpn.layer_blocks.0.0.weight"] = torch.zeros(1, 1, 1, 1)
    torch.save(state, tmp_path / "det.pth")
    with pytest.raises(UsageError, match="FPN weights .* do not fit"):
        build_model(spec, load_weights(str(tmp_path / "det.pth"), SMALL))
