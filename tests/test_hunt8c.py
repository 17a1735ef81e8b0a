"""Hunt 8c: what a run leaves on disk and reads back (interrupts, concurrent runs, odd paths, the cache's own
states, the Python API as a library). Each test names what happened before its fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter import fsio
from exporter.spec import ModelSpec


def test_live_staging_folder_survives_an_export_in_another_pid_namespace(tmp_path, monkeypatch):
    """Before: an export started in another PID namespace (a second container sharing the --out volume) saw the
    running export's pid as dead and deleted its staging folder; measured with `unshare --pid --fork verify export
    -b mobilenet_v3_small` beside a running resnet18 export into one --out: the resnet18 export failed with "ONNX
    export (dynamo) failed ... No such file or directory: '.../.resnet18-frozen-body.staging-9542-.../model.onnx'".
    Now a staging folder holds an flock for as long as its export runs, and only an unlocked one is removed."""
    out = tmp_path / "out"
    monkeypatch.setattr(fsio, "_pid_alive", lambda pid: False)  # how the other namespace sees every pid of ours
    with fsio.staged_folder(out / "first") as first:
        (first / "model.onnx").write_bytes(b"half written")
        with fsio.staged_folder(out / "second") as second:
            (second / "manifest.json").write_text("{}")
        assert (first / "model.onnx").read_bytes() == b"half written"
        (first / "manifest.json").write_text("{}")
    assert sorted(p.name for p in (out / "first").iterdir()) == ["manifest.json", "model.onnx"]
    assert sorted(p.name for p in out.iterdir()) == ["first", "second"]


def test_staging_folder_of_a_dead_export_is_still_removed(tmp_path):
    """The flock is dropped when its holder dies: a killed export's staging folder (no lock, no live pid) is removed
    by the next export into the same --out, as before."""
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    stale = out / f".model.staging-{dead}-0123456789ab"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"x")
    with fsio.staged_folder(out / "model") as staging:
        (staging / "manifest.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["model"]


def _cache_with_entry(root):
    from verify.cache import Cache

    cache = Cache(root)
    key = cache.key("export", {"test": "hunt8c"})
    cache.store("export", key, {"n": 1}, blobs={"model.onnx": b"\x01" * 4096})
    assert cache.load("export", key) is not None
    return cache, key


def test_clear_removes_what_an_interrupted_clear_left(tmp_path, monkeypatch):
    """Before: a `verify cache clear` stopped by Ctrl-C or a kill while removing (shutil.rmtree of a large cache)
    left `.v1.retired-XXXXXXXX` with every blob in the cache root: hidden from `cache info`, never removed by a
    later `clear` or `prune` (measured: 5 MB left after a second clear). Now the next clear removes it and counts it."""
    from verify import cache as cache_module

    cache, _ = _cache_with_entry(tmp_path / "cache")
    real_rmtree = cache_module.shutil.rmtree

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module.shutil, "rmtree", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache.clear()
    monkeypatch.setattr(cache_module.shutil, "rmtree", real_rmtree)
    left = [p.name for p in (tmp_path / "cache").iterdir()]
    assert len(left) == 1 and cache_module.RETIRED_NAME.fullmatch(left[0])
    assert cache.clear() >= 4096
    assert list((tmp_path / "cache").iterdir()) == []


def test_clear_leaves_folders_it_did_not_name(tmp_path):
    """Only folders named exactly as `clear` names them are removed; a link of that name is removed as a link."""
    cache, _ = _cache_with_entry(tmp_path / "cache")
    mine = tmp_path / "cache" / ".v1.retired-notours"
    mine.mkdir()
    (mine / "keep").write_text("x")
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep").write_text("x")
    (tmp_path / "cache" / ".v1.retired-0123abcd").symlink_to(target)
    cache.clear()
    assert (mine / "keep").exists() and (target / "keep").exists()


def test_clear_on_a_cache_that_cannot_be_renamed_is_one_line(tmp_path, monkeypatch):
    """Before: a cache on a read-only file system (or a v1 in use elsewhere: EBUSY) made `verify cache clear` print
    "unexpected OSError: [Errno 30] Read-only file system ... please report it". Now a UsageError (exit 2) saying
    what to check."""
    import errno
    import os

    from exporter.errors import UsageError
    from verify import cache as cache_module

    cache, _ = _cache_with_entry(tmp_path / "cache")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(cache_module.os, "rename", read_only)
    with pytest.raises(UsageError, match="Cannot clear the cache .*Read-only file system"):
        cache.clear()


def test_prune_removes_a_killed_writers_entry_temp_file(tmp_path):
    """Before: an entry's temporary file left by a writer killed mid-write (SIGKILL, power loss) in
    v1/entries/<kind>/<xx>/ was never removed: `prune --max-size 0` kept it (measured: "2.9 MiB kept"), while the same
    leftover in the blobs folder is swept. Now both are, once older than prune's grace period."""
    import os
    import time

    cache, key = _cache_with_entry(tmp_path / "cache")
    folder = cache.entry_path("export", key).parent
    temp = folder / f".{key}.json.999999.0badf00d.tmp"
    temp.write_bytes(b"{" * 1000)
    old = time.time() - 3600
    os.utime(temp, (old, old))
    young = folder / f".{key}.json.999998.0badf00e.tmp"
    young.write_bytes(b"{")
    cache.prune(0, grace_seconds=600)
    assert not temp.exists()
    assert young.exists()  # a store in progress keeps its file


def test_a_full_disk_during_an_export_is_one_line_and_leaves_nothing(tmp_path):
    """Before: `verify export --format onnx` into a full file system (a 3 MB tmpfs, measured) ended with "unexpected
    OSError: [Errno 28] No space left on device: '/tmp/verify-onnx-export-.../model.onnx' -> '.../.resnet18-frozen-body
    .staging-.../model.onnx' (... please report it)". Now a UsageError naming the file and what to do; the staging
    folder is removed and the previous folder kept."""
    import errno
    import os

    from exporter.errors import UsageError

    final = tmp_path / "out" / "model"
    final.mkdir(parents=True)
    (final / "manifest.json").write_text("previous")
    with pytest.raises(UsageError, match=r"No space left on device writing .*model\.onnx: free space there.*left as "
                                         r"it was"):
        with fsio.staged_folder(final) as staging:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(staging / "model.onnx"))
    assert sorted(p.name for p in final.parent.iterdir()) == ["model"]
    assert (final / "manifest.json").read_text() == "previous"


@pytest.mark.parametrize("where", ["cache-in-folder", "folder-in-cache", "input-in-folder", "key-in-folder"])
def test_export_refuses_its_own_files_inside_the_folder_it_replaces(tmp_path, where):
    """Before: `verify export -b resnet18 --shape 1x3x32x32 --out co --cache-dir co/resnet18-frozen-body` ran the
    whole export (about 20 s), the cache created the export folder's name as its root, and the rename was refused at
    the end: "co/resnet18-frozen-body exists but holds no readable manifest.json (not an export of this tool, or
    damaged)"; with --overwrite the cache (or an --input / --sign-key file kept there) was deleted with the old folder.
    An --out inside the cache's v1 made every later `verify cache clear` refuse that cache. Now each is one line, exit
    2, before any model is built."""
    from typer.testing import CliRunner

    from verify.cli.app import app

    out = tmp_path / "out"
    folder = out / "resnet18-frozen-body"
    folder.mkdir(parents=True)
    args = ["export", "-b", "resnet18", "--shape", "1x3x32x32", "--out", str(out)]
    if where == "cache-in-folder":
        args += ["--cache-dir", str(folder / "cache")]
    elif where == "folder-in-cache":
        args = ["export", "-b", "resnet18", "--shape", "1x3x32x32", "--out", str(tmp_path / "cache" / "v1" / "x"),
                "--cache-dir", str(tmp_path / "cache")]
    elif where == "input-in-folder":
        import numpy as np

        np.save(folder / "input.npy", np.zeros((1, 3, 32, 32), np.float32))
        args = [a for a in args if a not in ("--shape", "1x3x32x32")] + ["--input", str(folder / "input.npy")]
    else:
        (folder / "key.pem").write_text("not read: refused first")
        args += ["--sign-key", str(folder / "key.pem")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Building" not in result.output
    message = " ".join(result.output.split())
    assert ("inside the export folder" in message and "put it elsewhere" in message) or \
        "inside the cache's own folder" in message, message


def test_an_output_folder_name_too_long_is_refused_before_any_work(tmp_path):
    """Before: `verify export --out /tmp/.../<256 x's>/out` passed the --out check, built the model (5.6 s) and only
    then failed with "Cannot write into the output folder ...: File name too long". Now the option is refused up
    front, naming the folder and the file system's limit."""
    import os

    from exporter.errors import UsageError

    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    with pytest.raises(UsageError, match=rf"is {name_max + 1} bytes, more than the {name_max}"):
        fsio.check_writable_folder(tmp_path / ("x" * (name_max + 1)) / "out", "output folder")
    fsio.check_writable_folder(tmp_path / ("x" * name_max) / "out", "output folder")  # the limit itself is fine


