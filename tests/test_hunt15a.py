"""Hunt 15a: the README's commands run as a new user copies them (each defect has a test here)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from tests.conftest import cuda_available
from tests.helpers import invoke

REPO = Path(__file__).resolve().parent.parent
TINY_FACTORY = f"{REPO / 'tests' / 'data' / 'tiny.py'}:make"
LONG = "a-folder-name-long-enough-that-any-line-naming-it-passes-eighty-columns"


def test_a_matrix_report_path_with_brackets_is_written_and_named(tmp_path):
    """Before: `verify matrix ... --json 'out[/]x.json'` ran every cell (all agreed), wrote the report, then printed
    `wrote <path>` as rich markup: "unexpected MarkupError: closing tag '[/]' ... has nothing to close", exit 2.
    A path with `[red]` in it lost those characters from the line. Now the path is shown as text and the exit code
    is the verdict's."""
    folder = tmp_path / "out[red]"
    folder.mkdir()
    target = folder / "m[bold].json"
    result = invoke("matrix", "--model", TINY_FACTORY, "--shape", "1x3x16x16", "--format", "onnx", "--onnx-exporter",
                    "torchscript", "--no-cache", "--json", target)  # the path printed, not the file, is the subject
    assert result.exit_code == 0, result.output
    assert target.is_file()
    assert f"wrote {target}" in result.stderr and "unexpected" not in result.output


def test_reduce_check_prints_its_verdict_on_one_line(tmp_path, monkeypatch):
    """Before: in a pipe or a CI log (rich's 80 columns) `verify reduce --check piece.onnx` wrapped its verdict:
    "✗ reproduces: piece.onnx alone under ONNX Runtime is 2322x its float32 floor" and, on a line of its own, "from
    the reference output (channel 5), beyond 5x" (the README shows one line; `grep reproduces` got half)."""
    import verify.explain.reduce as reduce_module
    from verify.explain.reduce import PieceCheck
    from verify.judge.compare import AUTO_FACTOR

    monkeypatch.delenv("COLUMNS", raising=False)
    piece = tmp_path / LONG / "piece.onnx"
    piece.parent.mkdir()
    piece.write_bytes(b"")
    checked = PieceCheck(piece, ratio=AUTO_FACTOR * 400, factor=AUTO_FACTOR, channel=5)
    monkeypatch.setattr(reduce_module, "check_piece", lambda path, factor: checked)
    result = invoke("reduce", "--check", piece)
    assert result.exit_code == 1, result.output
    assert result.stdout.strip() == f"✗ {checked.text()}", result.stdout


def test_the_isolated_layers_list_is_one_line_each_and_names_are_text():
    """Before: `explain --isolate` / `reduce` wrapped each line of the list at 80 columns in a pipe (the README's
    "✗ isolated: 1 of 38 layers differ on their own (each re-run on resnet18:batch:body (eager)'s float64 inputs,
    judged on its own floor):" came out as two lines), and a module name (read from an ONNX file's scopes) was
    printed with rich's `escape` only: an ESC or a newline in it reached the terminal."""
    from rich.console import Console

    from verify.judge.layers import Isolation, LayerError
    from verify.render.layers import render_isolation

    buffer = io.StringIO()
    console = Console(file=buffer, width=80, force_terminal=False, color_system=None)
    layer = LayerError(module="layer2.0.conv2\n✓ forged\x1b[2J", call=0, ratio=2322.0, max_abs=3.51e-4, floor=1e-7,
                       fused_with=["layer2.0.bn2"], channel=5)
    result = Isolation(reference=f"{LONG}:batch:body (eager)", candidate="bad.onnx", factor=5.0, layers=[layer],
                       outside=["Add", "Add"])
    render_isolation(result, console)
    lines = buffer.getvalue().splitlines()
    assert lines[0].startswith("✗ isolated: 1 of 1 layers differ") and lines[0].endswith("judged on its own floor):")
    assert lines[1].startswith("  • layer2.0.conv2 ✓ forged\\x1b[2J (computed with layer2.0.bn2): 2322x")
    assert lines[1].endswith("channel 5)")
    assert "\x1b" not in buffer.getvalue() and len(lines) == 3, lines


