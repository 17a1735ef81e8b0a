"""Input files as the untrusted side: every image's header (magic bytes against the suffix, dimensions,
frames, sample depth, file size) is judged before a single pixel is decoded, every folder is bounded
and listed without decoding, and what is finally loaded is re-checked on the bytes actually read.

Each CLI case asserts exit 2, exactly one error line naming the file and the problem, that torchvision
never decoded anything, and that nothing in the test's folder changed (a sentinel outside the inputs
included)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import signal
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.io
from PIL import Image
from torchvision.io import ImageReadMode, decode_image
from typer.testing import CliRunner

from exporter.spec import MAX_INPUT_ELEMENTS
from verify import inputs as inputs_module
from verify.cli import app
from verify.inputs import (
    MAX_FOLDER_INPUTS,
    MAX_FOLDER_VALUES,
    MAX_HEADER_STEPS,
    MAX_IMAGE_FILE_BYTES,
    MAX_IMAGE_PIXELS,
    PNG_SIGNATURE,
    load_inputs,
)

runner = CliRunner()
COMPARE = ("compare", "resnet18:batch:body", "resnet18:frozen:body")
SHAPE = (1, 3, 32, 32)
DEADLINE_S = 60
"""A refusal reads headers only: far less than this even on a loaded 2-core machine; a hang ends here."""
SHAPE_OPTION = ("--shape", "x".join(str(s) for s in SHAPE))
HASHED_BYTES = 1 << 20
"""Files up to this size are compared by content; larger (sparse) ones by size and mtime."""


def shape_text(shape) -> str:
    return "x".join(str(s) for s in shape)


# --- files ----------------------------------------------------------------------------------------------

def pixels(height=12, width=16, seed=0) -> Image.Image:
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(rgb)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int, extra_chunks: bytes = b"") -> bytes:
    """A PNG whose IHDR says width x height (8-bit RGB) with one tiny IDAT: the header alone lies."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + extra_chunks + png_chunk(b"IDAT", zlib.compress(b"\0" * 4))
            + png_chunk(b"IEND", b""))


def jpeg_with_frame(width: int | None = None, height: int | None = None, precision: int | None = None) -> bytes:
    """A real small JPEG with its SOF0 frame header rewritten."""
    data = bytearray(encoded(pixels(), "JPEG"))
    sof = data.index(b"\xff\xc0")
    if precision is not None:
        data[sof + 4] = precision
    if height is not None:
        data[sof + 5:sof + 7] = struct.pack(">H", height)
    if width is not None:
        data[sof + 7:sof + 9] = struct.pack(">H", width)
    return bytes(data)


def animated_gif(frames=12) -> bytes:
    images = [pixels(seed=i) for i in range(frames)]
    return encoded(images[0], "GIF", save_all=True, append_images=images[1:], duration=20, loop=0)


# --- harness --------------------------------------------------------------------------------------------

def snapshot(root: Path) -> dict:
    """Every entry under root: kind, size, mtime and (small files) content, without opening FIFOs or
    following links."""
    seen = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            info = os.lstat(path)
            digest = None
            if os.path.isfile(path) and not os.path.islink(path) and info.st_size <= HASHED_BYTES:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            seen[str(path.relative_to(root))] = (info.st_mode, info.st_size, info.st_mtime_ns, digest)
    return seen


@pytest.fixture
def decodes(monkeypatch):
    """Every call torchvision's decoder receives (none, in a refusal)."""
    calls = []
    real = torchvision.io.decode_image

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(torchvision.io, "decode_image", spy)
    return calls


