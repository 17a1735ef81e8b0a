"""Model inputs: seeded synthetic batches, and real ones read from files.

`--input` takes a `.npy` array (NCHW, floating point, used as is), an image (PNG/JPEG, decoded by
torchvision as RGB, resized to --shape's HxW if given, scaled to [0, 1] exactly as torchvision's
`ToTensor` does, then normalised with the ImageNet mean/std the weights were trained with unless
`normalize=False`), or a folder of those (sorted by name, each one input). Every input is checked
before any model is built: a file that is not what it claims, or an array with NaN/Inf or nothing
in it, is a UsageError naming the file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from exporter.errors import UsageError
from exporter.fsio import path_kind
from exporter.spec import check_input_size

if TYPE_CHECKING:
    import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARRAY_SUFFIX = ".npy"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""The normalisation of every torchvision ImageNet weight a ResNet here loads (`weights.transforms()`)."""
NPY_MAGIC = b"\x93NUMPY"
MAX_IMAGE_PIXELS = 1 << 26
"""Decoded size refused beyond this (read from the header first): a decompression bomb is not an input."""


@dataclass(frozen=True)
class NamedInput:
    label: str
    """Where it came from: the file, or `seeded normal, seed N`."""
    array: np.ndarray
    """float32 NCHW."""


def make_input(shape: Sequence[int], seed: int) -> np.ndarray:
    """A seeded standard-normal image batch, like normalised images."""
    import numpy as np

    check_input_size(tuple(shape), "The input shape")
    return np.random.default_rng(seed).standard_normal(tuple(shape)).astype(np.float32)


def seeded_input(shape: Sequence[int], seed: int) -> NamedInput:
    return NamedInput(f"seeded normal, seed {seed}", make_input(shape, seed))


def load_inputs(path: Path, shape: Sequence[int] | None = None, normalize: bool = True) -> list[NamedInput]:
    """The inputs in `path`: one .npy array or image, or a folder of them (sorted by name)."""
    path = Path(path)
    kind = path_kind(path)
    if kind == "a directory":
        entries = sorted(path.iterdir(), key=lambda p: p.name)
        if not entries:
            raise UsageError(f"Input folder {path} is empty; it should hold .npy arrays or "
                             f"{'/'.join(IMAGE_SUFFIXES)} images")
        return [_load_file(entry, shape, normalize, in_folder=True) for entry in entries]
    return [_load_file(path, shape, normalize, in_folder=False)]


def load_input(path: Path, shape: Sequence[int] | None = None, normalize: bool = True) -> np.ndarray:
    """One input array from `path` (a folder must hold exactly one)."""
    inputs = load_inputs(path, shape, normalize)
    if len(inputs) != 1:
        raise UsageError(f"Input folder {path} holds {len(inputs)} inputs where one is needed")
    return inputs[0].array


def _load_file(path: Path, shape: Sequence[int] | None, normalize: bool, in_folder: bool) -> NamedInput:
    kinds = f".npy arrays and {'/'.join(IMAGE_SUFFIXES)} images"
    kind = path_kind(path)
    if kind == "missing":
        raise UsageError(f"Input {path} does not exist")
    if kind is not None:
        where = f"; an input folder holds only {kinds}" if in_folder else ""
        raise UsageError(f"Input {path} is {kind}, not a file{where}")
    suffix = path.suffix.lower()
    if suffix not in (ARRAY_SUFFIX, *IMAGE_SUFFIXES):
        what = f"an input folder holds only {kinds}" if in_folder else f"--input takes {kinds}, or a folder of them"
        raise UsageError(f"Input {path} is neither a .npy array nor an image ({'/'.join(IMAGE_SUFFIXES)}); {what}")
    if path.stat().st_size == 0:
        raise UsageError(f"Input {path} is an empty file (0 bytes)")
    if suffix == ARRAY_SUFFIX:
        array = _load_npy(path)
        if shape is not None and tuple(array.shape) != tuple(shape):
            raise UsageError(f"Input {path} holds shape {_shape(array.shape)} but --shape asks {_shape(shape)}; "
                             "drop --shape or pass a matching array")
    else:
        array = _load_image(path, shape, normalize)
    require_finite(str(path), array)
    return NamedInput(str(path), array)


