"""What every export folder's check shares, backbone or whole detector: which kind of folder it is (decided here,
from the manifest's `kind`, and nowhere else), checks as bodies that pass or raise, the signature, the folder's
entries, each listed file's size and sha256, and the rule that a code-executing file is loaded only from a
folder whose signature verified, or when the caller trusts it explicitly (also where a preflight picks the file
it runs)."""

from __future__ import annotations

import os
import stat
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.errors import ArtifactError, SetupError, UsageError, VerifyError
from exporter.formats import get_format
from exporter.manifest import (
    DETECTOR_KIND,
    EXTERNAL_DATA_FORMAT,
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    SIGNATURE_NAME,
    file_sha256,
    loads_strict,
    manifest_kind,
)
from exporter.signing import MAX_SIGNATURE_BYTES
from verify.folder.checks import Check, CheckReport

UNSIGNED_CODE_OPTION = "--trust-unsigned-code"
"""The option that loads code-executing files from a folder whose signature was not verified."""
SIGN_HOW = "sign it in CI (verify export --sign-key KEY.pem) and pass --verify-key PUB.pem"
INTEGRITY = "integrity"
FLOOR_RTOL = 1e-9
"""A recorded floor must equal the one its goldens give: the export computes it with the same function
from the same arrays, and JSON round-trips floats exactly; this only absorbs a last-bit difference."""


class Skipped(Exception):
    """Raised by a check body to record the check as skipped (neither passed nor failed)."""


@dataclass
class CheckedFolder:
    """An export folder of either kind as its checks find it. A listed file may be loaded when it is data, or
    when it is code and the folder's signature verified or the caller trusts the folder explicitly."""

    folder: Path
    manifest: Any
    verified: dict[str, Path] = field(default_factory=dict)
    """Files whose own checks passed (size, hash, format, what the file records)."""
    sound: bool = False
    """Every folder-level check passed: only then is anything loaded."""
    signature_verified: bool = False
    """Its model-signing signature verified with the caller's public key (this run)."""
    trust_unsigned_code: bool = False
    """The caller explicitly allowed code-executing files from a folder whose signature was not verified."""
    unsound_because: str = "the folder failed its integrity checks"
    """Why nothing is loaded when `sound` is False (a failed rebuild says so: verify/folder/rebuild.py)."""
    origin: Path | None = None
    """The folder as given, when `folder` is its private snapshot (`snapshot_folder`): the one its reports name."""
    snapshot: Any = None
    """The snapshot's TemporaryDirectory: removed by `close()`, or when this object is collected."""

    @property
    def label(self) -> str:
        return str(self.origin or self.folder)

    def close(self) -> None:
        """Remove the private snapshot the checks and loads read (nothing of the folder is read after this)."""
        if self.snapshot is not None:
            self.snapshot.cleanup()
            self.snapshot = None

    def may_load(self, name: str) -> bool:
        entry = self.manifest.files[name]
        return not get_format(entry.format).executes_code_on_load or self.signature_verified \
            or self.trust_unsigned_code

    def refusal(self, name: str) -> str:
        """Why `name` is not loaded, and the two ways to load it (one line)."""
        fmt = self.manifest.files[name].format
        return (f"not loaded: loading a {fmt} file can run code, and no signature of this folder was verified "
                f"(sha256s in a manifest prove nothing: whoever edits a file can rewrite them); {SIGN_HOW}, or "
                f"pass {UNSIGNED_CODE_OPTION} if you trust whoever wrote the folder")


def resolve_folder(path: Path) -> tuple[Path, Path]:
    """A folder or its manifest.json -> (folder, manifest path)."""
    if not path.exists():
        raise UsageError(f"{path} does not exist")
    if path.is_dir():
        if not (path / MANIFEST_NAME).exists() and (exports := export_subfolders(path)):
            # `verify artifact artifacts`, the --out folder, not the export folder in it (hunt 19c: exit 1, "not an
            # export folder", where the user only named the folder one level up)
            named = " ".join(str(sub) for sub in exports[:3]) + (" ..." if len(exports) > 3 else "")
            raise UsageError(f"{path} is not an export folder but holds {len(exports)} (one per export, as --out "
                             f"writes them): pass those, e.g. {named}")
        return path, path / MANIFEST_NAME
    if path.name == MANIFEST_NAME:
        return path.parent, path
    raise UsageError(f"{path} is neither an export folder nor its {MANIFEST_NAME}")


