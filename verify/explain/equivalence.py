"""`verify explain`: are two models the same function, and if not, where and why do they part?"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from exporter.artifacts import Artifact
from exporter.errors import UsageError, VerifyError
from verify.api import (
    RunSettings,
    check_call_arguments,
    input_shape_for,
    resolve_source,
    settings_inputs,
    source_kind,
)
from verify.explain.localize import CONSTANT_ROUNDING_FLOOR, CONSTANT_ROUNDING_RTOL, EQUIVALENCE_RTOL, localise
from verify.explain.sides import load_sides
from verify.explain.structure import StructuralDifference, structural_diff, train_mode_modules
from verify.explain.tracers import Side, tracer_for
from verify.inputs import refuse_blank_inputs, seeded_input
from verify.judge.compare import Tolerance, compare_arrays
from verify.judge.trust import RANDOM_CAUSES, output_differences
from verify.pipeline.isolation import USER_CODE_TIMEOUT, run_isolated
from verify.progress import NullProgress, Progress

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np

    from verify.judge.noise_floor import NoiseFloor

SEED_QUESTION = ("resnet50:batch:trunk", "resnet50:frozen:body")
REPEATS = 2
"""float32 runs of each side on the input: bit-identical on the CPU, or the side is random and not judged."""


class NotJudged(VerifyError):
    """A side gives other outputs for the same input: no verdict can stand on its floor (exit 1, as `compare`)."""

    exit_code = 1


EXPLAIN_OTHER_FUNCTION = ("explain's float64 reference would be another function. Not judged: compute the same calls "
                          "in float64 (no branch on x.dtype; a number from .item() or torch.finfo kept a tensor)")
"""What replaces the export's advice (--rtol/--atol, which explain has not) in a call check's refusal."""


def require_one_function(sides: Sequence[Side], x: np.ndarray | None = None) -> None:
    """Each side that is a user's model held to hunt 23a's call check (exporter/user_model.py `watch_float64`,
    verify/judge/trust.py `function_problems`): its float64 run, the reference explain, `--isolate` and `reduce`
    judge on, must make the calls its float32 run makes. `x`: run each such side's float64 model once on it here,
    where the caller's own float64 run is under the tool's hooks, which the watch does not hold to anything. Raises
    NotJudged (exit 1) with the first difference, as `verify export` refuses the floor."""
    import torch

    from verify.judge.trust import OTHER_FUNCTION, function_problems, function_record

    built = [side.artifact.built for side in sides
             if getattr(side.artifact.built, "float64_calls", None) is not None]
    if not built:
        return
    if x is not None:
        for side in sides:
            if any(side.artifact.built is model for model in built) and side.fp64 is not None:
                with torch.no_grad():
                    side.fp64(torch.from_numpy(x).double())
    problems = function_problems(function_record(*built))
    if problems:
        raise NotJudged(problems[0].removesuffix(OTHER_FUNCTION) + EXPLAIN_OTHER_FUNCTION)


@dataclass
class Explanation:
    a: str
    b: str
    equivalent: bool
    how: str
    """`float64` (both run in float64) or `float32-floor` (an ONNX side cannot run in float64)."""
    outputs: list[str]
    float64_difference: dict[str, dict[str, float]] = field(default_factory=dict)
    float32_difference: dict[str, float] = field(default_factory=dict)
    noise_floor: dict[str, dict[str, float]] = field(default_factory=dict)
    float32_ratio: dict[str, float] = field(default_factory=dict)
    """The float32 difference over the larger of the two sides' floors, judged per channel and away from peaks as
    `verify compare` judges (verify.judge.compare.compare_arrays): a quiet channel's error does not hide under the
    loudest channel's floor."""
    first_divergence: str | None = None
    divergence: dict[str, Any] | None = None
    divergence_note: str | None = None
    """Why no first divergence is named (no localiser for this pair, or no single module stands out)."""
    structural_differences: list[StructuralDifference] = field(default_factory=list)
    structure_compared: bool = False
    """Both sides are torch modules, so their modules and tensors were diffed."""
    train_mode: dict[str, list[str]] = field(default_factory=dict)
    unshared: dict[str, list[str]] = field(default_factory=dict)
    """Outputs one side alone has (A and B are judged on the outputs both have, e.g. a trunk's layer4 against a
    body's four stages): named in the report, never silently left out."""
    input_shape: list[int] = field(default_factory=list)
    input: str = ""
    """The input this explanation rests on (with several, the first that tells A and B apart)."""
    float64_note: str | None = None
    """Why a pair that runs in float64 was judged on the float32 floor (a saved program's float32 constants)."""

    @property
    def exit_code(self) -> int:
        return 0 if self.equivalent else 1

    @property
    def worst_output(self) -> str:
        if self.float64_difference:
            return max(self.float64_difference, key=lambda k: self.float64_difference[k]["max_rel"])
        return max(self.float32_difference, key=lambda k: self.float32_difference[k])

    def ratio(self, output: str) -> float:
        """The float32 difference as a multiple of the larger of the two sides' floors (per channel where measured)."""
        if output in self.float32_ratio:
            return self.float32_ratio[output]
        floor = max(self.noise_floor.get(side, {}).get(output, 0.0) for side in ("A", "B"))
        return self.float32_difference[output] / floor if floor else float("inf")

    def headline(self) -> str:
        out = self.worst_output
        if self.equivalent:
            if self.how == "float64":
                return (f"equivalent: A and B compute the same function (float64 outputs agree to "
                        f"{self.float64_difference[out]['max_rel']:.0e} relative); their float32 difference "
                        f"is rounding, {self.ratio(out):.1f}x the float32 noise floor")
            why = self.float64_note or "an ONNX side cannot run in float64"
            return (f"equivalent within float32 rounding: {self.ratio(out):.1f}x the noise floor ({why}, so this is "
                    "judged on the float32 floor)")
        overflow = [n for n in self.outputs if not math.isfinite(self.ratio(n))]
        if self.how == "float64" and overflow and \
                all(d["max_rel"] <= EQUIVALENCE_RTOL for d in self.float64_difference.values()):
            head = (f"not equivalent in float32: A and B compute the same function in float64, but {overflow[0]} is "
                    "NaN or Inf in one side's float32 run only (an overflow or a division by zero, not rounding)")
        elif self.how == "float64":
            head = (f"not equivalent: A and B compute different functions; in float64 {out} differs by "
                    f"{self.float64_difference[out]['max_rel']:.1e} relative, {self.ratio(out):.0f}x the "
                    "float32 noise floor")
        else:
            head = f"not equivalent: {out} differs by {self.ratio(out):.0f}x the float32 noise floor"
            if self.float64_note:
                head += f" ({self.float64_note}, so this is judged on the float32 floor)"
        if self.train_mode.get("A") or self.train_mode.get("B"):
            sides = " and ".join(s for s in ("A", "B") if self.train_mode.get(s))
            head += (f". {sides} is in train mode: BatchNorm then normalises with batch statistics, the "
                     "most common false alarm; call model.eval() before comparing")
        return head

    def divergence_text(self) -> str:
        if not self.first_divergence:
            return self.divergence_note or ""
        div = self.divergence or {}
        here = [str(d) for d in self.structural_differences if _concerns(d, self.first_divergence)]
        if here:
            what = "; ".join(here)
        elif self.structure_compared:
            what = "no structural difference recorded at this module"
        else:
            what = "no structural diff (a graph side has no modules to compare)"
        if div.get("fused_with"):
            what += f" (the ONNX graph computes it together with {', '.join(div['fused_with'])})"
        if div.get("uncompared"):
            what += (f"; not compared before it: {', '.join(div['uncompared'])} (one side does not tell its calls "
                     "apart), where the difference may begin")
        ratio = f", {div['ratio']:.0f}x its float32 floor" if div.get("ratio") is not None else ""
        return (f"first divergence: {self.first_divergence} (max abs {div.get('max_abs', 0):.2e}, "
                f"rel {div.get('max_rel', 0):.1e}{ratio}): {what}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a, "b": self.b, "equivalent": self.equivalent, "how": self.how,
            "verdict": self.headline(), "outputs": self.outputs, "input_shape": self.input_shape,
            "float64_difference": self.float64_difference, "float32_difference": self.float32_difference,
            "noise_floor": self.noise_floor, "float32_ratio": {k: _finite(v) for k, v in self.float32_ratio.items()},
            "first_divergence": self.first_divergence,
            "divergence": self.divergence, "divergence_note": self.divergence_note,
            "structural_differences": [d.to_dict() for d in self.structural_differences],
            "structure_compared": self.structure_compared, "input": self.input,
            "train_mode": self.train_mode, "unshared": self.unshared, "equivalence_rtol": EQUIVALENCE_RTOL,
            "float64_note": self.float64_note,
        }


