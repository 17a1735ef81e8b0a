"""A user's model is the same model in every process for one --seed (determ 47): torch, numpy and Python seed their
global RNGs anew in every process, and `UserModelSpec.load` seeded torch's only, after importing the file. A model
built at import time (the file's top level) or drawn with numpy or `random` was another model each run, and its
floors, ratios and verdicts moved with it. Another process is stood in for by other global RNG states in the caller."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from exporter.user_model import UserModelSpec

SOURCES = {
    "top": "from torch import nn\nMODEL = nn.Conv2d(3, 4, 3)\ndef make():\n    return MODEL\n",
    "numpy": ("import numpy as np\nimport torch\nfrom torch import nn\ndef make():\n    m = nn.Conv2d(3, 4, 3)\n"
              "    with torch.no_grad():\n        m.weight.copy_(torch.from_numpy(np.random.randn(4, 3, 3, 3)))\n"
              "    return m\n"),
    "random": ("import random\nimport torch\nfrom torch import nn\ndef make():\n    m = nn.Conv2d(3, 4, 3)\n"
               "    with torch.no_grad():\n        m.weight.fill_(random.random())\n    return m\n"),
    "factory": "from torch import nn\ndef make():\n    return nn.Conv2d(3, 4, 3)\n",
}


def _spec(tmp_path, kind: str) -> UserModelSpec:
    path = tmp_path / f"{kind}.py"
    path.write_text(SOURCES[kind])
    return UserModelSpec.parse(f"{path}:make")


def _weights(spec: UserModelSpec, seed: int, caller_seed: int) -> torch.Tensor:
    """The weight `spec` loads with `seed`, the caller's global RNGs at `caller_seed` (another process's state)."""
    torch.manual_seed(caller_seed)
    np.random.seed(caller_seed)
    random.seed(caller_seed)
    return spec.load(seed).weight.detach().clone()


@pytest.mark.parametrize("kind", ["top", "numpy", "random"])
def test_a_model_drawn_outside_the_factorys_torch_calls_is_the_seeds_alone(tmp_path, kind):
    spec = _spec(tmp_path, kind)
    first, other_caller = _weights(spec, 0, caller_seed=1), _weights(spec, 0, caller_seed=2)
    assert torch.equal(first, other_caller)
    assert not torch.equal(first, _weights(spec, 1, caller_seed=1))  # the seed, not a constant, decides


def test_a_factorys_torch_draws_are_what_they_were_and_the_callers_states_are_kept(tmp_path):
    """The numbers of a model built in its factory stay as before the fix (torch seeded just before the call)."""
    spec = _spec(tmp_path, "factory")
    torch.manual_seed(3)
    expected = torch.nn.Conv2d(3, 4, 3).weight.detach().clone()
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    torch_state, numpy_state, python_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    assert torch.equal(spec.load(3).weight.detach(), expected)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == python_state
    after = np.random.get_state()
    assert after[0] == numpy_state[0] and np.array_equal(after[1], numpy_state[1]) and after[2:] == numpy_state[2:]
