"""Review 18: stop 35's change reviewed. A job the user stops and resumes (Ctrl-Z, `fg`) is not a model stopping
the fork server (exporter/fsio.py process_stopped); `--no-layers` on a whole detector asks for what it does
(verify/cli/commands.py); the `--out` folder hint offers no hidden leftover (verify/folder/integrity.py); a norm's
parameter outside its state dict is never left uninitialised (exporter/backbones.py holds_values_outside_state); a
matrix cell's before-NMS pairs must hold every head and the anchors (verify/matrix/detector_judging.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

from tests.helpers import invoke

DETECTOR = "ssdlite320_mobilenet_v3_large"
DETECTOR_RPN = "fasterrcnn_mobilenet_v3_large_320_fpn"
LACKED_NORM = "frozen-eps0"
"""A norm DETECTOR lacks: refused by the first check after the options' (nothing built)."""
SETTLE_S = 5.0
"""How long a test waits for a signal it sent to show in /proc (a stop or a resume is near instant)."""


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


def _wait_state(pids: list[int], stopped: bool) -> None:
    deadline = time.monotonic() + SETTLE_S
    while any((_state(pid) == "T") != stopped for pid in pids):
        assert time.monotonic() < deadline, f"{pids} not {'stopped' if stopped else 'running'} after {SETTLE_S} s"
        time.sleep(0.01)


def test_a_job_stopped_as_a_whole_is_not_a_process_stopped_by_a_model():
    """Before: Ctrl-Z on `verify export --model m.py:make` (SIGTSTP to the tool's job: the tool and its fork server;
    the worker, a group of its own, runs on) while the factory ran, then `fg`: exit 2, "m.py:make() stopped its parent
    process ... A model must not signal its parent", on a correct model (reproduced with `kill -STOP -PGID`, then
    `kill -CONT -PGID`). A process stopped with its own parent is a stopped job; one stopped alone is still found."""
    from exporter.fsio import process_stopped

    tool = subprocess.Popen([sys.executable, "-c", "import subprocess, time; child = subprocess.Popen(['sleep', '60']);"
                             " print(child.pid, flush=True); time.sleep(60)"],
                            stdout=subprocess.PIPE, start_new_session=True)  # the tool; its child the fork server
    try:
        server = int(tool.stdout.readline())
        os.killpg(tool.pid, signal.SIGSTOP)  # the job stopped (what Ctrl-Z does to a foreground job)
        _wait_state([tool.pid, server], stopped=True)
        assert not process_stopped(server), "stopped with the tool: the user's, resumed by their `fg`"
        os.killpg(tool.pid, signal.SIGCONT)
        _wait_state([tool.pid, server], stopped=False)
        os.kill(server, signal.SIGSTOP)  # a model's os.kill(os.getppid(), SIGSTOP): the server alone
        _wait_state([server], stopped=True)
        assert process_stopped(server)
        assert not process_stopped(tool.pid) and not process_stopped(None)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(tool.pid, signal.SIGKILL)
        tool.wait()
        tool.stdout.close()


def test_no_layers_is_no_refused_option_for_a_whole_detector(tmp_path):
    """Before: `verify export -b <detector> --no-layers` exited 2, "--no-layers is not supported for a whole detector
    yet ...; drop it", though a detector export never runs the layer verdict (BACKBONE_VERIFY_LAYERS=0 was taken):
    a script exporting its backbones and detectors with --no-layers failed on the detectors. Since hunt 23b a
    detector runs the layer verdict, so --layers is taken too."""
    result = invoke("export", "-b", DETECTOR, "--no-layers", "--norm", LACKED_NORM, "--out", tmp_path)
    assert result.exit_code == 2 and "--no-layers" not in result.stderr, result.stderr
    assert f"has no norm {LACKED_NORM!r}" in result.stderr, "the next check's refusal: the options were taken"
    result = invoke("export", "-b", DETECTOR, "--layers", "--norm", LACKED_NORM, "--out", tmp_path)
    assert result.exit_code == 2 and f"has no norm {LACKED_NORM!r}" in result.stderr, result.stderr
    assert not any(tmp_path.iterdir())


