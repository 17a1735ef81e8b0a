from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from verify.inputs import SAMPLE_KINDS, SAMPLES_ENV
from verify.judge.layers import LAYERS_ENV
from verify.pipeline.overlap import MIN_CPUS, MODE_ENV

SMALL = "resnet18"
SMALL_SHAPE = (1, 3, 64, 64)


def family_backbone(family: str) -> str:
    """The first registered backbone of `family` (resnet18 for resnet): what family-wide tests build."""
    from exporter.backbones import BACKBONES

    return next(name for name in BACKBONES if BACKBONES.get(name).family == family)


def cuda_available() -> bool:
    return torch.cuda.is_available()


LOADGROUP_BROKEN = ((9, 2), (3, 8))
"""pytest from 9.2 with pytest-xdist up to 3.8: pytest's structured test ids drop the group suffix that
`--dist loadgroup` reads (pytest-xdist#1386), silently: every worker then builds every shared export again."""


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


def check_loadgroup(config) -> None:
    """Stop with the reason, rather than run the suite at twice its time (15 min against under 10, measured)."""
    if (config.getoption("dist", "no") != "loadgroup" or not config.getoption("numprocesses", None)
            or os.environ.get("PYTEST_XDIST_WORKER")):
        return
    from importlib.metadata import version

    pytest_from, xdist_upto = LOADGROUP_BROKEN
    if _version(pytest.__version__) >= pytest_from and _version(version("pytest-xdist")) <= xdist_upto:
        raise pytest.UsageError(f"pytest {pytest.__version__} with pytest-xdist {version('pytest-xdist')} ignores "
                                "--dist loadgroup (pytest-xdist#1386): install the range pyproject.toml pins "
                                "(pip install -e '.[dev]')")


def worker_environment(workers: int, cores: int) -> dict[str, str]:
    """What each of `workers` pytest-xdist workers sets on `cores` cores: its share of the cores for torch's
    threads and the processes it starts (OMP_NUM_THREADS): two workers of two threads each on two cores spin
    against each other (measured: the full suite 11.5 min and 20 min of CPU, against 8 min and 15 min). With
    fewer cores than a background export needs (verify/pipeline/overlap.py), every format is exported in the
    worker unless a test asks for the overlap (MODE_ENV "on"): the child would only add its start-up (measured:
    two resnet18 exports 57 s of CPU with it, 43 s without)."""
    if workers <= 1:
        return {}
    threads = max(1, cores // workers)
    env = {"OMP_NUM_THREADS": str(threads)}
    if threads < MIN_CPUS:
        env[MODE_ENV] = "off"
    return env


RAM_TMP = "/dev/shm"
RAM_TMP_MIN_FREE = 8 * 2**30
"""Where the suite's temporary files go when TMPDIR is not set and this many bytes are free there (a memory file
system): the suite writes hundreds of model files, 2.5 GB of them at once at its peak, and on this machine's disk
their writes and fsyncs cost (measured, the wide_resnet50_2 test: 16.5 s with /tmp, 13.4 s with /dev/shm; the full
suite 8:53 against 9:05-9:19). Elsewhere the system's temporary folder, as before."""


def use_memory_tmp(config) -> None:
    """TMPDIR set to RAM_TMP for this process and the workers and processes it starts (set before xdist starts
    its workers, which inherit it, and before the base temporary folder is first made)."""
    if os.environ.get("TMPDIR") or config.getoption("basetemp", None):
        return
    try:
        stats = os.statvfs(RAM_TMP)
    except OSError:
        return
    # noexec (Docker mounts /dev/shm so): an AOTInductor package's library cannot be loaded from there, and
    # os.access(X_OK) on a folder does not say so (review 15)
    runs_code = not stats.f_flag & os.ST_NOEXEC
    if stats.f_bavail * stats.f_frsize >= RAM_TMP_MIN_FREE and runs_code and os.access(RAM_TMP, os.W_OK | os.X_OK):
        import getpass
        import tempfile

        # torch's compile cache (hundreds of MB, kept between runs) stays in the disk's temporary folder
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR",
                              os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}"))
        os.environ["TMPDIR"] = RAM_TMP
        tempfile.tempdir = None  # tempfile reads TMPDIR again on its next use


