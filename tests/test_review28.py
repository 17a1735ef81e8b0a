"""Review 28: today's failure reports, the 1-D and 3-D norms and the split oracle, attacked by a user who wants a
pass nobody earned. A second interrupt (Ctrl-C twice; GitHub's SIGINT then SIGTERM) that lands while the failure
reports are written must not leave the verdict's passing reports behind an exit that is not 0."""

from __future__ import annotations

import json

import pytest

from verify.render import reports_finished, settle_reports, start_reports


def test_a_second_interrupt_while_the_failure_reports_are_written_leaves_no_pass(tmp_path, monkeypatch):
    """The verdict wrote passing reports (exit 0), a SIGTERM then ended the run (143) and a second interrupt landed
    in the JSON failure report's write: before, it escaped settle_reports (`except Exception`) and the JUnit and
    Markdown files still said pass."""
    import verify.report

    paths = {"json": tmp_path / "r.json", "junit": tmp_path / "r.xml", "markdown": tmp_path / "r.md"}
    start_reports("compare", **paths)
    paths["json"].write_text(json.dumps({"command": "compare", "passed": True}))
    paths["junit"].write_text('<testsuites tests="1" failures="0" errors="0"/>')
    paths["markdown"].write_text("## ✅ verify compare\n")
    reports_finished(0)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(verify.report, "write_json_report", interrupted)
    try:
        written = settle_reports(143)
    except KeyboardInterrupt:
        pytest.fail("the second interrupt escaped settle_reports: the verdict's passing reports stayed")
    assert not paths["json"].exists()  # its write was interrupted: no report, never the pass
    assert written == [paths["junit"], paths["markdown"]]
    assert 'errors="1"' in paths["junit"].read_text() and "error (exit 143)" in paths["junit"].read_text()
    assert "error (exit 143)" in paths["markdown"].read_text()


def test_only_norms_whose_maths_the_mode_changes_are_named_as_left_in_train_mode():
    """NORM_TYPES now holds every 1-D and 3-D norm: a train-mode BatchNorm1d/3d (and an InstanceNorm that tracks
    running statistics) is named, as it should be; a default InstanceNorm3d, a LayerNorm or a GroupNorm compute the
    same in either mode, and before were named too: `explain` then called a real difference "the most common false
    alarm; call model.eval()"."""
    import copy

    from torch import nn

    from verify.explain.structure import structural_diff, train_mode_modules

    model = nn.Sequential()
    for name, module in (("bn3", nn.BatchNorm3d(4)), ("bn1", nn.BatchNorm1d(4)), ("inorm", nn.InstanceNorm3d(4)),
                         ("tracked", nn.InstanceNorm1d(4, track_running_stats=True)), ("ln", nn.LayerNorm(4)),
                         ("gn", nn.GroupNorm(2, 4)), ("drop", nn.Dropout())):
        model.add_module(name, module)
    assert train_mode_modules(model.train()) == ["bn3", "bn1", "tracked", "drop"]
    evaluated = copy.deepcopy(model).eval()
    assert train_mode_modules(evaluated) == []
    modes = [d.module for d in structural_diff(model, "", evaluated, "") if d.kind == "mode"]
    assert modes == ["bn3", "bn1", "tracked"]


SWALLOWED_CTRL_C = """
import os, signal, sys
import verify.api

def compare(*args, **kwargs):
    try:  # Ctrl-C lands where it is swallowed (measured: an import), and the run goes on to fail otherwise
        os.kill(os.getpid(), signal.SIGINT)
        __import__("time").sleep(0.5)
    except KeyboardInterrupt:
        pass
    raise AttributeError("module 'numpy' has no attribute 'flexible'")

verify.api.compare = compare
sys.argv = ["verify", "compare", "resnet18:frozen:body", "resnet18:batch:body", "--json", sys.argv[1]]
from verify.cli.app import main
main()
"""


def test_a_ctrl_c_swallowed_where_it_landed_still_ends_the_run_as_interrupted(tmp_path):
    """Measured (`verify compare ... --json`, SIGINT 2 s in): the KeyboardInterrupt landed in numpy's import, was
    swallowed, and the run went on to `unexpected AttributeError: module 'numpy' has no attribute 'flexible'` and
    exit 2, its report saying exit 2. A SIGTERM swallowed so exits 143 (its handler is remembered); Ctrl-C too now:
    130, `interrupted`, and the report says so."""
    import subprocess
    import sys

    report = tmp_path / "r.json"
    done = subprocess.run([sys.executable, "-c", SWALLOWED_CTRL_C, str(report)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 130, done.stderr
    assert "error: interrupted" in done.stderr
    data = json.loads(report.read_text())
    assert data["passed"] is False and data["exit_code"] == 130 and data["error"] == "interrupted"


def test_the_pytest_plugin_leaves_no_earlier_pass_beside_a_run_that_failed(tmp_path, monkeypatch):
    """`assert_exports_agree` writes out/<name>-report.json; a later run whose export failed (a VerifyError: the test
    fails) left the earlier run's `passed: true` there for a CI job that archives it, as the CLI did before its
    reports were cleared when the run starts (verify/render `start_reports`)."""
    import torch
    from torch import nn

    import verify.api
    from exporter.errors import SetupError
    from verify.pytest_plugin import assert_exports_agree

    def fail(*args, **kwargs):
        raise SetupError("ONNX Runtime cannot load model.onnx: bad graph; re-export it")

    monkeypatch.setattr(verify.api, "verify_export", fail)
    stale = tmp_path / "tiny-report.json"
    stale.write_text(json.dumps({"command": "export", "passed": True}))
    with pytest.raises(pytest.fail.Exception, match="ONNX Runtime cannot load"):
        assert_exports_agree(nn.Conv2d(3, 4, 1).eval(), torch.ones(1, 3, 8, 8), out=tmp_path, name="tiny")
    assert not stale.exists()
