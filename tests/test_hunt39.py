"""Hunt 39: files with more than one door. torch.jit.load returns a TorchScript file in the mode it was saved in, and
the runtime called .eval() before judging it: a file saved in training mode (its BatchNorm on each batch's statistics
as loaded, 2.5 off) passed `verify compare` and `verify artifact`, and `verify export` wrote and passed one for a
model whose `__prepare_scriptable__` returned `self.train()`. A `.pt2` of several programs, none named 'model', failed
in torch.export.load with "'model'" for its reason."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from exporter.errors import ArtifactError
from exporter.formats.pt2 import LOADED_PROGRAM, scan_archive
from exporter.formats.torchscript import TorchScriptFormat, training_readers
from tests.data import hunt39_models
from tests.helpers import invoke

MODELS = Path(hunt39_models.__file__)
SHAPE = "1x3x16x16"
TRAINING = "saved in training mode"


def _scripted(model: torch.nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notices
        return torch.jit.script(model)


def _save(module: torch.jit.ScriptModule, path: Path, extra: dict[str, str] | None = None) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(module, str(path), _extra_files=extra or {})
    return path


def test_a_file_saved_in_training_mode_is_refused_by_compare(tmp_path):
    torch.manual_seed(0)
    path = _save(_scripted(hunt39_models.training()), tmp_path / "train.pt")
    honest = _save(_scripted(hunt39_models.make()), tmp_path / "eval.pt")  # a file, not a factory: no worker to start
    assert invoke("compare", honest, honest, "--shape", SHAPE, "--samples", "1", "--no-layers").exit_code == 0
    result = invoke("compare", path, honest, "--shape", SHAPE, "--samples", "1", "--no-layers")
    assert result.exit_code == 2, result.output
    assert TRAINING in result.output and "norm (BatchNorm2d)" in result.output


def test_training_mode_is_refused_only_where_code_reads_it():
    convs = _scripted(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).train())
    assert training_readers(convs) == []  # computes the same in either mode
    assert training_readers(_scripted(hunt39_models.make())) == []  # eval: nothing to refuse
    assert training_readers(_scripted(hunt39_models.training())) == ["norm (BatchNorm2d)"]


def test_a_model_scripted_in_training_mode_is_not_exported(tmp_path):
    """Through the format's own export (`verify export --model tests/data/hunt39_models.py:flips --format torchscript`
    exits 2 with this line; before, exit 0 and a file 2.5 off the judged model as loaded)."""
    from types import SimpleNamespace

    from exporter.artifacts import ArtifactMeta
    from exporter.errors import ExportError
    from exporter.formats import ExportContext
    from exporter.formats.torchscript import TorchScriptOptions

    built = SimpleNamespace(model=hunt39_models.flips(), spec="flips")
    ctx = ExportContext(built=built, example=torch.randn(1, 3, 16, 16), meta=ArtifactMeta())
    with pytest.raises(ExportError, match="gave a module in training mode"):
        TorchScriptFormat().export(ctx, TorchScriptOptions(), tmp_path / "model.pt")
    assert not (tmp_path / "model.pt").exists()


def _archive(path: Path, programs: list[str]) -> Path:
    """A zip laid out as a torch.export archive holding only programs' names: the scan reads names first."""
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        for name in programs:
            archive.writestr(f"a/models/{name}.json", "{}")
    return path


def test_a_pt2_whose_programs_are_all_named_otherwise_is_refused_in_one_line(tmp_path):
    """Before: `verify compare` of `package_pt2(..., exported_programs={"zzz": ep, "aaa": ep})` said "cannot be
    loaded by torch.export.load: 'model'"; torch.export.load returns the program named 'model', the one judged."""
    with pytest.raises(ArtifactError, match=f"'zzz', 'aaa' and none named '{LOADED_PROGRAM}'.*torch.export.save"):
        scan_archive(_archive(tmp_path / "two.pt2", ["zzz", "aaa"]))
    with pytest.raises(ArtifactError, match=f"{LOADED_PROGRAM}_weights_config.json is missing"):  # goes on
        scan_archive(_archive(tmp_path / "both.pt2", [LOADED_PROGRAM, "aaa"]))
