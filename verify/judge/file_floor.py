"""Guard 3: the floor measured on the exported file itself (hunt 12b's open hole).

The float32 floor is the eager model's float32 run against its float64 run. A user's model can add to its eager
runs what its export leaves out: noise seeded by the input's values (the determinism guard sees the same bits
twice), drawn in float32, in float64 or in both, under a branch on `torch.compiler.is_exporting()`. The "floor" then
measures that noise, not rounding (the floor bound, guard 2, allows up to ~1000x a correct run's), and an export
that differs from eager by it "agrees": exit 0.

Where a runtime runs the exported file in float64 (torch.export, TorchScript: `supports_float64`), the file's own
floor, its float32 run against its float64 run, measures the rounding of what the file computes. Both floors
are float32 realizations of one function's rounding, so they agree within a small factor (README, "The file's
own floor"); a model floor above FLOOR_AGREEMENT x the file's in any channel of any output, on any input, is noise
the file does not have: nothing is judged on it. Every variant lifts the model's floor alone: noise in float32
only (eager float32 moves), in float64 only (the reference moves), in both (they move apart).

It runs where the model is the user's code (a registered backbone is this project's: its eager path is the
function the export traces) and the auto tolerance judges on the floor. ONNX Runtime has no float64 kernels for
most operators (Conv is float32 only), so an export made only of ONNX files cannot be checked: the report says so."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from exporter.artifacts import Artifact
    from verify.judge.oracle import NoiseFloor

FLOOR_AGREEMENT = 4.0
"""The most a model's floor may exceed the exported file's own in one channel (README, "The file's own floor":
correct exports measured at most ~1.3x, injected noise 10-70x)."""

NO_FILE_FLOOR = ("No exported file here runs in float64 (ONNX Runtime has no float64 convolutions), so the model's "
                 "floor was not checked against a file's own (verify/judge/file_floor.py): add --format pt2 to check "
                 "that the eager model computes nothing its export leaves out")
"""The note of a user model's export made only of files no runtime runs in float64."""


@dataclass(frozen=True)
class FileFloors:
    """An exported file's own float32 floors (its float32 run against its float64 run), one dict per input."""

    label: str
    """The file and the runtime that ran it, as the report names the run."""
    floors: list[dict[str, NoiseFloor]]


def measure_file_floors(runtime: str, artifact: Artifact, feeds: Sequence[Mapping[str, np.ndarray]],
                        fp32: Sequence[Mapping[str, np.ndarray]] | None, label: str) -> FileFloors:
    """`artifact` run by `runtime` in float64 on the CPU, on private copies of every feed, and its floors against
    `fp32` (the file's float32 runs on the CPU; None: run here). A file that cannot run in float64 raises
    ArtifactError (the caller refuses to judge: its floor cannot be checked)."""
    from verify.judge.oracle import measure_floors
    from verify.judge.trust import copy_feed
    from verify.runtimes import RuntimeOptions, make_runtime

    double = make_runtime(runtime, RuntimeOptions(dtype="float64")).load(artifact)
    single = make_runtime(runtime).load(artifact) if fp32 is None else None
    floors = []
    for index, feed in enumerate(feeds):
        reference = double.run(copy_feed(feed))
        run = single.run(copy_feed(feed)) if single is not None else dict(fp32[index])
        floors.append(measure_floors(run, reference))
    return FileFloors(label, floors)


def agreement_ratio(model: NoiseFloor, file: NoiseFloor) -> float:
    """The largest ratio of the model's floor to the file's, over the output's channels (or the whole output
    where either has no channels, or they have other counts)."""
    import numpy as np

    ours, theirs = model.group_floors, file.group_floors
    if ours.shape != theirs.shape:
        ours, theirs = np.asarray([model.value]), np.asarray([file.value])
    return float((ours / theirs).max())


def agreement_problems(model: Sequence[Mapping[str, NoiseFloor]], files: Sequence[FileFloors]) -> list[str]:
    """One line per file whose own floor is below FLOOR_AGREEMENT x less than the model's (on its worst output,
    channel and input)."""
    problems = []
    for file in files:
        worst: tuple[float, str, int] | None = None
        for index, (ours, theirs) in enumerate(zip(model, file.floors, strict=True)):
            for name in sorted(set(ours) & set(theirs)):
                ratio = agreement_ratio(ours[name], theirs[name])
                if worst is None or ratio > worst[0]:
                    worst = (ratio, name, index)
        if worst is not None and worst[0] > FLOOR_AGREEMENT:
            ratio, name, index = worst
            problems.append(
                f"The model's float32 floor of {name} is {ratio:.3g}x the one {file.label} measures on itself (its "
                f"float32 run against its float64 run; input {index + 1}), over the {FLOOR_AGREEMENT:g}x that "
                "rounding differences allow: the eager model computes something its export leaves out (noise drawn "
                "only in eager, a branch on torch.compiler.is_exporting()), so its floor is not rounding. Not judged "
                "(an explicit --rtol/--atol or --decimal judges without a floor)")
    return problems


def unrunnable_problem(label: str, reason: str) -> str:
    """The line refusing a judgement whose floor could not be checked on a file that should run in float64."""
    return (f"{label} could not run in float64 to check the model's floor against its own ({reason}); a file "
            "exported from a float32 model runs in float64 when its graph casts nothing to float32. Not judged (an "
            "explicit --rtol/--atol or --decimal judges without a floor)")


def floors_record(files: Sequence[FileFloors]) -> list[dict[str, Any]]:
    """The files' floors as plain data for the trust evidence (`verify.judge.trust.evidence`)."""
    return [{"label": file.label, "inputs": [{name: floor.to_dict() for name, floor in floors.items()}
                                             for floors in file.floors]} for file in files]


def floors_from_record(data: Any) -> list[FileFloors]:
    """`floors_record` read back; malformed data raises (KeyError, TypeError, ValueError or UsageError)."""
    from verify.judge.oracle import NoiseFloor

    if not isinstance(data, list):
        raise TypeError("file floors")
    return [FileFloors(str(item["label"]), [{str(name): NoiseFloor.from_dict(floor) for name, floor in inputs.items()}
                                            for inputs in item["inputs"]]) for item in data]