def export_subfolders(path: Path) -> list[Path]:
    """The folders directly inside `path` that hold a manifest.json (sorted by name), the entries listed only; not
    the hidden ones an export leaves beside its folder (exporter/fsio.py `.NAME.staging-*` while it writes or after
    a crash, `.NAME.retired-*` for the folder --overwrite replaced: review 18, the hint named one to pass)."""
    try:
        return sorted(entry for entry in path.iterdir()
                      if not entry.name.startswith(".") and (entry / MANIFEST_NAME).is_file())
    except OSError:
        return []


def is_detector_folder(path: Path) -> bool:
    """The one place that tells a whole detector's folder from a backbone's: its manifest's `kind`. A folder
    whose manifest cannot be read goes the backbone way, whose first check says why."""
    return manifest_kind(resolve_folder(path)[1]) == DETECTOR_KIND


def failure_reason(exc: BaseException) -> str:
    """Our errors as they are; anything else as its type and first line, bounded. A path into a folder's private
    snapshot is shown as the folder's own."""
    text = str(exc)
    for copy, origin in list(SNAPSHOT_ORIGINS.items()):
        text = text.replace(copy, origin)
    if isinstance(exc, VerifyError):
        return text
    first = (text.strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first[:200]}"


def run_check(label: str, runtime: str, name: str, body: Callable[[], str]) -> Check:
    """`body` returns the passing message or raises: a failure of the folder's content becomes this
    check's failure (only an environment problem, SetupError, stops the run)."""
    start = time.perf_counter()
    check = Check(label, runtime, name, False)
    try:
        check.message, check.passed = body(), True
    except SetupError:
        raise
    except Skipped as skip:
        check.message, check.skipped = str(skip), True
    except Exception as exc:  # a folder's content must fail its check, never the run
        check.message = failure_reason(exc)
    check.seconds = time.perf_counter() - start
    return check


def preflight_target(path: Path, art: CheckedFolder | None, report: CheckReport, runtime: str,
                     runs_format: Callable[[str], bool], missing: str, hint: str = "") -> str | None:
    """The model file a preflight on `runtime` runs: the first listed one whose format `runs_format` accepts.
    None, with the report's NO-GO summary, when the folder fails its integrity checks, holds no such file (a
    failed check: no `missing` that runs, `hint` added), the file failed its own checks, or it is code that
    may not be loaded (a failed check naming both ways to load it)."""
    if art is None or not art.sound:
        failed = next((c for c in report.checks if not c.passed and not c.skipped), None)
        what = "its integrity checks" if failed is None or failed.runtime == INTEGRITY else f"its check {failed.name!r}"
        report.summary = f"NO-GO: {path} fails {what}"
        return None
    models = art.manifest.model_files()
    target = next((n for n, e in models.items() if runs_format(e.format)), None)
    if target is None:
        held = ", ".join(sorted({e.format for e in models.values()}))
        report.add(Check(art.label, runtime, "artifact", False,
                         f"the folder holds no {missing} that {runtime} runs (it holds {held}{hint})"))
        report.summary = f"NO-GO: nothing in {path} runs on {runtime}"
        return None
    if target not in art.verified:
        report.summary = f"NO-GO: {target} fails its integrity checks"
        return None
    if not art.may_load(target):
        report.add(Check(art.label, runtime, f"{target}: load", False, art.refusal(target)))
        report.summary = f"NO-GO: {target} {art.refusal(target)}"
        return None
    return target


