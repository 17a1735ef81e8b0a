"""torch.export.load spends most of its time in `typing.get_type_hints`: its deserializer asks for the type hints
of each schema dataclass once per object it builds (18,660 calls for a ResNet-50 program), and typing re-evaluates
them every time. The hints of a class never change, so they are looked up once per class here: loading a ResNet-50
`.pt2` takes 1.2 s instead of 1.8 s (bench/results/export-cpu.log). Nothing else in torch changes: the module
torch's deserializer sees as `typing` is a copy of `typing` whose `get_type_hints` remembers its answers for the
schema's own namespace and calls through for any other.

A dynamic program's load spends most of the rest parsing its symbolic shape expressions with sympy: each node's
sizes ("((s53 - 1)//4) + 1", ...) are parsed and their sub-expressions printed and parsed again, the same few
strings thousands of times (6,472 parses for a dynamic ResNet-50). `remember_sym_exprs` gives each deserializer a
memo of what it parsed: a string parsed again returns the expression the first parse returned, which is the one
torch's own symbol cache would have handed back (its other effects, a hint or a value range registered for the
symbol, are already in place after the first). A dynamic ResNet-50 `.pt2` loads in 1.1 s instead of 2.8 s.

Saving, the serializer prints every symbolic size, stride and offset of every node with sympy's `srepr`: 1,356
prints of 32 distinct expression objects for a dynamic ResNet-50. `remember_sym_prints` keeps each object's printed
form (keyed by the object itself, held alive, so the same object is the same text): the archive is byte for byte
the same, and its save takes about 30 % less time (measured in one process, alternated, on a loaded machine:
6.6 s to 4.6 s)."""

from __future__ import annotations

import functools
import threading
import types
import typing
from typing import Any

_LOCK = threading.Lock()


def remember_type_hints() -> bool:
    """Install the remembering `typing` into torch's export deserializer (once; idempotent, thread-safe). False where
    this torch has no such module or it does not read `typing.get_type_hints` (another torch: nothing changed)."""
    try:
        from torch._export.serde import schema, serialize
    except ImportError:
        return False
    with _LOCK:
        current = getattr(serialize, "typing", None)
        if isinstance(current, types.ModuleType) and getattr(current, "_remembers_type_hints", False):
            return True
        if current is not typing:
            return False
        namespace = vars(schema)

        @functools.cache
        def schema_hints(cls: Any) -> dict[str, Any]:
            return typing.get_type_hints(cls, globalns=namespace)

        def get_type_hints(obj: Any, globalns: Any = None, localns: Any = None, include_extras: bool = False):
            if globalns is namespace and localns is None and not include_extras and isinstance(obj, type):
                return dict(schema_hints(obj))  # a copy: a caller may change what it gets
            return typing.get_type_hints(obj, globalns=globalns, localns=localns, include_extras=include_extras)

        remembering = types.ModuleType("typing")
        remembering.__dict__.update(vars(typing))
        remembering.get_type_hints = get_type_hints
        remembering._remembers_type_hints = True
        serialize.typing = remembering
        return True


def _wrap(owner: Any, name: str, parameters: list[str], make: Any) -> bool:
    """Replace `owner.name` by `make(original)` once (idempotent, thread-safe), only where the original takes exactly
    `parameters`: another torch's function is left as it is (False)."""
    import inspect

    with _LOCK:
        original = getattr(owner, name, None)
        if getattr(original, "_remembers", False):
            return True
        try:
            names = list(inspect.signature(original).parameters) if original is not None else []
        except (TypeError, ValueError):
            return False
        if names != parameters:
            return False
        remembering = functools.wraps(original)(make(original))
        remembering._remembers = True
        setattr(owner, name, remembering)
        return True


def remember_sym_exprs() -> bool:
    """Install the per-deserializer memo of parsed shape expressions (once; idempotent, thread-safe). False where
    this torch's deserializer has no `_parse_sym_expr(expr_str, hint)` (another torch: nothing changed)."""
    try:
        from torch._export.serde.serialize import GraphModuleDeserializer
    except ImportError:
        return False

    def make(parse: Any) -> Any:
        def remembering(self: Any, expr_str: str, hint: Any = None) -> Any:
            memo = self.__dict__.setdefault("_parsed_sym_exprs", {})
            key = (expr_str, type(hint), hint)  # 1, 1.0 and True are equal keys but not equal hints
            if key not in memo:
                memo[key] = parse(self, expr_str, hint)
            return memo[key]

        return remembering

    return _wrap(GraphModuleDeserializer, "_parse_sym_expr", ["self", "expr_str", "hint"], make)


PRINT_MEMO_SIZE = 4096
"""Expressions whose printed form is kept (a dynamic ResNet-50 has 32 distinct ones); the memo starts over past it."""


def remember_sym_prints() -> bool:
    """Install the memo of printed shape expressions into torch's export serializer (once; idempotent,
    thread-safe). False where this torch's serializer has no `_print_sympy(s)` (another torch: nothing changed)."""
    try:
        import torch
        from torch._export.serde import serialize
    except ImportError:
        return False
    symbolic = (torch.SymInt, torch.SymBool, torch.SymFloat)

    def make(print_sympy: Any) -> Any:
        printed: dict[int, tuple[Any, str]] = {}

        def remembering(s: Any) -> str:
            expr = s.node.expr if isinstance(s, symbolic) else s
            entry = printed.get(id(expr))
            if entry is not None and entry[0] is expr:  # the entry holds the object: its id is not reused
                return entry[1]
            text = print_sympy(expr)
            if len(printed) >= PRINT_MEMO_SIZE:
                printed.clear()
            printed[id(expr)] = (expr, text)
            return text

        return remembering

    return _wrap(serialize, "_print_sympy", ["s"], make)
