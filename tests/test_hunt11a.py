"""Hunt 11a: artifact folders, their snapshot, signatures and the folder API, attacked. Each test fails without its
fix (its docstring says what happened before, measured)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from exporter.errors import UsageError
from exporter.manifest import MANIFEST_NAME
from tests.helpers import invoke, make_keys
from verify.folder.integrity import UNLISTED_COPY_BYTES, snapshot_folder

SHAPE = "1x3x32x32"
SPARSE_BYTES = 1 << 30
"""A file of this size that holds only a hole: no disk in the folder, all of it in a copy that fills the hole."""
BLOCK = 512
"""st_blocks counts 512-byte units on Linux."""


def _sparse(path: Path, size: int = SPARSE_BYTES) -> Path:
    with open(path, "wb") as handle:
        handle.truncate(size)
    return path


def _disk_bytes(path: Path) -> int:
    return os.lstat(path).st_blocks * BLOCK


@pytest.fixture(scope="module")
def keys(module_tmp):
    return make_keys(module_tmp("h11a-keys"))


@pytest.fixture(scope="module")
def signed_export(module_tmp, keys):
    """resnet18 at 1x3x32x32, ONNX only (data: checked unsigned too), signed; the legacy exporter, 4x faster (what
    these tests attack is the folder, not the exporter)."""
    out = module_tmp("h11a-signed")
    result = invoke("export", "-b", "resnet18", "--shape", SHAPE, "--format", "onnx", "--onnx-exporter", "torchscript",
                    "--sign-key", keys[0], "--out", out)
    assert result.exit_code == 0, result.output
    return out / "resnet18-frozen-body"


@pytest.fixture
def signed(signed_export, tmp_path):
    return Path(shutil.copytree(signed_export, tmp_path / signed_export.name))


# The snapshot: what a folder costs to check ------------------------------------------------------------------------
def test_the_snapshot_copies_no_hole_and_nothing_past_what_the_manifest_lists(tmp_path):
    """Before: the private snapshot (hunt 9b) copied every regular file in full, holes filled in. A sparse 4 GiB
    file dropped into a 43 MB resnet18 folder (it takes no disk there) made `verify artifact` write 4,139 MB into
    the temporary folder and take 92 s before failing it as unlisted (1.6 s now); a 100 GiB one fills the disk
    (49 GB free here) and the check ends in "No space left on device". A file the manifest lists at its (sparse)
    size was copied in full the same way."""
    folder = tmp_path / "folder"
    folder.mkdir()
    listed_sparse = _sparse(folder / "model.onnx")
    (folder / "goldens.npz").write_bytes(b"npz")
    (folder / MANIFEST_NAME).write_text(json.dumps({"files": {
        "model.onnx": {"size": SPARSE_BYTES}, "goldens.npz": {"size": 3}}}))
    _sparse(folder / "notes.bin")
    (folder / "small.txt").write_text("hi")
    holder = snapshot_folder(folder)
    try:
        copy = Path(holder.name)
        assert sorted(os.listdir(copy)) == sorted(os.listdir(folder))
        for name in ("model.onnx", "notes.bin"):
            assert os.lstat(copy / name).st_size == SPARSE_BYTES  # the checks still see its size
            assert _disk_bytes(copy / name) <= _disk_bytes(listed_sparse) + UNLISTED_COPY_BYTES, name
        assert (copy / "goldens.npz").read_bytes() == b"npz"
        assert (copy / "small.txt").read_text() == "hi"  # small unlisted files are copied: a signature names them
    finally:
        holder.cleanup()


def test_a_sparse_file_in_a_signed_folder_fails_without_being_copied_or_hashed(signed, keys, tmp_path):
    """Before: a sparse 1 GiB unlisted file in a signed folder was copied in full into the snapshot, then hashed
    in full by model-signing ("added since signing: notes.bin"), then failed as unlisted. Now it is kept as a hole
    of its size, unread: the signature check says so, and the contents check names it."""
    _sparse(signed / "notes.bin")
    result = invoke("artifact", signed, "--verify-key", keys[1], "--json", tmp_path / "r.json")
    assert result.exit_code == 1, result.output
    assert f"not verified: notes.bin is {SPARSE_BYTES} bytes, more than a file its manifest does not list is read" \
        in result.output
    assert "1 unlisted in the manifest: notes.bin" in result.output


def test_a_listed_file_grown_past_its_size_fails_on_its_size_unread(signed, keys, tmp_path):
    """A listed file larger than the manifest says is failed by its size; its bytes are never copied."""
    model = signed / "model.onnx"
    size = model.stat().st_size
    data = model.read_bytes()
    model.unlink()
    model.write_bytes(data)
    with open(model, "r+b") as handle:
        handle.truncate(size + SPARSE_BYTES)
    result = invoke("artifact", signed, "--json", tmp_path / "r.json")
    assert result.exit_code == 1, result.output
    assert f"model.onnx: size {size + SPARSE_BYTES} bytes, manifest says {size}" in result.output


def test_a_signed_folder_still_verifies_through_the_sparse_copy(signed, keys, tmp_path):
    """The copy that spares holes is byte for byte the folder: a signed export passes with its key, and a small
    file added after signing is still named by the signature check."""
    result = invoke("artifact", signed, "--verify-key", keys[1])
    assert result.exit_code == 0, result.output
    assert "signature verifies" in result.output
    (signed / "notes.txt").write_text("hi")
    result = invoke("artifact", signed, "--verify-key", keys[1])
    assert result.exit_code == 1 and "added since signing: notes.txt" in result.output, result.output


# The folder API: options it took and never read ------------------------------------------------------------------
def test_the_library_refuses_a_checkpoint_without_the_rebuild(signed, tmp_path):
    """Before: `validate(folder, weights_file=ckpt)` and `preflight(folder, PreflightOptions(weights_file=ckpt))`
    without `rebuild=True` never read the checkpoint and passed ("all 12 checks passed"; "GO"), even for a file that
    does not exist, where the CLI refuses `--checkpoint` without `--rebuild` (exit 2)."""
    from verify.folder.preflight import PreflightOptions
    from verify.folder.validate import validate

    missing = tmp_path / "absent.safetensors"
    with pytest.raises(UsageError, match="rebuild=True"):
        validate(signed, weights_file=missing)
    with pytest.raises(UsageError, match="rebuild=True"):
        PreflightOptions(runs=1, warmup=0, weights_file=missing)


# Reports: written whole, or not at all, and nothing left beside them ---------------------------------------------
def test_an_interrupted_report_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    """Before: a Ctrl-C (KeyboardInterrupt) or SIGTERM landing in `write_text_atomic` after its temporary file was
    created left `.report.json.<pid>.<hex>.tmp` beside the report (only an OSError removed it)."""
    from exporter import fsio

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fsio.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fsio.write_text_atomic(tmp_path / "report.json", "{}")
    assert os.listdir(tmp_path) == []


# Preflight: options it would not apply are refused, as every other command refuses them (hunt 7e) --------------
@pytest.mark.parametrize("flags", [("--tf32",), ("--no-tf32",), ("--runtime", "torchscript", "--ort-opt-level",
                                                                   "disable")])
def test_preflight_refuses_an_option_it_would_not_apply(signed, tmp_path, flags):
    """Before: `verify preflight` took `--tf32`/`--no-tf32` on the CPU and `--ort-opt-level` with `--runtime
    torchscript`, applied neither, and said GO (exit 0; measured on a resnet18 folder with model.onnx and model.pt,
    `--trust-unsigned-code`), where `export`, `compare` and `matrix` refuse both before any work (hunt 7e)."""
    result = invoke("preflight", signed, *flags, "--runs", 1, "--warmup", 0, "--trust-unsigned-code")
    assert result.exit_code == 2, result.output
    assert f"drop {flags[-2] if len(flags) > 1 else flags[0]}" in result.output
    assert "NO-GO" not in result.output and "GO:" not in result.output


def test_a_detector_preflight_refuses_the_options_it_never_reads(tmp_path):
    """Before: a whole detector's preflight (verify/detect/preflight.py) is given neither the TF32 flag nor the
    runtimes' own options, so `--provider cuda --no-tf32` ran the detector with TF32 on, and `--ort-opt-level` was
    dropped, each without a word. Now refused (exit 2) before any check."""
    from verify.folder.preflight import PreflightOptions, preflight

    folder = tmp_path / "detector"
    folder.mkdir()
    (folder / MANIFEST_NAME).write_text(json.dumps({"kind": "detector"}))
    result = invoke("preflight", folder, "--ort-opt-level", "disable")
    assert result.exit_code == 2 and "drop --ort-opt-level" in result.output, result.output
    with pytest.raises(UsageError, match="drop --no-tf32"):
        preflight(folder, PreflightOptions(provider="cuda", tf32=False))


@pytest.mark.parametrize("command", ["artifact", "preflight"])
def test_a_report_is_never_written_over_the_public_key_it_verified_with(signed, keys, tmp_path, command):
    """Before: `verify artifact FOLDER --verify-key pub.pem --json pub.pem` verified the folder, then wrote its JSON
    report over the public key (exit 0); the next check with that key was refused ("not a PEM public key"). Now
    refused (exit 2) and nothing is written: the key, and every other report asked for, are left as they were."""
    public = Path(shutil.copy(keys[1], tmp_path / "pub.pem"))
    key_text = public.read_bytes()
    extra = ["--runs", 1, "--warmup", 0] if command == "preflight" else []
    result = invoke(command, signed, "--verify-key", public, "--json", public, "--junit", tmp_path / "j.xml", *extra)
    assert result.exit_code == 2, result.output
    assert "is the --verify-key file this run read" in result.output
    assert public.read_bytes() == key_text and not (tmp_path / "j.xml").exists()


# The manifest: refused in time and memory that do not grow with what it claims -----------------------------------
RUN_NAMES = 2000
"""Distinct run names in a crafted manifest's verdicts: 2,000 make 2 million pairs."""
PARSE_PEAK_BYTES = 64 << 20
"""A manifest of a few hundred kB is refused within this much memory (the pairs alone took ~300 MB)."""


