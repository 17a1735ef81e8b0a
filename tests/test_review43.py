"""Review 43: the ops in no layer and where they are (`Isolation.outside`, `Isolation.outside_in`) are two parallel
lists, in the JSON too. A TorchScript file whose structure fails to read half-way (the failure is kept as an
unrunnable note, the layers judged above kept) must not leave `outside_in` filled for ops `outside` never got."""

from __future__ import annotations

import pytest


def _scripted_block():
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)

        def forward(self, x):
            return self.conv(x) + x

    return torch.jit.script(Block())


class _Unreadable:
    def children(self):
        raise RuntimeError("structure unreadable")


class _Model:
    def __init__(self, block):
        self.block = block

    def named_modules(self):
        return [("block", self.block), ("broken", _Unreadable())]


def test_a_file_read_half_way_leaves_no_place_for_ops_it_does_not_list():
    from verify.explain.rerun import jit_outside

    block = _scripted_block()
    where: list[str] = []
    assert jit_outside(block, where) == ["add"] and where == [""]  # the block's own add, in its own forward
    where = []
    with pytest.raises(RuntimeError):
        jit_outside(_Model(block), where)
    assert where == []

