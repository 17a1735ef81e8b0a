"""Fill an export's staging folder with goldens and manifest (and its signature) from the verification's
results."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.manifest import build_manifest, write_goldens, write_manifest

if TYPE_CHECKING:
    import numpy as np

    from exporter.artifacts import Artifact
    from exporter.backbones import BuiltModel
    from exporter.manifest import GoldenSet
    from verify.inputs import NamedInput
    from verify.judge.compare import PairResult
    from verify.judge.noise_floor import NoiseFloor
    from verify.judge.oracle import Oracle
    from verify.pipeline.stages import OracleResult
    from verify.report import Report


def write_artifact_folder(folder: Path, built: BuiltModel, artifacts: dict[str, Artifact], inputs: dict,
                          fp32: dict, oracle: Oracle, report: Report, identity: dict | None = None,
                          sign_key: Path | None = None, named: Sequence[NamedInput] = (),
                          oracles: Sequence[OracleResult] = ()) -> None:
    """Goldens first, manifest next, signature last: a folder without its manifest (or, when signed, its
    signature) never validates. `named` and `oracles` (every input the export judged on, and its eager float32 and
    oracle): the goldens keep as many of them as fit GOLDENS_BUDGET_BYTES (at least the first, `inputs`), and the
    recorded floors are pooled over those, as `verify artifact` re-derives them; without them, the first alone."""
    import numpy as np

    from exporter.manifest import GoldenSet, goldens_that_fit
    from verify.judge.oracle import channel_floors_sha256, pooled_floors

    (input_name, array), = inputs.items()
    eager = next((a for a in artifacts.values() if a.built is not None), None)
    if len(named) > 1 and len(oracles) == len(named):
        candidates = [(item.label, item.array, result.fp32, result.oracle) for item, result in zip(named, oracles)]
    else:
        candidates = [(named[0].label if named else "", array, fp32, oracle)]
    same = [c for c in candidates if c[1].shape == array.shape and c[1].dtype == array.dtype]  # the files' input
    first = _golden(eager, input_name, *same[0][1:])
    estimates = [first[0]] + [GoldenSet(x, out, result.outputs, first[0].folded) for _, x, out, result in same[1:]]
    kept = [first] + [_golden(eager, input_name, *c[1:]) for c in same[1:goldens_that_fit(estimates)]]
    summed = _summed_over([result.summed for _, _, _, result in same[:len(kept)]])
    floors = pooled_floors([lift for _, lift in kept])
    write_goldens(folder, input_name, array, kept[0][0].float32, kept[0][0].float64, kept[0][0].folded or None,
                  more=[golden for golden, _ in kept[1:]])
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
        summation_floor={name: [float(v) for v in np.atleast_1d(bound)] for name, bound in summed.items()
                         if name in floors} or None,
        verdicts=[verdict_record(p) for p in report.pairs],
        versions=report.versions,
        identity=identity,
        signed=sign_key is not None,
        golden_labels=[label for label, *_ in same[:len(kept)]] if len(kept) > 1 else (),
    )
    write_manifest(folder, manifest)
    if sign_key is not None:
        from exporter.signing import sign_folder

        sign_folder(folder, sign_key)


def _golden(eager: Artifact | None, input_name: str, x: np.ndarray, fp32: dict,
            oracle: Oracle) -> tuple[GoldenSet, dict[str, NoiseFloor]]:
    """One input's goldens and its floors, exactly as `verify artifact` re-derives them: the oracle's own floors where
    it measured them on its own rounding samples (not remade), else measured here."""
    from exporter.manifest import GoldenSet
    from verify.judge.measure import measure_floors
    from verify.judge.oracle import folded_samples
    from verify.judge.summation import lifted

    if oracle.samples is not None:
        samples, floors = oracle.samples, oracle.float32
    else:
        samples = folded_samples(eager, {input_name: x}) if eager is not None else []
        floors = lifted(measure_floors(fp32, oracle.outputs, samples=samples), oracle.summed)
    return GoldenSet(x, fp32, oracle.outputs, samples[0] if samples else None), floors


def _summed_over(each: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The summation floors of several inputs, per output (and channel) the largest: lifting each input's floors to
    it and pooling them gives the floors pooled over the inputs each lifted to its own (both are maxima)."""
    import numpy as np

    found: dict[str, Any] = {}
    for bounds in each:
        for name, bound in bounds.items():
            bound = np.atleast_1d(np.asarray(bound, dtype=np.float64))
            before = found.get(name)
            if before is None:
                found[name] = bound
            elif before.shape == bound.shape:
                found[name] = np.maximum(before, bound)
            else:
                found[name] = np.asarray([max(before.max(), bound.max())])
    return found


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
