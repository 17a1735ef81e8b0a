"""The bad-input battery: every command, fed what a careless or hostile user would type, must fail
closed: the expected exit code (2 for usage and environment errors), exactly one error line on
stderr, no traceback, never a pass. Validation runs before any work, so almost no case builds a model.

To add a case, add a row to a table below: Case(id, args, code, fragment). `{name}` in args is
replaced by the path of the fixture file `name` (see `files`); `work=True` marks a case allowed to
start work (a progress line) before it fails.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from exporter.messages import MAX_MESSAGE
from verify.bounds import DECIMAL_RANGE
from verify.cli import app

runner = CliRunner()
TINY = ("--backbone", "resnet18", "--shape", "1x3x32x32")
PROGRESS_MARKS = ("✓ ", "✗ ")


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    code: int = 2
    fragment: str = ""
    work: bool = False
    """May start work (print progress lines) before failing."""


def npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def files(module_tmp):
    """One of every kind of thing a path can be, and every kind of broken file."""
    d = module_tmp("bad")
    good = np.ones((1, 3, 32, 32), np.float32)
    nan, inf = good.copy(), good.copy()
    nan.flat[:5] = np.nan
    inf.flat[:2] = np.inf
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (10000, 3, 10000, 10000)})
    raw = {
        "text_npy": b"1 2 3\n",
        "empty_npy": b"",
        "truncated_npy": npy_bytes(good)[:200],
        "nan_npy": npy_bytes(nan),
        "inf_npy": npy_bytes(inf),
        "ndim3_npy": npy_bytes(np.ones((3, 32, 32), np.float32)),
        "int_npy": npy_bytes(np.ones((1, 3, 32, 32), np.int32)),
        "huge_npy": header.getvalue(),
        "zero_npy": npy_bytes(np.ones((0, 3, 32, 32), np.float32)),
        "good_npy": npy_bytes(good),
        "text_pt": b"not a checkpoint\n",
        "empty_pt": b"",
        "text_safetensors": b"hello",
        "text_onnx": b"not onnx",
        "text_png": b"not a png",
        "notes_txt": b"hello",
        "weights_bin": b"\x00" * 16,
    }
    paths = {}
    for name, content in raw.items():
        stem, suffix = name.rsplit("_", 1)
        paths[name] = d / f"{stem}.{suffix}"
        paths[name].write_bytes(content)
    obj = d / "object.npy"
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    paths["object_npy"] = obj
    npz = d / "archive.npy"
    with open(npz, "wb") as handle:
        np.savez(handle, a=good)
    paths["npz_npy"] = npz
    paths["pickle_npy"] = d / "pickle.npy"
    paths["pickle_npy"].write_bytes(pickle.dumps({"a": 1}, protocol=4))
    paths["good_png"] = d / "good.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(paths["good_png"])
    paths["module_pt"] = d / "module.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, paths["module_pt"])
    paths["truncated_pt"] = d / "truncated.pt"
    torch.save({"w": torch.zeros(100)}, paths["truncated_pt"])
    paths["truncated_pt"].write_bytes(paths["truncated_pt"].read_bytes()[:300])
    paths["dir"] = d / "a_dir"
    paths["dir"].mkdir()
    paths["dir_pt"] = d / "dir.pt"
    paths["dir_pt"].mkdir()
    paths["fifo"] = d / "pipe.npy"
    os.mkfifo(paths["fifo"])
    paths["fifo_pt"] = d / "pipe.pt"
    os.mkfifo(paths["fifo_pt"])
    paths["broken"] = d / "broken.npy"
    paths["broken"].symlink_to(d / "nowhere.npy")
    paths["broken_onnx"] = d / "broken.onnx"
    paths["broken_onnx"].symlink_to(d / "nowhere.onnx")
    paths["stray_dir"] = d / "stray"
    paths["stray_dir"].mkdir()
    (paths["stray_dir"] / "a.npy").write_bytes(npy_bytes(good))
    (paths["stray_dir"] / "readme.txt").write_text("hi")
    paths["nan_dir"] = d / "nan_inputs"
    paths["nan_dir"].mkdir()
    (paths["nan_dir"] / "a.npy").write_bytes(npy_bytes(good))
    (paths["nan_dir"] / "b.npy").write_bytes(npy_bytes(nan))
    paths["regular"] = d / "regular_file"
    paths["regular"].write_text("x")
    paths["dev"] = "/dev/null"
    paths["proc"] = "/proc/verify-cannot-write-here/report.json"
    paths["d"] = d
    return {k: str(v) for k, v in paths.items()}


EXPORT = ("export", *TINY)
COMPARE = ("compare", "resnet18:batch:body", "resnet18:frozen:body", "--shape", "1x3x32x32")
EXPLAIN = ("explain", "resnet18:batch:body", "resnet18:frozen:body", "--shape", "1x3x32x32")


def with_shape(base: tuple[str, ...], shape: str) -> tuple[str, ...]:
    """`base` with its --shape value replaced (an option given twice is refused as such)."""
    at = base.index("--shape") + 1
    return (*base[:at], shape, *base[at + 1:])
ARTIFACT = ("artifact", "{dir}")
PREFLIGHT = ("preflight", "{dir}")

OPTION_CASES = [
    # numbers: finite and in range, for every command that takes them
    Case("factor-nan", (*EXPORT, "--factor", "nan"), 2, "--factor': must be a finite number, got nan"),
    Case("factor-inf", (*COMPARE, "--factor", "inf"), 2, "must be a finite number, got inf"),
    Case("factor-neg-inf", (*EXPLAIN, "--factor", "-inf"), 2, "must be a finite number"),
    Case("factor-zero", (*EXPORT, "--factor", "0"), 2, "must be > 0, got 0"),
    Case("factor-negative", (*COMPARE, "--factor", "-1"), 2, "must be > 0"),
    Case("factor-text", (*EXPORT, "--factor", "abc"), 2, "Invalid value for '--factor'"),
    Case("rtol-nan", (*COMPARE, "--rtol", "nan"), 2, "--rtol': must be a finite number"),
    Case("rtol-inf", (*EXPORT, "--rtol", "inf"), 2, "must be a finite number, got inf"),
    Case("rtol-negative", (*EXPORT, "--rtol", "-1e-3"), 2, "must be >= 0"),
    Case("atol-inf", (*COMPARE, "--atol", "inf"), 2, "--atol': must be a finite number"),
    Case("atol-nan", (*EXPORT, "--atol", "NaN"), 2, "must be a finite number"),
    Case("atol-negative", (*COMPARE, "--atol", "-1"), 2, "must be >= 0"),
    Case("atol-overflow", (*COMPARE, "--atol", "1e400"), 2, "must be a finite number"),
    Case("decimal-negative", (*EXPORT, "--decimal", str(DECIMAL_RANGE[0] - 1)), 2,
         f"must be between {DECIMAL_RANGE[0]} and {DECIMAL_RANGE[1]}, got {DECIMAL_RANGE[0] - 1}"),
    Case("decimal-huge-negative", (*COMPARE, "--decimal", "-400"), 2,
         f"must be between {DECIMAL_RANGE[0]} and {DECIMAL_RANGE[1]}"),
    Case("decimal-too-big", (*EXPORT, "--decimal", str(DECIMAL_RANGE[1] + 1)), 2,
         f"must be between {DECIMAL_RANGE[0]} and {DECIMAL_RANGE[1]}"),
    Case("decimal-float", (*EXPORT, "--decimal", "3.5"), 2, "Invalid value for '--decimal'"),
    Case("decimal-and-atol", (*EXPORT, "--decimal", "5", "--atol", "1e-3"), 2, "either --decimal or --rtol"),
    Case("factor-and-decimal", (*COMPARE, "--factor", "3", "--decimal", "4"), 2, "--factor sets the auto mode"),
    Case("opset-old", (*EXPORT, "--opset", "6"), 2, "--opset': must be between 7 and"),
    Case("opset-future", (*EXPORT, "--opset", "99"), 2, "the installed onnx knows opsets up to"),
    Case("opset-text", (*EXPORT, "--opset", "x"), 2, "Invalid value for '--opset'"),
    Case("seed-negative", (*EXPORT, "--seed", "-1"), 2, "--seed': must be between 0 and 4294967295"),
    Case("seed-too-big", (*COMPARE, "--seed", str(2**32)), 2, "must be between 0 and 4294967295"),
    Case("seed-float", (*EXPLAIN, "--seed", "1.5"), 2, "Invalid value for '--seed'"),
    Case("runs-zero", (*PREFLIGHT, "--runs", "0"), 2, "--runs': must be between 1 and 100000, got 0"),
    Case("runs-forever", (*PREFLIGHT, "--runs", "1000000000000000000000"), 2, "got a 22-digit number"),
    Case("runs-sci", (*PREFLIGHT, "--runs", "1e21"), 2, "Invalid value for '--runs'"),
    Case("warmup-negative", (*PREFLIGHT, "--warmup", "-1"), 2, "--warmup': must be between 0 and 10000"),
    Case("latency-nan", (*PREFLIGHT, "--max-latency-ms", "nan"), 2, "--max-latency-ms': must be a finite number"),
    Case("latency-inf", (*PREFLIGHT, "--max-latency-ms", "inf"), 2, "must be a finite number"),
    Case("latency-zero", (*PREFLIGHT, "--max-latency-ms", "0"), 2, "must be > 0"),
    Case("latency-negative", (*PREFLIGHT, "--max-latency-ms", "-5"), 2, "must be > 0"),
    # choices: Enums and registries
    Case("backbone-unknown", ("export", "--backbone", "vgg16"), 2, "Unknown backbone 'vgg16'; choose one of"),
    Case("norm-unknown", ("export", "--norm", "layernorm"), 2, "Unknown norm 'layernorm'"),
    Case("view-unknown", ("export", "--view", "head"), 2, "Unknown view 'head'"),
    Case("device-unknown", (*EXPORT, "--device", "tpu"), 2, "'tpu' is not one of 'cpu', 'cuda'"),
    Case("device-compare", (*COMPARE, "--device", "gpu"), 2, "'gpu' is not one of"),
    Case("ort-level-unknown", (*EXPORT, "--ort-opt-level", "max"), 2, "'max' is not one of 'disable'"),
    Case("ort-level-artifact", (*ARTIFACT, "--ort-opt-level", "99"), 2, "is not one of"),
    Case("onnx-exporter-unknown", (*EXPORT, "--onnx-exporter", "tf2onnx"), 2, "'tf2onnx' is not one of"),
    Case("runtime-unknown", (*EXPORT, "--runtime", "tensorrt"), 2, "Unknown runtime 'tensorrt'"),
    Case("runtime-twice", (*EXPORT, "--runtime", "eager", "--runtime", "eager"), 2, "given twice"),
    Case("provider-unknown", (*PREFLIGHT, "--provider", "tpu"), 2, "'tpu' is not one of"),
    Case("preflight-runtime-eager", (*PREFLIGHT, "--runtime", "eager"), 2, "runs in-memory models, not files"),
    Case("preflight-runtime-unknown", (*PREFLIGHT, "--runtime", "trt"), 2, "Unknown runtime 'trt'"),
    Case("weights-unknown", (*EXPORT, "--weights", "imagenet21k"), 2, "unknown weights 'imagenet21k'"),
    Case("weights-imagenet-absent", (*EXPORT, "--weights", "imagenet"), 2, "not in the local cache", work=True),
    # shapes
    Case("option-twice", (*EXPORT, "--norm", "frozen", "--norm", "batch"), 2, "was given 2 times"),
    Case("shape-3d", with_shape(EXPORT, "3x224x224"), 2, "Bad shape '3x224x224'"),
    Case("shape-zero", with_shape(COMPARE, "0x3x32x32"), 2, "four positive sizes"),
    Case("shape-negative", with_shape(EXPORT, "1x3x-4x4"), 2, "four positive sizes"),
    Case("shape-letters", with_shape(EXPLAIN, "axbxcxd"), 2, "Bad shape"),
    Case("shape-5d", with_shape(EXPORT, "1x3x32x32x1"), 2, "four positive sizes"),
    Case("shape-huge", with_shape(EXPORT, "100000x3x1000x1000"), 2, "more than the 67,108,864"),
    # parse errors: one line, exit 2
    Case("unknown-option", (*EXPORT, "--bogus"), 2, "No such option: --bogus"),
    Case("unknown-command", ("frobnicate",), 2, "No such command 'frobnicate'"),
    Case("missing-argument", ("compare", "resnet18"), 2, "Missing argument 'B'"),
    Case("missing-paths", ("artifact",), 2, "Missing argument"),
    Case("extra-argument", ("list", "extra"), 2, "unexpected extra argument"),
    Case("list-unknown-option", ("list", "--all"), 2, "No such option: --all"),
    Case("option-without-value", (*EXPORT, "--seed"), 2, "--seed' requires an argument"),
    Case("explain-one-side", ("explain", "resnet18:batch:body"), 2, "Give both A and B"),
]

SPEC_CASES = [
    Case("spec-unknown-backbone", ("compare", "vgg16", "resnet18"), 2, "Unknown backbone 'vgg16'"),
    Case("spec-trailing-colon", ("compare", "resnet18:", "resnet18"), 2, "Bad model spec 'resnet18:'"),
    Case("spec-colons", ("explain", "::", "resnet18"), 2, "Bad model spec '::'"),
    Case("spec-four-parts", ("compare", "resnet18:batch:body:x", "resnet18"), 2, "Bad model spec"),
    Case("spec-unknown-norm", ("compare", "resnet18:groupnorm", "resnet18"), 2, "Unknown norm 'groupnorm'"),
    Case("spec-unknown-view", ("explain", "resnet18:batch:head", "resnet18"), 2, "Unknown view 'head'"),
    Case("spec-empty", ("compare", "", "resnet18"), 2, "Bad model spec ''"),
    Case("spec-is-directory", ("compare", "{dir}", "resnet18"), 2, "is a directory; pass a model file"),
    Case("spec-is-device", ("compare", "resnet18", "{dev}"), 2, "is a character device, not a model file"),
    Case("spec-broken-link", ("explain", "{broken_onnx}", "resnet18"), 2, "is a broken symbolic link"),
    Case("spec-fifo", ("compare", "{fifo}", "resnet18"), 2, "is a FIFO (named pipe)"),
    Case("spec-missing-file", ("compare", "missing.onnx", "resnet18"), 2, "missing.onnx does not exist"),
    Case("spec-unknown-suffix", ("compare", "model.tflite", "resnet18"), 2, "Cannot tell the format"),
    Case("spec-text-onnx", ("compare", "{text_onnx}", "resnet18"), 2, "text.onnx", work=True),
]

INPUT_CASES = [
    Case("input-text-npy", (*EXPORT, "--input", "{text_npy}"), 2, "is not a NumPy .npy file"),
    Case("input-empty-file", (*COMPARE, "--input", "{empty_npy}"), 2, "is an empty file (0 bytes)"),
    Case("input-truncated", (*EXPLAIN, "--input", "{truncated_npy}"), 2, "is truncated"),
    Case("input-nan-export", (*EXPORT, "--input", "{nan_npy}"), 2, "nan.npy holds 5 NaN of 3072 values"),
    Case("input-nan-compare", (*COMPARE, "--input", "{nan_npy}"), 2, "holds 5 NaN of 3072 values"),
    Case("input-nan-explain", (*EXPLAIN, "--input", "{nan_npy}"), 2, "holds 5 NaN of 3072 values"),
    Case("input-inf-export", (*EXPORT, "--input", "{inf_npy}"), 2, "inf.npy holds 2 Inf of 3072 values"),
    Case("input-inf-compare", (*COMPARE, "--input", "{inf_npy}"), 2, "holds 2 Inf"),
    Case("input-inf-explain", (*EXPLAIN, "--input", "{inf_npy}"), 2, "holds 2 Inf"),
    Case("input-nan-in-folder", (*COMPARE, "--input", "{nan_dir}"), 2, "b.npy holds 5 NaN"),
    Case("input-ndim3", (*EXPORT, "--input", "{ndim3_npy}"), 2, "must hold one NCHW array (4 dimensions)"),
    Case("input-int", (*COMPARE, "--input", "{int_npy}"), 2, "holds int32 values; inputs must be floating"),
    Case("input-huge-shape", (*EXPORT, "--input", "{huge_npy}"), 2, "more than the 67,108,864"),
    Case("input-zero-size", (*EXPLAIN, "--input", "{zero_npy}"), 2, "holds an empty array"),
    Case("input-object", (*EXPORT, "--input", "{object_npy}"), 2, "holds Python objects (dtype object)"),
    Case("input-pickle-named-npy", (*COMPARE, "--input", "{pickle_npy}"), 2, "holds pickled Python data"),
    Case("input-npz", (*COMPARE, "--input", "{npz_npy}"), 2, "it is a zip archive"),
    Case("input-directory-empty", (*EXPORT, "--input", "{dir}"), 2, "is empty; it should hold"),
    Case("input-stray-file", (*EXPORT, "--input", "{stray_dir}"), 2, "readme.txt is neither a .npy array nor"),
    Case("input-fifo", (*EXPORT, "--input", "{fifo}"), 2, "is a FIFO (named pipe)"),
    Case("input-broken-link", (*COMPARE, "--input", "{broken}"), 2, "is a broken symbolic link"),
    Case("input-device", (*EXPLAIN, "--input", "{dev}"), 2, "is a character device"),
    Case("input-missing", (*EXPORT, "--input", "nowhere.npy"), 2, "nowhere.npy does not exist"),
    Case("input-unknown-suffix", (*EXPORT, "--input", "{notes_txt}"), 2, "is neither a .npy array nor an image"),
    Case("input-fake-png", (*COMPARE, "--input", "{text_png}"), 2, "is not a readable image"),
    Case("input-shape-mismatch", (*with_shape(EXPORT, "1x3x64x64"), "--input", "{good_npy}"), 2,
         "holds shape 1x3x32x32 but --shape asks 1x3x64x64"),
    Case("input-image-channels", (*with_shape(EXPORT, "1x1x32x32"), "--input", "{good_png}"), 2,
         "Images decode to 3 channels (RGB) but --shape asks 1"),
]

WEIGHT_CASES = [
    Case("weights-text-pt", (*EXPORT, "--weights", "{text_pt}"), 2, "is not a PyTorch checkpoint", work=True),
    Case("weights-pickled-module", (*EXPORT, "--weights", "{module_pt}"), 2,
         "holds Python objects beyond tensors (it needs torch.nn.modules.linear.Linear)", work=True),
    Case("weights-truncated", (*COMPARE, "--weights", "{truncated_pt}"), 2, "is truncated or corrupt", work=True),
    Case("weights-empty", (*EXPORT, "--weights", "{empty_pt}"), 2, "is an empty file", work=True),
    Case("weights-bad-safetensors", (*EXPLAIN, "--weights", "{text_safetensors}"), 2,
         "is not a valid .safetensors file", work=True),
    Case("weights-directory", (*EXPORT, "--weights", "{dir_pt}"), 2, "dir.pt is a directory, not a file"),
    Case("weights-directory-no-suffix", (*EXPORT, "--weights", "{dir}"), 2, "is a directory, not a file"),
    Case("weights-fifo", (*EXPORT, "--weights", "{fifo_pt}"), 2, "is a FIFO (named pipe)"),
    Case("weights-broken-link", (*COMPARE, "--weights", "{broken}"), 2, "is a broken symbolic link"),
    Case("weights-device", (*EXPORT, "--weights", "{dev}"), 2, "is a character device"),
    Case("weights-missing", (*EXPORT, "--weights", "missing.safetensors"), 2, "does not exist"),
    Case("weights-wrong-suffix", (*EXPORT, "--weights", "{weights_bin}"), 2, "must end in .pt, .pth, .safetensors"),
]

OUTPUT_CASES = [
    Case("json-directory", (*COMPARE, "--json", "{dir}"), 2, "is a directory; give a file name"),
    Case("json-device", (*EXPORT, "--json", "{dev}"), 2, "/dev/null is a character device"),
    Case("json-unwritable", (*EXPLAIN, "--json", "{proc}"), 2, "nothing can be created in /proc"),
    Case("json-under-a-file", (*EXPORT, "--json", "{regular}/r.json"), 2, "regular_file is a file, not a folder"),
    Case("json-broken-link", (*COMPARE, "--json", "{broken}"), 2, "is a broken symbolic link"),
    Case("junit-directory", (*ARTIFACT, "--junit", "{dir}"), 2, "is a directory"),
    Case("markdown-device", (*PREFLIGHT, "--markdown", "{dev}"), 2, "is a character device"),
    Case("json-and-junit-same", (*ARTIFACT, "--json", "{d}/r.out", "--junit", "{d}/r.out"), 2,
         "--json and --junit both write"),
    Case("out-is-a-file", (*EXPORT, "--out", "{regular}"), 2, "output folder {regular} is a file; give a folder"),
    Case("out-unwritable", (*EXPORT, "--out", "/proc/verify-out"), 2, "nothing can be created in /proc"),
    Case("json-inside-export-folder", (*EXPORT, "--out", "{d}/o", "--json", "{d}/o/resnet18-frozen-body/r.json"),
         2, "is inside the export folder"),
]

FOLDER_CASES = [
    Case("artifact-missing", ("artifact", "nowhere"), 2, "nowhere does not exist"),
    Case("artifact-device", ("artifact", "{dev}"), 2, "is a character device; pass an export folder"),
    Case("artifact-fifo", ("artifact", "{fifo}"), 2, "is a FIFO"),
    Case("artifact-broken-link", ("artifact", "{broken}"), 2, "is a broken symbolic link"),
    Case("artifact-plain-file", ("artifact", "{regular}"), 2, "is neither an export folder nor its manifest"),
    Case("artifact-empty-folder", ("artifact", "{dir}"), 1, "", work=True),
    Case("preflight-missing", ("preflight", "nowhere"), 2, "nowhere does not exist"),
    Case("preflight-device", ("preflight", "{dev}"), 2, "is a character device"),
    Case("preflight-empty-folder", ("preflight", "{dir}"), 1, "", work=True),
]

CASES = OPTION_CASES + SPEC_CASES + INPUT_CASES + WEIGHT_CASES + OUTPUT_CASES + FOLDER_CASES


def test_the_battery_is_large_and_ids_are_unique():
    assert len(CASES) + len(SIGNALS) + len(IDENTITY_CASES) >= 80
    ids = [c.id for c in CASES] + [c.id for c in IDENTITY_CASES]
    assert len(ids) == len(set(ids))


def check_failed_closed(case: Case, code: int, stdout: str, stderr: str) -> None:
    assert code == case.code, f"exit {code}, expected {case.code}\nstdout: {stdout}\nstderr: {stderr}"
    assert code != 0
    assert "Traceback" not in stdout + stderr
    if case.code == 2:
        lines = [line for line in stderr.splitlines() if line.strip()]
        errors = [line for line in lines if not line.startswith(PROGRESS_MARKS)]
        assert len(errors) == 1 and errors[0].startswith("error: "), stderr
        assert len(errors[0]) <= len("error: ") + MAX_MESSAGE, errors[0]  # verify/cli/base.py print_error's bound
        if not case.work:
            assert errors == lines, f"work started before the check: {stderr}"
        for unsafe in ("weights_only=False", "allow_pickle=True", "unsafely", "weights_only` set to `False"):
            assert unsafe not in stderr
    if case.fragment:
        assert case.fragment in stderr + stdout, stderr + stdout


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [a.format(**files) for a in case.args]
    case = Case(case.id, case.args, case.code, case.fragment.format(**files), case.work)
    result = runner.invoke(app, args)
    check_failed_closed(case, result.exit_code, result.stdout, result.stderr)
    if "export" in args[:1] and case.code == 2 and not case.work:
        assert not (tmp_path / "artifacts").exists()  # refused before anything was written


# An export folder already holding another export: refused under the lock, saying how to proceed.
ONNX_ONLY = (*EXPORT, "--format", "onnx", "--onnx-exporter", "torchscript")
"""The export the identity cases refuse to replace, and their own: one legacy ONNX file (no .pt2 trace), since the
refusal compares identities, not files."""
IDENTITY_CASES = [
    Case("reexport-other-seed", (*ONNX_ONLY, "--seed", "1"), 2,
         "already holds a different export (seed 0 vs 1", work=True),
    Case("reexport-other-opset", (*ONNX_ONLY, "--opset", "17"), 2,
         "opset 18 vs 17); pass --out elsewhere to keep both, or --overwrite", work=True),
    Case("reexport-other-input", (*ONNX_ONLY, "--input", "{good_npy}"), 2,
         "another input", work=True),
    Case("export-over-a-file", (*EXPORT, "--out", "{d}/file_out"), 2, "exists and is a file, not an export folder",
         work=True),
    Case("export-over-a-foreign-folder", (*EXPORT, "--out", "{d}/foreign_out"), 2,
         "holds no readable manifest.json", work=True),
]


@pytest.fixture(scope="module")
def exported(module_tmp, files):
    out = module_tmp("exported")
    result = runner.invoke(app, [*ONNX_ONLY, "--out", str(out)])
    assert result.exit_code == 0, result.output
    d = files["d"]
    os.makedirs(f"{d}/file_out", exist_ok=True)
    with open(f"{d}/file_out/resnet18-frozen-body", "w") as handle:
        handle.write("mine")
    os.makedirs(f"{d}/foreign_out/resnet18-frozen-body", exist_ok=True)
    with open(f"{d}/foreign_out/resnet18-frozen-body/thesis.tex", "w") as handle:
        handle.write("mine")
    return out


@pytest.mark.parametrize("case", IDENTITY_CASES, ids=[c.id for c in IDENTITY_CASES])
def test_export_never_silently_replaces(case, files, exported):
    args = [a.format(**files) for a in case.args]
    if "--out" not in args:
        args += ["--out", str(exported)]
    before = {p.name: p.read_bytes() for p in (exported / "resnet18-frozen-body").iterdir()}
    result = runner.invoke(app, args)
    check_failed_closed(case, result.exit_code, result.stdout, result.stderr)
    after = {p.name: p.read_bytes() for p in (exported / "resnet18-frozen-body").iterdir()}
    assert before == after
    assert sorted(p.name for p in exported.iterdir()) == ["resnet18-frozen-body"]  # no staging or lock left
    for leftover in ("file_out/resnet18-frozen-body", "foreign_out/resnet18-frozen-body/thesis.tex"):
        assert os.path.exists(f"{files['d']}/{leftover}")


# Signals: Ctrl-C and SIGTERM mid-export end with one line, their own exit code, and nothing published.
SIGNALS = {"sigint": (signal.SIGINT, 130, "interrupted"), "sigterm": (signal.SIGTERM, 143, "terminated (SIGTERM)")}


@pytest.fixture(scope="module")
def signalled(module_tmp):
    """Both exports run at once (each pays for its own imports), each signalled once it is exporting."""
    from exporter.weights import load_weights, save_weights

    weights = module_tmp("weights") / "resnet18.safetensors"
    save_weights(load_weights("synthetic", "resnet18"), weights)  # the children skip the calibration passes
    outs = {name: module_tmp(name) for name in SIGNALS}
    processes = {name: subprocess.Popen([sys.executable, "-m", "verify.cli", *EXPORT, "--weights", str(weights),
                                         "--out", str(out)],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for name, out in outs.items()}
    deadline = time.monotonic() + 120
    pending = dict(processes)
    while pending and time.monotonic() < deadline:
        for name in list(pending):
            if list(outs[name].glob(".resnet18-frozen-body.staging-*")):
                pending.pop(name).send_signal(SIGNALS[name][0])
        time.sleep(0.02)
    results = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=120)
        results[name] = (process.returncode, stdout, stderr, outs[name], name not in pending)
    return results


@pytest.mark.parametrize("name", list(SIGNALS))
def test_signal_mid_export(name, signalled):
    code, stdout, stderr, out, signalled_in_time = signalled[name]
    assert signalled_in_time, f"the export never started writing: {stderr}"
    _, expected_code, word = SIGNALS[name]
    assert code == expected_code, stderr
    errors = [line for line in stderr.splitlines() if line.strip() and not line.startswith(PROGRESS_MARKS)]
    assert errors == [f"error: {word}"], stderr
    assert "Traceback" not in stderr + stdout
    assert list(out.iterdir()) == []  # no staging folder, no lock file, no half an export


@pytest.mark.parametrize(("interrupt", "code", "word"), [("Terminated", 128 + signal.SIGTERM, "terminated (SIGTERM)"),
                                                       ("KeyboardInterrupt", 130, "interrupted")])
def test_an_interrupt_a_library_wrapped_is_still_an_interrupt(interrupt, code, word, capsys):
    """A signal landing inside a pybind11 call comes back as SystemError("... returned a result with an
    exception set"), which an exporter then reports as its own failure: the run still ends as interrupted,
    with the signal's exit code, not as an export error (exit 2) blaming the model."""
    import typer

    import verify.cli
    from exporter.errors import ExportError

    @verify.cli.handle_errors
    def command():
        try:
            try:
                raise getattr(verify.cli, interrupt, None) or KeyboardInterrupt()
            except KeyboardInterrupt as inner:
                raise SystemError("<built-in method> returned a result with an exception set") from inner
        except SystemError:
            raise ExportError("torch.jit.script failed for resnet18:frozen:body; pass --trace") from None

    with pytest.raises(typer.Exit) as stopped:
        command()
    assert stopped.value.exit_code == code
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {word}"


def test_parse_errors_are_one_line_through_main_too(tmp_path):
    """The installed entry point (not only CliRunner) turns click's usage box into one line."""
    result = subprocess.run([sys.executable, "-m", "verify.cli", "export", "--factor", "nan", "--bogus"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")


def test_json_report_of_a_refusal_says_the_run_failed(files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, [*COMPARE, "--input", files["nan_npy"], "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 2
    assert "holds 5 NaN of 3072 values" in result.stderr, result.output  # refused for the input, not the report
    report = json.loads((tmp_path / "r.json").read_text())  # a failure report, never a verdict (surface28)
    assert report["passed"] is False and report["exit_code"] == 2 and "NaN" in report["error"]