SUITE_SAMPLES = len(SAMPLE_KINDS)
"""Seeded inputs per verdict in the suite: one of each kind, so pooling and the worst input are exercised
everywhere at 3/8 of the default's runs (tests/test_evidence.py judges on the default set itself)."""


SUITE_LAYERS = "0"
"""The layer verdict `verify export` runs by default, off in the suite (LAYERS_ENV): it would re-run every layer of
every export's files; the tests of the default (tests/test_layers.py) unset it, and `--layers` tests ask for it."""


def pytest_configure(config):
    check_loadgroup(config)
    use_memory_tmp(config)
    os.environ[SAMPLES_ENV] = str(SUITE_SAMPLES)
    os.environ[LAYERS_ENV] = SUITE_LAYERS
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    env = worker_environment(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0), cores)
    os.environ.update(env)
    if env:
        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))


FAST_MODULES = {"test_architecture", "test_bad_inputs", "test_ci_output", "test_detections", "test_inputs",
                "test_inputs_trust", "test_manifest", "test_overlap_idle", "test_registry", "test_render_safety",
                "test_suite_groups", "test_weights"}
"""Modules whose tests build and export no model (bar those marked slow one by one): the fast tier,
`pytest -m "not slow"`. Every other module builds, exports and runs models, and is marked slow as a whole."""


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook, which reads the groups into the test ids
def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA device")
    groups = shared_export_groups(items)
    for item in items:
        if "needs_cuda" in item.keywords and not cuda_available():
            item.add_marker(skip)
        group = groups.get(item.nodeid)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
        if group or item.module.__name__.rpartition(".")[2] not in FAST_MODULES:
            item.add_marker(pytest.mark.slow)



NOT_SHARED_WORK = {"session_cache", "module_tmp"}
"""Module/session fixtures that build nothing (folders and environment only)."""


