"""Review 40: the process cleanup and the .pt2 allow-list of reviews 38 and 39, attacked. A process the user's code
cloned beside its worker (`clone(CLONE_PARENT)`: a child of the fork server) that kept cloning itself and exiting
outlived every run: `end_orphans` read the server's children once, and by the kill the pid it read had moved on (3 of
3 escaped, `run_isolated` returned its result). It is now stopped pass after pass, as `end_descendants` does. And
honest `.pt2` files were refused: `torch.export.save(..., extra_files=...)` with a name holding a space or a folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from exporter.errors import ArtifactError
from exporter.formats.pt2 import scan_archive
from tests.helpers import process_gone

CLONE_SYSCALL = {"x86_64": 56, "aarch64": 220}.get(os.uname().machine)
MIGRATE_S = 2.0
"""How long the escaping process keeps moving before it settles, writes its pid and sleeps."""

MOVER = textwrap.dedent("""
    import ctypes, os, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    os.setsid()  # out of the worker's process group, which `stop_group` kills
    marker, secs, clone = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    deadline = time.time() + secs
    while time.time() < deadline:  # a copy of itself beside it (CLONE_PARENT | SIGCHLD), then gone
        if libc.syscall(clone, 0x8000 | 17, 0, 0, 0, 0) > 0:
            os._exit(0)
    with open(marker + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(marker + ".tmp", marker)
    time.sleep(60)
""")

LEAVER = textwrap.dedent("""
    import ctypes, os, sys, time

    def beside(mover, marker, secs, clone, progress=None):
        # a child of the worker's parent (the fork server), not of the worker: `end_descendants` never sees it
        if ctypes.CDLL(None, use_errno=True).syscall(clone, 0x8000 | 17, 0, 0, 0, 0) == 0:
            os.closerange(0, 3)
            os.execv(sys.executable, [sys.executable, mover, marker, str(secs), str(clone)])
        time.sleep(0.3)
        return "done"
""")


def _alive(pid: int) -> bool:
    return not process_gone(pid)


@pytest.mark.skipif(not sys.platform.startswith("linux") or CLONE_SYSCALL is None,
                    reason="clone(CLONE_PARENT) through ctypes: Linux on x86_64 or aarch64")
def test_a_process_that_keeps_cloning_itself_beside_the_worker_is_ended(tmp_path: Path) -> None:
    """Before: after `run_isolated` returned "done", the moving process settled at MIGRATE_S and lived on."""
    (tmp_path / "mover.py").write_text(MOVER)
    (tmp_path / "leaver40.py").write_text(LEAVER)
    marker = tmp_path / "mover.pid"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from verify.pipeline import isolation
        import leaver40
        isolation.PRELOAD = ("verify.pipeline.isolation",)  # a light fork server: the processes, not torch, are tested
        if __name__ == "__main__":
            print(isolation.run_isolated(leaver40.beside, {str(tmp_path / "mover.py")!r}, {str(marker)!r},
                                         {MIGRATE_S}, {CLONE_SYSCALL}, what="m", timeout=20))
    """)
    (tmp_path / "main.py").write_text(script)
    try:
        result = subprocess.run([sys.executable, str(tmp_path / "main.py")], cwd=Path(__file__).resolve().parents[1],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.strip() == "done"
        deadline = time.monotonic() + MIGRATE_S + 1.0
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not (marker.exists() and _alive(int(marker.read_text())))
    finally:
        if marker.exists() and _alive(int(marker.read_text())):
            os.kill(int(marker.read_text()), signal.SIGKILL)


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
