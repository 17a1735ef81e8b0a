"""A content-addressed cache for exported data files and cell results.

Layout under the root (`user_cache_dir("backbone-verify")`, `$BACKBONE_VERIFY_CACHE_DIR` or `--cache-dir`):
    v1/blobs/ab/<sha256>              file contents, named by their own hash
    v1/entries/<kind>/ab/<key>.json   what a key maps to: data and {file name: blob hash}
    v1/locks/<key>.lock               so two workers compute one key once
    v1/weights/<sha256>.safetensors   copies of synthetic weights, named by their tensors' committed digest
A key is the sha256 of everything that determines the result plus the environment (versions of python,
torch, torchvision, numpy, onnx, onnxruntime, onnxscript, this project's version and a hash of its source).

The cache is an input, not a trusted store: whoever can write the folder (a CI cache restored from another
branch or a fork's run) can write any entry. So every name read from it is checked before it becomes a path
(hex digests of the exact length, plain file names, kinds from a fixed alphabet), every path is opened one
folder at a time without following a symbolic link (O_NOFOLLOW from the root down, so nothing resolves
outside the root), only regular files are opened (a FIFO or device is never opened for reading: it would
block), every blob is hashed again as it is read and compared with its name, and anything that fails is a
miss (recomputed), never an error. An entry's own checksum only detects accidents: it proves nothing about
who wrote it. What callers take from an entry must be re-checked by them (verify/pipeline/stages.py: only data
files, which are run and judged again; nothing whose loading executes code). A copy of synthetic weights is used
only when its tensors hash to the digest committed with the code (exporter/weights.py): proven, not trusted.
Every write is a temporary file in the target's own folder, fsynced, then renamed over the target.
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
import re
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, TypeVar

from exporter.errors import UsageError

APP_NAME = "backbone-verify"
ENV_DIR = "BACKBONE_VERIFY_CACHE_DIR"
"""Overrides the platform's cache folder (tests point it at a temporary folder)."""
ENV_OFF = "BACKBONE_VERIFY_NO_CACHE"
"""Any non-empty value but 0 turns the cache off, as --no-cache does (export and matrix)."""
LAYOUT = "v1"
ENTRY_SCHEMA = "backbone-verify/cache-entry"
CHUNK = 1 << 20
HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
"""A blob's name and an entry's key: a sha256 in lower-case hex, nothing else (no path can pass)."""
KIND_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""A file name an entry may give its files: one plain name (no separator, no leading dot)."""
TMP_NAME = re.compile(r"\.[A-Za-z0-9._-]+\.\d+\.[0-9a-f]{8}\.tmp")
"""The temporary files this module writes (`.<target>.<pid>.<8 hex>.tmp`), which prune may sweep."""
RETIRED_NAME = re.compile(rf"\.{LAYOUT}\.retired-[0-9a-f]{{8}}")
"""What `clear` renames the layout folder to before removing it: one left by a killed clear is removed by the next."""
WEIGHTS = "weights"
"""The folder of synthetic weights' copies, and the kind their hits, misses and stores are counted under."""
WEIGHTS_NAME = re.compile(r"[0-9a-f]{64}\.safetensors")
OWN_FOLDERS = frozenset({"blobs", "entries", "locks", WEIGHTS})
"""What this cache writes directly inside its layout folder: anything else there is not ours to remove."""
MAX_ENTRY_BYTES = 16 << 20
"""An entry larger than this is not one this tool wrote (a cell result is a few kB): refused unread."""
LOCK_WAIT_SECONDS = 900.0
"""How long a worker waits for another's lock on a key before computing it itself: a holder that hangs (stopped,
stuck on a network mount) must not hang every run sharing the cache; writes are atomic, so both results are whole."""
LOCK_POLL_SECONDS = 0.05
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
"""O_NONBLOCK: even a FIFO that slipped past the lstat check cannot block the open."""
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def default_cache_dir() -> Path:
    """$BACKBONE_VERIFY_CACHE_DIR, else the platform's user cache folder (honours $XDG_CACHE_HOME)."""
    if os.environ.get(ENV_DIR):
        from exporter.fsio import path_kind

        path = Path(os.environ[ENV_DIR]).expanduser()
        bad = control_characters(str(path))
        if bad:  # printed by `verify cache info`: a newline there forged a CI log line (surface 29)
            raise UsageError(f"${ENV_DIR} holds control or format characters ({', '.join(bad[:4])}); point it at a "
                             "folder with a plain name")
        kind = path_kind(path) if os.path.lexists(path) else "a directory"
        if kind != "a directory":  # `cache info` reported "entries: none" for a file, exit 0
            raise UsageError(f"${ENV_DIR}={path} is {kind or 'a file'}; point it at a folder, or unset it for the "
                             "platform's user cache folder")
        return path
    from platformdirs import user_cache_dir

    return Path(user_cache_dir(APP_NAME, appauthor=False))


