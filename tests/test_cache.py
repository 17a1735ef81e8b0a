"""The content-addressed cache: keys, atomic entries, corruption detected and rebuilt, never trusted."""

import os

import pytest

from verify.cache import ENV_DIR, ENV_OFF, Cache, canonical, default_cache, default_cache_dir, environment


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    """Nothing here may write to the user's real cache folder."""
    monkeypatch.setenv(ENV_DIR, str(tmp_path / "cache"))
    monkeypatch.delenv(ENV_OFF, raising=False)


def flip_byte(path, offset=None):
    data = bytearray(path.read_bytes())
    index = len(data) // 2 if offset is None else offset
    data[index] ^= 0x01
    path.write_bytes(bytes(data))


def test_default_location_honours_env_and_xdg(tmp_path, monkeypatch):
    assert default_cache_dir() == tmp_path / "cache"
    monkeypatch.delenv(ENV_DIR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "backbone-verify"
    monkeypatch.setenv(ENV_OFF, "1")
    assert default_cache() is None


def test_key_depends_on_every_part_and_on_the_environment():
    cache = Cache(default_cache_dir())
    base = {"spec": "resnet18:frozen:body", "seed": 0, "options": {"opset": 18}}
    key = cache.key("export", base)
    assert key == cache.key("export", dict(reversed(list(base.items()))))  # order does not matter
    assert key != cache.key("result", base)
    assert key != cache.key("export", {**base, "seed": 1})
    assert key != cache.key("export", {**base, "options": {"opset": 17}})
    env = environment()
    for package in ("torch", "torchvision", "onnxruntime", "backbone-verify", "source"):
        assert package in env


def test_canonical_refuses_what_it_cannot_pin():
    with pytest.raises(TypeError):
        canonical(object())


def test_store_then_load_round_trips_data_files_and_blobs(tmp_path):
    cache = Cache(tmp_path / "c")
    src = tmp_path / "model.bin"
    src.write_bytes(os.urandom(10_000))
    key = cache.key("export", {"x": 1})
    cache.store("export", key, data={"meta": "m"}, files={"model.bin": src}, blobs={"extra.txt": b"hello"})
    entry = cache.load("export", key)
    assert entry is not None and entry.data == {"meta": "m"}
    assert entry.read_bytes("extra.txt") == b"hello"
    out = entry.copy_to("model.bin", tmp_path / "copy.bin")
    assert out.read_bytes() == src.read_bytes()
    assert cache.stats.hits == {"export": 1} and cache.stats.stores == {"export": 1}
    assert not list((tmp_path / "c").rglob("*.tmp"))  # no temporary file left behind


def test_identical_content_is_stored_once(tmp_path):
    cache = Cache(tmp_path / "c")
    for i in range(2):
        cache.store("export", cache.key("export", {"i": i}), blobs={"f": b"same bytes"})
    assert cache.info()["blobs"] == 1 and cache.info()["entries"] == {"export": 2}


@pytest.mark.parametrize("target", ["blob", "entry"])
def test_a_flipped_byte_is_detected_removed_and_rebuilt(tmp_path, target):
    cache = Cache(tmp_path / "c")
    key = cache.key("weights", {"b": "resnet18"})
    payload = os.urandom(4096)
    cache.store("weights", key, data={"source": "synthetic:0"}, blobs={"w": payload})
    if target == "blob":
        flip_byte(next(p for p in (tmp_path / "c").rglob("*") if p.is_file() and "blobs" in p.parts))
    else:
        flip_byte(cache.entry_path("weights", key), offset=40)
    assert cache.load("weights", key) is None
    assert cache.stats.corrupt == {"weights": 1} and cache.stats.misses == {"weights": 1}
    assert not cache.entry_path("weights", key).exists()  # never trusted again
    cache.store("weights", key, data={"source": "synthetic:0"}, blobs={"w": payload})
    entry = cache.load("weights", key)
    assert entry is not None and entry.read_bytes("w") == payload


def test_entry_for_another_key_is_refused(tmp_path):
    """An entry file copied under another key's name (a bad sync, a rename) does not answer for it."""
    cache = Cache(tmp_path / "c")
    first, second = cache.key("result", {"a": 1}), cache.key("result", {"a": 2})
    cache.store("result", first, data={"verdict": "agree"})
    path = cache.entry_path("result", second)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(cache.entry_path("result", first).read_text())
    assert cache.load("result", second) is None and cache.stats.corrupt == {"result": 1}


def test_clear_removes_only_its_own_folder(tmp_path):
    root = tmp_path / "shared"
    (root).mkdir()
    (root / "someone-elses.txt").write_text("keep")
    cache = Cache(root)
    cache.store("result", cache.key("result", {}), data={"ok": True})
    assert cache.clear() > 0
    assert (root / "someone-elses.txt").read_text() == "keep"
    assert cache.info()["entries"] == {}


def test_verify_export_takes_only_onnx_from_the_cache(tmp_path, monkeypatch):
    """The second export of the same cell copies the ONNX file (data, run and judged again) from the cache;
    TorchScript, whose loading runs code, is exported again; the reports' figures are the same."""
    import exporter.export
    from exporter.export import ExportOptions
    from exporter.formats.onnx import OnnxOptions
    from exporter.spec import ModelSpec
    from verify.api import RunSettings, verify_export
    from verify.pipeline.overlap import MODE_ENV

    options = ExportOptions(formats=("torchscript", "onnx"), format_options=(OnnxOptions("torchscript"),))
    settings = RunSettings(shape=(1, 3, 32, 32))
    # the same torch threads in both exports: mode auto decides on the machine's load, and a background export leaves
    # this process one thread fewer, whose float32 rounding differs (flaky without xdist on a loaded machine)
    monkeypatch.setenv(MODE_ENV, "off")

    def export(out):
        report = verify_export(ModelSpec("resnet18", "frozen", "body"), settings, out=out, export=options)
        figures = {(p.a, p.b, o.name): (o.max_abs, o.floor) for p in report.pairs for o in p.outputs}
        return report, figures

    first, first_figures = export(tmp_path / "a")
    assert Cache(default_cache_dir()).info()["entries"] == {"export": 1}  # no weights: computed every time

    real, exported = exporter.export.export_model, []

    def only_torchscript(built, base, example, folder, options, fmt, context=None):
        assert fmt != "onnx", "ONNX exported again instead of read from the cache"
        exported.append(fmt)
        return real(built, base, example, folder, options, fmt, context)

    monkeypatch.setattr(exporter.export, "export_model", only_torchscript)
    second, second_figures = export(tmp_path / "b")
    assert exported == ["torchscript"] and second.passed
    assert second_figures == first_figures
    # the folder holds a copy: editing it leaves the cache intact
    assert (tmp_path / "b" / "resnet18-frozen-body" / "model.onnx").read_bytes() == \
        (tmp_path / "a" / "resnet18-frozen-body" / "model.onnx").read_bytes()


def test_export_cache_options_choose_the_folder_or_none(tmp_path):
    """`verify export --cache-dir D` stores in D (not the default folder); `--no-cache` stores nowhere; a
    --cache-dir that is a file is refused before any work."""
    from typer.testing import CliRunner

    from verify.cli import app

    runner = CliRunner()
    args = ["export", "-b", "resnet18", "--shape", "1x3x32x32", "--format", "onnx", "--onnx-exporter", "torchscript"]
    mine = tmp_path / "mine"
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "a"), "--cache-dir", str(mine)])
    assert result.exit_code == 0, result.output
    assert Cache(mine).info()["entries"] == {"export": 1}
    assert Cache(default_cache_dir()).info()["entries"] == {}

    result = runner.invoke(app, [*args, "--out", str(tmp_path / "b"), "--no-cache"])
    assert result.exit_code == 0, result.output
    assert Cache(default_cache_dir()).info()["entries"] == {}

    (tmp_path / "file").write_text("not a folder")
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "c"), "--cache-dir", str(tmp_path / "file")])
    assert result.exit_code == 2 and "file" in result.output and not (tmp_path / "c").exists()


