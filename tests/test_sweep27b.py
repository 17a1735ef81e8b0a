"""Sweep 27b: models users bring that no run had tried (segmentation heads, odd outputs, parametrizations,
torch.compile, fake quantization). Each defect found has a test here that fails without its fix; tiny models only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from exporter.errors import ArtifactError, UsageError


class _Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.c2(torch.relu(self.c1(x)))


def test_scripted_parametrization_failure_says_trace(tmp_path):
    """A weight_norm (torch.nn.utils.parametrizations) model scripts without an error, and its file raises
    torch.jit.Error when run: the worker reported it as "Error (...) raised by your model's code", with no way out."""
    from torch.nn.utils.parametrizations import weight_norm

    from exporter.artifacts import Artifact, ArtifactMeta
    from verify.runtimes.torchscript import TorchScriptRuntime

    model = _Small().eval()
    model.c1 = weight_norm(model.c1)
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    meta = ArtifactMeta(input_shape=[1, 3, 32, 32], output_names=["output0"], exporter="torch.jit.script")
    runtime = TorchScriptRuntime().load(Artifact("torchscript", meta, path=path))
    with pytest.raises(ArtifactError) as caught:
        runtime.run({meta.input_name: np.zeros((1, 3, 32, 32), np.float32)})
    said = str(caught.value)
    assert "Parametrization is not working with scripting" in said and said.endswith("export with --trace")


MODEL = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.c2(torch.relu(self.c1(x)))


def whole():
    return torch.compile(Net().eval())


def part():
    net = Net().eval()
    net.c2 = torch.compile(net.c2)
    return net


def in_place():
    net = Net().eval()
    net.c2.compile()
    return net
'''


@pytest.mark.parametrize(("factory", "said"), [("whole", "the model is compiled by torch.compile(m)"),
                                                ("part", "its module 'c2' is compiled by torch.compile(m)"),
                                                ("in_place", "its module 'c2' is compiled by m.compile()")])
def test_compiled_model_refused_before_it_runs(tmp_path, factory, said):
    """A torch.compile'd model (or part) failed as "the float64 oracle is unavailable ...: .numpy() is not supported
    for tensor subclasses ... pass --rtol/--atol", then with those as "torch.jit.script failed ... pass --trace"."""
    from exporter.user_model import UserModelSpec, build_user_model

    path = tmp_path / "compiled_models.py"
    path.write_text(MODEL)
    with pytest.raises(UsageError) as caught:
        build_user_model(UserModelSpec.parse(f"{path}:{factory}"), 0, (1, 3, 32, 32))
    assert said in str(caught.value) and "compile where you run it" in str(caught.value)


@pytest.mark.parametrize("dtype", [np.int64, np.bool_])
def test_discrete_output_is_judged_exactly(dtype):
    """An argmax or a mask compared on a float floor: one element flipped in the floor's own float32 run made the floor
    a whole index (1), and 5x that passed an argmax off by up to 5 everywhere, a mask inverted everywhere."""
    from verify.judge.compare import Tolerance, compare_arrays

    desired = (np.arange(64).reshape(1, 8, 8) % 3).astype(dtype)
    wrong = (~desired) if dtype is np.bool_ else desired + 3
    result = compare_arrays("output0", wrong, desired, Tolerance(), 1.0)
    assert not result.passed and result.allowed == 0.0
    assert f"64 of 64 elements of this {np.dtype(dtype)} output differ, judged exactly" in result.reason
    assert compare_arrays("output0", desired.copy(), desired, Tolerance(), 1.0).passed


def test_discrete_failure_note_gives_its_reason():
    """The note under a failed discrete pair said "this is rounding, and the tolerance asks for more than float32 can
    give (needs factor>=1)": its reason is what a user can act on."""
    from verify.judge.compare import PairResult, Tolerance, compare_arrays
    from verify.judge.notes import explain_pair
    from verify.report import Report

    desired = np.zeros((1, 8, 8), np.int64)
    wrong = desired.copy()
    wrong[0, 0, 0] = 1
    pair = PairResult("onnxruntime", "eager", [compare_arrays("output0", wrong, desired, Tolerance(), 1.0)])
    report = Report("export", {"tolerance": Tolerance().to_dict(), "tolerance_text": "auto"}, {})
    said = explain_pair(pair, report)
    assert "1 of 64 elements of this int64 output differ" in said and "return those scores" in said
    assert "this is rounding" not in said


class _Raised(RuntimeError):
    pass


@pytest.mark.parametrize("dynamic", [True, False])
def test_export_failure_keeps_torch_reason_place_and_way_out(monkeypatch, dynamic):
    """torch.export's reason was cut at its first line ("... cannot be solved using", alexnet at 64 px), with nothing
    to do; a data-dependent branch (torch's FakeQuantize) gave neither the place nor the formats that export it."""
    from exporter.errors import ExportError
    from exporter.formats.program import export_program

    shape = NotImplementedError("\nThe inequality, Eq((((x/8)//4)) - 2, 0), cannot be solved using\n"
                                "solve_univariate_inequality.")
    value = _Raised("Could not guard on data-dependent expression Eq(u0, 1) (unhinted: Eq(u0, 1)).\n\nconsider ...\n"
                    "The following call raised this error:\n  File \"/home/me/net.py\", line 168, in forward\n"
                    "    return self.q(x)\n")
    said = {}
    for name, exc in (("shape", shape), ("value", value)):
        def fail(*args, exc=exc, **kwargs):
            raise exc
        monkeypatch.setattr(torch.export, "export", fail)
        with pytest.raises(ExportError) as caught:
            export_program(_Small().eval(), torch.zeros(1, 3, 32, 32), dynamic, "net.py:make")
        said[name] = str(caught.value)
    assert "cannot be solved using solve_univariate_inequality." in said["shape"]
    assert ("export with --static" in said["shape"]) is dynamic
    assert "(raised at net.py:168)" in said["value"] and "--format torchscript" in said["value"]
    assert "--static" not in said["value"]  # no setting of the trace makes a branch on a value traceable


def test_floor_of_a_scalar_output():
    """A model returning a 0-d tensor (x.mean()), exported --static, ended in "unexpected TypeError: return arrays must
    be of ArrayType ... please report it": the difference of two 0-d arrays is a numpy scalar, not an array."""
    from verify.judge.measure import measure_floors

    floors = measure_floors({"output0": np.array(0.25, np.float32)}, {"output0": np.array(0.25 + 1e-9)})
    assert floors["output0"].value > 0


def test_a_flipped_index_is_no_floor():
    """One argmax element flipped between the float32 and float64 runs made output0's floor 1 (a whole index), refused
    as "not a noise floor; is the model random or in train mode?": the flip is judged in the pairs, exactly."""
    from verify.judge.measure import measure_floors

    fp64 = np.zeros((1, 8, 8), np.int64)
    run = fp64.copy()
    run[0, 3, 3] = 1
    floor = measure_floors({"output0": run}, {"output0": fp64})["output0"]
    assert floor.value < 1
