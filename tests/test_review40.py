"""Review 40: the .pt2 allow-list of review 39, attacked. Honest `.pt2` files were refused:
`torch.export.save(..., extra_files=...)` with a name holding a space or a folder; and a library suffix behind a
trailing dot passed. (Its other finding, a process that keeps cloning itself beside the worker, is left open: reading
the fork server's children again and again stopped and killed pids its clones had left to be reaped and reused, and
a suite run hung; verify/pipeline/isolation.py `end_orphans`.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.errors import ArtifactError
from exporter.formats.pt2 import scan_archive


@pytest.fixture(scope="module")
def program():
    import torch

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.register_buffer("kept", torch.ones(4))
            self.register_buffer("dropped", torch.full((4,), 2.0), persistent=False)

        def forward(self, x):
            return self.conv(x) * self.kept[:, None, None] + self.dropped[:, None, None]

    return torch.export.export(Model().eval(), (torch.randn(1, 3, 8, 8),))


@pytest.mark.parametrize("name", ["notes v1.txt", "meta/run.json", "métadonnées.txt"])
def test_extra_files_torch_writes_under_their_own_names_pass(program, tmp_path: Path, name: str) -> None:
    """Before: 'extra/notes v1.txt' and 'extra/meta/run.json' were "an entry torch.export.save does not write"."""
    import torch

    path = tmp_path / "model.pt2"
    torch.export.save(program, path, extra_files={name: "{}"})
    assert "1 program(s)" in scan_archive(path)


@pytest.mark.parametrize("name", ["../models/x.json", "a/./b.txt", "evil.so ", "lib.so."])
def test_extra_names_that_climb_or_hide_a_library_suffix_are_refused(program, tmp_path: Path, name: str) -> None:
    import zipfile

    import torch

    path = tmp_path / "model.pt2"
    torch.export.save(program, path)
    with zipfile.ZipFile(path) as archive:
        root = archive.namelist()[0].split("/", 1)[0]
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(f"{root}/extra/{name}", "text")
    with pytest.raises(ArtifactError, match="does not write"):
        scan_archive(path)
