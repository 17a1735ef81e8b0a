"""Hunt 11b: inputs, the matrix's backbone cells and reports, the pytest plugin, attacked. Each test fails before its
fix (the docstring says what happened, measured) and passes after."""

from __future__ import annotations

import json
import struct
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from exporter.errors import UsageError
from exporter.export import ExportOptions
from exporter.formats.onnx import OnnxOptions
from tests.helpers import invoke
from verify.api import RunSettings
from verify.cache import ENV_OFF
from verify.inputs import NPY_MAGIC, SAMPLES_ENV, load_inputs
from verify.matrix import REPORT_KEY_ENV, SHARD_ENV, MatrixRequest, load_result, run_matrix
from verify.matrix.run import plan_matrix
from verify.pytest_plugin import assert_exports_agree
from verify.render.html_page import html_page

SHAPE = (1, 3, 16, 16)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in (*SHARD_ENV, REPORT_KEY_ENV, ENV_OFF):
        monkeypatch.delenv(name, raising=False)


def _request() -> MatrixRequest:
    return MatrixRequest.create(["resnet18"], ["batch", "frozen"], settings=RunSettings(shape=SHAPE),
                                export=ExportOptions(formats=("onnx",),
                                                     format_options=(OnnxOptions(exporter="torchscript"),)))


# The matrix: a shard's seeded-input count is part of its matrix ----------------------------------------------------

def test_the_seeded_input_count_from_the_environment_is_part_of_the_fingerprint(monkeypatch):
    """Before: `BACKBONE_VERIFY_SAMPLES=1 verify matrix --shard 1/2` and `BACKBONE_VERIFY_SAMPLES=8 ... --shard 2/2`
    recorded the same settings and fingerprint (362c303ec0e53135 both), so `verify matrix merge` joined a cell judged
    on 1 input with one judged on 8 into one matrix that passed (exit 0)."""
    monkeypatch.setenv(SAMPLES_ENV, "1")
    one = plan_matrix(_request())
    monkeypatch.setenv(SAMPLES_ENV, "2")
    two = plan_matrix(_request())
    assert one.settings["samples"] == 1 and two.settings["samples"] == 2
    assert one.fingerprint != two.fingerprint


def test_shards_run_with_other_seeded_input_counts_do_not_merge(monkeypatch, tmp_path):
    """Before: the merge of such shards exited 0 (each cell 'agree', one on 1 input, the other on 8)."""
    written = []
    for index, count in ((1, "1"), (2, "2")):
        monkeypatch.setenv(SAMPLES_ENV, count)
        result = run_matrix(_request(), shard=(index, 2))
        written.append(tmp_path / f"s{index}.json")
        written[-1].write_text(json.dumps(result.to_dict()))
    assert all(load_result(path).passed for path in written)  # each shard on its own earned its pass
    merged = invoke("matrix", "merge", *written, "--json", tmp_path / "merged.json")
    assert merged.exit_code == 1, merged.output
    assert "different matrix or settings" in merged.output
    report = json.loads((tmp_path / "merged.json").read_text())  # the failure, never a merged pass (surface 28)
    assert report["passed"] is False and report["exit_code"] == 1 and "different matrix" in report["error"]


def test_a_matrix_on_an_input_file_records_no_seeded_count(tmp_path):
    """The count is recorded for seeded inputs only (--input's files are the inputs, whatever the environment)."""
    path = tmp_path / "x.npy"
    np.save(path, np.zeros(SHAPE, dtype=np.float32) + 0.5)
    request = MatrixRequest.create(["resnet18"], ["batch"], settings=RunSettings(input_file=path),
                                   export=ExportOptions(formats=("onnx",)))
    assert "samples" not in request.settings_dict()


# Inputs: a .npy header whose shape numpy's reader takes but no array has -------------------------------------------

def _npy(path, shape, data: bytes):
    header = repr({"descr": "<f4", "fortran_order": False, "shape": shape}).encode()
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    path.write_bytes(NPY_MAGIC + b"\x01\x00" + struct.pack("<H", len(header)) + header + data)
    return path


@pytest.mark.parametrize("shape", [(True, 3, 4, 4), (-1, 3, 4, 4), (-1, -3, 4, 4)])
def test_a_npy_header_with_a_size_that_is_not_a_whole_number_is_a_damaged_header(tmp_path, shape):
    """Before: shape (True, 3, 4, 4) passed the header pass and crashed the load (TypeError: an integer is required:
    an 'unexpected TypeError' line); (-1, 3, 4, 4) was called "384 bytes after its array (several arrays saved into
    one file?)"; (-1, -3, 4, 4) promised exactly the bytes that follow and failed in numpy's reshape."""
    data = np.ones(48, dtype="<f4").tobytes()
    with pytest.raises(UsageError, match=r"damaged \.npy header \(shape .* not a whole number >= 0\)"):
        load_inputs(_npy(tmp_path / "x.npy", shape, data))


