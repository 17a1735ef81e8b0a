"""A content-addressed cache for built weights, exported files and cell results.

Layout under the root (`user_cache_dir("backbone-verify")`, `$BACKBONE_VERIFY_CACHE_DIR` or `--cache-dir`):
    v1/blobs/ab/<sha256>              file contents, named by their own hash
    v1/entries/<kind>/ab/<key>.json   what a key maps to: data and {file name: blob hash}; self-checksummed
    v1/locks/<key>.lock               so two workers compute one key once
A key is the sha256 of everything that determines the result plus the environment (versions of python,
torch, torchvision, numpy, onnx, onnxruntime, onnxscript, this project's version and a hash of its source).
Every write is a temporary file in the target's own folder, fsynced, then `os.replace`d; every read
re-hashes what it returns, and an entry or blob that fails is deleted and reported as a miss, never used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import enum
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from exporter.errors import UsageError

APP_NAME = "backbone-verify"
ENV_DIR = "BACKBONE_VERIFY_CACHE_DIR"
"""Overrides the platform's cache folder (tests point it at a temporary folder)."""
ENV_OFF = "BACKBONE_VERIFY_NO_CACHE"
"""Any non-empty value but 0 turns the cache off, as --no-cache does (export and matrix)."""
LAYOUT = "v1"
ENTRY_SCHEMA = "backbone-verify/cache-entry"
CHUNK = 1 << 20


def default_cache_dir() -> Path:
    """$BACKBONE_VERIFY_CACHE_DIR, else the platform's user cache folder (honours $XDG_CACHE_HOME)."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir(APP_NAME, appauthor=False))


def cache_disabled_by_env() -> bool:
    return os.environ.get(ENV_OFF, "") not in ("", "0")


def default_cache() -> Cache | None:
    """The cache commands use unless told otherwise; None when $BACKBONE_VERIFY_NO_CACHE is set."""
    return None if cache_disabled_by_env() else Cache(default_cache_dir())


def open_cache(cache_dir: Path | None = None, no_cache: bool = False) -> Cache | None:
    """What a command's --cache-dir / --no-cache ask for: none, that folder, or the default (which
    $BACKBONE_VERIFY_NO_CACHE turns off)."""
    if no_cache:
        return None
    return Cache(cache_dir) if cache_dir is not None else default_cache()


def canonical(value: Any) -> Any:
    """A JSON-able, order-independent form of settings: dataclasses by field, paths as text."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"__type__": type(value).__name__,
                **{f.name: canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, enum.Enum):
        return canonical(value.value)
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cannot make a cache key from a {type(value).__name__}")


def canonical_json(value: Any) -> str:
    return json.dumps(canonical(value), sort_keys=True, separators=(",", ":"), allow_nan=True)


