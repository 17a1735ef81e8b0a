"""Guard 3 attacked (hunt 13a): an exported file whose float64 run alone moves vouches for a floor it does not have."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from exporter.formats import open_artifact
from tests.helpers import BOUND_CHANNELS, BOUND_CONV_K, BOUND_SHAPE, load_source
from tests.helpers import EAGER_NOISE_MODELS as NOISY
from verify.cli.app import app
from verify.inputs import seeded_inputs
from verify.judge.compare import AUTO_FACTOR
from verify.judge.file_floor import (
    FLOOR_AGREEMENT,
    NO_FILE_FLOOR,
    UNRECORDED,
    agreement_problems,
    measure_file_floors,
    unrecorded_problems,
    vouched_floors,
)
from verify.judge.noise_floor import NoiseFloor
from verify.judge.precision import EPS
from verify.judge.trust import evidence_problems, rounding_bound

runner = CliRunner()
NOISE = 0.1 * rounding_bound(BOUND_CONV_K)
"""The eager-only noise of tests/test_file_floor.py: under the floor bound, ~70x this conv's real float32 floor."""
BUG = NOISE
"""The export's own error (relative): within AUTO_FACTOR x the noisy floor, far over the conv's real one."""
INFLATED = """
import torch
from torch import nn


class Inflated(nn.Module):
    \"\"\"Eager: noise seeded by the input in the dtypes named. Its export: off by BUG, plus a term that is 0 in
    float32 and ~NOISE in float64, with no cast in the graph (1 + 2**-25 rounds to 1 in float32 only).\"\"\"

    def __init__(self, dtypes: tuple, inflate: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d({channels}, {channels}, 3, padding=1)
        self.dtypes, self.inflate = dtypes, inflate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if torch.compiler.is_exporting() or torch.jit.is_scripting():
            only64 = ((y * 0 + 1) + 2.0 ** -25) - 1
            return y * (1 + {bug}) + self.inflate * 2.0 ** 25 * only64 * y.abs().amax() * torch.sin(y * 1e3)
        if str(y.dtype) not in self.dtypes:
            return y
        g = torch.Generator().manual_seed(int(abs(x.sum().item()) * 1e6) % (2 ** 31))
        return y + {noise} * y.abs().max() * torch.randn(y.shape, generator=g, dtype=y.dtype)


def float32_only():
    return Inflated(("torch.float32",), {noise})


def float64_only():
    return Inflated(("torch.float64",), {noise})
"""


def write_model(tmp_path):
    source = tmp_path / "inflated.py"
    source.write_text(INFLATED.format(channels=BOUND_CHANNELS, noise=repr(NOISE), bug=repr(BUG)))
    return source


def export(tmp_path, factory: str, *extra: str):
    source = write_model(tmp_path)
    report = tmp_path / f"{factory}.json"
    result = runner.invoke(app, ["export", "--model", f"{source}:{factory}", "--shape", BOUND_SHAPE, "--format", "pt2",
                                 "--out", str(tmp_path / factory), "--json", str(report), *extra])
    return result, json.loads(report.read_text()) if report.exists() else None


def test_vouched_floors_take_off_what_the_two_float64_runs_differ_by():
    """Per channel, never below one float32 ulp of the output's scale; an output the model lacks is kept."""
    file64 = np.ones((1, 2, 4, 4))
    model64 = file64.copy()
    model64[:, 1] += 2e-7  # channel 1's float64 runs 2e-7 apart
    floors = {"out": NoiseFloor(4e-7, np.asarray([4e-7, 4e-7]), bulk=np.asarray([2e-7, 4e-7]),
                                bulk_limits=np.asarray([1.0, 1.0])),
              "only_file": NoiseFloor(1e-6)}
    vouched = vouched_floors(floors, {**{"out": file64}, "only_file": np.ones(3)}, {"out": model64})
    assert vouched["only_file"] is floors["only_file"]
    np.testing.assert_allclose(vouched["out"].channels, [4e-7, 2e-7])
    assert vouched["out"].value == pytest.approx(4e-7) and vouched["out"].bulk[1] <= vouched["out"].channels[1]
    model64[:, 1] += 1.0  # far apart: the file vouches for no more than an ulp there
    assert vouched_floors(floors, {"out": file64}, {"out": model64})["out"].channels[1] == EPS["fp32"]
    assert vouched_floors(floors, {"out": file64}, {"out": file64.copy()})["out"] is floors["out"]


