"""Where `export`, `compare`, `explain` and `reduce` may write: never inside an export folder, which holds only what
its manifest lists (one more file and `verify artifact` fails the folder: "2 unlisted in the manifest"), and never
over a file the command reads."""

from __future__ import annotations

from pathlib import Path

from exporter.errors import UsageError, VerifyError
from exporter.manifest import MANIFEST_NAME, loads_strict, read_manifest_text


def export_folder_holding(path: Path) -> Path | None:
    """The export folder `path` is in (or is), else None: the nearest folder above it whose manifest parses as one."""
    resolved = Path(path).resolve()
    for place in (resolved, *resolved.parents):
        if _holds_export(place):
            return place
    return None


def refuse_inside_export(path: Path | None, option: str) -> None:
    """UsageError when `option`'s `path` would write into an export folder."""
    if path is None:
        return
    folder = export_folder_holding(path)
    if folder is not None:
        raise UsageError(f"{option} {path} is inside the export folder {folder}, which must hold only what its "
                         f"{MANIFEST_NAME} lists (`verify artifact` would then fail it); write it elsewhere")


def _holds_export(place: Path) -> bool:
    try:
        data = loads_strict(read_manifest_text(place / MANIFEST_NAME))
    except (VerifyError, ValueError, OSError):
        return False
    return isinstance(data, dict) and "files" in data


def refuse_overwriting_sources(sources: list[str | None], what: str = "the report", **paths: Path | None) -> None:
    """UsageError when a report would be written over a file a source names (a model file, or the `.py` of
    `file.py:factory`): `--json model.onnx` replaced the model it judged, `--json my_models.py` the user's code,
    `reduce m/piece.onnx ... --out m` the file it reduced (`what` is what would be written)."""
    named = {Path(text).resolve() for source in sources if source for text in (source, source.rpartition(":")[0])
             if text and Path(text).is_file()}
    for option, path in paths.items():
        if path is not None and Path(path).resolve() in named:
            raise UsageError(f"--{option} {path} is a file this command reads (a model, its source or its input); "
                             f"write {what} elsewhere")
