"""Model inputs: seeded synthetic batches and arrays read from files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from exporter.errors import UsageError

if TYPE_CHECKING:
    import numpy as np


def make_input(shape: Sequence[int], seed: int) -> np.ndarray:
    """A seeded standard-normal image batch, like normalised images."""
    import numpy as np

    return np.random.default_rng(seed).standard_normal(tuple(shape)).astype(np.float32)


def load_input(path: Path) -> np.ndarray:
    import numpy as np

    if not path.is_file():
        raise UsageError(f"Input file {path} does not exist")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise UsageError(f"Cannot read {path} as a .npy array: {exc}") from None
    if not isinstance(array, np.ndarray) or array.ndim != 4 or min(array.shape) < 1:
        raise UsageError(f"Input {path} must hold one non-empty NCHW array, got shape "
                         f"{getattr(array, 'shape', None)}")
    return array.astype(np.float32)