@pytest.mark.parametrize("case", ["spec-as-text", "runtimes-as-text", "cache-as-text"])
def test_python_api_names_a_wrong_argument_type(tmp_path, monkeypatch, case):
    """Before (measured, library use of verify.api.verify_export): a spec given as text "resnet18" was
    "AttributeError: 'str' object has no attribute 'slug'"; runtimes="onnxruntime" was taken letter by letter,
    "Unknown runtime 'o'"; cache="/some/folder" built the model and then failed with "AttributeError: 'str' object
    has no attribute 'key'". Expected: a TypeError naming the argument and what it takes, before any work."""
    import verify.pipeline.stages as stages
    from exporter.spec import ModelSpec
    from verify.api import RunSettings, verify_export

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the argument was checked")

    monkeypatch.setattr(stages, "build_stage", no_work)
    spec, kwargs = ModelSpec("resnet18", "frozen", "body"), {}
    if case == "spec-as-text":
        spec = "resnet18"
    elif case == "runtimes-as-text":
        kwargs["runtimes"] = "onnxruntime"
    else:
        kwargs["cache"] = str(tmp_path / "cache")
    argument = {"spec-as-text": "spec", "runtimes-as-text": "runtimes", "cache-as-text": "cache"}[case]
    with pytest.raises(TypeError, match=argument):
        verify_export(spec, RunSettings(shape=(1, 3, 32, 32)), out=tmp_path / "out", **kwargs)


