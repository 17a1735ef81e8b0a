"""`verify reduce`: the smallest failing piece of an ONNX file, to file upstream.

The layer the isolated error ranks first (verify/explain/isolate.py) is written as a standalone .onnx file
(its nodes and the initializers they read) with an .npz beside it: its inputs as the reference
computed them (float32), the reference's float64 output, that layer's own float32 floor (per
channel where the output has channels) and the factor. `check_piece` reruns the piece alone
under ONNX Runtime and judges it against the stored reference by the same rule.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from exporter.errors import UsageError, VerifyError
from verify.api import RunSettings
from verify.explain.isolate import load_pair, user_code
from verify.explain.outputs import refuse_inside_export, refuse_overwriting_sources
from verify.explain.rerun import isolate_sides, isolation_factor, own_floor, roles, run_onnx_piece, unit_feeds
from verify.explain.tracers import OnnxTracer, tracer_for
from verify.judge.compare import AUTO_FACTOR
from verify.judge.layers import Isolation, LayerError
from verify.judge.noise_floor import CHANNEL_AXIS, channelled, other_axes
from verify.judge.trust import accumulation_length, output_scale, rounding_bound
from verify.pipeline.isolation import USER_CODE_TIMEOUT, run_isolated
from verify.progress import NullProgress, Progress

if TYPE_CHECKING:
    import numpy as np

PIECE_NAME = "piece.onnx"
DATA_SUFFIX = ".npz"
INPUT_KEY = "input:"
"""npz keys: `input:<ONNX input name>` for each input, then REFERENCE_KEY, FLOOR_KEY, FACTOR_KEY."""
REFERENCE_KEY, FLOOR_KEY, FACTOR_KEY = "reference", "floor", "factor"
ONNX_ONLY = ("reduce writes ONNX pieces: give an .onnx file as one side and the torch model it was exported from as "
             "the other (for a .pt2 or TorchScript file, export it to ONNX first)")


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
    if floor.ndim == 1 and channelled(err.shape) and err.shape[CHANNEL_AXIS] == floor.shape[0]:
        per_channel = err.max(axis=other_axes(err.ndim)) / floor
        worst = int(per_channel.argmax())
        return float(per_channel[worst]), worst
    return float(err.max()) / float(floor.max()), None


def check_piece(piece: Path, factor: float = AUTO_FACTOR) -> PieceCheck:
    """Run a written piece alone under ONNX Runtime on its stored inputs, judged at `factor` (this run's, never the
    file's) on its stored floor, which is first checked against what float32 rounding can produce in that piece:
    an edited .npz cannot make a failing piece pass. A factor below AUTO_FACTOR is raised to it: a piece at 1x its own
    floor is rounding, whatever factor is asked (as isolate.isolation_factor)."""
    import numpy as np

    factor = max(factor, AUTO_FACTOR)
    data = data_path(piece)
    if not piece.is_file() or not data.is_file():
        raise UsageError(f"{piece} needs {data.name} beside it; write both with `verify reduce A B --out FOLDER`")
    try:
        with np.load(data, allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in stored.files}
    except (OSError, ValueError) as exc:
        raise UsageError(f"{data} is not a piece's .npz ({exc}); write it again with `verify reduce`") from None
    model = read_piece(piece)
    feeds = stored_feeds(arrays, model, data)
    floor = stored_floor(arrays, model, feeds, data)
    reference = arrays[REFERENCE_KEY]
    try:
        got = run_onnx_piece(model, feeds)
    except Exception as exc:  # onnxruntime raises several types for a graph and feeds that do not fit
        raise UsageError(f"{piece} does not run under ONNX Runtime on the inputs in {data.name} "
                         f"({_first_line(exc)}); write both again with `verify reduce`") from None
    if got.shape != reference.shape:
        raise UsageError(f"{piece} computes shape {got.shape} but {data.name} holds a reference of shape "
                         f"{reference.shape}; write both again with `verify reduce`")
    ratio, channel = piece_ratio(got, reference, floor)
    return PieceCheck(piece, ratio, factor, channel)


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"


def read_piece(piece: Path) -> Any:
    """The piece's graph, refused in one line unless onnx's checker accepts it (a truncated or foreign file, or
    external data outside its folder)."""
    import onnx

    from exporter.formats.onnx import check_onnx

    try:
        check_onnx(piece)
    except VerifyError as exc:
        raise UsageError(f"{str(exc).rstrip()}; write it again with `verify reduce`") from None
    return onnx.load(str(piece))


def stored_feeds(arrays: dict[str, np.ndarray], model: Any, data: Path) -> dict[str, np.ndarray]:
    """The stored inputs, refused unless they are exactly the piece's graph inputs, as finite float32 values (what
    `write_piece` stores): anything else is not the piece's own data."""
    import numpy as np

    feeds = {key.removeprefix(INPUT_KEY): value for key, value in arrays.items() if key.startswith(INPUT_KEY)}
    initializers = {init.name for init in model.graph.initializer}
    wanted = sorted(item.name for item in model.graph.input if item.name not in initializers)
    if sorted(feeds) != wanted:
        raise UsageError(f"{data} holds inputs {sorted(feeds)} but the piece takes {wanted}; write both again "
                         "with `verify reduce`")
    for name, value in feeds.items():
        if value.dtype != np.float32 or not np.all(np.isfinite(value)):
            raise UsageError(f"{data}: input {name!r} is not finite float32 values ({value.dtype}); write it again "
                             "with `verify reduce`")
    return feeds


