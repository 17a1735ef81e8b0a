"""Review 15 of stop 31's change (ebe7b35..e782dc3): defects confirmed by running (each test failed before its fix).
A fourth, tests/test_early_child.py exporting into a tempfile.mkdtemp() it never removed (129 MB per run, in memory
since the suite's temporary files moved to /dev/shm), is fixed in that test, which now exports into its tmp_path."""

from __future__ import annotations

import os
import tempfile
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _statvfs_with(flag: int, real=os.statvfs):
    """os.statvfs answering for one folder as a memory file system with 64 GiB free and mount flags `flag`."""
    def fake(path):
        got = real(path)
        return os.statvfs_result((got.f_bsize, 4096, 16 * 2**20, 16 * 2**20, 16 * 2**20, got.f_files, got.f_ffree,
                                  got.f_favail, flag, got.f_namemax))
    return fake


def test_the_suite_never_puts_its_temporary_files_on_a_noexec_memory_folder(tmp_path, monkeypatch):
    """Before: with TMPDIR on a noexec tmpfs (Docker mounts /dev/shm noexec, also with --shm-size 16g),
    `verify export -b resnet18 --shape 1x3x32x32 --format aoti` ended in exit 2: "model_aoti.pt2 cannot be loaded by
    torch._inductor.aoti_load_package: Error in dlopen: .../wrapper.so: failed to map segment from shared object"
    (measured on `mount -t tmpfs -o noexec`), while `os.access(folder, W_OK | X_OK)`, all use_memory_tmp asks, was
    True there: the suite's AOTInductor tests would fail on such a machine instead of using the system's folder."""
    from tests import conftest

    monkeypatch.setenv("TMPDIR", "placeholder")
    monkeypatch.delenv("TMPDIR")  # restored after the test, whatever use_memory_tmp sets
    monkeypatch.setattr(tempfile, "tempdir", tempfile.tempdir)
    monkeypatch.setattr(conftest, "RAM_TMP", str(tmp_path))
    config = types.SimpleNamespace(getoption=lambda name, default=None: None)

    monkeypatch.setattr(os, "statvfs", _statvfs_with(0))
    conftest.use_memory_tmp(config)
    assert os.environ.get("TMPDIR") == str(tmp_path), "a memory folder that runs code is taken (control)"

    monkeypatch.delenv("TMPDIR")
    monkeypatch.setattr(os, "statvfs", _statvfs_with(os.ST_NOEXEC))
    conftest.use_memory_tmp(config)
    assert "TMPDIR" not in os.environ, "a noexec folder cannot load an AOTInductor package's compiled library"


def test_a_callers_edit_of_synthetic_weights_never_leaves_a_stale_digest_for_the_next_build():
    """Before: `w = load_weights("synthetic", "resnet18", 0); w.state_dict["conv1.weight"].mul_(2)` changed the tensors
    every later build in the process loads (the cached dict itself), while their `sha256`, remembered since d62007f,
    still named the values before the edit (measured: same dict True, digest unchanged True, digest of the values
    False): an export's identity, its manifest's weights_sha256 and the export cache's key then named weights the
    model did not have. Before d62007f the digest followed the values."""
    from exporter.weights import _synthetic_state_dict, load_weights, state_dict_sha256

    given = load_weights("synthetic", "resnet18", 0)
    try:
        given.state_dict["conv1.weight"].mul_(2)
        again = load_weights("synthetic", "resnet18", 0)
        assert state_dict_sha256(again.state_dict) == again.sha256, "the digest names other values than these"
    finally:
        _synthetic_state_dict.cache_clear()  # no edited weights for the tests after this one


def test_the_memory_folder_never_takes_torchs_compile_cache(tmp_path, monkeypatch):
    """Before: torch puts its inductor cache in tempfile.gettempdir() unless TORCHINDUCTOR_CACHE_DIR is set, so since
    stop 31 the suite's AOTInductor compiles kept /dev/shm/torchinductor_root: 291 MB of memory after today's runs,
    held until a reboot (the same cache on disk, /tmp/torchinductor_root, had grown to 873 MB); it is a cache meant to
    outlive the run, not one of the suite's temporary files."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from tests import conftest

    for name in ("TMPDIR", "TORCHINDUCTOR_CACHE_DIR"):
        monkeypatch.setenv(name, "placeholder")
        monkeypatch.delenv(name)  # restored after the test, whatever use_memory_tmp sets
    monkeypatch.setattr(tempfile, "tempdir", None)  # the system's temporary folder, as for a suite started fresh
    memory = tmp_path / "shm"
    memory.mkdir()
    monkeypatch.setattr(conftest, "RAM_TMP", str(memory))
    monkeypatch.setattr(os, "statvfs", _statvfs_with(0))
    conftest.use_memory_tmp(types.SimpleNamespace(getoption=lambda name, default=None: None))
    assert os.environ.get("TMPDIR") == str(memory), "the memory folder is taken (control)"
    where = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or default_cache_dir()
    assert not Path(where).resolve().is_relative_to(memory.resolve()), where


@pytest.mark.parametrize("when", ["before its open", "before its lock"])
def test_an_output_folder_another_export_removes_as_this_one_starts_is_made_again(tmp_path, monkeypatch, when):
    """A failing export removes the `--out` folders it created (exporter/fsio.py staged_folder). Another export that
    had just made the same folder, and not yet locked it, found it gone. Before: exit 2, "Cannot write into the
    output folder ... No such file or directory" (review 15, left open at stop 31). Now the removal happens under
    the folder's lock and an export holds the lock on a folder that still exists, making it again if needed."""
    import fcntl

    from exporter import fsio

    out = tmp_path / "new" / "deeper"
    removed = []

    def remove_once() -> None:
        if not removed and out.is_dir():
            removed.append(out)
            out.rmdir()  # what the failing export's cleanup does, between this export's mkdir and its lock

    real_open, real_flock = os.open, fcntl.flock
    if when == "before its open":
        monkeypatch.setattr(fsio.os, "open", lambda path, *a: (remove_once() if Path(path) == out else None,
                                                               real_open(path, *a))[1])
    else:
        monkeypatch.setattr(fsio.fcntl, "flock", lambda fd, op: (remove_once(), real_flock(fd, op))[1])
    with fsio.staged_folder(out / "model") as staging:
        (staging / "weights.txt").write_text("kept")
    assert removed and (out / "model" / "weights.txt").read_text() == "kept"