def test_a_lock_held_by_a_hung_process_is_waited_for_a_bounded_time(tmp_path, monkeypatch):
    """Before: `Cache.lock` waited on the key's flock with no limit, so one export stopped while holding it (Ctrl-Z,
    SIGSTOP, a process stuck on a network mount) hung every run sharing the cache that needed the same export
    (measured: a waiter still blocked after 5 s while the holder slept). Now it waits at most LOCK_WAIT_SECONDS, then
    computes the result itself (cache writes are atomic); a free lock is still taken at once."""
    import subprocess
    import sys
    import threading
    import time

    from verify import cache as cache_module

    cache = cache_module.Cache(tmp_path / "cache")
    key = cache.key("export", {"test": "lock"})
    with cache.lock(key):  # creates the lock file
        pass
    lock_file = tmp_path / "cache" / "v1" / "locks" / f"{key}.lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; f = open(sys.argv[1]); fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); "
        "time.sleep(60)"), str(lock_file)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(cache_module, "LOCK_WAIT_SECONDS", 0.5, raising=False)
        done = []

        def waiter():
            with cache.lock(key):
                done.append(time.monotonic())

        start = time.monotonic()
        thread = threading.Thread(target=waiter, daemon=True)
        thread.start()
        thread.join(5.0)
        assert done, "still waiting for the hung holder's lock after 5 s"
        assert done[0] - start >= 0.5
    finally:
        holder.kill()
        holder.wait()
    with cache.lock(key):  # the holder is gone: taken at once
        pass


@pytest.fixture(scope="module")
def signed_folder(tmp_path_factory):
    """A signed resnet18 folder (ONNX only: no code is loaded) and the public key that verifies it. The legacy ONNX
    exporter writes it (this fixture 7.8 s -> 4.2 s): the test checks the folder API, not which exporter."""
    import subprocess

    from typer.testing import CliRunner

    from verify.cli.app import app

    root = tmp_path_factory.mktemp("signed")
    key, pub = root / "key.pem", root / "pub.pem"
    subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)], check=True)
    subprocess.run(["openssl", "ec", "-in", str(key), "-pubout", "-out", str(pub)], check=True, capture_output=True)
    result = CliRunner().invoke(app, ["export", "-b", "resnet18", "--shape", "1x3x32x32", "--format", "onnx",
                                      "--onnx-exporter", "torchscript", "--out", str(root / "out"), "--sign-key",
                                      str(key), "--no-cache"])
    assert result.exit_code == 0, result.output
    return root / "out" / "resnet18-frozen-body", pub


