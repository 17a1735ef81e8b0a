"""Hunt 12a: the main path as a library user: RunSettings and ExportOptions given wrong types or values the CLI
refuses. Each test failed before its fix (the docstring says what happened, measured)."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.errors import UsageError
from exporter.export import ExportOptions
from exporter.formats import get_format
from exporter.spec import MAX_INPUT_ELEMENTS
from verify.settings import RunSettings


@pytest.mark.parametrize("shape", [(1, 3, 0, 32), (1, 3, -2, 32), (3, 32), (1, 3, 32.5, 32), (1, 3, True, 32)])
def test_bad_shape_is_one_usage_error(shape):
    """Before: RunSettings took any shape; compare() with (1, 3, 0, 32) built and ran resnet18 for 7.6 s and failed
    with an ArtifactError from inside a convolution, (1, 3, -2, 32) with numpy's ValueError."""
    with pytest.raises(UsageError, match="shape"):
        RunSettings(shape=shape)


def test_shape_too_large_is_refused_as_the_cli_refuses():
    """Before: accepted; the CLI's --shape refuses more than MAX_INPUT_ELEMENTS values."""
    with pytest.raises(UsageError, match="more than"):
        RunSettings(shape=(1, 3, MAX_INPUT_ELEMENTS, 2))


def test_shape_as_text_or_list_is_the_cli_shape():
    """Before: a shape as text crashed check_sample_budget with TypeError "can't multiply sequence by non-int"."""
    assert RunSettings(shape="1x3x32x32", samples=1).shape == (1, 3, 32, 32)
    assert RunSettings(shape=[1, 3, 32, 32]).shape == (1, 3, 32, 32)


def test_paths_given_as_path_or_text():
    """Before: weights=Path(...) crashed with AttributeError "'PosixPath' object has no attribute 'endswith'" when
    the model was built; input_file as text was kept as text."""
    settings = RunSettings(weights=Path("my.pt"), input_file="x.npy")
    assert settings.weights == "my.pt" and settings.input_file == Path("x.npy")


@pytest.mark.parametrize("field, value", [("weights", None), ("weights", 3), ("input_file", 3), ("runtime", {}),
                                          ("tolerance", "auto"), ("normalize", "no"), ("shape", 224)])
def test_wrong_types_are_named(field, value):
    """Before: weights=None and tolerance='auto' crashed later with AttributeError (no 'endswith', no 'to_dict'),
    runtime={} with AttributeError in __post_init__, normalize='no' was read as True (images normalised)."""
    with pytest.raises(TypeError, match=field):
        RunSettings(**{field: value})


def test_one_format_as_text_is_refused():
    """Before: ExportOptions(formats="onnx") was read letter by letter: UsageError "Unknown format 'o'"."""
    with pytest.raises(TypeError, match="one string"):
        ExportOptions(formats="onnx")


def test_dynamic_as_text_is_refused():
    """Before: ExportOptions(dynamic="no") was accepted and exported dynamic axes (a truthy string)."""
    with pytest.raises(TypeError, match="dynamic"):
        ExportOptions(dynamic="no")


def test_format_options_given_twice_or_of_no_format_are_refused():
    """Before: a second OnnxOptions was silently dropped (options_for took the first), an object of no format's
    options was silently ignored, and one option not in a tuple was accepted and crashed later iterating it."""
    onnx_options = get_format("onnx").Options
    with pytest.raises(UsageError, match="twice"):
        ExportOptions(formats=("onnx",), format_options=(onnx_options(opset=17), onnx_options(opset=18)))
    with pytest.raises(TypeError, match="no format's options"):
        ExportOptions(format_options=(3,))
    with pytest.raises(TypeError, match="tuple"):
        ExportOptions(format_options=onnx_options(opset=17))
    assert ExportOptions(formats=("onnx",), format_options=[onnx_options(opset=17)]).options_for("onnx").opset == 17


@pytest.mark.parametrize("kwargs, name", [({"out": 3}, "out"), ({"export": ("onnx",)}, "export"),
                                          ({"overwrite": "no"}, "overwrite")])
def test_verify_export_wrong_argument_types_are_named(tmp_path, kwargs, name):
    """Before: export=('onnx',) failed with AttributeError "'tuple' object has no attribute 'validate'", out=3 with
    pathlib's TypeError, and overwrite='no' was read as True (a folder holding another export replaced)."""
    from exporter.spec import ModelSpec
    from verify.api import verify_export

    kwargs = {"out": tmp_path, **kwargs}
    with pytest.raises(TypeError, match=name):
        verify_export(ModelSpec("resnet18", "frozen", "body"), RunSettings(shape=(1, 3, 32, 32), samples=1),
                      cache=None, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_compare_takes_a_path_and_names_wrong_types(tmp_path):
    """Before: compare(Path(...), ...) and compare(spec, None) failed with AttributeError (no 'strip'), settings='x'
    with AttributeError (no 'runtime'), runtime=['onnxruntime'] with TypeError "unhashable type: 'list'"."""
    from verify.api import compare

    with pytest.raises(UsageError, match="does not exist"):  # the Path is read as the path it is
        compare(tmp_path / "missing.onnx", "resnet18:frozen:body")
    for kwargs, name in (({"b": None}, "b"), ({"settings": "x"}, "settings"),
                         ({"runtime": ["onnxruntime"]}, "runtime")):
        with pytest.raises(TypeError, match=name):
            compare(**{"a": "resnet18:frozen:body", "b": "resnet18:batch:body", **kwargs})


def test_overwrite_never_deletes_a_folder_no_export_made(tmp_path):
    """Before: `verify export -b resnet18 --out arts --overwrite` with arts/resnet18-frozen-body holding only the
    user's thesis.txt agreed (exit 0) and deleted thesis.txt with the folder. Now that folder is refused (an export
    folder, one with a manifest, is still replaced: tests/test_cli.py)."""
    from exporter.spec import ModelSpec
    from verify.api import verify_export

    spec = ModelSpec("resnet18", "frozen", "body")
    precious = tmp_path / spec.slug / "thesis.txt"
    precious.parent.mkdir()
    precious.write_text("precious")
    with pytest.raises(UsageError, match="--overwrite replaces only a folder holding an export"):
        verify_export(spec, RunSettings(shape=(1, 3, 32, 32), samples=1), out=tmp_path,
                      export=ExportOptions(formats=("torchscript",)), runtimes=["torchscript"], overwrite=True,
                      cache=None)
    assert precious.read_text() == "precious"


def test_detector_overwrite_never_deletes_a_folder_no_export_made(tmp_path):
    """Before (and still): `verify export -b <detector> --overwrite` replaces <out>/<detector>-<norm> whatever it
    holds; _check_paths refuses an existing folder only without --overwrite."""
    from verify.cli.detector import _check_paths

    folder = tmp_path / "ssdlite320_mobilenet_v3_large-frozen"
    folder.mkdir()
    (folder / "thesis.txt").write_text("precious")
    with pytest.raises(UsageError, match="--overwrite replaces only a folder holding an export"):
        _check_paths(folder, True, {}, {})