def _concerns(diff: StructuralDifference, module: str) -> bool:
    return diff.module == module or diff.module.startswith(module + ".") or \
        (diff.kind == "folded" and module in (diff.a + diff.b))


EXPLAIN_FACTOR = 4.0
"""`explain_artifacts`'s own default factor for a float32-floor verdict and the localiser (`verify explain` passes
the run's --factor, AUTO_FACTOR unless given; verify/detect/explain.py uses this one)."""
TENSOR_DIFFERENCES = ("value", "shape")
"""What a structural diff still means where a side's modules lost their classes (an
ExportedProgram's `.module()` keeps parameters and buffers by name in placeholder modules)."""


def explain_artifacts(a: Artifact, b: Artifact, x: np.ndarray, factor: float = EXPLAIN_FACTOR,
                      labels: tuple[str, str] = ("A", "B"), progress: Progress | None = None) -> Explanation:
    import numpy as np
    import torch

    from verify.judge.measure import measure_floors
    from verify.judge.oracle import oracle_or_spread
    from verify.runtimes import default_runtime, make_runtime
    from verify.runtimes.torch_common import call_module, to_numpy_outputs

    progress = progress or NullProgress()
    sides = load_sides(a, b)
    fp32, fp64 = [], []
    with progress.step("Running both in float32 and float64"):
        for artifact, side, side_label in zip((a, b), sides, labels):
            if side.fp32 is None:
                loaded = make_runtime(default_runtime(artifact.format)).load(artifact)
                outputs = [loaded.run({artifact.meta.input_name: x.copy()}) for _ in range(REPEATS)]
                fp32.append(_deterministic(outputs, f"{side_label} ({artifact.label})"))
                fp64.append(None)
                continue
            names, label = artifact.meta.output_names, artifact.label
            outputs = [to_numpy_outputs(call_module(side.fp32, torch.from_numpy(x.copy()), label), names)
                       for _ in range(REPEATS)]
            fp32.append(_deterministic(outputs, f"{side_label} ({artifact.label})"))
            fp64.append(to_numpy_outputs(call_module(side.fp64, torch.from_numpy(x).double(), label), names))
    shared = [name for name in fp32[1] if name in fp32[0]]
    if not shared:
        raise UsageError(f"{labels[0]} and {labels[1]} share no output ({', '.join(fp32[0])} vs "
                         f"{', '.join(fp32[1])})")
    _require_finite_outputs(labels, fp32, fp64, shared)
    for name in shared:
        if fp32[0][name].shape != fp32[1][name].shape:
            raise UsageError(f"{name} has shape {fp32[0][name].shape} in {labels[0]} and "
                             f"{fp32[1][name].shape} in {labels[1]}: not the same quantity")
    result = Explanation(labels[0], labels[1], equivalent=False, how="float64", outputs=shared,
                         input_shape=list(x.shape))
    result.unshared = {label: [n for n in mine if n not in theirs] for label, mine, theirs
                       in zip("AB", fp32, fp32[::-1]) if any(n not in theirs for n in mine)}
    result.float32_difference = {
        n: float(np.abs(fp32[0][n].astype(np.float64) - fp32[1][n]).max()) for n in shared}
    own = []
    for side_label, artifact, out32, ref in zip("AB", (a, b), fp32, fp64):
        floors = measure_floors(out32, ref) if ref is not None else \
            oracle_or_spread(artifact, {artifact.meta.input_name: x}, out32).noise
        own.append(floors)
        result.noise_floor[side_label] = {k: f.value for k, f in floors.items() if k in shared}
    _require_rounding_floors((a, b), labels, own, [ref if ref is not None else out for ref, out in zip(fp64, fp32)],
                             x.shape)
    require_one_function(sides)  # each float64 run above, the side's reference, held to its float32 calls (after the
    # other guards, as `verify export` applies it)
    combined = {n: own[0][n].combine(own[1].get(n)) if n in own[0] else own[1].get(n) for n in shared}
    result.float32_ratio = {n: _float32_ratio(n, fp32[0][n], fp32[1][n], floor)
                            for n, floor in combined.items() if floor is not None}
    if fp64[0] is not None and fp64[1] is not None:
        for n in shared:
            diff, rel = float64_difference(fp64[0][n], fp64[1][n], combined[n])
            result.float64_difference[n] = {"max_abs": diff, "max_rel": rel}
        # the same function in float64, and no NaN/Inf in one side's float32 run only (an overflow is no rounding)
        result.equivalent = all(d["max_rel"] <= EQUIVALENCE_RTOL for d in result.float64_difference.values()) \
            and all(math.isfinite(result.ratio(n)) for n in shared)
        worst = worst_difference(result.float64_difference)
        rounding = _constant_rounding(result.float64_difference, fp64, combined, shared) \
            if not result.equivalent and any(artifact.built is None and artifact.path is not None
                                             for artifact in (a, b)) else None
        if rounding is not None:
            result.how = "float32-floor"
            result.float64_note = (f"their float64 runs differ by {worst:.1e} relative and {rounding:.2f}x the float32 "
                                   f"floor, within the float32 rounding of constants a saved program fixes in float32 "
                                   f"({CONSTANT_ROUNDING_RTOL:.1e} and {CONSTANT_ROUNDING_FLOOR:g}x: a trace bakes "
                                   "`x.new_tensor(0.1)` in as float32)")
            result.equivalent = all(result.ratio(n) <= factor for n in shared)
        if result.equivalent:
            _require_agreeing_floors((a, b), labels, own, shared)
    else:
        _require_cross_floors((a, b), labels, own, fp32, fp64)
        result.how = "float32-floor"
        result.equivalent = all(result.ratio(n) <= factor for n in shared)

    if sides[0].fp32 is not None and sides[1].fp32 is not None:
        with progress.step("Diffing the two models module by module"):
            diffs = structural_diff(sides[0].fp32, sides[0].prefix, sides[1].fp32, sides[1].prefix)
            classes = [(tracer := tracer_for(side)) is not None and tracer.module_types for side in sides]
            result.structure_compared = True
            result.structural_differences = diffs if all(classes) else \
                [d for d in diffs if d.kind in TENSOR_DIFFERENCES]
            result.train_mode = {s: train_mode_modules(side.fp32, side.prefix)
                                 for s, side, keeps in zip("AB", sides, classes) if keeps}
    if not result.equivalent:
        with progress.step("Locating the first divergence"):
            found = localise(sides[0], sides[1], x, factor)
        divergence = found.divergence
        if divergence is not None:
            result.first_divergence = divergence.module
            result.divergence = {"module": divergence.module, "call": divergence.call,
                                 "max_abs": divergence.max_abs, "max_rel": divergence.max_rel,
                                 "ratio": divergence.ratio, "fused_with": divergence.fused_with,
                                 "judged": divergence.judged, "uncompared": divergence.uncompared}
        else:
            result.divergence_note = found.note
    return result


