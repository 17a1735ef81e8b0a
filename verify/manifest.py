"""Fill an export's staging folder with goldens and manifest from the verification's results."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from exporter.manifest import build_manifest, write_goldens, write_manifest

if TYPE_CHECKING:
    from exporter.artifacts import Artifact
    from exporter.backbones import BuiltModel
    from verify.oracle import Oracle
    from verify.report import Report


def write_artifact_folder(folder: Path, built: BuiltModel, artifacts: dict[str, Artifact], inputs: dict,
                          fp32: dict, oracle: Oracle, report: Report, identity: dict | None = None) -> None:
    """Goldens first, manifest last: a folder without its manifest never validates."""
    (input_name, array), = inputs.items()
    write_goldens(folder, input_name, array, fp32, oracle.outputs)
    dynamic = next((a.meta.dynamic_axes for a in artifacts.values() if a.path is not None and a.meta.dynamic_axes),
                   {})
    manifest = build_manifest(
        folder,
        {fmt: a for fmt, a in artifacts.items() if a.path is not None},
        model={**asdict(built.spec), "spec": str(built.spec), "weights": built.weights.source,
               "weights_sha256": built.weights.sha256},
        input_spec={"name": input_name, "shape": list(array.shape), "dtype": str(array.dtype),
                    "dynamic_axes": dynamic},
        outputs=built.output_names,
        tolerance=report.settings["tolerance"],
        floors=oracle.floors,
        verdicts=[{"a": p.a, "b": p.b, "kind": p.kind, "passed": p.passed,
                   "worst_output": p.worst.name, "worst_max_abs": p.worst.max_abs,
                   "worst_ratio": p.worst.ratio} for p in report.pairs],
        versions=report.versions,
    )
    if identity is not None:
        manifest["identity"] = identity  # what a later export into the same folder must match to replace it
    write_manifest(folder, manifest)