def run_target(art: CheckedFolder, report: CheckReport, runtime: str, target: str,
               run: Callable[[], CheckReport]) -> CheckReport:
    """`run()`'s report, or `report` with a failed check and a NO-GO when the file fails to load or run."""
    try:
        return run()
    except SetupError:
        raise  # the machine cannot do what was asked (no CUDA, a CPU fallback): exit 2
    except Exception as exc:  # whatever the file does, it is a failed check and a NO-GO, not a crash
        report.add(Check(art.label, runtime, f"{target}: load and run", False, failure_reason(exc)))
        report.summary = f"NO-GO: {target} does not run on {runtime}: {failure_reason(exc)}"
        return report


def check_signature(folder: Path, verify_key: Path | None) -> str:
    from exporter.signing import verify_folder

    if verify_key is None:  # declared by the manifest, no key to verify it with
        if not (folder / SIGNATURE_NAME).is_file():
            raise ArtifactError(f"the manifest says the folder is signed, but {SIGNATURE_NAME} is missing")
        raise Skipped("signed; not verified here (pass --verify-key PUB.pem to refuse a folder changed since)")
    unread = {n: why for n, why in SNAPSHOT_UNREAD.get(str(folder), {}).items() if n != SIGNATURE_NAME}
    if unread:  # model-signing would hash every byte of it; the folder fails its checks whatever it holds
        raise ArtifactError(f"not verified: {unread[min(unread)]}, so it was not read (the folder fails its checks "
                            "whatever it holds)")
    verify_folder(folder, verify_key)
    return f"model-signing signature verifies with {verify_key.name}: every file as signed"


def _describe_entry(folder: Path, name: str) -> str:
    path = folder / name
    if path.is_symlink():
        return f"{name} (a symbolic link)"
    if path.is_dir():
        return f"{name}/ (a folder)"
    if name.startswith("."):
        return f"{name} (hidden: a temporary file of an interrupted write?)"
    return name


SNAPSHOT_PREFIX = "backbone-verify-folder-"
"""The private temporary folder each checked folder is copied into before anything is read from it."""
SNAPSHOT_ORIGINS: dict[str, str] = {}
"""Each live snapshot's path -> the folder it copies, for messages (`failure_reason`)."""
SNAPSHOT_UNREAD: dict[str, dict[str, str]] = {}
"""Each live snapshot's path -> the entries it holds as holes of their size, unread, and why (`snapshot_folder`)."""
UNLISTED_COPY_BYTES = 1 << 20
"""An entry its manifest does not list fails whatever it holds; up to this size it is copied (so a signature check
can still name it as added), beyond it only its size is kept."""


def _listed_sizes(manifest: Path) -> dict[str, int] | None:
    """name -> size as the (copied) manifest lists them, read loosely; None when it cannot be read (its own check
    then says why)."""
    try:
        files = loads_strict(manifest.read_text(encoding="utf-8")).get("files")
        return {name: entry["size"] for name, entry in files.items()
                if isinstance(entry, dict) and type(entry.get("size")) is int and entry["size"] >= 0}
    except Exception:  # any shape of text: the manifest check reports it
        return None


def _copy_limit(name: str, listed: dict[str, int] | None) -> tuple[int, str]:
    """How large `name` may be and still be copied (what its reader takes, or what the manifest lists), and what
    a larger one is larger than."""
    if name == MANIFEST_NAME:
        return MAX_MANIFEST_BYTES, "a manifest is"
    if name == SIGNATURE_NAME:
        return MAX_SIGNATURE_BYTES, "a signature bundle is"
    if listed is not None and name in listed:
        return listed[name], "the manifest lists"
    return UNLISTED_COPY_BYTES, "a file its manifest does not list is read"


def _copy_sparse(source: int, target: int, size: int) -> None:
    """The first `size` bytes of `source` into `target`, holes left as holes (SEEK_DATA/SEEK_HOLE where the
    system has them): a sparse file costs its copy no more disk than it costs the folder."""
    import errno

    offset = 0
    while offset < size:
        try:
            start = os.lseek(source, offset, os.SEEK_DATA) if hasattr(os, "SEEK_DATA") else offset
            stop = min(os.lseek(source, start, os.SEEK_HOLE) if hasattr(os, "SEEK_HOLE") else size, size)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nothing but a hole from `offset` on
                break
            start, stop = offset, size  # a file system without SEEK_DATA/SEEK_HOLE: the rest copied as data
        if start >= size:
            break
        while start < stop:
            chunk = os.pread(source, min(1 << 20, stop - start), start)
            if not chunk:  # shrunk while copied: the rest stays a hole, and the sha256 check fails it
                stop = size
                break
            os.pwrite(target, chunk, start)
            start += len(chunk)
        offset = stop
    os.ftruncate(target, size)


