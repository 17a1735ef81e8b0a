"""The `verify` entry point ends the process once the atexit handlers ran and stdout/stderr are flushed, skipping
the interpreter's teardown (verify/cli/app.py `exit_now`): the exit code, the output, the atexit handlers and any
non-daemon thread are what a normal exit gives."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from typer.testing import CliRunner

from verify.cli import app


def run_main(args: list[str], before: str = "", tmp: Path | None = None) -> subprocess.CompletedProcess:
    code = "\n".join(["import sys", textwrap.dedent(before), f"sys.argv = ['verify', *{args!r}]",
                      "from verify.cli.app import main", "main()"])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp)


def test_the_exit_code_and_every_line_of_output_are_a_normal_exits(tmp_path):
    listed = run_main(["list"])
    assert listed.returncode == 0 and listed.stdout == CliRunner().invoke(app, ["list"]).stdout
    refused = run_main(["export", "--no-such-option"])
    assert refused.returncode == 2 and refused.stderr.count("\n") >= 1 and "--no-such-option" in refused.stderr
    failed = run_main(["compare", "resnet18:batch:body", "resnet18:frozen:body", "--shape", "1x3x32x32", "--samples",
                       "1", "--factor", "0.1"], tmp=tmp_path)
    assert failed.returncode == 1 and "disagree" in failed.stdout + failed.stderr


def test_atexit_handlers_run_and_a_non_daemon_thread_is_waited_for(tmp_path):
    marks = tmp_path / "marks"
    before = f"""
import atexit, threading, time
marks = {str(marks)!r}
atexit.register(lambda: open(marks, "a").write("atexit\\n"))
def late():
    time.sleep(0.5)
    open(marks, "a").write("thread\\n")
threading.Thread(target=late).start()
"""
    done = run_main(["list"], before=before)
    assert done.returncode == 0, done.stderr
    assert marks.read_text().split() == ["thread", "atexit"]  # the thread first, as a normal exit joins it first
