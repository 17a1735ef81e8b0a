"""Review 30: the report claim (verify/render/claim.py) reads the command line as click does, so an option's value that
looks like `--json` never makes the next argument a report to remove, and an export folder's manifest is never taken
for an earlier report; temporary and staging names fit NAME_MAX; RuntimeOptions checks its own fields."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import pytest
import typer

from exporter.errors import UsageError
from exporter.fsio import DEFAULT_NAME_MAX, staged_folder, temp_name, write_text_atomic
from exporter.manifest import MANIFEST_SCHEMA
from verify.cli import app
from verify.judge.precision import PRECISIONS
from verify.render.claim import (
    FLAG_OPTIONS,
    HELP,
    REPORT_OPTIONS,
    VALUE_OPTIONS,
    claim_report_paths,
    is_earlier_report,
)
from verify.render.claim import (
    MANIFEST_SCHEMA as CLAIM_MANIFEST_SCHEMA,
)
from verify.runtimes import DEVICES, DTYPES, RUNTIMES, RuntimeOptions

PASSING = {"schema_version": 1, "command": "export", "passed": True}


def _cli_options() -> tuple[set[str], set[str]]:
    """Every option name of every command: those that take a value, and the flags."""
    values: set[str] = set()
    flags: set[str] = set()

    def walk(command: object) -> None:
        for param in command.params:
            if param.param_type_name != "option":
                continue
            if param.is_flag or param.count:
                flags.update([*param.opts, *param.secondary_opts])
            else:
                assert param.nargs == 1 and not param.secondary_opts, param.opts  # the claim reads one value
                values.update(param.opts)
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(typer.main.get_command(app))
    return values, flags | {HELP}


def test_the_claims_option_tables_are_the_clis():
    """The claim runs before the CLI loads, so it names the options that take a value itself: the same sets."""
    values, flags = _cli_options()
    assert set(VALUE_OPTIONS) == values
    assert set(FLAG_OPTIONS) == flags
    assert set(REPORT_OPTIONS) <= values
    assert CLAIM_MANIFEST_SCHEMA == MANIFEST_SCHEMA


@pytest.mark.parametrize("argv", [
    ["export", "--model", "--json", "{r}"],  # typer: --json is --model's value, the file an extra argument
    ["export", "-b", "--json", "{r}"],
    ["export", "-vb", "--json", "{r}"],  # a cluster ending in an option that takes a value
    ["export", "--a-plugins-option", "--json", "{r}"],  # an unknown option may take a value: never claimed past
    ["matrix", "merge", "--cache-dir=x", "{r}", "--junit", "--json"],  # --json is --junit's value; {r} a shard
])
def test_an_option_value_that_looks_like_a_report_option_claims_nothing(tmp_path, argv):
    """Before: `verify export --model --json r.json` (a usage error) removed r.json before typer said so."""
    report = tmp_path / "r.json"
    report.write_text(json.dumps(PASSING))
    assert claim_report_paths([a.format(r=report) for a in argv]) == []
    assert report.exists()


@pytest.mark.parametrize("argv", [
    ["export", "-v", "--json", "{r}"],  # a flag takes no value
    ["export", "-vb", "resnet18", "--json", "{r}"],
    ["export", "-bresnet18", "--json={r}"],
    ["export", "--out", "--help", "--json", "{r}"],  # `--help` as --out's value: the command runs
])
def test_reports_after_flags_and_values_are_still_claimed(tmp_path, argv):
    report = tmp_path / "r.json"
    report.write_text(json.dumps(PASSING))
    assert claim_report_paths([a.format(r=report) for a in argv]) == [report]
    assert not report.exists()


def test_an_export_folders_manifest_is_not_an_earlier_report(tmp_path):
    """Before: `verify compare F/model.pt resnet18 --json F/manifest.json --no-cach` (a typo, exit 2) removed the
    folder's manifest: it has a top-level `passed` too."""
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"schema": MANIFEST_SCHEMA, "schema_version": 2, "passed": True}))
    assert not is_earlier_report(manifest)
    assert claim_report_paths(["compare", str(tmp_path / "model.pt"), "--json", str(manifest)]) == []
    assert manifest.exists()


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return DEFAULT_NAME_MAX


@pytest.mark.parametrize("name", ["a" * 240, "é" * 125 + ".json", "é" * 120 + "x.json"])
def test_a_report_name_near_name_max_is_written(tmp_path, name):
    """Before: a 240-byte --json name failed "File name too long" after the whole run (its temporary file's name)."""
    path = tmp_path / name
    limit = _name_max(tmp_path)
    if len(os.fsencode(name)) > limit:
        pytest.skip(f"this file system takes names of {limit} bytes")
    suffix = ".123456.0123abcd.tmp"
    temp = temp_name(path, suffix)
    assert len(os.fsencode(temp)) <= limit
    assert temp.endswith(suffix) and temp.startswith(".")
    assert name.startswith(temp[1:-len(suffix)])  # a prefix of whole characters
    write_text_atomic(path, "report")
    assert path.read_text() == "report"
    assert sorted(os.listdir(tmp_path)) == [name]