def digest(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            sha.update(chunk)
    return sha.hexdigest()


@lru_cache(maxsize=1)
def environment() -> dict[str, str]:
    """What else shapes a result: library versions and this project's exact code."""
    from importlib import metadata

    from verify.report import versions

    env = dict(versions())
    try:
        env["backbone-verify"] = metadata.version(APP_NAME)
    except metadata.PackageNotFoundError:
        env["backbone-verify"] = "unknown"
    env["source"] = source_hash()
    return env


def source_hash() -> str:
    """sha256 over this project's Python sources: an edit invalidates every entry, not a release only."""
    sha = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent
    for package in ("exporter", "verify"):
        for path in sorted((root / package).rglob("*.py")):
            sha.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return sha.hexdigest()


@dataclass
class CacheStats:
    """Per kind (`weights`, `export`, `result`): how many lookups hit, missed, found a corrupt entry, stored."""

    hits: dict[str, int] = field(default_factory=dict)
    misses: dict[str, int] = field(default_factory=dict)
    corrupt: dict[str, int] = field(default_factory=dict)
    stores: dict[str, int] = field(default_factory=dict)

    def count(self, what: str, kind: str) -> None:
        bucket = getattr(self, what)
        bucket[kind] = bucket.get(kind, 0) + 1

    def add(self, other: CacheStats | Mapping[str, Mapping[str, int]]) -> None:
        data = other.to_dict() if isinstance(other, CacheStats) else other
        for what in ("hits", "misses", "corrupt", "stores"):
            bucket = getattr(self, what)
            for kind, n in data.get(what, {}).items():
                bucket[kind] = bucket.get(kind, 0) + int(n)

    def to_dict(self) -> dict[str, dict[str, int]]:
        return {"hits": dict(self.hits), "misses": dict(self.misses), "corrupt": dict(self.corrupt),
                "stores": dict(self.stores)}


@dataclass
class Entry:
    """A verified cache entry: its data, and its files (blobs whose hashes were just checked)."""

    kind: str
    key: str
    data: dict[str, Any]
    files: dict[str, dict[str, Any]]
    cache: Cache

    def blob(self, name: str) -> Path:
        return self.cache.blob_path(self.files[name]["sha256"])

    def read_bytes(self, name: str) -> bytes:
        """The file's bytes, hashed again as they are read."""
        data = self.blob(name).read_bytes()
        if hashlib.sha256(data).hexdigest() != self.files[name]["sha256"]:
            raise CorruptEntry(f"{name} changed after it was verified")
        return data

    def copy_to(self, name: str, dest: Path) -> Path:
        """Copy the file out (never a link: the copy may be edited, the blob must not be)."""
        sha = hashlib.sha256()
        with open(self.blob(name), "rb") as src, open(dest, "wb") as out:
            for chunk in iter(lambda: src.read(CHUNK), b""):
                sha.update(chunk)
                out.write(chunk)
        if sha.hexdigest() != self.files[name]["sha256"]:
            dest.unlink(missing_ok=True)
            raise CorruptEntry(f"{name} changed after it was verified")
        return dest


class CorruptEntry(Exception):
    """A blob or entry whose bytes are not what was stored (internal: it becomes a miss)."""


class Cache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()
        self.base = self.root / LAYOUT
        self.stats = CacheStats()

    # paths -----------------------------------------------------------------------------------
    def blob_path(self, sha: str) -> Path:
        return self.base / "blobs" / sha[:2] / sha

    def entry_path(self, kind: str, key: str) -> Path:
        return self.base / "entries" / kind / key[:2] / f"{key}.json"

    def key(self, kind: str, parts: Any) -> str:
        """The key of a `kind` result determined by `parts` in this environment."""
        return digest({"kind": kind, "parts": parts, "environment": environment()})

    # reading ---------------------------------------------------------------------------------
    def load(self, kind: str, key: str) -> Entry | None:
        """The entry, with every file's hash checked; None on a miss or a corrupt entry (then removed)."""
        path = self.entry_path(kind, key)
        try:
            text = path.read_text()
        except FileNotFoundError:
            self.stats.count("misses", kind)
            return None
        except OSError:
            self.stats.count("misses", kind)
            return None
        try:
            entry = self._parse(kind, key, text)
            for name, ref in entry.files.items():
                blob = self.blob_path(ref["sha256"])
                if not blob.is_file() or blob.stat().st_size != ref["size"] or file_sha256(blob) != ref["sha256"]:
                    with contextlib.suppress(OSError):
                        blob.unlink()
                    raise CorruptEntry(f"file {name} does not match its hash")
        except CorruptEntry:
            self.stats.count("corrupt", kind)
            self.stats.count("misses", kind)
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        self.stats.count("hits", kind)
        with contextlib.suppress(OSError):
            os.utime(path)  # its last use: `prune` removes the least recently used entries first
        return entry

    def _parse(self, kind: str, key: str, text: str) -> Entry:
        try:
            record = json.loads(text)
            checksum = record.pop("checksum")
            body_ok = hashlib.sha256(canonical_json(record).encode()).hexdigest() == checksum
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptEntry(f"unreadable entry: {exc}") from None
        if not body_ok or record.get("schema") != ENTRY_SCHEMA or record.get("key") != key \
                or record.get("kind") != kind or not isinstance(record.get("files"), dict):
            raise CorruptEntry("entry checksum or identity mismatch")
        return Entry(kind, key, record.get("data") or {}, record["files"], self)

    # writing ---------------------------------------------------------------------------------
    def store(self, kind: str, key: str, data: Mapping[str, Any] | None = None,
              files: Mapping[str, Path] | None = None, blobs: Mapping[str, bytes] | None = None) -> None:
        """Store `data` (JSON), files (copied) and in-memory blobs under `key`; the entry appears
        complete or not at all. A cache that cannot be written is skipped, never fatal."""
        try:
            refs = {}
            for name, path in (files or {}).items():
                refs[name] = self._put_file(Path(path))
            for name, content in (blobs or {}).items():
                refs[name] = self._put_bytes(content)
            record = {"schema": ENTRY_SCHEMA, "kind": kind, "key": key,
                      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                      "data": canonical(dict(data or {})), "files": refs}
            record["checksum"] = hashlib.sha256(canonical_json(record).encode()).hexdigest()
            self._write_atomic(self.entry_path(kind, key), json.dumps(record, sort_keys=True).encode())
        except OSError:
            return
        self.stats.count("stores", kind)

    def _put_bytes(self, content: bytes) -> dict[str, Any]:
        sha = hashlib.sha256(content).hexdigest()
        target = self.blob_path(sha)
        if not (target.is_file() and target.stat().st_size == len(content)):
            self._write_atomic(target, content)
        return {"sha256": sha, "size": len(content)}

    def _put_file(self, path: Path) -> dict[str, Any]:
        sha = file_sha256(path)
        size = path.stat().st_size
        target = self.blob_path(sha)
        if target.is_file() and target.stat().st_size == size:
            return {"sha256": sha, "size": size}
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            shutil.copyfile(path, tmp)
            _fsync_file(tmp)
            if file_sha256(tmp) != sha:  # the source changed while we copied it
                raise OSError("source changed while copying")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(target.parent)
        return {"sha256": sha, "size": size}

    @staticmethod
    def _write_atomic(target: Path, content: bytes) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(target.parent)

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Held while one process computes `key`, so a parallel worker waits and then reads it."""
        try:
            folder = self.base / "locks"
            folder.mkdir(parents=True, exist_ok=True)
            handle = open(folder / f"{key}.lock", "w")
        except OSError:
            yield  # a read-only cache still runs, just without the lock
            return
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # maintenance -----------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        entries: dict[str, int] = {}
        for path in (self.base / "entries").glob("*/*/*.json"):
            kind = path.parent.parent.name
            entries[kind] = entries.get(kind, 0) + 1
        blobs = [p for p in (self.base / "blobs").glob("*/*") if p.is_file() and not p.name.startswith(".")]
        size = sum(p.stat().st_size for p in self.base.rglob("*") if p.is_file()) if self.base.exists() else 0
        return {"root": str(self.root), "layout": LAYOUT, "entries": entries, "blobs": len(blobs), "bytes": size}

    def prune(self, max_bytes: int, grace_seconds: float = 600.0) -> tuple[int, int]:
        """Remove the least recently used entries (by their last hit or store) until the cache holds at most
        `max_bytes`, each with the files no remaining entry names; files no entry names at all go first
        (but not those younger than `grace_seconds`: a store in progress writes its files before its entry).
        Returns (entries removed, bytes freed)."""
        import time

        entries, refs = [], {}
        for path in (self.base / "entries").glob("*/*/*.json"):
            try:
                files = json.loads(path.read_text()).get("files") or {}
                shas = {ref["sha256"] for ref in files.values()}
                stat = path.stat()
            except (OSError, ValueError, TypeError, KeyError, AttributeError):
                shas, stat = set(), None  # unreadable: removed first, it could never be used
            entries.append((stat.st_mtime if stat else float("-inf"), path, shas, stat.st_size if stat else 0))
            for sha in shas:
                refs[sha] = refs.get(sha, 0) + 1
        total, freed, removed = self.info()["bytes"], 0, 0

        def drop(path: Path) -> int:
            try:
                size = path.stat().st_size
                path.unlink()
            except OSError:
                return 0
            return size

        now = time.time()
        for blob in (self.base / "blobs").glob("*/*"):
            with contextlib.suppress(OSError):
                if blob.is_file() and blob.name not in refs and now - blob.stat().st_mtime > grace_seconds:
                    freed += drop(blob)
        for _, path, shas, _size in sorted(entries, key=lambda item: item[0]):
            if total - freed <= max_bytes:
                break
            freed += drop(path)
            removed += 1
            for sha in shas:
                refs[sha] -= 1
                if refs[sha] == 0:
                    freed += drop(self.blob_path(sha))
        return removed, freed

    def clear(self) -> int:
        """Remove this cache's own folder (never anything else under the root); returns bytes freed."""
        if not self.base.exists():
            return 0
        if self.base.is_symlink() or not self.base.is_dir():
            raise UsageError(f"{self.base} is not a cache folder made by this tool; remove it by hand")
        size = self.info()["bytes"]
        retired = self.root / f".{LAYOUT}.retired-{uuid.uuid4().hex[:8]}"
        os.rename(self.base, retired)  # readers see the whole cache or none of it
        shutil.rmtree(retired, ignore_errors=True)
        return size


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
