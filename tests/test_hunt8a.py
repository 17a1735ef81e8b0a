"""Hunt 8a: what a user feeds the verdict (inputs, tolerances) and what it prints (notes, reports).
Each test names what happened before its fix."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from exporter.errors import UsageError
from verify.cli import app
from verify.inputs import MAX_SAMPLES, SAMPLES_ENV, default_sample_count
from verify.judge.compare import AUTO_FACTOR, OutputComparison, PairResult, Tolerance, compare_arrays
from verify.judge.notes import REDUCED_PRECISION_RATIOS, explain_pair
from verify.settings import RunSettings

MODES = [Tolerance.from_options(decimal=3), Tolerance.from_options(rtol=1e-3), Tolerance()]


@pytest.mark.parametrize("tolerance", MODES, ids=lambda t: t.mode)
def test_complex_outputs_that_differ_in_their_imaginary_part_never_agree(tolerance):
    """Before: both sides were widened with `astype(float64)`, which drops the imaginary part, so outputs
    1+1j and 1+5j "agreed" in every mode (`verify compare m.py:a m.py:b --decimal 3` exit 0, max abs 0.0)
    where numpy.testing fails them. Now a complex output is refused in one line that says what to do."""
    actual = np.array([1 + 1j, 2 + 0j], dtype=np.complex64)
    desired = np.array([1 + 5j, 2 + 0j], dtype=np.complex64)
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(actual, desired, rtol=1e-3)
    with pytest.raises(UsageError, match="complex") as refused:
        compare_arrays("output0", actual, desired, tolerance, floor=1e-6)
    assert "view_as_real" in str(refused.value) and "\n" not in str(refused.value)
    with pytest.raises(UsageError, match="complex"):  # one complex side is enough
        compare_arrays("output0", actual.real.copy(), desired, tolerance, floor=1e-6)


def test_complex_output_through_the_cli_is_refused_not_passed(tmp_path):
    (tmp_path / "m.py").write_text(
        "import torch\n"
        "class M(torch.nn.Module):\n"
        "    def __init__(self, k):\n"
        "        super().__init__(); self.k = k; self.w = torch.nn.Parameter(torch.ones(1))\n"
        "    def forward(self, x):\n"
        "        return torch.complex(x * self.w, x * self.k)\n"
        "def a(): return M(1.0)\n"
        "def b(): return M(5.0)\n")
    model = tmp_path / "m.py"
    result = CliRunner().invoke(app, ["compare", f"{model}:a", f"{model}:b", "--shape", "1x3x8x8", "--samples", "1",
                                      "--decimal", "3", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 2, result.output
    assert "complex" in result.output and "unexpected" not in result.output
    report = json.loads((tmp_path / "r.json").read_text())  # a failure report, never a verdict (surface28)
    assert report["passed"] is False and report["exit_code"] == 2 and "complex" in report["error"]


@pytest.mark.parametrize("bad", ["²", "٣" * 3, "１"])
def test_a_samples_variable_of_non_ascii_digits_is_refused_in_one_line_before_any_work(bad, monkeypatch):
    """Before: `BACKBONE_VERIFY_SAMPLES=²` passed str.isdigit() and crashed int(): "unexpected ValueError" after
    5.3 s of loading both models; and any bad value was only read once a model had been built."""
    monkeypatch.setenv(SAMPLES_ENV, bad)
    with pytest.raises(UsageError, match=SAMPLES_ENV):
        default_sample_count()
    with pytest.raises(UsageError, match=SAMPLES_ENV):
        RunSettings()  # before any model is built
    RunSettings(samples=2)  # --samples wins over the variable
    monkeypatch.setenv(SAMPLES_ENV, str(MAX_SAMPLES))
    assert default_sample_count() == MAX_SAMPLES


def test_a_bad_samples_variable_stops_compare_before_loading(monkeypatch):
    monkeypatch.setenv(SAMPLES_ENV, "²")
    result = CliRunner().invoke(app, ["compare", "resnet18:batch:body", "resnet18:frozen:body", "--shape",
                                      "1x3x32x32"])
    assert result.exit_code == 2, result.output
    assert SAMPLES_ENV in result.output and "unexpected" not in result.output
    assert "Loading" not in result.output  # refused before either side was loaded


def test_a_note_quotes_the_per_output_size_for_the_output_not_for_its_worst_channel():
    """Before: `verify compare resnet18:frozen-eps0:body resnet18:frozen:body` printed `FAIL A vs B layer1[c=27]
    13689.6x floor` and then the note `A vs B: layer1[c=27] is 5944x the float32 noise floor`: the channel named
    with the per-output ratio (the reduced-precision sizes are per-output figures). Now the note names the output."""
    low, high = REDUCED_PRECISION_RATIOS["bf16"]
    output_ratio = (low + high) / 2
    worst = OutputComparison("layer1", [1, 4, 2, 2], [1, 4, 2, 2], passed=False, reason="out of tolerance",
                             max_abs=1.0, ratio=output_ratio * 3, channel=2, channel_floor=1e-5,
                             output_ratio=output_ratio)
    pair = PairResult("A", "B", [worst])
    report = type("R", (), {"settings": {"tolerance": Tolerance().to_dict(), "tolerance_text": "auto",
                                         "runtime": {"device": "cpu"}}})()
    note = explain_pair(pair, report)
    assert f"layer1 is {output_ratio:.0f}x its float32 noise floor" in note
    assert "[c=2]" not in note
    assert AUTO_FACTOR < output_ratio


def _report(tolerance: Tolerance):
    return type("R", (), {"settings": {"tolerance": tolerance.to_dict(), "tolerance_text": tolerance.describe(),
                                       "runtime": {"device": "cpu"}}})()


def test_a_pair_failing_only_a_tighter_factor_is_called_rounding_not_different_functions():
    """Before: `verify compare resnet18:batch:body resnet18:frozen:body --shape 1x3x32x32 --factor 1.1` failed
    A vs B at 1.2x and noted `layer3[c=31] is 1x its channel's float32 noise floor: beyond rounding, the two
    compute different functions`: the rounding bound was the user's --factor, not the calibrated AUTO_FACTOR."""
    tolerance = Tolerance.from_options(factor=AUTO_FACTOR / 4)
    ratio = AUTO_FACTOR / 2
    worst = OutputComparison("layer3", [1, 4, 2, 2], [1, 4, 2, 2], passed=False, reason="3 of 16 elements out of "
                             "tolerance", max_abs=1e-5, ratio=ratio, channel=1, channel_floor=1e-6,
                             output_ratio=ratio / 2, needed=f"factor>={ratio:.3g}")
    note = explain_pair(PairResult("A", "B", [worst]), _report(tolerance))
    assert "this is rounding" in note and f"{ratio:.1f}x" in note
    assert "different functions" not in note
    beyond = OutputComparison("layer3", [1, 4, 2, 2], [1, 4, 2, 2], passed=False, reason="x", max_abs=1e-3,
                              ratio=AUTO_FACTOR * 3, channel=1, channel_floor=1e-6, output_ratio=AUTO_FACTOR * 2)
    assert "different functions" in explain_pair(PairResult("A", "B", [beyond]), _report(tolerance))