def _constant_rounding(differences: dict[str, dict[str, float]], fp64: list[dict[str, np.ndarray]],
                       floors: dict[str, NoiseFloor | None], shared: list[str]) -> float | None:
    """Hunt 26b's rule for a pair with a saved program: where the two float64 runs differ by more than EQUIVALENCE_RTOL
    but no more than CONSTANT_ROUNDING_RTOL relative, and on every output by no more than CONSTANT_ROUNDING_FLOOR x its
    float32 floor (each channel's), what float32 constants fixed in the file can do; their worst ratio to that floor,
    else None (another function, judged in float64)."""
    worst = worst_difference(differences)
    if not EQUIVALENCE_RTOL < worst <= CONSTANT_ROUNDING_RTOL or any(floors.get(n) is None for n in shared):
        return None
    ratio = max(_float32_ratio(n, fp64[0][n], fp64[1][n], floors[n]) for n in shared)
    return ratio if ratio <= CONSTANT_ROUNDING_FLOOR else None


def worst_difference(differences: dict[str, dict[str, float]]) -> float:
    """The largest `max_rel` of the outputs' float64 differences, infinite where one is NaN (a NaN in one side's
    float64 run only). Review 23: `max()` keeps its first argument against a NaN, so a file whose float64 output1 was
    NaN beside an output0 1e-7 apart took hunt 26b's float32 floor path, and explain said "equivalent within float32
    rounding", exit 0, its table showing `nan`."""
    values = [d["max_rel"] for d in differences.values()]
    return math.inf if any(math.isnan(v) for v in values) else max(values, default=0.0)


