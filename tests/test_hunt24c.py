"""Hunt 24c: `verify explain`, `--isolate` and `reduce`, and the stored results of users' models, held to hunt 23a's
call check (exporter/user_model.py `watch_float64`, verify/judge/trust.py `function_problems`). Before: explain called
two models 0.1 % apart in float32 "equivalent ... rounding" (exit 0) where both multiply by 1.0005 only in float64, the
isolation of a file 0.1 % off named no layer against a model whose layer multiplies by 1.001 only in float64 (`reduce`:
"nothing to reduce", exit 0), and a matrix report whose user cell had its `float64_calls` record cut merged as agree."""

from __future__ import annotations

import json

import pytest

from tests.helpers import invoke
from verify.explain.equivalence import EXPLAIN_OTHER_FUNCTION, NotJudged
from verify.judge.trust import UNRECORDED_CALLS
from verify.matrix.result import REPORT_KEY_ENV, report_mac

SHAPE = "1x3x32x32"
MODELS = '''
import torch
from torch import nn


class Scale(nn.Module):
    def __init__(self, k, k64):
        super().__init__()
        self.k, self.k64 = k, k64

    def forward(self, x):
        return x * (self.k64 if x.dtype == torch.float64 else self.k)


class Conv(nn.Module):
    def __init__(self, k=1.0, k64=1.0):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.scale = Scale(k, k64)

    def forward(self, x):
        return self.scale(self.conv(x))


def make():
    return Conv()


def branch():  # hunt 22b's float64-only factor
    return Conv(1.0, 1.0005)


def twin():  # branch's float64 function, and 0.1 % off it in float32
    return Conv(1.001, 1.0005)


def inner():  # a layer that is x1.001 in float64 only
    return Conv(1.0, 1.001)


def inner_file():  # what a file 0.1 % off `inner` computes, in both precisions
    return Conv(1.001, 1.001)


class Float32Only(nn.Module):
    """What a saved program may hold: `make`'s conv, 0.05 % off in its float32 run only."""

    def __init__(self, off: float = 1.0005):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.off = off

    def forward(self, x):
        y = self.conv(x)
        if x.dtype == torch.float32:
            y = y * self.off
        return y
'''


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    source = tmp_path_factory.mktemp("hunt24c") / "models.py"
    source.write_text(MODELS)
    return source


def test_explain_refuses_a_model_whose_float64_oracle_is_another_function(models):
    """Before: `verify explain branch twin` said "equivalent: A and B compute the same function (float64 outputs agree
    to 0e+00 relative); their float32 difference is rounding, 2.0x", exit 0, for two models 0.1 % apart in float32:
    both multiply by 1.0005 in float64 only, and explain's equivalence rests on the float64 runs."""
    result = invoke("explain", f"{models}:branch", f"{models}:twin", "--shape", SHAPE)
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "branch's float64 oracle computes another function than its float32 run" in text, text
    assert "Tensor.mul(tensor, 1.0005) in float64, Tensor.mul(tensor, 1.0) in float32" in text
    assert "equivalent" not in text


def test_explain_still_judges_a_model_that_computes_one_function(models):
    result = invoke("explain", f"{models}:make", f"{models}:make", "--shape", SHAPE)
    assert result.exit_code == 0, result.output
    assert "equivalent: A and B compute the same function" in result.output


def test_isolation_refuses_a_reference_whose_layer_is_another_function_in_float64(models):
    """Before: the isolation of `inner_file` (x1.001, 0.1 % off `inner` in float32) against `inner`, whose layer is
    x1.001 in float64 only, re-ran every layer on that float64 reference and named none (passed; `verify reduce` of
    such a file said "nothing to reduce", exit 0). The reference's own run is under the tool's hooks, which the watch
    does not hold: it is now run once unhooked and held to its float32 calls (load_pair, as `reduce` loads)."""
    from verify.api import RunSettings
    from verify.explain.isolate import isolate_report

    settings = RunSettings(shape=(1, 3, 32, 32))
    with pytest.raises(NotJudged) as refused:
        isolate_report(f"{models}:inner", f"{models}:inner_file", settings, isolate=False)
    assert str(refused.value).endswith(EXPLAIN_OTHER_FUNCTION)
    assert "inner's float64 oracle computes another function" in str(refused.value)
    found = isolate_report(f"{models}:make", f"{models}:inner_file", settings, isolate=False)
    assert [layer.module for layer in found.layers if layer.ratio > found.factor] == ["scale"], found.to_dict()