def test_prune_removes_the_least_recently_used_entries_and_only_their_files(tmp_path):
    """Three entries of 100 kB each, the oldest store first; the oldest is then read again (a hit marks it
    used); a prune to a bit over two entries removes the one least recently used and its file, keeps a file
    that a kept entry shares, and every kept entry still loads."""
    import time

    cache = Cache(tmp_path / "c")
    keys = [cache.key("export", {"i": i}) for i in range(3)]
    shared = b"shared by all three"
    for i, key in enumerate(keys):
        cache.store("export", key, blobs={"own": os.urandom(100_000), "shared": shared})
        os.utime(cache.entry_path("export", key), (time.time() - 100 + i, time.time() - 100 + i))
    own = {key: cache.load("export", key).blob("own") for key in keys}  # (these loads touch every entry)
    for i, key in enumerate(keys):
        os.utime(cache.entry_path("export", key), (time.time() - 100 + i, time.time() - 100 + i))
    assert cache.load("export", keys[0]) is not None  # the oldest store, used now: no longer the least recent
    before = cache.info()["bytes"]
    removed, freed = cache.prune(before - 50_000)
    assert removed == 1 and freed >= 100_000 and cache.info()["bytes"] <= before - 50_000
    assert cache.load("export", keys[1]) is None and not own[keys[1]].exists()  # least recently used: gone
    for key in (keys[0], keys[2]):
        entry = cache.load("export", key)
        assert entry is not None and entry.read_bytes("shared") == shared
    removed, _ = cache.prune(0)
    assert removed == 2 and cache.info()["entries"] == {} and cache.info()["blobs"] == 0