@pytest.mark.skipif(cuda_available(), reason="checks a machine without CUDA")
def test_preflight_on_cuda_without_a_gpu_is_exit_2_before_any_check(tmp_path):
    """Before: `verify preflight FOLDER --provider cuda --runtime torchscript` on a machine with no GPU ran the
    integrity checks, then refused the unsigned TorchScript file: NO-GO, exit 1 (the README: "CUDA asked for and not
    given is exit 2"; with ONNX Runtime it was exit 2, after hashing every file). Now one line naming --provider,
    exit 2, before any check (an empty folder shows nothing was read)."""
    folder = tmp_path / "folder"
    folder.mkdir()
    result = invoke("preflight", folder, "--provider", "cuda", "--runtime", "torchscript")
    assert result.exit_code == 2, result.output
    assert "CUDA is not available" in result.stderr and "--provider cpu" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not result.stdout.strip()


def test_export_model_with_weights_is_refused_before_the_factory_runs(tmp_path):
    """Before: `verify export --model my.py:make --weights w.safetensors` started the worker and the build
    ("✗ Building my.py:make" on stderr) before refusing --weights; the README says every option is checked before any
    model is built. Now one line, exit 2, and the factory's file is never imported."""
    sentinel = tmp_path / "imported"
    source = tmp_path / "mine.py"
    source.write_text("import pathlib\n"
                      f"pathlib.Path({str(sentinel)!r}).write_text('ran')\n"
                      "def make():\n    import torch\n    return torch.nn.Conv2d(3, 4, 3)\n")
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"\0" * 8)
    result = invoke("export", "--model", f"{source}:make", "--weights", weights, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().startswith("error: --weights") and "Building" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert not sentinel.exists() and not (tmp_path / "out").exists()



def test_list_names_the_whole_detectors_on_one_line_each(monkeypatch):
    """Before: `verify list` ("prints the registries", README) named no whole detector, though `-b` takes six, and in a
    pipe it wrapped the backbones at 80 columns (`verify list | grep wide_resnet50_2` printed a line without
    "backbones:"). Now a `detectors` line, every registry line whole."""
    from exporter.backbones import list_backbones
    from exporter.families.detectors import list_detectors

    monkeypatch.delenv("COLUMNS", raising=False)
    result = invoke("list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert f"backbones: {', '.join(list_backbones())}" in lines
    detectors = next(line for line in lines if line.startswith("detectors"))
    assert all(name in detectors.split(": ", 1)[1].split(", ") for name in list_detectors())


@pytest.mark.parametrize("option", [("--seed", "5"), ("--shape", "1x3x8x8"), ("--no-normalize",), ("--timeout", "5"),
                                    ("--input", "x.npy"), ("--weights", "w.safetensors")])
def test_reduce_check_refuses_the_options_it_would_ignore(tmp_path, monkeypatch, option):
    """Before: `verify reduce --check piece.onnx --input x.npy` (or --seed, --shape, --weights, --no-normalize,
    --timeout) checked the piece on the inputs its .npz stores, said "✗ reproduces" and exited 1, each option silently
    dropped. Now refused (exit 2, one line) before the piece is read; --factor still applies."""
    import numpy as np

    import verify.explain.reduce as reduce_module

    piece = tmp_path / "piece.onnx"
    piece.write_bytes(b"")
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 8, 8), np.float32))
    (tmp_path / "w.safetensors").write_bytes(b"\0" * 8)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(reduce_module, "check_piece", lambda *args: pytest.fail("the piece was checked"))
    result = invoke("reduce", "--check", piece, *option)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: --check runs the piece on the inputs stored in its .npz, so {option[0]}")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("option", [("--timeout", "5"), ("--no-normalize",)])
def test_explain_of_detectors_refuses_the_options_it_would_ignore(tmp_path, option):
    """Before: `verify explain fasterrcnn_mobilenet_v3_large_320_fpn:frozen ...:frozen --input p.png --timeout 5
    --no-normalize` explained the detectors (16 s, "✓ equivalent", exit 0): a detector runs no user code and its images
    are always read in [0, 1] for its own transform, so both options were dropped without a word (`verify export -b
    <detector>` refuses them). Now one line, exit 2, before any detector is built."""
    from PIL import Image

    image = tmp_path / "p.png"
    Image.new("RGB", (40, 32)).save(image)
    name = "fasterrcnn_mobilenet_v3_large_320_fpn"
    result = invoke("explain", f"{name}:frozen", f"{name}:frozen", "--input", image, *option)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {option[0]} does not apply to whole detectors")
    assert len(result.stderr.strip().splitlines()) == 1 and not result.stdout


