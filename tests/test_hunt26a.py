"""Hunt 26a: a dynamic export of a tiny ViT (a conv patch embedding + nn.MultiheadAttention) at a batch of one.
torch.export traces a batch of one as two (exporter/formats/program.py), and at two it derived a guard
(`tokens % (batch * tokens) != 0`) that the example's own batch of one fails: `verify export` exited 2 with "exported
failed on an input of shape (1, 3, 32, 32): Guard failed ...; pass inputs inside those bounds", naming the example's
own shape. The program is now traced again at the example, its batch fixed at one and recorded so."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")


def tiny_vit():
    import torch
    from torch import nn

    class TinyViT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Conv2d(3, 8, 8, 8)
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.head = nn.Linear(8, 4)

        def forward(self, x):
            t = self.embed(x).flatten(2).transpose(1, 2)
            t, _ = self.attn(t, t, t, need_weights=False)
            return self.head(t.mean(1))

    torch.manual_seed(0)
    return TinyViT().eval()


@pytest.fixture(scope="module")
def vit_program():
    import torch

    from exporter.formats.program import export_program

    example = torch.randn(1, 3, 32, 32)
    return export_program(tiny_vit(), example, True, "tiny-vit"), example


def test_dynamic_program_takes_its_own_batch_of_one_example(vit_program):
    """Before, the program traced at a batch of two refused the 1x3x32x32 example it was exported for."""
    import torch

    from exporter.formats.program import accepted_ranges

    program, example = vit_program
    with torch.inference_mode():
        got = program.module()(example)
        want = tiny_vit()(example)
    assert got.shape == want.shape
    ranges = accepted_ranges(program)
    assert ranges["0"] == [1, 1]  # the batch it takes, as the file records it: what the report names
    assert ranges["2"][1] is None and ranges["3"][1] is None  # height and width still dynamic


def test_takes_shape_reads_the_guard_that_refused_the_example():
    """The check that decides the second trace: the batch-of-two program's guards refuse the batch of one (as its
    module does), and take the batch of two it was traced at."""
    import torch

    from exporter.formats.program import DYNAMIC_AXES, takes_shape

    auto = torch.export.Dim.AUTO
    example = torch.randn(1, 3, 32, 32)
    program = torch.export.export(tiny_vit(), (example.expand(2, 3, 32, 32).contiguous(),), strict=False,
                                  dynamic_shapes=({int(axis): auto for axis in DYNAMIC_AXES},))
    assert not takes_shape(program, example)
    with pytest.raises(AssertionError, match="Guard failed"), torch.inference_mode():
        program.module()(example)
    assert takes_shape(program, torch.randn(2, 3, 32, 32))


def test_a_guard_refusing_a_shape_inside_the_recorded_ranges_says_so():
    """Before: a file traced at 2x3x32x32 (batch, height, width dynamic; heights and widths from 8) run at 1x3x32x32
    was told "pass inputs inside those bounds (height 8.., width 8..)": its input was inside them. Now the hint says
    the shape is inside the recorded ranges, which axis the trace assumed above 1, and ways out that work."""
    import torch

    from exporter.artifacts import ArtifactMeta
    from exporter.errors import ArtifactError
    from verify.runtimes.torch_common import call_module

    class Guarded:
        def __call__(self, x):
            raise AssertionError("Guard failed: x.size()[3] // 8 * (x.size()[2] // 8) % "
                                 "(x.size()[0] * (x.size()[3] // 8) * (x.size()[2] // 8)) != 0")

    meta = ArtifactMeta(input_shape=[2, 3, 32, 32], dynamic_axes={"0": "batch", "2": "height", "3": "width"},
                        dynamic_ranges={"0": [2, None], "2": [8, None], "3": [8, None]})
    with pytest.raises(ArtifactError) as caught:
        call_module(Guarded(), torch.zeros(1, 3, 32, 32), "model.pt2 under ExportedProgram", meta)
    message = str(caught.value)
    assert "pass inputs inside those bounds" not in message and "\n" not in message
    assert "inside the axes' recorded ranges (height 8.., width 8..)" in message
    assert "batch 1 where it traced 2" in message and "--shape 2x3x32x32" in message and "--static" in message
    with pytest.raises(ArtifactError, match="pass inputs inside those bounds"):  # outside them: as before
        call_module(Guarded(), torch.zeros(2, 3, 4, 4), "model.pt2 under ExportedProgram", meta)
