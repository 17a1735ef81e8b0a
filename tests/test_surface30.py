"""Surface 30: surface 29's leftovers (explain's own call arguments, Tolerance's wrong types from the library, the
pytest plugin's earlier report outliving a failed argument check) and the CLI on a fresh machine or an odd CI (a
non-UTF-8 stdout, closed standard streams)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from exporter.errors import UsageError
from tests.helpers import invoke
from verify.judge.compare import FIELD_DEFAULTS, Tolerance

PASSING = {"schema_version": 1, "command": "export", "passed": True}


# ---------------------------------------------------------------------------------------------------------------
# explain checks progress, timeout and isolate at the call, as compare and verify_export do
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argument, value, error", [("progress", "x", TypeError), ("timeout", "5", TypeError),
                                                     ("timeout", math.nan, UsageError), ("timeout", -1.0, UsageError),
                                                     ("isolate", "no", TypeError)])
def test_explain_refuses_its_wrong_call_arguments_before_any_work(monkeypatch, argument, value, error):
    """Before: progress="x" failed with "'str' object has no attribute 'step'" inside the run; timeout="5", NaN or -1
    and isolate="no" ran the whole explanation."""
    import verify.explain.equivalence as equivalence

    def never(*_, **__):
        raise AssertionError("a side was loaded")

    monkeypatch.setattr(equivalence, "resolve_source", never)
    with pytest.raises(error, match=f"^{argument} must"):
        equivalence.explain("resnet18:frozen:body", "resnet18:frozen:body", **{argument: value})


# ---------------------------------------------------------------------------------------------------------------
# Tolerance: a wrong type from the library is a TypeError naming the field; the CLI still names its option
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda: Tolerance(rtol="1e-3"), lambda: Tolerance(mode="allclose", atol=None), lambda: Tolerance(factor=True),
    lambda: Tolerance.from_options(rtol="1e-3"), lambda: Tolerance.from_options(factor="5"),
    lambda: Tolerance(mode="decimal", decimal="3"), lambda: Tolerance.from_options(decimal="3"),
])
def test_tolerance_refuses_a_wrong_type_by_field_name(make):
    """Before: `Tolerance(rtol="1e-3")` was a UsageError naming `--rtol`, an option the library has not."""
    with pytest.raises(TypeError) as info:
        make()
    said = str(info.value)
    assert any(said.startswith(f"{field} must be") for field in FIELD_DEFAULTS), said
    assert "--" not in said and "\n" not in said


@pytest.mark.parametrize("option, value", [("--rtol", "x"), ("--rtol", "nan"), ("--atol", "-1"), ("--factor", "inf")])
def test_the_cli_still_names_its_option_for_a_bad_tolerance(monkeypatch, option, value):
    import verify.api

    def never(*_, **__):
        raise AssertionError("the run started")

    monkeypatch.setattr(verify.api, "compare", never)
    result = invoke("compare", "resnet18", "resnet18", option, value)
    assert result.exit_code == 2, result.output
    assert option in result.output and len(result.output.strip().splitlines()) == 1, result.output


# ---------------------------------------------------------------------------------------------------------------
# The pytest plugin claims its earlier report before its argument checks
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    import torch

    return torch.nn.Conv2d(3, 4, 3), torch.ones(1, 3, 8, 8)


@pytest.mark.parametrize("bad", [{"trace": "no"}, {"formats": []}, {"tolerance": "auto"}])
def test_a_plugin_call_that_fails_its_checks_leaves_no_earlier_passing_report(tmp_path, tiny, bad):
    """Before: the earlier run's passing `<name>-report.json` stayed beside the failed call (it was removed only once
    every argument had been checked)."""
    from exporter.user_model import ModuleSpec
    from verify.pytest_plugin import assert_exports_agree

    module, example = tiny
    report = tmp_path / f"{ModuleSpec.of(module, None, 'tiny').slug}-report.json"
    report.write_text(json.dumps(PASSING))
    with pytest.raises(pytest.fail.Exception, match="called wrongly"):
        assert_exports_agree(module, example, out=tmp_path, name="tiny", **bad)
    assert not report.exists()


def test_the_plugin_claims_only_a_report_of_this_tool(tmp_path, tiny):
    """The CLI's rule (verify/render/claim.py): a file at the report's path that is no report of this tool is the
    user's, and a call refused before its checks passed leaves it as it was; so does a call whose name is refused."""
    from exporter.user_model import ModuleSpec
    from verify.pytest_plugin import assert_exports_agree

    module, example = tiny
    notes = tmp_path / f"{ModuleSpec.of(module, None, 'tiny').slug}-report.json"
    notes.write_text("my own notes\n")
    with pytest.raises(pytest.fail.Exception):
        assert_exports_agree(module, example, out=tmp_path, name="tiny", trace="no")
    assert notes.read_text() == "my own notes\n"
    report = tmp_path / f"{ModuleSpec.of(module).slug}-report.json"
    report.write_text(json.dumps(PASSING))
    with pytest.raises(pytest.fail.Exception):
        assert_exports_agree(module, example, out=tmp_path, name=3)
    assert report.exists()


# ---------------------------------------------------------------------------------------------------------------
# A fresh machine: a stdout that cannot encode the check mark, closed standard streams
# ---------------------------------------------------------------------------------------------------------------


