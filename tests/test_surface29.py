"""The CLI's and the library's edges (surface 29): an earlier run's report never outlives the first moment of a run
that names its path (verify/render/claim.py), every entry point ends a Ctrl-C or SIGTERM while the CLI loads in one
line and 130 or 143 (`python -m verify.cli` included), paths that cannot be written or shown are refused while
parsing, and the library's RunSettings refuses wrong types and empty values by field at construction."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import invoke
from verify.cli.options import REPORT_FLAGS
from verify.render import failure_json
from verify.render.claim import REPORT_OPTIONS, STEP_SUMMARY, claim_report_paths, is_earlier_report

ROOT = Path(__file__).resolve().parents[1]
PASSING = {"schema_version": 1, "command": "export", "passed": True}


def earlier_reports(folder: Path) -> dict[str, Path]:
    """A report of each kind an earlier run wrote, as this tool writes them (JSON, JUnit, Markdown, HTML)."""
    folder.mkdir(exist_ok=True)
    texts = {"r.json": json.dumps(PASSING, indent=2),
             "r.xml": '<?xml version="1.0" encoding="utf-8"?>\n<testsuites name="verify export" tests="1"/>',
             "r.md": "## ✅ verify export\n", "r.html": "<!DOCTYPE html>\n<html><head><title>verify matrix: ok</title>"}
    paths = {}
    for name, text in texts.items():
        (folder / name).write_text(text, encoding="utf-8")
        paths[name] = folder / name
    return paths


def test_report_options_are_every_cli_option_that_writes_a_report():
    """The claim reads the command line before the CLI loads, so it names the report options itself: the same set."""
    assert set(REPORT_OPTIONS) == set(REPORT_FLAGS.values())


def test_the_claim_removes_earlier_reports_and_nothing_the_run_reads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    reports = earlier_reports(tmp_path / "old")
    argv = ["export", "-b", "resnet18", "--json", str(reports["r.json"]), f"--junit={reports['r.xml']}",
            "--markdown", str(reports["r.md"]), "--html", str(reports["r.html"])]
    assert all(is_earlier_report(path) for path in reports.values())
    assert sorted(claim_report_paths(argv)) == sorted(reports.values())
    assert not any(path.exists() for path in reports.values())

    kept = earlier_reports(tmp_path / "kept")
    model = tmp_path / "model.onnx"
    model.write_bytes(b"\x08\x07onnx")  # not a report: left to the run's own checks, which refuse or replace it
    summary = tmp_path / "summary.md"
    summary.write_text("## ✅ an earlier step\n", encoding="utf-8")
    monkeypatch.setenv(STEP_SUMMARY, str(summary))
    cases = [
        ["matrix", "merge", str(kept["r.json"]), "s2.json", "--json", str(kept["r.json"])],  # a shard being merged
        ["artifact", str(tmp_path / "kept"), "--junit", str(kept["r.xml"])],  # inside the folder being checked
        ["compare", "a.onnx", "b.onnx", "--json", str(model)],
        ["export", "--markdown", str(summary)],  # $GITHUB_STEP_SUMMARY is appended to, never removed
        ["export", "--json", str(kept["r.json"]), "--help"],  # help runs nothing
        ["export", "--", "--json", str(kept["r.json"])],  # after `--`, an argument
        ["export", "--html", str(kept["r.html"]), "--model", f"{kept['r.html']}:make"],  # a model's own file
    ]
    for argv in cases:
        assert claim_report_paths(argv) == [], argv
    assert all(path.exists() for path in [*kept.values(), model, summary])


def test_failure_reports_read_as_earlier_reports(tmp_path):
    """A failure report left by an earlier run is an earlier run's report too: never mistaken for this run's."""
    path = tmp_path / "r.json"
    path.write_text(json.dumps(failure_json("export", "terminated (SIGTERM)", 143)))
    assert is_earlier_report(path)
    path.write_text(json.dumps({"passed": "yes"}))  # no true or false verdict: not ours
    assert not is_earlier_report(path)


INTERRUPTING_IMPORT = """
import os, signal, sys
class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == WHERE:
            sys.meta_path.remove(self)
            # sent and raised inside exec'd source (as a dataclass's generated __init__ is): CPython marks the
            # KeyboardInterrupt "unhandled" there, though it is caught; a normal exit then died by SIGINT
            exec("os.kill(os.getpid(), SIGNAL)\\nfor _ in range(10**8):\\n    pass", {"os": os, "SIGNAL": SIGNAL})
        return None