def _require_rounding_floors(artifacts: tuple[Artifact, Artifact], labels: tuple[str, str], floors: list[dict],
                             references: list[dict[str, np.ndarray]], shape: tuple[int, ...]) -> None:
    """Each side's floor one rounding can produce (verify/judge/trust.py, as `compare` checks it): a model whose float32
    run is another function than its float64 one (`y * 1.01` in float32 only) measured that difference as its "floor",
    and explain called A and B `equivalent ... their float32 difference is rounding, 1.0x`, exit 0."""
    from verify.judge.trust import accumulation_length, file_accumulation_length, floor_problems

    lengths = [accumulation_length(artifact.built.model, input_shape=shape)
               if getattr(artifact.built, "model", None) is not None else file_accumulation_length(artifact, shape)
               for artifact in artifacts]
    known = [length for length in lengths if length]
    for label, artifact, own, reference, length in zip(labels, artifacts, floors, references, lengths):
        # each side to its own K (as `compare`); a side without one borrows the largest known
        k = length or max(known, default=None)
        found = floor_problems(own, reference, k, what=f"{label} ({artifact.label})")
        if found:
            raise NotJudged(found[0].split(" Not judged")[0] + " Not judged: explain needs each side's float32 run to "
                            "differ from its float64 one by rounding only")