@pytest.mark.parametrize("factory", ["float32_only", "float64_only"])
def test_a_file_whose_float64_run_alone_moves_vouches_for_no_floor(tmp_path, factory):
    """Before: the file's own floor (float32 run against its float64 run) held its float64-only term, so the
    noisy model's floor was within FLOOR_AGREEMENT of it (1.0-1.2x) and `verify export` exited 0 with an export
    off by BUG (5e-6 relative, 60x the conv's real floor). Vouched by the model's float64 run: ~100x."""
    result, _ = export(tmp_path, factory, "--rtol", "1e-3", "--atol", "1e-3")  # the file, written without guard 3
    assert result.exit_code == 0, result.output
    path = next((tmp_path / factory).rglob("model.pt2"))
    inputs = seeded_inputs(tuple(int(v) for v in BOUND_SHAPE.split("x")), 0, 2)
    artifact = open_artifact(path)
    feeds = [{artifact.meta.input_name: item.array} for item in inputs]
    model = getattr(load_source(write_model(tmp_path), f"inflated_{factory}"), factory)().double()
    with torch.inference_mode():
        model64 = [{"output0": model(torch.from_numpy(item.array).double()).numpy()} for item in inputs]
    eager = getattr(load_source(write_model(tmp_path), f"inflated32_{factory}"), factory)()
    with torch.inference_mode():
        eager32 = [{"output0": eager(torch.from_numpy(item.array)).numpy()} for item in inputs]
    from verify.judge.measure import measure_floors

    ours = [measure_floors(run, ref) for run, ref in zip(eager32, model64)]
    plain = measure_file_floors("exported", artifact, feeds, None, "model.pt2 in exported")
    assert agreement_problems(ours, [plain]) == []  # the hole, as guard 3 measured it before
    vouched = measure_file_floors("exported", artifact, feeds, None, "model.pt2 in exported", model64)
    lines = agreement_problems(ours, [vouched])
    assert len(lines) == 1 and "measures on itself" in lines[0], lines
    assert float(lines[0].split("is ")[1].split("x the one")[0]) > AUTO_FACTOR * FLOOR_AGREEMENT


@pytest.mark.parametrize("factory", ["float32_only", "float64_only"])
def test_export_refuses_a_file_whose_float64_run_alone_moves(tmp_path, factory):
    """Before: exit 0, 'all 3 pairs agree' (exported vs eager 1.2x / 0.5x the floor), the export off by BUG."""
    result, report = export(tmp_path, factory)
    assert result.exit_code == 1, result.output
    assert any("measures on itself" in p for p in report["problems"]), report["problems"]


def test_compare_refuses_a_file_whose_float64_run_alone_moves(tmp_path):
    """Before: `verify compare inflated.py:float32_only its/model.pt2` exited 0 (the file's floor vouched)."""
    result, _ = export(tmp_path, "float32_only", "--rtol", "1e-3", "--atol", "1e-3")
    assert result.exit_code == 0, result.output
    path = next((tmp_path / "float32_only").rglob("model.pt2"))
    result = runner.invoke(app, ["compare", f"{write_model(tmp_path)}:float32_only", str(path), "--shape", BOUND_SHAPE])
    assert result.exit_code == 1, result.output
    assert "measures on itself" in result.output


def test_the_note_of_an_aoti_only_export_names_its_reason():
    """Before: `verify export --model noisy.py:make --format aoti` exited 0 with a note blaming ONNX Runtime's missing
    float64 convolutions, though no ONNX file was there (an AOTInductor package is compiled for float32)."""
    assert "AOTInductor" in NO_FILE_FLOOR and "ONNX Runtime" in NO_FILE_FLOOR


def noisy_matrix(tmp_path):
    """A matrix of the eager-only noisy model of tests/test_file_floor.py on eager and exported: guard 3 refuses it."""
    source = tmp_path / "noisy.py"
    source.write_text(NOISY.format(channels=BOUND_CHANNELS, noise=repr(NOISE)))
    path = tmp_path / "matrix.json"
    result = runner.invoke(app, ["matrix", "--model", f"{source}:make", "--runtime", "eager", "--runtime", "exported",
                                 "--shape", BOUND_SHAPE, "--no-cache", "--json", str(path)])
    assert result.exit_code == 1, result.output
    return json.loads(path.read_text())


def forged(data):
    """The stored result with guard 3's problems, verdict and file floors cut, as an edit would leave it."""
    for cell in data["cells"]:
        cell.update(problems=[], verdict="agree", passed=True)
        del cell["trust"]["files"]
    return data


@pytest.fixture(scope="module")
def matrix_result(tmp_path_factory):
    return noisy_matrix(tmp_path_factory.mktemp("matrix"))