sys.meta_path.insert(0, Interrupt())
"""


def _script_entry() -> str:
    script = re.search(r'^verify = "([\w.]+):(\w+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert script, "pyproject.toml [project.scripts] names no verify = \"module:function\""
    return f"from {script.group(1)} import {script.group(2)} as entry\nentry()"


@pytest.mark.parametrize("entry, signum, where", [("the verify script", signal.SIGTERM, "verify.cli.commands"),
                                                  ("the verify script", signal.SIGTERM, "verify.render.claim"),
                                                  ("python -m verify.cli", signal.SIGTERM, "verify.cli.commands"),
                                                  ("python -m verify.cli", signal.SIGINT, "verify.cli.commands")])
def test_a_signal_while_the_cli_loads_is_one_line_and_no_earlier_report_stays(tmp_path, entry, signum, where):
    """Before: a SIGTERM there killed the process silently (-15), beside the earlier run's passing out.json; under
    `python -m verify.cli` a Ctrl-C was a traceback and death by SIGINT (-2); and a signal that landed in exec'd source
    exited -2 after its one line. Now the line, 130 or 143, and no earlier report at the path, also where the signal
    landed in the claim's own import."""
    report = tmp_path / "out.json"
    report.write_text(json.dumps(PASSING))
    hook = f"SIGNAL = {int(signum)}\nWHERE = {where!r}\n{INTERRUPTING_IMPORT}"
    args = ["export", "-b", "resnet18", "--json", str(report)]
    env = dict(os.environ)
    if entry == "python -m verify.cli":  # the hook must be in place before Python imports the package
        (tmp_path / "sitecustomize.py").write_text(hook)
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), *filter(None, [env.get("PYTHONPATH")])])
        command = [sys.executable, "-m", "verify.cli", *args]
    else:
        command = [sys.executable, "-c", f"{hook}\nsys.argv = ['verify', *{args!r}]\n{_script_entry()}\n"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    line = "error: terminated (SIGTERM)\n" if signum == signal.SIGTERM else "error: interrupted\n"
    assert (done.returncode, done.stderr, done.stdout) == (128 + signum, line, ""), done
    assert not report.exists()


def test_every_help_imports_nothing_heavy():
    """`--help` of every command and group: no torch, numpy, onnx or onnxruntime imported to print it."""
    code = ("import sys, typer\nfrom typer.testing import CliRunner\nfrom verify.cli import app\n"
            "def walk(command, path):\n    yield path\n"
            "    for name, sub in getattr(command, 'commands', {}).items():\n"
            "        yield from walk(sub, [*path, name])\n"
            "root = typer.main.get_command(app)\n"
            "codes = [CliRunner().invoke(app, [*p, '--help']).exit_code for p in walk(root, [])]\n"
            "print(len(codes), set(codes), sorted(m for m in ('torch', 'numpy', 'onnx', 'onnxruntime', 'torchvision') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    count, rest = done.stdout.strip().splitlines()[-1].split(" ", 1)
    assert rest == "{0} []", done.stdout
    assert int(count) >= 12, done.stdout  # the app, every command, the matrix and cache groups and theirs


def _refused_before_any_run(monkeypatch, *args):
    import verify.api

    def never(*_, **__):
        raise AssertionError("the run started")

    monkeypatch.setattr(verify.api, "verify_export", never)
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output, result.output
    return result.output


def test_a_report_name_or_path_longer_than_the_file_system_takes_is_refused_while_parsing(tmp_path, monkeypatch):
    """Before: `verify export --json <300-byte name>` (or a 5000-byte path) ran the whole export, then failed to
    write its report: exit 2, "File name too long"."""
    name_max, path_max = os.pathconf(tmp_path, "PC_NAME_MAX"), os.pathconf(tmp_path, "PC_PATH_MAX")
    long_name = tmp_path / ("r" * (name_max + 1))
    said = _refused_before_any_run(monkeypatch, "export", "-b", "resnet18", "--json", long_name)
    assert f"{name_max + 1} bytes, more than the {name_max}" in said
    deep = tmp_path.joinpath(*["d" * 200] * (path_max // 200 + 1))
    said = _refused_before_any_run(monkeypatch, "export", "-b", "resnet18", "--out", deep)
    assert f"more than the {path_max - 1} this system allows" in said
    _refused_before_any_run(monkeypatch, "export", "-b", "resnet18", "--json", tmp_path / ("r" * name_max))  # fits:
    # refused for another reason only where the run would start (the monkeypatched export)


def test_the_cache_folder_is_shown_as_text_and_refused_with_control_characters(tmp_path, monkeypatch):
    """Before: $BACKBONE_VERIFY_CACHE_DIR holding a newline printed a second line of its own (`::error::...`, a
    GitHub workflow command), `[red]` in it was eaten as markup, and `--cache-dir $'a\\nb'` was taken. Now the
    variable is refused as the option is, and a plain name is shown as text."""
    from verify.cache import ENV_DIR

    monkeypatch.setenv(ENV_DIR, str(tmp_path / "a [red]x[/]"))
    result = invoke("cache", "info")
    assert result.exit_code == 0, result.output
    assert "a [red]x[/]" in result.output.splitlines()[0]
    monkeypatch.setenv(ENV_DIR, str(tmp_path / "a\n::error::forged"))
    result = invoke("cache", "info")
    assert result.exit_code == 2 and ENV_DIR in result.output, result.output
    assert not any(line.startswith("::error::") for line in result.output.splitlines()), result.output
    monkeypatch.delenv(ENV_DIR)
    for path in ("a\nb", "a\u202eb"):
        for command in (["cache", "info"], ["cache", "clear"]):
            result = invoke(*command, "--cache-dir", path)
            assert result.exit_code == 2 and "control or format characters" in result.output, result.output


@pytest.mark.parametrize("field, value, error, said", [
    ("tf32", "yes", TypeError, "runtime.tf32 must be True, False or None"),
    ("precision", 32, TypeError, "runtime.precision must be one of"),
    ("precision", "fp8", "usage", "runtime.precision must be one of"),
    ("dtype", "float16", "usage", "runtime.dtype must be one of"),
    ("device", 0, TypeError, "runtime.device must be 'cpu' or 'cuda'"),
])
def test_run_settings_refuse_a_runtimes_wrong_field_at_construction(field, value, error, said):
    """Before: RunSettings took each without a word (device 0 was refused, as an unknown device)."""
    from exporter.errors import UsageError
    from verify.runtimes import RuntimeOptions
    from verify.settings import RunSettings

    with pytest.raises(UsageError if error == "usage" else error, match=re.escape(said)):
        RunSettings(runtime=RuntimeOptions(**{field: value}))


@pytest.mark.parametrize("field, value, said", [
    ("weights", "", "weights is empty"),
    ("weights", " ", "weights is empty"),
    ("input_file", "", "input_file is empty"),  # Path("") is the working folder, read as the inputs
    ("weights", "FOLDER", "is a directory, not a file"),
])
def test_run_settings_refuse_empty_sources_and_a_folder_as_weights(tmp_path, field, value, said):
    from exporter.errors import UsageError
    from verify.settings import RunSettings

    with pytest.raises(UsageError, match=re.escape(said)):
        RunSettings(**{field: str(tmp_path) if value == "FOLDER" else value})


def test_typer_is_not_needed_to_claim(tmp_path):
    """The claim runs before the CLI loads: it imports no third-party package."""
    code = "import sys\nfrom verify.render.claim import claim_report_paths\nclaim_report_paths(['--json', 'x'])\n" \
           "print(sorted(m for m in ('typer', 'click', 'rich', 'numpy', 'exporter') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done


def test_a_report_where_the_run_creates_a_folder_is_refused_before_any_work(tmp_path, monkeypatch):
    """Before: `verify export --out o --json o` exported and judged (20 s), then "Cannot write o: it is a directory",
    exit 2; the same for a report at the cache folder, which the run creates too."""
    import verify.detect.check
    import verify.matrix
    from exporter.families.detectors import list_detectors

    def never(*_, **__):
        raise AssertionError("the run started")

    monkeypatch.setattr(verify.matrix, "run_matrix", never)
    monkeypatch.setattr(verify.detect.check, "verify_detector", never)
    monkeypatch.chdir(tmp_path)
    detector = list_detectors()[0]
    for args, said in [
        (["export", "-b", "resnet18", "--out", "o", "--json", "o"], "the export folder"),
        (["export", "-b", "resnet18", "--out", "o/deeper", "--junit", "o"], "the export folder"),
        (["export", "-b", "resnet18", "--cache-dir", "c", "--markdown", "c"], "the cache folder"),
        (["matrix", "-b", "resnet18", "--cache-dir", "c", "--html", "c"], "the cache folder"),
        (["export", "-b", detector, "--out", "o", "--json", "o"], "the export folder"),
    ]:
        said_line = _refused_before_any_run(monkeypatch, *args)
        assert said in said_line and "write it elsewhere" in said_line, said_line
    assert not (tmp_path / "o").exists() and not (tmp_path / "c").exists()


def test_the_library_names_a_wrong_argument_before_any_work():
    """Before: `explain(3, 4)` failed on "'int' object has no attribute 'strip'", `explain(..., settings="x")` on a
    missing attribute, and `compare(..., isolate="no")` ran the whole comparison (a truthy "no")."""
    from exporter.spec import ModelSpec
    from verify.api import compare, verify_export
    from verify.explain.equivalence import explain

    with pytest.raises(TypeError, match="a model must be a spec"):
        explain(3, 4)
    with pytest.raises(TypeError, match="settings must be a RunSettings"):
        explain("resnet18:frozen:body", "resnet18:batch:body", settings="x")
    with pytest.raises(TypeError, match="isolate must be True or False"):
        compare("resnet18:frozen:body", "resnet18:batch:body", isolate="no")
    with pytest.raises(TypeError, match="isolate must be True or False"):
        verify_export(ModelSpec("resnet18", "frozen", "body"), isolate="no")