def _require_agreeing_floors(artifacts: tuple[Artifact, Artifact], labels: tuple[str, str], floors: list[dict],
                             shared: list[str]) -> None:
    """Two sides that compute the same function in float64, one of them a saved program run in float64 (TorchScript,
    .pt2: no call check holds its float64 run to its float32 one), round alike: each output's floor within
    FLOOR_AGREEMENT x the other side's (verify/judge/file_floor.py, guard 3's bound). A file 0.05 % off its model in
    its float32 run only (a branch on x.dtype) measured that as its "floor", and explain called the two `equivalent
    ... their float32 difference is rounding, 1.0x`, exit 0 (hunt 24c). Whole outputs, not channels: on explain's one
    input a channel's floor is noisy (resnet18 batch or fused against a frozen file: channels up to 3.8x, outputs at
    most 1.74x)."""
    from verify.judge.file_floor import FLOOR_AGREEMENT, output_floor_ratio

    if all(artifact.built is not None or artifact.path is None for artifact in artifacts):
        return
    for mine, theirs in ((0, 1), (1, 0)):
        worst = output_floor_ratio(floors[mine], floors[theirs], shared)
        if worst is not None and worst[0] > FLOOR_AGREEMENT:
            ratio, name = worst
            raise NotJudged(
                f"{labels[mine]} ({artifacts[mine].label})'s float32 floor of {name} is {ratio:.3g}x "
                f"{labels[theirs]}'s, though both compute the same function in float64: over the "
                f"{FLOOR_AGREEMENT:g}x that rounding differences allow, so a float32 run is another function than "
                "its float64 one (a branch on x.dtype in a saved program). Not judged: explain needs each side's "
                "float32 run to differ from its float64 one by rounding only")


