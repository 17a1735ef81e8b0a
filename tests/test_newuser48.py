"""Newuser 48: a new user's first hour with the README, and bad input on the newest options. An export whose --out lay
inside its --input folder passed, and every later run with that --input refused the export folder as an input ("is a
directory, not a file"); `verify compare` of a file failing on a shape its own record takes cut the hint that says what
to do mid-word ("or export again traced a."). Each is a defect found by running the commands, with its test here."""

from __future__ import annotations

import numpy as np
import pytest
import typer

from exporter.artifacts import Artifact, ArtifactMeta
from exporter.errors import ArtifactError
from exporter.formats import FORMATS
from exporter.messages import MAX_MESSAGE
from tests.helpers import invoke
from verify.api import failed_on_its_own_shape
from verify.cli.options import out_apart_from_input
from verify.runtimes.torch_common import guard_hint


def _one_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


@pytest.fixture
def input_folder(tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    np.save(folder / "a.npy", np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32))
    return folder


@pytest.mark.parametrize("order", ["out first", "input first", "default out"])
def test_an_export_folder_inside_the_input_folder_is_refused_before_any_work(order, input_folder, monkeypatch):
    monkeypatch.chdir(input_folder)
    out = ["--out", str(input_folder / "exports")]
    given = {"out first": [*out, "--input", "."], "input first": ["--input", ".", *out],
             "default out": ["--input", "."]}[order]  # the default --out, artifacts, lies in the working folder
    result = invoke("export", "-b", "resnet18", *given)
    assert result.exit_code == 2, result.output
    line = _one_line(result.output)
    assert "inside the --input folder" in line and "pass --out outside it" in line, line
    assert sorted(p.name for p in input_folder.iterdir()) == ["a.npy"]


def test_an_export_folder_beside_an_input_file_is_still_taken(input_folder):
    # an --input file (not a folder) has no entries a later run would read: its folder may hold the export
    out_apart_from_input(input_folder / "a.npy", input_folder)
    out_apart_from_input(input_folder, input_folder.parent / "exports")  # beside the input folder, not in it
    with pytest.raises(typer.BadParameter, match="inside the --input folder"):
        out_apart_from_input(input_folder, input_folder / "exports")


def test_compare_names_what_to_do_when_a_file_fails_on_a_shape_it_records(tmp_path):
    traced, run = (1, 3, 32, 32), (1, 3, 16, 16)
    meta = ArtifactMeta(input_shape=list(traced), dynamic_axes={"0": "batch", "2": "height", "3": "width"},
                        dynamic_ranges={"2": [2, 32], "3": [2, 32]})
    path = tmp_path / ("a-long-folder-name-" * 6) / "model"
    artifact = Artifact(format=FORMATS.names()[-1], meta=meta, path=path)
    hint = guard_hint(meta, run)
    # the runtime's own message (verify/runtimes/torch_common.py): its label is the file's path, then torch's guard
    exc = ArtifactError(f"{path} failed on an input of shape {run}: Guard failed: 1 + (-1 + x.size()[3]) // 16 != 1"
                        f"{hint}")
    problem = failed_on_its_own_shape(artifact, [{"input": np.zeros(run, np.float32)}], exc)
    assert problem is not None
    advice = hint.rsplit(": ", 1)[-1]  # what to do: run it at the traced sizes, or export again
    assert advice in problem, problem
    assert str(path) not in problem  # the repeated "<file> failed on an input of shape ...", which pushed it out
    assert len(problem) <= 2 * MAX_MESSAGE


def test_a_guard_hint_claims_no_assumption_about_an_axis_traced_at_one():
    """Before: "(batch 1 where it traced 1: the trace assumed sizes above 1)", a claim its own figures contradict
    (newuser 48). An axis traced above 1 and run at 1 is still named."""
    from exporter.artifacts import ArtifactMeta
    from verify.runtimes.torch_common import guard_hint

    axes = {"0": "batch", "2": "height", "3": "width"}
    at_one = guard_hint(ArtifactMeta(input_shape=[1, 3, 32, 32], dynamic_axes=axes), (1, 3, 16, 16))
    assert "guard torch.export derived" in at_one and "assumed sizes above 1" not in at_one, at_one
    at_two = guard_hint(ArtifactMeta(input_shape=[2, 3, 32, 32], dynamic_axes=axes), (1, 3, 16, 16))
    assert "(batch 1 where it traced 2: the trace assumed sizes above 1)" in at_two, at_two
