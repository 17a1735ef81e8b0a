"""Hunt 19c: a new user's first hour. `--static` beside an --input folder whose inputs load to several shapes
(verify/settings.py `refuse_static_shapes`): a static export takes the one shape it is traced at, so the run built,
exported and ran everything, then failed on the second input with a hint to "export with --static", the option
given. Refused before any work now, in `export` and `matrix`. And `verify artifact artifacts`, the --out folder rather
than the export folder inside it (verify/folder/integrity.py `resolve_folder`): a failed check "not an export
folder" (exit 1); now a usage error naming the export folders it holds (exit 2)."""

from __future__ import annotations

import numpy as np
import pytest

from exporter.errors import UsageError
from tests.helpers import invoke
from verify.settings import RunSettings, refuse_static_shapes

TINY = "tests/data/tiny.py:make"


@pytest.fixture
def two_shapes(tmp_path):
    """A folder of two float32 arrays, 1x3x32x32 and 1x3x40x48."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    np.save(folder / "a.npy", rng.standard_normal((1, 3, 32, 32)).astype(np.float32))
    np.save(folder / "b.npy", rng.standard_normal((1, 3, 40, 48)).astype(np.float32))
    return folder


@pytest.mark.parametrize("command", [["export", "--model", TINY], ["matrix", "--model", TINY]])
def test_static_with_inputs_of_several_shapes_is_refused_before_any_work(command, two_shapes, tmp_path):
    out = tmp_path / "out"
    extra = ["--out", out] if command[0] == "export" else []
    result = invoke(*command, "--static", "--input", two_shapes, "--no-cache", *extra)
    assert result.exit_code == 2, result.output
    message = result.output.strip().splitlines()[-1]
    assert "--static exports one input shape" in message and "1x3x32x32" in message and "1x3x40x48" in message
    assert "drop --static" in message and "export with --static" not in result.output
    assert "Building" not in result.output and not out.exists()  # nothing built, nothing written


def test_static_with_inputs_of_one_shape_or_dynamic_is_not_refused(two_shapes, tmp_path):
    (two_shapes / "b.npy").unlink()
    np.save(two_shapes / "c.npy", np.zeros((1, 3, 32, 32), np.float32))
    refuse_static_shapes(RunSettings(input_file=two_shapes), dynamic=False)  # one shape: a static export takes it
    refuse_static_shapes(RunSettings(input_file=two_shapes / "c.npy"), dynamic=False)
    np.save(two_shapes / "d.npy", np.zeros((1, 3, 40, 48), np.float32))
    refuse_static_shapes(RunSettings(input_file=two_shapes), dynamic=True)  # dynamic axes may take both
    refuse_static_shapes(RunSettings(), dynamic=False)  # seeded inputs all have the one --shape
    with pytest.raises(UsageError, match="2 shapes"):
        refuse_static_shapes(RunSettings(input_file=two_shapes), dynamic=False)


def test_static_with_images_of_several_sizes_is_refused_unless_shape_gives_one(tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("a.png", (40, 50)), ("b.png", (32, 32))):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / name)
    with pytest.raises(UsageError, match="give images one size with --shape"):
        refuse_static_shapes(RunSettings(input_file=folder), dynamic=False)
    refuse_static_shapes(RunSettings(input_file=folder, shape=(1, 3, 32, 32)), dynamic=False)  # both resized


@pytest.mark.parametrize("command", ["artifact", "preflight"])
def test_the_out_folder_instead_of_its_export_folders_names_them(command, tmp_path):
    out = tmp_path / "artifacts"
    for name in ("resnet18-frozen-body", "tiny-make"):
        (out / name).mkdir(parents=True)
        (out / name / "manifest.json").write_text("{}")  # refused before any manifest is read
    (out / "notes").mkdir()
    result = invoke(command, out)
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and "holds 2" in message
    assert str(out / "resnet18-frozen-body") in message and str(out / "tiny-make") in message


def test_a_folder_without_a_manifest_or_export_folders_still_fails_its_check(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model.onnx").write_bytes(b"")  # an interrupted export: a failed check, as before
    result = invoke("artifact", tmp_path / "half")
    assert result.exit_code == 1 and "no manifest.json" in result.output