def _require_cross_floors(artifacts: tuple[Artifact, Artifact], labels: tuple[str, str], floors: list[dict],
                          fp32: list[dict[str, np.ndarray]], fp64: list[dict[str, np.ndarray] | None]) -> None:
    """One side without a float64 run (an ONNX file): each saved program's floor held to the other side's float32 run
    against its float64 run (verify/judge/file_floor.py pair_floor_problems). A .pt 1.0005 in its float32 run only
    (a subnormal constant float32 rounds) measured that as its floor, and explain judged it against a correct ONNX
    file at 1.0x, exit 0 (review 26)."""
    from verify.judge.file_floor import pair_floor_problems

    names = [f"{label} ({artifact.path.name if artifact.path else artifact.label})"
             for label, artifact in zip(labels, artifacts)]
    problems = pair_floor_problems(
        names, [[out] for out in fp32], [[ref or {}] for ref in fp64], [[floor] for floor in floors], [[{}], [{}]],
        [artifact.built is None and artifact.path is not None for artifact in artifacts],
        "Not judged: explain needs each side's float32 run to differ from its float64 one by rounding only")
    if problems:
        raise NotJudged(problems[0])


def _float32_ratio(name: str, a: np.ndarray, b: np.ndarray, floor: NoiseFloor) -> float:
    """|a - b| over `floor` as `verify compare` takes it: the worst channel's over its own floor, an element away from
    its channel's peaks over the bulk floor; infinite where NaN or Inf is on one side only."""
    result = compare_arrays(name, a, b, Tolerance(), floor)
    if result.nonfinite or (result.ratio is None and result.max_abs):
        return math.inf
    return result.ratio or 0.0


def float64_difference(a: np.ndarray, b: np.ndarray, floor: NoiseFloor | None) -> tuple[float, float]:
    """max |a - b| and its size relative to B's scale (EQUIVALENCE_RTOL's rule). Where `floor` measured peaks
    (verify.judge.peaks.PEAK_FACTOR: a mask value, a sentinel), an element of the bulk is relative to the bulk's
    scale: one -1e9 in B no longer makes a difference of 1e-2 everywhere else 1e-11 relative."""
    import numpy as np

    if a.shape != b.shape:  # a model whose float64 run has another shape than its float32 one: no broadcasting
        return math.inf, math.inf
    if not b.size:
        return 0.0, 0.0
    a, b = a.astype(np.float64), b.astype(np.float64)  # an integer or bool output: no wrap-around, no bool minus
    diff = np.abs(a - b)
    max_abs = float(diff.max())
    magnitude = np.abs(b)
    scale = float(magnitude.max()) or 1.0
    rel = max_abs / scale
    bulk = floor.in_bulk(np.minimum(np.abs(a), magnitude)) if floor is not None else None
    if bulk is not None and bulk.any():  # an element either side holds below its group's peak limit
        own = floor.in_bulk(magnitude)
        bulk_scale = float(np.where(own, magnitude, 0.0).max()) if own is not None else 0.0
        bulk_scale = bulk_scale or float(floor.bulk_limits.max()) or 1.0
        rel = max(rel, float(np.where(bulk, diff, 0.0).max()) / bulk_scale)
    return max_abs, rel


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _deterministic(runs: list[dict[str, np.ndarray]], label: str) -> dict[str, np.ndarray]:
    """The first run's outputs, refused unless the repeat gave the same bits: a random side's float32-vs-float64
    difference is its randomness, so its floor would be too (an ONNX file judged against a random model's
    noise was 'equivalent within float32 rounding', exit 0)."""
    for again in runs[1:]:
        differences = output_differences(runs[0], again)
        worst = max(differences, key=lambda name: differences[name], default=None)
        if worst is not None and differences[worst] > 0:
            raise NotJudged(f"{label} is not deterministic: the same input twice gave {worst} "
                            f"{differences[worst]:.3g} apart; {RANDOM_CAUSES}. Not judged: explain needs a model that "
                            "computes one function")
    return runs[0]