def shared_fixtures(item) -> dict[str, str]:
    """The module and session fixtures of this suite that `item` uses, directly or not: name -> scope."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return {}
    shared = {}
    for name in info.names_closure:
        definitions = info.name2fixturedefs.get(name)
        if not definitions or name in NOT_SHARED_WORK:
            continue
        definition = definitions[-1]
        if definition.scope in ("module", "session") and definition.baseid.startswith("tests"):
            shared[name] = definition.scope
    return shared


def shared_export_groups(items) -> dict[str, str]:
    """The xdist group of each test that uses a module or session fixture of this suite (they build exports,
    tens of seconds each): every test sharing it runs on one worker (`--dist loadgroup`), so it is built once;
    the other tests go one by one to whichever worker is free, which keeps the two workers busy to the end.
    A module fixture groups within its module; session fixtures group across modules, and session fixtures
    that any test uses together form one group (exported_small takes aoti_export's package: a test of either
    must run where the one AOTInductor compile is)."""
    parent: dict[str, str] = {}

    def root(name: str) -> str:
        while parent.setdefault(name, name) != name:
            name = parent[name]
        return name

    used = {item.nodeid: shared_fixtures(item) for item in items}
    for shared in used.values():
        sessions = sorted(name for name, scope in shared.items() if scope == "session")
        for name in sessions:
            parent[root(name)] = root(sessions[0])
    components: dict[str, set[str]] = {}
    for name in list(parent):
        components.setdefault(root(name), set()).add(name)
    groups = {}
    for nodeid, shared in used.items():
        session = next((name for name, scope in shared.items() if scope == "session"), None)
        if session is not None:
            groups[nodeid] = "+".join(sorted(components[root(session)]))
        elif shared:
            groups[nodeid] = nodeid.split("::")[0]
    return groups


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
def default_export_run(tmp_path_factory):
    """`verify export -b SMALL --shape SMALL_SHAPE --json ...` (every default format, unsigned), once per suite:
    (its folder, its JSON report, the CLI result)."""
    import json

    from typer.testing import CliRunner

    from verify.cli import app

    out = tmp_path_factory.mktemp("default-export")
    result = CliRunner().invoke(app, ["export", "-b", SMALL, "--shape", "x".join(map(str, SMALL_SHAPE)),
                                      "--out", str(out), "--json", str(out / "report.json")])
    assert result.exit_code == 0, result.output
    return out / f"{SMALL}-frozen-body", json.loads((out / "report.json").read_text()), result


@pytest.fixture(scope="session")
def default_export(default_export_run):
    """default_export_run's folder, which tests/test_artifact.py and tests/test_formats.py read (and copy before
    they change anything)."""
    return default_export_run[0]


@pytest.fixture(scope="session")
def batch_body_export(tmp_path_factory):
    """`verify_export` of SMALL:batch:body at SMALL_SHAPE (every default format), once per suite: (its report, its
    folder). tests/test_export.py judges the report (its norm x view case), tests/test_explain.py explains its
    files (the clean side of every pair there)."""
    from exporter.spec import ModelSpec
    from verify.api import RunSettings, verify_export

    out = tmp_path_factory.mktemp("batch-body-export")
    report = verify_export(ModelSpec(SMALL, "batch", "body"), RunSettings(shape=SMALL_SHAPE), out=out)
    return report, out / f"{SMALL}-batch-body"


@pytest.fixture(scope="session")
def detector_keys(tmp_path_factory):
    """(private, public) key files that detector_export signs with."""
    from tests.helpers import make_keys

    return make_keys(tmp_path_factory.mktemp("detector-keys"))


@pytest.fixture(scope="session")
def detector_export(tmp_path_factory, detector_keys):
    """`verify export -b NAME --sign-key` (tests/helpers.py: the whole detector) with every report file, once per
    suite: (the DetectorReport that verify_detector returned to the command, the published folder, the CLI
    result, the reports' folder). tests/test_detectors.py judges the command and its reports;
    tests/test_detector_folder.py checks hard-linked copies of the signed folder, and of it unsigned
    (tests/helpers.py strip_signature) as tests/test_detector_folder_hunt.py does. A file outside the tool's
    folders stays as it was."""
    from typer.testing import CliRunner

    from tests.helpers import NAME
    from verify.cli import app
    from verify.detect import check

    where = tmp_path_factory.mktemp("detector")
    outside = where / "sentinel.txt"
    outside.write_text("keep")
    made = []

    def spy(*args, _real=check.verify_detector, **kwargs):
        made.append(_real(*args, **kwargs))
        return made[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(check, "verify_detector", spy)
        result = CliRunner().invoke(app, ["export", "-b", NAME, "--out", str(where / "out"), "--sign-key",
                                          str(detector_keys[0]), "--json", str(where / "r.json"), "--junit",
                                          str(where / "r.xml"), "--markdown", str(where / "r.md"), "--html",
                                          str(where / "r.html")])
    assert outside.read_text() == "keep"
    report, = made
    return report, where / "out" / f"{NAME}-frozen", result, where


@pytest.fixture(scope="session")
def two_cell_matrix(tmp_path_factory):
    """tests/helpers.py `request()`'s two-cell matrix, once per suite (it was run cold by both modules that judge it):
    shards 1/2 and 2/2 that agree, then the same at FAILING_SHARE of their worst ratio (a real disagreement), into one
    cache, with no shard or report-key variable set: (the cache folder, the factor, the passing and the failing
    MatrixResults). tests/test_matrix_property.py and tests/test_matrix_trust.py write the reports themselves and
    take a copy of the cache where they read or forge its entries (`matrix_cache_copy`)."""
    from tests.helpers import FAILING_SHARE, request
    from verify.cache import ENV_OFF
    from verify.matrix import REPORT_KEY_ENV, SHARD_ENV, run_matrix

    cache = tmp_path_factory.mktemp("two-cell-matrix") / "cache"
    with pytest.MonkeyPatch.context() as patch:
        for name in (*SHARD_ENV, REPORT_KEY_ENV, ENV_OFF):
            patch.delenv(name, raising=False)
        passing = [run_matrix(request(), shard=(i, 2), cache_dir=cache) for i in (1, 2)]
        factor = round(max(c.worst_ratio for r in passing for c in r.cells) * FAILING_SHARE, 3)
        failing = [run_matrix(request(factor), shard=(i, 2), cache_dir=cache) for i in (1, 2)]
    return cache, factor, passing, failing


def matrix_cache_copy(two_cell_matrix, folder):
    """A copy of two_cell_matrix's cache in `folder` (a test may edit or forge its entries)."""
    return Path(shutil.copytree(two_cell_matrix[0], folder / "cache"))


SHARED_AOTI = "aoti"
"""The format whose compile (the suite's costliest step) runs once: aoti_export."""
AOTI_MODEL = "tests/data/tiny.py:make"
AOTI_SHAPE = (1, 3, 32, 32)
"""What aoti_export compiles: three convolutions; the command costs 25.8 s of CPU where resnet18 at SMALL_SHAPE cost
61.9 s (measured, empty compile cache). What the tests of a package show (it compiles, loads, runs, agrees with its
oracle, refuses bad inputs) does not depend on the model."""


@pytest.fixture(scope="session")
def aoti_export(tmp_path_factory):
    """`verify export --model AOTI_MODEL --shape AOTI_SHAPE --format aoti`, once per suite: the suite's only
    AOTInductor compile. (CLI result, its folder): tests/test_formats.py judges the command, exported_small takes the
    package."""
    from typer.testing import CliRunner

    from exporter.user_model import UserModelSpec
    from verify.cli import app

    out = tmp_path_factory.mktemp("aoti-export")
    result = CliRunner().invoke(app, ["export", "--model", AOTI_MODEL, "--shape", "x".join(map(str, AOTI_SHAPE)),
                                      "--format", SHARED_AOTI, "--out", str(out)])
    return result, out / UserModelSpec.parse(AOTI_MODEL).slug


@dataclass(frozen=True)
class Exported:
    """One exported file (or the eager model) with what judges it: its model's input, eager float32 outputs and
    float64 oracle, and the input's shape."""

    artifact: Any
    inputs: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]
    oracle: Any
    shape: tuple[int, ...]


