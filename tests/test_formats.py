"""Formats as plug-ins: the ExportedProgram and AOTInductor end to end, and format knowledge kept
in the format's own module (no string switch on format names elsewhere)."""

import ast
import functools
import json
import pathlib
import re

import pytest
import torch

from exporter.formats import FORMATS, get_format
from tests.helpers import invoke

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def folder(default_export):
    """`verify export -b resnet18 --shape SMALL_SHAPE`, made once for the suite (tests/conftest.py); read only."""
    return default_export


def test_default_export_writes_every_default_format_and_judges_every_pair(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    written = {entry["format"] for entry in manifest["files"].values()}
    defaults = [name for name in FORMATS if get_format(name).default]
    assert set(defaults) <= written
    for name in defaults:
        assert (folder / get_format(name).filename).is_file()
    runs = {v["a"] for v in manifest["verdicts"]} | {v["b"] for v in manifest["verdicts"]}
    assert {"eager", "torchscript", "exported", "onnxruntime", "oracle"} <= runs
    assert manifest["passed"] is True


def test_compare_pt2_with_onnx_agrees(folder):
    result = invoke("compare", str(folder / "model.pt2"), str(folder / "model.onnx"))
    assert result.exit_code == 0, result.output


def _mutated_pt2(folder, tmp_path, key, channel, factor=1.001):
    program = torch.export.load(str(folder / "model.pt2"))
    with torch.no_grad():
        program.state_dict[key][channel] *= factor
    path = tmp_path / "model_mut.pt2"
    torch.export.save(program, str(path))
    return path


def test_one_channel_scaled_in_a_pt2_fails_compare(folder, tmp_path):
    path = _mutated_pt2(folder, tmp_path, "layer2.0.conv1.weight", 3)
    result = invoke("compare", str(folder / "model.pt"), str(path), "--json", tmp_path / "c.json")
    assert result.exit_code == 1, result.output
    report = json.loads((tmp_path / "c.json").read_text())
    verdicts = {(p["a"], p["b"]): {o["name"]: o["passed"] for o in p["outputs"]} for p in report["pairs"]}
    # A vs B fails from the scaled layer on (layer1 is before it), each side agrees with its own oracle
    assert verdicts[("A", "B")] == {"layer1": True, "layer2": False, "layer3": False, "layer4": False}, verdicts
    assert all(all(v.values()) for pair, v in verdicts.items() if pair != ("A", "B")), verdicts
    assert report["problems"] == [], report["problems"]


def test_aoti_compiles_runs_and_agrees(aoti_export):
    """`verify export --model AOTI_MODEL --shape AOTI_SHAPE --format aoti`: the suite's one compile
    (tests/conftest.py)."""
    result, folder = aoti_export
    assert result.exit_code == 0, result.output
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["files"][get_format("aoti").filename]["format"] == "aoti"
    assert {v["a"] for v in manifest["verdicts"]} == {"aoti", "eager"}


def test_aoti_without_a_compiler_is_one_line_naming_what_to_install(monkeypatch):
    from exporter.errors import SetupError
    from exporter.formats import aoti

    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(SetupError, match="install one"):
        aoti.require_compiler()


def _string_constants(path) -> tuple[tuple[str, int], ...]:
    return tuple((node.value, node.lineno) for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.Constant) and isinstance(node.value, str))


@pytest.fixture(scope="module")
def string_constants():
    """`_string_constants` kept for the module: every format's case reads the same files, parsed once (1.6 s a case)."""
    return functools.cache(_string_constants)


ALLOWED = {
    # the registry lines, and the CLI's help and choices
    "exporter/formats/__init__.py", "verify/cli/options.py",
    # the whole-detector check exports through its own two paths (scripted TorchScript, the legacy ONNX
    # exporter: torch.export cannot trace torchvision's detectors), not through the FORMATS plug-ins
    "verify/detect/check.py", "verify/detect/export.py", "verify/detect/runners.py", "verify/detect/verdict.py",
    "verify/detect/folder.py", "verify/detect/preflight.py",
    # runtimes declare the formats they run
    *(str(p.relative_to(ROOT)) for p in (ROOT / "verify" / "runtimes").glob("*.py")),
}

SAME_SPELLING = {
    ("exporter/formats/onnx.py", "torchscript"),  # torch's legacy ONNX exporter, not the format
    ("verify/report.py", "onnx"),  # the onnx package's version, not the format
    ("verify/pipeline/isolation.py", "onnx"),  # the onnx package the fork server imports once, not the format
    ("verify/pipeline/overlap.py", "onnx"),  # the onnx package the background export's child imports early
}


@pytest.mark.parametrize("name", FORMATS.names())
def test_format_names_appear_only_in_their_own_modules(name, string_constants):
    """Adding a format is one module and one line: nobody else switches on its name."""
    own = {f"exporter/formats/{p.name}" for p in (ROOT / "exporter" / "formats").glob("*.py")
           if get_format(name).__class__.__module__.endswith(p.stem)}
    offenders = []
    for path in list((ROOT / "exporter").rglob("*.py")) + list((ROOT / "verify").rglob("*.py")):
        relative = str(path.relative_to(ROOT))
        if relative in ALLOWED or relative in own or (relative, name) in SAME_SPELLING:
            continue
        offenders += [f"{relative}:{line}" for value, line in string_constants(path) if value == name]
    assert not offenders, offenders


def test_second_shape_stays_inside_the_range_a_file_accepts():
    from verify.inputs import second_shape

    axes = {"0": "batch", "2": "height", "3": "width"}
    assert second_shape((1, 3, 64, 64), axes) == (2, 3, 96, 96)
    assert second_shape((1, 3, 64, 64), axes, {"0": [2, None], "2": [2, 80], "3": [2, None]}) == (2, 3, 80, 96)
    # an axis already at its greatest keeps its size: smaller ones may still fail run-time guards
    assert second_shape((1, 3, 32, 32), axes, {"0": [2, None], "2": [2, 32], "3": [2, 32]}) == (2, 3, 32, 32)
    assert second_shape((4, 3, 32, 32), {"2": "height"}, {"2": [2, 32]}) is None
    assert second_shape((1, 3, 32, 32), {}) is None


def test_a_pt2_bounded_by_its_small_example_says_so_and_its_folder_validates(tmp_path):
    """torch.export bounds height and width to 32 when tracing a 32x32 ResNet input (its last stage is
    1x1): the file records the ranges, the export says so, and `verify artifact` checks a second shape
    inside them instead of failing a correct file at one outside."""
    result = invoke("export", "-b", "resnet18", "--shape", "1x3x32x32", "--format", "pt2", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert re.search(r"model\.pt2 accepts height \d+\.\.32, width \d+\.\.32 only", " ".join(result.stdout.split()))
    checked = invoke("artifact", tmp_path / "resnet18-frozen-body", "--trust-unsigned-code")
    assert checked.exit_code == 0, checked.output
    assert "model.pt2: shape 2x3x32x32" in checked.stdout
