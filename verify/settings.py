"""What every command shares: how to feed and run (`RunSettings`), the inputs it names, and those settings as
the plain data a report records. The bottom of verify/: it imports no other part of the pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from exporter.errors import UsageError
from verify.inputs import (
    ARRAY_SUFFIX,
    IMAGE_SUFFIXES,
    MAX_SAMPLES,
    NamedInput,
    check_sample_budget,
    default_sample_count,
    load_inputs,
    seeded_inputs,
)
from verify.judge.compare import Tolerance
from verify.runtimes import RuntimeOptions


@dataclass(frozen=True)
class RunSettings:
    """How to feed and run: shared by every command."""

    weights: str = "synthetic"
    seed: int = 0
    shape: tuple[int, ...] | None = None
    input_file: Path | None = None
    runtime: RuntimeOptions = RuntimeOptions()
    tolerance: Tolerance = Tolerance()
    normalize: bool = True
    """Images given as input: ImageNet mean/std after ToTensor's scaling (False: exactly ToTensor)."""
    samples: int | None = None
    """Seeded inputs per verdict without --input (None: $BACKBONE_VERIFY_SAMPLES, else DEFAULT_SAMPLES); refused
    beside --input, whose files are the inputs as given."""
    layers: bool | None = None
    """The layer verdict (`--layers`, verify/judge/layers.py): every layer of each exported file (ONNX, .pt2,
    TorchScript) re-run alone on the torch model's float64 values for its inputs, each judged on its own floor; a
    layer that differs on its own fails the report, though its effect on the outputs is within rounding. True: asked
    for (a file it cannot judge fails); False: not run; None: the command's default (`verify export` of a registered
    backbone or of a user's model runs it, best effort: verify/pipeline/stages.py `wants_layers`; elsewhere not run)."""

    def __post_init__(self) -> None:
        """The library refuses what the CLI refuses, before any work."""
        from verify.bounds import SEED_RANGE, require_number
        from verify.runtimes import DEVICES

        self._check_types()
        require_number("seed", self.seed, *SEED_RANGE, integer=True)
        if self.samples is not None:
            require_number("samples", self.samples, 1, MAX_SAMPLES, integer=True)
            if self.input_file is not None:
                raise UsageError("--samples sets how many seeded inputs are drawn, and --input gives the inputs "
                                 "instead: drop --samples (or pass a folder holding every input you want judged)")
        if self.input_file is None and self.samples is None:
            default_sample_count()  # a bad $BACKBONE_VERIFY_SAMPLES is refused before any model is built
        if self.samples is not None and self.shape is not None:  # (explain takes one input: no count of its own)
            check_sample_budget(self.shape, self.samples)
        if not self.normalize and (self.input_file is None or Path(self.input_file).suffix.lower() == ARRAY_SUFFIX):
            raise UsageError(f"--no-normalize changes how images given with --input are scaled, and "
                             f"{'no --input is given' if self.input_file is None else f'{self.input_file} is an array'}"
                             ": drop --no-normalize (arrays and seeded inputs are used as they are)")
        if self.runtime.device not in DEVICES:
            raise UsageError(f"Unknown device {self.runtime.device!r}; use one of {', '.join(DEVICES)}")
        require_readable_weights(self.weights)

    def _check_types(self) -> None:
        """Paths given as text or os.PathLike, and the shape as the CLI parses it; anything else of the wrong type is
        refused by name (found by hunt 12a: a Path as weights, a runtime or tolerance of another type crashed on a
        missing attribute, and shape (1, 3, 0, 32) was built and run before failing inside a convolution)."""
        import os

        from exporter.spec import parse_shape

        if isinstance(self.weights, os.PathLike):
            object.__setattr__(self, "weights", os.fspath(self.weights))
        if not isinstance(self.weights, str):
            raise TypeError(f"weights must be 'synthetic', 'imagenet' or a .pt/.pth/.safetensors path, not "
                            f"{type(self.weights).__name__}")
        if not self.weights.strip():  # as the CLI's `--weights ""`: no source named (surface 29)
            raise UsageError(f"weights is empty ({self.weights!r}); pass 'synthetic', 'imagenet' or a "
                             ".pt/.pth/.safetensors path")
        if isinstance(self.input_file, str):
            if not self.input_file.strip():  # Path("") is the working folder, which was read as the inputs
                raise UsageError(f"input_file is empty ({self.input_file!r}); pass a .npy, an image or a folder of "
                                 "them, or None for seeded inputs")
            object.__setattr__(self, "input_file", Path(self.input_file))
        if self.input_file is not None and not isinstance(self.input_file, os.PathLike):
            raise TypeError(f"input_file must be a path (.npy, image or folder) or None, not "
                            f"{type(self.input_file).__name__}")
        if self.shape is not None:
            if not isinstance(self.shape, str | Sequence):
                raise TypeError(f"shape must be a tuple like (1, 3, 224, 224) or None, not {type(self.shape).__name__}")
            text = self.shape if isinstance(self.shape, str) else "x".join(map(str, self.shape))
            object.__setattr__(self, "shape", parse_shape(text))  # four positive whole sizes, as --shape takes
        for name, kind, example in (("runtime", RuntimeOptions, "RuntimeOptions(device='cpu')"),
                                    ("tolerance", Tolerance, "Tolerance.from_options(rtol=1e-5, atol=1e-6)")):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"{name} must be a {kind.__module__}.{kind.__name__}, e.g. {example}, not "
                                f"{type(getattr(self, name)).__name__}")
        if not isinstance(self.normalize, bool):
            raise TypeError(f"normalize must be True or False, not {type(self.normalize).__name__}")
        if self.layers is not None and not isinstance(self.layers, bool):
            raise TypeError(f"layers must be True, False or None (the command's default), not "
                            f"{type(self.layers).__name__}")


