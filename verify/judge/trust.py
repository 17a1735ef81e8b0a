"""Is there anything to judge? Two guards before any verdict counts (issue 14, item 1).

A noise floor is the float32 rounding of a deterministic function. A model whose output changes from one
call to the next (dropout left on, `torch.rand_like`, a forward that writes into its own input) measures
its own randomness as a "floor", and every pair then "agrees at float32 precision". So:

1. **Determinism.** Each runtime runs every input twice, on private copies of the input: the two
   outputs must be equal bit for bit on the CPU (the same kernels on the same data in the same order give
   the same bits), within the output's own float32 floor on an accelerator (atomics may reorder a sum: a
   reordering of the same terms, whose error is bounded like any other rounding). The copies must be
   unchanged after each run: a model that mutates its input is named as such.
2. **A floor rounding can produce.** For a float32 (unit roundoff u) accumulation of K terms the rounding
   error is at most about K·u times the magnitude of the terms (Higham, *Accuracy and Stability of
   Numerical Algorithms*, §3.1: |fl(x·y) - x·y| <= γ_K |x|·|y|, γ_K = K·u / (1 - K·u)). A network chains
   such accumulations; K for the whole model is bounded by the sum of the lengths of its accumulations: the
   fan-in of every weight (a conv's C_in/groups·kh·kw, a linear's in_features) plus the elements of one
   input sample (pools, means and norms reduce over at most those). A measured floor above
   ROUNDING_BOUND_MARGIN·K·u·max|output| is not rounding: the verdict refuses to judge on it.

A user's model is also held to computing one function in both precisions (hunt 23a): every run of its float64
oracle calls the torch functions its float32 run calls on the same input, with the same arguments
(exporter/user_model.py `watch_float64`); one that differs (`y * 1.0005` only where x.dtype is float64) measures
that difference as its "floor" (`function_problems`). Hunt 24a: a tensor made outside those calls (NumPy, a buffer
moved by a module's own `_apply`) is held to its values, and the float32 model run unwatched to its watched run's
outputs (a model that tests for the watch).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from verify.inputs import copy_feed
from verify.judge.peaks import PEAK_FACTOR
from verify.judge.precision import DISPLAY, EPS

if TYPE_CHECKING:
    import numpy as np

    from verify.judge.file_floor import FileFloors
    from verify.judge.noise_floor import NoiseFloor

ROUNDING_BOUND_MARGIN = 2.0
"""Slack over the worst-case K·u bound (correct float32 runs measure 1e-4..1e-3 of it: README, Floor bound)."""
BITWISE_DEVICES = ("cpu",)
"""Where the same input twice must give the same bits; elsewhere a repeat may differ by the floor."""


@dataclass
class RepeatCheck:
    """One runtime run twice on the same input."""

    label: str
    differences: dict[str, float] = field(default_factory=dict)
    """Per output: max |first run - second run| (0.0 when bit-identical; NaN positions compared as equal)."""
    mutated: list[str] = field(default_factory=list)
    """Input names the runtime changed in place."""


def changed_inputs(before: Mapping[str, np.ndarray], after: Mapping[str, np.ndarray]) -> list[str]:
    """The inputs whose values differ between `before` and the arrays a run was given (`after`)."""
    import numpy as np

    return [name for name, array in before.items()
            if not np.array_equal(array, after[name], equal_nan=True)]


def owned(outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output as an array of its own: a model that returns a buffer it keeps (`torch.add(a, b,
    out=self.out)`) hands back a view the next call overwrites, so two runs compared the same memory (a random
    model passed the determinism guard) and every input's outputs read the last call's values."""
    return {name: array if array.flags.owndata else array.copy() for name, array in outputs.items()}


