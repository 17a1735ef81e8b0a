"""What makes two exports the same export, recorded in the manifest as `identity`: an export may replace
a folder silently only when the folder holds the same identity (identical content); anything else is
refused with a message saying how to keep both or replace it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.errors import ArtifactError, UsageError
from exporter.fsio import path_kind
from exporter.manifest import MANIFEST_NAME, loads_strict, read_manifest_text

if TYPE_CHECKING:
    from exporter.export import ExportOptions
    from exporter.spec import ModelSpec
    from verify.inputs import NamedInput

HOW = "pass --out elsewhere to keep both, or --overwrite to replace it"


def export_identity(spec: ModelSpec, weights_sha256: str, seed: int, options: ExportOptions,
                    inputs: Sequence[NamedInput]) -> dict[str, Any]:
    """Everything that decides the folder's files: the model, its weights, the seed, the export
    options and the input(s) (the verdict settings only re-judge the same files)."""
    from verify.inputs import inputs_sha256

    identity = {
        "spec": str(spec),
        "weights_sha256": weights_sha256,
        "seed": seed,
        "export": options.to_dict(),
        "input": {"shape": list(inputs[0].array.shape), "count": len(inputs), "sha256": inputs_sha256(inputs)},
    }
    return json.loads(json.dumps(identity))  # as it reads back from the manifest (tuples become lists)


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What tells two identities apart, in words."""
    found = []
    if old.get("spec") != new["spec"]:
        found.append(f"model {old.get('spec')} vs {new['spec']}")
    if old.get("seed") != new["seed"]:
        found.append(f"seed {old.get('seed')} vs {new['seed']}")
    if old.get("weights_sha256") != new["weights_sha256"]:
        found.append("other weights")
    old_export = old.get("export") if isinstance(old.get("export"), dict) else {}
    for key, value in new["export"].items():
        before = old_export.get(key)
        if isinstance(value, dict) and isinstance(before, dict):  # one format's options: name the field
            found += [f"{key} {field} {before.get(field)} vs {v}" for field, v in value.items()
                      if before.get(field) != v]
        elif before != value:
            found.append(f"{key} {before} vs {value}")
    if old.get("input") != new["input"]:
        found.append("another input")
    return found or ["fields this version does not know"]


def read_manifest(folder: Path) -> Any:
    """The folder's manifest as JSON, read as `verify artifact` reads it (a FIFO, device, link or huge file there is
    not read); None where it cannot be read or parsed."""
    try:
        return loads_strict(read_manifest_text(folder / MANIFEST_NAME))
    except (ArtifactError, ValueError):
        return None


def refuse_other_export(folder: Path, identity: dict[str, Any]) -> None:
    """Raise unless `folder` holds a complete export of this very identity. Called before the work and
    again under the folder lock at rename time (exporter.fsio.staged_folder)."""
    kind = path_kind(folder)
    if kind == "missing":
        return
    if kind != "a directory":
        raise UsageError(f"{folder} exists and is {kind or 'a file'}, not an export folder; {HOW}")
    manifest = read_manifest(folder)
    if manifest is None:
        raise UsageError(f"{folder} exists but holds no readable {MANIFEST_NAME} (not an export of this tool, "
                         f"or damaged); {HOW}")
    old = manifest.get("identity") if isinstance(manifest, dict) else None
    if old == identity:
        return
    if not isinstance(old, dict):
        raise UsageError(f"{folder} holds an export that records no identity (an older version); {HOW}")
    raise UsageError(f"{folder} already holds a different export ({', '.join(differences(old, identity))}); {HOW}")