def test_the_out_folder_hint_names_no_folder_an_export_left_beside_its_own(tmp_path):
    """Before: `verify artifact OUT`, where OUT held only `.resnet18-frozen-body.retired-...` (the folder an
    --overwrite replaced, left by a crash) or a `.staging-...` folder (an export still writing, or killed), said "pass
    those, e.g. OUT/.resnet18-frozen-body.retired-999-abcd1234": a folder no export published. Hidden ones are not
    offered; a published one still is."""
    import json

    from exporter.manifest import MANIFEST_NAME

    for name in (".resnet18-frozen-body.retired-999-abcd1234", ".resnet18-frozen-body.staging-999-0123456789ab"):
        (tmp_path / name).mkdir()
        (tmp_path / name / MANIFEST_NAME).write_text(json.dumps({}))
    result = invoke("artifact", tmp_path)
    assert ".retired-" not in result.output and ".staging-" not in result.output
    assert result.exit_code == 1 and f"no {MANIFEST_NAME} in {tmp_path}" in " ".join(result.output.split())
    (tmp_path / "resnet18-frozen-body").mkdir()
    (tmp_path / "resnet18-frozen-body" / MANIFEST_NAME).write_text(json.dumps({}))
    result = invoke("artifact", tmp_path)
    assert result.exit_code == 2 and f"e.g. {tmp_path / 'resnet18-frozen-body'}" in " ".join(result.stderr.split())


def test_a_norm_parameter_its_state_dict_leaves_out_is_built_with_its_own_init(monkeypatch):
    """holds_values_outside_state looked at buffers and plain attributes only: a norm whose parameter its state dict
    and its loading leave out (a fixed gain, saved with the model's code, not its weights) was built on the meta
    device and kept the uninitialised memory `to_empty` gave it, into every export and the oracle alike (a
    verdict on values no one chose). Such a model is built with its own init, as a non-persistent buffer is."""
    from dataclasses import replace

    import torch
    from torch import nn
    from torchvision.ops.misc import FrozenBatchNorm2d

    from exporter.backbones import build_classifier, build_model, holds_values_outside_state
    from exporter.norms import NORMS
    from exporter.spec import ModelSpec
    from exporter.weights import Weights

    class Gained(FrozenBatchNorm2d):
        def __init__(self, channels, *args, **kwargs):
            super().__init__(channels, *args, **kwargs)
            self.gain = nn.Parameter(torch.full((channels,), 2.0), requires_grad=False)

        def _save_to_state_dict(self, destination, prefix, keep_vars):
            super()._save_to_state_dict(destination, prefix, keep_vars)
            destination.pop(prefix + "gain")

        def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
            super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
            args[2].remove(prefix + "gain")  # missing_keys: the gain is the code's, not the weights'

        def forward(self, x):
            return super().forward(x) * self.gain.view(1, -1, 1, 1)

    with torch.device("meta"):  # ones of the classifier's shapes: weights the build loads (synthetic ones take 3 s)
        shapes = build_classifier("resnet18", None).state_dict()
    weights = Weights("ones", {key: torch.ones(value.shape, dtype=value.dtype) for key, value in shapes.items()})
    monkeypatch.setitem(NORMS._items, "frozen", replace(NORMS.get("frozen"), make_layer=lambda: Gained))
    built = build_model(ModelSpec("resnet18", "frozen", "body"), weights)
    gains = [m.gain for m in built.model.modules() if isinstance(m, Gained)]
    assert gains and all(torch.equal(gain, torch.full_like(gain, 2.0)) for gain in gains)
    assert holds_values_outside_state(built.model)


STORED_OUTPUT = {"shape_a": [1, 15, 10, 10], "shape_b": [1, 15, 10, 10], "passed": True, "reason": "",
                 "max_abs": 3.6e-05, "max_rel": 2.4e-06, "mean_abs": 7.3e-06, "mismatched": 0, "nonfinite": 0,
                 "total": 1500, "worst_index": [0, 4, 8, 4], "worst_a": 0.52940, "worst_b": 0.52936, "floor": 2.3e-05,
                 "ratio": 2.0, "channel": 3, "channel_floor": 1.8e-05, "away_from_peaks": False, "output_ratio": 1.565,
                 "precision": "fp32", "float32_ratio": None, "allowed": 9e-05, "needed": "factor>=2",
                 "mismatch_fraction": 0.0, "verdict": "agrees at float32 precision (2.0x the float32 floor)"}