def run_guarded(loaded: Any, feed: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Run `loaded` on a private copy of `feed`; its outputs (arrays of their own), and the inputs it changed in
    place."""
    given = copy_feed(feed)
    outputs = owned(loaded.run(given))
    return outputs, changed_inputs(feed, given)


def output_differences(first: Mapping[str, np.ndarray], second: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Max |a - b| per output (inf when shapes differ, or when one run returned an output the other did not; equal
    NaNs and equal infinities in the same places count as equal)."""
    import numpy as np

    found = {name: math.inf for name in second if name not in first}
    for name, a in first.items():
        b = second.get(name)
        if b is None:  # a forward that returns other outputs on its second call is not one function
            found[name] = math.inf
            continue
        if a.shape != b.shape:
            found[name] = math.inf
            continue
        if np.array_equal(a, b):  # the common case on the CPU, in one pass
            found[name] = 0.0
            continue
        same = a == b  # equal infinities too: inf - inf is NaN, which would read as a difference
        if np.issubdtype(a.dtype, np.floating):
            same |= np.isnan(a) & np.isnan(b)
        with np.errstate(invalid="ignore"):
            diff = np.where(same, 0.0, np.abs(a.astype(np.float64) - b.astype(np.float64)))
        found[name] = float(np.nan_to_num(diff, nan=math.inf).max(initial=0.0))
    return found


def repeat_allowance(floor: NoiseFloor | None, device: str, computes_in: str = "fp32") -> float:
    """How far two calls on the same input may differ: nothing on the CPU; elsewhere the output's floor, scaled
    to the rounding the run computes in when that is coarser than the floor's (a CUDA run at the framework's
    default TF32 may pick another kernel on its second call, and TF32 kernels round differently)."""
    if device in BITWISE_DEVICES or floor is None:
        return 0.0
    coarser = EPS.get(computes_in, EPS["fp32"]) / EPS.get(floor.precision, EPS["fp32"])
    return floor.value * max(coarser, 1.0)


def repeat_problems(checks: Sequence[RepeatCheck], device: str, floors: Mapping[str, NoiseFloor],
                    cause: str = "", computes_in: str = "fp32") -> list[str]:
    """One line per runtime that changed its input or gave other outputs the second time. `computes_in`: the
    precision the runs round at (verify/judge/precision.py `computes_in`)."""
    problems = []
    for check in checks:
        if check.mutated:
            problems.append(f"{check.label} changed its input ({', '.join(check.mutated)}) in place while running: a "
                            "model must not write into its argument (x.add_(), x[...] = ..., x.relu_()); "
                            "clone the input first. Not judged")
            continue
        allowed = {name: repeat_allowance(floors.get(name), device, computes_in) for name in check.differences}
        worse = [(name, diff) for name, diff in check.differences.items() if diff > allowed[name]]
        if worse:
            name, diff = max(worse, key=lambda item: item[1])
            at = "" if computes_in == "fp32" or device in BITWISE_DEVICES else f" at {DISPLAY[computes_in]}"
            problems.append(f"{check.label} is not deterministic: the same input twice gave {name} {diff:.3g} apart "
                            f"(allowed on {device}{at}: {allowed[name]:.3g}); {cause or RANDOM_CAUSES}. Not judged")
    return problems


RANDOM_CAUSES = ("likely a module left in train mode (dropout, batch statistics), a random op (torch.rand*, "
                 "dropout with training=True) or state kept between calls")


def likely_cause(model: Any) -> str:
    """What in a torch module makes it random: modules still in train mode, named; else the usual suspects."""
    training = [name or type(model).__name__ for name, module in getattr(model, "named_modules", lambda: [])()
                if getattr(module, "training", False)]
    if training:
        shown = ", ".join(training[:3]) + (f" and {len(training) - 3} more" if len(training) > 3 else "")
        return (f"{len(training)} module(s) still in train mode after eval() ({shown}; does the model override "
                f"train() or eval()?), e.g. dropout active")
    return RANDOM_CAUSES


def accumulation_length(model: Any = None, parameters: Sequence[Sequence[int]] = (),
                        input_shape: Sequence[int] = ()) -> int:
    """K: the fan-in of every weight of `model` (or of the weight shapes given), plus the elements of one
    input sample. A weight is a non-empty parameter of two or more dimensions; its fan-in is the product of all
    but its first dimension (output features or channels). Of a model, only the parameters its forward reads
    (`read_parameters`) count."""
    fan_in = sum(_fan_in(shape) for shape in parameters)
    if model is not None:  # parameters only: a buffer is no weight, and an empty tensor holds no terms
        fan_in += sum(read_fan_ins(model, input_shape).values())
    return int(fan_in + math.prod(input_shape[1:]) if len(input_shape) > 1 else fan_in + 1)


def _fan_in(shape: Sequence[int]) -> int:
    """A weight's fan-in: the product of all but its first dimension; 0 for fewer than two dimensions or no
    elements."""
    return math.prod(shape[1:]) if len(shape) >= 2 and math.prod(shape) > 0 else 0


SELECTING_OPS = frozenset({"__getitem__", "narrow", "select", "index_select", "split", "split_with_sizes", "chunk",
                           "unbind", "tensor_split", "diagonal"})
"""Ops whose result is a part of their first input (a slice, a row, a chunk): an op that reads the part reads no
more of the parameter than the part's own shape. Any other op reading a parameter reads all of it."""


def read_fan_ins(model: Any, input_shape: Sequence[int]) -> dict[str, int]:
    """Per parameter the forward reads (`read_parameters`), the fan-in of what it reads: the parameter's own, or
    less where every op reads only a part of it (`SELECTING_OPS`: a zero-stride parameter 100x a conv's K wide,
    sliced to one element before use, lifted the bound 100-fold, and a float64 path 10x the bound off passed;
    hunt 10c). Never more than the parameter's own fan-in. Every parameter at its own fan-in when the forward cannot
    be followed."""
    import torch

    named = dict(model.named_parameters())
    parts: dict[str, int] = {}
    read = {id(p) for p in read_parameters(model, input_shape, parts)}
    return {name: min(_fan_in(p.shape), parts.get(name, _fan_in(p.shape)))
            for name, p in named.items() if id(p) in read and isinstance(p, torch.Tensor)}


def read_parameters(model: Any, input_shape: Sequence[int], parts: dict[str, int] | None = None) -> list[Any]:
    """The parameters an op reads while `model` runs once on an input of `input_shape`, on fake tensors (shapes
    only, no arithmetic; the model itself is left as it was). Not on the meta device: a forward can tell that one
    (`x.is_meta`), and one that read a 100x wider spare parameter there only lifted the bound 100-fold (hunt 12b).
    A parameter no op reads (a head the forward never calls, a spare nn.Parameter) holds no terms of any
    accumulation: counted, it raised the bound, and a model whose float64 computes another function by 1 % passed
    it with a 100,000-wide spare parameter (README, Floor bound). A parameter the forward reads other than through
    its module (a list of weights it keeps) counts too.
    Every parameter when the model does not run so, and every parameter of TorchScript code, whose ops no Python mode
    sees (the bound then errs towards passing, never towards failing). `parts`, when given, is filled with the
    largest fan-in of what ops read of each parameter that ops read only through `SELECTING_OPS` (read_fan_ins)."""
    import logging
    import warnings

    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.func import functional_call
    from torch.overrides import TorchFunctionMode
    from torch.utils._pytree import tree_leaves

    named = dict(model.named_parameters())
    if len(input_shape) < 2 or not named or isinstance(model, torch.jit.ScriptModule):
        return list(named.values())
    opaque = {id(p) for module in model.modules() if isinstance(module, torch.jit.ScriptModule)
              for p in module.parameters()}
    read: set[int] = set()  # parameters some op reads whole
    origin: dict[int, tuple[int, Any]] = {}  # id of a parameter's part -> (the parameter's id, the part, kept alive)
    part_fan_ins: dict[int, int] = {}  # parameter id -> largest fan-in of a part an op reads

    class Reads(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            leaves = [leaf for leaf in tree_leaves((args, kwargs or {})) if isinstance(leaf, torch.Tensor)]
            out = func(*args, **(kwargs or {}))
            if leaves and getattr(func, "__name__", "") in SELECTING_OPS:
                source = origin[id(leaves[0])][0] if id(leaves[0]) in origin else id(leaves[0])
                for part in tree_leaves(out):
                    if isinstance(part, torch.Tensor):
                        origin[id(part)] = (source, part)
                leaves = leaves[1:]  # the parameter is not read here: what reads the part reads that much of it
            for leaf in leaves:
                if id(leaf) in origin:
                    source, part = origin[id(leaf)]
                    part_fan_ins[source] = max(part_fan_ins.get(source, 0), _fan_in(part.shape))
                else:
                    read.add(id(leaf))
            return out

    logger = logging.getLogger("torch._subclasses.fake_tensor")  # it logs a traceback for every op that fails
    level = logger.level
    kept = [(module, dict(vars(module))) for module in model.modules()]  # what a forward assigns (self.last = y)
    try:  # fake tensors say they are on the CPU; a plain tensor attribute of the model may join them
        logger.setLevel(logging.CRITICAL)
        fake = FakeTensorMode(allow_non_fake_inputs=True)
        meta = {name: fake.from_tensor(p) for name, p in named.items()}
        state = {**meta, **{name: fake.from_tensor(b) for name, b in model.named_buffers()}}
        with warnings.catch_warnings(), torch.no_grad(), fake, Reads():
            warnings.simplefilter("ignore")
            functional_call(model, state, (torch.empty(tuple(input_shape)),))
    except Exception:  # data-dependent control flow, a NumPy step, an op without a meta kernel: count them all
        return list(named.values())
    finally:
        logger.setLevel(level)
        for module, attributes in kept:  # a fake tensor kept by the model would stand in for its data later
            vars(module).clear()
            vars(module).update(attributes)
    if parts is not None:
        parts.update({name: part_fan_ins[id(p)] for name, p in meta.items()
                      if id(p) in part_fan_ins and id(p) not in read and id(named[name]) not in opaque})
    return [named[name] for name, p in meta.items()
            if id(p) in read or id(p) in part_fan_ins or id(named[name]) in opaque or id(named[name]) in read]


def file_accumulation_length(artifact: Any, input_shape: Sequence[int]) -> int | None:
    """K of a model file, from the weight shapes its format can list (`Format.weight_shapes`: the ONNX initializers,
    TorchScript and .pt2 parameters its graph reads); None when it cannot (that side borrows the other's K)."""
    from exporter.formats import get_format

    path = getattr(artifact, "path", None)
    shapes = get_format(artifact.format).weight_shapes(path) if path is not None else None
    return None if shapes is None else accumulation_length(parameters=shapes, input_shape=input_shape)


def rounding_bound(k: int, precision: str = "fp32") -> float:
    """The largest error rounding can produce, relative to the output's magnitude: margin·K·u."""
    return ROUNDING_BOUND_MARGIN * k * EPS[precision]


def output_scale(reference: np.ndarray | None) -> float:
    """max|reference| over its finite elements (0 for a missing or empty output): the terms' magnitude."""
    import numpy as np

    if reference is None or reference.size == 0:
        return 0.0
    return float(np.abs(np.where(np.isfinite(reference), reference, 0.0)).max(initial=0.0))


def floor_problem(name: str, floor: NoiseFloor, scale: float, k: int, what: str = "the model",
                  bulk_scale: float | None = None) -> str | None:
    """The line refusing a floor above what rounding can produce (margin·K·u·scale), or None. With `bulk_scale`
    (max|output| over its bulk, `bulk_scale`), the bulk floors are held to the bulk's own magnitude too: one peak
    (a mask value) must not lift the bound of every other element."""
    bound = rounding_bound(k, floor.precision) * scale
    if scale > 0 and floor.value > bound:
        return (f"The {floor.describe()} of {name} ({floor.value:.3g}) is {floor.value / bound:.3g}x the most that "
                f"rounding can produce in {what} ({ROUNDING_BOUND_MARGIN:g} x K={k} accumulations x "
                f"u={EPS[floor.precision]:.3g} x max|{name}|={scale:.3g}): not a noise floor; is the model random or "
                "in train mode? Not judged (an explicit --rtol/--atol or --decimal judges without a floor)")
    if floor.bulk is None or not bulk_scale or not bulk_scale > 0:
        return None
    bulk, bound = float(floor.bulk.max()), rounding_bound(k, floor.precision) * bulk_scale
    if bulk <= bound:
        return None
    return (f"The {floor.describe()} of {name} away from its peaks ({bulk:.3g}) is {bulk / bound:.3g}x the most that "
            f"rounding can produce in {what} ({ROUNDING_BOUND_MARGIN:g} x K={k} accumulations x "
            f"u={EPS[floor.precision]:.3g} x max|{name}|={bulk_scale:.3g} there, elements over {PEAK_FACTOR:g}x their "
            "channel's typical magnitude left out): not a noise floor; is the model random or in train mode? Not "
            "judged (an explicit --rtol/--atol or --decimal judges without a floor)")


def bulk_scale(floor: NoiseFloor, reference: np.ndarray | None) -> float | None:
    """max|reference| over the elements judged on bulk floors (`NoiseFloor.in_bulk`), None without them."""
    import numpy as np

    if reference is None:
        return None
    magnitude = np.abs(np.where(np.isfinite(reference), reference, 0.0)).astype(np.float64)
    mask = floor.in_bulk(magnitude)
    return None if mask is None else float(np.where(mask, magnitude, 0.0).max(initial=0.0))


def floor_problems(floors: Mapping[str, NoiseFloor], reference: Mapping[str, np.ndarray], k: int | None,
                   what: str = "the model") -> list[str]:
    """Every floor above what rounding can produce (`floor_problem`), one line per output."""
    if not k:
        return []
    found = (floor_problem(name, floor, output_scale(reference.get(name)), k, what,
                           bulk_scale(floor, reference.get(name))) for name, floor in floors.items())
    return [line for line in found if line]


def floor_bound_ratios(floors: Mapping[str, NoiseFloor], reference: Mapping[str, np.ndarray], k: int
                       ) -> dict[str, float]:
    """Each output's floor as a share of its rounding bound (calibration and the README's table)."""
    scales = {name: output_scale(reference.get(name)) for name in floors}
    return {name: floor.value / (rounding_bound(k, floor.precision) * scales[name])
            for name, floor in floors.items() if scales[name] > 0}


OTHER_FUNCTION = ("a floor measured against it is not rounding. Not judged (an explicit --rtol/--atol or --decimal "
                  "judges without a floor): compute the same calls in float64 (no branch on x.dtype or on whether "
                  "torch calls are watched, no loop until a tolerance, no NumPy arithmetic on tensors; a number made "
                  "from .item() or torch.finfo(x.dtype) by arithmetic kept a tensor: "
                  "torch.tensor(torch.finfo(x.dtype).eps) * 10)")


def function_problem(model: str, difference: str) -> str:
    """The line refusing a floor measured against a float64 oracle that is another function than `model`'s float32
    run (`difference`: where their calls first differ, exporter/user_model.py `first_difference`)."""
    return f"{model}'s float64 oracle computes another function than its float32 run ({difference}): {OTHER_FUNCTION}"


def function_record(*built: Any) -> list[dict[str, Any]]:
    """Each user model's watched float64 runs (`UserBuiltModel.float64_calls`) as plain data for `evidence`."""
    return [{"model": str(b.spec), "runs": int(b.float64_calls.runs), "differs": b.float64_calls.difference}
            for b in built if getattr(b, "float64_calls", None) is not None]


def function_problems(records: Any) -> list[str]:
    """One line per model whose float64 oracle called other functions than its float32 run (`function_record`);
    malformed records are a problem themselves."""
    try:
        found = [(str(r["model"]), r["differs"]) for r in records]
        if any(not isinstance(r["runs"], int) or r["runs"] < 0 for r in records) \
                or any(differs is not None and not isinstance(differs, str) for _, differs in found):
            raise ValueError("float64_calls")
    except (KeyError, TypeError, ValueError) as exc:
        return [f"no usable float64 call evidence recorded ({type(exc).__name__}): nothing to judge on"]
    unchecked = [f"{model}'s float64 oracle was never held to its float32 run's calls (no watched run): "
                 f"{OTHER_FUNCTION}" for (model, _), record in zip(found, records) if record["runs"] == 0]
    return unchecked + [function_problem(model, differs) for model, differs in found if differs is not None]


def evidence(checks: Sequence[RepeatCheck], device: str, k: int | None, mode: str,
             per_input: Sequence[tuple[Mapping[str, NoiseFloor], Mapping[str, np.ndarray]]],
             computes_in: str = "fp32", files: Sequence[FileFloors] = (),
             model_float32: Sequence[Mapping[str, NoiseFloor]] | None = None,
             unrunnable: Sequence[str] = (), calls: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The numbers the guards decide on, as plain data a stored result keeps: a reader re-derives the problems
    from them (`evidence_problems`) instead of trusting a stored list that an edit can empty. Where guard 3 ran
    (`files` measured, or `unrunnable`: the files that could not run in float64), the model's float32 floors
    (`model_float32`; else those of `per_input`) are kept whole beside the files' own (verify/judge/file_floor.py).
    `calls`: a user model's watched float64 runs (`function_record`)."""
    from verify.judge.file_floor import FileFloors, floors_record

    inputs = [{name: _evidence_of(floor, reference.get(name)) for name, floor in floors.items()}
              for floors, reference in per_input]
    record = {"device": device, "computes_in": computes_in, "k": k, "mode": mode, "inputs": inputs,
              "repeats": [{"label": c.label, "differences": dict(c.differences), "mutated": list(c.mutated)}
                          for c in checks]}
    if calls:
        record["float64_calls"] = [dict(c) for c in calls]
    if files or unrunnable:
        model = [dict(f) for f in model_float32] if model_float32 is not None else [dict(f) for f, _ in per_input]
        record["files"] = floors_record([FileFloors("the model", model), *files])
        record["unrunnable"] = [str(line) for line in unrunnable]
    return record


def _evidence_of(floor: NoiseFloor, reference: np.ndarray | None) -> dict[str, Any]:
    """One output's floor evidence: its floor and scale, and its bulk's (where it has peaks)."""
    data = {"floor": floor.value, "precision": floor.precision, "scale": output_scale(reference)}
    scale = bulk_scale(floor, reference)
    if floor.bulk is not None and scale is not None:
        data.update(bulk_floor=float(floor.bulk.max()), bulk_scale=scale)
    return data


def _recorded_floor(output: Mapping[str, Any]) -> tuple[NoiseFloor, float, float | None]:
    """A recorded output's floor, scale and bulk scale (the bulk floor as a one-group floor beside the value)."""
    import numpy as np

    from verify.judge.noise_floor import NoiseFloor

    value, precision = float(output["floor"]), str(output["precision"])
    if ("bulk_floor" in output) != ("bulk_scale" in output):
        raise ValueError("bulk_floor without bulk_scale, or the other way round")
    if "bulk_floor" not in output:
        return NoiseFloor(value, precision=precision), float(output["scale"]), None
    bulk, scale, bulk_scale = float(output["bulk_floor"]), float(output["scale"]), float(output["bulk_scale"])
    if not 0 < bulk <= value:
        raise ValueError("bulk_floor")
    if not bulk_scale <= scale:  # the bulk is part of the output: a larger bulk scale only lifts the bulk's bound
        raise ValueError("bulk_scale")
    floor = NoiseFloor(value, precision=precision, bulk=np.asarray([bulk]), bulk_limits=np.asarray([0.0]))
    return floor, scale, bulk_scale


def evidence_problems(data: Any, files: bool = True) -> list[str]:
    """The problems `evidence` supports; evidence that is missing or malformed is itself a problem. `files` False:
    guard 3 (the files' own floors) left out, where a pair already fails (it guards a pass)."""
    from verify.judge.oracle import pooled_floors

    try:
        checks = [RepeatCheck(str(r["label"]), {str(n): float(d) for n, d in r["differences"].items()},
                              [str(m) for m in r["mutated"]]) for r in data["repeats"]]
        inputs = [{str(n): _recorded_floor(o) for n, o in outputs.items()} for outputs in data["inputs"]]
        k, device, mode = data["k"], str(data["device"]), str(data["mode"])
        computes_in = str(data.get("computes_in", "fp32"))  # absent: recorded before it was; the strictest
        if computes_in not in EPS:
            raise ValueError(computes_in)
        if not checks or not inputs or (k is not None and (not isinstance(k, int) or k <= 0)):
            raise ValueError("empty")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return [f"no usable determinism and floor evidence recorded ({type(exc).__name__}): nothing to judge on"]
    problems = repeat_problems(checks, device, pooled_floors([{n: f for n, (f, _, _) in o.items()} for o in inputs]),
                               computes_in=computes_in)
    if problems or mode != "auto":
        return problems
    problems = _file_floor_problems(data.get("files"), data.get("unrunnable", [])) if files else []
    if problems or k is None:
        return problems or function_problems(data.get("float64_calls", []))
    for outputs in inputs:
        for name, (floor, scale, bulk) in outputs.items():
            if not all(math.isfinite(s) and s >= 0 for s in (scale, 0.0 if bulk is None else bulk)):
                return [f"a recorded output scale of {name} is not a finite number >= 0"]
            line = floor_problem(name, floor, scale, k, bulk_scale=bulk)
            if line:
                return [line]
    return function_problems(data.get("float64_calls", []))


def _file_floor_problems(data: Any, unrunnable: Any = ()) -> list[str]:
    """Guard 3 re-derived from recorded floors (`evidence`'s "files": the model's first, then each file's; and
    "unrunnable", the lines of files that could not run in float64, which refuse only where no file measured)."""
    from exporter.errors import UsageError
    from verify.judge.file_floor import agreement_problems, floors_from_record

    if data is None:
        return []
    try:
        model, *files = floors_from_record(data)
        lines = [str(line) for line in unrunnable] if isinstance(unrunnable, list) else None
        if lines is None or not (files or lines) or any(len(file.floors) != len(model.floors) for file in files):
            raise ValueError("files")
    except (KeyError, TypeError, ValueError, AttributeError, UsageError) as exc:
        return [f"no usable file floor evidence recorded ({type(exc).__name__}): nothing to judge on"]
    return agreement_problems(model.floors, files) if files else lines


UNRECORDED_CALLS = ("No float64 call check is recorded for this user model (float64_calls, verify/judge/trust.py "
                    "function_problems), though the floor it is judged on was measured against its float64 oracle: "
                    "the evidence was edited or cut. Not judged; run it again")
"""The line refusing a stored user model's result whose call check (hunt 23a) is missing."""


def unrecorded_calls(trust: Any, user_model: bool) -> list[str]:
    """A stored result of a user's model judged on the auto tolerance always records its float64 oracle's call check
    (verify/pipeline/stages.py trust_problems; without a float64 oracle the auto tolerance is refused): a record
    that is absent or empty was cut, and `evidence_problems` alone reads that as nothing to refuse (a registered
    backbone's record has none). A record that is there is judged by `evidence_problems` (`function_problems`)."""
    if not user_model or not isinstance(trust, Mapping) or trust.get("mode") != "auto":
        return []
    records = trust.get("float64_calls")
    return [] if isinstance(records, list) and records else [UNRECORDED_CALLS]
