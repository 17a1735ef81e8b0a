"""Fill an export's staging folder with goldens and manifest (and its signature) from the verification's
results."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.manifest import build_manifest, write_goldens, write_manifest

if TYPE_CHECKING:
    from exporter.artifacts import Artifact
    from exporter.backbones import BuiltModel
    from verify.judge.compare import PairResult
    from verify.judge.oracle import Oracle
    from verify.report import Report


def write_artifact_folder(folder: Path, built: BuiltModel, artifacts: dict[str, Artifact], inputs: dict,
                          fp32: dict, oracle: Oracle, report: Report, identity: dict | None = None,
                          sign_key: Path | None = None) -> None:
    """Goldens first, manifest next, signature last: a folder without its manifest (or, when signed, its
    signature) never validates."""
    import numpy as np

    from verify.judge.measure import measure_floors
    from verify.judge.oracle import channel_floors_sha256, folded_samples
    from verify.judge.summation import lifted

    (input_name, array), = inputs.items()
    if oracle.samples is not None:  # the oracle's own floors, on its own samples: the same figures, not remade
        samples, floors = oracle.samples, oracle.float32
    else:
        eager = next((a for a in artifacts.values() if a.built is not None), None)
        samples = folded_samples(eager, inputs) if eager is not None else []
        floors = lifted(measure_floors(fp32, oracle.outputs, samples=samples), oracle.summed)
    write_goldens(folder, input_name, array, fp32, oracle.outputs, samples[0] if samples else None)
    dynamic = next((a.meta.dynamic_axes for a in artifacts.values() if a.path is not None and a.meta.dynamic_axes),
                   {})
    manifest = build_manifest(
        folder,
        {fmt: a for fmt, a in artifacts.items() if a.path is not None},
        model={**{k: getattr(built.spec, k) for k in ("backbone", "norm", "view", "source", "factory")
                  if hasattr(built.spec, k)},
               "spec": str(built.spec), "weights": built.weights.source, "weights_sha256": built.weights.sha256},
        input_spec={"name": input_name, "shape": list(array.shape), "dtype": str(array.dtype),
                    "dynamic_axes": dynamic},
        outputs=built.output_names,
        tolerance=report.settings["tolerance"],
        # the float32 floor exactly as `verify artifact` re-derives it from these goldens
        floors={name: floor.value for name, floor in floors.items()},
        channel_floors_sha256=channel_floors_sha256(floors) if floors else None,
        # the bounds the floors were lifted to (a user's few-value head): the goldens cannot re-derive them
        summation_floor={name: [float(v) for v in np.atleast_1d(bound)] for name, bound in oracle.summed.items()
                         if name in floors} or None,
        verdicts=[verdict_record(p) for p in report.pairs],
        versions=report.versions,
        identity=identity,
        signed=sign_key is not None,
    )
    write_manifest(folder, manifest)
    if sign_key is not None:
        from exporter.signing import sign_folder

        sign_folder(folder, sign_key)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def verdict_record(pair: PairResult) -> dict[str, Any]:
    """A judged pair as the manifest records it: figures that could not be measured are null, with why."""
    worst = pair.worst if pair.outputs else None
    record: dict[str, Any] = {
        "a": pair.a, "b": pair.b, "kind": pair.kind, "passed": pair.passed,
        "worst_output": worst.name if worst else None,
        "worst_max_abs": _finite(worst.max_abs) if worst else None,
        "worst_ratio": _finite(worst.ratio) if worst else None,
    }
    nulls = [key for key, value in record.items() if value is None]
    if nulls:
        if worst is None:
            why = "the pair shares no output"
        elif worst.max_abs is None:
            why = worst.reason or "no difference could be measured"
        elif worst.ratio is None:
            why = "no noise floor for this output" if not worst.floor else "the ratio to the floor is not finite"
        else:
            why = "not finite"
        record["null_reason"] = f"{', '.join(nulls)}: {why}"
    return record
