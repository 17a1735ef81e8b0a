"""`verify artifact --rebuild --layers`: the layer verdict (verify/explain/rerun.py layer_checks) on an export folder's
files, against the model the folder names, rebuilt here (verify/folder/rebuild.py).

The folder's goldens judge each file's outputs; an error inside one layer can stay within the outputs' rounding
(README: "The layer verdict"). With the rebuilt model as the float64 reference, every layer of each file is re-run
alone on the model's own values for this run's seeded input and judged on its own floor, as `verify export --layers`
judges the files it exports: in CI artifact validation, a file edited by one channel (its hashes rewritten to match)
fails here even where its outputs still agree. Nothing recorded in the folder is read for this verdict."""

from __future__ import annotations

from typing import TYPE_CHECKING

from verify.folder.checks import Check, CheckReport

if TYPE_CHECKING:
    from collections.abc import Sequence

    from verify.folder.validate import ArtifactFolder

LAYERS_RUNTIME = "layers"
NOT_REACHED = ("no file's layers could be re-run (an AOTInductor package is not read by the layer verdict), so no "
               "layer verdict was reached; drop --layers for this folder, or export a .pt2 or ONNX file beside it")
NOT_REBUILT = ("not checked: the layer verdict needs the rebuilt model as its float64 reference, and the folder's was "
               "not rebuilt")


def folder_layer_checks(art: ArtifactFolder, report: CheckReport, names: Sequence[str] | None = None) -> None:
    """One check per model file of `art` (or of `names`, e.g. a preflight's target): every layer within AUTO_FACTOR
    x its own floor (a file that cannot be loaded, or has no layer re-run, fails; an AOTInductor package, which
    isolation does not read, is a skipped check)."""
    from verify.explain.rerun import Candidate, layer_checks
    from verify.judge.compare import AUTO_FACTOR
    from verify.judge.layers import verdict_line

    candidates = []
    for name in names if names is not None else art.manifest.model_files():
        title = f"{name}: layers"
        if not art.sound or art.rebuilt is None or name not in art.verified:
            why = NOT_REBUILT if art.sound and art.rebuilt is None else \
                f"not loaded: {art.unsound_because if not art.sound else 'it failed its integrity check'}"
            report.add(Check(art.label, LAYERS_RUNTIME, title, False, why))
        elif not art.may_load(name):
            report.add(Check(art.label, LAYERS_RUNTIME, title, False, art.refusal(name)))
        else:
            candidates.append(Candidate(art.artifact(name), name))
    if not candidates:
        return
    assert art.goldens is not None
    x = next(iter(art.goldens["input"].values()))  # this run's seeded input, set by the rebuild
    checks, notes = layer_checks(art.rebuilt, candidates, x, AUTO_FACTOR)
    for check in checks:
        report.add(Check(art.label, check.rerun_on or LAYERS_RUNTIME, f"{check.candidate}: layers", check.passed,
                         verdict_line(check), details={"layers": check.to_dict()}))
    for note in notes:
        name = note.split(":", 1)[0]
        report.add(Check(art.label, LAYERS_RUNTIME, f"{name}: layers", True, note, skipped=True))
    if not checks:  # asked for and not reached (every file one isolation does not read): never a pass
        report.add(Check(art.label, LAYERS_RUNTIME, "layers", False, NOT_REACHED))
