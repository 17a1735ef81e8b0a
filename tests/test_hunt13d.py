"""A new user's first paths, continued (hunt 13d): training checkpoints that hold an EMA copy of the weights, and
weights kept the way the Hugging Face hub keeps them. Each test fails without its fix."""

import json
import re

import pytest
import torch
import torchvision
from typer.testing import CliRunner

from exporter.errors import UsageError
from exporter.weights import EMA_KEYS, load_weights_file
from verify.cli.app import app

runner = CliRunner()


def one_line(result) -> str:
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def state():
    torch.manual_seed(0)
    return torchvision.models.resnet18().state_dict()


def shifted(state):
    return {k: v + 0.01 if v.is_floating_point() else v.clone() for k, v in state.items()}


def test_a_checkpoint_holding_weights_and_their_ema_is_refused_naming_both(tmp_path, state):
    """Before: timm's layout ({'state_dict': ..., 'state_dict_ema': ...}) loaded 'state_dict' silently and `verify
    export -b resnet18 --weights it` exited 0 on weights other than the EMA ones that timm's own load_checkpoint
    takes; torchvision's references' ({'model': ..., 'model_ema': ...}) the same."""
    timm, references = tmp_path / "timm.pth", tmp_path / "references.pth"
    torch.save({"state_dict": state, "state_dict_ema": shifted(state), "epoch": 3}, timm)
    ema = {"n_averaged": torch.tensor(3), **{f"module.{k}": v for k, v in shifted(state).items()}}
    torch.save({"model": state, "model_ema": ema, "epoch": 3}, references)
    for path, ema_key in ((timm, "state_dict_ema"), (references, "model_ema")):
        with pytest.raises(UsageError, match=f"two sets of weights.*{ema_key}"):
            load_weights_file(path)
    result = runner.invoke(app, ["export", "-b", "resnet18", "--shape", "1x3x32x32", "--format", "torchscript",
                                 "--weights", str(timm), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "save the one you deploy alone" in one_line(result)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("key", EMA_KEYS)
def test_a_checkpoint_holding_only_an_ema_loads_it(tmp_path, state, key):
    """Before: {'model_ema': state_dict} (or 'ema', ...) was 'does not hold a state dict of tensors (1 of its 1
    entries are not tensors, e.g. 'model_ema')', with nothing to do about it."""
    plain, wrapped = tmp_path / "plain.pt", tmp_path / "ema.pt"
    torch.save(state, plain)
    torch.save({key: state, "epoch": 3}, wrapped)
    assert load_weights_file(wrapped).sha256 == load_weights_file(plain).sha256


def test_the_references_averaged_model_loads_without_its_update_count(tmp_path, state):
    """torch.optim.swa_utils.AveragedModel saves 'n_averaged' beside 'module.*'; saved alone (as the refusal above
    says to do) it loaded as '1 unexpected keys, e.g. n_averaged'."""
    plain, averaged = tmp_path / "plain.pt", tmp_path / "averaged.pt"
    torch.save(state, plain)
    torch.save({"n_averaged": torch.tensor(3), **{f"module.{k}": v for k, v in state.items()}}, averaged)
    assert load_weights_file(averaged).sha256 == load_weights_file(plain).sha256


def hub_snapshot(tmp_path, state):
    """The Hugging Face hub's cache layout: a snapshot folder of links into blobs/."""
    from safetensors.torch import save_file

    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / "abc123"
    blobs.mkdir()
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, blobs / "1f2e")
    torch.save(state, blobs / "3d4c")
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors").symlink_to("../../blobs/1f2e")
    (snapshot / "pytorch_model.bin").symlink_to("../../blobs/3d4c")
    return snapshot


def test_a_hub_snapshot_folder_given_as_weights_names_the_file_to_pass(tmp_path, state):
    """Before: 'Weights file .../snapshots/abc123 is a directory, not a file', and from the Python API, given a
    folder named without a slash, 'Unknown weights 'abc123'; use one of synthetic, imagenet or a ... file path'."""
    from exporter.weights import load_weights

    snapshot = hub_snapshot(tmp_path, state)
    result = runner.invoke(app, ["export", "-b", "resnet18", "--weights", str(snapshot)])
    assert result.exit_code == 2, result.output
    assert f"--weights {snapshot / 'model.safetensors'}" in one_line(result)
    with pytest.raises(UsageError, match="pass the weights file in it"):
        load_weights(str(snapshot), "resnet18")
    plain = tmp_path / "plain.pt"
    torch.save(state, plain)
    assert load_weights_file(snapshot / "model.safetensors").sha256 == load_weights_file(plain).sha256  # the link


def test_a_folder_named_without_a_slash_is_a_folder_to_the_api(tmp_path, state, monkeypatch):
    """Before: load_weights('abc123', ...) for a folder in the working directory said 'Unknown weights'."""
    from exporter.weights import load_weights

    snapshot = hub_snapshot(tmp_path, state)
    monkeypatch.chdir(snapshot.parent)
    with pytest.raises(UsageError, match="is a directory.*model.safetensors"):
        load_weights(snapshot.name, "resnet18")


def test_a_hub_pytorch_model_bin_names_the_safetensors_beside_it(tmp_path, state):
    """Before: 'must end in .pt, .pth, .safetensors, .ckpt' and nothing about the model.safetensors beside it."""
    snapshot = hub_snapshot(tmp_path, state)
    result = runner.invoke(app, ["export", "-b", "resnet18", "--weights", str(snapshot / "pytorch_model.bin")])
    assert result.exit_code == 2, result.output
    assert "must end in" in one_line(result) and f"pass {snapshot / 'model.safetensors'}" in one_line(result)


def test_seed_is_not_refused_where_it_draws_the_fpn_a_classifier_checkpoint_lacks(tmp_path, state):
    """Before: `verify export -b resnet18 --view fpn --weights r18.pt --input x.npy --seed 3` was refused with '--seed
    3 draws synthetic weights and seeded inputs, and --weights r18.pt with --input x.npy uses neither: drop --seed',
    while the seed is what draws the FPN convolutions a classifier checkpoint does not hold (measured below)."""
    import numpy as np

    from exporter.backbones import build_model
    from exporter.spec import ModelSpec
    from exporter.weights import load_weights

    checkpoint, array = tmp_path / "r18.pt", tmp_path / "x.npy"
    torch.save(state, checkpoint)
    np.save(array, np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32))
    spec = ModelSpec("resnet18", "frozen", "fpn")
    fpn = [{k: v for k, v in build_model(spec, load_weights(str(checkpoint), "resnet18"), seed).model.state_dict()
            .items() if k.startswith("fpn.")} for seed in (0, 3)]
    assert any(not torch.equal(fpn[0][k], fpn[1][k]) for k in fpn[0])  # the seed draws them
    result = runner.invoke(app, ["export", "-b", "resnet18", "--view", "fpn", "--weights", str(checkpoint), "--input",
                                 str(array), "--seed", "3", "--format", "torchscript", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output


def test_a_report_is_never_written_over_the_weights_file_it_was_built_from(tmp_path, state):
    """Before: `verify export -b resnet18 --weights w.pt --json w.pt` ran, passed (exit 0) and replaced the
    checkpoint with the JSON report ('wrote w.pt'); compare, explain, and artifact/preflight's --checkpoint had no
    such check either (artifact/preflight refused it when writing, after the checks). Each is now refused before
    any work, the checkpoint untouched."""
    checkpoint = tmp_path / "w.pt"
    torch.save(state, checkpoint)
    before = checkpoint.read_bytes()
    folder = tmp_path / "folder"
    folder.mkdir()
    w = str(checkpoint)
    commands = [
        ["export", "-b", "resnet18", "--shape", "1x3x32x32", "--format", "torchscript", "--weights", w, "--json", w,
         "--out", str(tmp_path / "out")],
        ["export", "-b", "resnet18", "--weights", w, "--junit", w],
        ["compare", "resnet18:batch:body", "resnet18:frozen:body", "--weights", w, "--markdown", w],
        ["explain", "resnet18:batch:body", "resnet18:frozen:body", "--weights", w, "--json", w],
        ["artifact", str(folder), "--rebuild", "--checkpoint", w, "--json", w],
        ["preflight", str(folder), "--rebuild", "--checkpoint", w, "--junit", w],
    ]
    for command in commands:
        result = runner.invoke(app, command)
        assert result.exit_code == 2, (command, result.output)
        assert re.search("is a file this command reads|is the --checkpoint file this run read", one_line(result)), \
            (command, result.output)
        assert checkpoint.read_bytes() == before, command


def test_a_report_is_never_written_over_the_signing_key(tmp_path):
    """Before: `verify export -b resnet18 --sign-key k.pem --json k.pem` signed the folder, passed (exit 0) and then
    replaced the private key with the JSON report ('wrote k.pem'). `artifact --verify-key` already refused."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = tmp_path / "k.pem"
    key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    before = key.read_bytes()
    result = runner.invoke(app, ["export", "-b", "resnet18", "--shape", "1x3x32x32", "--format", "torchscript",
                                 "--sign-key", str(key), "--json", str(key), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "is a file this command reads" in one_line(result)
    assert key.read_bytes() == before and not (tmp_path / "out").exists()


def test_the_matrix_never_writes_a_report_over_the_model_or_weights_it_reads(tmp_path, state):
    """Before: `verify matrix --model m.py:make --json m.py` ran its cell, 'agree', exit 0, and replaced the user's
    model code with the JSON report; `--weights w.pt --json w.pt` replaced the checkpoint (its cell then failed to
    read it: the report is written before the cells run)."""
    source = tmp_path / "m.py"
    source.write_text("from torch import nn\n\n\ndef make():\n    return nn.Conv2d(3, 4, 3, padding=1)\n")
    checkpoint = tmp_path / "w.pt"
    torch.save(state, checkpoint)
    code, weights = source.read_bytes(), checkpoint.read_bytes()
    for command in (["--model", f"{source}:make", "--shape", "1x3x8x8", "--json", str(source)],
                    ["-b", "resnet18", "--norm", "batch", "--weights", str(checkpoint), "--junit", str(checkpoint)]):
        result = runner.invoke(app, ["matrix", "--format", "torchscript", "--no-cache", *command])
        assert result.exit_code == 2, (command, result.output)
        assert "is a file this command reads" in one_line(result), (command, result.output)
    assert source.read_bytes() == code and checkpoint.read_bytes() == weights


def test_a_run_that_ends_in_an_error_leaves_no_earlier_report_standing_in_for_it(tmp_path, state, monkeypatch):
    """Before: a passing `verify export --json r.json --junit r.xml --markdown r.md`, then the same command with a
    checkpoint that cannot be loaded: exit 2, and r.json still said "passed": true (and r.xml 0 failures) for the
    run that failed. Now the reports asked for are removed when the run starts, and a run that ends in an error
    writes each as a failure (surface28: JSON `passed: false` with the error, JUnit a case in error);
    $GITHUB_STEP_SUMMARY keeps what it held, the failure appended."""
    checkpoint = tmp_path / "both.pth"
    torch.save({"state_dict": state, "state_dict_ema": shifted(state)}, checkpoint)
    reports = {flag: tmp_path / f"r.{suffix}" for flag, suffix in (("--json", "json"), ("--junit", "xml"),
                                                                   ("--markdown", "md"))}
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    for path in (*reports.values(), summary):
        path.write_text('{"passed": true}')
    extra = [str(a) for flag, path in reports.items() for a in (flag, path)]
    result = runner.invoke(app, ["export", "-b", "resnet18", "--shape", "1x3x32x32", "--format", "torchscript",
                                 "--weights", str(checkpoint), "--out", str(tmp_path / "out"), *extra])
    assert result.exit_code == 2, result.output
    assert json.loads(reports["--json"].read_text())["passed"] is False
    assert 'errors="1"' in reports["--junit"].read_text() and "error (exit 2)" in reports["--markdown"].read_text()
    result = runner.invoke(app, ["compare", "resnet18:batch:body", "resnet18:frozen:body", "--weights",
                                 str(checkpoint), "--markdown", str(summary), "--json", str(reports["--json"])])
    assert result.exit_code == 2, result.output
    assert summary.read_text().startswith('{"passed": true}\n') and "error (exit 2)" in summary.read_text()
