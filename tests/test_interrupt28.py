"""Interrupt 28: what a user sees when something goes wrong.

1. A Ctrl-C (SIGINT to the whole process group, as a terminal sends it) while multiprocessing's fork server imported
   its preload printed the server's KeyboardInterrupt traceback under the tool's one line; now the server ignores
   SIGINT from its start (verify/pipeline/isolation.py `_ensure_server`, `_quiet_fork_server`).
2. An error of the tool's own code while the model ran at another batch was reported as the model failing there
   ("pass --static"); now it is the tool's (verify/pipeline/isolation.py `raised_by_tool`, verify/pipeline/stages.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from exporter.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
SLOW_IMPORT_S = 3.0
"""How long the fork server's stand-in preload takes: the Ctrl-C lands in the middle of it."""

LIBRARY_RUN = """
import sys
from verify.pipeline import isolation
from i28_fn import echo

isolation.PRELOAD = ("verify.pipeline.isolation", "i28_slow")
print("ready", flush=True)
try:
    isolation.run_isolated(echo, 1, what="echo")
except KeyboardInterrupt:
    print("interrupted", flush=True)
print("again", isolation.run_isolated(echo, 2, what="echo"), flush=True)
"""


def test_ctrl_c_while_the_fork_server_preloads_is_one_line_and_the_next_run_works(tmp_path):
    """The whole group gets SIGINT while the fork server sleeps in its preload (a stand-in for torch's seconds):
    the caller gets its KeyboardInterrupt, the server prints nothing and lives on, and the next run in the same
    process returns its result."""
    (tmp_path / "i28_slow.py").write_text(f"import time\ntime.sleep({SLOW_IMPORT_S})\n")
    (tmp_path / "i28_fn.py").write_text("def echo(x, progress):\n    return x\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    child = subprocess.Popen([sys.executable, "-c", LIBRARY_RUN], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(SLOW_IMPORT_S / 3)  # the server started (~0.2 s) and sleeps in its preload
        os.killpg(child.pid, signal.SIGINT)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    assert child.returncode == 0, err
    assert out.split() == ["interrupted", "again", "2"], (out, err)
    assert "KeyboardInterrupt" not in err and "Traceback" not in err, err


TOOL_BUG_MODEL = """
import torch
from torch import nn

class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        if x.shape[0] > 1:
            raise ValueError("this model takes one image at a time")
        return self.conv(x)

def make():
    return Tiny()
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from exporter.user_model import UserModelSpec, build_user_model

    path = tmp_path_factory.mktemp("interrupt28") / "one_image.py"
    path.write_text(textwrap.dedent(TOOL_BUG_MODEL))
    return build_user_model(UserModelSpec.parse(f"{path}:make"), 0, (1, 3, 8, 8))


@pytest.fixture(scope="module")
def tiny():
    from exporter.user_model import UserModelSpec, build_user_model

    return build_user_model(UserModelSpec.parse(f"{ROOT / 'tests' / 'data' / 'tiny.py'}:make"), 0, (1, 3, 8, 8))


def test_the_models_own_failure_at_batch_2_is_still_the_models(built):
    from verify.pipeline.stages import require_batch_following

    with pytest.raises(UsageError, match=r"fails at batch 2 \(this model takes one image at a time\).*pass --static"):
        require_batch_following(built, np.zeros((1, 3, 8, 8), np.float32))


def test_a_bug_of_the_tools_own_code_at_batch_2_is_not_blamed_on_the_model(tiny, monkeypatch):
    """An AttributeError raised in verify/ while the batch-2 run's outputs are collected propagates as itself (the
    CLI's "unexpected AttributeError", exit 2), not as "your model fails at batch 2 ... pass --static"."""
    from verify.judge import trust
    from verify.pipeline.stages import require_batch_following

    def broken(outputs):
        return outputs.no_such_attribute  # the tool's own bug, raised in this project's package (see below)

    broken.__code__ = broken.__code__.replace(co_filename=trust.__file__)
    monkeypatch.setattr(trust, "owned", broken)
    with pytest.raises(AttributeError, match="no_such_attribute"):
        require_batch_following(tiny, np.zeros((1, 3, 8, 8), np.float32))


def test_a_workers_error_names_whose_code_raised_it(built):
    """In a worker, a bug of the tool's own code is reported as the tool's, with exit 2 (raised in verify/, or by
    torch's Module.__getattr__ for a lookup of the tool's); the model's own error as the model's."""
    import torch

    from verify.judge import trust
    from verify.pipeline.isolation import _error_message

    namespace: dict = {}
    source = "def bug():\n    return None.shape\ndef lookup(module):\n    return module.no_such_layer\n"
    exec(compile(source, trust.__file__, "exec"), namespace)  # functions whose frames are in verify/
    for call in (namespace["bug"], lambda: namespace["lookup"](built.model)):
        with pytest.raises(AttributeError) as caught:
            call()
        name, code, message = _error_message(caught.value, "your model's code")[1]
        assert (name, code) == ("IsolatedRunError", 2)
        assert message.startswith("unexpected AttributeError in this tool's own code") and "model's;" in message
    with pytest.raises(ValueError) as caught:
        built.model(torch.zeros(2, 3, 8, 8))
    _, code, message = _error_message(caught.value, "your model's code")[1]
    assert code == 2 and message.startswith("ValueError (this model takes one image at a time) raised by your "
                                            "model's code")
