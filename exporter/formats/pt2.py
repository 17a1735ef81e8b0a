"""The ExportedProgram (`torch.export`), saved with `torch.export.save` as a `.pt2` archive.

Loading one can execute code four ways (torch 2.11..2.14, torch/export/pt2_archive/_package.py and
torch/_export/serde/serialize.py): a payload marked `use_pickle` (weights, constants) goes through
torch.load(weights_only=False), an opaque constant through pickle.loads, the sample inputs through
torch.load with a weights_only=False fallback; every symbolic expression in the graph is parsed by
sympy.sympify (an eval); `.module()` exec()s the archive's `guards_code` strings; and a node's target
resolves by attribute lookup from `torch`, `operator` or `math`, so `torch.os.system` is a callable.
`scan_archive` reads the archive as data (zip entries and JSON, nothing unpickled or evaluated) and
refuses each of those routes; `load_program` loads only a scanned archive that torch's own zip reader reads as
Python's did (two zip parsers read one crafted file apart: hunt 10c), with every torch.load forced to
weights_only. The weights themselves are raw bytes described by JSON and need no unpickling. Torch
still documents torch.export.load as unsafe on untrusted files, so the format stays code
(`executes_code_on_load`): the scan narrows what a signed or explicitly trusted file can do."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from exporter.artifacts import TORCHSCRIPT_META_FILE, Artifact, ArtifactMeta
from exporter.errors import ArtifactError, ExportError
from exporter.formats import ExportContext, Format, NoOptions
from exporter.formats.program import DYNAMIC_AXES, accepted_ranges
from exporter.formats.torchscript import read_zip_meta
from exporter.fsio import save_through_memory

AOTI_MARKER = "/data/aotinductor/"
"""Archive entries that only an AOTInductor package holds (both are `.pt2` zip archives)."""
SAFE_TARGET_PREFIXES = ("torch.ops.aten.", "torch.ops.prims.")
"""Graph node targets a scanned archive may call: ATen and prims operator overloads."""
SAFE_SYMBOLIC_TARGETS = frozenset({
    *(f"_operator.{op}" for op in ("getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "pow",
                                   "lt", "le", "gt", "ge", "eq", "ne", "and_", "or_", "not_")),
    *(f"math.{fn}" for fn in ("sqrt", "floor", "ceil", "trunc")),
    *(f"torch.{fn}" for fn in ("sym_max", "sym_min", "sym_not", "sym_float", "sym_int", "sym_ite", "sym_sqrt",
                               "sym_sum", "_sym_sqrt")),
})
"""Shape arithmetic on symbolic sizes that torch.export writes as plain Python callables."""
GUARD_ATTRIBUTES = frozenset({"size", "stride", "storage_offset", "dim", "numel"})
"""The only attributes a guard expression may read (of an input, or of `math`)."""
TORCH_SYMBOLIC = frozenset({"sym_max", "sym_min", "sym_float", "sym_int", "sym_sqrt", "sym_not", "sym_ite",
                            "sym_sum"})
"""`torch.<name>` a guard may call: torch's symbolic arithmetic, which torch.export writes into guards of dynamic
shapes (a mask over `y[:, :, 1:-1, 1:-1]` gives `torch.sym_max(...)`); each computes on its numbers only."""
TORCH_FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
"""torch.serialization reads it on every torch.load: set, weights_only=False is overridden."""


def is_aoti_package(path: Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any(AOTI_MARKER in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


class ExportedProgramFormat(Format):
    name: ClassVar[str] = "pt2"
    default_runtime: ClassVar[str] = "exported"
    suffixes: ClassVar[tuple[str, ...]] = (".pt2",)
    filename: ClassVar[str] = "model.pt2"
    Options: ClassVar[type] = NoOptions
    default: ClassVar[bool] = True
    executes_code_on_load: ClassVar[bool] = True
    rides_along: ClassVar[bool] = True  # traced once in the background child, which needs the trace for ONNX
    executes: ClassVar[str] = ("code, by routes in torch's loader (pickled constants, sympy expressions, node "
                               "targets by name): each is refused by a scan of the archive before torch loads it, "
                               "but torch itself calls torch.export.load unsafe on untrusted files; trust the file")

    def claims(self, path: Path) -> bool:
        return super().claims(path) and not is_aoti_package(path)

    def export(self, ctx: ExportContext, options: NoOptions, path: Path) -> Artifact:
        import torch

        meta = ctx.new_meta()
        meta.exporter = "torch.export.export"
        meta.dynamic_axes = dict(DYNAMIC_AXES) if ctx.dynamic else {}
        program = ctx.exported_program()
        meta.dynamic_ranges = accepted_ranges(program) if ctx.dynamic else {}
        from exporter.serde_speed import remember_sym_prints

        remember_sym_prints()  # each shape expression printed once per object, not once per size it appears in
        try:
            save_through_memory(lambda buffer: torch.export.save(program, buffer, extra_files={
                TORCHSCRIPT_META_FILE: meta.to_json()}), path)
        except OSError:
            raise  # the disk's, not the exporter's (a full disk): the staged folder says so in one line
        except Exception as exc:
            raise ExportError(f"torch.export.save failed for {ctx.built.spec}: {str(exc).splitlines()[0]}") from exc
        return Artifact(self.name, meta, path=path)

    def weight_shapes(self, path: Path) -> list[tuple[int, ...]] | None:
        """The shapes of the parameters a node of the saved graph reads (or the graph returns), read from the
        archive's JSON as data: without them, two .pt2 sides of `verify compare` had no floor bound at all, and a
        spare parameter no node reads would lift it as in the other formats (hunt 9b). None when the archive does
        not say (that side then borrows the other's K, as before)."""
        return program_weight_shapes(path)

    def read_meta(self, path: Path) -> ArtifactMeta:
        return read_zip_meta(path, "torch.export (.pt2)")

    def manifest_fields(self, artifact: Artifact) -> dict:
        return {"exporter": artifact.meta.exporter}

    def check_integrity(self, path: Path, folder: Path) -> None:
        """Read as data: no pickled payload, no Python callable, no expression that is not arithmetic."""
        scan_archive(path)


def load_program(path: Path) -> Any:
    """`torch.export.load(...).module()` of an archive that `scan_archive` passed and that torch's own zip reader
    reads as the scan did (`require_torch_reads_the_same`), every torch.load inside forced to weights_only (the
    environment variable torch reads on each call, restored after). The file is read once, into a private copy of
    the same name: the bytes scanned are the bytes loaded (opened twice by path, a file renamed over it between the
    scan and the load was loaded unscanned; hunt 9b)."""
    import os
    import shutil
    import tempfile

    import torch

    with tempfile.TemporaryDirectory(prefix="backbone-verify-pt2-") as private:
        copy = Path(private) / path.name
        with open(path, "rb") as source, open(copy, "xb") as target:
            shutil.copyfileobj(source, target, 1 << 20)
        scan_archive(copy)
        require_torch_reads_the_same(copy)
        before = os.environ.get(TORCH_FORCE_WEIGHTS_ONLY)
        os.environ[TORCH_FORCE_WEIGHTS_ONLY] = "1"
        try:
            with _deserializing_reason() as reason:
                try:
                    return torch.export.load(str(copy)).module()
                except RuntimeError as exc:  # torch logs the cause and raises "check the warnings above"
                    if reason:
                        raise RuntimeError(f"{reason[-1]} (torch.export.load could not deserialize it)") from exc
                    raise
        finally:
            if before is None:
                os.environ.pop(TORCH_FORCE_WEIGHTS_ONLY, None)
            else:
                os.environ[TORCH_FORCE_WEIGHTS_ONLY] = before


@contextlib.contextmanager
def _deserializing_reason() -> Iterator[list[str]]:
    """The last line of each error torch.export.load logs and replaces by "We ran into an error when deserializing the
    saved file. Please check the warnings above" (hunt 40: a constant's bytes cut short said only that, and the
    warnings were silenced): collected from torch.export's logger while the load runs, its settings put back."""
    import logging

    reasons: list[str] = []

    class Caught(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.exc_info and record.exc_info[1] is not None:
                lines = str(record.exc_info[1]).strip().splitlines()
                reasons.append(lines[-1] if lines else type(record.exc_info[1]).__name__)

    logger, handler = logging.getLogger("torch.export"), Caught(logging.WARNING)
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.WARNING)
    logger.propagate = False  # said once, in the error, not also as a traceback on stderr
    logger.addHandler(handler)
    try:
        yield reasons
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def program_weight_shapes(path: Path) -> list[tuple[int, ...]] | None:
    """Each program's parameters (`input_specs`) that a node takes as an input or the graph returns, as shapes:
    the sizes its weights config gives the tensor torch builds from the archive's bytes, not the graph's own
    `tensor_values`, which torch never checks against the weights (one number edited there loaded and ran as before
    and lifted K 900-fold: a graph refused as 'not a noise floor' passed; hunt 10c). A name anywhere in a node's
    inputs counts, so anything unclear counts. None when an archive, a program or a parameter's size cannot be read
    as plain numbers."""
    import json
    import zipfile

    from exporter.fsio import read_archive_member

    shapes: list[tuple[int, ...]] = []
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            models = sorted({n for n in names if n.split("/", 1)[-1].startswith("models/") and n.endswith(".json")})
            if not models:
                return None
            for model in models:
                root, stem = model.split("/", 1)[0], model.rsplit("/", 1)[-1][:-len(".json")]
                config = json.loads(read_archive_member(
                    archive, f"{root}/data/weights/{stem}_weights_config.json", path))["config"]
                graph_module = json.loads(read_archive_member(archive, model, path))["graph_module"]
                graph = graph_module["graph"]
                read = {leaf["name"] for leaf in _find([graph["nodes"], graph["outputs"]], "name")
                        if isinstance(leaf["name"], str)}
                for spec in graph_module["signature"]["input_specs"]:
                    parameter = spec["parameter"] if "parameter" in spec else None
                    if parameter is not None and parameter["arg"]["name"] in read:
                        sizes = config[parameter["parameter_name"]]["tensor_meta"]["sizes"]
                        shapes.append(tuple(int(size["as_int"]) for size in sizes))
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, TypeError, UnicodeDecodeError, ArtifactError):
        return None
    return shapes