def load(models):
    import importlib.util

    spec = importlib.util.spec_from_file_location("hunt24c_models", models)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("off", "code"), [(1.0005, 1), (1.0, 0)])
def test_explain_refuses_a_saved_program_whose_float32_run_is_another_function(models, tmp_path, off, code):
    """Before: `verify explain make file.pt` of a TorchScript file that multiplies by 1.0005 in float32 only said
    "equivalent ... their float32 difference is rounding, 1.0x" (exit 0): the file's "floor" was its own 0.05 % (3,200x
    the model's, under the floor bound), and no call check holds a file. Now floors of one float64 function must agree
    within guard 3's FLOOR_AGREEMENT; the same file without the factor is still equivalent."""
    import torch

    from verify.judge.file_floor import FLOOR_AGREEMENT

    file = tmp_path / "model.pt"
    torch.jit.script(load(models).Float32Only(off).eval()).save(str(file))
    result = invoke("explain", f"{models}:make", file, "--shape", SHAPE)
    assert result.exit_code == code, result.output
    text = " ".join(result.output.split())
    if code:
        assert "model.pt)'s float32 floor of output0 is" in text and f"over the {FLOOR_AGREEMENT:g}x" in text
    else:
        assert "equivalent: A and B compute the same function" in text


@pytest.fixture(scope="module")
def matrix_report(models, tmp_path_factory):
    """One matrix of a model that computes one function and of one with a float64-only factor, TorchScript only."""
    folder = tmp_path_factory.mktemp("hunt24c-matrix")
    report, cache = folder / "matrix.json", folder / "cache"
    result = invoke("matrix", "--model", f"{models}:make", "--model", f"{models}:branch", "--shape", SHAPE,
                    "--format", "torchscript", "--cache-dir", cache, "--json", report)
    return result, json.loads(report.read_text()), cache


def cut(data: dict, spec: str, change) -> dict:
    """The report with `spec`'s cell passing on its face: its problems gone, its call record `change`d."""
    data = json.loads(json.dumps(data))
    for cell in data["cells"]:
        if cell["spec"].endswith(spec):
            cell.update(problems=[], verdict="agree", passed=True)
            change(cell["trust"])
    return data


