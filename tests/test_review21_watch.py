"""Review 21: the call check of users' models (exporter/call_watch.py, exporter/user_model.py) refused correct models
that cache a tensor between calls: a grid kept per (h, w, dtype) was filled in float32 by the run that names the
outputs, so the float64 copy's first run computed it where the float32 run read it (`verify export --model` exit 1,
"not judged"); and a grid rebuilt in a list attribute on a new input shape (YOLOv5's Detect) lent its freed id to the
next tensor made, which the log then named as the grid. Both runs now start from the model as its factory returned it
(`_before_any_run`), a cache's dtype key names each run's own tensor alike when a watched call made it (`_key_text`),
and the named tensors are kept alive for the run. A dtype-keyed entry made otherwise (at init) keeps its dtype in its
name: a float64-only factor there is still refused."""

from __future__ import annotations

import pytest
import torch

from exporter.user_model import UserModelSpec, build_user_model
from verify.judge.trust import OTHER_FUNCTION, function_problems, function_record

SHAPE = (1, 3, 32, 32)
MODELS = '''
import torch
from torch import nn

K = 1.0005


class Cached(nn.Module):
    """A grid cached per (h, w, dtype), as positional encodings and anchor generators keep theirs."""

    def __init__(self, keyed="tuple"):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.keyed, self._cache = keyed, {}

    def forward(self, x):
        y = self.conv(x)
        key = (y.shape[-2], y.shape[-1], y.dtype) if self.keyed == "tuple" else f"{y.shape[-1]}-{y.dtype}"
        if key not in self._cache:
            self._cache[key] = torch.linspace(-1, 1, y.shape[-1], dtype=y.dtype) ** 2
        return y * self._cache[key]


class Detect(nn.Module):
    """YOLOv5's Detect: its grids kept in lists, rebuilt when the input's size changes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.m = nn.Conv2d(8, 3 * 6, 1)
        self.register_buffer("anchors", torch.tensor([[10.0, 13.0], [16.0, 30.0], [33.0, 23.0]]))
        self.grid, self.anchor_grid, self.stride = [torch.empty(0)], [torch.empty(0)], 4.0

    def _make_grid(self, nx, ny):
        d, t = self.anchors.device, self.anchors.dtype
        yv, xv = torch.meshgrid(torch.arange(ny, device=d, dtype=t), torch.arange(nx, device=d, dtype=t),
                                indexing="ij")
        grid = torch.stack((xv, yv), 2).expand(1, 3, ny, nx, 2) - 0.5
        return grid, (self.anchors * self.stride).view((1, 3, 1, 1, 2)).expand(1, 3, ny, nx, 2)

    def forward(self, x):
        p = self.m(self.body(x))
        bs, _, ny, nx = p.shape
        p = p.view(bs, 3, 6, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
        if self.grid[0].shape[2:4] != p.shape[2:4]:
            self.grid[0], self.anchor_grid[0] = self._make_grid(nx, ny)
        xy, wh, conf = p.sigmoid().split((2, 2, 2), 4)
        xy = (xy * 2 + self.grid[0]) * self.stride
        wh = (wh * 2) ** 2 * self.anchor_grid[0]
        return torch.cat((xy, wh, conf), 4).view(bs, -1, 6)


class Warm(nn.Module):
    """A float64-only factor in a cache filled at init, under the float64 key."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.cache = {torch.float64: torch.full((32,), K, dtype=torch.float64), torch.float32: torch.ones(32)}

    def forward(self, x):
        y = self.conv(x)
        return y * self.cache[y.dtype]


def cached():
    return Cached()


def cached_str():
    return Cached("str")


def detect():
    return Detect()


def warm():
    return Warm()
'''


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    source = tmp_path_factory.mktemp("review21") / "models.py"
    source.write_text(MODELS)
    return source


def checked(source, factory: str, shapes=((1, 3, 32, 32), (2, 3, 64, 64), (1, 3, 32, 32), (2, 3, 48, 64))):
    built = build_user_model(UserModelSpec.parse(f"{source}:{factory}"), 0, SHAPE)
    with torch.inference_mode():
        for seed, shape in enumerate(shapes, 1):
            built.float64()(torch.randn(shape, generator=torch.Generator().manual_seed(seed)).double())
    return built


@pytest.mark.parametrize("factory", ["cached", "cached_str", "detect"])
def test_a_model_that_caches_a_tensor_between_calls_is_not_refused(models, factory):
    """Before: 'call 2 is torch.linspace(...) in float64, Tensor.mul(tensor, tensor _cache.(32, 32, torch.float32)) in
    float32' (the float32 cache filled by the build's run), and for `detect`, at a new shape, 'Tensor.mul(tensor, 2) in
    float64, Tensor.mul(tensor grid.0, 2) in float32' (a freed grid's id reused by the next tensor made)."""
    built = checked(models, factory)
    assert built.float64_calls.runs == 5 and built.float64_calls.difference is None, built.float64_calls.difference
    assert function_problems(function_record(built)) == []


def test_a_dtype_keyed_entry_made_outside_the_watched_calls_is_still_refused(models):
    """Each run's dtype is named alike in a cache's key only for a tensor a watched call made: one filled at init keeps
    its dtype in its name, and its float64-only factor is found."""
    built = checked(models, "warm", shapes=((1, 3, 32, 32),))
    assert "cache.torch.float64) in float64" in built.float64_calls.difference, built.float64_calls.difference
    problems = function_problems(function_record(built))
    assert len(problems) == 1 and problems[0].endswith(OTHER_FUNCTION)
