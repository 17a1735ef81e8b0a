"""Real inputs: .npy arrays, images and folders of them, read exactly (ToTensor's scaling) and
checked before any model is built; the verdict over several inputs is the worst one."""

import json
import os
import re

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms import functional as TF
from typer.testing import CliRunner

from exporter.errors import UsageError
from verify.cli import app
from verify.inputs import IMAGENET_MEAN, IMAGENET_STD, NamedInput, load_inputs
from verify.judge.compare import OutputComparison, PairResult
from verify.pipeline.stages import worst_over_inputs

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def write_image(path, height=40, width=50, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_png_without_normalisation_is_exactly_to_tensor(tmp_path):
    path = write_image(tmp_path / "photo.png")
    (item,) = load_inputs(path, normalize=False)
    expected = TF.to_tensor(Image.open(path)).unsqueeze(0).numpy()
    assert item.array.dtype == np.float32 and item.array.shape == (1, 3, 40, 50)
    assert np.array_equal(item.array, expected)
    assert item.label == str(path)


def test_normalisation_is_the_weights_own(tmp_path):
    path = write_image(tmp_path / "photo.png")
    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.transforms()
    assert (list(IMAGENET_MEAN), list(IMAGENET_STD)) == (list(weights.mean), list(weights.std))
    (item,) = load_inputs(path)
    expected = TF.normalize(TF.to_tensor(Image.open(path)), weights.mean, weights.std).unsqueeze(0).numpy()
    assert np.array_equal(item.array, expected)


def test_jpeg_is_decoded_by_torchvision_as_rgb(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.open(write_image(tmp_path / "src.png")).save(path, quality=90)
    (item,) = load_inputs(path, normalize=False)
    decoded = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    assert np.array_equal(item.array, (decoded.to(torch.float32) / 255).unsqueeze(0).numpy())


def test_image_resized_to_shape_and_batch_filled(tmp_path):
    path = write_image(tmp_path / "photo.png")
    (item,) = load_inputs(path, shape=(2, 3, 32, 24), normalize=False)
    decoded = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    expected = TF.resize(decoded, [32, 24], antialias=True).to(torch.float32) / 255
    assert item.array.shape == (2, 3, 32, 24)
    assert np.array_equal(item.array[0], expected.numpy()) and np.array_equal(item.array[1], item.array[0])


def test_grayscale_image_becomes_rgb(tmp_path):
    path = tmp_path / "gray.png"
    Image.fromarray(np.arange(20 * 30, dtype=np.uint8).reshape(20, 30) % 251).save(path)
    (item,) = load_inputs(path, normalize=False)
    assert item.array.shape == (1, 3, 20, 30)
    assert np.array_equal(item.array[0, 0], item.array[0, 2])


def test_folder_is_every_file_sorted(tmp_path):
    write_image(tmp_path / "b.png")
    np.save(tmp_path / "a.npy", np.ones((1, 3, 8, 8), np.float64))
    write_image(tmp_path / "c.jpeg", 16, 16)
    inputs = load_inputs(tmp_path)
    assert [os.path.basename(i.label) for i in inputs] == ["a.npy", "b.png", "c.jpeg"]
    assert inputs[0].array.dtype == np.float32  # float64 arrays are converted, not refused


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: (d / "notes.txt").write_text("hi"), "notes.txt is neither a .npy array nor an image"),
    (lambda d: (d / "sub").mkdir(), "sub is a directory, not a file; an input folder holds only"),
    (lambda d: (d / "gone.npy").symlink_to(d / "nowhere"), "gone.npy is a broken symbolic link"),
    (lambda d: os.mkfifo(d / "pipe.npy"), "pipe.npy is a FIFO (named pipe)"),
])
def test_folder_with_a_stray_entry_names_it(tmp_path, make, message):
    write_image(tmp_path / "a.png")
    make(tmp_path)
    with pytest.raises(UsageError, match=re.escape(message)):
        load_inputs(tmp_path)


def test_empty_folder(tmp_path):
    with pytest.raises(UsageError, match="is empty"):
        load_inputs(tmp_path)


def save_raw(path, data: bytes):
    path.write_bytes(data)
    return path


def npy_bytes(array):
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


GOOD = np.ones((1, 3, 4, 4), np.float32)
HEADER_ONLY = npy_bytes(np.ones((1, 3, 4, 4), np.float32))[:128]


def huge_header():
    """A valid .npy header promising 1e12 values, followed by nothing."""
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (10000, 3, 10000, 10000)})
    return buffer.getvalue()


