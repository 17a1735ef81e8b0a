"""Unsigned folders run no code (issue 14, class 4): `verify artifact` and `verify preflight` load a
TorchScript, .pt2 or AOTInductor file only from a folder whose signature verified (`--verify-key`) or with
`--trust-unsigned-code`; and a .pt2 is read as data first (exporter/formats/pt2.py: scan_archive), so the
pickles, guards and expressions below never run, even trusted.

Every crafted .pt2 carries a payload that writes a sentinel file outside the folder; the manifest is
rewritten to match (sha256 and size), as anyone who can write the folder can. One signed export of resnet18
at 1x3x32x32 (default formats, legacy ONNX exporter) serves every case, hard-linked per case."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from exporter.formats import get_format
from exporter.formats.pt2 import TORCH_FORCE_WEIGHTS_ONLY, scan_archive
from exporter.manifest import MANIFEST_NAME, SIGNATURE_NAME, file_sha256
from tests.helpers import linked_copy, make_keys, rewrite
from verify.cli import app
from verify.folder.validate import SIGN_HOW, UNSIGNED_CODE_OPTION, validate

ROOT = Path(__file__).resolve().parents[1]
SHAPE = "1x3x32x32"
CODE_FILES = ("model.pt", "model.pt2")
ONNX_DATA = ("--onnx-exporter", "torchscript")
"""The ONNX file here is only data checked unsigned, whichever exporter wrote it: the cheaper one (4x faster)."""
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


# Keys, folders and the outside world --------------------------------------------------------------

@pytest.fixture(scope="module")
def keys(module_tmp):
    return make_keys(module_tmp("trust-keys"))


@pytest.fixture(scope="module")
def signed_export(module_tmp, keys):
    out = module_tmp("trust-signed")
    result = invoke("export", "-b", "resnet18", "--shape", SHAPE, "--sign-key", keys[0], "--out", out, *ONNX_DATA)
    assert result.exit_code == 0, result.output
    folder = out / "resnet18-frozen-body"
    assert {"model.onnx", *CODE_FILES, SIGNATURE_NAME} <= set(os.listdir(folder))
    yield folder
    files = read_manifest(folder)["files"]  # the cases' hard-linked copies changed nothing here
    assert {name: file_sha256(folder / name) for name in files} == {name: f["sha256"] for name, f in files.items()}


def read_manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST_NAME).read_text())


def write_manifest(folder: Path, data: dict) -> None:
    rewrite(folder / MANIFEST_NAME, json.dumps(data, indent=2).encode())  # a new file: never through a hard link


@pytest.fixture
def signed(signed_export, tmp_path):
    """A hard-linked copy (tests/helpers.py linked_copy): every change here writes a new file (rewrite_zip, rewrite)."""
    return linked_copy(signed_export, tmp_path / "signed")


@pytest.fixture
def unsigned(signed_export, tmp_path):
    """The same export as CI would publish it without signing: no model.sig, no signature declared."""
    folder = linked_copy(signed_export, tmp_path / "unsigned")
    (folder / SIGNATURE_NAME).unlink()
    data = read_manifest(folder)
    data["signature"] = None
    write_manifest(folder, data)
    return folder


@pytest.fixture
def outside(tmp_path):
    """A file outside the tool's folders, and where a payload would write: both checked after each case."""
    keep = tmp_path / "outside.txt"
    keep.write_text("untouched")
    sentinel = tmp_path / "payload-ran"
    yield sentinel
    assert keep.read_text() == "untouched"
    assert not sentinel.exists(), "a payload ran"