def stored_floor(arrays: dict[str, np.ndarray], model: Any, feeds: dict[str, np.ndarray], data: Path) -> np.ndarray:
    """The stored floor, refused unless finite, positive and within margin·K·u·max|reference| (K from the piece's
    own weights and input: verify/judge/trust.py's bound)."""
    import numpy as np

    from exporter.formats.onnx import names_read

    missing = [key for key in (REFERENCE_KEY, FLOOR_KEY) if key not in arrays] + ([] if feeds else ["input:*"])
    if missing:
        raise UsageError(f"{data} lacks {', '.join(missing)}; write it again with `verify reduce`")
    reference, floor = arrays[REFERENCE_KEY], arrays[FLOOR_KEY]
    if not (np.issubdtype(reference.dtype, np.floating) and np.issubdtype(floor.dtype, np.floating)) \
            or floor.size == 0 or not np.all(np.isfinite(floor)) or not np.all(floor > 0):
        raise UsageError(f"{data}: its floor must be finite positive numbers; write it again with `verify reduce`")
    channels = {1, reference.shape[1]} if reference.ndim > 1 else {1}
    if floor.ndim != 1 or floor.size not in channels or reference.size == 0 or not np.all(np.isfinite(reference)):
        raise UsageError(f"{data}: its reference (shape {reference.shape}) must be finite values and its floor "
                         f"(shape {floor.shape}) one value or one per channel; write it again with `verify reduce`")
    read = names_read(model.graph)  # an initializer no node reads holds no terms (hunt 9b)
    shapes = [tuple(init.dims) for init in model.graph.initializer if init.name in read]
    k = accumulation_length(parameters=shapes, input_shape=next(iter(feeds.values())).shape)
    bound = rounding_bound(k) * output_scale(reference)
    if float(floor.max()) > bound:
        raise UsageError(f"{data}: its floor {float(floor.max()):.3g} is above what float32 rounding can produce in "
                         f"this piece ({bound:.3g}, K={k}): not a noise floor; write it again with `verify reduce`")
    return floor


