"""The shape of the house (issue 15): no import cycle among the project's own modules, counting imports written
inside functions too (an in-function import hides an edge; it does not remove it). Imports under `if TYPE_CHECKING:`
are annotations, never run, and are left out."""

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("exporter", "verify")


def project_modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (getattr(test, "id", None) == "TYPE_CHECKING"
                                         or getattr(test, "attr", None) == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST):
    """Every node but those under `if TYPE_CHECKING:` (annotations only: never imported at run time)."""
    pending = [tree]
    while pending:
        node = pending.pop()
        yield node
        pending.extend(child for child in ast.iter_child_nodes(node) if not _is_type_checking(child))


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its text. `from pkg import name` counts as an edge to
    `pkg.name` when that is a module, else to `pkg` (whose __init__ runs either way)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            else:
                continue
            for target in targets:
                owner = _owner(target, modules)
                if owner is not None and owner != name:
                    graph[name].add(owner)
    return graph


def cycles(graph: dict[str, set[str]], nodes: list[str]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    counter = 0
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            advanced = False
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_graph_sees_in_function_imports_and_not_type_only_ones():
    modules = project_modules()
    graph = import_graph(modules)
    assert "verify.pipeline.stages" in graph["verify.api"]  # verify_export imports pipeline's stages inside it
    assert "exporter.weights" in graph["exporter.api"]
    assert "exporter.spec" not in graph["exporter.backbones"]  # ModelSpec only as an annotation there
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}, ["a", "b", "c"]) == [["a", "b"]]


def test_no_import_cycle_among_project_modules():
    modules = project_modules()
    found = cycles(import_graph(modules), sorted(modules))
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


ONNXRUNTIME_MODULE = "verify.runtimes.onnxruntime"
ONNXRUNTIME_ONLY = {"ort_opt_level", "opt_level", "session"}
"""ONNX Runtime's own option and session: read only in its module (the others get options through the registry)."""


def runtime_specific_names(tree: ast.AST) -> set[str]:
    """The ONNX-Runtime-only names a module uses: as attributes, keywords, variables or getattr's strings."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, ast.keyword) and node.arg:
            found.add(node.arg)
        elif isinstance(node, ast.Name) and node.id == "ort_opt_level":
            found.add(node.id)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr", "hasattr", "setattr") \
                and len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
            found.add(str(node.args[1].value))
    return found & ONNXRUNTIME_ONLY


def test_the_checker_sees_onnxruntime_only_names():
    assert runtime_specific_names(ast.parse('getattr(runtime, "session", None)')) == {"session"}
    assert runtime_specific_names(ast.parse("RuntimeOptions(ort_opt_level=x).opt_level")) == {"ort_opt_level",
                                                                                             "opt_level"}
    assert not runtime_specific_names(ast.parse("session = make(); session.run()"))  # a local ORT session is fine


def test_no_module_but_onnxruntimes_names_its_option_or_session():
    offenders = {name: sorted(runtime_specific_names(ast.parse(path.read_text())))
                 for name, path in project_modules().items() if name != ONNXRUNTIME_MODULE}
    offenders = {name: names for name, names in offenders.items() if names}
    assert not offenders, f"ONNX Runtime's own attributes named outside {ONNXRUNTIME_MODULE}: {offenders}"


MODEL_KINDS = {"ModelSpec": "exporter.spec", "UserModelSpec": "exporter.user_model",
               "ModuleSpec": "exporter.user_model"}
"""The model kinds and their modules: only there is a kind told apart by its class; elsewhere the kinds' protocol
(`runs_user_code`, `registered`, `row`, `build`) says what differs."""


def _names(node: ast.AST) -> set[str]:
    return {getattr(n, "id", None) or getattr(n, "attr", None) for n in ast.walk(node)} - {None}


def kind_checks(tree: ast.AST) -> set[str]:
    """The model kinds a module tests by class: isinstance/issubclass, type(x) compared, or a class pattern."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("isinstance", "issubclass") \
                and len(node.args) == 2:
            found |= _names(node.args[1])
        elif isinstance(node, ast.Compare):
            parts = [node.left, *node.comparators]
            if any(isinstance(p, ast.Call) and getattr(p.func, "id", None) == "type" for p in parts):
                found |= set().union(*(_names(p) for p in parts))
        elif isinstance(node, ast.MatchClass):
            found |= _names(node.cls)
    return found & set(MODEL_KINDS)


