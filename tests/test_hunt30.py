"""Hunt 30: seeded bugs in .pt2, TorchScript and AOTInductor files, judged by `verify artifact`. What a folder's second
shape is judged against (verify/folder/validate.py `_second_shape`): never the file itself, never a file that cannot
run there."""

from __future__ import annotations

import zipfile

import pytest

from exporter.formats import get_format
from tests.helpers import linked_copy, rehash
from verify.folder.checks import CheckReport
from verify.folder.validate import ArtifactFolder, _second_shape, check_integrity, golden_checks
from verify.inputs import second_shape
from verify.runtimes import RuntimeOptions, make_runtime, runtimes_for


def integrity(folder) -> ArtifactFolder:
    art = check_integrity(folder, CheckReport("artifact"), trust_unsigned_code=True)
    assert art is not None and art.sound, art and art.unsound_because
    return art


def judged_at_second_shape(art: ArtifactFolder, name: str) -> str:
    """The `<name>: shape ...` check's passing message, as `verify artifact` runs it (raises where it fails)."""
    fmt = art.manifest.files[name].format
    shape = second_shape(art.manifest.input.shape, art.manifest.input.dynamic_axes, art.recorded[name].dynamic_ranges)
    assert shape is not None
    runtime = make_runtime(runtimes_for(fmt)[0]).load(art.artifact(name))
    return _second_shape(art, runtime, shape, name)


def float64_files(art: ArtifactFolder) -> list[str]:
    return [name for name, entry in art.manifest.model_files().items() if runtimes_for(entry.format, float64=True)]


@pytest.fixture(scope="module")
def unbounded(default_export) -> tuple[ArtifactFolder, str]:
    """default_export checked, and its float64 file whose recorded ranges bound no axis."""
    art = integrity(default_export)
    name, = [n for n in float64_files(art) if not art.recorded[n].dynamic_ranges]
    return art, name


def test_a_file_is_never_its_own_reference_at_the_second_shape(unbounded):
    """Before: a TorchScript file with a layer4 conv dilated (padding and dilation 1 to 2: the same shape; invisible at
    the 32 px golden shape, where layer4 is 1x1) passed `verify artifact` with "shape 2x3x64x64: vs model.pt in
    float64: worst layer4 1.0x floor": the file against its own float64 run, which judges only its float32 rounding.
    `--rebuild` failed it at 123,376x. Now another file that takes the shape is the reference (here the .pt2, whose
    range at this golden shape takes it); with none, the check says that nothing here could judge it, and names
    --rebuild."""
    art, name = unbounded
    message = judged_at_second_shape(art, name)
    assert f"vs {name} " not in message
    assert any(message.startswith(f"vs {other} in float64") for other in float64_files(art)) or "--rebuild" in message


def test_a_bounded_file_is_still_judged_against_another_file(unbounded):
    """The other float64 file's second shape lies inside its recorded range, which the unbounded file takes: that file
    stays its reference (the rule takes away only the file itself)."""
    art, name = unbounded
    bounded, = [n for n in float64_files(art) if n != name]
    assert judged_at_second_shape(art, bounded).startswith(f"vs {name} in float64")


def test_a_reference_that_cannot_load_does_not_fail_another_file(default_export, tmp_path, unbounded):
    """Before: a TorchScript file whose code no longer parses (one edited line of `code/`, rehashed) failed its own load
    check, and also every other file's second-shape check ("model.pt2: shape 2x3x32x32: .../model.pt cannot be loaded
    by torch.jit.load"): a correct file failed for another's fault. The broken file still fails its own checks."""
    _, name = unbounded
    folder = linked_copy(default_export, tmp_path)
    with zipfile.ZipFile(folder / name) as source:
        entries = [(info.filename, source.read(info)) for info in source.infolist()]
    code = next(i for i, (entry, _) in enumerate(entries) if "/code/" in entry and entry.endswith(".py"))
    entries[code] = (entries[code][0], entries[code][1].replace(b"\n", b" +\n", 1))
    (folder / name).unlink()  # never through the hard link to the shared export
    with zipfile.ZipFile(folder / name, "w", zipfile.ZIP_STORED) as target:
        for entry, data in entries:
            target.writestr(zipfile.ZipInfo(entry, date_time=(1980, 1, 1, 0, 0, 0)), data)
    rehash(folder, name)
    art = integrity(folder)
    others = [n for n in float64_files(art) if n != name]
    assert others
    for other in others:
        assert judged_at_second_shape(art, other)
    report = CheckReport("artifact")
    golden_checks(art, RuntimeOptions(), report)
    failed = [c for c in report.checks if not c.passed and not c.skipped]
    assert failed and all(c.name.startswith(f"{name}: ") for c in failed), [(c.name, c.message) for c in failed]
    assert name in art.failed
    assert get_format(art.manifest.files[name].format).filename == name


def test_a_file_that_failed_its_goldens_is_no_reference(unbounded):
    """With the second shape of the unbounded file judged against another file, a wrong reference failed a correct
    file: a .pt2 with one output channel of a conv x1.001 made the correct model.pt fail "shape 2x3x64x64: vs model.pt2
    in float64: worst feat 1100.1x floor" beside its own failures. A file that failed its goldens is skipped."""
    art, name = unbounded
    bounded, = [n for n in float64_files(art) if n != name]
    art.failed.add(bounded)
    try:
        assert f"vs {bounded} " not in judged_at_second_shape(art, name)
    finally:
        art.failed.discard(bounded)
