"""The cache is an input, not a trusted store (issue 14, item 3): whoever can write the cache folder (a CI
cache restored from another branch or a fork) writes entries as they like. Each case below is a crafted
cache; none may delete or change anything outside the cache root, hang, crash, run planted code, or put
files into an export folder that this run did not make or check. Entries are forged with a correct
self-checksum throughout (it guards against accidents only: an attacker recomputes it)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from verify.cache import ENTRY_SCHEMA, LAYOUT, MAX_ENTRY_BYTES, Cache, canonical_json
from verify.cli import app

SHAPE = (1, 3, 32, 32)
SHAPE_TEXT = "x".join(map(str, SHAPE))
HANG_SECONDS = 60
"""A call on a crafted cache that has not returned by then is hanging (each finishes in well under 1 s)."""
runner = CliRunner()


# Helpers -------------------------------------------------------------------------------------
class Outside:
    """Files outside the cache root that no cache operation may remove or change."""

    def __init__(self, tmp_path: Path) -> None:
        self.folder = tmp_path / "outside"
        self.folder.mkdir()
        self.file = self.folder / "keep.txt"
        self.file.write_text("precious, not the cache's")
        self.snapshot = self._state()

    def _state(self) -> dict[str, tuple[bytes, int]]:
        return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(self.folder.rglob("*")) if p.is_file()}

    def unchanged(self) -> bool:
        return self._state() == self.snapshot


@pytest.fixture
def outside(tmp_path) -> Outside:
    return Outside(tmp_path)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def forge_entry(cache: Cache, kind: str, key: str, files: dict, data: dict | None = None) -> Path:
    """Write an entry as an attacker would: any names, a correct self-checksum."""
    record = {"schema": ENTRY_SCHEMA, "kind": kind, "key": key, "created": "2020-01-01T00:00:00+00:00",
              "data": data or {}, "files": files}
    record["checksum"] = hashlib.sha256(canonical_json(record).encode()).hexdigest()
    path = cache.base / "entries" / kind / key[:2] / f"{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


def plant_blob(cache: Cache, content: bytes, name: str | None = None) -> Path:
    name = name or sha(content)
    path = cache.base / "blobs" / name[:2] / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def returns_within(call, seconds: float = HANG_SECONDS):
    """`call()`'s result, failing the test if it has not returned in `seconds` (a FIFO opened for reading
    blocks forever: the thread is a daemon so a failure does not hang the suite too)."""
    box: dict = {}

    def target():
        try:
            box["value"] = call()
        except BaseException as exc:  # re-raised in the test's thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s: it hangs"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


# Names that are paths --------------------------------------------------------------------------
@pytest.mark.parametrize("name", [
    "ABSOLUTE",                      # the outside file's absolute path
    "../../outside/keep.txt",        # `..` as the blob's folder, then up from v1/ to the outside file
    "ab/" + "../" * 5 + "outside/keep.txt",  # from blobs/ab/ab/ up to the same file
    "A" * 64,                        # upper case: not how a digest is written here
    "a" * 63,                        # one short
    "a" * 64 + "\n",                 # a digest and a newline
])
def test_a_blob_name_that_is_not_a_digest_is_a_miss_and_removes_nothing(tmp_path, outside, name):
    cache = Cache(tmp_path / "c")
    (cache.base / "blobs" / "ab" / "ab").mkdir(parents=True)  # the writer makes the folders a path climbs
    key = cache.key("result", {"case": name})
    name = str(outside.file) if name == "ABSOLUTE" else name
    forge_entry(cache, "result", key, {"model.onnx": {"sha256": name, "size": outside.file.stat().st_size}})
    assert cache.load("result", key) is None
    assert cache.stats.corrupt == {"result": 1} and cache.stats.hits == {}
    assert outside.unchanged()
    assert not cache.entry_path("result", key).exists()  # the forged entry is gone, inside the root


@pytest.mark.parametrize("file_name", ["../../escape.onnx", "/tmp/escape.onnx", ".hidden", "a/b.onnx", ""])
def test_an_entry_file_name_that_is_a_path_is_refused(tmp_path, outside, file_name):
    """A file name in an entry becomes a path in the export folder: only plain names are accepted."""
    cache = Cache(tmp_path / "c")
    key = cache.key("export", {"case": file_name})
    content = b"a valid blob"
    plant_blob(cache, content)
    forge_entry(cache, "export", key, {file_name: {"sha256": sha(content), "size": len(content)}})
    assert cache.load("export", key) is None and cache.stats.corrupt == {"export": 1}
    assert outside.unchanged()


# Links and special files inside the cache ----------------------------------------------------------
def test_a_blob_that_is_a_link_out_of_the_root_is_never_read(tmp_path, outside):
    """The link's target even has the right content (its hash is the blob's name): still not a blob."""
    cache = Cache(tmp_path / "c")
    content = outside.file.read_bytes()
    key = cache.key("result", {"link": 1})
    link = cache.blob_path(sha(content))
    link.parent.mkdir(parents=True)
    link.symlink_to(outside.file)
    forge_entry(cache, "result", key, {"f": {"sha256": sha(content), "size": len(content)}})
    assert cache.load("result", key) is None and cache.stats.corrupt == {"result": 1}
    assert not os.path.lexists(link)  # the link itself removed, inside the root
    assert outside.unchanged()


def test_folders_that_are_links_out_of_the_root_are_not_written_or_read(tmp_path, outside):
    """`blobs/<xx>` and `entries/result` planted as links to an outside folder: a store writes nothing
    there (it is skipped), and an entry found through the link is not loaded."""
    cache = Cache(tmp_path / "c")
    content = b"what a store would write"
    (cache.base / "blobs").mkdir(parents=True)
    (cache.base / "blobs" / sha(content)[:2]).symlink_to(outside.folder, target_is_directory=True)
    key = cache.key("result", {"n": 1})
    cache.store("result", key, data={"x": 1}, blobs={"f": content})
    assert cache.stats.stores == {} and outside.unchanged()

    elsewhere = Cache(outside.folder / "c")
    elsewhere.store("result", key, data={"planted": True})
    outside.snapshot = outside._state()  # the planted entry is part of what must stay as it is
    (cache.base / "entries").mkdir(parents=True)
    (cache.base / "entries" / "result").symlink_to(elsewhere.base / "entries" / "result", target_is_directory=True)
    assert cache.load("result", key) is None and cache.stats.hits == {}
    assert outside.unchanged()


def test_a_lock_file_that_is_a_link_does_not_truncate_its_target(tmp_path, outside):
    cache = Cache(tmp_path / "c")
    key = cache.key("export", {"lock": 1})
    (cache.base / "locks").mkdir(parents=True)
    (cache.base / "locks" / f"{key}.lock").symlink_to(outside.file)
    with cache.lock(key):  # runs without the lock rather than open the link
        pass
    assert outside.unchanged()


@pytest.mark.parametrize("where", ["blob", "entry", "lock"])
def test_a_fifo_or_a_link_to_a_device_in_the_cache_hangs_nothing(tmp_path, outside, where):
    """A FIFO opened for reading blocks until a writer comes; /dev/zero never ends. Loads, stores, locks,
    info, prune and clear all return, and the FIFO or link is never opened."""
    cache = Cache(tmp_path / "c")
    content = b"blob content"
    key = cache.key("result", {"fifo": where})
    cache.store("result", key, data={"v": 1}, blobs={"f": content})
    target = {"blob": cache.blob_path(sha(content)), "entry": cache.entry_path("result", key),
              "lock": cache.base / "locks" / f"{key}.lock"}[where]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    os.mkfifo(target)

    def everything():
        with cache.lock(key):
            loaded = cache.load("result", key)
        cache.store("result", cache.key("result", {"other": 1}), data={"v": 2})
        return loaded, cache.info(), cache.prune(0, grace_seconds=0), cache.clear()

    loaded, info, _, _ = returns_within(everything)
    assert (loaded is None) == (where != "lock") and info["entries"]
    zero = tmp_path / "c2"
    second = Cache(zero)
    second.store("result", key, data={"v": 1}, blobs={"f": content})
    for path in (second.blob_path(sha(content)), second.entry_path("result", key)):
        path.unlink()
        path.symlink_to("/dev/zero")
    assert returns_within(lambda: second.load("result", key)) is None
    assert outside.unchanged()


@pytest.mark.parametrize("garbage", [
    b"\xff\xfe not text", b"[]", b"null", b"{}", b"[" * 100_000 + b"]" * 100_000, b'{"checksum": 1}',
    "SIZE_AS_BOOL", "SIZE_NEGATIVE", "FILES_A_LIST", "HUGE"])
def test_a_garbage_entry_is_a_miss_never_a_crash(tmp_path, outside, garbage):
    cache = Cache(tmp_path / "c")
    key = cache.key("result", {"garbage": str(garbage)[:40]})
    blob = b"x"
    plant_blob(cache, blob)
    if garbage in ("SIZE_AS_BOOL", "SIZE_NEGATIVE", "FILES_A_LIST"):
        ref = {"sha256": sha(blob), "size": True if garbage == "SIZE_AS_BOOL" else -1}
        files = [ref] if garbage == "FILES_A_LIST" else {"f": ref}
        path = forge_entry(cache, "result", key, files)
    else:
        path = cache.entry_path("result", key)
        path.parent.mkdir(parents=True, exist_ok=True)
        if garbage == "HUGE":  # sparse: no disk used, but larger than any entry this tool writes
            with open(path, "wb") as handle:
                handle.truncate(MAX_ENTRY_BYTES + 1)
        else:
            path.write_bytes(garbage)
    assert returns_within(lambda: cache.load("result", key)) is None
    assert cache.stats.corrupt == {"result": 1} and not path.exists()
    assert outside.unchanged()


# prune and clear ---------------------------------------------------------------------------------
def test_prune_removes_only_files_it_validated_as_its_own(tmp_path, outside):
    """Entries naming outside files (absolute and climbing), a blob-named link to an outside file, and
    files the cache did not name as it names its own: `verify cache prune --max-size 0` removes every entry
    and blob of its own, and nothing else, inside or outside the root."""
    root = tmp_path / "c"
    cache = Cache(root)
    cache.store("result", cache.key("result", {"real": 1}), data={"v": 1}, blobs={"f": b"real blob"})
    forge_entry(cache, "result", cache.key("result", {"abs": 1}),
                {"f": {"sha256": str(outside.file), "size": 1}})
    forge_entry(cache, "result", cache.key("result", {"up": 1}),
                {"f": {"sha256": "../../outside/keep.txt", "size": 1}})
    linked = outside.file.read_bytes()
    link = cache.blob_path(sha(linked))
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside.file)
    forge_entry(cache, "result", cache.key("result", {"link": 1}),
                {"f": {"sha256": sha(linked), "size": len(linked)}})
    strangers = [cache.base / "blobs" / "ab" / "notes.txt", cache.base / "entries" / "result" / "README",
                 root / "someone-elses.txt"]
    for path in strangers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("not the cache's")
    result = invoke("cache", "prune", "--cache-dir", root, "--max-size", "0")
    assert result.exit_code == 0, result.output
    assert Cache(root).info()["entries"] == {} and Cache(root).info()["blobs"] == 0
    assert all(path.read_text() == "not the cache's" for path in strangers)
    assert outside.unchanged()


@pytest.mark.parametrize("command", ["prune", "clear"])
def test_a_cache_folder_that_is_a_link_is_refused_in_one_line(tmp_path, outside, command):
    """`v1` itself a link to an outside folder: refused (exit 2, one line saying what to do), nothing removed."""
    root = tmp_path / "c"
    root.mkdir()
    (root / LAYOUT).symlink_to(outside.folder, target_is_directory=True)
    result = invoke("cache", command, "--cache-dir", root, *(["--max-size", "0"] if command == "prune" else []))
    assert result.exit_code == 2
    assert "not a cache folder made by this tool" in one_line(result.stderr)
    assert outside.unchanged() and (root / LAYOUT).is_symlink()


def test_clear_removes_links_never_their_targets(tmp_path, outside):
    root = tmp_path / "c"
    cache = Cache(root)
    cache.store("result", cache.key("result", {}), data={"v": 1})
    (cache.base / "blobs" / "zz").parent.mkdir(parents=True, exist_ok=True)
    (cache.base / "blobs" / "zz").symlink_to(outside.folder, target_is_directory=True)
    (cache.base / "file-link").symlink_to(outside.file)
    result = invoke("cache", "clear", "--cache-dir", root)
    assert result.exit_code == 0, result.output
    assert not cache.base.exists() and outside.unchanged()


# The export cache, end to end ------------------------------------------------------------------------
def export_context(seed: int = 0, formats: tuple[str, ...] = ("onnx",)):
    """This run's export options and the context `finish_cell` gives the exporters (so a test can forge an
    entry under exactly the key a lookup would use)."""
    import torch

    from exporter.export import ExportOptions
    from exporter.formats import ExportContext
    from exporter.formats.onnx import OnnxOptions
    from exporter.spec import ModelSpec
    from verify.api import RunSettings
    from verify.pipeline.stages import CellRequest, build_stage, plan_cell

    options = ExportOptions(formats=formats, format_options=(OnnxOptions("torchscript"),) if "onnx" in formats else ())
    request = CellRequest(ModelSpec("resnet18", "frozen", "body"), RunSettings(shape=SHAPE, seed=seed), options)
    build = build_stage(request, plan_cell(request))
    context = ExportContext(build.built, torch.from_numpy(build.named[0].array), build.eager.meta,
                            dynamic=options.dynamic)
    return options, context


def run_export(out: Path, cache: Cache | None, seed: int = 0, formats: tuple[str, ...] = ("onnx",),
               sign_key: Path | None = None):
    from exporter.export import ExportOptions
    from exporter.formats.onnx import OnnxOptions
    from exporter.spec import ModelSpec
    from verify.api import RunSettings, verify_export

    options = ExportOptions(formats=formats, format_options=(OnnxOptions("torchscript"),) if "onnx" in formats else ())
    return verify_export(ModelSpec("resnet18", "frozen", "body"), RunSettings(shape=SHAPE, seed=seed), out=out,
                         export=options, cache=cache, sign_key=sign_key)


def folder_of(out: Path) -> Path:
    return out / "resnet18-frozen-body"


def manifest(out: Path) -> dict:
    return json.loads((folder_of(out) / "manifest.json").read_text())


@pytest.fixture(scope="module")
def onnx_exports(module_tmp):
    """resnet18 at 1x3x32x32 exported to ONNX with seed 0 and seed 1: the honest files (seed 1's uncached; seed 0's
    into an empty cache of its own, which `filled_cache` hands out copies of)."""
    out = module_tmp("honest")
    cache = Cache(module_tmp("filled") / "c")
    first = run_export(out / "0", cache, 0)
    run_export(out / "1", None, 1)
    return {0: folder_of(out / "0") / "model.onnx", 1: folder_of(out / "1") / "model.onnx", "cache": cache,
            "first": first}


def filled_cache(onnx_exports, root: Path) -> Cache:
    """A copy at `root` of the cache seed 0's honest export filled (a test changes its files)."""
    import shutil

    shutil.copytree(onnx_exports["cache"].root, root, symlinks=True)
    return Cache(root)