def test_a_manifest_naming_thousands_of_runs_is_refused_without_listing_their_pairs(signed_export):
    """Before: the schema check listed every pair of the run names the verdicts mention before comparing: 4,000 names
    (a 656 kB manifest, one verdict each against the oracle) took 11 s and 1.5 GB to refuse, and a 16 MB one (the
    reader's limit) ~100,000 names, 5 billion pairs: the machine's memory. Now the verdicts are counted first."""
    import tracemalloc

    from exporter.errors import ArtifactError
    from exporter.manifest import parse_manifest

    data = json.loads((signed_export / MANIFEST_NAME).read_text())
    oracle = next(v for v in data["verdicts"] if v["b"] == "oracle")
    data["verdicts"] = [dict(oracle, a=f"run{i}") for i in range(RUN_NAMES)]
    text = json.dumps(data)
    tracemalloc.start()
    try:
        with pytest.raises(ArtifactError, match="not every pair of the runs"):
            parse_manifest(text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PARSE_PEAK_BYTES, peak


LISTED_ENTRIES = 2000
"""Entries a crafted manifest lists (none of them in the folder)."""


def test_a_manifest_listing_thousands_of_files_is_checked_in_linear_time(signed_export, tmp_path, monkeypatch):
    """Before: the folder check rebuilt the manifest's list of model files once per listed entry (and `_file` once
    more per file), quadratic in the entries: a 4 MB manifest listing 20,000 ONNX files that are not there took
    `verify artifact` 48 s to fail (20,000 external-data entries: 29 s); a 16 MB one (the reader's limit), about
    13 minutes. Now 1.7 s and 1.2 s. Counted here: the list is made a fixed number of times, whatever is listed."""
    from exporter.manifest import Manifest
    from verify.folder.validate import validate

    folder = Path(shutil.copytree(signed_export, tmp_path / signed_export.name))
    (folder / "model.sig").unlink()
    data = json.loads((folder / MANIFEST_NAME).read_text())
    data.pop("signature")
    model = data["files"]["model.onnx"]
    data["files"].update({f"m{i}.onnx": dict(model) for i in range(LISTED_ENTRIES)})
    (folder / MANIFEST_NAME).write_text(json.dumps(data))
    calls = []
    real = Manifest.model_files
    monkeypatch.setattr(Manifest, "model_files", lambda self: calls.append(1) or real(self))
    report = validate(folder)
    assert not report.passed
    assert sum(c.message.endswith("is missing") for c in report.checks) == LISTED_ENTRIES
    assert len(calls) < LISTED_ENTRIES // 10, len(calls)


def test_verify_artifact_refuses_runtime_options_for_a_detector_folder(tmp_path):
    """Before: `verify artifact DETECTOR --ort-opt-level disable` checked the whole detector's folder with ONNX
    Runtime's defaults (verify/detect/folder.py takes no runtime options): the option was dropped without a word.
    Now refused (exit 2) before any check; a backbone folder still takes it."""
    folder = tmp_path / "detector"
    folder.mkdir()
    (folder / MANIFEST_NAME).write_text(json.dumps({"kind": "detector"}))
    result = invoke("artifact", folder, "--ort-opt-level", "disable")
    assert result.exit_code == 2 and "drop --ort-opt-level" in result.output, result.output


def test_a_runtime_options_object_left_at_its_defaults_is_no_choice():
    """Before: `refuse_unused_options` raised a bare StopIteration for a plug-in's options object given with every
    field at its default (hunt 11a's proposal); such an object chooses nothing, so nothing is refused."""
    from verify.runtimes import RuntimeOptions, refuse_unused_options, runtime_class

    options = runtime_class("onnxruntime").Options()
    refuse_unused_options(["torchscript"], RuntimeOptions(plugins={"onnxruntime": options}))
