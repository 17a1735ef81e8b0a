from __future__ import annotations

import contextlib
import random
import shutil

import numpy as np
import pytest
import torch

SMALL = "resnet18"
SMALL_SHAPE = (1, 3, 64, 64)


def family_backbone(family: str) -> str:
    """The first registered backbone of `family` (resnet18 for resnet): what family-wide tests build."""
    from exporter.backbones import BACKBONES

    return next(name for name in BACKBONES if BACKBONES.get(name).family == family)


def cuda_available() -> bool:
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA device")
    if not cuda_available():
        for item in items:
            if "needs_cuda" in item.keywords:
                item.add_marker(skip)


def cpu_and_cuda():
    """Parametrise a test over devices; the CUDA case skips cleanly without a GPU."""
    return ("cpu", pytest.param("cuda", marks=pytest.mark.needs_cuda))


@pytest.fixture(autouse=True)
def restore_rng_state():
    """Tests may seed freely; the next test starts from the state it would have had."""
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    yield
    random.setstate(states[0])
    np.random.set_state(states[1])
    torch.set_rng_state(states[2])


@contextlib.contextmanager
def scratch(tmp_path_factory, name: str):
    """A temporary folder removed when the block ends, pass or fail. Module and session fixtures use it
    so that exports (tens to hundreds of MB each) do not pile up on disk until the session ends: pytest
    keeps `tmp_path_factory.mktemp` folders to the end and a full run would need tens of GB."""
    path = tmp_path_factory.mktemp(name)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def empty_torch_home(tmp_path_factory, monkeypatch):
    """No test may find (or download) real pretrained weights."""
    with scratch(tmp_path_factory, "torch_home") as home:
        monkeypatch.setenv("TORCH_HOME", str(home))
        yield


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory):
    """The suite never touches the user's cache folder: session and module fixtures share this one."""
    from verify.cache import ENV_DIR

    with scratch(tmp_path_factory, "verify-cache") as cache, pytest.MonkeyPatch.context() as patch:
        patch.setenv(ENV_DIR, str(cache))
        yield


@pytest.fixture(autouse=True)
def test_cache(tmp_path_factory, monkeypatch):
    """Each test its own empty cache: nothing it computes comes from another test (a test that patches an
    exporter gets that exporter, not a cached file)."""
    from verify.cache import ENV_DIR

    with scratch(tmp_path_factory, "cache") as cache:
        monkeypatch.setenv(ENV_DIR, str(cache))
        yield


@pytest.fixture(scope="session")
def exported_small(tmp_path_factory):
    """SMALL exported once through every registered file format (one shared torch.export trace):
    (artifacts by format, inputs, eager float32 outputs, the float64 oracle)."""
    from exporter.backbones import get_backbone
    from exporter.export import ExportOptions, export_model
    from exporter.formats import ExportContext, file_formats
    from exporter.formats.eager import eager_artifact
    from verify.inputs import make_input
    from verify.oracle import measure_oracle
    from verify.runtimes import make_runtime, runtimes_for

    folder = tmp_path_factory.mktemp("every-format")
    built = get_backbone(SMALL, "frozen", "body")
    eager = eager_artifact(built, SMALL_SHAPE)
    x = make_input(SMALL_SHAPE, 0)
    options = ExportOptions(formats=tuple(file_formats()))
    context = ExportContext(built, torch.from_numpy(x), eager.meta, dynamic=options.dynamic)
    artifacts = {eager.format: eager}
    for fmt in options.formats:
        artifacts[fmt] = export_model(built, eager.meta, context.example, folder, options, fmt, context)
    inputs = {eager.meta.input_name: x}
    reference = make_runtime(runtimes_for(eager.format)[0]).load(eager).run(inputs)
    return artifacts, inputs, reference, measure_oracle(eager, inputs, reference)


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory):
    """`tmp_path_factory.mktemp` for module fixtures: what it makes is removed when the module's tests end."""
    made = []

    def mktemp(name: str):
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield mktemp
    for path in made:
        shutil.rmtree(path, ignore_errors=True)
