"""The plug-in contract (issue 15): a runtime with one option of its own is one module (tests/data/dummy_runtime.py)
and one registry line. Its option appears in every command that runs runtimes, its value reaches the runtime in
export, compare, artifact, preflight and the matrix (the dummy adds it to every output, so the numbers show where it
went) and the JSON, JUnit and Markdown outputs; a bad value is one line and exit 2, while parsing."""

import json
from dataclasses import dataclass
from xml.etree import ElementTree

import numpy as np
import pytest
from typer.testing import CliRunner

from exporter.errors import UsageError
from exporter.plugin_options import PluginOptions, option, option_fields
from tests.data.dummy_runtime import DummyRuntime
from verify.cli import app
from verify.render.markdown import RESULT_TEXT
from verify.runtimes import RUNTIMES

RUNTIME_COMMANDS = ("export", "compare", "artifact", "preflight", "matrix")
"""Every command that runs runtimes: each takes every registered runtime's options."""
OFFSET = 0.5
SMALL = ["--shape", "1x3x32x32"]
ONNX_ONLY = ["--format", "onnx", "--onnx-exporter", "torchscript"]  # the legacy exporter: ~1 s at 32 px
FLOAT32_ROUNDING = 1e-5
"""Relative rounding of `x + offset` in float32 next to the offset, and of eager vs ONNX Runtime (~1e-6)."""
[(FIELD, SPEC)] = option_fields(DummyRuntime.Options)

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def help_text(command: str) -> str:
    """The command's --help with its wrapping undone."""
    return " ".join(invoke(command, "--help").output.split())


@pytest.fixture(scope="module")
def dummy():
    with RUNTIMES.adding("dummy", lambda: DummyRuntime):  # the one registry line
        yield DummyRuntime


def export(out, *extra):
    """An export run by onnxruntime and the dummy, with every output format written; its result and paths."""
    paths = {kind: out / f"export.{kind}" for kind in ("json", "xml", "md")}
    result = invoke("export", "-b", "resnet18", *SMALL, *ONNX_ONLY, "--runtime", "onnxruntime", "--runtime", "dummy",
                    *extra, "--out", out, "--json", paths["json"], "--junit", paths["xml"], "--markdown", paths["md"])
    return result, paths


@pytest.fixture(scope="module")
def exported(dummy, module_tmp):
    """The dummy at its default offset (0): an export that passes, whose folder the other commands check."""
    out = module_tmp("plugin")
    result, paths = export(out)
    return result, paths, out / "resnet18-frozen-body"


def label(offset: float = OFFSET) -> str:
    return DummyRuntime(DummyRuntime().options.replacing(DummyRuntime, offset=offset)).label


def assert_offset_in_outputs(paths: dict, pair_label: str) -> None:
    """JUnit and Markdown name the dummy with its option value, and JUnit fails its pairs."""
    markdown, junit = paths["md"].read_text(), ElementTree.parse(paths["xml"]).getroot()
    assert pair_label in markdown
    failing = [case.get("name") for case in junit.iter("testcase") if case.find("failure") is not None]
    assert failing and all(pair_label in name for name in failing), failing


def test_the_option_is_in_every_runtime_command_help_only_while_registered(dummy):
    for command in RUNTIME_COMMANDS:
        text = help_text(command)
        assert SPEC.flag in text and SPEC.help in text and "runtime dummy" in text, command
        assert "--ort-opt-level" in text, command  # the built-in runtime's option, built the same way
    assert SPEC.flag not in help_text("explain")  # runs no runtime of the user's choice
    subclass = type("Dummy2", (DummyRuntime,), {"name": "dummy2"})
    with RUNTIMES.adding("dummy2", lambda: subclass):
        inherited = help_text("export")  # a subclass without Options of its own adds no flag
        assert inherited.count(SPEC.flag) == 1


def test_a_runtime_registered_later_shows_up_and_goes_away():
    @dataclass(frozen=True)
    class LateOptions(PluginOptions):
        mode: str = option("a", flag="--late-mode", choices=("a", "b"), help="A late runtime's mode")

    late = type("LateRuntime", (DummyRuntime,), {"name": "late", "Options": LateOptions})
    assert "--late-mode" not in help_text("matrix")
    with RUNTIMES.adding("late", lambda: late):
        assert "--late-mode <a|b> A late runtime's mode (runtime late) [default: a]" in help_text("matrix")
        refused = invoke("matrix", "--late-mode", "c")
        assert refused.exit_code == 2 and "'c' is not one of 'a', 'b'" in refused.output
    assert "--late-mode" not in help_text("matrix")


@pytest.mark.parametrize("value", ["-1", "nan", "x"])
@pytest.mark.parametrize("command", ["export", "matrix"])
def test_a_bad_value_is_one_line_and_exit_2_before_any_work(dummy, command, value):
    result = invoke(command, "-b", "resnet18", SPEC.flag, value)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and SPEC.flag in lines[0], result.output
    assert "Building" not in result.output


@pytest.mark.parametrize("value", [-1.0, float("nan"), "x", True])
def test_the_library_refuses_what_the_cli_refuses(value):
    with pytest.raises(UsageError, match=SPEC.flag):
        DummyRuntime.Options(offset=value)
    assert DummyRuntime.Options(offset=OFFSET).to_dict() == {SPEC.key: OFFSET}


