"""Hunt 7d: backbones, norms and weights files attacked as users and attackers would. Each test failed before its fix:
a checkpoint keyed by an integer, or holding a meta, sparse or quantized tensor, ended in an "unexpected" error;
complex and bool tensors were cast into the model and passed (exit 0 on a model the file does not hold); integer
weights, NaN weights and a zero running_var under frozen-eps0 reached the oracle, which blamed the input for the
NaN/Inf; a 1- or 4-channel --shape failed inside torch.export with nothing said about what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from exporter.backbones import BACKBONES, build_model
from exporter.errors import UsageError
from exporter.families import FAMILIES
from exporter.norms import get_norm
from exporter.spec import INPUT_CHANNELS, ModelSpec
from exporter.weights import Weights, load_weights
from tests.conftest import SMALL, SMALL_SHAPE
from tests.helpers import invoke

EXIT_USAGE = 2
BN = "layer1.0.bn1"
"""A norm of resnet18 whose statistics the tests edit."""


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return load_weights("synthetic", SMALL).state_dict


def saved(tmp_path, state, name="w.pt"):
    path = tmp_path / name
    torch.save(state, path)
    return str(path)


def edited(state, key, change):
    out = dict(state)
    out[key] = change(state[key].clone())
    return out


def _set(index, value):
    def change(tensor):
        tensor.view(-1)[index] = value
        return tensor
    return change


def refusal(source: str, norm: str = "frozen") -> str:
    with pytest.raises(UsageError) as info:
        build_model(ModelSpec(SMALL, norm, "body"), load_weights(source, SMALL))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_checkpoint_keyed_by_an_integer_is_refused_in_one_line(tmp_path, state):
    message = refusal(saved(tmp_path, {7: torch.zeros(1), **state}))
    assert "keys are not names" in message and "7" in message


UNLOADABLE = {
    "meta": (lambda t: t.to("meta"), "meta tensor"),
    "sparse": (lambda t: t.to_sparse(), "sparse"),
    "quantized": (lambda t: torch.quantize_per_tensor(t, 0.1, 0, torch.qint8), "quantized"),
    "complex": (lambda t: t.to(torch.complex64), "complex64"),
    "bool": (lambda t: t.bool(), "dtype bool"),
    "nan": (_set(5, float("nan")), "NaN"),
    "inf": (_set(0, float("inf")), "infinite"),
}


@pytest.mark.parametrize("kind", UNLOADABLE)
def test_a_tensor_that_cannot_be_a_weight_is_refused_naming_it(tmp_path, state, kind):
    """Before: meta/sparse/quantized were an unexpected RuntimeError, complex/bool were cast in (complex passed
    `verify export` with its imaginary parts dropped), NaN/Inf reached the oracle, which blamed the input."""
    change, words = UNLOADABLE[kind]
    message = refusal(saved(tmp_path, edited(state, "fc.weight", change)))
    assert words in message and "fc.weight" in message and "cannot be weights" in message


def test_integer_weights_are_a_misfit_not_a_cast(tmp_path, state):
    ints = {k: (v * 100).long() if v.is_floating_point() else v for k, v in state.items()}
    message = refusal(saved(tmp_path, ints))
    assert "integer keys for float weights" in message and "conv1.weight int64" in message


def test_integer_fpn_weights_are_refused_not_cast(tmp_path, state):
    spec = ModelSpec(SMALL, "frozen", "fpn")
    model = build_model(spec, Weights("synthetic:0", state)).model
    checkpoint = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    checkpoint["backbone.fpn.layer_blocks.0.0.weight"] = checkpoint["backbone.fpn.layer_blocks.0.0.weight"].long()
    with pytest.raises(UsageError, match="FPN weights .* integer key for a float weight"):
        build_model(spec, load_weights(saved(tmp_path, checkpoint), SMALL))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float8_e4m3fn])
def test_weights_in_a_narrower_float_still_load_exactly(tmp_path, state, dtype):
    """The refusals above leave every float kind loadable: its values, widened exactly, are the model's."""
    narrow = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    built = build_model(ModelSpec(SMALL, "frozen", "body"), load_weights(saved(tmp_path, narrow), SMALL))
    torch.testing.assert_close(built.model.state_dict()["conv1.weight"], narrow["conv1.weight"].float(),
                               rtol=0, atol=0)


def test_a_zero_variance_under_eps0_is_refused_naming_the_norm(tmp_path, state):
    """Before: every output Inf/NaN, and the oracle said the input drives every run to NaN/Inf."""
    path = saved(tmp_path, edited(state, f"{BN}.running_var", _set(3, 0.0)))
    eps0 = get_norm("frozen-eps0").norm_layer()(1).eps
    assert eps0 == 0
    message = refusal(path, "frozen-eps0")
    assert BN in message and "1 of its" in message and "--norm frozen-eps0" in message
    # the same statistics under eps 1e-5 divide by sqrt(eps): a defined, finite function, so it builds
    model = build_model(ModelSpec(SMALL, "frozen", "body"), load_weights(path, SMALL)).model
    with torch.no_grad():
        assert all(bool(v.isfinite().all()) for v in model(torch.randn(SMALL_SHAPE)).values())


