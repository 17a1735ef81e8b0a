"""Find the first module, in execution order, whose output differs beyond rounding, for any pair.

Each side is read by the tracer that can read it (verify/explain/tracers.py). The judgement then
follows from what the two traces are:
- both exact (torch programs run in float64: eager, TorchScript, ExportedProgram): the first
  module value whose float64 difference exceeds EQUIVALENCE_RTOL relative;
- one exact, one float32 (an ONNX graph against a torch program): the graph's float32 value
  against the program's float64 one, judged against `factor` x that module's own float32 noise
  floor (float32 vs float64 of the same program at that module);
- both float32 (ONNX against ONNX): the two values against `factor` x the larger per-module floor
  of the two, each measured as the spread between the runtime's alternative settings (ONNX
  Runtime's optimisation levels) at that module. That is the estimator the output-level verdict of
  an ONNX file already uses (verify.judge.oracle.oracle_or_spread), so a module and the outputs are
  judged on one scale; a scaled output difference would not do, since rounding does not grow
  linearly through the network.
Without a tracer for a side, or without module values the two sides share, the result says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from verify.explain.structure import fold_partner
from verify.explain.tracers import Side, Trace, canonical_name, to_numpy, tracer_for

if TYPE_CHECKING:
    import numpy as np

EQUIVALENCE_RTOL = 1e-10
"""float64 outputs closer than this (relative to the output's scale) are the same function.
float64 rounding in a ResNet-50 stays near 1e-15 relative (float32's measured 2e-6 scaled by
2^-29); a real change such as eps 1e-5 -> 0 or a 1e-6 weight edit is 1e-7 or more."""

CONSTANT_ROUNDING_RTOL = 2.0 ** -20
"""A saved torch program's float64 run may differ from its model's by this much relative and still be the same function
at float32: a trace bakes the constants the model makes in forward from x.dtype (`x.new_tensor(0.1)`) in as float32, so
its float64 run uses them rounded to float32, 2^-24 relative each (1.5e-8 found by hunt 26b); 16 such roundings. Such a
pair is judged on the float32 floor instead; a real change of 1e-6 relative or more stays another function."""

CONSTANT_ROUNDING_FLOOR = 1.0
"""And the two float64 runs may differ by at most this many float32 floors (each channel's, as `compare` judges): a
constant rounded to float32 moves a float64 run by half a float32 ulp of that constant, no more than one float32
rounding of the output moves it (hunt 26b's trace: 0.10x the combined floor). Review 23: a TorchScript file whose
constant was 0.1 x (1 + 2^-21), six float32 ulps from 0.1, is 4.6e-7 relative, inside CONSTANT_ROUNDING_RTOL, and was
"equivalent within float32 rounding: 3.2x the noise floor", exit 0; its float64 runs differ by 2.9-3.4 floors."""


@dataclass
class Divergence:
    module: str
    call: int
    max_abs: float
    max_rel: float
    ratio: float | None = None
    """Float32 judgements: the difference over that module's float32 noise floor."""
    fused_with: list[str] = field(default_factory=list)
    """Modules an ONNX graph computes in the same node (e.g. a norm folded into its conv)."""
    judged: str = "float64"
    """`float64` (relative difference of two float64 runs) or `float32-floor`."""
    uncompared: list[str] = field(default_factory=list)
    """Modules before it whose calls one side does not tell apart (Trace.ambiguous): not compared, so the
    divergence may begin there."""


@dataclass
class Localisation:
    divergence: Divergence | None
    note: str = ""
    """Why there is no first divergence, when there is none."""


def localise(a: Side, b: Side, x: np.ndarray, factor: float) -> Localisation:
    """The first diverging module between two sides, or why none can be named."""
    tracers = [tracer_for(a), tracer_for(b)]
    missing = [side for side, tracer in zip((a, b), tracers) if tracer is None]
    if missing:
        from verify.explain.tracers import TRACERS

        readers = "; ".join(TRACERS.get(name).reads for name in TRACERS)
        what = " and ".join(f"a {side.kind} artifact ({side.artifact.label})" for side in missing)
        return Localisation(None, f"first divergence: not available for {a.kind} vs {b.kind} because no "
                                  f"tracer reads per-module values out of {what}; module values are read "
                                  f"from {readers}")
    ta, tb = tracers
    assert ta is not None and tb is not None
    try:
        if ta.exact and tb.exact:
            traces = _aligned(_read(ta, a, x), _read(tb, b, x))
            divergence = first_exact_divergence(*traces)
            rule = f"float64 relative difference {EQUIVALENCE_RTOL:.0e}"
        elif ta.exact or tb.exact:  # the exact side is the reference and measures the floors
            exact, graph = (a, b) if ta.exact else (b, a)
            ref = _read(ta if ta.exact else tb, exact, x, floors=True)
            traces = _aligned(ref, _read(tb if ta.exact else ta, graph, x))
            divergence = first_divergence_beyond_floor(*traces, factor, neighbours=True)
            rule = f"{factor:g}x the module's float32 noise floor"
        else:
            traces = _aligned(_read(ta, a, x, floors=True), _read(tb, b, x, floors=True))
            divergence = first_divergence_beyond_floor(*traces, factor, neighbours=False)
            rule = f"{factor:g}x the module's float32 floor (spread of the runtime's alternative settings)"
    except _Unreadable as exc:
        return Localisation(None, f"first divergence: not available for {a.kind} vs {b.kind} because {exc}")
    if divergence is not None:
        order = [n for n, _, _ in traces[0].values]
        before = order[:order.index(divergence.module)] if divergence.module in order else order
        divergence.uncompared = list(dict.fromkeys(n for n in before if n in traces[0].ambiguous))
        return Localisation(divergence)
    shared = _shared_count(*traces)
    if not shared:
        counts = f"{len(traces[0].values)} and {len(traces[1].values)} module values"
        return Localisation(None, f"first divergence: not available for {a.kind} vs {b.kind} because the two "
                                  f"sides share no module value ({counts}; a graph without module scopes "
                                  "records none)")
    return Localisation(None, f"first divergence: none of the {shared} module values both sides share differs "
                              f"beyond {rule}: no single module accounts for it (it builds up gradually, or "
                              "arises in code outside any module)")


class _Unreadable(Exception):
    """A tracer claimed a side but could not read it (the verdict stands; only the locating stops)."""


def _read(tracer: Any, side: Side, x: np.ndarray, floors: bool = False) -> Trace:
    try:
        return tracer.trace(side, x, floors)
    except Exception as exc:  # an unforeseen graph construct must not cost the user the verdict
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise _Unreadable(f"reading module values out of {side.artifact.label} failed: {first}") from exc


# ---------------------------------------------------------------- matching the two sides

def _shared_count(ref: Trace, other: Trace) -> int:
    return sum(1 for name, call, _ in ref.values if _counterpart(name, call, ref, other, True)[1] is not None)


def _aligned(a: Trace, b: Trace) -> tuple[Trace, Trace]:
    """Strip a view prefix (`body.`) that only one side's names carry, when that lines them up:
    a saved file does not say where the backbone sits, an eager model's names are canonical."""
    names_a, names_b = {n for n, _, _ in a.values}, {n for n, _, _ in b.values}

    def prefixes(names: set[str]) -> set[str]:
        return {""} | {n.split(".", 1)[0] + "." for n in names if "." in n}

    def overlap(pa: str, pb: str) -> int:
        return len({canonical_name(n, pa) for n in names_a} & {canonical_name(n, pb) for n in names_b})

    best = max(((pa, pb) for pa in prefixes(names_a) for pb in prefixes(names_b) if not (pa and pb)),
               key=lambda pair: (overlap(*pair), pair == ("", "")))
    return _calls_told_apart(_renamed(a, best[0]), _renamed(b, best[1]))


def _calls_told_apart(a: Trace, b: Trace) -> tuple[Trace, Trace]:
    """Both sides with `ambiguous` naming the modules one side records fewer calls of than the other: a dynamo ONNX
    graph records no call identity, so `self.conv(self.conv(x))` is one run whose value is the second call's,
    recorded as the first. Before, that value was compared with the first call's and named the first divergence
    (`conv`) where only the layer after it (`head`) differed."""
    from collections import Counter

    counts = [Counter(n for n, _, _ in trace.values) for trace in (a, b)]
    ambiguous = {n for n in counts[0].keys() & counts[1].keys() if counts[0][n] != counts[1][n]}
    a.ambiguous, b.ambiguous = set(ambiguous), set(ambiguous)
    return a, b


def _renamed(trace: Trace, prefix: str) -> Trace:
    if not prefix:
        return trace
    return Trace([(canonical_name(n, prefix), c, v) for n, c, v in trace.values], trace.exact,
                 {(canonical_name(n, prefix), c): v for (n, c), v in trace.float32.items()},
                 {(canonical_name(n, prefix), c): v for (n, c), v in trace.spread.items()},
                 {canonical_name(n, prefix) for n in trace.passthrough},
                 {canonical_name(n, prefix): canonical_name(p, prefix) for n, p in trace.fused.items()})


def _counterpart(name: str, call: int, ref: Trace, other: Trace,
                 aliases: bool) -> tuple[tuple[str, int] | None, Any]:
    """The other side's value for `name`; with `aliases`, also where one graph computes a conv and
    its norm in one node recorded under the norm and the other under the conv."""
    if (name, call) in other.by_key:
        return (name, call), other.by_key[(name, call)]
    if aliases:
        for key in [(ref.fused.get(name), call), *[(n, call) for n, p in other.fused.items() if p == name]]:
            if key[0] is not None and key in other.by_key:
                return key, other.by_key[key]  # type: ignore[return-value]
    return None, None


def _rel(value: Any, reference: Any) -> tuple[float, float]:
    import numpy as np

    a, b = to_numpy(value).astype(np.float64), to_numpy(reference).astype(np.float64)
    diff = float(np.abs(a - b).max()) if a.size else 0.0
    scale = float(np.abs(b).max()) if b.size else 0.0
    return diff, (diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf")))


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape)


# ---------------------------------------------------------------- the judgements

def first_exact_divergence(a: Trace, b: Trace) -> Divergence | None:
    """Both in float64: the first module call (in A's order) whose values differ by more than
    EQUIVALENCE_RTOL. A conv whose norm is folded on one side only is judged at the norm, where
    both sides compute the same quantity."""
    folded = {fold_partner(n) for mine, theirs in ((a, b), (b, a)) for n in mine.passthrough
              if n not in theirs.passthrough and any(k[0] == n for k in theirs.by_key)}
    for name, call, out in a.values:
        other = b.by_key.get((name, call))
        if other is None or _shape(other) != _shape(out) or name in folded or name in a.ambiguous:
            continue
        max_abs, max_rel = _rel(out, other)
        if max_rel > EQUIVALENCE_RTOL:
            return Divergence(name, call, max_abs, max_rel)
    return None


def first_divergence_beyond_floor(ref: Trace, other: Trace, factor: float,
                                  neighbours: bool) -> Divergence | None:
    """The first module call (in `ref`'s order) where `other`'s value is off by more than `factor`
    times the module's float32 floor (the larger of the two sides' where both measured one, at
    least one float32 ulp of the value's scale).

    `neighbours` (a graph against the torch program it came from): an exporter may compute the
    next module (a norm) in the same node, so the next module's value is tried too, and a
    divergence is named at the first of the value-less leaf modules just before it (a conv
    folded into its norm) that no earlier value already stands for. Between two graphs, a conv and
    a norm fused into one node match each other through the graphs' own records of the fusion."""
    import numpy as np

    order = ref.values
    names = {n for n, _, _ in order}

    def leaf(name: str) -> bool:
        return not any(n.startswith(name + ".") for n in names)

    def valueless(j: int) -> bool:
        """No value of the other side stands for module call `order[j]`: none, or one of another shape (the shape
        arithmetic a dynamic export puts under a transposed conv's scope, its conv folded into the norm after it:
        before, the norm was named where the conv's weights differ; hunt 31)."""
        value = _counterpart(order[j][0], order[j][1], ref, other, False)[1]
        return value is None or _shape(value) != _shape(order[j][2])

    def against(j: int, name: str, key: Any, value: Any) -> tuple[float, float, float] | None:
        """`value` (the other side's for call `name`, `key`) against call `order[j]`'s reference: max abs, max rel,
        and max abs over its floor; None for another shape."""
        cand_name, cand_call, reference = order[j]
        if _shape(reference) != _shape(value):
            return None
        floors = [ref.floor(cand_name, cand_call),
                  other.floor(*key) if key is not None and cand_name == name else None]
        scale = float(np.abs(to_numpy(reference)).max(initial=0.0))
        floor = max([f for f in floors if f] + [float(np.finfo(np.float32).eps) * scale]) or \
            float(np.finfo(np.float32).eps)
        max_abs, max_rel = _rel(value, reference)
        return max_abs, max_rel, max_abs / floor

    # Value-less calls an earlier value stands for within the factor (a norm the legacy exporter folded into the conv
    # before it, a Dropout it dropped): never named for a later module's error (before: `bn1` for conv2's; hunt 34).
    covered: set[int] = set()
    for i, (name, call, _) in enumerate(order):
        key, value = _counterpart(name, call, ref, other, aliases=not neighbours)
        if value is None or name in ref.ambiguous:  # which call the other side's value is, is unknown
            continue
        nxt = i + 1 if neighbours and i + 1 < len(order) else None
        best: Divergence | None = None
        for j in [i] + ([nxt] if nxt is not None else []):
            if (judged := against(j, name, key, value)) is None:
                continue
            max_abs, max_rel, ratio = judged
            if j == nxt and ratio <= factor and valueless(j):
                covered.add(j)
            if best is None or best.ratio is None or ratio < best.ratio:
                best = Divergence(name, call, max_abs, max_rel, ratio, judged="float32-floor",
                                  fused_with=[order[j][0]] if j == nxt and valueless(j) and leaf(order[j][0]) else [])
        # and each value-less leaf call after those the value stands for (review 41: a Dropout the legacy exporter
        # dropped after a norm it folded into the conv before them was named for the next conv's error)
        k = nxt + 1 if nxt is not None and nxt in covered else len(order)
        while k < len(order) and valueless(k) and leaf(order[k][0]) \
                and (judged := against(k, name, key, value)) is not None and judged[2] <= factor:
            covered.add(k)
            k += 1
        if best is None or best.ratio is None or best.ratio <= factor:
            continue
        if neighbours:
            group = [name]
            j = i - 1
            while j >= 0 and j not in covered and valueless(j) and leaf(order[j][0]) \
                    and order[j][0] not in ref.ambiguous:
                group.insert(0, order[j][0])
                j -= 1
            best.module, best.fused_with = group[0], group[1:] + best.fused_with
        else:
            conv = ref.fused.get(name) or (key is not None and other.fused.get(key[0])) or None
            if conv and conv not in names:
                best.module, best.fused_with = conv, [name]
            elif key is not None and key[0] != name:
                best.fused_with = [key[0]]
        return best
    return None
