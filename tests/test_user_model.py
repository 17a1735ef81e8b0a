"""Your own model (`--model file.py:factory`): every format and runtime, the oracle or its absence, explain,
and one-line errors for factories that cannot be used. Models from tests/data/tiny.py, 1x3x32x32."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from exporter.errors import UsageError
from exporter.export import ExportOptions
from exporter.formats import default_formats
from exporter.spec import ModelSpec
from exporter.user_model import ModuleSpec, UserModelSpec, is_user_model_text, parse_model_text
from tests.data import tiny
from verify.api import RunSettings, resolve_source
from verify.cli import app
from verify.judge.compare import Tolerance

TINY = Path(tiny.__file__)
SHAPE = "1x3x32x32"
OUTPUTS = {"make": ["output0"], "make_dict": ["stride2", "stride4"], "make_tuple": ["output0", "output1"]}
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def model(factory: str) -> str:
    return f"{TINY}:{factory}"


def error_line(result) -> str:
    """The one error line (progress lines aside); no traceback."""
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def exported(module_tmp):
    """Each output kind (tensor, dict, tuple) exported to every default format: factory -> (folder, report)."""
    out = module_tmp("user-models")
    results = {}
    for factory in OUTPUTS:
        result = invoke("export", "--model", model(factory), "--shape", SHAPE, "--out", out,
                        "--json", out / f"{factory}.json")
        assert result.exit_code == 0, result.output
        results[factory] = (out / f"tiny-{factory}", json.loads((out / f"{factory}.json").read_text()), result)
    return results


@pytest.mark.parametrize("factory", list(OUTPUTS))
def test_export_agrees_for_tensor_dict_and_tuple_outputs(exported, factory):
    folder, report, result = exported[factory]
    assert report["passed"] is True and "pairs agree" in result.stdout
    runs = [run["label"] for run in report["runs"]]
    assert len(runs) == len(default_formats()) + 1  # eager plus one runtime per exported format
    assert sum(p["kind"] == "oracle" for p in report["pairs"]) == len(runs)  # the float64 oracle judged each run
    for pair in report["pairs"]:
        assert [o["name"] for o in pair["outputs"]] == OUTPUTS[factory]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["outputs"] == OUTPUTS[factory]
    assert manifest["model"]["spec"] == model(factory) and manifest["model"]["factory"] == factory
    assert manifest["input"]["shape"] == [1, 3, 32, 32]
    assert len([f for f in manifest["files"].values() if f["format"] in default_formats()]) == len(default_formats())


def test_compare_a_factory_with_its_exported_file(exported):
    folder, _, _ = exported["make_dict"]
    result = invoke("compare", model("make_dict"), folder / "model.onnx")
    assert result.exit_code == 0, result.output
    assert "stride4" in result.stdout


def test_example_input_fixes_the_shape_unless_one_is_given(tmp_path):
    result = invoke("export", "--model", model("make_with_example"), "--format", "onnx", "--onnx-exporter",
                    "torchscript", "--out", tmp_path,  # the shape the example fixes, whichever exporter
                    "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r.json").read_text())["input"]["shape"] == list(tiny.EXAMPLE_SHAPE)
    given = resolve_source(model("make_with_example"), RunSettings(shape=(1, 3, 32, 32)))
    assert given.meta.input_shape == [1, 3, 32, 32]
    assert resolve_source(model("make_with_example"), RunSettings()).meta.input_shape == list(tiny.EXAMPLE_SHAPE)


def test_explain_names_the_module_whose_weight_was_perturbed(tmp_path):
    result = invoke("explain", model("make"), model("make_perturbed"), "--shape", SHAPE,
                    "--json", tmp_path / "e.json")
    assert result.exit_code == 1, result.output
    data = json.loads((tmp_path / "e.json").read_text())
    assert data["equivalent"] is False and data["first_divergence"] == tiny.PERTURBED
    assert [(d["module"], d["kind"]) for d in data["structural_differences"]] == [(tiny.PERTURBED, "value")]


def test_without_float64_auto_refuses_and_an_explicit_tolerance_runs(tmp_path):
    refused = invoke("export", "--model", model("make_float32_only"), "--shape", SHAPE, "--out", tmp_path)
    assert refused.exit_code == 2
    line = error_line(refused)
    assert "float64 oracle is unavailable" in line and "--rtol/--atol" in line
    assert not (tmp_path / "tiny-make_float32_only").exists()  # refused before any export
    # one input: the explicit tolerance was chosen for the seeded normal input (image-like ones reach 2.9e-6 here)
    result = invoke("export", "--model", model("make_float32_only"), "--shape", SHAPE, "--format", "onnx",
                    "--onnx-exporter", "torchscript", "--rtol", "1e-5", "--atol", "1e-6", "--samples", "1",
                    "--out", tmp_path, "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert [p["kind"] for p in report["pairs"]] == ["runtime"]  # no oracle pairs
    assert any("float64 oracle is unavailable" in note for note in report["notes"])
    checked = invoke("artifact", tmp_path / "tiny-make_float32_only", "--json", tmp_path / "a.json")
    assert checked.exit_code == 0, checked.output
    skipped = [c for c in json.loads((tmp_path / "a.json").read_text())["checks"] if c["skipped"]]
    assert skipped and all("goldens float64" in c["name"] for c in skipped)


def test_unscriptable_model_says_pass_trace_and_traces(tmp_path):
    args = ["export", "--model", model("make_unscriptable"), "--shape", SHAPE, "--format", "torchscript",
            "--out", tmp_path]
    failed = invoke(*args)
    assert failed.exit_code == 2 and "pass --trace" in error_line(failed)
    traced = invoke(*args, "--trace")
    assert traced.exit_code == 0, traced.output


@pytest.mark.parametrize("text, expected", [
    ("tests/data/absent.py:make", "does not exist"),
    (f"{TINY}:no_such_factory", "has no 'no_such_factory'; it defines:"),
    (f"{TINY}:raises", "raised RuntimeError: cannot find the checkpoint"),
    (f"{TINY}:not_a_module", "returned a dict; expected an nn.Module"),
    (f"{TINY}:NOT_CALLABLE", "is a int, not a factory"),
    ("no_such_package_xyz.models:make", "No module 'no_such_package_xyz' is importable"),
])
def test_unusable_factories_are_one_line_errors(text, expected, tmp_path):
    result = invoke("export", "--model", text, "--shape", SHAPE, "--out", tmp_path)
    assert result.exit_code == 2, result.output
    assert expected in error_line(result)


def test_a_file_that_fails_to_import_is_one_line_error(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_module_anywhere_xyz\n\ndef make():\n    pass\n")
    result = invoke("export", "--model", f"{broken}:make", "--out", tmp_path)
    assert result.exit_code == 2
    assert "Importing" in (line := error_line(result)) and "not_a_module_anywhere_xyz" in line


def test_texts_dispatch_registered_backbones_first(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "resnet18.py").write_text("def frozen():\n    raise AssertionError('never imported')\n")
    assert not is_user_model_text("resnet18:frozen")  # a registered backbone wins over a module of its name
    assert isinstance(parse_model_text("resnet18:frozen"), ModelSpec)
    assert not is_user_model_text("resnet50:frozen:body") and not is_user_model_text("model.onnx")
    assert not is_user_model_text("tiny.py:1st")
    assert is_user_model_text("tests/data/tiny.py:make") and is_user_model_text("tests.data.tiny:make")
    with pytest.raises(Exception, match="or, for your own model"):
        parse_model_text("resnet5:frozen")


def test_a_dotted_module_path_builds_the_same_model():
    built = resolve_source("tests.data.tiny:make_dict", RunSettings(shape=(1, 3, 32, 32))).built
    by_file = resolve_source(model("make_dict"), RunSettings(shape=(1, 3, 32, 32))).built
    assert built.output_names == ["stride2", "stride4"]
    assert built.weights.sha256 == by_file.weights.sha256  # the loader seeds the factory's RNG


def test_specs_name_safe_folders():
    spec = UserModelSpec("some dir/my model.py", "make")
    assert str(spec) == "some dir/my model.py:make" and spec.slug == "my_model-make"
    assert UserModelSpec("pkg.models", "build").slug == "pkg.models-build"
    assert ModuleSpec.of(tiny.make(), name="test_x[../a b]").slug == "test_x_.._a_b"
    for slug in (spec.slug, ModuleSpec.of(tiny.make(), name="../..").slug):
        assert "/" not in slug and not slug.startswith(".")


def test_weights_option_is_refused_for_a_factory(tmp_path):
    result = invoke("export", "--model", model("make"), "--weights", "imagenet", "--out", tmp_path)
    assert result.exit_code == 2 and "brings its own weights" in error_line(result)


def test_explicit_tolerance_object_is_used_without_float64(tmp_path):
    """The library path: verify_export on a user spec with an explicit tolerance, no float64."""
    from verify.api import verify_export

    report = verify_export(UserModelSpec.parse(model("make_float32_only")),
                           RunSettings(shape=(1, 3, 32, 32), tolerance=Tolerance.from_options(rtol=1e-5, atol=1e-6)),
                           out=tmp_path, export=ExportOptions(formats=("torchscript",)))
    assert report.passed and report.floors == {}


def test_matrix_takes_user_models_beside_backbones():
    """`verify matrix --model` adds one row per model; with no --backbone, only the models run."""
    from verify.matrix import MatrixRequest

    both = MatrixRequest.create(["resnet18"], ["frozen"], models=[model("make")]).cells()
    assert [str(c.spec) for c in both] == ["resnet18:frozen:body", model("make")]
    assert [str(c.spec) for c in MatrixRequest.create(models=[model("make")]).cells()] == [model("make")]
    with pytest.raises(UsageError, match="does not exist"):
        MatrixRequest.create(models=[f"{TINY.parent / 'missing.py'}:make"])


def test_matrix_runs_user_models_and_never_caches_their_results(tmp_path):
    """Every cell of a user model agrees, named by its outputs; its result is computed every time (the
    user's code may change under the same name), never read back from the cache."""
    args = ["matrix", "--model", model("make"), "--model", model("make_dict"), "--shape", SHAPE,
            "--format", "torchscript", "--format", "onnx", "--onnx-exporter", "torchscript",
            "--cache-dir", tmp_path / "cache"]
    for name, jobs in (("first", "2"), ("again", "1")):  # in worker processes too: they import the user's code
        result = invoke(*args, "--jobs", jobs, "--json", tmp_path / f"{name}.json")
        assert result.exit_code == 0, result.output
        cells = json.loads((tmp_path / f"{name}.json").read_text())["cells"]
        assert [c["spec"] for c in cells] == [model("make"), model("make_dict")]
        assert [c["verdict"] for c in cells] == ["agree", "agree"]
        assert [{o["name"] for p in c["pairs"] for o in p["outputs"]} for c in cells] == \
            [set(OUTPUTS["make"]), set(OUTPUTS["make_dict"])]
        assert {c["cache"]["result"] for c in cells} == {"off"}


EXTRA_STATE_MODEL = """
import torch
from torch import nn


class WithConfig(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.config = {"mode": "fast", "steps": 3}

    def get_extra_state(self):
        return self.config

    def set_extra_state(self, state):
        self.config = dict(state)

    def forward(self, x):
        return self.conv(x)


def make():
    return WithConfig()
"""


def test_a_model_with_extra_state_that_is_not_a_tensor_is_verified(tmp_path):
    """Before: `get_extra_state` returning a dict put a non-tensor in the state dict, and the export ended in
    "AttributeError ... raised by your model's code" (found by hunt 10c)."""
    source = tmp_path / "config_model.py"
    source.write_text(EXTRA_STATE_MODEL)
    result = CliRunner().invoke(app, ["export", "--model", f"{source}:make", "--shape", "1x3x8x8", "--format",
                                      "torchscript", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "agree" in result.output
