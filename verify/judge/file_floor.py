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

The file's float64 run vouches for its floor only as far as it agrees with the model's float64 run (the oracle):
both are float64 realizations of one function, so a correct export's differ far below the float32 floor (correct
user models measured at most 0.35x the file's floor, most 0 or ~1e-9x). A file whose float64 run alone moves (a
term zero in float32 and not in float64, with no cast in its graph: `((y * 0 + 1) + 2 ** -25) - 1`) lifts its own
floor with it, and eager-only noise got through again (hunt 13a: exit 0 with a 5e-6 relative error in the export,
60x the conv's real floor); `vouched_floors` takes that difference off each channel's floor.

Like is held to like: the model's side is its held float32 run against its float64 run, lifted to the summation
bounds the file's is lifted to (`model_floors`, Oracle.held), never the floor the verdicts judge on, whose channels the
model's rounding samples (a copy with its norms folded into its convolutions, or with laned GroupNorm statistics)
widen: a file's own floor has no such sample, and a correct mobilenet_v3_small features model at 128 px was refused at
4.09x its witness's floor (witness 46), the folded copy alone lifting its channels 2.5-4.1x. The samples run the
model's code, so a witness measured with them would take the model's eager-only terms in too (up to the output's floor).

It runs where the model is the user's code (a registered backbone is this project's: its eager path is the
function the export traces) and the auto tolerance judges on the floor. ONNX Runtime has no float64 kernels for
most operators (Conv is float32 only), so an export made only of ONNX files cannot be checked: the report says so."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from exporter.artifacts import Artifact
    from verify.judge.noise_floor import NoiseFloor
    from verify.judge.oracle import Oracle
    from verify.runtimes import RuntimeOptions

FLOOR_AGREEMENT = 4.0
"""The most a model's floor may exceed the exported file's own in one channel (README, "The file's own floor":
correct exports measured at most ~1.3x, injected noise 10-70x)."""

NO_FILE_FLOOR = ("No exported file here runs in float64 (ONNX Runtime has no float64 convolutions; an AOTInductor "
                 "package is compiled for float32), nor could a private witness of the model traced as they were "
                 "(verify/judge/file_witness.py), so the model's floor was not checked against a file's own "
                 "(verify/judge/file_floor.py): add --format pt2 or --format torchscript to check that the eager model "
                 "computes nothing its export leaves out")
"""The note of a user model's export made only of files no runtime runs in float64, where no witness could run in
float64 either (torch.export and a trace failed, or its graph casts to float32)."""


def unchecked_note(file: str) -> str:
    """The note of `verify compare` holding a user's model against `file`, which no runtime runs in float64, where
    its witnesses did not all measure a floor (as NO_FILE_FLOOR notes it for `verify export`; hunt 13a)."""
    return (f"No runtime runs {file} in float64, nor could every private witness of the model (verify/judge/"
            "file_witness.py; none is made where a pair already fails), so the model's floor was not checked against "
            "the file's own (verify/judge/file_floor.py): compare with a .pt2 or TorchScript export of the model to "
            "check that it computes nothing its export leaves out")


@dataclass(frozen=True)
class FileFloors:
    """An exported file's own float32 floors (its float32 run against its float64 run), one dict per input."""

    label: str
    """The file and the runtime that ran it, as the report names the run."""
    floors: list[dict[str, NoiseFloor]]


def measure_file_floors(runtime: str, artifact: Artifact, feeds: Sequence[Mapping[str, np.ndarray]],
                        fp32: Sequence[Mapping[str, np.ndarray]] | None, label: str,
                        model_float64: Sequence[Mapping[str, np.ndarray]] | None = None,
                        summed: Sequence[Mapping[str, float]] = ()) -> FileFloors:
    """`artifact` run by `runtime` in float64 on the CPU, on private copies of every feed, and its floors against
    `fp32` (the file's float32 runs on the CPU; None: run here), each `vouched_floors` by the model's float64 run on
    that feed (`model_float64`, the oracle's outputs), and lifted to the summation floors the model's were lifted to
    on that feed (`summed`, Oracle.summed: one function's rounding, so the same bound on both). A file that cannot
    run in float64 raises ArtifactError (the caller refuses to judge: its floor cannot be checked)."""
    from verify.inputs import copy_feed
    from verify.judge.measure import measure_floors
    from verify.judge.summation import lifted
    from verify.runtimes import RuntimeOptions, make_runtime

    double = make_runtime(runtime, RuntimeOptions(dtype="float64")).load(artifact)
    single = make_runtime(runtime).load(artifact) if fp32 is None else None
    floors = []
    for index, feed in enumerate(feeds):
        reference = double.run(copy_feed(feed))
        run = single.run(copy_feed(feed)) if single is not None else dict(fp32[index])
        own = measure_floors(run, reference)
        own = own if model_float64 is None else vouched_floors(own, reference, model_float64[index])
        floors.append(lifted(own, summed[index]) if index < len(summed) else own)
    return FileFloors(label, floors)


def vouched_floors(floors: Mapping[str, NoiseFloor], file64: Mapping[str, np.ndarray],
                   model64: Mapping[str, np.ndarray]) -> dict[str, NoiseFloor]:
    """A file's own floors (its float32 run against `file64`, its float64 run) less, in each channel (or the whole
    output), the most `file64` differs there from `model64`, the model's float64 run: where the file's float64 run
    is off by D, its float32 run's distance to the function's float64 value is at least its floor less D. Never
    below one float32 ulp of the output's scale. Outputs the model lacks, or has in another shape, are kept as
    measured (they are not compared with the model)."""
    import dataclasses

    import numpy as np

    from verify.judge.noise_floor import CHANNEL_AXIS, channelled, other_axes
    from verify.judge.precision import EPS

    vouched = dict(floors)
    for name, floor in floors.items():
        ours, theirs = file64.get(name), model64.get(name)
        if ours is None or theirs is None or np.shape(ours) != np.shape(theirs) or not np.size(ours):
            continue
        ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
        apart = np.abs(ours - theirs)
        apart = np.where(np.isfinite(apart), apart, 0.0)  # a NaN reference element is left out of every floor
        if floor.channels is not None and channelled(apart.shape) and apart.shape[CHANNEL_AXIS] == floor.groups:
            apart = apart.max(axis=other_axes(apart.ndim))
        else:
            apart = np.asarray([apart.max()])
        if not (apart > 0).any():
            continue
        magnitude = np.abs(np.where(np.isfinite(ours), ours, 0.0))
        least = max(EPS[floor.precision] * float(magnitude.max(initial=0.0)), np.finfo(np.float64).tiny)
        if floor.channels is None:
            value = max(floor.value - float(apart[0]), least)
            bulk = None if floor.bulk is None else np.minimum(floor.bulk, value)
            vouched[name] = dataclasses.replace(floor, value=value, bulk=bulk)
            continue
        if apart.shape != floor.channels.shape:
            apart = np.full(floor.channels.shape, apart.max())
        channels = np.maximum(floor.channels - apart, least)
        bulk = None if floor.bulk is None else np.minimum(floor.bulk, channels)
        vouched[name] = dataclasses.replace(floor, value=max(float(channels.max()), least), channels=channels,
                                            bulk=bulk)
    return vouched


def model_floors(oracle: Any) -> dict[str, NoiseFloor]:
    """The model's floors guard 3 holds to a file's own, on one input: its held float32 run's against its float64 run,
    lifted to the summation bounds (`Oracle.held`), without the rounding samples that widen `Oracle.float32`'s
    channels for the verdicts (a file's own floor has none); an oracle not measured here has its `float32` (or, with
    none, its `noise`)."""
    return oracle.held or oracle.float32 or oracle.noise


def agreement_ratio(model: NoiseFloor, file: NoiseFloor) -> float:
    """The largest ratio of the model's floor to the file's, over the output's channels (or the whole output
    where either has no channels, or they have other counts)."""
    import numpy as np

    ours, theirs = model.group_floors, file.group_floors
    if ours.shape != theirs.shape:
        ours, theirs = np.asarray([model.value]), np.asarray([file.value])
    return float((ours / theirs).max())


def output_floor_ratio(over: Mapping[str, NoiseFloor], under: Mapping[str, NoiseFloor],
                       names: Iterable[str] | None = None) -> tuple[float, str] | None:
    """The largest ratio of `over`'s per-output floor to `under`'s, with its output, over the outputs both have (or
    `names`); None where they share none. Per output, not per channel: a saved program's floor against its model's
    (`verify compare`, `verify explain`; hunt 24c), on one input, where a channel's floor is noisy (correct resnet18
    files with another norm: channels up to 3.8x, outputs at most 1.74x)."""
    shared = [name for name in (names if names is not None else over)
              if over.get(name) is not None and under.get(name) is not None]
    return max(((over[name].value / under[name].value, name) for name in shared), default=None)


def agreement_problems(model: Sequence[Mapping[str, NoiseFloor]], files: Sequence[FileFloors]) -> list[str]:
    """One line per file whose own floor the model's exceeds by more than FLOOR_AGREEMENT x (on its worst output,
    channel and input), or that measured no floor on any output the model has on some input (nothing to check: a
    record whose files' outputs were renamed passed unchecked, hunt 13a)."""
    problems = []
    for file in files:
        worst: tuple[float, str, int] | None = None
        for index, (ours, theirs) in enumerate(zip(model, file.floors, strict=True)):
            if ours and not set(ours) & set(theirs):
                problems.append(f"{file.label} measured its own floor on none of the model's outputs "
                                f"({', '.join(sorted(ours))}) on input {index + 1}: the model's floor could not be "
                                "checked against it. Not judged (an explicit --rtol/--atol or --decimal judges without "
                                "a floor)")
                break
            for name in sorted(set(ours) & set(theirs)):
                ratio = agreement_ratio(ours[name], theirs[name])
                if worst is None or ratio > worst[0]:
                    worst = (ratio, name, index)
        if worst is not None and worst[0] > FLOOR_AGREEMENT:
            ratio, name, index = worst
            problems.append(
                f"The model's float32 floor of {name} is {ratio:.3g}x the one {file.label} measures on itself (its "
                f"float32 run against its float64 run, less what that differs from the model's; input {index + 1}), "
                f"over the {FLOOR_AGREEMENT:g}x that rounding differences allow: the eager model computes something "
                "its export leaves out (noise drawn only in eager, a branch on torch.compiler.is_exporting()), or the "
                "export computes another function (its float64 run is not the model's; the pairs show by how "
                "much), so its floor is not rounding. Not judged (an explicit --rtol/--atol or --decimal judges "
                "without a floor)")
    return problems


def cross_floors(float32: Mapping[str, np.ndarray], float64: Mapping[str, np.ndarray],
                 summed: Mapping[str, Any] | None = None) -> dict[str, NoiseFloor]:
    """The floors of one side's run (`float32`) against the other side's float64 run (`float64`), on the outputs
    both have in one shape, lifted to `summed` (the float64 side's summation floors, as its own floors are)."""
    import numpy as np

    from verify.judge.measure import measure_floors
    from verify.judge.summation import lifted

    shared = {name: values for name, values in float64.items()
              if name in float32 and np.shape(float32[name]) == np.shape(values)}
    return lifted(measure_floors(dict(float32), shared), summed or {})


WITHOUT_FLOOR = "Not judged (an explicit --rtol/--atol or --decimal judges without a floor)"
"""How a refusal of a floor ends where the command can judge without one."""

CHANNEL_AGREEMENT = 3 * FLOOR_AGREEMENT
"""The most one channel of a file's own floor, pooled over the inputs, may exceed what the other file's float32 run
measures against its float64 run (`pair_floor_problems`; correct TorchScript or .pt2 vs ONNX files of resnet18 at
32 px, each norm: up to 5.5x on one input, 3.2x pooled over four; per output at most 2.1x)."""


def pair_floor_problems(labels: Sequence[str], float32: Sequence[Sequence[Mapping[str, np.ndarray]]],
                        float64: Sequence[Sequence[Mapping[str, np.ndarray]]],
                        own: Sequence[Sequence[Mapping[str, NoiseFloor]]],
                        summed: Sequence[Sequence[Mapping[str, Any]]], files: Sequence[bool],
                        remedy: str = WITHOUT_FLOOR) -> list[str]:
    """Two sides of `verify compare`, each side's floor held to the other's float32 run (the "term only in the file's
    float32 run": a file that computes `y * ((y * 0 + 1e-42) * 1e21 * 1e21)` is 1.0005 in float32, where the
    subnormal rounds, and 1.0 in float64; its own floor took the 0.05 % in, lifted the pair's, and `verify compare
    bad.pt good.onnx` agreed at 1.0x, exit 0). Per side, per input: `labels`, its float32 run judged (`float32`), its
    float64 run (`float64`, {} where none), its float32 floors (`own`, its float32 run against that float64 run),
    its summation floors (`summed`); `remedy` ends each line. A side with a float64 run that is a file (`files`; a
    model is held to its files by guard 3) may measure a floor at most FLOOR_AGREEMENT x the other side's float32 run
    against that same float64 run on each output and input, and CHANNEL_AGREEMENT x in each channel pooled over the
    inputs (as the pair is judged): both are float32 realizations of one function's rounding, whatever runtime
    rounds them (an ONNX file, with no float64 run, is held too)."""
    problems = []
    for mine, theirs in ((0, 1), (1, 0)):
        judged = [(ours, cross_floors(float32[theirs][index], reference, summed[mine][index]))
                  for index, (ours, reference) in enumerate(zip(own[mine], float64[mine], strict=True))
                  if files[mine] and ours and reference]
        found = side_problem([ours for ours, _ in judged], [cross for _, cross in judged])
        problems += [cross_problem(labels[mine], labels[theirs], *found, remedy)] if found else []
    return problems


def side_problem(own: Sequence[Mapping[str, NoiseFloor]], cross: Sequence[Mapping[str, NoiseFloor]]
                 ) -> tuple[tuple[float, str], str, float] | None:
    """`pair_floor_problems` for one side: (its worst ratio and output, where, the bound it exceeds), or None."""
    from verify.judge.oracle import pooled_floors

    worst = max(((*found, index) for index, (ours, theirs) in enumerate(zip(own, cross, strict=True))
                 if (found := output_floor_ratio(ours, theirs)) is not None), default=None)
    if worst is not None and worst[0] > FLOOR_AGREEMENT:
        return worst[:2], f"input {worst[2] + 1}", FLOOR_AGREEMENT
    ours, theirs = pooled_floors(list(own)), pooled_floors(list(cross))
    channel = max(((agreement_ratio(ours[name], theirs[name]), name) for name in sorted(set(ours) & set(theirs))),
                  default=None)
    if channel is not None and channel[0] > CHANNEL_AGREEMENT:
        return channel, "its worst channel, pooled over the inputs", CHANNEL_AGREEMENT
    return None


def cross_problem(label: str, other: str, worst: tuple[float, str], where: str, bound: float,
                  remedy: str = WITHOUT_FLOOR) -> str:
    """The line refusing a pair where `label`'s own floor is `worst` x what `other`'s float32 run measures against
    `label`'s float64 run (`where`: on which input, or channel), over `bound`; `remedy` ends it."""
    ratio, name = worst
    return (f"{label}'s float32 run is another function than its float64 one: its float32 floor of {name} is "
            f"{ratio:.3g}x what {other}'s float32 run measures against {label}'s float64 run ({where}; rounding "
            f"allows {bound:g}x), a term only float32 rounds (a subnormal constant scaled up), not rounding. {remedy}")


def unrunnable_problem(label: str, reason: str) -> str:
    """The line refusing a judgement whose floor could not be checked on a file that should run in float64."""
    return (f"{label} could not run in float64 to check the model's floor against its own ({reason}); a file "
            "exported from a float32 model runs in float64 when its graph casts nothing to float32. Not judged: add "
            "--format torchscript (its file may run in float64 where this one cannot), or judge without a floor "
            "(--rtol/--atol or --decimal)")


def floors_record(files: Sequence[FileFloors]) -> list[dict[str, Any]]:
    """The files' floors as plain data for the trust evidence (`verify.judge.trust.evidence`)."""
    return [{"label": file.label, "inputs": [{name: floor.to_dict() for name, floor in floors.items()}
                                             for floors in file.floors]} for file in files]


UNRECORDED = ("No file floors are recorded for this user model (verify/judge/file_floor.py), though a file it was "
              "exported to ran on a runtime that runs it in float64: the evidence was edited or cut. Not judged; run "
              "the export again")
"""The line refusing a stored result whose guard 3 evidence is missing where guard 3 ran."""


def unrecorded_problems(trust: Any, user_model: bool, labels: Sequence[str]) -> list[str]:
    """Guard 3 re-derived from a stored result (`trust`, `verify.judge.trust.evidence`) needs its "files" wherever it
    ran: a user's model judged on the auto tolerance, with a run (`labels`, the runs' labels: `exported`,
    `torchscript(cuda)`) of a file its runtime runs in float64. Absent there, an edit removed them (a stored result
    with its "files" and problems cut re-judged as agree: hunt 13a); `verify.judge.trust.evidence_problems` alone
    cannot tell, as a registered backbone's record has none."""
    from exporter.formats import get_format
    from verify.runtimes import RUNTIMES, runtime_class

    if not user_model or not isinstance(trust, Mapping) or trust.get("mode") != "auto" or "files" in trust:
        return []
    names = {str(label).split("(")[0] for label in labels} & set(RUNTIMES.names())
    runs_file_in_float64 = any(runtime_class(name).supports_float64
                               and any(get_format(fmt).is_file for fmt in runtime_class(name).formats)
                               for name in names)
    return [UNRECORDED] if runs_file_in_float64 else []


def floors_from_record(data: Any) -> list[FileFloors]:
    """`floors_record` read back; malformed data raises (KeyError, TypeError, ValueError or UsageError)."""
    from verify.judge.noise_floor import NoiseFloor

    if not isinstance(data, list):
        raise TypeError("file floors")
    return [FileFloors(str(item["label"]), [{str(name): NoiseFloor.from_dict(floor) for name, floor in inputs.items()}
                                            for inputs in item["inputs"]]) for item in data]


REFERENCE_AGREEMENT = 1e-3
"""The most a file's float64 run by a reference (its runtime's `float64_reference`) may differ from its runtime's
float32 run, relative to the output's largest magnitude, for its floor to be measured on it: float32 rounding is ~1e-6
of that (the guard on floors, verify/judge/trust.py `floor_problems`, refuses over ~2.4e-4 at K = 1000 already), a
conversion or operator bug O(1); over it the file is judged on its spread, and the floor source says why. Below it, an
operator the reference implements otherwise (its LRN: 1.2e-4 of the largest value at alpha 1e-5) lifts each floor ~600x
unseen, and a pair of files with it passed a weight error ~1000x its float32 floor, exit 0 (review 44): the runtime's
float32 run is also held to the reference's own float32 run of the file as saved (`reference_disagreement`'s `own`)."""


def float64_file_oracles(artifact: Artifact, feeds: Sequence[dict[str, np.ndarray]],
                         fp32: Sequence[dict[str, np.ndarray] | None], options: RuntimeOptions | None = None
                         ) -> tuple[list[Oracle] | None, str]:
    """A file's oracle on each feed from its reference's float64 run (its runtime's `float64_reference`; for `verify
    compare` only: `verify export` judges its files on the model's own float64 oracle) and its format's own runtime's
    float32 run (`fp32`, None: run here), as a TorchScript file's; (None, why) where it has none: no reference for its
    format, a reduced precision (its floor is not float32's), a graph the reference cannot convert or run, or a run that
    disagrees with the runtime's (`REFERENCE_AGREEMENT`). Never raises for the file: the caller falls back."""
    from verify.judge.measure import measure_floors
    from verify.judge.oracle import Oracle  # noqa: F811 - the class, at run time
    from verify.runtimes import default_runtime, float64_reference_for, make_runtime

    kind = float64_reference_for(artifact.format)
    if kind is None or artifact.path is None:
        return None, ""
    if options is not None and options.precision != "fp32":
        return None, f"no float64 run at {options.precision}"
    try:
        reference = kind(str(artifact.path))
        float64 = [reference.run(feed) for feed in feeds]
        own = reference.run_float32(feeds[0])  # on one input: a second run on each costs 2.6 s on resnet50 at 224
    except Exception as exc:  # noqa: BLE001 - an operator or graph the reference lacks: the spread stands
        from exporter.messages import one_line

        return None, f"{kind.name} cannot run it in float64: {one_line(f'{type(exc).__name__}: {exc}', 160)}"
    label = f"{kind.name}(float64) vs {default_runtime(artifact.format)}"
    runner = None
    oracles = []
    for index, (feed, ours, single) in enumerate(zip(feeds, float64, fp32, strict=True)):
        if single is None:
            runner = make_runtime(default_runtime(artifact.format)).load(artifact) if runner is None else runner
            single = runner.run(feed)
        apart = reference_disagreement(ours, single, own if index == 0 else None)
        if apart is not None:
            return None, f"its float64 run by {kind.name} differs from its float32 run {apart}"
        floors = measure_floors(single, ours)
        oracles.append(Oracle(ours, floors, label, "fp32", floors, {}, [], floors))
    return oracles, ""


def reference_disagreement(float64: dict[str, np.ndarray], float32: dict[str, np.ndarray],
                           own: dict[str, np.ndarray] | None = None) -> str | None:
    """How a reference's float64 run differs from the runtime's float32 run beyond REFERENCE_AGREEMENT (another
    output set, shape, non-finite values, or a relative difference), or None where it agrees. With `own` (the
    reference's float32 run of the file as saved), also where the runtime's floor against the float64 run exceeds
    FLOOR_AGREEMENT x that run's: two float32 runs of one function measure 0.5-1.4x (resnet18/50, mobilenet_v3_small,
    a transformer block, Resize), an operator the two implement otherwise or a graph computing otherwise in float64
    hundreds (review 44)."""
    import numpy as np

    from verify.judge.measure import measure_floors

    if set(float64) != set(float32) or (own is not None and set(own) != set(float64)):
        return f"in its outputs ({', '.join(sorted(float64))} vs {', '.join(sorted(float32))})"
    for name, ours in float64.items():
        theirs = np.asarray(float32[name], dtype=np.float64)
        if ours.shape != theirs.shape or not np.array_equal(np.isfinite(ours), np.isfinite(theirs)) or (
                own is not None and np.shape(own[name]) != ours.shape):
            return f"in the shape or finite values of {name}"
        finite = np.isfinite(ours)
        scale = float(np.abs(ours[finite]).max(initial=0.0))
        relative = float(np.abs(ours[finite] - theirs[finite]).max(initial=0.0)) / scale if scale else 0.0
        if relative > REFERENCE_AGREEMENT:
            return f"by {relative:.2g} of {name}'s largest value (over the {REFERENCE_AGREEMENT:g} rounding allows)"
    if own is None:
        return None
    # the runtime's floor against the float64 run, against the reference's own float32 run's and against the
    # distance between the two float32 runs: an operator implemented otherwise lifts the first ratio, a graph
    # computing otherwise in float64 (both float32 runs alike, both far from it) the second
    runtime, reference, between = (measure_floors(float32, float64), measure_floors(own, float64),
                                   measure_floors(float32, own))
    for name in sorted(set(runtime) & set(reference) & set(between)):
        # a float32 ulp of the output's scale the least denominator: two runs of elementwise ops agree bit for bit
        ulp = float(np.finfo(np.float32).eps) * float(np.abs(float64[name][np.isfinite(float64[name])]).max(initial=0))
        for ratio, what in ((_ratio(runtime[name].value, max(reference[name].value, ulp)),
                             "than from the reference's own float32 run"),
                            (_ratio(runtime[name].value, max(between[name].value, ulp)),
                             "than from the reference's own float32 run (the graph computes otherwise in float64)")):
            if ratio > FLOOR_AGREEMENT:
                return f"by {ratio:.3g}x more on {name} {what} (over the {FLOOR_AGREEMENT:g}x rounding allows)"
    return None


def _ratio(ours: float, theirs: float) -> float:
    """ours / theirs, where a floor of 0 (outputs exact in float32) is exceeded by any other."""
    return ours / theirs if theirs > 0 else (float("inf") if ours > 0 else 0.0)
