"""Hunt 40: what a file holds beyond what is judged. A TorchScript file's second method (`infer`, `deploy`) passed
unsaid; an ONNX output one side alone has, listed first, was named but not its position; a .pt2 that stores one
buffer both as a weight and as a constant passed (module() reads one, a lowering the other: 17.0 off); a .pt2 whose
bytes were cut short said only "check the warnings above", with the warnings silenced; and `verify compare` of a
dynamic .pt2, 1 % off its model at a batch of one, passed at a batch of two without saying that one shape was
judged."""

from __future__ import annotations

import json
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from exporter.artifacts import TORCHSCRIPT_META_FILE
from exporter.errors import ArtifactError
from exporter.formats.pt2 import load_program, scan_archive
from exporter.manifest import GOLDENS_FORMAT, MANIFEST_NAME, file_sha256
from tests.data import hunt40_models
from tests.helpers import invoke
from verify.runtimes.torch_common import unjudged_methods

SHAPE = "1x3x16x16"
OTHER_METHODS = "also has methods deploy, infer (not run: only forward is judged)"


def _quiet(call, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's and torch.onnx's deprecation notices
        return call(*args, **kwargs)


def _script(model: torch.nn.Module, path: Path, extra: dict[str, str] | None = None) -> Path:
    _quiet(torch.jit.save, _quiet(torch.jit.script, model.eval()), str(path), _extra_files=extra or {})
    return path


def test_compare_names_a_torchscript_files_other_methods(tmp_path):
    torch.manual_seed(0)
    methods = _script(hunt40_models.with_methods(), tmp_path / "methods.pt")
    torch.manual_seed(0)
    plain = _script(hunt40_models.make(), tmp_path / "plain.pt")  # forward computes the same: the pairs agree
    result = invoke("compare", methods, plain, "--shape", SHAPE, "--samples", "1", "--no-layers")
    assert result.exit_code == 0, result.output
    assert f"methods.pt {OTHER_METHODS}" in result.output
    assert "plain.pt also has" not in result.output  # Net's forward calls its own `features`: not another door
    assert unjudged_methods(hunt40_models.make()) == []  # an eager model: forward alone


def _with_methods_file(folder: Path) -> None:
    """The folder's model.pt wrapped in a scripted module with `infer` and `deploy`, forward unchanged, saved with the
    file's own record and rehashed: a consistent folder whose file has two more doors."""
    extra = {TORCHSCRIPT_META_FILE: ""}
    loaded = _quiet(torch.jit.load, str(folder / "model.pt"), _extra_files=extra)

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = loaded

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return self.inner(x)

        @torch.jit.export
        def infer(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

        @torch.jit.export
        def deploy(self) -> None:
            pass

    (folder / "model.pt").unlink()
    _script(Wrapped(), folder / "model.pt", extra)
    data = json.loads((folder / MANIFEST_NAME).read_text())
    data["files"]["model.pt"].update(sha256=file_sha256(folder / "model.pt"), size=(folder / "model.pt").stat().st_size)
    (folder / MANIFEST_NAME).write_text(json.dumps(data, indent=2))


def _keep_only(folder: Path, name: str) -> None:
    """The folder with its model file `name` alone (the others, and their external data, removed and unlisted)."""
    data = json.loads((folder / MANIFEST_NAME).read_text())
    for other, entry in list(data["files"].items()):
        if other != name and entry["format"] != GOLDENS_FORMAT:
            del data["files"][other]
            (folder / other).unlink()
    (folder / MANIFEST_NAME).write_text(json.dumps(data, indent=2))


def test_artifact_names_a_torchscript_files_other_methods(default_export, tmp_path):
    from verify.folder.validate import validate

    assert unjudged_methods(_quiet(torch.jit.load, str(default_export / "model.pt"))) == []  # our own export
    folder = Path(shutil.copytree(default_export, tmp_path / default_export.name))
    _with_methods_file(folder)
    _keep_only(folder, "model.pt")  # the other files' checks cost seconds and say nothing here
    report = validate([folder], trust_unsigned_code=True)
    assert report.passed, report.summary
    notes = [check for check in report.checks if check.name == "model.pt: other methods"]
    assert len(notes) == 1 and notes[0].skipped and f"model.pt {OTHER_METHODS}" in notes[0].message, notes


def test_compare_says_where_an_output_one_side_alone_has_shifts_the_others(tmp_path):
    """An ONNX file listing `aux` before `out`, against one with `out` alone: judged on `out` by name (it agrees), and
    a consumer reading output 0 gets aux: a note, not a failure (a file may add outputs its consumers read by name)."""
    x = torch.randn(1, 3, 16, 16)
    for factory, names, name in ((hunt40_models.aux_first, ["aux", "out"], "aux.onnx"),
                                 (hunt40_models.out_only, ["out"], "out.onnx")):
        torch.manual_seed(0)
        model = factory()
        wrapped = model if names != ["out"] else _OutTensor(model)
        _quiet(torch.onnx.export, wrapped, (x,), str(tmp_path / name), input_names=["x"], output_names=names,
               dynamo=False)
    result = invoke("compare", tmp_path / "aux.onnx", tmp_path / "out.onnx", "--shape", SHAPE, "--samples", "1",
                    "--no-layers")
    assert result.exit_code == 0, result.output
    assert "A alone has aux" in result.output
    assert "A's output 0 is aux, B's is out" in " ".join(result.output.split()), result.output


class _OutTensor(torch.nn.Module):
    """OutOnly's dict as its one tensor (the ONNX exporter names it by `output_names`)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


class _Buffers(torch.nn.Module):
    """A conv, a buffer (saved as a weight) and a tensor constant (saved as a constant)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.register_buffer("shift", torch.full((1, 4, 1, 1), 0.5))
        self.const = torch.full((1, 4, 1, 1), 0.25)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.shift + self.const


def _edited_pt2(tmp_path: Path, change) -> Path:
    """A .pt2 of `_Buffers` with `change(entries)` applied to its archive's entries (name -> bytes)."""
    torch.manual_seed(0)
    program = _quiet(torch.export.export, _Buffers().eval(), (torch.randn(1, 3, 8, 8),))
    saved = tmp_path / "saved.pt2"
    _quiet(torch.export.save, program, str(saved))
    with zipfile.ZipFile(saved) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    change({name.split("/", 1)[1]: name for name in entries}, entries)
    edited = tmp_path / "edited.pt2"
    with zipfile.ZipFile(edited, "w", zipfile.ZIP_STORED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return edited


def test_a_pt2_storing_a_buffer_also_as_a_constant_is_refused(tmp_path):
    def twice(names, entries):
        weights = json.loads(entries[names["data/weights/model_weights_config.json"]])["config"]
        config = json.loads(entries[names["data/constants/model_constants_config.json"]])
        config["config"]["shift"] = {**weights["shift"], "path_name": "tensor_9"}
        entries[names["data/constants/model_constants_config.json"]] = json.dumps(config).encode()
        root = next(iter(names.values())).split("/", 1)[0]
        entries[f"{root}/data/constants/tensor_9"] = np.full(4, 9.0, np.float32).tobytes()

    edited = _edited_pt2(tmp_path, twice)
    program = _quiet(torch.export.load, str(edited))  # what a deployer's loaders read apart
    x = torch.ones(1, 3, 8, 8)
    assert (program.module()(x) - _quiet(program.run_decompositions).module()(x)).abs().max() > 1.0
    with pytest.raises(ArtifactError, match="'shift' both as a weight and as a constant"):
        scan_archive(edited)
    scan_archive(tmp_path / "saved.pt2")  # torch.export.save's own archive passes


def test_a_pt2_cut_short_says_why_it_cannot_load(tmp_path):
    def cut(names, entries):
        entries[names["data/constants/tensor_0"]] = entries[names["data/constants/tensor_0"]][:8]

    with pytest.raises(RuntimeError, match="out of bounds for storage of size 8"):
        load_program(_edited_pt2(tmp_path, cut))


def test_compare_says_a_dynamic_pt2_was_judged_at_one_shape(tmp_path):
    """Traced at a batch of two, `if x.shape[0] == 1` kept its other branch: the file is 1 % off its model at a batch
    of one, and passes at two. Compare judges the shape given, and now says the file takes others."""
    torch.manual_seed(0)
    model = hunt40_models.by_batch().eval()
    x = torch.randn(2, 3, 16, 16)
    program = _quiet(torch.export.export, model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", max=64)},))
    _quiet(torch.export.save, program, str(tmp_path / "dynamic.pt2"))
    one = torch.randn(1, 3, 16, 16)
    assert not torch.allclose(program.module()(one), model(one))  # the door: another function at a batch of one
    _quiet(torch.jit.save, _quiet(torch.jit.trace, model, (x,)), str(tmp_path / "traced.pt"))
    result = invoke("compare", tmp_path / "dynamic.pt2", tmp_path / "traced.pt", "--shape", "2x3x16x16",
                    "--samples", "1", "--no-layers")
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "A (dynamic.pt2) takes other sizes on its dynamic axes (axis 0) and was judged at 2x3x16x16 only" in said
    assert "B (traced.pt)" not in said  # a traced TorchScript file records no dynamic axes


def test_export_of_a_model_with_other_methods_says_they_were_not_run(tmp_path):
    """`verify export --model` scripts the model, so its file keeps `@torch.jit.export` methods: the export's report
    names them too, as compare's and artifact's do (run_stage's `notes`)."""
    result = invoke("export", "--model", f"{hunt40_models.__file__}:with_methods", "--shape", "1x3x8x8", "--format",
                    "torchscript", "--out", tmp_path / "out", "--no-cache", "--samples", "1")
    assert result.exit_code == 0, result.output
    assert f"model.pt {OTHER_METHODS}" in " ".join(result.output.split())