def judged_eager(built, shape: tuple[int, ...]) -> Exported:
    """`built`'s eager artifact with its seeded input, float32 outputs and float64 oracle."""
    from exporter.formats.eager import eager_artifact
    from verify.inputs import make_input
    from verify.judge.oracle import measure_oracle
    from verify.runtimes import make_runtime, runtimes_for

    eager = eager_artifact(built, shape)
    inputs = {eager.meta.input_name: make_input(shape, 0)}
    reference = make_runtime(runtimes_for(eager.format)[0]).load(eager).run(inputs)
    return Exported(eager, inputs, reference, measure_oracle(eager, inputs, reference), shape)


@pytest.fixture(scope="session")
def exported_small(tmp_path_factory, default_export, aoti_export):
    """Every registered file format, exported by `verify export` once for the suite: format -> Exported. SMALL at
    SMALL_SHAPE in the default formats (default_export's files) and the eager one; the AOTInductor package is
    aoti_export's AOTI_MODEL, judged against that model's own eager outputs and oracle; a file format in neither
    is exported here, of SMALL."""
    from dataclasses import replace

    from exporter.api import get_backbone
    from exporter.export import ExportOptions, export_model
    from exporter.formats import ExportContext, file_formats, get_format, open_artifact
    from exporter.user_model import FACTORY_WEIGHTS, UserModelSpec

    result, aoti_folder = aoti_export
    assert result.exit_code == 0, result.output
    built = get_backbone(SMALL, "frozen", "body")
    small = judged_eager(built, SMALL_SHAPE)
    tiny = judged_eager(UserModelSpec.parse(AOTI_MODEL).build(0, AOTI_SHAPE, FACTORY_WEIGHTS), AOTI_SHAPE)
    found = {small.artifact.format: small}
    for folder, case in ((default_export, small), (aoti_folder, tiny)):
        for fmt in file_formats():
            if (folder / get_format(fmt).filename).is_file():
                found[fmt] = replace(case, artifact=open_artifact(folder / get_format(fmt).filename))
    others = tuple(fmt for fmt in file_formats() if fmt not in found)
    if others:
        options = ExportOptions(formats=others)
        x = small.inputs[small.artifact.meta.input_name]
        context = ExportContext(built, torch.from_numpy(x), small.artifact.meta, dynamic=options.dynamic)
        folder = tmp_path_factory.mktemp("every-format")
        for fmt in others:
            found[fmt] = replace(small, artifact=export_model(built, small.artifact.meta, context.example, folder,
                                                              options, fmt, context))
    return found


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