def test_the_folder_api_takes_paths_as_text(signed_folder):
    """Before (library use): `validate("artifacts/x")`, `validate(["artifacts/x"])` and `preflight("artifacts/x")`
    were "AttributeError: 'str' object has no attribute 'exists'", `validate(Path(...))` "TypeError: 'PosixPath'
    object is not iterable"; and `verify_key="pub.pem"` as text made a correctly signed folder FAIL its signature
    check ("AttributeError: 'str' object has no attribute 'name'", preflight NO-GO). Now text and one folder work,
    with the same verdict as Paths."""
    from verify.folder.preflight import PreflightOptions, preflight
    from verify.folder.validate import validate

    folder, pub = signed_folder
    reference = validate([folder], verify_key=pub)
    assert reference.passed, [c.message for c in reference.checks if not c.passed]
    for paths in (str(folder), folder, [str(folder)]):
        report = validate(paths, verify_key=str(pub))
        assert report.passed and len(report.checks) == len(reference.checks), report.summary
    go = preflight(str(folder), PreflightOptions(runs=2, warmup=1), verify_key=str(pub))
    assert go.passed, go.summary


def test_synthetic_weights_built_in_two_threads_are_the_seeds_weights():
    """Before (measured): `verify_export` called from two threads at once (resnet18 and mobilenet_v3_small, seed 0)
    reported "all pairs agree" for both, but each folder's weights were neither model's synthetic:0 weights:
    `verify artifact --rebuild` failed both ("the rebuilt model's weights have sha256 9ef3b082c0a8…, the manifest
    060abb501128…"). The two seeded inits and calibrations interleave on torch's global RNG: 4 of 4 digests wrong
    over two runs of this test's race. Expected: the same digests as one build at a time."""
    import threading

    from exporter import weights

    backbones = ("resnet18", "mobilenet_v3_small")
    try:
        alone = {b: weights.synthetic_weights(b, 0).sha256 for b in backbones}
        weights._synthetic_state_dict.cache_clear()
        together = {}
        threads = [threading.Thread(target=lambda b=b: together.__setitem__(b, weights.synthetic_weights(b, 0).sha256))
                   for b in backbones]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        weights._synthetic_state_dict.cache_clear()  # never leave wrong weights for the next test
    assert together == alone


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_a_full_disk_while_torch_writes_an_archive_is_an_oserror_not_the_end_of_the_process(fmt, tmp_path):
    """Before (measured on a 3 MB tmpfs): torch.jit.save and torch.export.save ended the whole process on a full
    disk (std::terminate from inline_container.cc, exit 134): no line, no cleanup. The archive is now written to
    memory first and its bytes by Python, whose ENOSPC is an OSError the staged folder reports (/dev/full: every
    write fails with ENOSPC)."""
    import errno

    import torch

    from exporter.export import ExportOptions, export_model
    from exporter.formats import ExportContext, get_format
    from verify.pipeline.stages import CellRequest, build_stage, plan_cell
    from verify.settings import RunSettings

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    request = CellRequest(ModelSpec("resnet18", "frozen", "body"), RunSettings(shape=(1, 3, 32, 32), samples=1),
                          ExportOptions(formats=(fmt,)))
    build = build_stage(request, plan_cell(request), child=None)
    context = ExportContext(build.built, torch.from_numpy(build.named[0].array), build.eager.meta, dynamic=True)
    with pytest.raises(OSError) as caught:
        get_format(fmt).export(context, request.export.options_for(fmt), Path("/dev/full"))
    assert caught.value.errno == errno.ENOSPC
    export_model(build.built, build.eager.meta, context.example, tmp_path, request.export, fmt, context)
    assert (tmp_path / get_format(fmt).filename).stat().st_size > 0  # the same export, on a disk with room