def control_characters(text: str) -> list[str]:
    """The control, format and line-separator characters in `text` (U+XXXX), which a printed path must not hold:
    a newline starts a forged log line (`::error::` on GitHub), a bidirectional override reorders what is shown."""
    import unicodedata

    return sorted({f"U+{ord(c):04X}" for c in text if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")})


def cache_disabled_by_env() -> bool:
    """$BACKBONE_VERIFY_NO_CACHE: 1/true/yes/on turn the cache off, unset/empty/0/false/no/off leave it on; any other
    value is a UsageError (`false` turned the cache off, as any text but 0 did)."""
    text = os.environ.get(ENV_OFF, "").strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text not in ("", "0", "false", "no", "off"):
        raise UsageError(f"${ENV_OFF}={text[:40]!r} is neither on nor off: set it to 1 (compute everything, no cache) "
                         "or 0, or unset it")
    return False


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
    """A JSON-able, order-independent form of settings: dataclasses by field (or as they `record()` themselves),
    paths as text."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        recorded = value.record() if callable(getattr(value, "record", None)) else {
            f.name: getattr(value, f.name) for f in dataclasses.fields(value)}  # RuntimeOptions: plug-ins' options
        return {"__type__": type(value).__name__, **{k: canonical(v) for k, v in recorded.items()}}
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


def is_digest(text: Any) -> bool:
    return isinstance(text, str) and HEX_DIGEST.fullmatch(text) is not None


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
    """Per kind (`export`, `result`): how many lookups hit, missed, found a corrupt entry, stored."""

    hits: dict[str, int] = field(default_factory=dict)
    misses: dict[str, int] = field(default_factory=dict)
    corrupt: dict[str, int] = field(default_factory=dict)
    stores: dict[str, int] = field(default_factory=dict)

    def count(self, what: str, kind: str, n: int = 1) -> None:
        bucket = getattr(self, what)
        bucket[kind] = bucket.get(kind, 0) + n
        if not bucket[kind]:
            del bucket[kind]

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
    """A cache entry whose names were validated and whose blobs' hashes were just checked. Its data is
    still whatever the writer put there: a caller re-checks what it takes."""

    kind: str
    key: str
    data: dict[str, Any]
    files: dict[str, dict[str, Any]]
    cache: Cache

    def blob(self, name: str) -> Path:
        return self.cache.blob_path(self.files[name]["sha256"])

    def read_bytes(self, name: str) -> bytes:
        """The file's bytes, hashed again as they are read."""
        sha = self.files[name]["sha256"]
        with self.cache.open_blob(sha) as handle:
            data = handle.read()
        if hashlib.sha256(data).hexdigest() != sha:
            raise CorruptEntry(f"{name} changed after it was verified")
        return data

    def copy_to(self, name: str, dest: Path) -> Path:
        """Copy the file to `dest`, a new file (never a link: the copy may be edited, the blob must not be)."""
        sha, digest_ = self.files[name]["sha256"], hashlib.sha256()
        with self.cache.open_blob(sha) as src, open(dest, "wb") as out:
            for chunk in iter(lambda: src.read(CHUNK), b""):
                digest_.update(chunk)
                out.write(chunk)
        if digest_.hexdigest() != sha:
            dest.unlink(missing_ok=True)
            raise CorruptEntry(f"{name} changed after it was verified")
        return dest


_Proven = TypeVar("_Proven")


class CorruptEntry(Exception):
    """A blob or entry that is not what this tool stores (internal: it becomes a miss)."""


class Cache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()
        self.base = self.root / LAYOUT
        self.stats = CacheStats()
        self.weights_stats = CacheStats()
        """Copies of synthetic weights, counted apart: whether a run reads or keeps one depends on what its process
        computed before (exporter/weights.py keeps the last weights in memory), not on the run alone."""

    # names and paths -------------------------------------------------------------------------
    @staticmethod
    def _blob_parts(sha: str) -> tuple[tuple[str, ...], str]:
        if not is_digest(sha):
            raise CorruptEntry(f"{str(sha)[:80]!r} is not a sha256 digest")
        return ("blobs", sha[:2]), sha

    @staticmethod
    def _entry_parts(kind: str, key: str) -> tuple[tuple[str, ...], str]:
        if not (isinstance(kind, str) and KIND_NAME.fullmatch(kind)) or not is_digest(key):
            raise ValueError(f"cache kind {kind!r} / key {key!r}: a short lower-case word and a sha256 digest")
        return ("entries", kind, key[:2]), f"{key}.json"

    def blob_path(self, sha: str) -> Path:
        parts, name = self._blob_parts(sha)
        return self.base.joinpath(*parts, name)

    def entry_path(self, kind: str, key: str) -> Path:
        parts, name = self._entry_parts(kind, key)
        return self.base.joinpath(*parts, name)

    def key(self, kind: str, parts: Any) -> str:
        """The key of a `kind` result determined by `parts` in this environment."""
        return digest({"kind": kind, "parts": parts, "environment": environment()})

    # the file system, from the root down without following links ---------------------------------
    @contextlib.contextmanager
    def _folder(self, parts: Iterable[str], create: bool = False) -> Iterator[int]:
        """A descriptor of base/parts..., each folder below the root opened with O_NOFOLLOW (a symbolic link
        or a file where a folder belongs raises OSError: nothing resolves outside the root)."""
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # the root is the user's choice
        try:
            for part in (LAYOUT, *parts):
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=fd)
                inner = os.open(part, DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = inner
            yield fd
        finally:
            os.close(fd)

    @staticmethod
    def _open_regular(folder: int, name: str) -> IO[bytes]:
        """`name` in `folder` for reading, if it is a regular file (checked before opening, so a FIFO or
        device is never opened, and again on the open descriptor); CorruptEntry otherwise."""
        info = os.stat(name, dir_fd=folder, follow_symlinks=False)
        if not stat.S_ISREG(info.st_mode):
            raise CorruptEntry(f"{name} is not a regular file")
        fd = os.open(name, READ_FLAGS, dir_fd=folder)
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
            os.close(fd)
            raise CorruptEntry(f"{name} changed while it was opened")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")

    @contextlib.contextmanager
    def open_blob(self, sha: str) -> Iterator[IO[bytes]]:
        """The blob named `sha` for reading (CorruptEntry: a bad name, a link or not a regular file)."""
        parts, name = self._blob_parts(sha)
        try:
            with self._folder(parts) as folder:
                handle = self._open_regular(folder, name)
        except FileNotFoundError:
            raise CorruptEntry(f"blob {sha} is missing") from None
        except OSError as exc:
            raise CorruptEntry(f"blob {sha} cannot be read: {exc.strerror}") from None
        with handle:
            yield handle

    def _unlink(self, parts: Iterable[str], name: str) -> int:
        """Remove `name` (a link itself, never its target) from a folder inside the root; bytes freed (0 when it
        could not be removed)."""
        try:
            return self._remove(parts, name)
        except OSError:
            return 0

    def _remove(self, parts: Iterable[str], name: str) -> int:
        """`_unlink`, its failure an OSError (FileNotFoundError: gone already)."""
        with self._folder(parts) as folder:
            size = os.stat(name, dir_fd=folder, follow_symlinks=False).st_size
            os.unlink(name, dir_fd=folder)
        return size

    def _write(self, parts: Iterable[str], name: str, chunks: Iterable[bytes | memoryview], hashed: bool = True) -> str:
        """Write `chunks` to base/parts/name atomically (a new temporary file, fsynced, renamed over the
        target, which a link there cannot redirect); returns the sha256 of what was written (empty unless `hashed`:
        a weights copy is proven by its tensors' digest on every read, and the hash cost 0.06 s for resnet50)."""
        tmp, sha = f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp", hashlib.sha256()
        with self._folder(parts, create=True) as folder:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                         dir_fd=folder)
            try:
                with os.fdopen(fd, "wb") as handle:
                    for chunk in chunks:
                        if hashed:
                            sha.update(chunk)
                        handle.write(chunk)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=folder)
            os.fsync(folder)
        return sha.hexdigest() if hashed else ""

    # reading ---------------------------------------------------------------------------------
    def load(self, kind: str, key: str) -> Entry | None:
        """The entry, with every name validated and every file's hash recomputed from its content; None on
        a miss or an entry that fails (which is then removed: only inside the root, only by checked names)."""
        parts, name = self._entry_parts(kind, key)
        try:
            entry = self._parse(kind, key, self._read_entry(kind, key, touch=True))
            for ref in entry.files.values():
                self._check_blob(ref)
        except FileNotFoundError:
            self.stats.count("misses", kind)
            return None
        except CorruptEntry:
            self.stats.count("corrupt", kind)
            self.stats.count("misses", kind)
            self._unlink(parts, name)
            return None
        except OSError:  # a folder that is a link or a file, an unreadable one: a miss, nothing removed
            self.stats.count("misses", kind)
            return None
        self.stats.count("hits", kind)
        return entry

    def _read_entry(self, kind: str, key: str, touch: bool = False) -> bytes:
        """The entry file's bytes, if it is a regular file of at most MAX_ENTRY_BYTES (CorruptEntry if not);
        `touch` marks it used now (`prune` removes the least recently used first)."""
        parts, name = self._entry_parts(kind, key)
        with self._folder(parts) as folder, self._open_regular(folder, name) as handle:
            text = handle.read(MAX_ENTRY_BYTES + 1)
            if touch:
                with contextlib.suppress(OSError):
                    os.utime(handle.fileno())
        if len(text) > MAX_ENTRY_BYTES:
            raise CorruptEntry(f"entry larger than {MAX_ENTRY_BYTES} bytes")
        return text

    def reject(self, entry: Entry) -> None:
        """A caller found what `entry` holds unfit: counted corrupt and a miss (not a hit), and removed."""
        self.stats.count("hits", entry.kind, -1)
        self.stats.count("corrupt", entry.kind)
        self.stats.count("misses", entry.kind)
        self._unlink(*self._entry_parts(entry.kind, entry.key))

    def _check_blob(self, ref: Mapping[str, Any]) -> None:
        """The blob's size and the sha256 of its content against the name it is stored under; a blob that
        fails is removed (its name was checked: it is a file of this cache)."""
        sha, size, actual = ref["sha256"], ref["size"], hashlib.sha256()
        try:
            with self.open_blob(sha) as handle:
                if os.fstat(handle.fileno()).st_size != size:
                    raise CorruptEntry(f"blob {sha} has another size")
                for chunk in iter(lambda: handle.read(CHUNK), b""):
                    actual.update(chunk)
            if actual.hexdigest() != sha:
                raise CorruptEntry(f"blob {sha} does not match its hash")
        except CorruptEntry:
            self._unlink(*self._blob_parts(sha))  # a link or FIFO is removed itself, never what it names
            raise

    def _parse(self, kind: str, key: str, text: bytes | str) -> Entry:
        """The entry's record, every name in it checked; its checksum catches accidents, not attackers."""
        try:
            record = json.loads(text)
            checksum = record.pop("checksum")
            body_ok = hashlib.sha256(canonical_json(record).encode()).hexdigest() == checksum
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise CorruptEntry(f"unreadable entry: {type(exc).__name__}") from None
        if not body_ok or record.get("schema") != ENTRY_SCHEMA or record.get("key") != key \
                or record.get("kind") != kind or not isinstance(record.get("data", {}), dict):
            raise CorruptEntry("entry checksum or identity mismatch")
        files = record.get("files")
        if not isinstance(files, dict) or not all(_valid_file_ref(name, ref) for name, ref in files.items()):
            raise CorruptEntry("entry names a file or blob that is not a plain name and a sha256 digest")
        return Entry(kind, key, record.get("data") or {}, files, self)

    # writing ---------------------------------------------------------------------------------
    def store(self, kind: str, key: str, data: Mapping[str, Any] | None = None,
              files: Mapping[str, Path] | None = None, blobs: Mapping[str, bytes] | None = None) -> None:
        """Store `data` (JSON), files (copied) and in-memory blobs under `key`; the entry appears
        complete or not at all. A cache that cannot be written is skipped, never fatal."""
        parts, name = self._entry_parts(kind, key)
        try:
            refs = {}
            for file_name, path in (files or {}).items():
                refs[_plain(file_name)] = self._put_file(Path(path))
            for file_name, content in (blobs or {}).items():
                refs[_plain(file_name)] = self._put_bytes(content)
            record = {"schema": ENTRY_SCHEMA, "kind": kind, "key": key,
                      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                      "data": canonical(dict(data or {})), "files": refs}
            record["checksum"] = hashlib.sha256(canonical_json(record).encode()).hexdigest()
            self._write(parts, name, [json.dumps(record, sort_keys=True).encode()])
        except (OSError, CorruptEntry):
            return
        self.stats.count("stores", kind)

    def _has_blob(self, sha: str, size: int) -> bool:
        """Whether the blob `sha` is already stored intact (a planted file of that name is rewritten)."""
        try:
            self._check_blob({"sha256": sha, "size": size})
        except CorruptEntry:
            return False
        return True

    def _put_bytes(self, content: bytes) -> dict[str, Any]:
        sha = hashlib.sha256(content).hexdigest()
        if not self._has_blob(sha, len(content)):
            self._write(*self._blob_parts(sha), [content])
        return {"sha256": sha, "size": len(content)}

    def _put_file(self, path: Path) -> dict[str, Any]:
        sha, size = file_sha256(path), path.stat().st_size
        if not self._has_blob(sha, size):
            with open(path, "rb") as source:
                written = self._write(*self._blob_parts(sha), iter(lambda: source.read(CHUNK), b""))
            if written != sha:  # the source changed while we copied it
                self._unlink(*self._blob_parts(sha))
                raise OSError("source changed while copying")
        return {"sha256": sha, "size": size}

    # copies of synthetic weights (exporter/weights.py WeightsStore) ---------------------------------------
    @staticmethod
    def _weights_name(sha: str) -> str:
        if not is_digest(sha):
            raise ValueError(f"weights digest {sha!r} is not a sha256 digest")
        return f"{sha}.safetensors"

    def read_weights(self, sha: str, max_bytes: int, prove: Callable[[bytes], _Proven | None]) -> _Proven | None:
        """What `prove` makes of the copy named `sha` (exporter/weights.py: its tensors, when they hash to the
        committed `sha`), or None: no copy, or one that is not a regular file of at most `max_bytes` (refused unread)
        or that `prove` refuses, which is then removed and counted corrupt. Opened as every entry is: from the root
        down without following links."""
        name = self._weights_name(sha)
        try:
            with self._folder((WEIGHTS,)) as folder, self._open_regular(folder, name) as handle:
                if os.fstat(handle.fileno()).st_size > max_bytes:
                    raise CorruptEntry(f"{name} is larger than the weights it names")
                data = handle.read(max_bytes + 1)
                with contextlib.suppress(OSError):
                    os.utime(handle.fileno())  # used now: prune removes the least recently used first
            proven = prove(data) if len(data) <= max_bytes else None
            if proven is None:
                raise CorruptEntry(f"{name} does not hold the weights it names")
        except FileNotFoundError:
            self.weights_stats.count("misses", WEIGHTS)
            return None
        except CorruptEntry:
            self.weights_stats.count("corrupt", WEIGHTS)
            self.weights_stats.count("misses", WEIGHTS)
            self._unlink((WEIGHTS,), name)
            return None
        except OSError:  # a folder that is a link or a file, an unreadable copy: a miss, nothing removed
            self.weights_stats.count("misses", WEIGHTS)
            return None
        self.weights_stats.count("hits", WEIGHTS)
        return proven

    def store_weights(self, sha: str, chunks: Iterable[bytes | memoryview]) -> None:
        """Keep `chunks` as the copy named `sha` (atomically); a cache that cannot be written is skipped."""
        try:
            self._write((WEIGHTS,), self._weights_name(sha), chunks, hashed=False)
        except OSError:
            return
        self.weights_stats.count("stores", WEIGHTS)

    def _own_weights(self) -> Iterator[tuple[str, os.stat_result]]:
        """(name, lstat) of every file in the weights folder named as a copy, or as this module's temporary file."""
        for name, info in self._scan(WEIGHTS):
            if WEIGHTS_NAME.fullmatch(name) or TMP_NAME.fullmatch(name):
                yield name, info

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Held while one process computes `key`, so a parallel worker waits (at most LOCK_WAIT_SECONDS) and then
        reads it. The lock file is opened without following a link and without blocking (a FIFO there is refused,
        not waited on)."""
        if not is_digest(key):
            raise ValueError(f"cache key {key!r} is not a sha256 digest")
        try:
            with self._folder(("locks",), create=True) as folder:
                fd = os.open(f"{key}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                             0o644, dir_fd=folder)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise OSError("the lock is not a regular file")
        except OSError:
            yield  # a read-only or tampered cache still runs, just without the lock
            return
        try:
            deadline, locked = time.monotonic() + LOCK_WAIT_SECONDS, False
            while not locked:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    locked = True
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        break  # computed here as well, without the lock
                    time.sleep(LOCK_POLL_SECONDS)
            try:
                yield
            finally:
                if locked:
                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # maintenance -----------------------------------------------------------------------------
    def _is_own_folder(self) -> bool:
        """Whether base is a real folder (not a link, not a file) holding only this cache's own folders;
        UsageError when it is something else (a `v1` of the user's own under a mistaken --cache-dir)."""
        mode = self._base_mode()
        if mode is None:
            return False
        # a link is removed as a link (never its target): only a file or folder of someone else's is refused
        foreign = [] if not stat.S_ISDIR(mode) else [
            name for name, info in self._scan() if name not in OWN_FOLDERS and not stat.S_ISLNK(info.st_mode)]
        if not stat.S_ISDIR(mode) or foreign:
            held = f" (it holds {foreign[0]!r}, which this cache never writes)" if foreign else ""
            raise UsageError(f"{self.base} is not a cache folder made by this tool{held}; check --cache-dir or "
                             f"${ENV_DIR}, or remove it by hand")
        return True

    def _base_mode(self) -> int | None:
        """The layout folder's lstat mode; None when there is none. A cache folder this user may not look into is a
        one-line UsageError (info, prune and clear ended in an "unexpected PermissionError"), not an empty cache."""
        try:
            return os.lstat(self.base).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise UsageError(f"Cannot read the cache {self.root}: {exc.strerror}; check its permissions, or point "
                             f"--cache-dir or ${ENV_DIR} at another folder") from None

    def _scan(self, *parts: str) -> list[tuple[str, os.stat_result]]:
        """(name, lstat) of what base/parts holds (a folder reached without following links); [] if none."""
        found = []
        try:
            with self._folder(parts) as folder:
                for name in os.listdir(folder):
                    with contextlib.suppress(OSError):
                        found.append((name, os.stat(name, dir_fd=folder, follow_symlinks=False)))
        except OSError:
            return []
        return found

    def _own_entries(self) -> Iterator[tuple[str, str, os.stat_result]]:
        """(kind, key, lstat) of every file named as an entry in its right folder; nothing else."""
        for kind, info in self._scan("entries"):
            if not (KIND_NAME.fullmatch(kind) and stat.S_ISDIR(info.st_mode)):
                continue
            for prefix, info in self._scan("entries", kind):
                if not stat.S_ISDIR(info.st_mode):
                    continue
                for name, info in self._scan("entries", kind, prefix):
                    key = name.removesuffix(".json")
                    if name.endswith(".json") and is_digest(key) and key[:2] == prefix:
                        yield kind, key, info

    def _own_entry_temps(self) -> Iterator[tuple[tuple[str, ...], str, os.stat_result]]:
        """(folder parts, name, lstat) of this module's temporary files in the entry folders (a killed writer's)."""
        for kind, info in self._scan("entries"):
            if not (KIND_NAME.fullmatch(kind) and stat.S_ISDIR(info.st_mode)):
                continue
            for prefix, info in self._scan("entries", kind):
                if stat.S_ISDIR(info.st_mode):
                    for name, info in self._scan("entries", kind, prefix):
                        if TMP_NAME.fullmatch(name):
                            yield ("entries", kind, prefix), name, info

    def _own_blobs(self) -> Iterator[tuple[str, str, os.stat_result]]:
        """(folder, name, lstat) of every file in the blobs folder named by a digest in its right folder, and
        of this module's temporary files there; nothing else."""
        for prefix, info in self._scan("blobs"):
            if not stat.S_ISDIR(info.st_mode):
                continue
            for name, info in self._scan("blobs", prefix):
                if (is_digest(name) and name[:2] == prefix) or TMP_NAME.fullmatch(name):
                    yield prefix, name, info

    def info(self) -> dict[str, Any]:
        entries: dict[str, int] = {}
        for kind, _, info in self._own_entries():
            if stat.S_ISREG(info.st_mode):
                entries[kind] = entries.get(kind, 0) + 1
        blobs = sum(1 for _, name, info in self._own_blobs() if is_digest(name) and stat.S_ISREG(info.st_mode))
        weights = sum(1 for name, info in self._own_weights() if WEIGHTS_NAME.fullmatch(name)
                      and stat.S_ISREG(info.st_mode))
        return {"root": str(self.root), "layout": LAYOUT, "entries": entries, "blobs": blobs, "weights": weights,
                "bytes": self._size()}

    def _size(self) -> int:
        """Bytes in regular files under base (links are not followed, not counted)."""
        total, mode = 0, self._base_mode()
        if mode is None or not stat.S_ISDIR(mode):
            return 0
        for folder, _, names in os.walk(self.base, followlinks=False):
            for name in names:
                with contextlib.suppress(OSError):
                    info = os.lstat(os.path.join(folder, name))
                    total += info.st_size if stat.S_ISREG(info.st_mode) else 0
        return total

    def prune(self, max_bytes: int, grace_seconds: float = 600.0) -> tuple[int, int]:
        """Remove the least recently used entries (by their last hit or store) until the cache holds at most
        `max_bytes`, each with the files no remaining entry names; files no entry names at all go first
        (but not those younger than `grace_seconds`: a store in progress writes its files before its entry).
        Only files inside the root named as this cache names them are removed: an entry's file list is
        validated before any name in it is used. A copy of synthetic weights is an entry (by its last read or
        write). Returns (entries removed, bytes freed); an entry that cannot be
        removed (a read-only cache) is a UsageError (it was counted as removed while the cache kept its size)."""
        if not self._is_own_folder():
            return 0, 0
        entries: list[tuple[float, tuple[tuple[str, ...], str], set[str]]] = []
        refs: dict[str, int] = {}
        for kind, key, info in self._own_entries():
            shas: set[str] = set()
            try:
                shas = {ref["sha256"] for ref in self._parse(kind, key, self._read_entry(kind, key)).files.values()}
                used = info.st_mtime
            except (OSError, CorruptEntry):
                used = float("-inf")  # unusable: removed first, it could never be used
            entries.append((used, self._entry_parts(kind, key), shas))
            for sha in shas:
                refs[sha] = refs.get(sha, 0) + 1
        for name, info in self._own_weights():  # a copy of weights is an entry and its file in one
            if WEIGHTS_NAME.fullmatch(name):
                entries.append((info.st_mtime if stat.S_ISREG(info.st_mode) else float("-inf"), ((WEIGHTS,), name),
                                set()))
        total, freed, removed, now = self._size(), 0, 0, time.time()
        for prefix, name, info in self._own_blobs():  # unnamed by any entry, or a killed writer's leftover
            if (name not in refs or not is_digest(name)) and now - info.st_mtime > grace_seconds:
                freed += self._unlink(("blobs", prefix), name)
        for parts, name, info in self._own_entry_temps():
            if now - info.st_mtime > grace_seconds:
                freed += self._unlink(parts, name)
        for name, info in self._own_weights():
            if TMP_NAME.fullmatch(name) and now - info.st_mtime > grace_seconds:
                freed += self._unlink((WEIGHTS,), name)
        for _, (parts, name), shas in sorted(entries, key=lambda item: item[0]):
            if total - freed <= max_bytes:
                break
            try:
                freed += self._remove(parts, name)
                removed += 1
            except FileNotFoundError:
                pass  # removed by another prune since it was listed: its files are released below all the same
            except OSError as exc:
                raise UsageError(f"Cannot prune the cache {self.root}: an entry cannot be removed ({exc.strerror}) "
                                 f"after {removed} were; check that it is writable") from None
            for sha in shas:
                refs[sha] -= 1
                if refs[sha] == 0:
                    freed += self._unlink(*self._blob_parts(sha))
        return removed, freed

    def clear(self) -> int:
        """Remove this cache's own folder (never anything else under the root), and what an interrupted clear
        left of it; returns bytes freed."""
        freed = self._remove_retired()
        if not self._is_own_folder():
            return freed
        size = self._size()
        retired = self.root / f".{LAYOUT}.retired-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(self.base, retired)  # readers see the whole cache or none of it
        except OSError as exc:
            raise UsageError(f"Cannot clear the cache {self.root}: {exc.strerror}; check that it is writable") \
                from None
        shutil.rmtree(retired, ignore_errors=True)  # removes links as links, never what they point to
        return freed + size

    def found(self) -> bool:
        """Whether the root holds this tool's cache (its layout folder, or what an interrupted clear left of it):
        `verify cache clear` and `prune` of a folder holding none say so, never "0.0 MiB freed"."""
        with contextlib.suppress(OSError):
            if any(RETIRED_NAME.fullmatch(name) for name in os.listdir(self.root)):
                return True
        return self._base_mode() is not None

    def _remove_retired(self) -> int:
        """Remove the layout folders earlier clears renamed aside and were stopped (Ctrl-C, a kill) before removing:
        only real folders (never a link's target) named exactly as `clear` names them; bytes freed."""
        freed = 0
        try:
            names = [name for name in os.listdir(self.root) if RETIRED_NAME.fullmatch(name)]
        except OSError:
            return 0
        for name in names:
            path = self.root / name
            with contextlib.suppress(OSError):
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    continue
                for folder, _, files in os.walk(path, followlinks=False):
                    for file in files:
                        with contextlib.suppress(OSError):
                            info = os.lstat(os.path.join(folder, file))
                            freed += info.st_size if stat.S_ISREG(info.st_mode) else 0
                shutil.rmtree(path, ignore_errors=True)
        return freed


def _valid_file_ref(name: Any, ref: Any) -> bool:
    return (isinstance(name, str) and FILE_NAME.fullmatch(name) is not None and isinstance(ref, dict)
            and is_digest(ref.get("sha256")) and type(ref.get("size")) is int and ref["size"] >= 0)


def _plain(name: str) -> str:
    if not FILE_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a plain file name for the cache")
    return name
