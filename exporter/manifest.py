"""`manifest.json` and `goldens.npz`: the proof an artifact folder carries. Schema in README."""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.artifacts import Artifact
from exporter.fsio import write_json

if TYPE_CHECKING:
    import numpy as np

MANIFEST_NAME = "manifest.json"
GOLDENS_NAME = "goldens.npz"
MANIFEST_SCHEMA = "backbone-verify/manifest"
MANIFEST_SCHEMA_VERSION = 1


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_entry(path: Path, **extra: Any) -> dict[str, Any]:
    return {"sha256": file_sha256(path), "size": path.stat().st_size, **extra}


def write_goldens(folder: Path, input_name: str, inputs: np.ndarray, fp32: dict[str, np.ndarray],
                  fp64: dict[str, np.ndarray]) -> Path:
    import numpy as np

    arrays = {f"input.{input_name}": inputs}
    arrays.update({f"float32.{k}": v for k, v in fp32.items()})
    arrays.update({f"float64.{k}": v for k, v in fp64.items()})
    path = folder / GOLDENS_NAME
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    return path


def read_goldens(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """{'input': {...}, 'float32': {...}, 'float64': {...}}, never unpickling."""
    import numpy as np

    groups: dict[str, dict[str, np.ndarray]] = {"input": {}, "float32": {}, "float64": {}}
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            group, _, name = key.partition(".")
            if group in groups:
                groups[group][name] = data[key]
    return groups


def build_manifest(folder: Path, artifacts: dict[str, Artifact], model: dict[str, Any],
                   input_spec: dict[str, Any], outputs: list[str], tolerance: dict[str, Any],
                   floors: dict[str, float], verdicts: list[dict[str, Any]], versions: dict[str, str],
                   ) -> dict[str, Any]:
    from exporter.formats import get_format

    files = {}
    for fmt, artifact in artifacts.items():
        if artifact.path is None:
            continue
        entry = get_format(fmt)
        files[artifact.path.name] = file_entry(folder / artifact.path.name, format=fmt,
                                               **entry.manifest_fields(artifact))
        for companion in entry.companion_files(folder / artifact.path.name):
            files[companion.name] = file_entry(companion, format="external-data", of=artifact.path.name)
    files[GOLDENS_NAME] = file_entry(folder / GOLDENS_NAME, format="goldens")
    return {
        "schema": MANIFEST_SCHEMA,
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "files": files,
        "versions": versions,
        "model": model,
        "input": input_spec,
        "outputs": outputs,
        "tolerance": tolerance,
        "noise_floor": floors,
        "goldens": {"file": GOLDENS_NAME, "input": "input.<name>", "float32": "float32.<output>",
                    "float64": "float64.<output>"},
        "verdicts": verdicts,
        "passed": all(v["passed"] for v in verdicts),
    }


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    path = folder / MANIFEST_NAME
    write_json(path, manifest)
    return path