def _shape(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, offset of the data) read from the header alone: nothing is allocated from what a
    file merely claims, and a pickle is never opened."""
    import numpy as np

    with open(path, "rb") as handle:
        start = handle.read(len(NPY_MAGIC))
        if start != NPY_MAGIC:
            handle.seek(0)
            raise UsageError(f"Input {path} is not a NumPy .npy file ({_what_it_is(handle.read(8))})")
        handle.seek(0)
        try:
            version = np.lib.format.read_magic(handle)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, _, dtype = reader(handle)
        except (ValueError, OSError, EOFError, SyntaxError) as exc:
            raise UsageError(f"Input {path} has a damaged .npy header ({_first_line(exc)})") from None
        return tuple(shape), dtype, handle.tell()


def _what_it_is(start: bytes) -> str:
    if start.startswith(b"PK\x03\x04"):
        return "it is a zip archive, e.g. an .npz of several arrays; np.save the input array alone"
    if start[:1] == b"\x80":
        return "it holds pickled Python data, which is never loaded"
    if start.startswith((b"\x89PNG", b"\xff\xd8\xff")):
        return "it is an image; name it .png or .jpg"
    return "it has no .npy header; write it with numpy.save"


def _load_npy(path: Path) -> np.ndarray:
    import math

    import numpy as np

    shape, dtype, offset = _npy_header(path)
    if dtype.hasobject:
        raise UsageError(f"Input {path} holds Python objects (dtype {dtype}); only numeric arrays are loaded")
    if dtype.kind != "f":
        raise UsageError(f"Input {path} holds {dtype} values; inputs must be floating point (float32, or "
                         "float16/float64, converted to float32)")
    if len(shape) != 4:
        raise UsageError(f"Input {path} must hold one NCHW array (4 dimensions), got shape {shape}")
    if math.prod(shape) == 0:
        raise UsageError(f"Input {path} holds an empty array (shape {_shape(shape)})")
    check_input_size(shape, f"Input {path}")
    expected = offset + math.prod(shape) * dtype.itemsize
    size = path.stat().st_size
    if size < expected:
        raise UsageError(f"Input {path} is truncated: its header promises {_shape(shape)} {dtype} "
                         f"({expected - offset} bytes) but {max(size - offset, 0)} follow")
    if size > expected:
        raise UsageError(f"Input {path} has {size - expected} bytes after its array (several arrays saved "
                         "into one file?); np.save one input per .npy file")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UsageError(f"Input {path} cannot be read as a .npy array ({_first_line(exc)})") from None
    if not np.isfinite(array).all():
        require_finite(str(path), array)  # name the NaN/Inf in the file itself, before any conversion
    with np.errstate(over="ignore"):  # said below, in one line, rather than warned about on stderr
        converted = array.astype(np.float32)
    if not np.isfinite(converted).all():
        raise UsageError(f"Input {path} holds values beyond float32's range "
                         f"(max |x| {float(np.abs(array).max()):.3g}); the models run in float32")
    return converted


def _load_image(path: Path, shape: Sequence[int] | None, normalize: bool) -> np.ndarray:
    """torchvision decode, optional resize of the uint8 image, then ToTensor's exact scaling."""
    import torch
    from PIL import Image, UnidentifiedImageError
    from torchvision.io import ImageReadMode, decode_image, read_file
    from torchvision.transforms import functional as TF

    try:
        with Image.open(path) as header:  # reads the header only: the size before decoding anything
            width, height = header.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UsageError(f"Input {path} is not a readable image ({_first_line(exc)})") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise UsageError(f"Input {path} is {width}x{height} pixels, more than the {MAX_IMAGE_PIXELS:,} this "
                         "tool decodes; resize it first")
    if shape is not None and shape[1] != 3:
        raise UsageError(f"Images decode to 3 channels (RGB) but --shape asks {shape[1]}")
    try:
        image = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError) as exc:
        raise UsageError(f"Input {path} cannot be decoded as an image ({_first_line(exc)})") from None
    if image.dtype != torch.uint8:
        raise UsageError(f"Input {path} decodes to {image.dtype} pixels; only 8-bit images are read")
    if shape is not None and tuple(image.shape[1:]) != tuple(shape[2:]):
        image = TF.resize(image, [int(shape[2]), int(shape[3])], antialias=True)
    tensor = image.to(torch.float32).div(255)  # exactly transforms.ToTensor on an 8-bit RGB image
    if normalize:
        tensor = TF.normalize(tensor, list(IMAGENET_MEAN), list(IMAGENET_STD))
    batch = tensor.unsqueeze(0)
    if shape is not None and shape[0] > 1:
        batch = batch.expand(int(shape[0]), -1, -1, -1)
    check_input_size(tuple(batch.shape), f"Input {path}")
    return batch.contiguous().numpy()


def require_finite(label: str, array: np.ndarray) -> None:
    """A UsageError naming the input and how many NaN/Inf it holds: a verdict on such an input would
    blame the models for what the input did."""
    import numpy as np

    if array.size == 0:
        raise UsageError(f"Input {label} is empty (shape {_shape(array.shape)})")
    finite = np.isfinite(array)
    if finite.all():
        return
    nan, inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
    counts = " and ".join(f"{n} {what}" for n, what in ((nan, "NaN"), (inf, "Inf")) if n)
    raise UsageError(f"Input {label} holds {counts} of {array.size} values; verdicts need a finite input, "
                     "so clean it or pass another --input")


def inputs_sha256(inputs: Sequence[NamedInput]) -> str:
    """One digest over every input's shape, dtype and bytes, in order."""
    digest = hashlib.sha256()
    for item in inputs:
        digest.update(f"{item.array.dtype}|{tuple(item.array.shape)}|".encode())
        digest.update(item.array.tobytes())
    return digest.hexdigest()


def _first_line(exc: BaseException) -> str:
    from exporter.messages import library_reason

    return library_reason(exc)
