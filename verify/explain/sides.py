"""A side of a comparison loaded: its torch modules in float32 and float64 where a torch runtime can run it, and its
module names lined up with the other side's (explain, isolate and the layer verdict read both through this)."""

from __future__ import annotations

import copy
from typing import Any

from exporter.artifacts import Artifact
from verify.explain.structure import canonical_modules
from verify.explain.tracers import Side


def load_side(artifact: Artifact, float64: bool = True, fp32: Any = None) -> Side:
    """The side with its torch modules in float32 and float64 where a torch runtime can run it
    in float64 (an eager model, a saved torch program); a graph runtime's side has none. A saved program's float64
    module is left out unless `float64` (a layer verdict's candidate is re-run in float32 only), and its float32
    module is `fp32` where a run of this process already loaded it (`file_runtime` with default options)."""
    from verify.runtimes import RuntimeOptions, make_runtime

    if artifact.built is not None:
        built = artifact.built
        return Side(artifact, copy.deepcopy(built.model), built.float64(), built.view.prefix)
    exact = file_runtime(artifact)
    if exact is not None:  # a saved torch program (TorchScript, ExportedProgram): both precisions from the file
        return Side(artifact, fp32 if fp32 is not None else make_runtime(exact).load(artifact).module,
                    make_runtime(exact, RuntimeOptions(dtype="float64")).load(artifact).module if float64 else None)
    return Side(artifact)


def file_runtime(artifact: Artifact) -> str | None:
    """The torch runtime that loads a saved program's modules for a side (None: a graph format, e.g. ONNX)."""
    from verify.runtimes import runtimes_for

    exact = runtimes_for(artifact.format, float64=True)
    return exact[0] if exact else None


def line_up(sides: list[Side]) -> None:
    """A saved file does not say where the backbone sits in its view (`body.` in the FPN backbone):
    give a file side the prefix that lines its modules up with the other side's canonical names."""
    from verify.explain.tracers import canonical_name

    for side, other in ((sides[0], sides[1]), (sides[1], sides[0])):
        if side.fp32 is None or side.artifact.built is not None or other.fp32 is None:
            continue
        names = [name for name, _ in side.fp32.named_modules() if name]
        theirs = set(canonical_modules(other.fp32, other.prefix))
        candidates = sorted({""} | {name.split(".", 1)[0] + "." for name in names if "." in name})
        side.prefix = max(candidates, key=lambda prefix: (
            len({canonical_name(name, prefix) for name in names} & theirs), prefix == ""))


def load_sides(a: Artifact, b: Artifact, loaded_a: Side | None = None) -> list[Side]:
    """Both sides loaded and their module names lined up (`loaded_a`: A's side, already loaded for another pair)."""
    sides = [loaded_a or load_side(a), load_side(b)]
    line_up(sides)
    return sides