@pytest.mark.parametrize(("content", "message"), [
    (b"just some text\n", "is not a NumPy .npy file (it has no .npy header"),
    (npy_bytes(GOOD)[:-10], "is truncated"),
    (npy_bytes(GOOD) + npy_bytes(GOOD), "bytes after its array"),
    (npy_bytes(np.ones((1, 3, 4, 4), np.int64)), "holds int64 values; inputs must be floating point"),
    (npy_bytes(np.ones((3, 4, 4), np.float32)), "must hold one NCHW array (4 dimensions)"),
    (npy_bytes(np.ones((0, 3, 4, 4), np.float32)), "holds an empty array"),
    (npy_bytes(np.ones((1, 3, 4, 4), np.complex64)), "holds complex64 values"),
    (npy_bytes(np.full((1, 1, 2, 2), 1e300)), "beyond float32's range"),
    (huge_header(), "more than the"),
    (b"", "is an empty file"),
])
def test_bad_npy_files(tmp_path, content, message):
    path = save_raw(tmp_path / "x.npy", content)
    with pytest.raises(UsageError, match=re.escape(message)) as info:
        load_inputs(path)
    text = str(info.value)
    assert "unsafe" not in text and "allow_pickle" not in text and "\n" not in text


def test_pickled_and_zipped_npy_are_named_and_never_loaded(tmp_path):
    pickled = tmp_path / "obj.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UsageError, match="Python objects"):
        load_inputs(pickled)
    zipped = tmp_path / "several.npy"
    with open(zipped, "wb") as handle:
        np.savez(handle, a=GOOD)
    with pytest.raises(UsageError, match="zip archive"):
        load_inputs(zipped)


@pytest.mark.parametrize(("values", "counts"), [
    ([np.nan, np.nan, 1.0], "2 NaN of"),
    ([np.inf, 1.0, 1.0], "1 Inf of"),
    ([np.nan, -np.inf, 1.0], "1 NaN and 1 Inf of"),
])
def test_non_finite_inputs_are_counted(tmp_path, values, counts):
    array = np.ones((1, 3, 4, 4), np.float32)
    array.flat[:3] = values
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(UsageError, match=f"x.npy holds {counts} 48 values"):
        load_inputs(tmp_path / "x.npy")


def test_npy_shape_must_match_shape_option(tmp_path):
    np.save(tmp_path / "x.npy", GOOD)
    with pytest.raises(UsageError, match="holds shape 1x3x4x4 but --shape asks 1x3x8x8"):
        load_inputs(tmp_path / "x.npy", shape=(1, 3, 8, 8))


def test_not_an_image(tmp_path):
    (tmp_path / "fake.png").write_text("not an image")
    with pytest.raises(UsageError, match="fake.png is not a readable image"):
        load_inputs(tmp_path / "fake.png")


def pair(ratio, passed):
    output = OutputComparison("layer1", [1], [1], passed=passed, max_abs=ratio * 1e-6, floor=1e-6, ratio=ratio)
    return PairResult("A", "B", [output])


def test_worst_input_is_reported():
    from verify.report import Report

    named = [NamedInput(f"in{i}", GOOD) for i in range(3)]
    report = Report("compare", {}, {})
    per_input = [[pair(1.0, True)], [pair(3.5, True)], [pair(2.0, True)]]
    assert worst_over_inputs(per_input, named, report)[0].worst.ratio == 3.5
    assert report.input["worst_input"] == {"A vs B": "in1"}
    per_input[2] = [pair(0.5, False)]  # a failure outranks any ratio
    assert worst_over_inputs(per_input, named, report)[0].passed is False
    assert report.input["worst_input"]["A vs B"] == "in2"


def test_export_judges_every_file_of_a_folder(tmp_path):
    """An image, a JPEG and an array: every one is run and judged; the goldens keep the first."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    write_image(folder / "a.png", 32, 32)
    Image.open(write_image(tmp_path / "src.png", 32, 32, seed=1)).save(folder / "b.jpg")
    np.save(folder / "c.npy", np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32))
    result = invoke("export", "--backbone", "resnet18", "--input", folder, "--out", tmp_path / "out",
                    "--runtime", "eager", "--runtime", "onnxruntime", "--onnx-exporter", "torchscript",
                    "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert [os.path.basename(i["label"]) for i in report["input"]["inputs"]] == ["a.png", "b.jpg", "c.npy"]
    assert set(report["input"]["worst_input"]) == {f"{p['a']} vs {p['b']}" for p in report["pairs"]}
    with np.load(tmp_path / "out" / "resnet18-frozen-body" / "goldens.npz") as goldens:
        assert np.array_equal(goldens["input.input"], load_inputs(folder / "a.png")[0].array)


def test_explain_blames_an_input_that_overflows_float32(tmp_path):
    np.save(tmp_path / "huge.npy", np.full((1, 3, 32, 32), 3e38, np.float32))
    result = invoke("explain", "resnet18:batch:body", "resnet18:frozen:body", "--input", tmp_path / "huge.npy")
    assert result.exit_code == 2, result.output
    assert "drives both A and B to NaN/Inf" in result.stderr
    assert "different" not in result.output
