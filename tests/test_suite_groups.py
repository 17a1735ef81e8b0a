"""The suite's own plumbing (tests/conftest.py): which tests pytest-xdist keeps on one worker so that a costly
shared export is built once, and what each worker sets for its share of the cores."""

from types import SimpleNamespace

from tests.conftest import NOT_SHARED_WORK, shared_export_groups, worker_environment
from verify.pipeline.overlap import MIN_CPUS, MODE_ENV


def fake_item(nodeid: str, **scopes: str):
    """A collected test as shared_export_groups reads it: its fixture closure, each fixture's scope and home."""
    definitions = {name: [SimpleNamespace(scope=scope, baseid="tests")] for name, scope in scopes.items()}
    return SimpleNamespace(nodeid=nodeid, _fixtureinfo=SimpleNamespace(names_closure=list(scopes),
                                                                       name2fixturedefs=definitions))


def test_session_fixtures_used_together_are_one_group():
    """The AOTInductor test uses aoti_export alone, test_artifact's default_export, test_cuda's exported_small,
    built from both: a group per fixture set would put them on two or three workers and compile twice; a
    session fixture used with none of them stays a group of its own."""
    items = [fake_item("tests/test_formats.py::aoti", aoti_export="session", tmp_path="function"),
             fake_item("tests/test_cuda.py::a", exported_small="session", aoti_export="session",
                       default_export="session", default_export_run="session", exported="module"),
             fake_item("tests/test_runtimes.py::b", exported_small="session"),
             fake_item("tests/test_artifact.py::c", default_export="session", default_export_run="session"),
             fake_item("tests/test_other.py::d", other_export="session")]
    groups = shared_export_groups(items)
    assert {groups[item.nodeid] for item in items[:4]} == {
        "aoti_export+default_export+default_export_run+exported_small"}
    assert groups[items[4].nodeid] == "other_export"


def test_module_fixtures_group_by_module_and_plain_tests_stay_free():
    shared = next(iter(NOT_SHARED_WORK))
    items = [fake_item("tests/test_x.py::a", built="module"), fake_item("tests/test_x.py::b", built="module"),
             fake_item("tests/test_y.py::c", tmp_path="function"),
             fake_item("tests/test_y.py::d", **{shared: "session"})]
    assert shared_export_groups(items) == {"tests/test_x.py::a": "tests/test_x.py",
                                           "tests/test_x.py::b": "tests/test_x.py"}


def test_a_worker_takes_its_share_of_the_cores_and_exports_in_process_below_the_overlap_minimum():
    assert worker_environment(0, 2) == {} and worker_environment(1, 2) == {}
    assert worker_environment(2, 2) == {"OMP_NUM_THREADS": "1", MODE_ENV: "off"}
    assert worker_environment(2, 2 * MIN_CPUS) == {"OMP_NUM_THREADS": str(MIN_CPUS)}
    assert worker_environment(4, 2) == {"OMP_NUM_THREADS": "1", MODE_ENV: "off"}