def test_export_runs_the_dummy_at_its_default(exported):
    result, paths, _ = exported
    assert result.exit_code == 0, result.output
    report = json.loads(paths["json"].read_text())
    assert report["settings"]["runtime"][SPEC.key] == FIELD.default
    [pair] = [p for p in report["pairs"] if (p["a"], p["b"]) == (label(FIELD.default), "onnxruntime")]
    assert pair["passed"] and all(o["max_abs"] == 0 for o in pair["outputs"])  # ONNX Runtime's own bits


def test_export_runs_the_dummy_with_its_option(exported, tmp_path):
    result, paths = export(tmp_path, SPEC.flag, OFFSET)
    assert result.exit_code == 1, result.output  # the offset is a real difference, judged as one
    report = json.loads(paths["json"].read_text())
    runtime = report["settings"]["runtime"]
    assert runtime[SPEC.key] == OFFSET and runtime["ort_opt_level"] == "all"  # today's layout, the plug-in's beside
    pairs = {(p["a"], p["b"]): p for p in report["pairs"]}
    shifted = pairs[(label(), "onnxruntime")]
    np.testing.assert_allclose([o["max_abs"] for o in shifted["outputs"]], OFFSET, rtol=FLOAT32_ROUNDING)
    assert not shifted["passed"] and pairs[("onnxruntime", "oracle")]["passed"]
    assert_offset_in_outputs(paths, label())


def test_compare_runs_a_file_side_on_the_dummy(exported, tmp_path):
    folder = exported[2]
    plain = invoke("compare", "resnet18:frozen:body", folder / "model.onnx", *SMALL, "--runtime", "dummy")
    assert plain.exit_code == 0, plain.output  # at its default: ONNX Runtime's own numbers
    assert f"on {label(FIELD.default)}" in plain.output
    paths = {kind: tmp_path / f"compare.{kind}" for kind in ("json", "xml", "md")}
    shifted = invoke("compare", "resnet18:frozen:body", folder / "model.onnx", *SMALL, "--runtime", "dummy",
                     SPEC.flag, OFFSET, "--json", paths["json"], "--junit", paths["xml"], "--markdown", paths["md"])
    assert shifted.exit_code == 1, shifted.output
    report = json.loads(paths["json"].read_text())
    assert report["settings"]["runtime"][SPEC.key] == OFFSET and report["legend"]["B"].endswith(f"on {label()}")
    [pair] = [p for p in report["pairs"] if (p["a"], p["b"]) == ("A", "B")]
    np.testing.assert_allclose([o["max_abs"] for o in pair["outputs"]], OFFSET, rtol=FLOAT32_ROUNDING)
    # compare's JUnit and Markdown name the sides A and B (the legend, with the dummy's label, is in the JSON)
    junit = ElementTree.parse(paths["xml"]).getroot()
    assert [c.get("name").split(":")[0] for c in junit.iter("testcase") if c.find("failure") is not None] == ["A vs B"]
    markdown = paths["md"].read_text()
    assert any("A vs B" in line and RESULT_TEXT["failure"] in line for line in markdown.splitlines()), markdown
    assert "differ" in markdown
    wrong = invoke("compare", "resnet18:frozen:body", "resnet18:batch:body", *SMALL, "--runtime", "dummy")
    assert wrong.exit_code == 2 and "neither side" in wrong.output


def test_artifact_and_preflight_run_the_dummy_with_its_option(exported, tmp_path):
    folder = exported[2]
    assert invoke("artifact", folder).exit_code == 0  # the goldens hold; the dummy at 0 agrees with them
    checked = invoke("artifact", folder, SPEC.flag, OFFSET, "--json", tmp_path / "a.json")
    assert checked.exit_code == 1, checked.output
    failed = [c for c in json.loads((tmp_path / "a.json").read_text())["checks"] if not c["passed"]]
    assert failed and all(c["runtime"] == label() for c in failed), failed
    preflight = invoke("preflight", folder, "--runtime", "dummy", "--runs", 1, "--warmup", 0, SPEC.flag, OFFSET)
    assert preflight.exit_code == 1 and "NO-GO" in preflight.output and label() in preflight.output


def test_matrix_runs_the_dummy_with_its_option(exported, tmp_path):
    paths = {kind: tmp_path / f"matrix.{kind}" for kind in ("json", "xml", "md")}
    result = invoke("matrix", "-b", "resnet18", "-n", "frozen", *SMALL, *ONNX_ONLY, "--runtime", "onnxruntime",
                    "--runtime", "dummy", SPEC.flag, OFFSET, "--json", paths["json"], "--junit", paths["xml"],
                    "--markdown", paths["md"])
    assert result.exit_code == 1, result.output
    report = json.loads(paths["json"].read_text())
    assert report["settings"]["run"]["runtime"][SPEC.key] == OFFSET
    [cell] = report["cells"]
    pairs = {(p["a"], p["b"]): p for p in cell["pairs"]}
    shifted = pairs[(label(), "onnxruntime")]
    np.testing.assert_allclose([o["max_abs"] for o in shifted["outputs"]], OFFSET, rtol=FLOAT32_ROUNDING)
    assert_offset_in_outputs(paths, label())