def _verify(*args: str, env: dict[str, str] | None = None, close: tuple[int, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "verify", *args], capture_output=not close, text=True, timeout=60,
                          env={**os.environ, **(env or {})},
                          preexec_fn=(lambda: [os.close(fd) for fd in close]) if close else None)


def test_a_stdout_that_cannot_encode_a_character_shows_it_escaped(tmp_path):
    """Before: under PYTHONIOENCODING=ascii (or LC_ALL=C with PYTHONCOERCECLOCALE=0) a passing `verify compare` printed
    its table, then failed on the summary's check mark: exit 2, "unexpected UnicodeEncodeError"."""
    folder = tmp_path / "caché"
    done = _verify("cache", "info", "--cache-dir", str(folder), env={"PYTHONIOENCODING": "ascii"})
    assert (done.returncode, done.stderr) == (0, ""), done
    assert done.stdout.splitlines()[0] == f"cache: {str(folder).encode('ascii', 'backslashreplace').decode()}"


@pytest.mark.parametrize("close", [(1,), (2,), (0, 1, 2)])
def test_closed_standard_streams_end_in_the_commands_own_exit_code(tmp_path, close):
    """Before: with stdout closed (`verify ... >&-`) every command that finished ended in an AttributeError traceback
    and exit 1 (sys.stdout is None at exit). Now the command's own code: 0 for a list, 2 for a usage error."""
    assert _verify("list", close=close).returncode == 0
    assert _verify("list", "--bogus", close=close).returncode == 2
    report = tmp_path / "r.json"  # a file opened while fd 1 was closed took fd 1: now the null device holds it
    code = ("from verify.__main__ import _standard_streams_held\n_standard_streams_held()\n"
            f"with open({str(report)!r}, 'w') as handle:\n    handle.write(str(handle.fileno()))\n")
    done = subprocess.run([sys.executable, "-c", code], timeout=60, preexec_fn=lambda: [os.close(fd) for fd in close])
    assert done.returncode == 0 and int(report.read_text()) > 2



def test_a_report_on_a_full_disk_says_what_to_do_and_leaves_the_earlier_file_whole(tmp_path, monkeypatch):
    """Measured on a full 64 KiB tmpfs: `--json` there ended in "Cannot write ...: No space left on device", no advice.
    The earlier file stays whole and no temporary file is left beside it."""
    import errno

    import exporter.fsio as fsio

    path = tmp_path / "r.json"
    path.write_text("earlier\n")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fsio.os, "fsync", full)
    with pytest.raises(UsageError, match=r"No space left on device; free space there") as info:
        fsio.write_json(path, PASSING)
    assert "\n" not in str(info.value)
    assert path.read_text() == "earlier\n" and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_weight_shapes_of_a_scripted_file_prints_no_deprecation(tmp_path):
    """`verify compare`/`explain` on a TorchScript file printed torch's two-line `torch.jit.load is deprecated`
    FutureWarning: the floor bound's weight_shapes loaded it unwrapped (the runtime's loader silences it)."""
    import warnings

    import torch

    from exporter.formats.torchscript import TorchScriptFormat

    path = tmp_path / "m.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), str(path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shapes = TorchScriptFormat().weight_shapes(path)
    assert sorted(shapes) == [(2,), (2, 3)]
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []


def test_a_shape_given_as_four_words_says_to_join_them():
    """`verify export --shape 1 3 32 32` (the bench scripts' argparse form) said "Bad shape '1'; expected four
    positive sizes": the shell gave --shape its first word only. Now the message says to join them; one quoted value
    with spaces is read as the four sizes."""
    from exporter.spec import parse_shape
    from tests.helpers import invoke

    result = invoke("export", "-b", "resnet18", "--shape", "1", "3", "32", "32")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "joined by x" in result.output
    assert parse_shape("1 3 32 32") == parse_shape("1x3x32x32") == (1, 3, 32, 32)
    for bad in ("1xx3x3x3", "1 x 3 x 3 x 3"):  # still refused: spaces only separate whole sizes
        with pytest.raises(UsageError, match="Bad shape"):
            parse_shape(bad)


def test_an_argument_the_locale_cannot_decode_is_refused_first(tmp_path):
    """Under LC_ALL=C with PYTHONUTF8=0 (file names are ASCII), `--out 'art ü'` ran the eager runs, then failed in
    torch.jit.load ("incompatible function arguments"; the ONNX file was "not a readable ONNX model"): torch and onnx
    take paths as UTF-8 text. Now one line and exit 2 before anything runs, and nothing is created."""
    import subprocess
    import sys

    from verify.cli.app import undecodable_argument

    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    out = tmp_path.as_posix().encode() + b"/art \xc3\xbc"
    done = subprocess.run([sys.executable, "-m", "verify", "export", "-b", "resnet18", "--out", out],
                          env=env, capture_output=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.decode(errors="replace").strip().splitlines()
    assert len(lines) == 1 and "UTF-8 locale" in lines[0] and list(tmp_path.iterdir()) == []
    assert undecodable_argument(["a", "b\udcc3"]) is not None and undecodable_argument(["ü", "-b"]) is None
