"""The public surface as a CI job meets it (surface28): a run that fails after its work started writes failure
reports (never nothing, never a stale pass), `cache clear` of a folder holding no cache says so, a shape mismatch
in `compare` is named as one (no layer isolation), and bad input is one line and exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

from exporter.errors import SetupError
from tests.helpers import invoke
from verify.cache import ENV_DIR, ENV_OFF, Cache, cache_disabled_by_env
from verify.render import failure_json, reports_finished, settle_reports, start_reports

A, B = "resnet18:frozen:body", "resnet18:batch:body"


def stale_reports(tmp_path):
    """A passing JSON, JUnit and Markdown report of an earlier run at the paths the next run is given."""
    paths = {"json": tmp_path / "r.json", "junit": tmp_path / "r.xml", "markdown": tmp_path / "r.md"}
    paths["json"].write_text(json.dumps({"command": "compare", "passed": True}))
    paths["junit"].write_text('<testsuites tests="1" failures="0" errors="0"/>')
    paths["markdown"].write_text("## ✅ verify compare\n")
    return paths


def report_args(paths):
    return ["--json", paths["json"], "--junit", paths["junit"], "--markdown", paths["markdown"]]


@pytest.mark.parametrize("raised, code, said", [
    (SetupError("ONNX Runtime cannot load model.onnx: bad graph; re-export it"), 2, "ONNX Runtime cannot load"),
    (KeyboardInterrupt(), 130, "interrupted")])
def test_a_run_failing_after_it_started_replaces_stale_reports_by_failures(tmp_path, monkeypatch, raised, code, said):
    import verify.api

    def fail(*args, **kwargs):
        raise raised

    monkeypatch.setattr(verify.api, "compare", fail)
    paths = stale_reports(tmp_path)
    result = invoke("compare", A, B, *report_args(paths))
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    data = json.loads(paths["json"].read_text())
    assert data == failure_json("compare", data["error"], code) and said in data["error"]
    assert data["passed"] is False
    junit = paths["junit"].read_text()
    assert 'errors="1"' in junit and f"error (exit {code})" in junit and said in junit
    assert f"error (exit {code})" in paths["markdown"].read_text()


def test_a_refusal_before_the_run_writes_nothing_over_the_file_it_protects(tmp_path):
    """The failure reports are written only where the run cleared its reports: a --json refused as the model's own
    source is never replaced by one."""
    source = tmp_path / "net.py"
    source.write_text("def make():\n    raise SystemExit('never imported')\n")
    before = source.read_bytes()
    result = invoke("compare", f"{source}:make", f"{source}:make", "--json", source)
    assert result.exit_code == 2 and "write the report elsewhere" in result.output
    assert source.read_bytes() == before


def test_a_report_written_then_a_later_failure_leaves_a_failure_not_a_pass(tmp_path):
    """A SIGTERM swallowed after the verdict's reports were written (exit 143): the pass is replaced."""
    path = tmp_path / "r.json"
    start_reports("export", json=path)
    path.write_text(json.dumps({"passed": True}))
    reports_finished(0)
    assert settle_reports(143) == [path]
    assert json.loads(path.read_text()) == failure_json("export", json.loads(path.read_text())["error"], 143)
    start_reports("export", json=path)  # a run ending with its own verdict's code keeps its own report
    path.write_text(json.dumps({"passed": False, "pairs": []}))
    reports_finished(1)
    assert settle_reports(1) == [] and json.loads(path.read_text()) == {"passed": False, "pairs": []}


def test_merge_names_a_failed_shards_report_as_one(tmp_path):
    """A shard's failure report is refused by name, before any output is touched (as a malformed shard is)."""
    shard, merged = tmp_path / "shard.json", tmp_path / "merged.json"
    shard.write_text(json.dumps(failure_json("matrix", "terminated (SIGTERM)", 143)))
    result = invoke("matrix", "merge", shard, "--json", merged)
    assert result.exit_code == 2 and "records a run that failed (exit 143" in result.output
    assert "rerun that shard" in result.output and len(result.output.strip().splitlines()) == 1
    assert not merged.exists()