def _require_finite_outputs(labels: tuple[str, str], fp32: list, fp64: list, shared: list[str]) -> None:
    """NaN/Inf on both sides is the input's doing (its scale overflows), never a verdict on the models;
    on one side only it is a real difference and is judged as one."""
    import numpy as np

    def bad(outputs: dict | None) -> str | None:
        for name in shared:
            if outputs is not None and not np.isfinite(outputs[name]).all():
                return f"{int((~np.isfinite(outputs[name])).sum())} in {name}"
        return None

    found = [bad(fp32[i]) or bad(fp64[i]) for i in range(2)]
    if found[0] and found[1]:
        raise UsageError(f"The input drives both {labels[0]} and {labels[1]} to NaN/Inf ({labels[0]}: {found[0]}; "
                         f"{labels[1]}: {found[1]}); explain needs an input of ordinary scale, e.g. normalised "
                         "images")


def explain(a: str = SEED_QUESTION[0], b: str = SEED_QUESTION[1], settings: RunSettings | None = None,
            progress: Progress | None = None, timeout: float | None = USER_CODE_TIMEOUT,
            isolate: bool = True) -> Explanation:
    """Explain two model specs or artifacts (default: the seed question, classifier trunk with
    BatchNorm2d vs detection body with FrozenBatchNorm2d, same weights). A side that is the user's own code
    (`file.py:factory`) makes the whole explanation run in a worker process stopped after `timeout` s."""
    check_call_arguments(progress, timeout, isolate)  # surface 30: progress="x" failed deep inside, timeout="5" ran
    settings, progress = settings or RunSettings(), progress or NullProgress()
    kinds = source_kind(a), source_kind(b)  # both named right before either is loaded or built
    user = [str(kind) for kind in kinds if getattr(kind, "runs_user_code", False)]
    if isolate and user:
        return run_isolated(explain, a, b, settings, what=f"Your model {' and '.join(user)}", timeout=timeout,
                            progress=progress, isolate=False)
    given = settings_inputs(settings)
    refuse_blank_inputs(given)
    # --input's own shape where --shape names none: a model is built for the inputs it is given (as compare does)
    shaped = settings if settings.shape or not given else replace(settings, shape=tuple(given[0].array.shape))
    with progress.step("Loading both sides"):
        artifacts = [resolve_source(a, shaped), resolve_source(b, shaped)]
    named = given or [seeded_input(input_shape_for(artifacts, settings), settings.seed)]
    result = None
    for item in named:  # the first input that tells them apart decides; equivalent only if on every one
        result = explain_artifacts(*artifacts, item.array, factor=settings.tolerance.factor, progress=progress)
        result.input = item.label
        if not result.equivalent:
            break
    assert result is not None
    if given and result.equivalent:  # review 35: inputs that move no output judge nothing, as in export and compare
        from verify.judge.reach import refuse_unreached_sources

        with progress.step("Checking that the inputs reach the model's outputs"):
            refuse_unreached_sources(artifacts, given, settings.tolerance)
    result.a, result.b = a, b
    return result