def snapshot_folder(folder: Path) -> Any:
    """A private copy of `folder` (a TemporaryDirectory, mode 0700), made before any check reads it: every check,
    hash, signature and load then reads these bytes, which no one else can change. Checked on the folder itself,
    a file swapped (renamed or written over) after its sha256 or signature matched was the file loaded (hunt 9b).
    Each regular file is read once through a descriptor opened without following links; a link is copied as a
    link (its target text), anything else (a folder, a FIFO) as an empty folder, so the checks still name each
    entry as what it is and fail it, and nothing is followed or opened that could block. The manifest is copied
    first: a file larger than it lists (an unlisted one, or any while the manifest cannot be read: larger than
    UNLISTED_COPY_BYTES; the manifest and the signature: larger than their readers take) fails by its size alone
    and is kept as a hole of that size, unread (SNAPSHOT_UNREAD), and holes are copied as holes: a sparse 4 GiB
    file dropped into a folder wrote 4 GiB here and took `verify artifact` 92 s to fail it as unlisted (hunt 11a)."""
    import tempfile

    holder = tempfile.TemporaryDirectory(prefix=SNAPSHOT_PREFIX)
    copy = Path(holder.name)
    SNAPSHOT_ORIGINS[holder.name] = str(folder)
    unread = SNAPSHOT_UNREAD[holder.name] = {}
    weakref.finalize(holder, SNAPSHOT_ORIGINS.pop, holder.name, None)
    weakref.finalize(holder, SNAPSHOT_UNREAD.pop, holder.name, None)
    listed: dict[str, int] | None = None
    try:
        for name in sorted(os.listdir(folder), key=lambda entry: entry != MANIFEST_NAME):
            source, target = folder / name, copy / name
            try:
                info = os.lstat(source)
                if stat.S_ISLNK(info.st_mode):
                    os.symlink(os.readlink(source), target)
                    continue
                if not stat.S_ISREG(info.st_mode):
                    os.mkdir(target)
                    continue
                handle = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except FileNotFoundError:  # gone since it was listed: absent from the copy, and so "missing"
                continue
            with open(handle, "rb") as reader:
                info = os.fstat(reader.fileno())
                if not stat.S_ISREG(info.st_mode):
                    os.mkdir(target)
                    continue
                with open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), "wb") as out:
                    limit, than = _copy_limit(name, listed)
                    if info.st_size > limit:
                        os.ftruncate(out.fileno(), info.st_size)  # its size, for the checks' messages
                        unread[name] = f"{name} is {info.st_size} bytes, more than {than}"
                    else:
                        _copy_sparse(reader.fileno(), out.fileno(), info.st_size)
            if name == MANIFEST_NAME and name not in unread:
                listed = _listed_sizes(target)
    except BaseException:
        holder.cleanup()
        raise
    return holder


def check_contents(folder: Path, manifest: Any) -> str:
    """Every entry of the folder is listed (or is the manifest, or its declared signature)."""
    expected = {*manifest.files, MANIFEST_NAME} | ({SIGNATURE_NAME} if manifest.signature else set())
    found = sorted(os.listdir(folder))
    unlisted = [name for name in found if name not in expected]
    if unlisted:
        shown = ", ".join(_describe_entry(folder, n) for n in unlisted[:4])
        more = f" and {len(unlisted) - 4} more" if len(unlisted) > 4 else ""
        raise ArtifactError(f"{len(unlisted)} unlisted in the manifest: {shown}{more}; a complete export holds only "
                            "what its manifest lists")
    return f"{len(found)} entries, every one listed"