def test_an_export_folder_named_near_name_max_is_staged_and_replaced(tmp_path):
    """Staging (`.NAME.staging-PID-HEX`) and retired (`.NAME.retired-PID-HEX`) names fit too; two long names that
    start the same are told apart, so the retired folder of one is never put back as the other."""
    limit = _name_max(tmp_path)
    first, second = tmp_path / ("b" * (limit - 5) + "first"), tmp_path / ("b" * (limit - 6) + "second")
    for final, content in ((first, "1"), (second, "2"), (first, "3")):
        with staged_folder(final) as staging:
            assert len(os.fsencode(staging.name)) <= limit
            (staging / "file").write_text(content)
    assert (first / "file").read_text() == "3" and (second / "file").read_text() == "2"
    assert sorted(os.listdir(tmp_path)) == sorted([first.name, second.name])


@pytest.mark.parametrize("field, value, error, said", [
    ("device", "tpu", UsageError, "Unknown device 'tpu'"),
    ("device", 0, TypeError, "runtime.device must be"),
    ("dtype", "float16", UsageError, "runtime.dtype must be one of"),
    ("dtype", 64, TypeError, "runtime.dtype must be one of"),
    ("tf32", "yes", TypeError, "runtime.tf32 must be True, False or None"),
    ("precision", "fp8", UsageError, "Unknown precision 'fp8'"),
    ("precision", 32, TypeError, "runtime.precision must be one of"),
    ("plugins", "A LIST OF ONE NAME", TypeError, "plugins must be a mapping"),
    ("plugins", "A TUPLE OF ONE NAME", TypeError, "plugins must be a mapping"),
])
def test_runtime_options_refuse_a_wrong_field_by_name(field, value, error, said):
    """Before: RuntimeOptions(tf32="yes") was taken (RunSettings alone checked it), and plugins=["onnxruntime"] failed
    with "dictionary update sequence element #0 has length 11"."""
    name = RUNTIMES.names()[0]
    value = {"A LIST OF ONE NAME": [name], "A TUPLE OF ONE NAME": (name,)}.get(value, value)
    with pytest.raises(error, match=re.escape(said)):
        RuntimeOptions(**{field: value})


def test_runtime_options_take_every_documented_value():
    for device in DEVICES:
        for dtype in DTYPES:
            for precision in PRECISIONS:
                for tf32 in (None, True, False):
                    RuntimeOptions(device=device, dtype=dtype, precision=precision, tf32=tf32)


def test_temp_name_fits_where_the_folder_does_not_exist_yet():
    """write_text_atomic creates the report's folder after naming the temporary file: the limit is the nearest
    existing folder's."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "new" / "deeper" / ("c" * 250)
        assert len(os.fsencode(temp_name(path, ".1.abcdef01.tmp"))) <= _name_max(Path(folder))


DEFERRING = """
import os, signal, sys, time
from verify.cli.base import RESEND_SECONDS, Terminated, _on_sigterm
PROMPT_SECONDS = 20 * RESEND_SECONDS
signal.signal(signal.SIGTERM, _on_sigterm)
sys.path.insert(0, sys.argv[1])
try:
    import slow_module  # sends SIGTERM to itself while it is imported, then finishes
    imported = time.monotonic()
    time.sleep(30)  # the moment the main thread lets the GIL go: a signal sent then must still interrupt it
except Terminated:
    late = time.monotonic() - imported > PROMPT_SECONDS
    print("imported whole" if getattr(slow_module, "WHOLE", False) else "imported in part",
          "then terminated", "late" if late else "at once", flush=True)
"""


def test_a_sigterm_inside_an_import_is_raised_once_the_import_is_over(tmp_path):
    """Before: raised where it landed, also inside an import whose C++ ran Python (`import torch`:
    torch._C._c10d_init), where pybind11 cannot pass it on: "terminate called after throwing an instance of
    'pybind11::error_already_set'" and SIGABRT (exit 134). Now it waits for the import to end, then is raised."""
    import subprocess
    import sys

    (tmp_path / "slow_module.py").write_text(
        "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\nfor _ in range(2 * 10**6):\n    pass\nWHOLE = True\n")
    done = subprocess.run([sys.executable, "-c", DEFERRING, str(tmp_path)], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert (done.returncode, done.stdout.strip()) == (0, "imported whole then terminated at once"), done


def test_a_report_path_that_is_a_link_loses_the_link_never_its_target(tmp_path):
    """The claim removes what the path names (a link), as the run's own write replaces it: the file it points to, an
    earlier report kept elsewhere, stays."""
    kept = tmp_path / "kept.json"
    kept.write_text(json.dumps(PASSING))
    link = tmp_path / "r.json"
    link.symlink_to(kept)
    assert claim_report_paths(["export", "--json", str(link)]) == [link]
    assert not os.path.lexists(link) and json.loads(kept.read_text()) == PASSING


def test_a_deferred_signal_is_not_resent_once_the_run_ignores_it(monkeypatch):
    """A signal held back during an import is resent until its handler ran; one the run has meanwhile set to be
    ignored (its last reports after a first interrupt) never runs, and was resent every RESEND_SECONDS until exit.
    The sender now stops at once, and forgets the signal."""
    import signal
    import threading
    import time

    from verify.cli import base

    sent = []
    monkeypatch.setattr(base.signal, "pthread_kill", lambda thread, signum: sent.append(signum))
    monkeypatch.setitem(base._DEFERRED, "since", time.monotonic())
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        sender = threading.Thread(target=base._send_after_import, args=(signal.SIGTERM, threading.main_thread().ident),
                                  daemon=True)
        sender.start()
        sender.join(base.IMPORT_GRACE_SECONDS)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not sender.is_alive() and sent == [] and base._DEFERRED["since"] is None