def test_explain_isolate_that_re_ran_no_layer_is_not_exit_0(tmp_path):
    """Before: `verify explain model.onnx f.py:conv --isolate` on a file whose graph names no module (a bare Conv2d
    factory) printed "! isolated: no layer of model.onnx was re-run" and exited 0: the isolation asked for was never
    done, yet the exit said every check passed (`verify reduce` refuses the same pair, exit 2; `--layers` fails it,
    exit 1). Now exit 1, as when a layer could not run; the outputs' verdict ("equivalent") is unchanged."""
    import json

    source = tmp_path / "bare.py"
    source.write_text("import torch\n\ndef conv():\n    return torch.nn.Conv2d(3, 4, 3)\n")
    factory = f"{source}:conv"
    exported = invoke("export", "--model", factory, "--shape", "1x3x16x16", "--format", "onnx", "--no-cache",
                      "--out", tmp_path / "out")
    assert exported.exit_code == 0, exported.output
    report = tmp_path / "explain.json"
    result = invoke("explain", tmp_path / "out" / "bare-conv" / "model.onnx", factory, "--shape", "1x3x16x16",
                    "--isolate", "--json", report)
    data = json.loads(report.read_text())
    assert data["equivalent"] and not data["isolation"]["layers"], data["isolation"]
    assert result.exit_code == 1, result.output
    assert "no layer of" in result.stdout and "was re-run" in result.stdout


@pytest.mark.parametrize("args", [
    ("export", "-b", "resnet18", "--shape", "1x3x32x32"),
    ("compare", "resnet18:frozen:body", "resnet18:batch:body"),
    ("explain", "resnet18:frozen:body", "resnet18:batch:body"),
    ("explain",),
    ("reduce", "resnet18:frozen:body", "resnet18:batch:body", "--out", "piece"),
])
def test_timeout_without_user_code_is_refused(tmp_path, monkeypatch, args):
    """Before: `verify export -b resnet18 --timeout 0.01 --shape 1x3x32x32 --format onnx` ran its 12 s and exited 0:
    --timeout stops the worker that runs a user's own code (--model, file.py:factory), and a registered backbone runs
    in this process, so it was silently ignored (so in compare, explain and reduce). Now one line, exit 2, before
    any model is built."""
    monkeypatch.chdir(tmp_path)
    result = invoke(*args, "--timeout", "0.01")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: --timeout 0.01 stops the worker that runs your own model's code")
    assert len(result.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


@pytest.mark.parametrize("option", [("-n", "batch"), ("--view", "fpn"), ("--weights", "w.safetensors")])
def test_matrix_of_models_only_refuses_a_backbone_option(tmp_path, monkeypatch, option):
    """Before: `verify matrix --model tiny.py:make -n batch` (or `--view fpn`) ran the model's cell and exited 0, the
    option dropped without a word (the README: "norms and views do not apply to it"); `--weights w.safetensors` ran
    the cell into an error after the work ("1 failed to run"). Now one line, exit 2, before any cell runs."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.safetensors").write_bytes(b"\0" * 8)
    result = invoke("matrix", "--model", TINY_FACTORY, "--shape", "1x3x16x16", "--no-cache", *option,
                    "--json", tmp_path / "m.json")
    assert result.exit_code == 2, result.output
    flag = "--norm" if option[0] == "-n" else option[0]
    assert result.stderr.startswith(f"error: {flag} applies to a registered backbone's cells")
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "m.json").exists()


def test_a_refused_negative_flag_is_named_as_given(tmp_path):
    """Before: `verify export -b fasterrcnn_mobilenet_v3_large_320_fpn --input p.png --no-normalize` said "error:
    --normalize is not supported for a whole detector yet ...; drop it": a flag the user never typed (and dropping
    `--normalize` changes nothing). The refusal now names `--no-normalize`."""
    from PIL import Image

    image = tmp_path / "p.png"
    Image.new("RGB", (40, 32)).save(image)
    result = invoke("export", "-b", "fasterrcnn_mobilenet_v3_large_320_fpn", "--input", image, "--no-normalize",
                    "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: --no-normalize is not supported for a whole detector"), result.stderr
