"""`verify reduce`: the smallest failing piece of an ONNX file, to file upstream.

The layer the isolated error ranks first (verify/explain/isolate.py) is written as a standalone .onnx file
(its nodes and the initializers they read) with an .npz beside it: its inputs as the reference
computed them (float32), the reference's float64 output, that layer's own float32 floor (per
channel where the output has channels) and the factor. `check_piece` reruns the piece alone
under ONNX Runtime and judges it against the stored reference by the same rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.errors import UsageError
from verify.api import RunSettings
from verify.explain.isolate import (
    Isolation,
    LayerError,
    isolate_sides,
    load_pair,
    own_floor,
    run_onnx_piece,
    unit_feeds,
    user_code,
)
from verify.judge.compare import AUTO_FACTOR
from verify.pipeline.isolation import USER_CODE_TIMEOUT, run_isolated
from verify.progress import NullProgress, Progress

if TYPE_CHECKING:
    import numpy as np

PIECE_NAME = "piece.onnx"
DATA_SUFFIX = ".npz"
INPUT_KEY = "input:"
"""npz keys: `input:<ONNX input name>` for each input, then REFERENCE_KEY, FLOOR_KEY, FACTOR_KEY."""
REFERENCE_KEY, FLOOR_KEY, FACTOR_KEY = "reference", "floor", "factor"


@dataclass
class PieceCheck:
    piece: Path
    ratio: float
    factor: float
    channel: int | None = None

    @property
    def reproduces(self) -> bool:
        return self.ratio > self.factor

    @property
    def exit_code(self) -> int:
        return 1 if self.reproduces else 0

    def text(self) -> str:
        where = f" (channel {self.channel})" if self.channel is not None else ""
        if self.reproduces:
            return (f"reproduces: {self.piece.name} alone under ONNX Runtime is {self.ratio:.0f}x its float32 floor "
                    f"from the reference output{where}, beyond {self.factor:g}x")
        return f"does not reproduce: {self.piece.name} alone is {self.ratio:.1f}x its floor (<= {self.factor:g}x)"


@dataclass
class Reduction:
    isolation: Isolation
    layer: LayerError | None = None
    piece: Path | None = None
    data: Path | None = None
    check: PieceCheck | None = None

    @property
    def exit_code(self) -> int:
        return self.check.exit_code if self.check is not None else 0


def data_path(piece: Path) -> Path:
    return piece.with_suffix(DATA_SUFFIX)


def piece_ratio(got: np.ndarray, reference: np.ndarray, floor: np.ndarray) -> tuple[float, int | None]:
    """The worst channel's |got - reference| over its floor (one floor: the whole output's)."""
    import numpy as np

    err = np.abs(got.astype(np.float64) - reference)
    err = np.where(np.isfinite(err), err, np.inf)
    if floor.ndim == 1 and err.ndim == 4 and err.shape[1] == floor.shape[0]:
        per_channel = err.max(axis=(0, 2, 3)) / floor
        worst = int(per_channel.argmax())
        return float(per_channel[worst]), worst
    return float(err.max()) / float(floor.max()), None


def check_piece(piece: Path) -> PieceCheck:
    """Run a written piece alone under ONNX Runtime on its stored inputs, judged on its stored floor."""
    import numpy as np
    import onnx

    data = data_path(piece)
    if not piece.is_file() or not data.is_file():
        raise UsageError(f"{piece} needs {data.name} beside it; write both with `verify reduce A B --out FOLDER`")
    stored = np.load(data)
    feeds = {key.removeprefix(INPUT_KEY): stored[key] for key in stored.files if key.startswith(INPUT_KEY)}
    got = run_onnx_piece(onnx.load(str(piece)), feeds)
    ratio, channel = piece_ratio(got, stored[REFERENCE_KEY], stored[FLOOR_KEY])
    return PieceCheck(piece, ratio, float(stored[FACTOR_KEY]), channel)


def write_piece(folder: Path, piece: Any, feeds: dict[str, np.ndarray], reference: np.ndarray,
                floor: np.ndarray, factor: float) -> Path:
    import numpy as np
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PIECE_NAME
    onnx.save(piece, str(path))
    np.savez(data_path(path), **{INPUT_KEY + name: value for name, value in feeds.items()},
             **{REFERENCE_KEY: reference, FLOOR_KEY: floor, FACTOR_KEY: np.float64(factor)})
    return path


def reduce_sides(a: Any, b: Any, x: np.ndarray, folder: Path, factor: float = AUTO_FACTOR) -> Reduction:
    """Isolate the pair, write the worst named layer's piece into `folder` and check it alone."""
    import numpy as np

    isolation, pieces, ref = isolate_sides(a, b, x, factor, keep_pieces=True)
    if not isolation.named:
        return Reduction(isolation)
    if not pieces:
        raise UsageError("reduce writes ONNX pieces: give an .onnx file as one side and the torch model it was "
                         "exported from as the other (for a .pt2, export it to ONNX first)")
    worst = isolation.named[0]
    unit, piece = next((u, p) for u, p in pieces
                       if (u.fused_with[0] if u.fused_with else u.path) == worst.module and u.call == worst.call)
    feeds = {name: value.numpy() for name, value in (unit_feeds(ref, unit) or {}).items()}
    floor = own_floor(ref, unit)
    channels = floor.channels if floor.channels is not None else np.asarray([floor.value])
    path = write_piece(folder, piece, feeds, ref.outputs[(unit.path, unit.call)].numpy(), channels, factor)
    return Reduction(isolation, worst, path, data_path(path), check_piece(path))


def reduce_pair(a: str, b: str, folder: Path, settings: RunSettings | None = None, progress: Progress | None = None,
                timeout: float | None = USER_CODE_TIMEOUT, isolate: bool = True) -> Reduction:
    """`verify reduce A B --out FOLDER`; a side that is the user's own code runs it in a worker."""
    settings, progress = settings or RunSettings(), progress or NullProgress()
    user = user_code(a, b)
    if isolate and user:
        return run_isolated(reduce_pair, a, b, folder, settings, what=f"Your model {' and '.join(user)}",
                            timeout=timeout, progress=progress, isolate=False)
    sides, x = load_pair(a, b, settings, progress)
    with progress.step("Isolating the diverging layer and writing it alone"):
        return reduce_sides(*sides, x, folder, settings.tolerance.factor or AUTO_FACTOR)