# Reports: a merged report's shown-only fields never crash a renderer ---------------------------------------------

@pytest.mark.parametrize("shape", [5, None, "1x3", [1.5, "x"]])
def test_the_html_page_shows_a_malformed_input_shape_as_a_dash(shape):
    """Before: a shard report whose first cell's `input.shape` was 5 (a field shown, never judged) merged with
    `--html` to "error: unexpected TypeError: 'int' object is not iterable" after the table was printed."""
    from verify.matrix.result import CellResult, MatrixResult

    cell = CellResult("c", "resnet18", "batch", "body", "agree", input={"shape": shape})
    page = html_page(MatrixResult(settings={}, fingerprint="f", matrix=[], cells=[cell]))
    assert "input -, weights" in page


# The pytest plugin: arguments no later check reads ------------------------------------------------------------------

class _Conv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return {"y": self.conv(x)}


@pytest.mark.parametrize(("options", "words"), [
    ({"trace": "no", "formats": ["torchscript"]}, "trace must be True or False"),
    ({"dynamic": "false"}, "dynamic must be True or False"),
    ({"formats": []}, "formats=[] names none"),
    ({"runtimes": []}, "runtimes=[] names none"),
    ({"formats": ("onnx", 3)}, "formats takes a list of names"),
    ({"name": 5}, "name must be a non-empty string"),
    ({"out": None}, "out must be a folder path"),
])
def test_plugin_arguments_of_the_wrong_kind_fail_in_one_line(tmp_path, options, words):
    """Before: `trace="no"` is truthy, so the model was exported by tracing and the test passed; `dynamic="false"`
    exported dynamic shapes; `formats=[]` / `runtimes=[]` silently meant every default one; `name=5` and `out=None`
    failed with a bare TypeError traceback from inside the plugin."""
    options = {"out": tmp_path, **options}
    with pytest.raises(pytest.fail.Exception) as failed:
        assert_exports_agree(_Conv().eval(), torch.randn(1, 3, 16, 16), **options)
    message = str(failed.value)
    assert "was called wrongly" in message and words in message and "\n" not in message
    assert not any(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.parametrize("example", [torch.randn(1, 3, 16, 16).to_sparse(), torch.empty(1, 3, 16, 16, device="meta")],
                         ids=["sparse", "meta"])
def test_plugin_example_without_values_fails_in_one_line(tmp_path, example):
    """Before: a sparse example failed with "TypeError: can't convert Sparse layout tensor to numpy" and a meta one
    with "NotImplementedError: Cannot copy out of meta tensor", each a traceback from inside the plugin."""
    with pytest.raises(pytest.fail.Exception, match="example must be a dense tensor holding its values"):
        assert_exports_agree(_Conv().eval(), example, out=tmp_path)


def test_plugin_runtimes_without_formats_export_what_they_run(tmp_path):
    """Before: `runtimes=["onnxruntime"]` exported every default format and then failed "No --runtime runs the exported
    torchscript, pt2 ... (with --runtime and no --format, what the runtimes run is exported)": the plugin did not do
    what its own advice said; `verify export --runtime onnxruntime` exports model.onnx alone."""
    report = assert_exports_agree(_Conv().eval(), torch.randn(1, 3, 16, 16), out=tmp_path, runtimes=["onnxruntime"],
                                  onnx_exporter="torchscript", name="ort")
    assert report.passed and {run.label for run in report.runs} == {"onnxruntime"}
    assert sorted(p.name for p in (tmp_path / "ort").glob("model*")) == ["model.onnx"]


def test_a_cell_result_missing_a_run_never_agrees_in_the_run_that_made_it(monkeypatch):
    """Before: a cell result that came back (from a worker, over a pipe) without its onnxruntime run and that run's
    pairs was judged again in `verify matrix` without the run count its settings give: the matrix passed (exit 0,
    `1 of 1 cells agree`), where `verify matrix merge` of the same report fails it ("1 runs recorded, 2 expected")."""
    import verify.matrix.run as run

    monkeypatch.setenv(SAMPLES_ENV, "1")
    # the legacy ONNX exporter (this test 9.4 s -> 6.6 s): which exporter wrote the file is not judged here
    request = MatrixRequest.create(["resnet18"], ["batch"], settings=RunSettings(shape=SHAPE),
                                   export=ExportOptions(formats=("onnx",),
                                                        format_options=(OnnxOptions(exporter="torchscript"),)))
    cell = run_matrix(request).cells[0]
    assert cell.passed and {r["label"] for r in cell.runs} == {"eager", "onnxruntime"}
    trimmed = replace(cell, runs=[r for r in cell.runs if r["label"] != "onnxruntime"], problems=[],
                      pairs=[p for p in cell.pairs if "onnxruntime" not in (p["a"], p["b"])])
    monkeypatch.setattr(run, "execute_cell", lambda job, lookup=False: replace(trimmed, id=job.id))
    forged = run_matrix(request)
    assert not forged.passed and forged.exit_code == 1
    assert any("1 runs recorded, 2 expected" in p for p in forged.cells[0].problems)


def test_plugin_model_failing_on_the_example_says_what_to_pass(tmp_path):
    """Before: a model that fails on the example said "pass the input shape it takes with --shape, or return (module,
    example_input)": options of the CLI and of a --model factory, neither of which the plugin has."""
    from verify.pytest_plugin import PLUGIN_SHAPE_HOW

    class FourChannels(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3)

        def forward(self, x):
            return {"y": self.conv(x)}

    with pytest.raises(pytest.fail.Exception) as failed:
        assert_exports_agree(FourChannels().eval(), torch.randn(1, 3, 16, 16), out=tmp_path, formats=["onnx"])
    message = str(failed.value)
    assert "to have 4 channels" in message and message.endswith(PLUGIN_SHAPE_HOW) and "--shape" not in message


def test_plugin_module_that_cannot_be_copied_is_refused_and_left_as_it_was(tmp_path):
    """Before: a module holding a lock could not be deep-copied, so it was used as given: put in eval mode (the
    caller's object changed, against the documented promise), then a bare "TypeError: cannot pickle '_thread.lock'
    object" traceback (explicit tolerance) or an oracle message advising CLI flags (auto)."""
    import threading

    from verify.judge.compare import Tolerance

    model = _Conv().train()
    model.lock = threading.Lock()
    with pytest.raises(pytest.fail.Exception, match="the module cannot be copied"):
        assert_exports_agree(model, torch.randn(1, 3, 16, 16), out=tmp_path, formats=["onnx"],
                             tolerance=Tolerance.from_options(rtol=1e-4, atol=1e-5))
    assert model.training and model.conv.weight.dtype == torch.float32 and not any(tmp_path.iterdir())


def test_plugin_headline_of_a_run_not_judged_names_no_folder_it_did_not_write(tmp_path):
    """Before: a model that changes its input in place failed with "... Not judged; artifacts in None, report ...":
    no artifact folder is written when nothing is judged."""

    class InPlace(_Conv):
        def forward(self, x):
            x.mul_(2.0)
            return {"y": self.conv(x)}

    with pytest.raises(AssertionError) as failed:
        assert_exports_agree(InPlace().eval(), torch.randn(1, 3, 16, 16), out=tmp_path, formats=["onnx"],
                             onnx_exporter="torchscript", name="inplace")
    headline = str(failed.value).splitlines()[0]
    assert "could not be judged" in headline and "None" not in headline
    assert headline.endswith(f"report {tmp_path / 'inplace-report.json'}")


def test_a_worker_sending_another_cells_result_fails_that_cell_at_once():
    """Before: a live worker's result for another cell was never collected, so the matrix waited until the cell's
    timeout, or for ever without one (hunt 11b's proposal). Now the cell fails with a line saying why."""
    import multiprocessing
    import pickle

    from verify.matrix.cell import CellJob
    from verify.matrix.result import ERROR, CellResult
    from verify.matrix.workers import _collect, _Worker

    class Alive:  # a live worker process's stand-in, without a deadline: before, _collect waited on it for ever
        pid, exitcode, alive = None, None, True

        def is_alive(self):
            return self.alive

        def kill(self):
            self.alive = False

        def join(self, timeout=None):
            pass

    request = MatrixRequest(("resnet18",), ("frozen",), ("body",), RunSettings(), ExportOptions()).cells()[0]
    job = CellJob(request, "c1", None)
    parent, child = multiprocessing.Pipe()
    worker = _Worker(Alive(), parent, job)
    child.send_bytes(pickle.dumps(CellResult("c2", "resnet18", "frozen", "body", "agree")))
    result = _collect(worker)
    assert result is not None and result.id == "c1" and result.verdict == ERROR
    assert "other than this cell's result" in result.error


def test_a_module_that_cannot_be_copied_is_refused_and_left_as_it_was():
    """Before: `ModuleSpec.load` used an uncopyable module as given, so the caller's object was put in eval mode
    (and converted to float64) against the documented "left as it was" (hunt 11b's proposal)."""
    import threading

    from exporter.user_model import ModuleSpec

    class Locked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.lock = threading.Lock()

        def forward(self, x):
            return self.conv(x)

    module = Locked().train()
    with pytest.raises(UsageError, match="cannot be copied"):
        ModuleSpec.of(module).load()
    assert module.training and module.conv.weight.dtype == torch.float32