def test_a_negative_variance_is_refused_under_every_norm_of_the_family(tmp_path, state):
    path = saved(tmp_path, edited(state, f"{BN}.running_var", _set(0, -1.0)))
    for norm in FAMILIES.get("resnet").norms:
        assert BN in refusal(path, norm)


def test_synthetic_weights_pass_the_new_checks_on_every_norm(state):
    for norm in FAMILIES.get("resnet").norms:
        build_model(ModelSpec(SMALL, norm, "body"), Weights("synthetic:0", state))


@pytest.mark.parametrize("channels", [1, INPUT_CHANNELS + 1])
def test_a_shape_of_other_channels_is_refused_before_the_build(channels):
    """Before: `torch.export failed ... expected input to have 3 channels`, after the build and an export."""
    spec = ModelSpec(SMALL, "frozen", "body")
    with pytest.raises(UsageError, match=f"takes {INPUT_CHANNELS} input channels.*gives it {channels}"):
        spec.build(0, (1, channels, 32, 32), "no-such-weights-are-read")


def test_nan_weights_through_the_cli_blame_the_weights_and_write_nothing(tmp_path, state):
    path = saved(tmp_path, edited(state, "conv1.weight", _set(0, float("nan"))))
    out = tmp_path / "out"
    result = invoke("export", "-b", SMALL, "--shape", "1x3x32x32", "--weights", path, "--out", out, "--no-cache",
                    "--runtime", "onnxruntime")
    assert result.exit_code == EXIT_USAGE, result.output
    assert "conv1.weight" in result.output and "NaN" in result.output and "drives every run" not in result.output
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("alias", ["module.conv1.weight", "backbone.body.conv1.weight"])
def test_two_tensors_for_one_weight_are_refused_not_one_picked(tmp_path, state, alias):
    """Before: the later key silently won, so which of the file's two conv1 the export verified was the dict's
    order."""
    message = refusal(saved(tmp_path, {**state, alias: torch.zeros_like(state["conv1.weight"])}))
    assert "two tensors for conv1.weight" in message and alias in message


def test_a_detection_body_key_beside_its_classifier_key_is_refused(tmp_path):
    backbone = "mobilenet_v3_small"
    weights = load_weights("synthetic", backbone).state_dict
    body_key = next(k for k in weights if k.startswith("features.4."))
    mixed = {**weights, body_key.removeprefix("features."): weights[body_key] * 2}
    with pytest.raises(UsageError, match=f"two tensors for {body_key}"):
        load_weights(saved(tmp_path, mixed), backbone)


def test_a_checkpoint_fine_tuned_to_other_classes_verifies_its_backbone(tmp_path, state):
    """No view computes the classification head: before, a 10-class fc was a misfit and the backbone unverifiable."""
    tuned = {**state, "fc.weight": torch.randn(10, state["fc.weight"].shape[1]), "fc.bias": torch.zeros(10)}
    spec = ModelSpec(SMALL, "frozen", "body")
    x = torch.randn(SMALL_SHAPE)
    with torch.no_grad():
        got = build_model(spec, load_weights(saved(tmp_path, tuned), SMALL)).model(x)
        want = build_model(spec, Weights("synthetic:0", state)).model(x)
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=0)


def deflated(tmp_path, state):
    """`state` saved by torch.save, then its members deflated: a zip torch.load still reads."""
    import zipfile

    plain = saved(tmp_path, state, "plain.pt")
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    assert bomb.stat().st_size < sum(i.file_size for i in zipfile.ZipFile(plain).infolist())
    return plain, bomb


def test_a_deflated_checkpoint_is_refused_before_torch_expands_it(tmp_path, state):
    """Before: torch.load inflated it (a 4.9 kB file gave a 4 MB tensor: a small file could allocate gigabytes)."""
    plain, bomb = deflated(tmp_path, state)
    with pytest.raises(UsageError, match="would expand to .* refused unread"):
        load_weights(str(bomb), SMALL)
    assert load_weights(plain, SMALL).sha256 == Weights("synthetic:0", state).sha256  # torch.save's own still loads


def test_a_detectors_checkpoint_reader_refuses_a_deflated_file_and_unnamed_keys(tmp_path):
    from exporter.families.detectors import _read_state_dict

    _, bomb = deflated(tmp_path, {"w": torch.zeros(1 << 16)})
    with pytest.raises(UsageError, match="would expand to"):
        _read_state_dict(bomb)
    with pytest.raises(UsageError, match="does not hold a state dict of tensors"):  # before: an AttributeError later
        _read_state_dict(Path(saved(tmp_path, {3: torch.zeros(1)})))