def test_cache_clear_of_a_folder_holding_no_cache_says_so_and_keeps_its_files(tmp_path):
    (tmp_path / "thesis.txt").write_text("mine")
    result = invoke("cache", "clear", "--cache-dir", tmp_path)
    assert result.exit_code == 0 and "no cache of this tool" in result.output and "nothing was removed" in result.output
    assert "MiB freed" not in result.output and (tmp_path / "thesis.txt").read_text() == "mine"
    cache = Cache(tmp_path / "real")
    cache.store("cell", "0" * 64, {"x": 1})
    result = invoke("cache", "clear", "--cache-dir", tmp_path / "real")
    assert result.exit_code == 0 and "MiB freed" in result.output and not cache.found()


def test_cache_environment_variables_set_to_junk_are_one_line_and_exit_2(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_DIR, "/etc/passwd")
    result = invoke("cache", "info")
    assert result.exit_code == 2 and f"${ENV_DIR}=/etc/passwd is a file" in result.output
    assert len(result.output.strip().splitlines()) == 1
    monkeypatch.setenv(ENV_DIR, str(tmp_path))
    monkeypatch.setenv(ENV_OFF, "perhaps")
    result = invoke("export", "-b", "resnet18", "--out", tmp_path / "out")
    assert result.exit_code == 2 and f"${ENV_OFF}='perhaps' is neither on nor off" in result.output
    assert not (tmp_path / "out").exists()
    for off, disabled in (("false", False), ("0", False), ("", False), ("yes", True), ("1", True)):
        monkeypatch.setenv(ENV_OFF, off)
        assert cache_disabled_by_env() is disabled, off


def test_an_option_repeated_after_the_arguments_is_refused(tmp_path):
    reports = ["--json", tmp_path / "a.json", "--json", tmp_path / "b.json"]
    result = invoke("compare", A, B, "--shape", "1x3x32x32", *reports)
    assert result.exit_code == 2 and "--json was given 2 times" in result.output
    assert not list(tmp_path.iterdir())


def test_reduce_check_of_a_folder_says_to_pass_the_piece(tmp_path):
    result = invoke("reduce", "--check", tmp_path)
    assert result.exit_code == 2 and "is a directory; pass a piece.onnx" in result.output


def test_compare_of_differently_shaped_outputs_says_so_and_isolates_no_layer(monkeypatch):
    import verify.api
    import verify.explain.isolate
    from verify.judge.compare import Tolerance, compare_outputs
    from verify.report import Report

    a, b = {"out": np.zeros((1, 2, 4, 4), np.float32)}, {"out": np.zeros((1, 2, 2, 2), np.float32)}
    report = Report("compare", {"a": A, "b": B}, {}, pairs=[compare_outputs("A", a, "B", b, Tolerance())])
    monkeypatch.setattr(verify.api, "compare", lambda *args, **kwargs: report)

    def isolate(*args, **kwargs):
        raise AssertionError("layers isolated for a shape mismatch")

    monkeypatch.setattr(verify.explain.isolate, "name_culprits", isolate)
    result = invoke("compare", A, B)
    assert result.exit_code == 1, result.output
    note = next(n for n in report.notes if "no layer was isolated" in n)
    assert "(1, 2, 4, 4) in A and (1, 2, 2, 2) in B" in note and "same --shape" in note


def test_a_matrix_run_failing_mid_run_writes_every_report_kind_as_a_failure(tmp_path, monkeypatch):
    import verify.matrix

    def fail(*args, **kwargs):
        raise SetupError("a worker process could not start: out of memory; rerun with fewer --jobs")

    monkeypatch.setattr(verify.matrix, "run_matrix", fail)
    paths = {kind: tmp_path / f"m.{kind}" for kind in ("json", "junit", "markdown", "html")}
    flags = [x for kind, path in paths.items() for x in (f"--{kind}", path)]
    result = invoke("matrix", "-b", "resnet18", "-n", "batch", "--shape", "1x3x32x32", "--no-cache", *flags)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert json.loads(paths["json"].read_text()) == failure_json("matrix", result.output.strip()[len("error: "):], 2)
    for kind in ("junit", "markdown", "html"):
        assert "error (exit 2): a worker process could not start" in paths[kind].read_text(), kind
