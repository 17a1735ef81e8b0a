"""The layer records (verify/explain/rerun.py re-runs each layer; this module holds what it found, the verdict
it makes with `--layers`, and its texts): plain data and words, no torch, so a Report can hold them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LIMIT = 10
"""Layers shown in the report (all are in its JSON)."""
NO_LAYER_VERDICT = ("--layers was asked for and no file's layers could be checked (see the notes): no layer "
                    "verdict was reached; export a format whose layers can be re-run (.onnx, .pt2, TorchScript) or "
                    "drop --layers")
"""The problem of a run that asked for the layer verdict and checked no file."""
LAYERS_ENV = "BACKBONE_VERIFY_LAYERS"
"""`0` turns off the layer verdict `verify export` runs by default (`by_default`); `1` (or unset) keeps it. A run's
own `--layers` / `--no-layers` wins."""


def layers_by_default() -> bool:
    """Whether a `verify export` that neither asks for nor refuses the layer verdict runs it (LAYERS_ENV); a value
    other than 0 or 1 is a one-line UsageError."""
    import os

    from exporter.errors import UsageError

    text = os.environ.get(LAYERS_ENV, "").strip()
    if text not in ("", "0", "1"):
        raise UsageError(f"{LAYERS_ENV}={text[:40]!r} is neither 0 nor 1: set it to 1 (the layer verdict by default) "
                         "or 0 (the outputs' verdict alone unless --layers), or unset it")
    return text != "0"


def best_effort(checks: list[Isolation]) -> tuple[list[Isolation], list[str]]:
    """The layer verdict run by default (not asked for with --layers): a file that differs on its own still fails
    (a layer beyond its floor), and what could not be judged is a note, not a failure, as it would be without the
    layer verdict: a file with no layer re-run (AOTInductor, a graph without module scopes), or whose layers could
    not all run on the model's values. Returns (the checks that judge, the notes)."""
    kept, notes = [], []
    for check in checks:
        # a layer that returned another shape stays a note here, named with both shapes (sweep 27d): by default a
        # scope that maps to another tensor than its module's output must not fail a correct export; --layers fails it
        if check.named or check.passed:
            kept.append(check)
        else:
            notes.append(f"layer verdict not reached (run by default; --layers requires it): {culprit_note(check)}")
    return kept, notes


def unreached(asked: bool, checks: list[Any], problems: list[str]) -> list[str]:
    """`problems` with NO_LAYER_VERDICT added where the layer verdict was asked for and no file was checked (once)."""
    return [*problems, NO_LAYER_VERDICT] if asked and not checks and NO_LAYER_VERDICT not in problems else problems


OWN_OPS = " (own ops)"
"""After a parent's name where only its own ops were re-run (LayerError.own_ops): not its children's layers."""
CULPRITS_NOTED = 3
"""Layers a failed report's note names per file (all are in its JSON `isolated`)."""