@contextlib.contextmanager
def deadline(seconds: int = DEADLINE_S):
    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def place(tmp_path, monkeypatch):
    """(inputs folder, run) where run(input, *extra) invokes `verify compare` on it from a work folder,
    and checks the refusal: exit 2, one error line holding every fragment, no decode, nothing changed."""
    work, inputs = tmp_path / "work", tmp_path / "inputs"
    work.mkdir()
    inputs.mkdir()
    (tmp_path / "sentinel.txt").write_text("outside the inputs")
    monkeypatch.chdir(work)

    def run(target, *fragments, extra=SHAPE_OPTION, decodes=None, rewritten=()):
        """`rewritten`: entries the test itself rewrites during the run (left out of the comparison)."""
        before = snapshot(tmp_path)
        with deadline():
            result = runner.invoke(app, [*COMPARE, *extra, "--input", str(target)])
        assert result.exit_code == 2, result.output
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert "Traceback" not in result.output
        for fragment in fragments:
            assert fragment in lines[0], lines[0]
        if decodes is not None:
            assert decodes == [], "an image was decoded before the refusal"
        after = snapshot(tmp_path)
        for name in rewritten:
            assert before.pop(name)[1:] != after.pop(name)[1:]  # the swap happened
        assert after == before
        return lines[0]

    return inputs, run


# --- single images --------------------------------------------------------------------------------------

def test_animated_gif_named_png_is_refused_by_its_magic(place, decodes):
    folder, run = place
    path = folder / "cat.png"
    path.write_bytes(animated_gif())
    run(path, "cat.png is not a readable image", "it is a GIF image, not a PNG", "convert it", decodes=decodes)


def test_apng_is_refused_before_decoding(place, decodes):
    folder, run = place
    path = folder / "blink.png"
    frames = [pixels(seed=i) for i in range(5)]
    path.write_bytes(encoded(frames[0], "PNG", save_all=True, append_images=frames[1:]))
    run(path, "blink.png is an animated PNG (APNG, 5 frames)", "save the one frame you mean", decodes=decodes)


def test_multi_picture_jpeg_is_refused(place, decodes):
    folder, run = place
    path = folder / "stereo.jpg"
    path.write_bytes(encoded(pixels(), "MPO", save_all=True, append_images=[pixels(seed=1)]))
    run(path, "stereo.jpg is a multi-picture JPEG (MPO, 2 pictures)", decodes=decodes)


def test_png_header_claiming_a_huge_image_is_never_decoded(place, decodes):
    side = math.isqrt(MAX_IMAGE_PIXELS) + 1
    folder, run = place
    path = folder / "bomb.png"
    path.write_bytes(png_claiming(side, side))
    run(path, f"bomb.png is {side}x{side} pixels", f"more than the {MAX_IMAGE_PIXELS:,}", "resize it",
        decodes=decodes)


def test_jpeg_frame_header_claiming_a_huge_image_is_never_decoded(place, decodes):
    side = 0xFFFF  # the largest a JPEG frame header can say; its square is above the limit
    assert side * side > MAX_IMAGE_PIXELS
    folder, run = place
    path = folder / "bomb.jpg"
    path.write_bytes(jpeg_with_frame(width=side, height=side))
    run(path, f"bomb.jpg is {side}x{side} pixels", f"more than the {MAX_IMAGE_PIXELS:,}", decodes=decodes)


