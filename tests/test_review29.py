"""Review 29: what the day's helpers left on the public surface (README "Review 29").

- A whole detector's file copied out of its export folder (no manifest beside it) was still run by `verify compare F F`
  and `verify explain F F`: the ONNX file on an NCHW batch, ending in ONNX Runtime's "Invalid rank for input: image
  Got: 4 Expected: 3", the TorchScript file in "Unknown builtin op: torchvision::nms". Now refused in one line, told
  from the file itself read as data (verify/detect/file_sign.py `detector_sign`).
- Ctrl-C during the CLI's own import printed a traceback and the process died by SIGINT (return code -2). Now
  `error: interrupted` and exit 130 (verify/__main__.py `main`, the entry point).
- `UsageError` stays apart from ValueError: an `except (OSError, ValueError)` would reword one (`load_result`)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import invoke
from verify.detect.export import FILE_NAMES

ROOT = Path(__file__).resolve().parents[1]


def test_a_detector_file_copied_out_of_its_folder_is_refused_before_anything_runs(detector_export, tmp_path):
    """Before: both files loaded and ran (ONNX Runtime's rank error, TorchScript's unknown torchvision op), exit 2.
    Now exit 2 at once, for compare and explain, the sign read from the file named."""
    folder = detector_export[1]
    signs = {FILE_NAMES["onnx"]: "returns boxes, labels and scores", FILE_NAMES["torchscript"]: "torchvision::nms"}
    for name, sign in signs.items():
        loose = tmp_path / name
        try:
            os.link(folder / name, loose)
        except OSError:
            shutil.copyfile(folder / name, loose)
        for command in ("compare", "explain"):
            result = invoke(command, loose, loose)
            text = " ".join(result.output.split())
            assert result.exit_code == 2, text
            assert "is a whole detector's file" in text and sign in text, text
            assert "verify artifact <folder> --rebuild" in text, text
            assert "Invalid rank" not in text and "Unknown builtin op" not in text, text


def test_a_backbones_files_show_no_detector_sign(default_export):
    """The file checks refuse no backbone: its ONNX graph takes an N x C x H x W batch, its TorchScript code calls
    no NMS."""
    from exporter.manifest import load_manifest
    from verify.detect.file_sign import detector_sign

    names = [name for name in load_manifest(default_export / "manifest.json").model_files()]
    assert len(names) >= 2, names
    assert {name: detector_sign(default_export / name) for name in names} == dict.fromkeys(names)


INTERRUPTING_IMPORT = """
import os, signal, sys
class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == "verify.cli.commands":
            sys.meta_path.remove(self)
            try:
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(10**7):
                    pass
            except KeyboardInterrupt:
                if SWALLOW:
                    raise ImportError("half-imported") from None
                raise
        return None
sys.meta_path.insert(0, Interrupt())
"""


def _entry_points() -> dict[str, str]:
    script = re.search(r'^verify = "([\w.]+):(\w+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert script, "pyproject.toml [project.scripts] names no verify = \"module:function\""
    module, function = script.groups()
    return {"the verify script": f"from {module} import {function} as entry\nentry()",
            "python -m verify": "import runpy\nrunpy.run_module('verify', run_name='__main__')"}


@pytest.mark.parametrize("swallow", [False, True], ids=["raised", "swallowed-by-the-import"])
@pytest.mark.parametrize("entry", ["the verify script", "python -m verify"])
def test_ctrl_c_during_the_clis_import_exits_130_in_one_line(entry, swallow):
    """A real SIGINT, sent while the CLI's commands import: before, a traceback and death by SIGINT (-2), or, where
    the import swallowed it, the import's own error; now `error: interrupted` alone and exit 130."""
    code = f"SWALLOW = {swallow}\n{INTERRUPTING_IMPORT}\nsys.argv = ['verify', 'list']\n{_entry_points()[entry]}\n"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr, done.stdout) == (128 + signal.SIGINT, "error: interrupted\n", ""), done


def test_usage_error_is_no_value_error_so_no_except_value_error_rewords_it(tmp_path):
    """UsageError stays apart from ValueError (review 29): `load_result` raises its size refusal inside an
    `except (OSError, ValueError)` that would have turned it into "Cannot read ... as JSON: Report ... is N bytes"."""
    from exporter.errors import UsageError
    from verify.matrix.result import MAX_REPORT_BYTES, load_result

    report = tmp_path / "report.json"
    with open(report, "wb") as handle:
        handle.truncate(MAX_REPORT_BYTES + 1)  # sparse: nothing written
    with pytest.raises(UsageError) as refused:
        load_result(report)
    assert str(refused.value).startswith(f"Report {report} is {MAX_REPORT_BYTES + 1} bytes"), refused.value
