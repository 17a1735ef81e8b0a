"""CUDA behaviour: runs on a GPU machine, skips cleanly elsewhere."""

import pytest
import torch

from exporter.errors import SetupError
from tests.conftest import cpu_and_cuda
from verify.judge.compare import Tolerance, compare_outputs
from verify.runtimes import RUNTIMES, RuntimeOptions, make_runtime

COMPILED_FOR_CPU = {"aoti"}
"""Runtimes of packages compiled for one device: the session fixture compiles for the CPU."""




def worst_ratio(name, device, tf32, exported_small):
    """The worst ratio to the floor of `name` run on the first format it runs, against that format's oracle."""
    runtime = make_runtime(name, RuntimeOptions(device=device, tf32=tf32))
    case = next(case for case in exported_small.values() if case.artifact.format in runtime.formats)
    outputs = runtime.load(case.artifact).run(case.inputs)
    pair = compare_outputs(runtime.label, outputs, "oracle", case.oracle.outputs, Tolerance(), case.oracle.floors)
    return pair.worst.ratio, pair.passed, runtime


@pytest.mark.parametrize("device", cpu_and_cuda())
@pytest.mark.parametrize("name", RUNTIMES.names())
def test_float32_runs_agree_with_the_oracle(name, device, exported_small):
    if device == "cuda" and name in COMPILED_FOR_CPU:
        pytest.skip("compiled for the CPU")
    ratio, passed, runtime = worst_ratio(name, device, False, exported_small)
    assert passed, f"{runtime.label}: {ratio:.1f}x the floor"
    if name == "onnxruntime" and device == "cuda":
        assert runtime.session.get_providers()[0] == "CUDAExecutionProvider"


@pytest.mark.needs_cuda
@pytest.mark.parametrize("name", RUNTIMES.names())
def test_tf32_is_caught_by_auto(name, exported_small):
    """TF32 convolutions keep 10 mantissa bits: far beyond the float32 floor, and auto says so."""
    if name in COMPILED_FOR_CPU:
        pytest.skip("compiled for the CPU; TF32 is fixed at compile time")
    ratio, passed, _ = worst_ratio(name, "cuda", True, exported_small)
    assert not passed and ratio > 30


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("name", RUNTIMES.names())
def test_cuda_requested_without_cuda_is_refused(name, exported_small):
    runtime = make_runtime(name, RuntimeOptions(device="cuda"))
    with pytest.raises(SetupError, match="CUDA is not available"):
        runtime.load(next(c.artifact for c in exported_small.values() if c.artifact.format in runtime.formats))