@dataclass
class LayerError:
    module: str
    call: int
    ratio: float
    """Worst channel's error over that channel's own float32 floor."""
    max_abs: float
    floor: float
    fused_with: list[str] = field(default_factory=list)
    channel: int | None = None
    own_ops: bool = False
    """Only the module's own ops, between its children's calls (an FPN's upsample and add), each child's value the
    reference's: named by the module's path, as a leaf is, the report adds "(own ops)"."""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Isolation:
    reference: str
    candidate: str
    factor: float
    layers: list[LayerError] = field(default_factory=list)
    """Every layer checked, worst ratio first."""
    skipped: list[str] = field(default_factory=list)
    """Layers whose inputs do not map back to reference values."""
    unrunnable: list[str] = field(default_factory=list)
    """Layers that could not run on the reference's values for their inputs (another model's shapes, or a piece
    its runtime refused), and layers that ran on them and returned another shape than the reference's (`reshaped`)."""
    reshaped: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    """The unrunnable layers that did run on the reference's values: path -> (their output's shape, the reference's).
    Such a layer computes another function (an exporter's ceil_mode, a reduction's axes), not 'could not run'."""
    outside: list[str] = field(default_factory=list)
    """The op types of the file's ops in no layer (functional ops between modules, nodes with no module scope): not
    re-run, so only the outputs' verdict judges them (ONNX, .pt2, and a TorchScript file's modules' own forward)."""
    outside_in: list[str] = field(default_factory=list)
    """Where each of `outside` is: the module whose own forward holds it ("" the model's own forward, or no scope
    recorded), so that a report can say where to look (sweep 49b: a Resize edited in a U-Net block's own forward failed
    the outputs and named no layer)."""
    note: str = ""
    rerun_on: str = ""
    """What re-ran the candidate's layers (on the CPU whatever the runs' device: ONNX pieces on ONNX Runtime, torch
    files and models on torch), for the report to say: it is not the runtime a run judged (`--runtime`, `--device`)."""

    @property
    def named(self) -> list[LayerError]:
        return [layer for layer in self.layers if layer.ratio > self.factor]

    @property
    def exit_code(self) -> int:
        return 1 if self.named or self.unrunnable else 0

    @property
    def passed(self) -> bool:
        """The layer verdict (`--layers`): some layer was re-run, none differs on its own and none could not run."""
        return bool(self.layers) and self.exit_code == 0

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "candidate": self.candidate, "factor": self.factor,
                "named": [layer.module for layer in self.named], "layers": [x.to_dict() for x in self.layers],
                "skipped": self.skipped, "unrunnable": self.unrunnable,
                "reshaped": {path: {"shape": list(got), "reference": list(want)}
                             for path, (got, want) in self.reshaped.items()},
                "outside": self.outside, "outside_in": self.outside_in, "note": self.note,
                "rerun_on": self.rerun_on}


def verdict_line(result: Isolation) -> str:
    """The layer verdict's one line (`--layers`): what was re-run and how it went, the layers that differ named."""
    if not result.layers:
        return (f"{result.candidate}: no layer was re-run on {result.reference}'s inputs "
                f"({result.note or 'no layer maps back to a module'}), so its layers were not judged")
    if result.passed:
        where = f", re-run on {result.rerun_on}," if result.rerun_on else ""
        return (f"every one of {len(result.layers)} layers of {result.candidate} is within {result.factor:g}x its own "
                f"float32 floor{where} on {result.reference}'s values for the first input (the other inputs' verdict "
                f"is the outputs'){skipped_text(result)}{outside_text(result)}")
    return culprit_note(result)


def culprit_note(result: Isolation) -> str:
    """One line: the layers of `result` that differ on their own, worst first, or that none does."""
    named = result.named
    if not result.layers:  # nothing was re-run: no word on where the difference comes from
        return f"{result.candidate}: its layers were not isolated ({result.note or 'no layer was re-run'})"
    unrun = unrunnable_text(result)
    if not named and result.reshaped:  # a layer that returned another shape on the model's own values: the culprit
        return (f"isolated: {len(result.reshaped)} of {len(result.layers) + len(result.reshaped)} layers of "
                f"{result.candidate} differ on their own{unrun}")
    if not named and unrun:  # the layers that may differ were not judged: no claim on where it comes from
        return (f"isolated: every one of {len(result.layers)} layers of {result.candidate} re-run is within "
                f"{result.factor:g}x its own float32 floor{unrun}")
    if not named and result.skipped:  # the layers left out may be where it comes from: no claim that it builds up
        return (f"isolated: every one of {len(result.layers)} layers of {result.candidate} re-run is within "
                f"{result.factor:g}x its own float32 floor{skipped_text(result)}")
    if not named and result.outside:  # the ops in no layer may be where it comes from: no claim that it builds up
        return (f"isolated: every one of {len(result.layers)} layers of {result.candidate} re-run is within "
                f"{result.factor:g}x its own float32 floor{outside_text(result)}")
    if not named:
        return (f"isolated: every one of {len(result.layers)} layers of {result.candidate} is within "
                f"{result.factor:g}x its own float32 floor; the difference builds up across layers")
    shown = "; ".join(f"{layer.module}{OWN_OPS if layer.own_ops else ''}"  # a folded norm: its error shows at the conv
                      + (f" (call {layer.call + 1})" if layer.call else "")  # a module called twice: which call
                      + (f" (computed with {', '.join(layer.fused_with)})" if layer.fused_with else "")
                      + f" {layer.ratio:.0f}x its own floor"
                      + (f" (channel {layer.channel})" if layer.channel is not None else "")
                      for layer in named[:CULPRITS_NOTED])
    more = f" (+{len(named) - CULPRITS_NOTED} more)" if len(named) > CULPRITS_NOTED else ""
    return f"isolated: {len(named)} of {len(result.layers)} layers of {result.candidate} differ on their own: " \
           f"{shown}{more}{unrun}"


