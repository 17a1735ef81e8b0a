"""Safe writes: staged folders renamed into place, atomic files, paths kept inside a folder."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from exporter.errors import ArtifactError, UsageError


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_staging(parent: Path) -> None:
    """Remove staging folders left by exports that were killed (their process is gone)."""
    for entry in parent.glob(".*.staging-*"):
        with contextlib.suppress(ValueError, IndexError):
            if not _pid_alive(int(entry.name.rsplit("-", 2)[1])):
                shutil.rmtree(entry, ignore_errors=True)


@contextlib.contextmanager
def _folder_lock(parent: Path, name: str) -> Iterator[None]:
    with open(parent / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def staged_folder(final: Path) -> Iterator[Path]:
    """Yield an empty staging folder beside `final`; on success it replaces `final` by rename,
    so `final` is always either the previous complete folder or the new complete one. On
    error (or a kill) the staging folder never becomes `final`."""
    parent = final.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_staging(parent)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.staging-{os.getpid()}-", dir=parent))
    except OSError as exc:
        raise UsageError(f"Cannot write into the output folder {parent}: {exc.strerror}") from None
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; the folder is for sharing
    try:
        yield staging
        _fsync_tree(staging)
        with _folder_lock(parent, final.name):
            if final.exists():
                retired = parent / f".{final.name}.retired-{uuid.uuid4().hex[:8]}"
                os.rename(final, retired)
                os.rename(staging, final)
                shutil.rmtree(retired, ignore_errors=True)
            else:
                os.rename(staging, final)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for file in folder.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(folder)


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a reader never sees half a file; a path that
    cannot be written is the user's to fix (UsageError)."""
    path = Path(path).resolve()
    if path.is_dir():
        raise UsageError(f"Cannot write {path}: it is a folder; give a file name")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"Cannot write {path}: {exc.strerror}") from None


def write_json(path: Path, data: Any) -> None:
    # strict JSON: a NaN or Infinity raises here instead of being written (callers write null and why)
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str, allow_nan=False) + "\n")


def require_inside(folder: Path, relative: str, what: str) -> Path:
    """Resolve `relative` inside `folder`, refusing absolute paths and `..` escapes."""
    candidate = Path(relative)
    resolved = (folder / candidate).resolve()
    if candidate.is_absolute() or not resolved.is_relative_to(folder.resolve()):
        raise ArtifactError(f"{what} {relative!r} points outside the artifact folder {folder}; refusing it")
    return resolved