def forge_export(cache: Cache, seed: int, fmt: str, name: str, content: bytes, formats=("onnx",)) -> str:
    from verify.pipeline.stages import export_key

    options, context = export_context(seed, formats)
    key = export_key(cache, context, fmt, options)
    plant_blob(cache, content)
    forge_entry(cache, "export", key, {name: {"sha256": sha(content), "size": len(content)}}, {"format": fmt})
    return key


def test_swapped_weights_under_the_weights_key_are_never_used(tmp_path, outside):
    """A weights entry holding seed 1's tensors under seed 0's key (as the weights cache stored them): the
    folder is labelled synthetic:0 and holds synthetic:0's weights, computed in this run."""
    from safetensors.torch import save

    from exporter.weights import load_weights

    root = tmp_path / "c"
    cache = Cache(root)
    other, mine = load_weights("synthetic", "resnet18", 1), load_weights("synthetic", "resnet18", 0)
    blob = save({f"sd.{k}": v.contiguous() for k, v in other.state_dict.items()})
    key = cache.key("weights", {"source": "synthetic", "backbone": "resnet18", "seed": 0})
    plant_blob(cache, blob)
    forge_entry(cache, "weights", key, {"weights.safetensors": {"sha256": sha(blob), "size": len(blob)}},
                {"source": "synthetic:0"})
    result = invoke("export", "-b", "resnet18", "--shape", SHAPE_TEXT, "--format", "onnx", "--onnx-exporter",
                    "torchscript", "--cache-dir", root, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    model = manifest(tmp_path / "out")["model"]
    assert model["weights"] == "synthetic:0" and model["weights_sha256"] == mine.sha256 != other.sha256
    assert outside.unchanged()


class Payload:
    """Unpickling this writes a file: what a crafted model.pt / model.pt2 carries."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('payload ran')",))


def test_planted_code_executing_files_are_never_copied_loaded_or_signed(tmp_path, outside):
    """Pickle payloads planted as model.pt and model.pt2 under exactly this run's export keys: the export
    never reads them (the payload does not run), the folder holds files this run exported, and nothing
    code-executing is stored in the cache. Control: the same bytes do run when torch unpickles them."""
    import torch

    ran = tmp_path / "payload-ran"
    payload = tmp_path / "payload.pt"
    torch.save({"weights": Payload(ran)}, payload)
    content = payload.read_bytes()
    cache = Cache(tmp_path / "c")
    formats = ("torchscript", "pt2")
    for fmt, name in (("torchscript", "model.pt"), ("pt2", "model.pt2")):
        forge_export(cache, 0, fmt, name, content, formats)
    report = run_export(tmp_path / "out", cache, formats=formats)
    assert report.passed and not ran.exists()
    assert cache.stats.hits == {} and cache.stats.stores == {}
    for name in ("model.pt", "model.pt2"):
        assert (folder_of(tmp_path / "out") / name).read_bytes() != content
    torch.load(payload, weights_only=False)  # the control: these bytes are a live payload
    assert ran.read_text() == "payload ran"
    assert outside.unchanged()


def test_a_truncated_onnx_blob_is_a_miss_and_the_export_is_rebuilt(tmp_path, onnx_exports):
    first = onnx_exports["first"]  # this run's export into an empty cache, shared with the FIFO case below
    assert first.passed and onnx_exports["cache"].stats.stores == {"export": 1}
    cache = filled_cache(onnx_exports, tmp_path / "c")
    (blob,) = [p for p in (cache.base / "blobs").rglob("*") if p.is_file()]
    blob.write_bytes(blob.read_bytes()[: blob.stat().st_size // 2])
    again = Cache(tmp_path / "c")
    second = run_export(tmp_path / "b", again)
    assert second.passed and again.stats.corrupt == {"export": 1} and again.stats.hits == {}
    assert (folder_of(tmp_path / "b") / "model.onnx").read_bytes() == onnx_exports[0].read_bytes()


def test_another_models_onnx_under_this_key_is_rejected_and_rebuilt(tmp_path, onnx_exports):
    """Seed 1's valid ONNX file, planted under seed 0's key with a consistent entry: its own metadata names
    other weights, so it is refused (counted corrupt) and this run exports its own."""
    cache = Cache(tmp_path / "c")
    forge_export(cache, 0, "onnx", "model.onnx", onnx_exports[1].read_bytes())
    report = run_export(tmp_path / "out", cache)
    assert report.passed and cache.stats.corrupt == {"export": 1} and cache.stats.hits == {}
    assert (folder_of(tmp_path / "out") / "model.onnx").read_bytes() == onnx_exports[0].read_bytes()


def test_another_models_onnx_relabelled_as_this_one_is_judged_and_fails(tmp_path, onnx_exports):
    """Seed 1's graph with seed 0's metadata copied in: nothing in the file tells it apart, so it is used,
    and then run and judged like any file: it disagrees with this run's model (exit 1), never a pass."""
    import onnx

    from exporter.artifacts import META_KEY

    honest, other = onnx.load(str(onnx_exports[0])), onnx.load(str(onnx_exports[1]))
    del other.metadata_props[:]
    other.metadata_props.extend(honest.metadata_props)
    assert {p.key for p in other.metadata_props} == {META_KEY}
    cache = Cache(tmp_path / "c")
    forge_export(cache, 0, "onnx", "model.onnx", other.SerializeToString())
    root = tmp_path / "c"
    result = invoke("export", "-b", "resnet18", "--shape", SHAPE_TEXT, "--format", "onnx", "--onnx-exporter",
                    "torchscript", "--cache-dir", root, "--out", tmp_path / "out")
    assert result.exit_code == 1 and "disagree" in result.stdout, result.output


def test_an_onnx_entry_with_extra_files_is_rejected(tmp_path, outside, onnx_exports):
    """The right ONNX file plus a second file the format never writes (e.g. a shared library to drop beside
    it): the entry is not this format's export, nothing of it reaches the folder."""
    from verify.pipeline.stages import export_key

    cache = Cache(tmp_path / "c")
    options, context = export_context(0)
    key = export_key(cache, context, "onnx", options)
    good, extra = onnx_exports[0].read_bytes(), b"\x7fELF not really"
    plant_blob(cache, good)
    plant_blob(cache, extra)
    forge_entry(cache, "export", key, {"model.onnx": {"sha256": sha(good), "size": len(good)},
                                       "libcustom.so": {"sha256": sha(extra), "size": len(extra)}})
    report = run_export(tmp_path / "out", cache)
    assert report.passed and cache.stats.corrupt == {"export": 1}
    assert sorted(p.name for p in folder_of(tmp_path / "out").iterdir() if p.name.startswith(("model", "lib"))) \
        == ["model.onnx"]
    assert outside.unchanged()


def test_a_fifo_blob_and_lock_do_not_hang_an_export(tmp_path, onnx_exports):
    """After a first export fills the cache, its ONNX blob and its lock become FIFOs: the next export
    finishes, exporting again."""
    root = tmp_path / "c"
    cache = filled_cache(onnx_exports, root)
    (blob,) = [p for p in (cache.base / "blobs").rglob("*") if p.is_file()]
    blob.unlink()
    os.mkfifo(blob)
    for lock in (cache.base / "locks").iterdir():
        lock.unlink()
        os.mkfifo(lock)
    result = returns_within(lambda: invoke("export", "-b", "resnet18", "--shape", SHAPE_TEXT, "--format", "onnx",
                                           "--onnx-exporter", "torchscript", "--cache-dir", root,
                                           "--out", tmp_path / "b"), 300)
    assert result.exit_code == 0, result.output


def test_a_signed_folder_takes_nothing_from_the_cache(tmp_path, onnx_exports):
    """A signature says this run made the files: with --sign-key the export cache is neither read nor
    written, even when it holds this very export."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = tmp_path / "ci.pem"
    key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    cache = Cache(tmp_path / "c")
    forge_export(cache, 0, "onnx", "model.onnx", onnx_exports[0].read_bytes())  # an honest entry
    report = run_export(tmp_path / "out", cache, sign_key=key)
    assert report.passed and cache.stats.to_dict() == {"hits": {}, "misses": {}, "corrupt": {}, "stores": {}}