def scan_archive(path: Path) -> str:
    """Read the archive as data and refuse every route by which loading it could run code (module doc):
    an ArtifactError naming the first found; else a short description of what was checked."""
    import json
    import zipfile

    from exporter.fsio import read_archive_member

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            roots = {name.split("/", 1)[0] for name in names}
            if len(roots) != 1:
                raise ArtifactError(f"{path.name} is not one torch.export archive (entries under {len(roots)} roots)")
            root = roots.pop()
            _refuse_ambiguous_names(path, names)
            # torch.export.load loads every entry under models/ as a program, whatever its name ends with
            models = [n for n in names if n.startswith(f"{root}/models/")]
            if not models:
                raise ArtifactError(f"{path.name} holds no torch.export program (no {root}/models/*.json)")
            _require_loaded_program(path, root, models)
            _refuse_pickled_entries(path, root, names)
            for model in models:
                if not model.endswith(".json"):
                    raise ArtifactError(f"{path.name} holds {model[len(root) + 1:][:80]!r}, which torch.export.load "
                                        "would load as a program (it loads everything under models/), and it is not "
                                        "a program's .json; refused")
                stem = model[len(f"{root}/models/"):-len(".json")]
                stored = []
                for kind in ("weights", "constants"):
                    config = f"{root}/data/{kind}/{stem}_{kind}_config.json"
                    if config not in names:
                        raise ArtifactError(f"{path.name}: {config} is missing; a torch.export.save archive has it")
                    stored.append(_check_payloads(path, kind, json.loads(read_archive_member(archive, config, path))))
                _refuse_stored_twice(path, *stored)
                _check_program(path, json.loads(read_archive_member(archive, model, path)))
            _refuse_unknown_entries(path, archive, root, names)
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path.name} is not a readable torch.export archive: {exc}") from None
    return f"{len(models)} program(s): raw weights, ATen operators, plain guards (nothing pickled)"