def skipped_text(result: Isolation) -> str:
    """The note's clause on layers that were not re-run ('' when none was skipped)."""
    if not result.skipped:
        return ""
    names = list(dict.fromkeys(result.skipped))
    more = " ..." if len(names) > CULPRITS_NOTED else ""
    return (f"; {len(names)} not re-run ({', '.join(names[:CULPRITS_NOTED])}{more}): their inputs do not map back to "
            f"{result.reference}'s values (or, in TorchScript, their own ops are in no leaf module), so the difference "
            "may come from them")


def outside_text(result: Isolation) -> str:
    """The verdict's clause on the ops in no layer ('' when every op is in one): the layer verdict did not see them."""
    if not result.outside:
        return ""
    kinds = sorted(set(result.outside))
    more = " ..." if len(kinds) > CULPRITS_NOTED else ""
    return (f"; {len(result.outside)} ops outside every layer ({', '.join(kinds[:CULPRITS_NOTED])}{more}) were not "
            f"re-run{_outside_where(result)}: only the outputs' verdict judges them")


def _outside_where(result: Isolation) -> str:
    """` (in the forward of up2, up1 ...)`: the modules whose own forward holds the ops in no layer, most ops first
    ("" where no op's module is known)."""
    from collections import Counter

    counts = Counter(name for name in result.outside_in if name)
    if not counts:
        return ""
    names = [name for name, _ in counts.most_common()]
    more = " ..." if len(names) > CULPRITS_NOTED else ""
    return f" (in the forward of {', '.join(names[:CULPRITS_NOTED])}{more})"


def unrunnable_text(result: Isolation) -> str:
    """The note's clause on layers that could not take the reference's inputs ('' when every layer could)."""
    if not result.unrunnable:
        return ""
    reshaped = [path for path in dict.fromkeys(result.unrunnable) if path in result.reshaped]
    refused = [path for path in result.unrunnable if path not in result.reshaped]
    text = ""
    if reshaped:  # it ran on the model's own values: its output's shape is the difference, named as such
        dims = lambda shape: "x".join(str(d) for d in shape)  # noqa: E731
        shown = ", ".join(f"{path} {dims(result.reshaped[path][0])} where {result.reference}'s is "
                          f"{dims(result.reshaped[path][1])}" for path in reshaped[:CULPRITS_NOTED])
        more = " ..." if len(reshaped) > CULPRITS_NOTED else ""
        text += (f"; {len(reshaped)} ran on {result.reference}'s inputs and returned another shape ({shown}{more}): "
                 "they compute another function")
    if refused:
        more = " ..." if len(refused) > CULPRITS_NOTED else ""
        text += (f"; {len(refused)} could not run on {result.reference}'s inputs "
                 f"({', '.join(refused[:CULPRITS_NOTED])}{more}): layers of another shape, or refused by their "
                 "runtime")
    return text
