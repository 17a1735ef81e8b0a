"""`verify artifact --rebuild`: the folder's reference re-derived from the model its manifest names.

A folder's goldens are its reference: an unsigned folder rewritten consistently (goldens, hashes and floors
edited to match) proves itself, and whoever wrote the goldens decides what agrees. When the manifest names a
registered model whose weights this machine can reproduce (synthetic weights from their seed, torchvision's
from the local cache, or a checkpoint the caller passes), the model is rebuilt here, its weights must have the
manifest's sha256, and it is run in float32 and float64 on the golden input(s). The recorded float64 goldens
must be the rebuilt ones within float64 rounding (REFERENCE_RTOL). Every later check then runs the files on an
input this run makes (the seeded one, or the detector's seeded images, of the golden shapes) and judges them
against the rebuilt model's runs and floors there, never the recorded ones: a goldens edit fails however
consistent, and an input chosen to hide a difference (all zeros hides a scaled stem convolution) hides nothing.

Shared by both folder kinds: a backbone's (here) and a whole detector's (verify/detect/rebuild.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.errors import ArtifactError, UsageError
from verify.bounds import SEED_RANGE
from verify.folder.checks import Check, CheckReport
from verify.folder.integrity import CheckedFolder, run_check

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np

REFERENCE_RTOL = 1e-9
"""How far a recorded float64 golden may sit from the rebuilt one, relative to the output's largest magnitude:
float64 rounding across thread counts and libraries is ~1e-15 of it, float32's own rounding 6e-8, so this
leaves six orders for the first and catches any edit that could move a float32 verdict."""
REBUILD_ONLY = ("{option} names the weights to rebuild the model with, and is read only with rebuild=True: pass "
                "both, or neither")
"""Given without the rebuild, a checkpoint was silently never read, and the check passed as if it had been."""
REBUILD_CHECK = "reference: rebuilt"
REBUILD_RUNTIME = "rebuild"


def rebuilt_reference(art: CheckedFolder, report: CheckReport, body: Callable[[], str]) -> None:
    """The rebuild as one check of a folder that passed integrity; a folder whose reference cannot be rebuilt,
    or is not the rebuilt one, fails and has nothing loaded."""
    if not art.sound:
        report.add(Check(art.label, REBUILD_RUNTIME, REBUILD_CHECK, False,
                         "not rebuilt: the folder failed its integrity checks"))
        return
    check = run_check(art.label, REBUILD_RUNTIME, REBUILD_CHECK, body)
    report.add(check)
    art.sound = check.passed
    if not check.passed:
        art.unsound_because = "the folder's reference could not be rebuilt as its manifest says"


def weights_source(recorded: str, weights_file: Path | None, seed: int = 0) -> tuple[str, int]:
    """What `exporter.weights.load_weights` (or a detector builder) takes to reproduce `recorded`
    (`synthetic:<seed>`, `imagenet:<file>`, `file:<name>`), and the seed: synthetic weights' own, else `seed`,
    the export's (it also seeds what no weights file holds, e.g. an FPN's convolutions)."""
    kind, _, rest = recorded.partition(":")
    if kind == "synthetic" and rest.isdigit():
        return (str(weights_file), int(rest)) if weights_file is not None else ("synthetic", int(rest))
    if weights_file is not None:
        return str(weights_file), seed
    if kind == "imagenet":
        return "imagenet", seed
    raise ArtifactError(f"not rebuilt: the folder's weights came from {recorded!r}, which this machine cannot "
                        "reproduce by itself; pass that file with --checkpoint FILE")


def recorded_seed(identity: Any) -> int:
    """The seed the export ran with (its manifest's `identity`; 0 in folders of exports that predate it)."""
    seed = identity.get("seed", 0) if isinstance(identity, dict) else 0
    if isinstance(seed, bool) or not isinstance(seed, int) or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise ArtifactError(f"not rebuilt: the manifest's identity records seed {seed!r}, which is no seed "
                            f"({SEED_RANGE[0]}..{SEED_RANGE[1]})")
    return seed


def check_weights(digest: str, recorded: str | None) -> None:
    if recorded is None:
        raise ArtifactError("not rebuilt: the manifest records no weights_sha256 to check the rebuilt model by")
    if digest != recorded:
        raise ArtifactError(f"the rebuilt model's weights have sha256 {digest[:12]}…, the manifest "
                            f"{recorded[:12]}…: the folder is not an export of the model it names (or --checkpoint is "
                            "another file)")


def same_reference(recorded: dict[str, np.ndarray], rebuilt: dict[str, np.ndarray], what: str) -> None:
    """Every recorded float64 array is the rebuilt one: same keys and shapes, values within REFERENCE_RTOL
    of the array's largest magnitude (numpy's assert_allclose semantics)."""
    import numpy as np

    if set(recorded) != set(rebuilt):
        extra = sorted(set(recorded) ^ set(rebuilt))
        raise ArtifactError(f"the recorded {what} goldens hold {len(recorded)} arrays, the rebuilt model gives "
                            f"{len(rebuilt)} (e.g. {extra[0]}): the goldens are not this model's")
    for key in sorted(recorded):
        a, b = np.asarray(recorded[key]), np.asarray(rebuilt[key])
        if a.shape != b.shape:
            raise ArtifactError(f"the recorded {what} golden {key} is {list(a.shape)}, the rebuilt model's "
                                f"{list(b.shape)}: the goldens are not this model's")
        if a.dtype.kind not in "fc":
            if not np.array_equal(a, b):
                raise ArtifactError(f"the recorded {what} golden {key} differs from the rebuilt model's")
            continue
        scale = float(np.max(np.abs(b))) if b.size else 0.0
        try:
            np.testing.assert_allclose(a, b, rtol=REFERENCE_RTOL, atol=REFERENCE_RTOL * scale)
        except AssertionError:
            worst = float(np.max(np.abs(a.astype(np.float64) - b)))
            raise ArtifactError(f"the recorded {what} golden {key} is {worst:.3g} from the rebuilt model's (at most "
                                f"{REFERENCE_RTOL:g} of its scale {scale:.3g} is rounding): the goldens were "
                                "edited or come from another model") from None


def rebuild_backbone(art: CheckedFolder, weights_file: Path | None) -> str:
    """The backbone rebuilt from the manifest, its weights checked, run on the golden input; the recorded
    float64 goldens must be its own, and the folder's (verify/folder/validate.py ArtifactFolder) goldens and
    floors become the rebuilt ones."""
    from exporter.backbones import build_model
    from exporter.formats.eager import eager_artifact
    from exporter.spec import ModelSpec
    from exporter.weights import load_weights
    from verify.inputs import make_input
    from verify.judge.measure import measure_floors
    from verify.judge.oracle import folded_samples, measure_oracle
    from verify.runtimes import RuntimeOptions, default_runtime, make_runtime, runtimes_for

    assert art.goldens is not None
    model = art.manifest.model
    if getattr(model, "factory", None) or getattr(model, "source", None):
        raise ArtifactError("not rebuilt: the folder is an export of your own model (--model), whose code this "
                            "check never runs; sign the folder instead (--sign-key at export, --verify-key here)")
    spec = ModelSpec.parse(model.spec)
    source, seed = weights_source(model.weights, weights_file, recorded_seed(art.manifest.identity))
    weights = load_weights(source, spec.backbone, seed)
    check_weights(weights.sha256, model.weights_sha256)
    inputs = art.goldens["input"]
    built = build_model(spec, weights, seed)
    eager = eager_artifact(built, tuple(next(iter(inputs.values())).shape))
    sets = getattr(art, "golden_sets", None) or [art.goldens]
    names = runtimes_for(eager.format, float64=True)  # measure_oracle's float64 run, without its float32 work
    if not names:
        raise UsageError("not rebuilt: the model has no float64 oracle")
    exact = make_runtime(names[0], RuntimeOptions(dtype="float64")).load(eager)
    for index, goldens in enumerate(sets):  # every stored input's float64 goldens are the rebuilt model's
        same_reference(goldens["float64"], exact.run(goldens["input"]), "float64" if not index else f"float64@{index}")
    own = {name: make_input(x.shape, seed) for name, x in inputs.items()}  # the folder's input is theirs to choose
    fp32 = make_runtime(default_runtime(eager.format), RuntimeOptions()).load(eager).run(own)
    oracle = measure_oracle(eager, own, fp32)
    samples = folded_samples(eager, own)
    art.goldens = {**art.goldens, "input": own, "float32": fp32, "float64": oracle.outputs,
                   "folded": samples[0] if samples else {}}
    if hasattr(art, "golden_sets"):  # judged on this run's input alone, never on the folder's
        art.golden_sets, art.golden_labels = [art.goldens], [f"seeded (seed {seed})"]
    art.floors = measure_floors(fp32, oracle.outputs, samples=samples)
    art.rebuilt = eager
    kept = f" on all {len(sets)} stored inputs" if len(sets) > 1 else ""
    return (f"{spec} with {model.weights} weights (sha256 as recorded): the float64 goldens are its own{kept}; "
            f"each file judged against its float32 and float64 runs on this run's seeded input (seed {seed})")