def test_a_report_with_no_pairs_is_not_summarised_as_all_agreeing():
    """Before: the Markdown of a report with no pairs was titled ❌ but summarised `all 0 pairs agree`."""
    from verify.render.pairs import report_markdown, summary
    from verify.report import Report

    report = Report("compare", {"tolerance_text": Tolerance().describe()}, {})
    assert not report.passed
    assert summary(report) == "no pairs were judged"
    text = report_markdown(report)
    assert "all 0 pairs agree" not in text and "no pairs were judged" in text and "❌" in text


def test_no_normalize_without_an_image_is_refused_not_ignored(tmp_path):
    """Before: `--no-normalize` with seeded inputs or a .npy array ran and passed (exit 0): an option that
    changes nothing was silently ignored. Now it is one line before any model is built; a folder of arrays
    only is refused once its files are read, still before any model."""
    from verify.settings import settings_inputs

    array = tmp_path / "x.npy"
    np.save(array, np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(UsageError, match="--no-normalize"):
        RunSettings(normalize=False)
    with pytest.raises(UsageError, match="--no-normalize"):
        RunSettings(input_file=array, normalize=False)
    folder = tmp_path / "arrays"
    folder.mkdir()
    np.save(folder / "a.npy", np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(UsageError, match="--no-normalize") as refused:
        settings_inputs(RunSettings(input_file=folder, normalize=False))
    assert "\n" not in str(refused.value)
    assert settings_inputs(RunSettings(input_file=folder))[0].array.shape == (1, 3, 8, 8)  # the default is fine
    result = CliRunner().invoke(app, ["compare", "resnet18:batch:body", "resnet18:frozen:body", "--input", str(array),
                                      "--no-normalize"])
    assert result.exit_code == 2 and "--no-normalize" in result.output and "Loading" not in result.output


def test_no_normalize_with_an_image_still_gives_to_tensor_exactly(tmp_path):
    from PIL import Image

    from verify.settings import settings_inputs

    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.new("RGB", (8, 8), (255, 0, 51)).save(folder / "a.png")
    np.save(folder / "b.npy", np.zeros((1, 3, 8, 8), np.float32))
    first, _ = settings_inputs(RunSettings(input_file=folder, normalize=False))
    assert first.array[0, :, 0, 0].tolist() == pytest.approx([1.0, 0.0, 0.2])


@pytest.mark.parametrize("command", ["compare", "explain"])
@pytest.mark.parametrize("input_first", [True, False])
def test_a_report_over_the_input_file_is_refused_before_any_work(command, input_first, tmp_path):
    """Before: `verify compare A B --input x.npy --json x.npy` ran, passed and wrote its JSON over x.npy: the
    user's input array was destroyed (md5 changed, the file now began `{"schema_version"`)."""
    array = tmp_path / "x.npy"
    np.save(array, np.zeros((1, 3, 8, 8), np.float32))
    before = array.read_bytes()
    given = ["--input", str(array)]
    report = ["--json", str(tmp_path / "." / "x.npy")]
    result = CliRunner().invoke(app, [command, "resnet18:batch:body", "resnet18:frozen:body",
                                      *(given + report if input_first else report + given)])
    assert result.exit_code == 2, result.output
    assert "would overwrite the --input file" in result.output and "Loading" not in result.output
    assert array.read_bytes() == before


@pytest.mark.parametrize("flag", ["--json", "--junit", "--markdown"])
def test_a_report_inside_the_input_folder_is_refused_before_any_work(flag, tmp_path):
    """Before: `--input folder --markdown folder/r.md` wrote r.md into the folder, and the next run over the same
    folder was refused ("Input folder/r.md is neither a .npy array nor an image")."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    np.save(folder / "a.npy", np.zeros((1, 3, 8, 8), np.float32))
    result = CliRunner().invoke(app, ["compare", "resnet18:batch:body", "resnet18:frozen:body", "--input", str(folder),
                                      flag, str(folder / "report.out")])
    assert result.exit_code == 2, result.output
    assert "--input folder" in result.output
    assert sorted(p.name for p in folder.iterdir()) == ["a.npy"]


def test_a_report_beside_the_input_is_written(tmp_path):
    from verify.cli.options import apart_from_input

    array = tmp_path / "x.npy"
    np.save(array, np.zeros((1, 3, 8, 8), np.float32))
    apart_from_input(array, "--json", tmp_path / "x.npy.json")  # beside the file: fine
    apart_from_input(tmp_path, "--json", tmp_path.parent / "r.json")  # outside the folder: fine
    apart_from_input(None, "--json", array)


@pytest.mark.parametrize("kwargs", [{"rtol": 1e-3, "atol": 1e-5}, {"decimal": 3}, {"mode": "allclose", "factor": 50.0},
                                    {"mode": "decimal", "decimal": 3, "atol": 1.0}, {"mode": "auto", "atol": 1e-3}])
def test_a_tolerance_field_its_mode_does_not_read_is_refused(kwargs):
    """Before: `Tolerance(rtol=1e-3, atol=1e-5)` (the dataclass called as a Python user would, e.g. for the pytest
    plugin's `tolerance=`) was an auto tolerance that never read rtol/atol, and `Tolerance(decimal=3)` judged at
    the auto factor: the verdict was not the one asked for, silently."""
    with pytest.raises(UsageError, match="does not read") as refused:
        Tolerance(**kwargs)
    assert "from_options" in str(refused.value) and "\n" not in str(refused.value)


def test_every_tolerance_from_options_and_its_record_still_builds():
    from dataclasses import asdict

    for tolerance in [*MODES, Tolerance.from_options(factor=AUTO_FACTOR / 2), Tolerance.from_options(atol=1e-5)]:
        assert Tolerance(**asdict(tolerance)) == tolerance  # reports and matrix shards record every field


def test_a_reader_that_stops_reading_ends_the_display_not_the_run():
    """Before: rich's own broken-pipe handler raised SystemExit(1) at the first line written to a closed pipe."""
    import os

    from verify.render.console import make_console, print_line

    read, write = os.pipe()
    os.close(read)
    with os.fdopen(write, "w") as stream:
        console = make_console(file=stream)
        for _ in range(3):
            print_line(console, "ok   A vs B  layer1  1.0x floor")  # no SystemExit
        assert console.quiet


def test_a_passing_verdict_piped_into_head_exits_0_and_writes_its_report(tmp_path):
    """Before: `verify compare A B --json r.json | head -1` exited 1 (a disagreement's code) with no message and no
    r.json, for a verdict that agreed."""
    import subprocess
    import sys
    from pathlib import Path

    verify = Path(sys.executable).with_name("verify")
    report = tmp_path / "r.json"
    process = subprocess.Popen([str(verify), "compare", "resnet18:batch:body", "resnet18:frozen:body", "--shape",
                                "1x3x32x32", "--samples", "1", "--json", str(report)], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL)
    assert process.stdout is not None
    process.stdout.readline()
    process.stdout.close()
    assert process.wait(timeout=300) == 0
    assert report.exists()


def test_too_many_seeded_values_are_refused_before_any_model_is_built():
    """Before: `verify compare A B --samples 64 --shape 2x3x1024x1024` loaded both models (4.7 s) before saying
    the inputs were too many values; now RunSettings refuses it (0.5 s for the whole CLI call)."""
    import math

    from verify.inputs import MAX_SAMPLE_VALUES

    side = math.isqrt(MAX_SAMPLE_VALUES // MAX_SAMPLES // 3) + 1
    shape = (1, 3, side, side)
    assert MAX_SAMPLES * math.prod(shape) > MAX_SAMPLE_VALUES
    with pytest.raises(UsageError, match="seeded inputs"):
        RunSettings(shape=shape, samples=MAX_SAMPLES)
    RunSettings(shape=shape, samples=1)
    result = CliRunner().invoke(app, ["compare", "resnet18:batch:body", "resnet18:frozen:body", "--samples",
                                      str(MAX_SAMPLES), "--shape", "x".join(map(str, shape))])
    assert result.exit_code == 2 and "seeded inputs" in result.output and "Loading" not in result.output


def _matrix(cell_kwargs: dict):
    from verify.matrix import CellResult, MatrixResult

    good = OutputComparison("layer4", [1, 4, 2, 2], [1, 4, 2, 2], True, max_abs=1e-6, total=16, floor=1e-6,
                            ratio=1.0)
    pairs = [PairResult("onnxruntime", "eager", [good]).to_dict(), PairResult("eager", "oracle", [good], "oracle")
             .to_dict()]
    cell = CellResult("c0", "resnet18", "batch", "body", pairs=pairs, **cell_kwargs)
    tolerance = Tolerance()
    return MatrixResult({"run": {"tolerance": tolerance.to_dict()}, "tolerance_text": tolerance.describe()},
                        "f" * 16, [{"id": cell.id, "spec": cell.spec}], cells=[cell])


@pytest.mark.parametrize("cell_kwargs", [{"verdict": "disagree"},
                                         {"verdict": "disagree", "problems": ["eager is not deterministic"]}],
                         ids=["verdict-only", "problem"])
def test_a_failing_matrix_cell_whose_pairs_all_pass_is_a_fail_line_and_an_annotation(cell_kwargs):
    """Before: a cell judged `disagree` while every pair passed (the arrays' own verdict is kept over the re-judged
    numbers, verify/matrix/cell.py) printed only `ok` lines, so `grep '^FAIL'` missed it though the exit was 1,
    and under GitHub Actions neither it nor a cell's `not judged` problem got an annotation."""
    from verify.render.matrix_table import matrix_annotations, matrix_lines

    result = _matrix(cell_kwargs)
    assert result.exit_code == 1
    lines = matrix_lines(result)
    assert any(line.startswith("FAIL resnet18:batch:body") for line in lines), lines
    annotations = matrix_annotations(result)
    assert annotations and all(a.startswith("::error ") for a in annotations)
    assert len(annotations) == 1  # one, whichever says why
    assert not any(line.startswith("FAIL") for line in matrix_lines(_matrix({"verdict": "agree"})))
    assert matrix_annotations(_matrix({"verdict": "agree"})) == []


def test_an_annotation_for_a_nan_output_quotes_no_ratio():
    """Before: under GitHub Actions a pair whose output held NaN/Inf was annotated `out is 0.0x the noise floor;
    1 NaN, 1 Inf in b`: the ratio of the finite elements read as a near miss."""
    from verify.report import Report, pair_annotations

    actual = np.zeros((1, 2, 2, 2), np.float32)
    desired = actual.copy()
    desired[0, 0, 0, 0] = np.nan
    out = compare_arrays("out", actual, desired, Tolerance(), floor=1e-6)
    assert not out.passed and out.ratio == 0.0
    report = Report("compare", {"tolerance_text": Tolerance().describe()}, {}, pairs=[PairResult("A", "B", [out])])
    (annotation,) = pair_annotations(report)
    assert "NaN" in annotation and "x the noise floor" not in annotation


@pytest.mark.parametrize("name", ["\x1b[31mred.json", "r\n::error::forged.json", "r\u202egnp.json", "r\u2028x.json"],
                         ids=["escape", "newline", "bidi", "line-separator"])
@pytest.mark.parametrize("flag", ["--json", "--junit", "--markdown", "--out"])
def test_an_output_path_with_control_characters_is_refused_before_any_work(name, flag, tmp_path):
    """Before: `verify compare A B --json $'r\\n::error::forged.json'` wrote the report and printed `wrote r` and
    then `::error::forged.json` as a line of its own on stderr (a workflow command GitHub's runner obeys); an ESC
    in the name reached the terminal raw."""
    command = ["export", "-b", "resnet18"] if flag == "--out" else ["compare", "resnet18:batch:body",
                                                                     "resnet18:frozen:body"]
    result = CliRunner().invoke(app, [*command, flag, str(tmp_path / name)])
    assert result.exit_code == 2, result.output
    assert "control or format characters" in result.output and "\x1b" not in result.output
    assert "\n::error" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_two_identical_runs_holding_an_inf_are_deterministic():
    """Measured: a user model whose output holds one Inf (and one NaN) in the same place on every call was reported
    `B is not deterministic: the same input twice gave out inf apart` (its pairs already fail on the NaN/Inf: the
    diagnosis, not the verdict, is wrong), with a numpy RuntimeWarning on stderr."""
    from verify.judge.trust import output_differences

    run = np.array([1.0, np.inf, -np.inf, np.nan], np.float32)
    assert output_differences({"out": run}, {"out": run.copy()}) == {"out": 0.0}


def test_a_tighter_factor_names_no_rounding_layer_as_a_culprit():
    """Measured: `verify compare resnet18:batch:body resnet18:frozen:body --shape 1x3x32x32 --factor 1.1` noted
    `isolated: 4 of 58 layers ... differ on their own: layer2.1.bn2 1x its own floor`: rounding named as culprits."""
    result = CliRunner().invoke(app, ["compare", "resnet18:batch:body", "resnet18:frozen:body", "--shape",
                                      "1x3x32x32", "--samples", "1", "--factor", str(AUTO_FACTOR / 10)])
    assert result.exit_code == 1, result.output  # rounding fails a factor below 1, on any thread count
    assert "isolated:" in result.output and "differ on their own" not in result.output


@pytest.mark.parametrize("columns", ["0", "00"])
def test_columns_zero_still_shows_every_line(columns, monkeypatch):
    """Before: with COLUMNS=0 (a terminal or a pipe) `verify compare` printed nothing at all, not the verdict, not a
    FAIL line, not even an `error:` line: rich took it as a console zero columns wide."""
    import io

    from verify.render.console import FILE_WIDTH, make_console, print_line

    monkeypatch.setenv("COLUMNS", columns)
    buffer = io.StringIO()
    console = make_console(file=buffer)
    assert console.width == FILE_WIDTH
    print_line(console, "FAIL A vs B  layer1[c=27]  13689.6x floor  max abs 1.6e-02")
    assert "FAIL A vs B" in buffer.getvalue()
    monkeypatch.setenv("COLUMNS", "40")
    assert make_console(file=io.StringIO()).width == 40  # a real width is still honoured


def test_columns_zero_through_the_cli_prints_the_error(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "file").write_text("x")
    verify = Path(sys.executable).with_name("verify")
    done = subprocess.run([str(verify), "compare", "a", "b", "--json", str(tmp_path / "file" / "r.json")],
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "0"}, timeout=120)
    assert done.returncode == 2 and "error:" in done.stderr


def test_the_cli_the_library_and_the_manifest_take_one_decimal_range(tmp_path):
    """Before: the CLI took --decimal 0..20 while `Tolerance` and the manifest's schema took -10..20, though
    verify/bounds.py says the CLI and the library refuse the same values."""
    from exporter import manifest
    from verify import bounds
    from verify.judge import compare

    assert bounds.DECIMAL_RANGE == compare.DECIMAL_RANGE == manifest.DECIMAL_RANGE
    low = bounds.DECIMAL_RANGE[0]
    result = CliRunner().invoke(app, ["compare", "resnet18", "resnet18", "--shape", "1x3x32x32", "--samples", "1",
                                      "--decimal", str(low)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["compare", "resnet18", "resnet18", "--decimal", str(low - 1)])
    assert result.exit_code == 2 and "--decimal" in result.output