def test_unrecorded_file_floors_are_a_problem_where_guard_3_ran(matrix_result):
    cell = matrix_result["cells"][0]
    labels = [run["label"] for run in cell["runs"]]
    assert unrecorded_problems(cell["trust"], True, labels) == []  # recorded: re-derived by evidence_problems
    trust = forged(json.loads(json.dumps(matrix_result)))["cells"][0]["trust"]
    assert unrecorded_problems(trust, True, labels) == [UNRECORDED]
    assert unrecorded_problems(trust, True, ["exported(cuda, no-tf32)"]) == [UNRECORDED]
    assert unrecorded_problems(trust, False, labels) == []  # a registered backbone records none
    assert unrecorded_problems(trust, True, ["eager", "onnxruntime", "aoti"]) == []  # nothing ran in float64
    assert unrecorded_problems({**trust, "mode": "rtol"}, True, labels) == []


def test_a_stored_matrix_result_with_its_file_floors_cut_is_not_agree(tmp_path, matrix_result):
    """Before: `verify matrix merge` of the noisy model's result with "files", problems and verdict cut: exit 0,
    '1 of 1 cells agree' (evidence_problems re-derives guard 3 only where "files" is there)."""
    path = tmp_path / "forged.json"
    path.write_text(json.dumps(forged(json.loads(json.dumps(matrix_result)))))
    result = runner.invoke(app, ["matrix", "merge", str(path)])
    assert result.exit_code == 1, result.output
    assert "No file floors are recorded" in result.output


def test_a_stored_result_whose_evidence_names_another_tolerance_is_not_agree(tmp_path, matrix_result):
    """Before (review of hunt 13a): the problems emptied and the evidence's "mode" set to "rtol" merged as '1 of 1
    cells agree', exit 0: guards 2 and 3 read the mode from the record and skipped, while the matrix judged the
    pairs under its own auto tolerance."""
    data = json.loads(json.dumps(matrix_result))
    for cell in data["cells"]:
        cell["problems"], cell["verdict"], cell["trust"]["mode"] = [], "agree", "rtol"
    path = tmp_path / "forged.json"
    path.write_text(json.dumps(data))
    result = runner.invoke(app, ["matrix", "merge", str(path)])
    assert result.exit_code == 1, result.output
    assert "recorded under the 'rtol' tolerance" in " ".join(result.output.split())


def test_a_record_whose_file_floors_share_no_output_with_the_model_is_refused(matrix_result):
    """Before: the noisy model's stored record, its file's output renamed ("output0" -> "renamed"), re-derived no
    problem: guard 3 compared only the outputs both name, none here (evidence_problems == [])."""
    trust = json.loads(json.dumps(matrix_result["cells"][0]["trust"]))
    for inputs in trust["files"][1]["inputs"]:
        inputs["renamed"] = inputs.pop("output0")
    problems = evidence_problems(trust)
    assert len(problems) == 1 and "none of the model's outputs (output0)" in problems[0], problems


def test_compare_of_a_noisy_user_model_with_an_onnx_file_is_held_to_a_witness(tmp_path):
    """Before: `verify compare noisy.py:make clean/model.onnx` exited 0 ('all 2 pairs agree') with no word that guard
    3 could not run; then it noted the floor was not checked; since floor 34 the model is held to a private witness
    of itself, whose floor its eager-only noise exceeds: not judged."""
    source = tmp_path / "noisy.py"
    source.write_text(NOISY.format(channels=BOUND_CHANNELS, noise=repr(NOISE)))
    result = runner.invoke(app, ["export", "--model", f"{source}:clean", "--shape", BOUND_SHAPE, "--format", "onnx",
                                 "--out", str(tmp_path / "clean")])
    assert result.exit_code == 0, result.output
    path = next((tmp_path / "clean").rglob("model.onnx"))
    report = tmp_path / "compare.json"
    result = runner.invoke(app, ["compare", f"{source}:make", str(path), "--shape", BOUND_SHAPE, "--json", str(report)])
    assert result.exit_code == 1, result.output
    problems = json.loads(report.read_text())["problems"]
    assert any("witness of the model" in problem for problem in problems), problems


def test_a_correct_model_computing_in_float32_inside_passes_where_its_torchscript_file_vouches(tmp_path):
    """Before: exit 1, 'exported could not run in float64' (torch.export bakes `.to(y.dtype)` as float32 and asserts
    it), though model.pt ran in float64 and its floor agreed with the model's: a correct export refused."""
    source = tmp_path / "internal.py"
    source.write_text(NOISY.format(channels=BOUND_CHANNELS, noise=repr(NOISE)))
    report = tmp_path / "report.json"
    result = runner.invoke(app, ["export", "--model", f"{source}:softmax_in_float32", "--shape", BOUND_SHAPE,
                                 "--format", "pt2", "--format", "torchscript", "--out", str(tmp_path / "out"),
                                 "--json", str(report)])
    assert result.exit_code == 0, result.output
    assert [f["label"] for f in json.loads(report.read_text())["trust"]["files"]] == ["the model", "model.pt in "
                                                                                      "torchscript"]