def write_piece(folder: Path, piece: Any, feeds: dict[str, np.ndarray], reference: np.ndarray,
                floor: np.ndarray, factor: float) -> Path:
    """piece.onnx and its .npz, each written to a new temporary file and renamed over the name: a link planted in
    the folder is replaced, never written through, and a failed write leaves neither half-written."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / PIECE_NAME
    arrays = {**{INPUT_KEY + name: value for name, value in feeds.items()},
              REFERENCE_KEY: reference, FLOOR_KEY: floor, FACTOR_KEY: np.float64(factor)}
    written: list[tuple[Path, Path]] = []
    try:
        written.append((_new_file(path, lambda handle: handle.write(piece.SerializeToString())), path))
        written.append((_new_file(data_path(path), lambda handle: np.savez(handle, **arrays)), data_path(path)))
        for tmp, final in written:
            os.replace(tmp, final)
    except OSError as exc:
        raise UsageError(f"Cannot write the piece into {folder}: {exc.strerror or exc}") from None
    finally:
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)
    return path


def _new_file(path: Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """A new temporary file beside `path` (O_EXCL, O_NOFOLLOW: never one planted there) holding what `write` wrote."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def reduce_sides(a: Any, b: Any, x: np.ndarray, folder: Path, factor: float = AUTO_FACTOR) -> Reduction:
    """Isolate the pair, write the worst named layer's piece into `folder` and check it alone."""
    import numpy as np

    if not isinstance(tracer_for(roles(a, b)[1]), OnnxTracer):  # refused before any layer is re-run, as it is after
        raise UsageError(ONNX_ONLY)  # one differs: a correct .pt2 was 'nothing to reduce', exit 0 (hunt 31)
    isolation, pieces, ref = isolate_sides(a, b, x, factor, keep_pieces=True)
    if not isolation.layers and not isolation.unrunnable:  # 'nothing to reduce' (exit 0) would rest on no layer
        raise UsageError(f"No layer could be re-run alone, so nothing was checked: {isolation.note or 'none maps back'}"
                         "; reduce needs an ONNX file whose nodes name the modules they come from (as this tool's "
                         "exports do) beside the torch model it was exported from")
    if not isolation.named and isolation.unrunnable:  # 'no layer differs' would pass over layers never compared
        shown = ", ".join(isolation.unrunnable[:3]) + (" ..." if len(isolation.unrunnable) > 3 else "")
        raise UsageError(f"{len(isolation.unrunnable)} layers of {isolation.candidate} could not run on "
                         f"{isolation.reference}'s values ({shown}): layers of another shape, so whether they differ "
                         "is unknown; give the torch model the file was exported from")
    if not isolation.named and isolation.skipped:  # 'no layer differs' would pass over layers never re-run
        names = list(dict.fromkeys(isolation.skipped))
        shown = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
        raise UsageError(f"{len(names)} layers of {isolation.candidate} were not re-run ({shown}): their inputs do "
                         f"not map back to {isolation.reference}'s values, so whether they differ on their own is "
                         f"unknown and no piece was written (the {len(isolation.layers)} re-run are within their "
                         "floors); `verify explain A B` names the first divergence instead")
    if not isolation.named:
        return Reduction(isolation)
    if not pieces:
        raise UsageError(ONNX_ONLY)
    worst = isolation.named[0]
    unit, piece = next((u, p) for u, p in pieces
                       if (u.fused_with[0] if u.fused_with else u.path) == worst.module and u.call == worst.call)
    feeds = {name: value.numpy() for name, value in (unit_feeds(ref, unit) or {}).items()}
    floor = own_floor(ref, unit)
    channels = floor.channels if floor.channels is not None else np.asarray([floor.value])
    path = write_piece(folder, piece, feeds, ref.outputs[(unit.path, unit.call)].numpy(), channels, factor)
    return Reduction(isolation, worst, path, data_path(path), check_piece(path, factor))


def reduce_pair(a: str, b: str, folder: Path, settings: RunSettings | None = None, progress: Progress | None = None,
                timeout: float | None = USER_CODE_TIMEOUT, isolate: bool = True) -> Reduction:
    """`verify reduce A B --out FOLDER`; a side that is the user's own code runs it in a worker."""
    settings, progress = settings or RunSettings(), progress or NullProgress()
    refuse_inside_export(folder, "--out")
    piece = Path(folder) / PIECE_NAME  # never over the file it reduces, the model's source or the --input
    given = settings.input_file
    for path in (piece, data_path(piece)):
        refuse_overwriting_sources([a, b, str(given) if given is not None else None], "the piece", out=path)
    if given is not None and Path(given).is_dir() and Path(given).resolve() in piece.resolve().parents:
        raise UsageError(f"--out {folder} is inside the --input folder {given}, whose files are read as inputs; "
                         "write the piece elsewhere")
    user = user_code(a, b)
    if isolate and user:
        return run_isolated(reduce_pair, a, b, folder, settings, what=f"Your model {' and '.join(user)}",
                            timeout=timeout, progress=progress, isolate=False)
    sides, x = load_pair(a, b, settings, progress)
    with progress.step("Isolating the diverging layer and writing it alone"):
        return reduce_sides(*sides, x, folder, isolation_factor(settings))
