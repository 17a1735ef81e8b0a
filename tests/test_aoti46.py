"""aoti 46: a correct AOTInductor export failed its floor. Inductor computes a conv graph channels-last and sums a
spatial mean after the conv in one sequential float32 accumulator a channel; the floors of a cell that runs an
AOTInductor file now model that order (verify/judge/graph_lift.py inductor_graph, verify/judge/lanes.py
inductor_sum), and only there."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from verify.judge.compare import AUTO_FACTOR
from verify.judge.graph_lift import floor_bounds, inductor_graph
from verify.judge.lanes import inductor_sum, lane_sum
from verify.judge.measure import measure_floors
from verify.judge.summation import lifted


class Heads(nn.Module):
    """hunt 28's model: conv, spatial mean, Linear x30, softmax and sigmoid heads, and a map."""

    def __init__(self, off: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, 2, 1)
        self.fc = nn.Linear(16, 10)
        self.off = off

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.conv(x)
        if self.off:  # a 0.1 % error in one output channel
            y = y * (1 + self.off * (torch.arange(16) == 5).to(y.dtype)).reshape(1, -1, 1, 1)
        z = self.fc(y.mean((2, 3))) * 30
        return {"prob": torch.softmax(z, 1), "sig": torch.sigmoid(z), "map": torch.sigmoid(y * 20)}


def _artifact(model: nn.Module) -> SimpleNamespace:
    built = SimpleNamespace(model=model, spec=SimpleNamespace(registered=False))
    return SimpleNamespace(built=built, meta=SimpleNamespace(output_names=["prob", "sig", "map"]))


def _run(model: nn.Module, x: np.ndarray, dtype=torch.float32) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        return {k: v.numpy() for k, v in model.to(dtype)(torch.from_numpy(x).to(dtype)).items()}


@pytest.fixture(scope="module")
def heads():
    torch.manual_seed(0)
    model = Heads().eval()
    x = np.random.default_rng(3).standard_normal((2, 3, 64, 64)).astype(np.float32)
    fp32 = _run(model, x)
    fp64 = _run(_double(model), x, torch.float64)
    return model, x, fp32, fp64


def _double(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).double()


def test_channels_last_spatial_sum_is_one_sequential_accumulator():
    x = torch.randn(2, 16, 9, 7).contiguous(memory_format=torch.channels_last)
    got = inductor_sum(x, [2, 3], 16)
    seq = np.zeros((2, 16), dtype=np.float32)
    values = x.reshape(2, 16, -1).numpy()
    for i in range(values.shape[-1]):  # in memory order (h, then w), in float32
        seq = seq + values[..., i]
    assert got.shape == (2, 16) and np.array_equal(got.numpy(), seq)
    # over the innermost axis in memory (contiguous NCHW): the vector lanes, as Inductor vectorises there
    plain = torch.randn(2, 16, 9, 7)
    assert np.array_equal(inductor_sum(plain, [2, 3], 16).numpy(),
                          lane_sum(plain.reshape(2, 16, -1), 16).squeeze(-1).numpy())


def test_floors_model_inductors_order_only_where_asked(heads):
    model, x, fp32, fp64 = heads
    feed = {"input": x}
    artifact = _artifact(model)
    assert floor_bounds(artifact, feed, fp32, fp64) == {}  # other formats: no trace, no lift (256-1024 values)
    graph = inductor_graph(artifact, feed)
    assert graph is not None
    with torch.inference_mode():
        modelled = {k: v.numpy() for k, v in graph[1].forward(torch.from_numpy(x.copy())).items()}
    held = float(np.abs(fp32["sig"] - fp64["sig"]).max())
    inductor = float(np.abs(modelled["sig"] - fp64["sig"]).max())
    assert inductor > held  # one sequential accumulator is less exact than ATen's cascade
    bounds = floor_bounds(artifact, feed, fp32, fp64, inductor=True)
    own = measure_floors(fp32, fp64)
    assert lifted(own, bounds)["sig"].value > own["sig"].value  # lifted toward the order the file sums in


def test_a_one_channel_error_still_fails_on_the_lifted_floor(heads):
    model, x, fp32, fp64 = heads
    feed = {"input": x}
    floors = lifted(measure_floors(fp32, fp64), floor_bounds(_artifact(model), feed, fp32, fp64, inductor=True))
    off = Heads(off=1e-3).eval()
    off.load_state_dict(model.state_dict())
    wrong = _run(off, x)
    ratio = max(float(np.abs(wrong[k] - fp64[k]).max()) / floors[k].value for k in ("prob", "sig"))
    assert ratio > AUTO_FACTOR