def render_explanation(result: Explanation, console: Any, limit: int = 15) -> None:
    from rich.table import Table

    from verify.render.console import fits, line_layout, print_line
    from verify.render.text import markup as escape  # user-controlled text shown as text, control characters too

    mark = "[bold green]✓[/]" if result.equivalent else "[bold red]✗[/]"
    print_line(console, f"{mark} {escape(result.headline())}")  # one line each, never wrapped (hunt 15a)
    print_line(console, f"A = {escape(result.a)}")
    print_line(console, f"B = {escape(result.b)}")
    if result.divergence_text():
        print_line(console, f"[yellow]→[/] {escape(result.divergence_text())}")
    # the space outside the escape: terminal_text strips a leading one ("input 1x2x8x8from x.npy", review 35)
    source = f" from {escape(result.input)}" if result.input and not result.input.startswith("seeded") else ""
    title = f"evidence (input {'x'.join(map(str, result.input_shape))}{source})"
    columns = ("output", "float64 rel diff", "float32 max diff", "floor A", "floor B", "x floor")
    rows = []
    for name in result.outputs:
        f64 = result.float64_difference.get(name)
        floors = [result.noise_floor.get(s, {}).get(name) for s in ("A", "B")]
        rows.append((name, f"{f64['max_rel']:.1e}" if f64 else "n/a (ONNX)", f"{result.float32_difference[name]:.2e}",
                     *[f"{f:.2e}" if f is not None else "-" for f in floors], f"{result.ratio(name):.1f}"))
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, justify="left" if column == "output" else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    if line_layout(console) or not fits(console, table):
        # a pipe, a log or a narrow terminal: one line an output, never cut (hunt 27: a table cut to 80 columns
        # showed `rpn.head.cls_logi…` and floors as `2.15…`)
        print_line(console, f"{title}:")
        for row in rows:
            print_line(console, f"  {escape(row[0])}: " + ", ".join(f"{column} {cell}" for column, cell
                                                                   in zip(columns[1:], row[1:], strict=True)))
    else:
        console.print(table)
    for side, names in result.unshared.items():
        print_line(console, f"[yellow]{side} alone has {escape(', '.join(names))}: not compared[/]")
    diffs = result.structural_differences
    if diffs:  # each line whole, never wrapped into two (a log line stays one line)
        print_line(console, f"structural differences ({len(diffs)}):")
        lines = group_differences(diffs)
        for line in lines[:limit]:
            print_line(console, f"  • {escape(line)}")
        if len(lines) > limit:
            print_line(console, f"  … and {len(lines) - limit} more (see --json)")
    elif result.train_mode or result.how == "float64":
        print_line(console, "structural differences: none")


def group_differences(diffs: list[StructuralDifference]) -> list[str]:
    """One line per kind of difference: `53 modules: BatchNorm2d vs FrozenBatchNorm2d (bn1, …)`."""
    groups: dict[tuple[str, str, str], list[StructuralDifference]] = {}
    for diff in diffs:
        key = (diff.kind, diff.a, diff.b) if diff.kind in ("type", "folded", "eps", "mode", "affine",
                                                            "track_running_stats") else (id(diff), "", "")
        groups.setdefault(key, []).append(diff)  # type: ignore[arg-type]
    lines = []
    for members in groups.values():
        if len(members) < 3:
            lines.extend(str(d) for d in members)
            continue
        first = members[0]
        text = str(first).split(": ", 1)[1]
        names = [d.module for d in members]
        shown = ", ".join(names[:3]) + (f", …, {names[-1]}" if len(names) > 3 else "")
        lines.append(f"{len(members)} modules: {text} ({shown})")
    return lines