def test_prune_command_takes_sizes_and_refuses_what_is_not_one(tmp_path):
    from typer.testing import CliRunner

    from verify.cli import app

    cache = Cache(tmp_path / "c")
    cache.store("export", cache.key("export", {"i": 1}), blobs={"f": os.urandom(2048)})
    runner = CliRunner()
    kept = runner.invoke(app, ["cache", "prune", "--cache-dir", str(tmp_path / "c"), "--max-size", "1M"])
    assert kept.exit_code == 0 and "0 entries removed" in kept.stdout
    emptied = runner.invoke(app, ["cache", "prune", "--cache-dir", str(tmp_path / "c"), "--max-size", "0"])
    assert emptied.exit_code == 0 and "1 entries removed" in emptied.stdout and cache.info()["entries"] == {}
    bad = runner.invoke(app, ["cache", "prune", "--max-size", "lots"])
    assert bad.exit_code == 2 and "is not a size" in bad.stderr


def test_cache_info_reads_a_cache_it_may_not_write(tmp_path, monkeypatch):
    """`verify cache info` only reads: a cache folder on a read-only file system is shown, not refused as "Cannot
    write cache folder" (found by hunt 10c); the commands that write still refuse it, and a file is no folder."""
    from typer.testing import CliRunner

    from exporter import fsio
    from verify.cli import app

    Cache(tmp_path / "cache").clear()
    monkeypatch.setattr(fsio, "_can_create_in", lambda base: "Read-only file system")  # root writes anywhere here
    runner = CliRunner()
    shown = runner.invoke(app, ["cache", "info", "--cache-dir", str(tmp_path / "cache")])
    assert shown.exit_code == 0, shown.output
    assert "entries: none" in shown.output
    cleared = runner.invoke(app, ["cache", "clear", "--cache-dir", str(tmp_path / "cache")])
    assert cleared.exit_code == 2 and "Read-only file system" in cleared.output
    (tmp_path / "file").write_text("")
    refused = runner.invoke(app, ["cache", "info", "--cache-dir", str(tmp_path / "file")])
    assert refused.exit_code == 2 and "give a folder" in refused.output
