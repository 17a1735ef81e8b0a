"""What to build: `backbone:norm:view`, and the input shape it is fed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from exporter.errors import UsageError

if TYPE_CHECKING:
    from exporter.backbones import BuiltModel

DEFAULT_SHAPE: tuple[int, ...] = (1, 3, 224, 224)
INPUT_CHANNELS = DEFAULT_SHAPE[1]
"""Every registered backbone's first convolution takes RGB (torchvision's ImageNet classifiers)."""
MAX_INPUT_ELEMENTS = 1 << 26
"""64 Mi values (256 MiB in float32, e.g. 16x3x1024x1024): a ResNet's activations and the float64
oracle need tens of times the input's size, so anything larger is a typo, not a test."""


@dataclass(frozen=True)
class ModelSpec:
    backbone: str = "resnet50"
    norm: str = "frozen"
    view: str = "body"

    runs_user_code = False
    """A registered backbone: the project's own code builds it (user models run in a worker process)."""
    registered = True
    """A backbone of the registry: its name says what is built (its size, its matrix row, a batch of independent
    samples) and pins it, so its exports and results may be cached. The model kinds' protocol is these two flags,
    `row` and `build`: no caller tells the kinds apart by their class."""
    source_file = None
    """The file whose code builds it, where that is the user's (exporter/user_model.py): none for a backbone."""

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """Parse `backbone[:norm[:view]]`; names are checked against the registries."""
        parts = text.split(":")
        if len(parts) > 3 or not all(parts):
            raise UsageError(
                f"Bad model spec {text!r}; expected backbone:norm:view, e.g. resnet50:frozen:body")
        spec = cls(*parts)
        spec.validate()
        return spec

    def validate(self) -> None:
        """Every name registered, and the norm and view ones the backbone's family has."""
        from exporter.backbones import validate_spec

        validate_spec(self)

    def build(self, seed: int, shape: tuple[int, ...] | None, weights: str) -> BuiltModel:
        """The backbone with `weights` (synthetic ones from `seed`), in eval mode; `shape` is only checked: every
        registered backbone is an RGB classifier's."""
        from exporter.backbones import build_model
        from exporter.weights import load_weights

        if shape is not None and len(shape) == len(DEFAULT_SHAPE) and shape[1] != INPUT_CHANNELS:
            raise UsageError(f"{self.backbone} takes {INPUT_CHANNELS} input channels (RGB), the shape "
                             f"{'x'.join(map(str, shape))} gives it {shape[1]}; use Nx{INPUT_CHANNELS}xHxW")
        return build_model(self, load_weights(weights, self.backbone, seed), seed)

    @property
    def row(self) -> tuple[str, str, str]:
        """The matrix's row: backbone, norm, view."""
        return self.backbone, self.norm, self.view

    def __str__(self) -> str:
        return f"{self.backbone}:{self.norm}:{self.view}"

    @property
    def slug(self) -> str:
        return f"{self.backbone}-{self.norm}-{self.view}"


def parse_shape(text: str) -> tuple[int, ...]:
    """Parse `1x3x224x224` (or commas, or spaces inside one quoted value) into an NCHW shape."""
    try:
        shape = tuple(int(p) for p in "x".join(text.lower().replace(",", "x").split()).split("x"))
    except ValueError:
        raise UsageError(f"Bad shape {text!r}; expected NxCxHxW, e.g. 1x3x224x224") from None
    if len(shape) == 1:  # `--shape 1 3 224 224`: the shell gave the option its first word only (surface 30)
        raise UsageError(f"Bad shape {text!r}: give all four sizes as one value joined by x, e.g. --shape "
                         "1x3x224x224 (not four words)")
    if len(shape) != 4 or min(shape) < 1:
        raise UsageError(f"Bad shape {text!r}; expected four positive sizes NxCxHxW, e.g. 1x3x224x224")
    check_input_size(shape, f"Shape {text!r}")
    return shape


def check_input_size(shape: tuple[int, ...], what: str) -> None:
    """Refuse inputs too large to verify before anything is allocated."""
    import math

    if math.prod(shape) > MAX_INPUT_ELEMENTS:
        raise UsageError(f"{what} holds {math.prod(shape):,} values, more than the {MAX_INPUT_ELEMENTS:,} "
                         "this tool verifies at once; use a smaller batch or image size")
