"""Hunt 10b: `verify explain`, `--isolate`, `verify reduce` and `verify compare` on users' own models and files.

Each test failed before its fix; its docstring says what happened then (measured)."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from rich.console import Console

from tests.helpers import invoke, scaled_onnx_weight
from verify.explain.localize import EQUIVALENCE_RTOL
from verify.judge.compare import AUTO_FACTOR
from verify.judge.layers import Isolation, LayerError, culprit_note
from verify.render.layers import render_isolation

SHAPE = "1x3x16x16"

MODELS = '''
import torch
from torch import nn


class Masked(nn.Module):
    """A conv whose output holds -1e9 where the input's first channel is above 1.5 (a mask, as attention does)."""

    def __init__(self, shift: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.shift = shift

    def forward(self, x):
        return (self.conv(x) + self.shift).masked_fill(x[:, :1] > 1.5, -1e9)


class LoudQuiet(nn.Module):
    """A conv whose channel 0 is 100x louder than the others; `edit` scales channel 5's weight by 1 + edit."""

    def __init__(self, edit: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        with torch.no_grad():
            self.conv.weight[0] *= 100
            self.conv.weight[5] *= 1 + edit

    def forward(self, x):
        return self.conv(x)


class Flags(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return {"y": y, "positive": y > 0, "argmax": y.argmax(1)}


class Two(nn.Module):
    def __init__(self, extra: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.extra = extra

    def forward(self, x):
        y = self.conv(x)
        return {"a": y, "b": y * 2} if self.extra else {"a": y}


class Shared(nn.Module):
    """`block` called twice, a functional relu (outside every module) before each call."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        y = self.stem(x)
        y = self.block(torch.relu(y))
        y = self.block(torch.relu(y))
        return self.head(y)


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.flat = nn.Flatten()
        self.fc1 = nn.Linear(48, 64)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(self.flat(x))))


class Wide(nn.Module):
    def __init__(self, mid: int) -> None:
        super().__init__()
        self.pre = nn.ReLU()
        self.stem = nn.Conv2d(3, mid, 3, padding=1)
        self.head = nn.Conv2d(mid, 8, 1)

    def forward(self, x):
        return self.head(self.stem(self.pre(x)))


class AddBias(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Parameter(torch.full((1, 8, 1, 1), 0.5))

    def forward(self, x):
        return x.add_(self.b)


class InPlace(nn.Module):
    """A hardswish and a bias added in place, as torchvision's `inplace=True` activations are."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.Hardswish(inplace=True)
        self.shift = AddBias()
        self.head = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        return self.head(self.shift(self.act(self.stem(x))))


class Float32Off(nn.Module):
    """1 % off in float32 only: its float64 run is the correct function."""

    def __init__(self, off: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.off = off

    def forward(self, x):
        y = self.conv(x)
        return y * (1 + self.off) if y.dtype == torch.float32 and self.off else y  # off 0: one function (hunt 24c)


class Overflows(nn.Module):
    """Overflows to Inf in float32 only ((y * 1e30) * 1e30 / 1e60): its float64 run is y."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return (self.conv(x) * 1e30) * 1e30 / 1e60


def overflows():
    return Overflows().eval()


def float32_off():
    return Float32Off(0.01).eval()


def float32_right():
    return Float32Off(0.0).eval()


class Add(nn.Module):
    def forward(self, a, b):
        return a + b


class TwoInputs(nn.Module):
    """A leaf module that takes two tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(3, 4, 1)
        self.add = Add()

    def forward(self, x):
        return self.add(self.c1(x), self.c2(x))


def two_inputs():
    return TwoInputs().eval()


def inplace():
    return InPlace().eval()


def mlp():
    return MLP().eval()


def wide8():
    return Wide(8).eval()


def wide6():
    return Wide(6).eval()


def masked():
    return Masked().eval()


def masked_shifted():
    return Masked(1e-2).eval()


def loud():
    return LoudQuiet().eval()


def flags():
    return Flags().eval()


def two():
    return Two(True).eval()


def one():
    return Two(False).eval()


def shared():
    return Shared().eval()
'''


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = tmp_path_factory.mktemp("hunt10b") / "models.py"
    path.write_text(textwrap.dedent(MODELS))
    return path


def explain_json(tmp_path, *args) -> tuple[int, dict, str]:
    out = tmp_path / "explain.json"
    result = invoke("explain", *map(str, args), "--json", out)
    return result.exit_code, json.loads(out.read_text()) if out.exists() else {}, result.output


# ---------------------------------------------------------------- explain: what "equivalent" rests on

def test_a_mask_value_does_not_make_a_shift_everywhere_else_equivalent(models, tmp_path):
    """Before: two models whose outputs hold -1e9 at a mask and differ by 1e-2 everywhere else were `✓ equivalent: A
    and B compute the same function (float64 outputs agree to 1e-11 relative); their float32 difference is rounding,
    0.0x the float32 noise floor`, exit 0: the difference was relative to the mask value. Now an element away from
    its group's peaks (oracle.PEAK_FACTOR) is relative to the bulk's scale."""
    code, data, output = explain_json(tmp_path, f"{models}:masked", f"{models}:masked_shifted", "--shape", SHAPE)
    assert code == 1, output
    assert not data["equivalent"] and data["float64_difference"]["output0"]["max_rel"] > EQUIVALENCE_RTOL
    code, data, output = explain_json(tmp_path, f"{models}:masked", f"{models}:masked", "--shape", SHAPE)
    assert code == 0 and data["equivalent"], output


def export_onnx(models, tmp_path, factory: str, formats=("onnx",)):
    out = tmp_path / "out"
    args = ["export", "--model", f"{models}:{factory}", "--shape", SHAPE, "--out", out]
    for fmt in formats:
        args += ["--format", fmt]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    (folder,) = out.iterdir()
    return folder


def edit_weight(path, out, name: str, channel: int, rel: float) -> None:
    scaled_onnx_weight(path, out, name, channel, rel)


QUIET_EDIT = 8e-5
"""Channel 5's weight off by this share: a few times its own channel's floor, under the loud channel's."""


def test_explain_of_a_file_judges_each_channel_on_its_own_floor(models, tmp_path):
    """Before: an ONNX file with one quiet channel's weight off by 8e-5 was `✓ equivalent within float32 rounding: 3.5x
    the noise floor`, exit 0, judged on one floor per output (the loud channel's), while `verify compare` of the same
    pair exits 1 (`output0[c=5] is 9x its channel's float32 noise floor`). Now explain takes the ratio as compare does:
    per channel, each on its own floor."""
    folder = export_onnx(models, tmp_path, "loud")
    bad = tmp_path / "bad.onnx"
    edit_weight(folder / "model.onnx", bad, "conv.weight", 5, QUIET_EDIT)
    code, data, output = explain_json(tmp_path, bad, f"{models}:loud", "--shape", SHAPE)
    per_output = data["float32_difference"]["output0"] / max(data["noise_floor"][s]["output0"] for s in "AB")
    assert per_output <= AUTO_FACTOR, data  # within one floor per output: what was judged before
    assert code == 1 and not data["equivalent"], output
    assert data["float32_ratio"]["output0"] > AUTO_FACTOR
    code, data, output = explain_json(tmp_path, folder / "model.onnx", f"{models}:loud", "--shape", SHAPE)
    assert code == 0 and data["equivalent"] and data["float32_ratio"]["output0"] <= AUTO_FACTOR, output


def test_explain_of_bool_and_integer_outputs_is_a_verdict(models, tmp_path):
    """Before: a model returning `y > 0` beside `y` ended in `error: TypeError (numpy boolean subtract, the \\`-\\`
    operator, is not supported ...) raised by your model's code before any verdict`, exit 2: explain subtracted the
    two float64 runs' bool arrays. Now every output is widened to float64 first."""
    code, data, output = explain_json(tmp_path, f"{models}:flags", f"{models}:flags", "--shape", SHAPE)
    assert code == 0 and data["equivalent"], output
    assert set(data["outputs"]) == {"y", "positive", "argmax"}


def test_explain_names_the_outputs_it_left_out(models, tmp_path):
    """Before: A with outputs a and b against B with a alone said `✓ equivalent` and showed a only: b was left out
    without a word. Now the report says `A alone has b: not compared`, and the JSON's `unshared` lists it."""
    code, data, output = explain_json(tmp_path, f"{models}:two", f"{models}:one", "--shape", SHAPE)
    assert code == 0 and "A alone has b: not compared" in output, output
    assert data["unshared"] == {"A": ["b"]}


def test_explain_refuses_a_floor_no_rounding_produces(models, tmp_path):
    """Before: A 1 % off in float32 only (its float64 run correct) against the same conv was `✓ equivalent: A and B
    compute the same function ...; their float32 difference is rounding, 1.0x the float32 noise floor`, exit 0: A's
    "floor" was its own 1 % error. `verify compare` refuses that floor (trust.floor_problems); explain now does too,
    exit 1, not judged."""
    code, data, output = explain_json(tmp_path, f"{models}:float32_off", f"{models}:float32_right", "--shape", SHAPE)
    assert code == 1 and "the most that rounding can produce" in output and "Not judged" in output, output
    # no explanation written: the report says the run failed before its verdict (review surface 28), never a pass
    assert data["passed"] is False and data["exit_code"] == 1 and "equivalent" not in data
    assert "the most that rounding can produce" in data["error"]


def test_a_float32_overflow_on_one_side_is_not_equivalent(models, tmp_path):
    """Before: A overflowing to Inf in float32 (its float64 run the same conv as B) was `✓ equivalent: A and B compute
    the same function ...; their float32 difference is rounding, nanx the float32 noise floor`, exit 0. Now it is
    `not equivalent in float32`, exit 1, saying the float64 functions agree."""
    code, data, output = explain_json(tmp_path, f"{models}:overflows", f"{models}:float32_right", "--shape", SHAPE)
    assert code == 1 and not data["equivalent"], output
    assert data["verdict"].startswith("not equivalent in float32: A and B compute the same function in float64")


# ---------------------------------------------------------------- --isolate and the culprit note

def test_isolate_names_a_module_called_twice_after_a_functional_op(models, tmp_path):
    """Before: a module called twice, each call after a functional `torch.relu` (outside every module), was one
    'layer' of two calls whose inputs mapped nowhere: skipped. With its weight off by 0.1 % in one channel, `explain
    --isolate` said `✓ isolated: every one of 2 layers ... is within 5x its own float32 floor` (and compare's note 'the
    difference builds up across layers'). Now an op outside every module ends a layer, and a layer's one input computed
    outside any module is the reference's recorded input of that call: both calls of `block` are named."""
    folder = export_onnx(models, tmp_path, "shared", formats=("onnx", "pt2"))
    bad = tmp_path / "bad.onnx"
    edit_weight(folder / "model.onnx", bad, "block.weight", 3, 1e-3)
    code, data, output = explain_json(tmp_path, bad, f"{models}:shared", "--shape", SHAPE, "--isolate")
    assert code == 1, output
    isolation = data["isolation"]
    assert isolation["named"] == ["block", "block"] and not isolation["skipped"], isolation
    assert sorted(layer["call"] for layer in isolation["layers"] if layer["module"] == "block") == [0, 1]
    for faithful in ("model.onnx", "model.pt2"):  # the faithful files: every call judged, none named
        code, data, output = explain_json(tmp_path, folder / faithful, f"{models}:shared", "--shape", SHAPE,
                                          "--isolate")
        isolation = data["isolation"]
        assert code == 0 and not isolation["named"] and not isolation["skipped"], (faithful, isolation)
        assert [(x["module"], x["call"]) for x in isolation["layers"] if x["module"] == "block"] != [], isolation


def test_isolating_a_model_against_itself_runs_no_leaf_on_half_its_inputs(models, tmp_path):
    """Before: `explain m.py:two_inputs m.py:two_inputs --isolate` (a model against itself) exited 1 with `1 layers
    could not run ... : add`: a leaf taking two tensors was re-run on the first alone. Now a call that took several
    tensors is skipped (listed as not re-run), exit 0."""
    code, data, output = explain_json(tmp_path, f"{models}:two_inputs", f"{models}:two_inputs", "--shape", SHAPE,
                                      "--isolate")
    isolation = data["isolation"]
    assert code == 0 and not isolation["unrunnable"] and isolation["skipped"] == ["add"], isolation


def test_the_culprit_note_draws_no_conclusion_over_layers_it_skipped():
    """Before: with one layer skipped (its inputs did not map back) and the others within their floors, the note
    said `the difference builds up across layers`, though the skipped layer was never judged. Now it names them."""
    result = Isolation("model (eager)", "bad.onnx", AUTO_FACTOR,
                       layers=[LayerError("stem", 0, 1.0, 1e-7, 1e-7)], skipped=["block"])
    note = culprit_note(result)
    assert "builds up" not in note and "block" in note and "not re-run" in note


def test_an_isolation_of_no_layer_is_not_marked_passed():
    """Before: an isolation that re-ran no layer printed `✓ isolated: every one of 0 layers of ... is within 5x its
    own float32 floor`. Now it says no layer was re-run, with no ✓."""
    console = Console(record=True, width=200)
    render_isolation(Isolation("model (eager)", "m.onnx", AUTO_FACTOR, note="no candidate layer maps back"), console)
    text = console.export_text()
    assert "✓" not in text and "no layer of m.onnx was re-run" in text


# ---------------------------------------------------------------- reduce

MLP_SHAPE = "1x3x4x4"


def test_reduce_with_a_low_factor_writes_no_rounding_piece(models, tmp_path):
    """Before: `verify reduce` judged layers at the user's --factor as it was, so with `--factor 1.1` a faithful export
    had layers 'differ on their own' at 1x-2x their own floor (resnet18: `6 of 50 layers differ on their own`), wrote
    one as piece.onnx and said `✗ reproduces: ... 2x its float32 floor ..., beyond 1.1x`, exit 1; `reduce --check
    --factor 1` likewise. hunt 8a kept --isolate's factor at AUTO_FACTOR or above; reduce now does too."""
    out = tmp_path / "out"
    result = invoke("export", "--model", f"{models}:mlp", "--shape", MLP_SHAPE, "--out", out, "--format", "onnx",
                    "--static")  # an MLP takes MLP_SHAPE only (a dynamic export is refused since hunt 17b)
    assert result.exit_code == 0, result.output
    (folder,) = out.iterdir()
    code, data, output = explain_json(tmp_path, folder / "model.onnx", f"{models}:mlp", "--shape", MLP_SHAPE,
                                      "--isolate")
    worst = max(layer["ratio"] for layer in data["isolation"]["layers"])
    assert code == 0 and 1 < worst <= AUTO_FACTOR, data["isolation"]  # a faithful layer, above 1x its own floor
    low = 1 + (worst - 1) / 2
    piece = tmp_path / "piece"
    result = invoke("reduce", folder / "model.onnx", f"{models}:mlp", "--shape", MLP_SHAPE, "--factor", low,
                    "--out", piece)
    assert result.exit_code == 0 and "nothing to reduce" in result.output, result.output
    assert not (piece / "piece.onnx").exists()


def test_reduce_check_never_judges_below_the_auto_factor(models, tmp_path):
    """Before: `check_piece(piece, factor=1)` of a piece 2x its floor from its reference said `reproduces`. Now a
    factor below AUTO_FACTOR is raised to it."""
    from verify.explain.reduce import FLOOR_KEY, REFERENCE_KEY, check_piece, data_path
    from verify.explain.rerun import run_onnx_piece

    folder = export_onnx(models, tmp_path, "shared")
    bad = tmp_path / "bad.onnx"
    edit_weight(folder / "model.onnx", bad, "block.weight", 3, 1e-3)
    piece_dir = tmp_path / "piece"
    result = invoke("reduce", bad, f"{models}:shared", "--shape", SHAPE, "--out", piece_dir)
    assert result.exit_code == 1, result.output
    piece = piece_dir / "piece.onnx"
    with np.load(data_path(piece)) as stored:
        arrays = dict(stored)
    got = run_onnx_piece(onnx.load(str(piece)), {k.removeprefix("input:"): v for k, v in arrays.items()
                                                  if k.startswith("input:")})
    floor = arrays[FLOOR_KEY]
    arrays[REFERENCE_KEY] = got.astype(np.float64) + 2 * floor.reshape(1, -1, 1, 1)  # 2x its floor: rounding
    np.savez(data_path(piece), **arrays)
    check = check_piece(piece, factor=1.0)
    assert check.ratio == pytest.approx(2, rel=1e-6) and check.factor == AUTO_FACTOR and not check.reproduces


def test_reduce_against_another_model_is_no_clean_bill(models, tmp_path):
    """Before: `verify reduce` of a file against a model whose layers have other shapes (one layer judged, one of
    another shape, one that could not run) printed `nothing to reduce: no layer differs on its own`, exit 0. Now it is
    one line, exit 2, naming the layers that could not be compared."""
    out = tmp_path / "out"
    result = invoke("export", "--model", f"{models}:wide8", "--shape", SHAPE, "--out", out, "--format", "onnx")
    assert result.exit_code == 0, result.output
    (folder,) = out.iterdir()
    result = invoke("reduce", folder / "model.onnx", f"{models}:wide6", "--shape", SHAPE, "--out", tmp_path / "p")
    assert result.exit_code == 2 and "could not run" in result.output and "stem, head" in result.output, result.output
    assert not (tmp_path / "p" / "piece.onnx").exists()


# ---------------------------------------------------------------- precision

def test_a_precision_scope_puts_every_fp32_precision_back():
    """Before: a TF32 (or --tf32/--no-tf32) run's scope restored the matmul precision and cuDNN's switch only; torch's
    own setters had written `backends.cuda.matmul.fp32_precision` and `backends.mkldnn.matmul.fp32_precision`, which
    came back 'ieee' where they were 'none' (torch 2.14): the next run started from other settings than the first.
    Now every setting exporter.torch_state reads is put back. The flags are set without a GPU."""
    from exporter.torch_state import precision_state
    from verify.judge.precision import precision_scope

    for precision, tf32 in (("tf32", None), ("fp32", False), ("fp32", True)):
        before = precision_state()
        with precision_scope(precision, "cuda", tf32):
            assert precision_state() != before
        assert precision_state() == before, (precision, tf32)


def test_reduce_never_writes_over_the_file_it_reduces_nor_into_its_input_folder(models, tmp_path):
    """Before: `verify reduce m/piece.onnx model.py:f --out m` replaced the user's ONNX file with the piece it cut from
    it (exit 1, the file gone), and `--out` inside the `--input` folder added piece.onnx/.npz (or a subfolder) that
    the next run with that --input refused (`neither a .npy array nor an image`). Both are refused before any work."""
    folder = export_onnx(models, tmp_path, "loud")
    place = tmp_path / "m"
    place.mkdir()
    mine = place / "piece.onnx"
    edit_weight(folder / "model.onnx", mine, "conv.weight", 5, 1e-3)
    before = mine.read_bytes()
    result = invoke("reduce", mine, f"{models}:loud", "--shape", SHAPE, "--out", place)
    assert result.exit_code == 2 and "a file this command reads" in result.output, result.output
    assert mine.read_bytes() == before and not (place / "piece.npz").exists()
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    np.save(inputs / "x.npy", np.zeros((1, 3, 16, 16), np.float32))
    result = invoke("reduce", mine, f"{models}:loud", "--input", inputs, "--out", inputs / "piece")
    assert result.exit_code == 2 and "inside the --input folder" in result.output, result.output
    assert sorted(p.name for p in inputs.iterdir()) == ["x.npy"]


INPLACE_EDIT = 0.01
"""Added to one channel of the in-place bias in the file."""


def test_isolate_takes_an_in_place_module_s_input_before_it_runs(models, tmp_path):
    """Before: the reference's input to each module was read in its forward hook, after an in-place module had written
    over it, so `nn.Hardswish(inplace=True)`'s own floor was 0.27 and `x.add_(b)`'s 0.5 (its output against itself
    applied twice): with one channel of `b` off by 0.01 in the file, `--isolate` named nothing (`shift` 0.02x its
    floor). Now the input is taken before the call runs: floors near 1e-7, and `shift` is named."""
    folder = export_onnx(models, tmp_path, "inplace")
    model = onnx.load(str(folder / "model.onnx"))
    init = next(i for i in model.graph.initializer if i.name == "shift.b")
    value = numpy_helper.to_array(init).copy()
    value[0, 2] += INPLACE_EDIT
    init.CopyFrom(numpy_helper.from_array(value, init.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    code, data, output = explain_json(tmp_path, bad, f"{models}:inplace", "--shape", SHAPE, "--isolate")
    isolation = data["isolation"]
    assert code == 1 and isolation["named"] == ["shift"], isolation
    code, data, output = explain_json(tmp_path, folder / "model.onnx", f"{models}:inplace", "--shape", SHAPE,
                                      "--isolate")
    floors = {layer["module"]: layer["floor"] for layer in data["isolation"]["layers"]}
    assert code == 0 and not data["isolation"]["named"], data["isolation"]
    assert max(floors["act"], floors["shift"]) < INPLACE_EDIT / AUTO_FACTOR, floors  # an edit that size is seen


# ---------------------------------------------------------------- compare_arrays

def test_a_difference_beyond_float64_s_range_is_a_mismatch_not_a_crash():
    """Before: `compare_arrays` in decimal mode of float64 outputs 1e308 and -1e308 raised `OverflowError: cannot
    convert float infinity to integer` (the least passing decimal of an infinite difference), and float32 outputs
    3e38 apart printed numpy's `RuntimeWarning: overflow encountered in subtract` three times. Now each mode fails
    them quietly."""
    import warnings

    from verify.judge.compare import Tolerance, compare_arrays

    pairs = [(np.array([1e308, 1.0]), np.array([-1e308, 1.0])),
             (np.array([3e38], np.float32), np.array([-3e38], np.float32))]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for actual, desired in pairs:
            for tolerance in (Tolerance.from_options(decimal=3), Tolerance.from_options(rtol=1e-3), Tolerance()):
                result = compare_arrays("x", actual, desired, tolerance, 1e-3)
                assert not result.passed and result.mismatched == 1, (tolerance, result)