def test_image_that_would_exceed_the_input_size_without_shape(place, decodes):
    """Within the pixel limit, but 1x3xHxW would hold more values than one input may: refused from the
    header, before decoding, when no --shape resizes it."""
    side = math.isqrt(MAX_INPUT_ELEMENTS // 3) + 1
    assert side * side <= MAX_IMAGE_PIXELS
    folder, run = place
    path = folder / "wide.png"
    path.write_bytes(png_claiming(side, side))
    run(path, "wide.png holds", f"more than the {MAX_INPUT_ELEMENTS:,}", extra=(), decodes=decodes)


@pytest.mark.parametrize(("name", "content", "fragments"), [
    ("photo.jpg", lambda: encoded(pixels(), "PNG"), ("it is a PNG image, not a JPEG", "rename it .png")),
    ("photo.png", lambda: encoded(pixels(), "JPEG"), ("it is a JPEG image, not a PNG", "rename it .jpeg")),
    ("photo.jpeg", lambda: encoded(pixels(), "WEBP"), ("it is a WebP image, not a JPEG",)),
    ("photo.png", lambda: encoded(pixels(), "BMP"), ("it is a BMP image, not a PNG",)),
    ("photo.png", lambda: encoded(pixels(), "TIFF"), ("it is a TIFF image, not a PNG",)),
    ("archive.png", lambda: b"PK\x03\x04" + b"\0" * 40, ("it is a zip archive, not a PNG", "pass a PNG image")),
    ("script.jpg", lambda: b"#!/bin/sh\nrm -rf /\n", ("it is text, not a JPEG",)),
    ("noise.png", lambda: bytes(range(200, 256)) * 4, ("it is unknown data (it starts c8 c9",)),
])
def test_magic_bytes_must_match_the_suffix(place, decodes, name, content, fragments):
    folder, run = place
    path = folder / name
    path.write_bytes(content())
    run(path, f"{name} is not a readable image", *fragments, decodes=decodes)


@pytest.mark.parametrize(("name", "content", "fragment"), [
    ("deep.png", lambda: encoded(Image.fromarray(np.arange(192, dtype=np.uint16).reshape(12, 16) * 300), "PNG"),
     "deep.png is a 16-bit PNG; only 8-bit images are read"),
    ("deep.jpg", lambda: jpeg_with_frame(precision=12), "deep.jpg is a 12-bit JPEG; only 8-bit images are read"),
    ("cut.png", lambda: encoded(pixels(), "PNG")[:20], "cut.png is a damaged PNG (it ends inside its header)"),
    ("noihdr.png", lambda: PNG_SIGNATURE + png_chunk(b"tEXt", b"a\0b"), "its first chunk is not a 13-byte IHDR"),
    ("zero.png", lambda: png_claiming(0, 5), "zero.png is a damaged PNG (its header says 0x5 pixels)"),
    ("nodata.png", lambda: PNG_SIGNATURE + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0))
     + png_chunk(b"IEND", b""), "nodata.png is a damaged PNG (it has no image data)"),
    ("chunks.png", lambda: png_claiming(4, 4, png_chunk(b"tEXt", b"") * (MAX_HEADER_STEPS + 1)),
     f"more than {MAX_HEADER_STEPS:,} chunks before its image data"),
    ("fill.jpg", lambda: b"\xff\xd8" + b"\xff" * (MAX_HEADER_STEPS + 10),
     f"more than {MAX_HEADER_STEPS:,} markers and fill bytes"),
    ("nosof.jpg", lambda: b"\xff\xd8\xff\xda\x00\x02" + b"\0" * 32, "no frame header before its data"),
])
def test_damaged_or_deep_headers_are_refused_before_decoding(place, decodes, name, content, fragment):
    folder, run = place
    path = folder / name
    path.write_bytes(content())
    run(path, fragment, decodes=decodes)


def test_oversized_image_file_is_refused_from_its_size(place, decodes):
    """A sparse file: a valid small PNG header followed by a hole past MAX_IMAGE_FILE_BYTES. Refused from
    fstat alone: nothing is read into memory."""
    folder, run = place
    path = folder / "huge.png"
    path.write_bytes(encoded(pixels(), "PNG"))
    os.truncate(path, MAX_IMAGE_FILE_BYTES + 1)
    run(path, "huge.png is a", f"more than the {MAX_IMAGE_FILE_BYTES:,} this tool reads", decodes=decodes)


# --- folders --------------------------------------------------------------------------------------------

def test_folder_beyond_the_input_limit_is_refused_while_listing(place, decodes, monkeypatch):
    """MAX_FOLDER_INPUTS + 1 entries (not even valid images): refused from the listing alone; no file is
    opened, let alone decoded."""
    folder, run = place
    for index in range(MAX_FOLDER_INPUTS + 1):
        (folder / f"{index:05d}.png").write_bytes(b"")
    opened = []
    real = inputs_module.check_file
    monkeypatch.setattr(inputs_module, "check_file", lambda *a, **k: opened.append(a) or real(*a, **k))
    run(folder, f"holds more than {MAX_FOLDER_INPUTS} inputs", "split it over several runs", decodes=decodes)
    assert opened == []