LOADED_PROGRAM = "model"
"""The program torch.export.load returns from an archive of several (`package_pt2`'s names): the one judged."""


def _require_loaded_program(path: Path, root: str, models: list[str]) -> None:
    """An archive whose programs are all named otherwise failed in torch.export.load with "'model'" for its reason
    (hunt 39): refused here with what it holds and what to do."""
    if f"{root}/models/{LOADED_PROGRAM}.json" not in models:
        held = ", ".join(repr(m[len(f"{root}/models/"):].removesuffix(".json")[:40]) for m in models[:3])
        raise ArtifactError(f"{path.name} holds the program(s) {held} and none named {LOADED_PROGRAM!r}, the one "
                            "torch.export.load returns; save the program to check with torch.export.save")


def _refuse_ambiguous_names(path: Path, names: list[str]) -> None:
    """Two entries whose names differ at most in letter case: torch's zip reader (miniz) looks names up ignoring
    case and, among equal ones, finds either, while Python's zipfile reads the last of exactly that name; so the
    scan could read one program and torch load the other (measured: a payload ran). torch.export.save writes
    each name once."""
    seen: dict[str, str] = {}
    for name in names:
        other = seen.get(name.lower())
        if other is not None:
            twice = "twice" if other == name else f"and {other[:80]!r}, the same name in another case"
            raise ArtifactError(f"{path.name} holds {name[:80]!r} {twice}: torch's archive reader would pick "
                                "either, and not necessarily the one this scan reads; refused")
        seen[name.lower()] = name


