"""A report is never written into a folder being checked (verify/cli/options.py outside_folders): measured,
`verify artifact F --json F/manifest.json` replaced the manifest it had just checked, and any report inside F
made the next check of F fail on an unlisted file. Refused before any check, exit 2, one line."""

import pytest
from typer.testing import CliRunner

from verify.cli import app

runner = CliRunner()


@pytest.mark.parametrize("command", ["artifact", "preflight"])
@pytest.mark.parametrize("flag", ["--json", "--junit", "--markdown"])
@pytest.mark.parametrize("given", ["folder", "manifest"])
def test_a_report_inside_the_checked_folder_is_refused_before_any_check(command, flag, given, tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    manifest = folder / "manifest.json"
    manifest.write_text("{}")
    target = folder if given == "folder" else manifest
    result = runner.invoke(app, [command, str(target), flag, str(folder / "report.out")])
    assert result.exit_code == 2, result.output
    assert "inside the folder being checked" in result.output and "Traceback" not in result.output
    assert manifest.read_text() == "{}" and sorted(p.name for p in folder.iterdir()) == ["manifest.json"]


def test_a_report_beside_the_folder_is_written(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    result = runner.invoke(app, ["artifact", str(folder), "--json", str(tmp_path / "report.json")])
    assert result.exit_code == 1 and (tmp_path / "report.json").exists()  # no manifest: a failed check, reported
