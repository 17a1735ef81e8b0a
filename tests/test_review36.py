"""Review 36: the afternoon's new code, attacked. Goldens on several inputs: a manifest naming one input twice, or
more inputs than goldens.npz stores, or goldens keeping the folded sample for some inputs only, is refused with what
is wrong (duplicated labels passed `verify artifact` at exit 0). The legacy exporter's kept trace: its witness mutated
its own state where the model's forward mutates a buffer in place (0.25, 0.5, 0.75 of the output off the file over
three runs), now it computes what the file computes on every run. The worker-folder sweep: a folder named
`verify-worker-<a pid past any C long>-x` or `verify-worker-²-x` in /tmp crashed every run that swept it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from exporter.errors import ArtifactError
from exporter.formats import ExportContext, get_format
from exporter.formats.eager import eager_artifact
from exporter.formats.program import ONNX_TRACES, onnx_exporting
from exporter.formats.torchscript import WITNESS_TRACE, KeptTrace
from exporter.manifest import GOLDENS_MORE_KEYS, GOLDENS_NAME, GoldenSet, parse_manifest, write_goldens
from exporter.user_model import UserModelSpec
from tests.helpers import edit_manifest
from verify.judge.file_witness import LEGACY, witness_candidates
from verify.pipeline.isolation import WORKER_PREFIX, sweep_stale

SHAPE = (1, 3, 8, 8)
TRACE_ERROR = 1e-5
"""How far (relative to the output's largest magnitude) the witness may be from the file: float32 rounding is ~1e-7."""


# Goldens on several inputs ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def manifest_data(default_export) -> dict:
    return json.loads((default_export / "manifest.json").read_text())


def test_a_label_named_twice_is_refused(manifest_data):
    data = json.loads(json.dumps(manifest_data))
    assert len(data["goldens"]["inputs"]) > 1 and data["goldens"]["more"] == GOLDENS_MORE_KEYS
    parse_manifest(json.dumps(data))
    data["goldens"]["inputs"] = [data["goldens"]["inputs"][0]] * len(data["goldens"]["inputs"])
    with pytest.raises(ArtifactError, match="names an input twice"):
        parse_manifest(json.dumps(data))


def _tiny_folder(tmp_path: Path, sets: list[GoldenSet]) -> Path:
    folder = tmp_path / "f"
    folder.mkdir()
    write_goldens(folder, "input", sets[0].input, sets[0].float32, sets[0].float64, sets[0].folded, more=sets[1:])
    return folder


def _content_error(folder: Path, count: int, outputs=("y",)) -> str:
    """What validate's goldens check says of `folder`'s goldens.npz under a manifest naming `count` inputs."""
    from types import SimpleNamespace

    from verify.folder.validate import _goldens

    layout = SimpleNamespace(count=count, inputs=[f"i{k}" for k in range(count)] if count > 1 else None)
    manifest = SimpleNamespace(goldens=layout, outputs=list(outputs), noise_floor={"y": 1.0},
                               input=SimpleNamespace(name="input", shape=[1, 3, 2, 2], dtype="float32"))
    art = SimpleNamespace(verified={GOLDENS_NAME: folder / GOLDENS_NAME}, manifest=manifest)
    with pytest.raises(ArtifactError) as caught:
        _goldens(art)
    return str(caught.value)


def _set(seed: int, folded: bool = True) -> GoldenSet:
    rng = np.random.default_rng(seed)
    y = rng.standard_normal((1, 2)).astype(np.float64)
    return GoldenSet(rng.standard_normal((1, 3, 2, 2)).astype(np.float32), {"y": y.astype(np.float32)}, {"y": y},
                     {"y": y.astype(np.float32)} if folded else None)


def test_more_labels_than_stored_inputs_say_so(tmp_path):
    folder = _tiny_folder(tmp_path, [_set(0), _set(1)])
    message = _content_error(folder, 3)
    assert "holds 2 inputs" in message and "names 3" in message, message


def test_a_folded_sample_for_some_inputs_only_is_refused(tmp_path):
    folder = _tiny_folder(tmp_path, [_set(0), _set(1, folded=False)])
    assert "folded outputs for some of its inputs only" in _content_error(folder, 2)


def test_duplicated_labels_fail_verify_artifact(default_export, tmp_path):
    import shutil

    from tests.helpers import invoke, onnx_only

    folder = onnx_only(shutil.copytree(default_export, tmp_path / "dup" / default_export.name,
                                       copy_function=os.link))
    edit_manifest(folder, lambda d: d["goldens"].update(inputs=["same"] * len(d["goldens"]["inputs"])))
    result = invoke("artifact", folder)
    assert result.exit_code == 1 and "names an input twice" in result.output, result.output


# The legacy exporter's kept trace ----------------------------------------------------------------------------------
MUTATING = """
import torch
from torch import nn


class Counting(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.register_buffer("count", torch.zeros(()))

    def forward(self, x):
        self.count += 1
        return self.conv(x) * self.count


def counting():
    return Counting().eval()
"""


def test_the_kept_trace_witness_keeps_no_state_of_its_own(tmp_path):
    """A forward that mutates a buffer in place: the witness made of the file's own trace runs what the ONNX file
    runs, on every call and in float64 (before: its buffer counted up on each run)."""
    import onnxruntime

    from exporter.formats import file_formats
    from exporter.formats.onnx import OPSETS, OnnxOptions

    data = next(name for name in file_formats() if not get_format(name).executes_code_on_load)
    legacy = next(name for name in OPSETS if name != OnnxOptions().exporter)
    source = tmp_path / "review36_counting.py"
    source.write_text(MUTATING)
    built = UserModelSpec.parse(f"{source}:counting").build(0, SHAPE, "synthetic")
    example = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    context = ExportContext(built, example, eager_artifact(built, SHAPE).meta, dynamic=False)
    artifact = get_format(data).export(context, OnnxOptions(exporter=legacy, opset=OPSETS[legacy][1]),
                                       tmp_path / "model.onnx")
    kept = context.shared[ONNX_TRACES][LEGACY]
    assert isinstance(kept, KeptTrace)
    fmt, options = witness_candidates(jit_first=True)[0]
    entry = get_format(fmt)
    witness_ctx = ExportContext(built, example, context.meta, dynamic=False, shared={WITNESS_TRACE: kept})
    with onnx_exporting():
        witness = entry.export(witness_ctx, options, tmp_path / str(entry.filename))
    module = torch.jit.load(str(witness.path))
    session = onnxruntime.InferenceSession(str(artifact.path), providers=["CPUExecutionProvider"])
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2))
    file_out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    scale = float(np.abs(file_out).max())
    with torch.no_grad():
        runs = [module(x).numpy() for _ in range(3)] + [module.double()(x.double()).numpy()]
    for run in runs:
        assert np.abs(run - file_out).max() < TRACE_ERROR * scale