def test_the_checker_sees_every_way_of_testing_a_kind_by_class():
    assert kind_checks(ast.parse("isinstance(spec, UserModelSpec)")) == {"UserModelSpec"}
    assert kind_checks(ast.parse("isinstance(s, (spec.ModelSpec, Path))")) == {"ModelSpec"}
    assert kind_checks(ast.parse("type(s) is ModuleSpec")) == {"ModuleSpec"}
    assert kind_checks(ast.parse("match s:\n    case UserModelSpec():\n        pass")) == {"UserModelSpec"}
    assert not kind_checks(ast.parse("UserModelSpec.parse(text) if s.runs_user_code else ModelSpec(b, n, v)"))


def test_no_module_tells_the_model_kinds_apart_by_class():
    offenders = {name: sorted(kinds) for name, path in project_modules().items()
                 if (kinds := {k for k in kind_checks(ast.parse(path.read_text())) if MODEL_KINDS[k] != name})}
    assert not offenders, f"model kinds told apart by class outside their modules (use their protocol): {offenders}"


def test_every_model_kind_has_the_protocol():
    import importlib

    from exporter.spec import ModelSpec
    from exporter.user_model import ModuleSpec, UserModelSpec

    for kind, module in MODEL_KINDS.items():
        cls = getattr(importlib.import_module(module), kind)
        assert isinstance(cls.runs_user_code, bool) and isinstance(cls.registered, bool), kind
        assert callable(cls.build) and isinstance(cls.row, property), kind
    backbone, user = ModelSpec("resnet18", "frozen", "body"), UserModelSpec.parse("tests/data/tiny.py:make")
    assert backbone.row == ("resnet18", "frozen", "body") and user.row == ("tests/data/tiny.py:make", "", "")
    assert (backbone.registered, backbone.runs_user_code) == (True, False)
    assert (user.registered, user.runs_user_code) == (False, True)
    # a module handed over in memory (the pytest plugin) runs no new code, but is no registered backbone either
    assert (ModuleSpec.registered, ModuleSpec.runs_user_code) == (False, False)


TESTS = ROOT / "tests"


def imported_test_modules(tree: ast.AST, package: str = "tests") -> set[str]:
    """The test modules (tests.test_*) a file imports: `import tests.test_x`, `from tests.test_x import ...`,
    `from tests import test_x` or the relative `from .test_x import ...` (`package`: the file's own)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        found |= {name for name in names
                  if name.startswith("tests.") and name.rpartition(".")[2].startswith("test_")}
    return found


def test_the_checker_sees_both_spellings_of_importing_a_test_module():
    assert imported_test_modules(ast.parse("from tests.test_cli import invoke")) == {"tests.test_cli"}
    assert imported_test_modules(ast.parse("import tests.test_cli")) == {"tests.test_cli"}
    assert imported_test_modules(ast.parse("import tests.test_cli as cli")) == {"tests.test_cli"}
    assert imported_test_modules(ast.parse("from tests import test_cli")) == {"tests.test_cli"}
    assert imported_test_modules(ast.parse("from .test_cli import invoke")) == {"tests.test_cli"}
    assert not imported_test_modules(ast.parse("from tests.conftest import SMALL\nfrom tests.helpers import invoke\n"
                                               "from tests.data import tiny"))


def test_no_test_module_imports_another():
    """Issue 15: shared helpers live in tests/helpers.py (fixtures in tests/conftest.py), never in a test module."""
    offenders = {}
    for path in sorted(TESTS.rglob("*.py")):
        package = ".".join(path.parent.relative_to(ROOT).parts)
        if found := imported_test_modules(ast.parse(path.read_text()), package):
            offenders[str(path.relative_to(ROOT))] = sorted(found)
    assert not offenders, f"test modules imported by other files (move the helper to tests/helpers.py): {offenders}"