@pytest.fixture
def loads(monkeypatch):
    """Every torch.jit.load and torch.export.load this process makes, by name (the real loader still runs)."""
    import torch

    calls: list[str] = []
    for owner, attr in ((torch.jit, "load"), (torch.export, "load")):
        real = getattr(owner, attr)

        def spy(*args, _real=real, _name=f"{owner.__name__}.{attr}", **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(owner, attr, spy)
    return calls


def rehash(folder: Path, name: str) -> None:
    """What an attacker with write access does: the manifest says what the file now is."""
    data = read_manifest(folder)
    data["files"][name].update(sha256=file_sha256(folder / name), size=(folder / name).stat().st_size)
    write_manifest(folder, data)


def report_of(path: Path) -> dict:
    return json.loads(path.read_text())


def checks_named(report: dict, prefix: str) -> list[dict]:
    return [c for c in report["checks"] if c["name"].startswith(prefix)]


# .pt2 payloads (each live against torch.export.load: test_recipes_run_code_under_plain_torch_export_load) ---

def rewrite_zip(path: Path, change: Callable[[str, bytes], bytes]) -> None:
    with zipfile.ZipFile(path) as source:
        entries = [(info, source.read(info.filename)) for info in source.infolist()]
    temporary = path.with_suffix(".tmp")
    with zipfile.ZipFile(temporary, "w", zipfile.ZIP_STORED) as target:
        for info, data in entries:
            target.writestr(info, change(info.filename, data))
    temporary.replace(path)


class Payload:
    """Unpickled, writes the sentinel."""

    def __init__(self, sentinel: Path):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return exec, (f"open({self.sentinel!r}, 'w').write('ran')",)


def torch_saved_payload(sentinel: Path) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(Payload(sentinel), buffer)
    return buffer.getvalue()


def write_expression(sentinel: Path) -> str:
    """Python that writes the sentinel, with no double quote (guards are pasted into a quoted message)."""
    return f"__import__('pathlib').Path('{sentinel}').write_text('ran')"


def pickled_weight(path: Path, sentinel: Path) -> None:
    """The first weight marked `use_pickle` (torch.load(weights_only=False)) and replaced by a payload."""
    def change(name: str, data: bytes) -> bytes:
        if name.endswith("data/weights/model_weights_config.json"):
            config = json.loads(data)
            next(iter(config["config"].values()))["use_pickle"] = True
            return json.dumps(config).encode()
        return torch_saved_payload(sentinel) if name.endswith("data/weights/weight_0") else data
    rewrite_zip(path, change)


def pickled_sample_inputs(path: Path, sentinel: Path) -> None:
    """Sample inputs load with weights_only=True, and fall back to weights_only=False when that fails."""
    rewrite_zip(path, lambda name, data: torch_saved_payload(sentinel)
                if name.endswith("data/sample_inputs/model.pt") else data)


def opaque_constant(path: Path, sentinel: Path) -> None:
    """A constant stored as an opaque object: pickle.loads."""
    def change(name: str, data: bytes) -> bytes:
        if name.endswith("data/constants/model_constants_config.json"):
            return json.dumps({"config": {"hidden": {"path_name": "opaque_obj_0", "is_param": False,
                                                      "use_pickle": True, "tensor_meta": None}}}).encode()
        return data
    rewrite_zip(path, change)
    with zipfile.ZipFile(path, "a") as archive:
        root = archive.namelist()[0].split("/")[0]  # the archive's own root ("archive" when saved through memory)
        archive.writestr(f"{root}/data/constants/opaque_obj_0", pickle.dumps(Payload(sentinel)))


def edit_program(path: Path, edit: Callable[[dict], None]) -> None:
    def change(name: str, data: bytes) -> bytes:
        if name.endswith("models/model.json"):
            program = json.loads(data)
            edit(program)
            return json.dumps(program).encode()
        return data
    rewrite_zip(path, change)


def guard_code(path: Path, sentinel: Path) -> None:
    """`.module()` exec()s every guard string of the archive."""
    edit_program(path, lambda program: program["guards_code"].append(f"{write_expression(sentinel)} > 0"))


def symbolic_expression(path: Path, sentinel: Path) -> None:
    """torch.export.load parses every symbolic size with sympy.sympify (an eval)."""
    def edit(program: dict) -> None:
        from exporter.formats.pt2 import _find

        _find(program, "expr_str")[0]["expr_str"] = f"{write_expression(sentinel)} and s0"
    edit_program(path, edit)


def callable_target(path: Path, sentinel: Path) -> None:
    """A node target resolved by attribute lookup from `torch`: `torch.os.system` is os.system."""
    def edit(program: dict) -> None:
        program["graph_module"]["graph"]["nodes"].insert(0, {
            "target": "torch.os.system", "outputs": [], "metadata": {},
            "inputs": [{"name": "command", "arg": {"as_string": f"touch {sentinel}"}, "kind": 1}]})
    edit_program(path, edit)


RECIPES = {f.__name__: f for f in (pickled_weight, pickled_sample_inputs, opaque_constant, guard_code,
                                   symbolic_expression, callable_target)}
LIVE = ("pickled_weight", "pickled_sample_inputs", "guard_code", "symbolic_expression")
"""The recipes shown to run their payload under torch 2.14's own torch.export.load(...).module()(x)."""


# The rule: code only from a verified or explicitly trusted folder -----------------------------------

def test_unsigned_folder_loads_no_code_and_says_how_to_sign(unsigned, outside, loads, tmp_path):
    result = invoke("artifact", unsigned, "--json", tmp_path / "r.json")
    assert result.exit_code == 1, result.output
    assert loads == []  # not torch.jit.load, not torch.export.load: not even for the second shape's reference
    report = report_of(tmp_path / "r.json")
    for name in CODE_FILES:
        check, = checks_named(report, f"{name}: load")
        assert not check["passed"] and "\n" not in check["message"]
        assert SIGN_HOW in check["message"] and UNSIGNED_CODE_OPTION in check["message"]
        assert get_format(read_manifest(unsigned)["files"][name]["format"]).executes_code_on_load
    onnx = checks_named(report, "model.onnx:")
    assert onnx and all(c["passed"] for c in onnx)  # ONNX is data: checked unsigned
    assert not get_format("onnx").executes_code_on_load
    assert UNSIGNED_CODE_OPTION in result.output


def test_trust_unsigned_code_loads_them_as_before(unsigned, outside, loads):
    result = invoke("artifact", unsigned, UNSIGNED_CODE_OPTION)
    assert result.exit_code == 0, result.output
    assert {"torch.jit.load", "torch.export.load"} <= set(loads)


def test_a_verified_signature_loads_everything(signed, keys, outside, loads):
    result = invoke("artifact", signed, "--verify-key", keys[1])
    assert result.exit_code == 0, result.output
    assert {"torch.jit.load", "torch.export.load"} <= set(loads)


def test_a_signed_folder_checked_without_its_key_is_not_verified(signed, outside, loads, tmp_path):
    result = invoke("artifact", signed, "--json", tmp_path / "r.json")
    assert result.exit_code == 1 and loads == []
    assert all(not c["passed"] and UNSIGNED_CODE_OPTION in c["message"]
               for name in CODE_FILES for c in checks_named(report_of(tmp_path / "r.json"), f"{name}: load"))


def test_library_default_is_the_safe_path(unsigned, outside, loads):
    """Its trusted counterpart is test_trust_unsigned_code_loads_them_as_before: `verify artifact
    --trust-unsigned-code` is validate(..., trust_unsigned_code=True) on the same folder."""
    report = validate([unsigned])
    assert not report.passed and loads == []


# Crafted .pt2 files: the payload never runs, signed or not, trusted or not ---------------------------

@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize("trust", [False, True], ids=["unsigned", "trusted"])
def test_crafted_pt2_never_runs_its_payload(recipe, trust, unsigned, outside, tmp_path):
    RECIPES[recipe](unsigned / "model.pt2", outside)
    rehash(unsigned, "model.pt2")
    result = invoke("artifact", unsigned, "--json", tmp_path / "r.json", *([UNSIGNED_CODE_OPTION] if trust else []))
    assert result.exit_code == 1, result.output
    failed = [c for c in report_of(tmp_path / "r.json")["checks"]
              if c["name"].startswith("model.pt2") and not c["passed"]]
    assert failed and all("\n" not in c["message"] and "model.pt2" in c["name"] for c in failed)
    if trust:  # the refusal names what it found: the scan, or (pickled sample inputs) weights_only
        assert any(word in failed[0]["message"] for word in ("refused", "Weights only", "weights_only")), failed


def test_a_tampered_signed_folder_loads_nothing_with_its_key(signed, keys, outside, loads, tmp_path):
    pickled_weight(signed / "model.pt2", outside)
    rehash(signed, "model.pt2")
    result = invoke("artifact", signed, "--verify-key", keys[1], "--json", tmp_path / "r.json")
    assert result.exit_code == 1 and loads == []
    signature, = checks_named(report_of(tmp_path / "r.json"), "signature")
    assert not signature["passed"] and "model.pt2" in signature["message"]


def test_recipes_run_code_under_plain_torch_export_load(signed_export, tmp_path):
    """The attacks are real: torch's own loader runs each payload (so the scan and weights_only matter)."""
    crafted = {}
    for name in LIVE:
        crafted[name] = (Path(shutil.copy(signed_export / "model.pt2", tmp_path / f"{name}.pt2")),
                         tmp_path / f"{name}.ran")
        RECIPES[name](*crafted[name])
    code = ("import sys, torch\n"
            "for path in sys.argv[1:]:\n"
            "    try:\n"
            "        torch.export.load(path).module()(torch.randn(2, 3, 32, 32))\n"
            "    except Exception:\n"
            "        pass\n")
    subprocess.run([sys.executable, "-c", code, *(str(p) for p, _ in crafted.values())], check=True,
                   capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert {name: sentinel.exists() for name, (_, sentinel) in crafted.items()} == dict.fromkeys(LIVE, True)


def test_weights_only_is_forced_even_past_the_scan(signed_export, tmp_path, monkeypatch):
    """Defence in depth: with the scan bypassed, every torch.load inside torch.export.load is weights_only."""
    import exporter.formats.pt2 as pt2

    sentinel = tmp_path / "ran"
    for recipe in (pickled_weight, pickled_sample_inputs):
        path = Path(shutil.copy(signed_export / "model.pt2", tmp_path / f"{recipe.__name__}.pt2"))
        recipe(path, sentinel)
        monkeypatch.setattr(pt2, "scan_archive", lambda _path: "bypassed")
        with pytest.raises(Exception, match="(?i)weights.only"):
            pt2.load_program(path)
        assert not sentinel.exists()
        assert TORCH_FORCE_WEIGHTS_ONLY not in os.environ  # restored


def test_the_scan_passes_what_torch_export_save_writes(signed_export):
    assert "nothing pickled" in scan_archive(signed_export / "model.pt2")


# preflight ---------------------------------------------------------------------------------------------

def test_preflight_refuses_code_from_an_unsigned_folder(unsigned, outside, loads, tmp_path):
    result = invoke("preflight", unsigned, "--runtime", "torchscript", "--runs", "1", "--warmup", "0",
                    "--json", tmp_path / "p.json")
    assert result.exit_code == 1 and loads == []
    report = report_of(tmp_path / "p.json")
    assert report["summary"].startswith("NO-GO") and "\n" not in report["summary"]
    assert SIGN_HOW in report["summary"] and UNSIGNED_CODE_OPTION in report["summary"]
    data = invoke("preflight", unsigned, "--runs", "1", "--warmup", "0")  # onnxruntime: data, checked unsigned
    assert data.exit_code == 0, data.output


def test_preflight_loads_code_when_trusted_or_verified(unsigned, signed, keys, outside, loads):
    trusted = invoke("preflight", unsigned, "--runtime", "torchscript", "--runs", "1", "--warmup", "0",
                     UNSIGNED_CODE_OPTION)
    assert trusted.exit_code == 0, trusted.output
    verified = invoke("preflight", signed, "--runtime", "exported", "--runs", "1", "--warmup", "0",
                      "--verify-key", keys[1])
    assert verified.exit_code == 0, verified.output
    assert {"torch.jit.load", "torch.export.load"} <= set(loads)


def test_preflight_of_a_crafted_pt2_is_no_go_even_trusted(unsigned, outside, loads, tmp_path):
    guard_code(unsigned / "model.pt2", outside)
    rehash(unsigned, "model.pt2")
    result = invoke("preflight", unsigned, "--runtime", "exported", "--runs", "1", "--warmup", "0",
                    UNSIGNED_CODE_OPTION, "--json", tmp_path / "p.json")
    assert result.exit_code == 1 and loads == []
    assert "guard" in json.dumps(report_of(tmp_path / "p.json")["checks"])


# AOTInductor: a package is a shared library; a fake one shows who may dlopen it ---------------------
# The package is loaded in a worker process (verify/runtimes/aoti.py), where a spy in this process cannot see
# it: the load's own failure message says whether torch._inductor.aoti_load_package was called.
AOTI_LOADER = "torch._inductor.aoti_load_package"


def add_fake_aoti_package(folder: Path) -> None:
    """model.pt2 with an AOTInductor entry: the registry now reads it as an `aoti` package."""
    package = Path(shutil.copy(folder / "model.pt2", folder / "model_aoti.pt2"))
    with zipfile.ZipFile(package, "a") as archive:
        archive.writestr("model/data/aotinductor/model/model.so", b"\x7fELF not really")
    data = read_manifest(folder)
    data["files"]["model_aoti.pt2"] = {**data["files"]["model.pt2"], "format": "aoti"}
    write_manifest(folder, data)
    rehash(folder, "model_aoti.pt2")


@pytest.mark.parametrize("trust", [False, True], ids=["unsigned", "trusted"])
def test_aoti_package_is_loaded_only_when_trusted(trust, unsigned, outside, tmp_path):
    add_fake_aoti_package(unsigned)
    result = invoke("artifact", unsigned, "--json", tmp_path / "r.json", *([UNSIGNED_CODE_OPTION] if trust else []))
    assert result.exit_code == 1, result.output  # the fake package fails to load either way
    load, = checks_named(report_of(tmp_path / "r.json"), "model_aoti.pt2: load")
    assert (AOTI_LOADER in load["message"]) == trust, load["message"]
    assert (UNSIGNED_CODE_OPTION in load["message"]) != trust