def require_readable_weights(weights: str) -> None:
    """A weights file that exists but cannot be opened (chmod 000, another user's) is refused here, as the CLI's
    --weights refuses it: the library raised a bare PermissionError after the model was built (review 25). So is a
    folder, a FIFO or a broken link named as weights (surface 29: `RunSettings(weights="/tmp")` was taken)."""
    import os

    from exporter.fsio import path_kind, require_readable, require_regular_file
    from exporter.weights import WEIGHT_SOURCES, weights_in_folder

    if weights in WEIGHT_SOURCES:
        return
    if os.path.lexists(weights) and path_kind(Path(weights)) is not None:
        require_regular_file(Path(weights), "Weights file", weights_in_folder(Path(weights)))
    if os.path.isfile(weights):  # else a path the loader refuses as what it is
        require_readable(weights, "Weights file")


def settings_inputs(settings: RunSettings) -> list[NamedInput] | None:
    """The inputs read from --input (every one checked: kind, dtype, NaN/Inf), or None for a seeded one."""
    if not isinstance(settings, RunSettings):  # surface 29: explain(..., settings="x") failed on a missing attribute
        raise TypeError(f"settings must be a RunSettings, e.g. RunSettings(shape=(1, 3, 224, 224)), not "
                        f"{type(settings).__name__}")
    if settings.input_file is None:
        return None
    named = load_inputs(settings.input_file, settings.shape, settings.normalize)
    if not settings.normalize and not any(Path(item.label).suffix.lower() in IMAGE_SUFFIXES for item in named):
        raise UsageError(f"--no-normalize changes how images are scaled, and {settings.input_file} holds none (only "
                         ".npy arrays, used as they are): drop --no-normalize")
    return named


def refuse_static_shapes(settings: RunSettings, dynamic: bool) -> None:
    """--static exports take the one shape they are traced at, so a --input folder whose inputs load to several
    shapes would fail on all but the first, after the export (hunt 19c: `export --static --input FOLDER` of a
    1x3x32x32 and a 1x3x40x48 array failed at the second with a hint to pass --static); refused before any work."""
    if dynamic or settings.input_file is None:
        return
    from verify.inputs import input_shapes

    shapes: dict[tuple[int, ...], Path] = {}
    for path, shape in input_shapes(settings.input_file, settings.shape):
        shapes.setdefault(shape, path)
    if len(shapes) > 1:
        listed = ", ".join(f"{path.name} {'x'.join(map(str, shape))}" for shape, path in list(shapes.items())[:3])
        raise UsageError(f"--static exports one input shape, and --input {settings.input_file} holds inputs of "
                         f"{len(shapes)} shapes ({listed}): drop --static, pass inputs of one shape, or give images "
                         "one size with --shape")


def refuse_unused_seed(seed: int, weights: str, input_file: Path | str | None, registered: bool = True) -> None:
    """--seed draws a registered model's synthetic weights and the seeded inputs (a user's model: torch's seed before
    its factory too); with other weights and --input it draws nothing, so it is refused, not ignored (hunt 12a)."""
    if registered and seed != 0 and weights != "synthetic" and input_file is not None:
        raise UsageError(f"--seed {seed} draws synthetic weights and seeded inputs, and --weights {weights} with "
                         f"--input {input_file} uses neither: drop --seed")


def sample_count(settings: RunSettings) -> int:
    """How many seeded inputs a verdict without --input is judged on."""
    return default_sample_count() if settings.samples is None else settings.samples


def default_inputs(settings: RunSettings, shape: Sequence[int]) -> list[NamedInput]:
    """The seeded inputs of `shape` a run judges on when --input names none (verify/inputs.py seeded_inputs)."""
    return seeded_inputs(shape, settings.seed, sample_count(settings))


def settings_dict(settings: RunSettings, **extra) -> dict:
    return {
        **extra,
        "weights": settings.weights,
        "seed": settings.seed,
        "runtime": settings.runtime.record(),
        "tolerance": settings.tolerance.to_dict(),
        "tolerance_text": settings.tolerance.describe(),
        **({"layers": True} if settings.layers else {}),
    }


def input_dict(named: Sequence[NamedInput], settings: RunSettings) -> dict:
    """The first input's shape and dtype (the goldens keep it), and every input's label."""
    array = named[0].array
    data = {"shape": list(array.shape), "dtype": str(array.dtype),
            "source": str(settings.input_file) if settings.input_file else named[0].label}
    if len(named) > 1 or settings.input_file:
        data["inputs"] = [{"label": item.label, "shape": list(item.array.shape)} for item in named]
    return data