# aoti 47: the wiring, from a cell's formats to its floors ---------------------------------------------------------
HEADS_SOURCE = '''
import torch
from torch import nn


class Heads(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, 2, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        f = self.conv(x).mean((2, 3))
        z = self.fc(f) * 30
        return {"prob": torch.softmax(z, 1), "sig": torch.sigmoid(z), "map": torch.sigmoid(self.conv(x) * 20)}


def heads():
    return Heads().eval()
'''
CLI_SHAPE = (1, 3, 32, 32)


@pytest.fixture(scope="module")
def heads_cell(tmp_path_factory):
    """hunt 28's heads model as `verify export --model FILE:heads --format aoti --shape 1x3x32x32 --seed 0` builds
    it, its eager artifact and the seeded inputs of that command, its float32 runs, and what an AOTInductor package
    computes on them: `inductor_graph`'s modelled run, which matched the compiled file's outputs within 1e-9 (aoti 47,
    seed 1: sig 1.01e-06 from float64 in both, on the input the CLI failed at 8.5x)."""
    from tests.helpers import user_model_cell

    eager, feeds, fp32 = user_model_cell(tmp_path_factory.mktemp("heads"), HEADS_SOURCE, "heads", CLI_SHAPE)
    graph = inductor_graph(eager, feeds[0])
    assert graph is not None
    with torch.inference_mode():
        compiled = [{k: v.numpy() for k, v in graph[1].forward(torch.from_numpy(x.copy())).items()}
                    for x in (feed[eager.meta.input_name] for feed in feeds)]
    return eager, feeds, fp32, compiled


def _worst(outputs, oracles, floors) -> float:
    from verify.judge.compare import Tolerance, compare_outputs

    return max(compare_outputs("file", run, "oracle", oracle.outputs, Tolerance(), floors, kind="oracle").worst.ratio
               for run, oracle in zip(outputs, oracles))


def test_a_cell_with_an_inductor_file_judges_on_inductors_order(heads_cell):
    """The AOTI format alone declares its file Inductor's code; a comparison with such a file (`side_oracles`, what
    `verify compare` measures each side with) lifts the model's floors to Inductor's order, so the correct file passes
    where it failed, and a 0.1 % one-channel error in the conv still fails on those floors."""
    from exporter.formats import file_formats
    from exporter.formats.aoti import AotiFormat
    from verify.judge.oracle import pooled_floors
    from verify.pipeline.stages import RunResult, compiled_by_inductor, side_oracles
    from verify.runtimes import default_runtime
    from verify.settings import RunSettings

    assert [fmt for fmt in file_formats() if compiled_by_inductor([fmt])] == [AotiFormat.name]
    eager, feeds, fp32, compiled = heads_cell
    run = RunResult(default_runtime(eager.format), default_runtime(eager.format), eager.label, fp32, 0.0)
    worst = {}
    for inductor in (False, True):
        oracles = side_oracles(eager, feeds, run, RunSettings(shape=CLI_SHAPE), fp32, inductor=inductor)
        worst[inductor] = (_worst(compiled, oracles, pooled_floors([o.noise for o in oracles])), oracles)
    # the CLI's exit 1 before aoti 47 (6.71x here, on an AVX-512 CPU), exit 0 after (3.72x): the lift is what lowers it
    assert worst[True][0] <= AUTO_FACTOR and worst[True][0] < worst[False][0], worst
    oracles = worst[True][1]
    off, model = [], eager.built.model
    with torch.inference_mode():
        for feed in feeds:
            y = model.conv(torch.from_numpy(feed[eager.meta.input_name].copy()))
            y = y * (1 + 1e-3 * (torch.arange(y.shape[1]) == 5).to(y.dtype)).reshape(1, -1, 1, 1)
            z = model.fc(y.mean((2, 3))) * 30
            off.append({"prob": torch.softmax(z, 1).numpy(), "sig": torch.sigmoid(z).numpy(),
                        "map": torch.sigmoid(y * 20).numpy()})
    assert _worst(off, oracles, pooled_floors([o.noise for o in oracles])) > AUTO_FACTOR