def check_bytes(folder: Path, name: str, entry: Any) -> int:
    """A listed file is a regular file of the recorded size and sha256; its size."""
    file = folder / name  # names are plain file names (the schema refuses paths)
    try:
        info = os.lstat(file)
    except FileNotFoundError:
        raise ArtifactError(f"{name} is missing") from None
    if stat.S_ISLNK(info.st_mode):
        raise ArtifactError(f"{name} is a symbolic link; an export folder holds regular files only")
    if not stat.S_ISREG(info.st_mode):
        raise ArtifactError(f"{name} is not a regular file")
    if info.st_size != entry.size:
        raise ArtifactError(f"{name}: size {info.st_size} bytes, manifest says {entry.size} (truncated or replaced)")
    digest = file_sha256(file)
    if digest != entry.sha256:
        raise ArtifactError(f"{name}: sha256 {digest[:12]}… does not match the manifest's {entry.sha256[:12]}… "
                            "(modified)")
    return info.st_size


def check_folder(path: Path, report: CheckReport, verify_key: Path | None, trust_unsigned_code: bool,
                 read: Callable[[Path], Any], describe: Callable[[Any], str], make: Callable[..., Any],
                 file_check: Callable[[Any, str, Any], str],
                 content_checks: Sequence[tuple[str, Callable[[Any], str]]]) -> Any:
    """Every folder-level check of a folder of either kind, added to `report`: its manifest (`read`, then
    `describe`d), the signature, the folder's entries, each listed file (`file_check`; external data first, so a
    model file passes only when its external data did), at least one model file, then `content_checks`. The
    folder (`make(folder, manifest, trust_unsigned_code=...)`) with `signature_verified`, `verified` and `sound`
    set (every gating check passed: only then is anything loaded; a model file failing its own check only keeps
    that file from being loaded), or None when the manifest could not be read at all."""
    origin, manifest_path = resolve_folder(path)
    label, manifest = str(origin), []
    try:
        snapshot = snapshot_folder(origin)
    except OSError as exc:
        report.add(Check(label, INTEGRITY, "folder contents", False, f"the folder cannot be read: {exc}"))
        return None
    folder = Path(snapshot.name)
    manifest_path = folder / manifest_path.name

    def read_manifest() -> str:
        manifest.append(read(manifest_path))
        return describe(manifest[0])

    first = report.add(run_check(label, INTEGRITY, MANIFEST_NAME, read_manifest))
    if not first.passed:
        if verify_key is not None:
            report.add(run_check(label, INTEGRITY, "signature", lambda: check_signature(folder, verify_key)))
        snapshot.cleanup()
        return None
    art = make(folder, manifest[0], trust_unsigned_code=trust_unsigned_code)
    art.origin, art.snapshot = origin, snapshot
    gate = [first]
    if verify_key is not None or art.manifest.signature is not None:
        gate.append(report.add(run_check(label, INTEGRITY, "signature", lambda: check_signature(folder, verify_key))))
        art.signature_verified = verify_key is not None and gate[-1].passed
    gate.append(report.add(run_check(label, INTEGRITY, "folder contents",
                                     lambda: check_contents(folder, art.manifest))))
    models = art.manifest.model_files()  # once: made per entry, 20,000 listed entries took 48 s (hunt 11a)
    for name, entry in sorted(art.manifest.files.items(), key=lambda item: item[1].format != EXTERNAL_DATA_FORMAT):
        check = report.add(run_check(label, INTEGRITY, name, lambda n=name, e=entry: file_check(art, n, e)))
        if check.passed:
            art.verified[name] = folder / name
        if name not in models:
            gate.append(check)
    if not models.keys() & art.verified.keys():
        gate.append(report.add(Check(label, INTEGRITY, "model artifacts", False,
                                     "no model artifact passed its integrity check")))
    for name, body in content_checks:
        gate.append(report.add(run_check(label, INTEGRITY, name, lambda b=body: b(art))))
    art.sound = all(check.passed or check.skipped for check in gate)
    return art