def test_folder_total_beyond_the_memory_bound_is_refused_before_decoding(place, decodes):
    per_input = (1, 3, 4096, 4096)
    assert math.prod(per_input) <= MAX_INPUT_ELEMENTS
    count = MAX_FOLDER_VALUES // math.prod(per_input) + 1
    assert count <= MAX_FOLDER_INPUTS
    folder, run = place
    for index in range(count):
        (folder / f"{index}.png").write_bytes(encoded(pixels(seed=index), "PNG"))
    run(folder, f"{count * math.prod(per_input):,} values in all", f"more than the {MAX_FOLDER_VALUES:,}",
        extra=("--shape", shape_text(per_input)), decodes=decodes)


def test_bad_file_last_in_a_folder_is_named_before_any_image_is_decoded(place, decodes):
    folder, run = place
    for index in range(5):
        (folder / f"good{index}.png").write_bytes(encoded(pixels(seed=index), "PNG"))
    (folder / "zz.png").write_bytes(animated_gif(3))
    run(folder, "zz.png is not a readable image", "GIF", decodes=decodes)


@pytest.mark.parametrize(("make", "fragment"), [
    (lambda d: os.mkfifo(d / "b.png"), "b.png is a FIFO (named pipe), not a file"),
    (lambda d: (d / "b.png").symlink_to(d / "b.png"), "b.png is a symbolic link loop"),
    (lambda d: (d / "b.jpg").symlink_to(d / "c.jpg") or (d / "c.jpg").symlink_to(d / "b.jpg"),
     "b.jpg is a symbolic link loop"),
    (lambda d: (d / "b.png").symlink_to("/dev/zero"), "b.png is a character device, not a file"),
    (lambda d: (d / "sub").mkdir() or (d / "sub" / "x.png").write_bytes(b""), "sub is a directory, not a file"),
    (lambda d: (d / "up").symlink_to(d), "up is a directory, not a file"),
])
def test_folder_with_a_special_entry_names_it_without_blocking(place, decodes, make, fragment):
    """A FIFO would block an open forever, /dev/zero would stream forever, a loop never resolves, a subfolder
    (or a link back up) is not read recursively: each named before any image is decoded."""
    folder, run = place
    (folder / "a.png").write_bytes(encoded(pixels(), "PNG"))
    make(folder)
    run(folder, fragment, decodes=decodes)


def test_input_that_is_itself_a_symlink_loop(place, decodes):
    folder, run = place
    (folder / "loop").symlink_to(folder / "loop")
    run(folder / "loop", "loop is a symbolic link loop", decodes=decodes)


def test_hidden_entries_are_skipped_and_only_hidden_is_empty(place, tmp_path):
    folder, run = place
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / "._a.png").write_bytes(b"\0\5\26\7AppleDouble")
    run(folder, "is empty (only 2 hidden entries, which are skipped)")
    (folder / "a.png").write_bytes(encoded(pixels(), "PNG"))
    (item,) = load_inputs(folder, SHAPE)
    assert item.label == str(folder / "a.png") and item.array.shape == SHAPE


# --- what is loaded is what was checked -----------------------------------------------------------------

def swap_after_check(monkeypatch, path: Path, content: bytes) -> None:
    """Rewrite `path` right after its header pass: the load pass must judge what it then reads."""
    real = inputs_module.check_file

    def check_then_swap(*args, **kwargs):
        checked = real(*args, **kwargs)
        path.write_bytes(content)
        return checked

    monkeypatch.setattr(inputs_module, "check_file", check_then_swap)


def test_image_swapped_for_a_bomb_after_its_check_is_refused(place, decodes, monkeypatch):
    folder, run = place
    path = folder / "a.png"
    path.write_bytes(encoded(pixels(), "PNG"))
    side = math.isqrt(MAX_IMAGE_PIXELS) + 1
    swap_after_check(monkeypatch, path, png_claiming(side, side))
    run(path, f"a.png is {side}x{side} pixels", decodes=decodes, rewritten=["inputs/a.png"])


def test_image_swapped_for_another_size_after_its_check_is_refused(place, decodes, monkeypatch):
    folder, run = place
    path = folder / "a.png"
    path.write_bytes(encoded(pixels(12, 16), "PNG"))
    swap_after_check(monkeypatch, path, encoded(pixels(20, 16), "PNG"))
    run(path, "a.png changed while being read (its header now says PNG 16x20)", decodes=decodes,
        rewritten=["inputs/a.png"])