def merged(tmp_path, data: dict, name: str = "shard.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return invoke("matrix", "merge", path)


def test_the_matrix_refuses_a_user_model_whose_oracle_is_another_function(matrix_report):
    result, data, _ = matrix_report
    assert result.exit_code == 1, result.output
    verdicts = {cell["spec"].rsplit(":", 1)[1]: cell["verdict"] for cell in data["cells"]}
    assert verdicts == {"make": "agree", "branch": "disagree"}, verdicts
    records = {cell["spec"].rsplit(":", 1)[1]: cell["trust"]["float64_calls"] for cell in data["cells"]}
    assert records["make"][0]["differs"] is None and "1.0005" in records["branch"][0]["differs"]


@pytest.mark.parametrize(("spec", "change"), [
    (":branch", lambda trust: trust.pop("float64_calls")),
    (":branch", lambda trust: trust.update(float64_calls=[])),
    (":make", lambda trust: trust.pop("float64_calls")),
])
def test_a_merged_user_cell_without_its_call_record_is_refused(matrix_report, tmp_path, spec, change):
    """Before: `verify matrix merge` of the report with the branch cell's problems and `float64_calls` cut (no hash to
    recompute without the report key) exited 0, "2 of 2 cells agree": an absent record read as nothing to refuse."""
    result = merged(tmp_path, cut(matrix_report[1], spec, change))
    assert result.exit_code == 1, result.output
    assert UNRECORDED_CALLS[:60] in " ".join(result.output.split())


PATCHED = '''
from models import branch


def make():  # code that runs in the worker can patch the tool there: the cell then records no call check
    import verify.judge.trust as trust
    trust.function_record = lambda *built: []
    return branch()
'''


def test_a_user_cell_whose_worker_recorded_no_call_check_is_refused(models):
    """Before: this model (hunt 22b's float64-only factor, and a factory that makes the worker record no call check)
    was a matrix cell that agreed, exit 0: the matrix re-judges the worker's numbers, and no record read as no
    problem."""
    patched = models.parent / "patched.py"
    patched.write_text(PATCHED)
    result = invoke("matrix", "--model", f"{patched}:make", "--shape", SHAPE, "--format", "torchscript", "--no-cache")
    assert result.exit_code == 1, result.output
    assert UNRECORDED_CALLS[:60] in " ".join(result.output.split())


def test_an_edited_call_record_is_caught_by_the_report_key(matrix_report, tmp_path, monkeypatch):
    """A record whose difference is edited away is consistent: only the key catches it (README "Signed reports")."""
    monkeypatch.setenv(REPORT_KEY_ENV, "hunt24c")
    signed = {**matrix_report[1], "hmac": report_mac(matrix_report[1], "hunt24c")}
    result = merged(tmp_path, signed)
    assert result.exit_code == 1 and "HMAC" not in result.output, result.output  # authentic: branch refused
    assert "float64 oracle computes another function" in " ".join(result.output.split())
    edited = cut(signed, ":branch", lambda trust: trust["float64_calls"][0].update(differs=None))
    result = merged(tmp_path, edited)
    assert result.exit_code == 1 and "carries no valid HMAC" in result.output, result.output


def test_a_user_models_cell_result_is_never_taken_from_the_cache(matrix_report):
    """The cell cache holds no result of a user's model (verify/pipeline/stages.py request_content: its code may change
    under the same name), so no stored record can stand in for the call check: each run watches the oracle again."""
    from verify.pipeline.stages import OFF

    assert [cell["cache"]["result"] for cell in matrix_report[1]["cells"]] == [OFF, OFF]
    assert not list((matrix_report[2] / "v1" / "entries" / "result").rglob("*.json"))


def test_the_pytest_plugin_refuses_a_float64_only_factor(models, tmp_path):
    import torch

    from verify.pytest_plugin import assert_exports_agree

    module = load(models)
    example = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with pytest.raises(AssertionError) as failed:
        assert_exports_agree(module.branch(), example, out=tmp_path, formats=["torchscript"])
    assert "float64 oracle computes another function" in " ".join(str(failed.value).split())


# ---------------------------------------------------------------- with hunt 24c's patch to verify/api.py

def test_export_refuses_a_worker_report_without_its_call_check(models, tmp_path):
    """Before: `verify export --model patched.py:make` exited 0 and published its folder: the parent re-judges the
    worker's numbers (verify/api.py `rejudged`), and a report with no call check read as nothing to refuse."""
    patched = models.parent / "patched.py"
    patched.write_text(PATCHED)
    result = invoke("export", "--model", f"{patched}:make", "--shape", SHAPE, "--format", "torchscript", "--out",
                    tmp_path / "out", "--no-layers", "--static")
    assert result.exit_code == 1, result.output
    assert UNRECORDED_CALLS[:60] in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()


def test_compare_refuses_a_saved_program_whose_float32_run_is_another_function(models, tmp_path):
    """Before: `verify compare make file.pt` of a TorchScript file 0.05 % off in float32 only exited 0, "all 3 pairs
    agree": the file's own floor (its float32 run against its float64 one) lifted the A-vs-B yardstick."""
    import torch

    file = tmp_path / "model.pt"
    torch.jit.script(load(models).Float32Only().eval()).save(str(file))
    result = invoke("compare", f"{models}:make", file, "--shape", SHAPE)
    assert result.exit_code == 1, result.output
    assert "model.pt in B measures a float32 floor of output0" in " ".join(result.output.split()), result.output