"""One before-NMS output as a matrix cell of the 320 detector stores it (its numbers agree with each other)."""
STORED_DENSE = ["proposals", "roi_heads.box_predictor.bbox_pred#0", "roi_heads.box_predictor.cls_score#0",
                "rpn.anchor_generator#0", "rpn.head.bbox_pred#0", "rpn.head.bbox_pred#1", "rpn.head.cls_logits#0",
                "rpn.head.cls_logits#1", "final_nms.boxes", "final_nms.scores"]
"""The dense tensors a cell of the 320 detector compares before NMS (two of its three RPN levels; the decoded
candidates since hunt 21a)."""


def _stored_pairs(names: list[str]) -> list[dict]:
    """Every tensor stored as STORED_OUTPUT; the anchors with one row an anchor, as many as the two RPN regression
    levels cover (the merge binds them since stop 43: verify/matrix/dense_binding.py), and their element count."""
    import math

    from verify.detect.verdict import EAGER, ORACLE, RUNTIMES

    level = STORED_OUTPUT["shape_b"]
    anchors = [2 * math.prod(level) // 4, 4]
    own = {"rpn.anchor_generator#0": {"shape_a": anchors, "shape_b": anchors, "total": math.prod(anchors),
                                      "worst_index": [0, 3]}}
    return [{"a": RUNTIMES["onnx"], "b": b, "kind": kind, "passed": True,
             "outputs": [dict(STORED_OUTPUT, name=name, where=f"{name}[c=3]", **own.get(name, {})) for name in names]}
            for b, kind in ((ORACLE, "oracle"), (EAGER, "runtime"))]


def test_a_matrix_cell_whose_pairs_leave_out_the_anchors_is_not_judged_whole():
    """Before: a detector cell (a shard report's, read back at merge) whose before-NMS pairs all left out
    `rpn.anchor_generator#0` (hunt 19a's anchors, judged as a dense tensor: one level 5 % off exited 0 when no
    proposal came from it) or a head was re-judged as a pass: the pairs only had to compare the same tensors, where a
    folder's manifest must name every head and the anchors. Now such a cell fails, naming what was left out."""
    from verify.detect.verdict import RUNTIMES
    from verify.judge.compare import Tolerance
    from verify.matrix.detector_judging import _before_nms

    auto = Tolerance()
    assert auto.mode == "auto"
    labels = [RUNTIMES["onnx"]]
    assert _before_nms(_stored_pairs(STORED_DENSE), auto, labels, DETECTOR_RPN)[1] == []
    for left_out in ("rpn.anchor_generator#0", "roi_heads.box_predictor.cls_score#0"):
        judged, why = _before_nms(_stored_pairs([n for n in STORED_DENSE if n != left_out]), auto, labels,
                                  DETECTOR_RPN)
        assert all(pair["passed"] for pair in judged), "every pair left passes on its own numbers"
        assert len(why) == 1 and f"leave out {left_out.partition('#')[0]}" in why[0], why


def test_the_library_matrix_refuses_static_exports_of_several_input_shapes(tmp_path):
    """Before: `verify matrix --static --input FOLDER` (inputs of two shapes) was refused before any work by the CLI
    alone (hunt 19c); MatrixRequest.create, the library's entry, took it, and each backbone's cell failed only after
    its export."""
    from dataclasses import replace

    import numpy as np
    import pytest

    from exporter.errors import UsageError
    from verify.matrix import MatrixRequest
    from verify.pipeline.stages import export_for
    from verify.settings import RunSettings

    np.save(tmp_path / "a.npy", np.full((1, 3, 32, 32), 0.5, np.float32))
    np.save(tmp_path / "b.npy", np.full((1, 3, 40, 48), 0.5, np.float32))
    settings, static = RunSettings(input_file=tmp_path), replace(export_for(None, "cpu"), dynamic=False)
    with pytest.raises(UsageError, match="^--static exports one input shape"):
        MatrixRequest.create(["resnet18"], ["frozen"], settings=settings, export=static)
    assert MatrixRequest.create(["resnet18"], ["frozen"], settings=settings, export=export_for(None, "cpu")).cells()