def require_torch_reads_the_same(path: Path) -> None:
    """torch's own zip reader (miniz) lists the entries Python's zipfile lists and returns the same bytes for each
    entry that is not a raw tensor payload (programs, configs, sample inputs, extra files): two zip parsers that
    disagree (on names, on which central directory counts: measured, a zip64 record read by one and not the other)
    would otherwise load what the scan never read. Only before a load: miniz then parses the file anyway, and an
    untrusted folder's integrity check keeps to Python's reader."""
    import re
    import zipfile

    import torch

    from exporter.fsio import read_archive_member

    payload = re.compile(r"data/(weights|constants)/(?!.*_config\.json$)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            root = names[0].split("/", 1)[0] if names else ""
            inner = {name: name[len(root) + 1:] for name in names}
            python = {name: read_archive_member(archive, name, path) for name in names
                      if not payload.match(inner[name])}
        reader = torch._C.PyTorchFileReader(str(path))
        same = sorted(reader.get_all_records()) == sorted(inner.values()) and all(
            reader.get_record(inner[name]) == data for name, data in python.items())
    except (zipfile.BadZipFile, ArtifactError) as exc:
        raise ArtifactError(f"{path.name} is not a readable torch.export archive: {exc}") from None
    except Exception as exc:  # c10::Error and others: a file torch cannot read is refused as unreadable
        raise ArtifactError(f"{path.name} is not a readable torch.export archive: torch's reader says "
                            f"{(str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]}") from None
    if not same:
        raise ArtifactError(f"{path.name}: torch's archive reader sees other entries or other bytes than this scan "
                            "read (a crafted zip); refused")


def _refuse_pickled_entries(path: Path, root: str, names: list[str]) -> None:
    """Legacy and AOTInductor entries: a pickled state dict, or compiled code, is never data."""
    for name in names:
        inner = name[len(root) + 1:]
        legacy = inner.startswith(("data/weights/", "data/constants/")) and inner.endswith(".pt")
        if legacy or inner.startswith("serialized_") or AOTI_MARKER.strip("/") in inner:
            raise ArtifactError(f"{path.name} holds {inner}: a pickled or compiled entry that loading would "
                                "execute; refused")


ARCHIVE_ENTRY = (r"archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id|"
                 r"models/[\w.-]+\.json|data/(weights|constants)/[\w.-]+_(weights|constants|model_param|model_constants)_config\.json|"
                 r"data/weights/weight_\d+|data/constants/tensor_\d+|data/sample_inputs/[\w.-]+\.pt|"
                 r"extra/(?!(?:.*/)?\.{1,2}(?:/|$))(?:[\w.\- ]+/)*[\w.\- ]+")
"""Every entry torch.export.save writes for a program of plain tensors (torch 2.11..2.14, `torch._C._export.
pt2_archive_constants`: the weights' and constants' configs in either naming), under the archive's root. An
extra file keeps the name its caller gave `extra_files` (review 40: `notes v1.txt` and `meta/a.txt` were refused), but
no `.` or `..` segment."""
EXTRA_REFUSED = (".so", ".dll", ".dylib", ".pyd", ".pkl", ".pickle", ".pt", ".pth", ".bin", ".py")
"""Extra files (`extra/`, strings torch hands back unread) named as a library, a pickle or code: never metadata."""


def _refuse_unknown_entries(path: Path, archive: Any, root: str, names: list[str]) -> None:
    """An entry torch.export.save never writes (a shared library, a pickle, an AOTInductor or ExecuTorch folder, a
    custom-object payload) is refused: torch 2.14 leaves such an entry unread, but a loader that reads it (a later
    torch, another tool given the file) would run it; and an `extra/` file is UTF-8 text, as torch reads it back
    (review 39: a .so and two pickles added to a .pt2 passed its integrity check and loaded, exit 0)."""
    import re

    from exporter.fsio import read_archive_member

    for name in names:
        inner = name[len(root) + 1:]
        if not re.fullmatch(ARCHIVE_ENTRY, inner) or inner.lower().rstrip(" .").endswith(EXTRA_REFUSED) and \
                inner.startswith("extra/"):
            raise ArtifactError(f"{path.name} holds {inner[:80]!r}, an entry torch.export.save does not write; "
                                "refused (export the program again with torch.export.save)")
        if inner.startswith("extra/"):
            try:
                read_archive_member(archive, name, path).decode("utf-8")
            except UnicodeDecodeError:
                raise ArtifactError(f"{path.name} holds {inner[:80]!r}, an extra file that is not text (torch "
                                    "writes extra files as UTF-8 strings); refused") from None


def _check_payloads(path: Path, kind: str, config: Any) -> set[str]:
    """Every weight and constant is raw tensor bytes (never a pickle, a custom or an opaque object); their names."""
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise ArtifactError(f"{path.name}: the {kind} config is not a torch.export payload config")
    for fqn, meta in entries.items():
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False or meta.get("tensor_meta") is None \
                or not str(meta.get("path_name", "")).startswith(("weight_", "tensor_")):
            raise ArtifactError(f"{path.name}: {kind} {str(fqn)[:80]!r} is stored as a pickled or opaque object, "
                                "which loading would unpickle; refused (a torch.export of plain tensors has none)")
    return set(entries)


def _refuse_stored_twice(path: Path, weights: set[str], constants: set[str]) -> None:
    """A name stored both as a weight (the state dict) and as a constant, which torch.export.save never writes: the
    loaded program's module() reads one and a lowering (`run_decompositions()`, `torch.export.unflatten`) the other
    (hunt 40: a buffer of 0.5 in the weights, 9.0 in the constants; module() was judged, the lowered one 17.0 off)."""
    both = sorted(weights & constants)
    if both:
        raise ArtifactError(f"{path.name} stores {both[0][:80]!r} both as a weight and as a constant, with two values "
                            "that loaders read apart (torch.export.save writes each once); refused: save the program "
                            "again with torch.export.save")


def _check_program(path: Path, program: Any) -> None:
    """Node targets are ATen/prims operators (or shape arithmetic); expressions and guards are arithmetic."""
    for node in _find(program, "target"):
        target = node["target"]
        if not isinstance(target, str) or not (target.startswith(SAFE_TARGET_PREFIXES)
                                               or target in SAFE_SYMBOLIC_TARGETS):
            raise ArtifactError(f"{path.name}: the graph calls {str(target)[:80]!r}, not an ATen operator; "
                                "loading would resolve it to a Python callable; refused")
    allowed = _symbolic_names()
    expressions = [node["expr_str"] for node in _find(program, "expr_str")]
    expressions += list((program.get("range_constraints") or {}) if isinstance(program, dict) else {})
    checked: set[str] = set()  # ResNet-50: 1356 expressions, 32 distinct; each is checked once (1.0 s -> 0.1 s)
    for text in expressions:
        if not (isinstance(text, str) and text in checked):
            _check_expression(path, text, allowed, "symbolic expression")
            checked.add(text)
    for guard in (program.get("guards_code") or []) if isinstance(program, dict) else []:
        _check_expression(path, guard, allowed | {"L", "math", "torch", "inf"}, "guard")


def _find(tree: Any, key: str) -> list[dict]:
    """Every dict in a JSON tree that has `key`."""
    found, pending = [], [tree]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            if key in item:
                found.append(item)
            pending += item.values()
        elif isinstance(item, list):
            pending += item
    return found


def _symbolic_names() -> set[str]:
    """Expression classes: torch's own sympy functions (torch.utils._sympy.functions, which the deserializer
    hands to sympify) and sympy's (srepr writes `Add(Symbol('s0', integer=True), Integer(1))`); building
    them from numbers and symbols evaluates nothing (a string reaches only Symbol, see _check_expression)."""
    import sympy
    import torch.utils._sympy.functions as functions

    def classes(module: Any) -> set[str]:
        return {name for name in dir(module) if name[:1].isupper() and isinstance(getattr(module, name), type)
                and issubclass(getattr(module, name), sympy.Basic)}

    return classes(functions) | classes(sympy) | {"oo", "zoo", "nan", "true", "false", "floor", "ceiling", "sqrt",
                                                   "sym_max", "sym_min", "sym_float", "sym_int", "sym_sqrt"}


MAX_EXPRESSION = 10_000
"""The longest symbolic expression or guard a .pt2 may hold (each is parsed and checked before torch evaluates it)."""
FLOAT_TEXT = r"[-+]?([0-9]{1,400}(\.[0-9]{0,400})?|\.[0-9]{1,400})([eE][-+]?[0-9]{1,6})?"
"""The string a sympy Float may hold in a .pt2's expression (`Float('2.0', precision=53)`): one decimal numeral of
ASCII digits and bounded length (review 43: `\\d` took '２', and 4,301 digits passed to fail in sympy)."""


def _check_expression(path: Path, text: Any, allowed: set[str], what: str) -> None:
    """A `what` (a sympy expression or a guard) is arithmetic: numbers, symbols (s0, u3...), known function
    names (constant keyword arguments: `Symbol('s0', positive=True)`), comparisons, `L['x'].size()[i]`;
    no other name, attribute, lambda or comprehension."""
    import ast
    import re

    def refuse(why: str) -> ArtifactError:
        return ArtifactError(f"{path.name}: a {what} ({str(text)[:60]!r}) {why}; loading would evaluate it; refused")

    if not isinstance(text, str):
        raise refuse("is not a string")
    if len(text) > MAX_EXPRESSION:  # a file this tool exported too: a model whose sizes torch.export could not
        # simplify (sweep 21c: swin_t at 64 px, dynamic, refused after a 5-minute export with no hint what to do)
        raise ArtifactError(f"{path.name}: a {what} ({text[:60]!r}...) is {len(text):,} characters long, over the "
                            f"{MAX_EXPRESSION:,} this tool reads from a .pt2 (loading would evaluate it); refused: "
                            "export with --static (no symbolic sizes), or without the pt2 format (--format "
                            "torchscript --format onnx)")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # the parser's own depth limits: 3,000 unary
        # operators raise RecursionError, 9,000 MemoryError (hunt 22b: it escaped the scan of a crafted .pt2)
        raise refuse("is not an expression") from None
    names = {id(n.args[0]) for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
             and n.func.id in ("Symbol", "Dummy") and n.args}
    names |= {id(n.slice) for n in ast.walk(tree) if isinstance(n, ast.Subscript)}
    # sympy writes a float as Float('2.0', precision=53): its string a numeral (sweep 49b: a dynamic bicubic
    # upsample's sizes hold one, and its correct .pt2 was refused)
    names |= {id(n.args[0]) for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
              and n.func.id == "Float" and n.args and isinstance(n.args[0], ast.Constant)
              and isinstance(n.args[0].value, str) and re.fullmatch(FLOAT_TEXT, n.args[0].value)}
    plain = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Constant, ast.Load, ast.operator,
             ast.unaryop, ast.boolop, ast.cmpop, ast.Subscript, ast.Call, ast.Attribute, ast.Name, ast.Tuple,
             ast.keyword)
    for node in ast.walk(tree):
        if not isinstance(node, plain):
            raise refuse(f"holds {type(node).__name__}")
        if isinstance(node, ast.Name) and node.id not in allowed and not re.fullmatch(r"[a-z]{1,8}\d+", node.id):
            raise refuse(f"names {node.id!r}")
        if isinstance(node, ast.Attribute) and node.attr not in GUARD_ATTRIBUTES and not (
                isinstance(node.value, ast.Name) and node.value.id == "math" and not node.attr.startswith("_")) \
                and not (isinstance(node.value, ast.Name) and node.value.id == "torch" and node.attr in TORCH_SYMBOLIC):
            raise refuse(f"reads the attribute {node.attr!r}")
        if isinstance(node, ast.Call) and any(k.arg is None or not isinstance(k.value, ast.Constant)
                                              for k in node.keywords):
            raise refuse("passes computed keyword arguments")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in names:
            raise refuse("holds a string outside Symbol('name') or L['name']")
