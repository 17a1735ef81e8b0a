"""Review 26: two files compared with each other (`verify compare A B`), one of them off its float64 run only in
float32 (a subnormal constant that float32 rounds, `(y * 0 + 1e-42) * 1e21 * 1e21` is 1.0005 there and 1.0 in
float64). Its own floor took the 0.05 % in and lifted the pair's: `verify compare bad.pt good.onnx` agreed at 1.0x,
exit 0, and `verify explain bad.pt good.onnx` called them equivalent. Each file's floor is now held to the other
side's float32 run against its float64 run (verify/judge/file_floor.py pair_floor_problems, used by `verify compare`
through verify/api.py and by `verify explain` through verify/explain/equivalence.py)."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn

from tests.helpers import invoke
from verify.judge.file_floor import FLOOR_AGREEMENT, pair_floor_problems

SHAPE = (1, 3, 32, 32)
ARGS = ("--shape", "x".join(map(str, SHAPE)), "--samples", "1")


class Term(nn.Module):
    """A conv; `term`: y times a float32-only 1.0005 (1.0 in float64), made from y so it follows the run's dtype."""

    def __init__(self, term: str | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.term = term

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.term == "arithmetic":
            y = y * ((y * 0 + 1e-42) * 1e21 * 1e21)
        elif self.term == "new_full":
            y = y * (y.new_full(y.shape, 1e-42) * 1e21 * 1e21)
        return y


def _model(term: str | None = None) -> Term:
    torch.manual_seed(0)
    return Term(term).eval()


@pytest.fixture(scope="module")
def files(module_tmp):
    """good.pt / good.onnx (the conv), bad.pt (traced, arithmetic term), bad.pt2 (torch.export, new_full term)."""
    folder = module_tmp("review26")
    x = torch.randn(*SHAPE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(_model(), x).save(str(folder / "good.pt"))
        torch.jit.trace(_model("arithmetic"), x).save(str(folder / "bad.pt"))
        torch.onnx.export(_model(), (x,), str(folder / "good.onnx"), dynamo=False, input_names=["input"],
                          output_names=["output0"])
        torch.export.save(torch.export.export(_model("new_full"), (x,)), str(folder / "bad.pt2"))
    return folder


def _refused_ratio(output: str, name: str) -> float:
    """The ratio the refusal names for file `name`, after checking the line says what to do."""
    text = " ".join(output.split())
    found = re.search(rf"{re.escape(name)}\)?(?: \([AB]\))?'s float32 run is another function than its float64 one: "
                      r"its float32 floor of output0 is ([0-9.e+]+)x", text)
    assert found, output
    assert "not judged" in text.lower(), output
    return float(found.group(1))


@pytest.mark.parametrize(("a", "b", "bad"), [("bad.pt", "good.onnx", "bad.pt"), ("good.pt", "bad.pt2", "bad.pt2")])
def test_a_file_off_only_in_float32_is_refused_against_a_correct_file(files, a, b, bad):
    """Exit 0 at 1.0x before (the pair's floor was bad's own, lifted by its term); refused now, in either order and
    whether the correct side runs in float64 (TorchScript) or not (ONNX)."""
    result = invoke("compare", files / a, files / b, *ARGS)
    assert result.exit_code == 1, result.output
    assert _refused_ratio(result.output, bad) > FLOOR_AGREEMENT


def test_an_honest_pair_of_files_still_agrees(files):
    """The same conv as TorchScript and ONNX: each file's floor within FLOOR_AGREEMENT of the other's run."""
    result = invoke("compare", files / "good.pt", files / "good.onnx", *ARGS)
    assert result.exit_code == 0, result.output
    assert "agree" in result.output and "another function" not in result.output


def test_pair_floor_problems_names_the_side_whose_float32_run_is_another_function():
    """The rule on numbers: side A's float32 run is 1.0005x its float64 run, side B's float32 run is A's float64 run
    rounded to float32. A is named; B (no float64 run) and a model side (held by guard 3) are not checked."""
    import numpy as np

    from verify.judge.measure import measure_floors

    rng = np.random.default_rng(0)
    float64 = {"output0": rng.standard_normal((1, 4, 8, 8))}
    a32 = {"output0": (float64["output0"] * 1.0005).astype(np.float32)}
    b32 = {"output0": float64["output0"].astype(np.float32)}
    own = measure_floors(a32, float64)
    args = (["a.pt (A)", "b.onnx (B)"], [[a32], [b32]], [[float64], [{}]], [[own], [{}]], [[{}], [{}]])
    problems = pair_floor_problems(*args, files=[True, True])
    assert len(problems) == 1 and problems[0].startswith("a.pt (A)'s float32 run is another function"), problems
    assert pair_floor_problems(*args, files=[False, True]) == []
    honest = measure_floors(b32, float64)
    assert pair_floor_problems(["a.pt (A)", "b.pt (B)"], [[b32], [b32]], [[float64], [float64]], [[honest], [honest]],
                               [[{}], [{}]], files=[True, True]) == []


def test_a_term_in_one_small_channel_is_refused_on_that_channel():
    """A float32-only factor in one small channel, small enough that the output's floor rises under FLOOR_AGREEMENT x,
    still lifts that channel's floor over CHANNEL_AGREEMENT x what the other file measures there: refused on it."""
    import numpy as np

    from verify.judge.file_floor import CHANNEL_AGREEMENT
    from verify.judge.measure import measure_floors
    from verify.judge.noise_floor import CHANNEL_FLOOR_SHARE

    rng = np.random.default_rng(0)
    float64 = {"output0": rng.standard_normal((1, 4, 16, 16))}
    float64["output0"][:, 0] *= 1e-3  # a channel of small activations: its rounding is 1e-3 of the others'
    rounded = float64["output0"] * (1 + 1e-6 * rng.standard_normal(float64["output0"].shape))  # relative rounding
    b32 = {"output0": rounded.astype(np.float32)}
    cross = measure_floors(b32, float64)["output0"].value
    lift = (FLOOR_AGREEMENT + CHANNEL_AGREEMENT * CHANNEL_FLOOR_SHARE) / 2  # over the channel bound, under the output's
    a32 = {"output0": b32["output0"].copy()}
    a32["output0"][:, 0] = float64["output0"][:, 0] * (1 + lift * cross / np.abs(float64["output0"][:, 0]).max())
    own = measure_floors(a32, float64)
    assert own["output0"].value / cross <= FLOOR_AGREEMENT
    problems = pair_floor_problems(["a.pt (A)", "b.onnx (B)"], [[a32], [b32]], [[float64], [{}]], [[own], [{}]],
                                   [[{}], [{}]], files=[True, False])
    assert len(problems) == 1 and "its worst channel, pooled over the inputs" in problems[0], problems
    assert float(re.search(r"output0 is ([0-9.e+]+)x", problems[0]).group(1)) > CHANNEL_AGREEMENT


def test_explain_refuses_a_file_off_only_in_float32_against_an_onnx_file(files):
    """`verify explain bad.pt good.onnx` (no float64 run on the ONNX side) judged on bad's lifted floor: equivalent
    at 1.0x, exit 0. Refused now with the same reason."""
    result = invoke("explain", files / "bad.pt", files / "good.onnx", "--shape", "x".join(map(str, SHAPE)))
    assert result.exit_code == 1, result.output
    assert _refused_ratio(result.output, "bad.pt") > FLOOR_AGREEMENT