def test_array_swapped_for_a_larger_claim_after_its_check_is_refused(place, monkeypatch):
    folder, run = place
    path = folder / "x.npy"
    np.save(path, np.ones(SHAPE, np.float32))
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (1, 3, 2048, 2048)})
    swap_after_check(monkeypatch, path, header.getvalue() + b"\0" * 64)
    run(path, "x.npy is truncated: its header promises 1x3x2048x2048", rewritten=["inputs/x.npy"])


def test_fortran_ordered_and_big_endian_arrays_load_as_numpy_does(tmp_path):
    """The data is read as the checked header says (not re-parsed): the layouts numpy writes still load
    exactly."""
    values = np.random.default_rng(0).standard_normal(SHAPE)
    for name, array in (("f.npy", np.asfortranarray(values.astype(np.float32))), ("b.npy", values.astype(">f8"))):
        np.save(tmp_path / name, array)
        (item,) = load_inputs(tmp_path / name)
        assert np.array_equal(item.array, np.load(tmp_path / name).astype(np.float32))


# --- damaged pixel data ---------------------------------------------------------------------------------

def flipped_idat_png() -> bytes:
    """A sound PNG with one byte of its compressed data flipped (CRC left stale, as a bad copy leaves it)."""
    data = bytearray(encoded(pixels(64, 64), "PNG"))
    data[data.index(b"IDAT") + 10] ^= 0xFF
    return bytes(data)


def test_damaged_png_is_refused_and_never_reaches_torchvisions_png_decoder(place, monkeypatch):
    """torchvision's PNG decoder ends the process with SIGSEGV on this file (measured: exit 139). It is
    replaced here by a stub that fails loudly, so a change routing PNGs back to it fails this test instead
    of crashing the test run."""
    folder, run = place
    handed = []
    monkeypatch.setattr(torchvision.io, "decode_image", lambda *a, **k: handed.append(a) or 1 / 0)
    path = folder / "flip.png"
    path.write_bytes(flipped_idat_png())
    run(path, "flip.png is a damaged PNG", "re-save it")
    assert handed == []


def test_damaged_jpeg_is_refused_and_libjpeg_warnings_stay_off_stderr(place, capfd):
    """libjpeg decodes this file, filling the damage with guesses, and prints "Corrupt JPEG data" on the
    process's stderr: that is a damaged input (named in the one error line), not pixels to judge."""
    folder, run = place
    data = bytearray(encoded(pixels(64, 64), "JPEG"))
    scan = data.index(b"\xff\xda")
    data[scan + 20:scan + 400] = bytes(380)
    path = folder / "smudged.jpg"
    path.write_bytes(bytes(data))
    capfd.readouterr()
    run(path, "smudged.jpg is a damaged JPEG (the decoder says: Corrupt JPEG data", "re-save it")
    assert "Corrupt JPEG" not in capfd.readouterr().err


def test_truncated_jpeg_is_refused(place):
    folder, run = place
    path = folder / "half.jpg"
    path.write_bytes(encoded(pixels(64, 64), "JPEG")[:600])
    run(path, "half.jpg is a damaged JPEG (Image is incomplete or truncated)")


@pytest.mark.parametrize(("mode", "options"), [
    ("RGB", {}), ("RGBA", {}), ("L", {}), ("LA", {}), ("1", {}), ("P", {}),
    ("P", {"transparency": bytes(range(0, 256, 16))}), ("L", {"transparency": 7}),
    ("RGB", {"transparency": (1, 2, 3)}), ("RGB", {"interlace": 1}), ("L", {"bits": 2}),
])
def test_png_pixels_are_torchvisions_for_every_colour_type(tmp_path, mode, options):
    """PNGs are decoded by Pillow (see the damaged-PNG case): on every sound colour type the pixels equal
    torchvision's RGB decode bit for bit."""
    path = tmp_path / "a.png"
    pixels().convert(mode).save(path, **options)
    (item,) = load_inputs(path, normalize=False)
    data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    expected = decode_image(data, mode=ImageReadMode.RGB).to(torch.float32).div(255).unsqueeze(0).numpy()
    assert np.array_equal(item.array, expected)