def test_a_directory_where_the_imagenet_checkpoint_belongs_is_named(tmp_path, monkeypatch):
    """Before: 'not in the local cache ... copy resnet18-f37072fd.pth there', where a folder of that name blocks it."""
    from exporter.errors import SetupError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth").mkdir(parents=True)
    with pytest.raises(SetupError, match="not a file in the local cache \\(a directory there\\)") as info:
        load_weights("imagenet", SMALL)
    assert "\n" not in str(info.value) and "--weights FILE" in str(info.value)


def test_an_fpn_with_norms_of_its_own_is_a_bounded_misfit(tmp_path, state):
    """fasterrcnn_resnet50_fpn_v2's FPN has a BatchNorm after each conv: before, torch's own error listed every key
    (and, with the integer check first, blamed its num_batches_tracked counts)."""
    from exporter.families import MISFIT_EXAMPLES
    from exporter.messages import MAX_MESSAGE

    spec = ModelSpec(SMALL, "frozen", "fpn")
    model = build_model(spec, Weights("synthetic:0", state)).model
    checkpoint = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    for block in ("inner", "layer"):
        for level in range(4):
            for stat in ("weight", "bias", "running_mean", "running_var"):
                checkpoint[f"backbone.fpn.{block}_blocks.{level}.1.{stat}"] = torch.ones(256)
            checkpoint[f"backbone.fpn.{block}_blocks.{level}.1.num_batches_tracked"] = torch.tensor(0)
    with pytest.raises(UsageError) as info:
        build_model(spec, load_weights(saved(tmp_path, checkpoint), SMALL))
    message = str(info.value)
    assert "40 unexpected keys" in message and "integer" not in message and len(message) < MAX_MESSAGE
    assert message.count("_blocks.") == MISFIT_EXAMPLES


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn])
def test_a_checkpoint_numpy_cannot_hold_has_a_digest(tmp_path, state, dtype):
    """Before: `verify export --weights model_bf16.safetensors` built, then ended in 'unexpected TypeError: Got
    unsupported ScalarType BFloat16' (the digest went through numpy)."""
    import hashlib

    from exporter.weights import save_weights, state_dict_sha256

    path = tmp_path / "w.safetensors"
    save_weights(Weights("narrow", {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}), path)
    narrow = load_weights(str(path), SMALL).sha256
    assert len(narrow) == len(hashlib.sha256().hexdigest()) and narrow != state_dict_sha256(state)
    # float32 digests are the bytes numpy gave: cache keys and manifests written before still match
    old = hashlib.sha256()
    for key in sorted(state):
        old.update(f"{key}|{state[key].dtype}|{tuple(state[key].shape)}|".encode())
        old.update(state[key].contiguous().numpy().tobytes())
    assert state_dict_sha256(state) == old.hexdigest()


def test_a_checkpoints_key_cannot_send_control_characters_to_the_terminal(tmp_path, state):
    """Before: an unexpected key holding ESC[2J reached the terminal raw in the one-line error (it cleared it)."""
    key = "x\x1b[2J\u202eforged"
    result = invoke("export", "-b", SMALL, "--shape", "1x3x32x32", "--weights",
                    saved(tmp_path, {**state, key: torch.zeros(1)}), "--out", tmp_path / "out", "--no-cache",
                    "--runtime", "onnxruntime")
    assert result.exit_code == EXIT_USAGE and "1 unexpected key" in result.output
    assert "\x1b" not in result.output and "\u202e" not in result.output and "\\x1b[2J" in result.output


def test_the_default_matrix_holds_only_cells_a_family_builds_and_merge_expects_the_same():
    """Before: every default `verify matrix` held mobilenet_v3_*:frozen-eps0 cells that could only fail to run, so it
    ended 'N-2 of N cells agree, 2 failed to run' (exit 2) however sound every export was."""
    from verify.matrix import MatrixRequest
    from verify.matrix.merge import expected_cells
    from verify.matrix.run import plan_matrix

    plan = plan_matrix(MatrixRequest.create())
    for cell in plan.cells:
        cell.spec.validate()
    assert {c.spec.backbone for c in plan.cells} == set(BACKBONES.names())
    assert [c.id for c in expected_cells(plan.settings)] == plan.ids


def test_a_matrix_of_a_backbone_without_the_chosen_norm_is_refused_before_any_work():
    from verify.matrix import MatrixRequest

    with pytest.raises(UsageError, match="mobilenet_v3_small has none of the norms frozen-eps0"):
        MatrixRequest.create(backbones=["mobilenet_v3_small"], norms=["frozen-eps0"])
    mixed = MatrixRequest.create(backbones=[SMALL, "mobilenet_v3_small"], norms=["frozen-eps0", "batch"])
    assert [str(c.spec) for c in mixed.cells()] == [f"{SMALL}:frozen-eps0:body", f"{SMALL}:batch:body",
                                                   "mobilenet_v3_small:batch:body"]