# The worker-folder sweep -------------------------------------------------------------------------------------------
def test_the_sweep_skips_names_no_run_makes_and_what_is_not_a_dead_owners_folder(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    kept = [f"{WORKER_PREFIX}{'9' * 20}-big", f"{WORKER_PREFIX}\u00b2-sup", f"{WORKER_PREFIX}{dead.pid}-file",
            f"{WORKER_PREFIX}{dead.pid}-link", f"{WORKER_PREFIX}1-live"]
    for name in (kept[0], kept[1], kept[4]):
        (tmp / name).mkdir()
    (tmp / kept[2]).write_text("x")
    (tmp / kept[3]).symlink_to(outside)
    stale = tmp / f"{WORKER_PREFIX}{dead.pid}-dead"
    stale.mkdir()
    (stale / "escape").symlink_to(outside)
    assert sweep_stale(str(tmp)) == [str(stale)]
    assert sorted(os.listdir(tmp)) == sorted(kept) and (outside / "keep").exists()


ALIASED = """
import torch
from torch import nn


class Aliased(nn.Module):
    \"\"\"One tensor registered as two buffers (a scale and its alias).\"\"\"

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        scale = torch.rand(4, 1, 1)
        self.register_buffer("scale", scale)
        self.register_buffer("alias", scale)

    def forward(self, x):
        return self.conv(x) * self.scale + self.alias


def make():
    return Aliased()
"""


def test_a_tensor_held_under_two_buffer_names_is_one_tensor_in_float64(tmp_path):
    """Before: `.double()` converted each buffer name on its own, so the float64 oracle held two tensors where the
    model holds one, and the call check read `add(x, scale)` in float32, `add(x, alias)` in float64: "computes another
    function", a correct model not judged. Now the float64 copy keeps them one tensor, and the model passes."""
    from exporter.formats import file_formats
    from tests.helpers import invoke

    source = tmp_path / "aliased.py"
    source.write_text(ALIASED)
    data = next(name for name in file_formats() if not get_format(name).executes_code_on_load)  # the ONNX format
    result = invoke("export", "--model", f"{source}:make", "--shape", "1x3x8x8", "--format", data, "--static",
                    "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output


def test_a_legacy_export_whose_reads_cannot_be_traced_says_the_trace_failed(tmp_path):
    """The same aliased model exported by the legacy ONNX exporter is refused (its reads check traces it with
    torch.jit.trace, which refuses a buffer held under two names, and a failed trace counts as a read): it was told it
    "read the input's values as a Python value", a read nobody saw. The refusal names the failed trace now."""
    from exporter.formats import file_formats
    from exporter.formats.onnx import OPSETS, OnnxOptions
    from tests.helpers import invoke

    source = tmp_path / "aliased.py"
    source.write_text(ALIASED)
    data = next(name for name in file_formats() if not get_format(name).executes_code_on_load)  # the ONNX format
    legacy = next(name for name in OPSETS if name != OnnxOptions().exporter)
    result = invoke("export", "--model", f"{source}:make", "--shape", "1x3x8x8", "--format", data, "--static",
                    "--onnx-exporter", legacy, "--out", tmp_path / "out")
    assert result.exit_code != 0 and "could not be traced again" in result.output, result.output
    assert "read the input's values" not in result.output, result.output
