"""The call check of a user's model (hunts 23a, 24a): every run of its float64 oracle is held to the torch calls a
float32 run of the same input makes, so that a forward computing something else in float64 (`y * 1.0005` where
x.dtype is float64) cannot have its floor measure that instead of rounding.

`watch_float64` wraps the float64 copy's forward: each run is logged under a torch function mode (`CallLog`: each
call's name and arguments, tensors by the parameter or buffer they are, constants made outside torch's calls by
their values) beside a float32 run of the same input, which must also match the float32 model run unwatched (a
model that tests for the watch). The tool's own hooks are told by their code objects (`_tool_code`), not by a name a
model could give its own code. The first difference is kept in a `CallCheck`; verify/judge/trust.py
`function_problems` refuses the floor on it. Hunt 25a: the check keeps each input's unwatched float32 outputs (digests),
and every float32 run a floor is measured from must be them bit for bit (`CallCheck.float32_difference`,
verify/pipeline/stages.py `held_to_calls`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn


@dataclass
class CallCheck:
    """What the watched runs of a user model's float64 oracle found (`watch_float64`): how many were held to a float32
    run of the same input, and where the first that differed did (None: none did)."""

    runs: int = 0
    difference: str | None = None
    outputs: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict, repr=False, compare=False)
    """Each input's float32 outputs as the model gave them unwatched beside the watched run (`input_key` -> one digest
    per output, `output_digests`): the float32 run a floor is measured on must be this one (`float32_difference`)."""

    def float32_difference(self, array: Any, outputs: Any, where: str, unheld: bool = True) -> str | None:
        """Where the float32 outputs a runtime gave on input `array` (name -> array, in the model's output order), those
        a floor is measured from, are not bit for bit the run this check held to the float64 oracle's calls on that
        input (None: they are). Hunt 25a: a model that counts its calls or reads the stack gave the eager runtime's
        run a float32-only term the watched runs never saw, and the floor it lifted passed a file 0.1 % off.
        `unheld`: whether an input the watch never ran is a difference (else None: a run that only adds a bound)."""
        said = "a model must compute the same on every float32 run"
        held = self.outputs.get(input_key(array))
        if held is None:
            return f"{where}, its float32 run was never held to its calls (no watched run there): {said}" if unheld \
                else None
        mine = output_digests(list(outputs.values()))
        if len(mine) != len(held):
            return f"{where}, its float32 run returns {len(mine)} outputs, {len(held)} where its calls were held: " \
                f"{said}"
        for name, ours, theirs in zip(outputs, mine, held):
            if ours != theirs:
                return (f"{where}, the float32 {name} the floor is measured from is not the one its calls were held "
                        f"to: {said}")
        return None


WATCHED_INPUTS = 16
"""How many inputs' float32 call logs the float64 model keeps (the oracle runs it once per input; a head's mapped
bound four more times on the first)."""
TOOL_PACKAGES = ("verify", "exporter")
"""This tool's packages: a frame or a hook is the tool's own when its code object is one that a module of theirs, as
imported from its file there, holds (`_tool_code`), not when it only carries their name (hunt 24a)."""
SHOWN_CALL = 70
"""Characters of a call the refusal shows (two of them and the model's name stay in one message)."""
CONVERSIONS = frozenset({"Tensor.to", "Tensor.type_as", "Tensor.type", "Tensor.float", "Tensor.double", "Tensor.half",
                         "Tensor.bfloat16", "Tensor.contiguous", "Tensor.detach", "Tensor.cpu"})
"""Calls whose result is their tensor in another dtype, layout or device: a named tensor's result keeps its name, as
the run whose dtype it already has gets the tensor itself back (a float64 buffer's `.to(x.dtype)`; review 20)."""
FINFO_FIELDS = ("eps", "max", "min", "tiny", "smallest_normal", "resolution")
"""`torch.finfo(x.dtype)` fields a model may pass on as numbers: the same field of each run's dtype is one value."""


class CallLog:
    """A torch function mode that logs, for one run of a model, each call that returns a tensor: the function's name
    and its arguments (a tensor by the parameter, buffer or attribute of the model it is; a tensor that this run's
    calls made, or its input, only as a tensor; any other tensor, a NumPy array or scalar by its values, as
    `_constant`; a dtype as a dtype; any number, string or flag as it is), and the numbers and arrays calls return
    (`x.item()`, `x.shape`, `x.numpy()`). Calls made from this tool's own code (a hook it adds) are not the model's and
    are left out. `inputs`: the tensors the run is given."""

    def __init__(self, model: Any, inputs: tuple[Any, ...] = (), own: Any = None) -> None:
        import torch
        from torch.overrides import TorchFunctionMode
        from torch.utils._pytree import tree_leaves
        from torch.utils.weak import WeakIdKeyDictionary

        objects: dict[int, Any] = {}  # the named tensors, alive for the run: a tensor the forward replaces (a grid
        names = _tensor_names(model, objects, own)  # rebuilt on a new shape) left its id to the next one made
        calls: list[tuple[str, tuple[Any, ...]]] = []
        read: set[Any] = set()
        kept: list[Any] = []  # the converted tensors named (`CONVERSIONS`), alive for the run: no id reused
        made = WeakIdKeyDictionary()  # the tensors this run's calls returned, and its input (weakly: ids are reused)
        for value in inputs:
            if isinstance(value, torch.Tensor):
                made[value] = True
        shared = _Shared()

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                if _from_tool(sys._getframe(1)):
                    return func(*args, **kwargs)
                leaves = tree_leaves(args) + [item for key in sorted(kwargs)
                                              for item in (key, *tree_leaves(kwargs[key]))]
                shared.scan()
                # before the call: an in-place call changes what it is given
                arguments = tuple(_argument(leaf, names, made, read, shared) for leaf in leaves)
                out = func(*args, **kwargs)
                _log(func, args, arguments, out, names, calls, read, kept, made)
                if own is not None:
                    for leaf in tree_leaves(out):
                        if isinstance(leaf, torch.Tensor):
                            own[leaf] = True
                shared.after(func, args)
                return out

        self.calls, self.read, self.mode = calls, read, Mode()
        self._names, self._made, self._shared, self._objects = names, made, shared, objects

    def returned(self, out: Any) -> None:
        """What the run returned, logged as one more call where an output is one no call of the run made
        (`torch.from_numpy(y.numpy() * k)`: NumPy's arithmetic, which no mode sees): a constant, held to its values
        (hunt 24a). Called once the run is over, outside the mode."""
        from torch.utils._pytree import tree_leaves

        self._shared.scan()
        returned = tuple(_argument(leaf, self._names, self._made, self.read, self._shared)
                         for leaf in tree_leaves(out))
        self._shared.tensors = []  # the run is over: what it handed out is not kept alive with its log
        if any(argument[0] == "constant" for argument in returned):
            self.calls.append(("return", returned))

    def __enter__(self) -> CallLog:
        self.mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.mode.__exit__(*exc)


EXPOSING = frozenset({"Tensor.numpy", "Tensor.__array__", "Tensor.data_ptr", "Tensor.untyped_storage",
                      "Tensor.storage", "Tensor._typed_storage", "Tensor.__dlpack__"})
"""Calls that hand out a tensor's memory to be written without a torch call (a NumPy view, an address, a storage)."""


class _Shared:
    """The tensors a run handed out to be written outside torch (`EXPOSING`), each with a digest of its values as the
    run's last call left them: a storage found changed between two calls (`y.numpy()[...] *= k`) stays changed for
    the run, and every tensor on it is held to its values (`_constant`). `y.numpy()` written into only in float64
    passed: the tensor was the same one in both runs' calls (hunt 24a)."""

    def __init__(self) -> None:
        self.tensors: list[tuple[Any, str, int]] = []
        self.changed: set[int] = set()

    def after(self, func: Any, args: tuple) -> None:
        """After a call: digests taken afresh (a torch call changing them is watched), and the tensor it handed out
        added."""
        import torch

        if self.tensors:
            self.tensors = [(t, _constant(t)[2], where) for t, _, where in self.tensors]
        if args and isinstance(args[0], torch.Tensor) and _function_name(func) in EXPOSING:
            where = _storage(args[0])
            if where is not None:
                self.tensors.append((args[0], _constant(args[0])[2], where))

    def scan(self) -> None:
        """Before a call: the storages whose tensors changed since the last call, kept."""
        for tensor, digest, where in self.tensors:
            if where not in self.changed and _constant(tensor)[2] != digest:
                self.changed.add(where)

    def holds(self, tensor: Any) -> bool:
        """Whether `tensor` lies on a storage changed outside torch in this run."""
        return bool(self.changed) and _storage(tensor) in self.changed


def _storage(tensor: Any) -> int | None:
    try:
        return int(tensor.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError, TypeError):
        return None


def _tensor_names(model: Any, objects: dict[int, Any] | None = None, own: Any = None) -> dict[int, str]:
    """id -> name of every parameter, buffer and tensor attribute of `model`'s modules (`block.scale`); `objects`, when
    given, gets id -> each of those tensors. `own`: the tensors the watched runs' calls made (`_key_text`)."""
    import torch

    names: dict[int, str] = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        where = f"{prefix}." if prefix else ""
        for group in ("_parameters", "_buffers"):  # first: their own names, not `_buffers.scale`
            for name, value in getattr(module, group, {}).items():
                if isinstance(value, torch.Tensor):
                    names.setdefault(id(value), where + name)
                    if objects is not None:
                        objects[id(value)] = value
        for name, value in vars(module).items():
            _name_tensors(value, where + name, names, 0, objects, own)
    return names


def _name_tensors(value: Any, name: str, names: dict[int, str], depth: int, objects: dict[int, Any] | None = None,
                  own: Any = None) -> None:
    """`value`'s tensor, or those in the lists, tuples and dicts it holds (`ks.1`; a constant chosen from a list by
    x.dtype was one unnamed tensor in both runs; review 20), into `names`."""
    import torch

    if isinstance(value, torch.Tensor):
        names.setdefault(id(value), name)
        if objects is not None:
            objects[id(value)] = value
    elif isinstance(value, (list, tuple)) and depth < CONTAINER_DEPTH:
        for index, item in enumerate(value):
            _name_tensors(item, f"{name}.{index}", names, depth + 1, objects, own)
    elif isinstance(value, dict) and depth < CONTAINER_DEPTH:
        for key, item in value.items():
            _name_tensors(item, f"{name}.{_key_text(key, item, own)}", names, depth + 1, objects, own)


RUN_DTYPES = re.compile(r"\b(torch\.)?(float64|double|float32|float)\b")
"""Each run's dtype as a dict key names it (`(h, w, torch.float64)`, `str(x.dtype)`)."""


def _key_text(key: Any, item: Any, own: Any) -> str:
    """A dict key as a tensor's name shows it: each run's dtype in it named alike where the item is a tensor (or a
    list or tuple of them) that a watched run's calls made (`own`). A cache keyed on the dtype, filled in each run
    by the calls the log held the same, holds each run's own tensor under its own dtype: `_cache.(32, 32,
    torch.float64)` and `_cache.(32, 32, torch.float32)` were two names, a correct model refused (review 21). One
    filled otherwise (at init, by a run the watch left out) keeps its dtype in its name."""
    import torch

    text = str(key)
    if own is None:
        return text
    items = item if isinstance(item, (list, tuple)) else (item,)
    if items and all(isinstance(t, torch.Tensor) and t in own for t in items):
        return RUN_DTYPES.sub("dtype", text)
    return text


CONTAINER_DEPTH = 3
"""How deep in a module attribute's lists, tuples and dicts a tensor is still named (and in a tool module's classes
and tables, a function found: `_module_codes`)."""
CONTAINER_ITEMS = 1000
"""Items of one list, tuple or dict of a tool module that `_module_codes` looks into."""


def _from_tool(frame: Any) -> bool:
    """Whether the nearest caller outside torch is this tool's code (its hooks, its runtimes calling the model): its
    code object one of those the tool's modules hold (`_tool_code`). A module name was trusted before, and a model
    that ran code under a `verify.` name (`exec(..., {"__name__": "verify.x"})`) had its calls left out (hunt 24a)."""
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module != "torch" and not module.startswith("torch."):
            return frame.f_code not in _RUNS_MODEL and _tool_code(frame.f_code)
        frame = frame.f_back
    return False


_RUNS_MODEL: set[Any] = set()
"""The code of the watch's own `__call__` (`watch_float64`), which runs the model inside its logs: a call whose nearest
caller outside torch is it is the model's (a `nn.Sequential` of torch's modules has no code of its own; its calls were
left out, and hunt 24a's held outputs found its result made by no call)."""


_TOOL_FILES: dict[str, str | None] = {}
"""A code object's file name -> the name of the tool module that file is (None: no file of the tool's packages)."""
_TOOL_CODES: dict[str, tuple[Any, dict[int, Any], set[int]]] = {}
"""A tool module's name -> (the module object, id -> each code object its functions and classes hold, the ids of
those defined inside another function: a hook the tool makes where it runs)."""


def _tool_roots() -> list[Path]:
    """The folders of this tool's packages, resolved."""
    import importlib.util

    roots = []
    for package in TOOL_PACKAGES:
        module = sys.modules.get(package)
        locations = list(getattr(module, "__path__", None) or [])
        if not locations:
            with contextlib.suppress(ImportError, ValueError):
                found = importlib.util.find_spec(package)
                locations = list(found.submodule_search_locations or []) if found else []
        roots += [Path(location).resolve() for location in locations]
    return roots


def _tool_module_name(filename: str) -> str | None:
    """The module a real .py file under this tool's package folders is (`verify.judge.oracle`), else None."""
    if filename in _TOOL_FILES:
        return _TOOL_FILES[filename]
    name = None
    try:
        path = Path(filename).resolve()
        if path.suffix == ".py" and path.is_file():
            for root in _tool_roots():
                if path.is_relative_to(root):
                    parts = path.relative_to(root.parent).with_suffix("").parts
                    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
                    break
    except (OSError, ValueError):
        name = None
    _TOOL_FILES[filename] = name
    return name


def _tool_code(code: Any, inner: bool = False) -> bool:
    """Whether `code` is a code object of this tool's own: one that the module its file is (as imported, from that
    file) holds in a function or class (`inner`: in a function defined inside another, as the tool's hooks are). A
    name (`__module__`, `__name__` in globals, a `co_filename` given to compile) is not enough: a model can give its
    own code any of them."""
    import types

    if not isinstance(code, types.CodeType):
        return False
    name = _tool_module_name(code.co_filename)
    module = sys.modules.get(name) if name else None
    if module is None:
        return False
    cached = _TOOL_CODES.get(name)  # type: ignore[arg-type]
    if cached is None or cached[0] is not module:
        file = getattr(module, "__file__", None)
        if not file or _tool_module_name(file) != name:
            return False
        cached = (module, *_module_codes(module))
        _TOOL_CODES[name] = cached  # type: ignore[index]
    return cached[1].get(id(code)) is code and (not inner or id(code) in cached[2])


def _module_codes(module: Any) -> tuple[dict[int, Any], set[int]]:
    """Every code object that `module`'s functions and classes (their methods, properties, nested classes, the
    functions in its tables) hold from its own file, functions defined inside them included; and which of them are such
    inner ones."""
    import functools
    import types

    file = Path(module.__file__).resolve()
    same: dict[str, bool] = {}
    codes: dict[int, Any] = {}
    inner: set[int] = set()

    def add(code: Any, nested: bool) -> None:
        if id(code) in codes:
            return
        if code.co_filename not in same:
            try:
                same[code.co_filename] = Path(code.co_filename).resolve() == file
            except (OSError, ValueError):
                same[code.co_filename] = False
        if not same[code.co_filename]:
            return
        codes[id(code)] = code
        if nested:
            inner.add(id(code))
        for constant in code.co_consts:
            if isinstance(constant, types.CodeType):
                add(constant, True)

    def visit(value: Any, depth: int) -> None:
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if isinstance(value, property):
            for part in (value.fget, value.fset, value.fdel):
                visit(part, depth)
        elif isinstance(value, types.FunctionType):
            add(value.__code__, False)
            wrapped = vars(value).get("__wrapped__")
            if wrapped is not None and depth < CONTAINER_DEPTH:
                visit(wrapped, depth + 1)
        elif isinstance(value, type) and depth < CONTAINER_DEPTH and vars(value).get("__module__") == module.__name__:
            for item in list(vars(value).values()):
                visit(item, depth + 1)
        elif isinstance(value, functools.partial) and depth < CONTAINER_DEPTH:
            visit(value.func, depth + 1)
        elif isinstance(value, (list, tuple, dict)) and depth < CONTAINER_DEPTH:  # a table of functions
            for item in list(value.values() if isinstance(value, dict) else value)[:CONTAINER_ITEMS]:
                visit(item, depth + 1)

    for value in list(vars(module).values()):
        visit(value, 0)
    return codes, inner


def _callable_code(hook: Any) -> Any:
    """The code object a hook runs (a function's, a bound method's, a partial's function's), or None."""
    import functools
    import types

    for _ in range(CONTAINER_DEPTH):
        if isinstance(hook, functools.partial):
            hook = hook.func
        elif isinstance(hook, types.MethodType):
            hook = hook.__func__
        else:
            break
    return hook.__code__ if isinstance(hook, types.FunctionType) else None


def _log(func: Any, args: tuple, arguments: tuple[Any, ...], out: Any, names: dict[int, str],
         calls: list[tuple[str, tuple[Any, ...]]], read: set[Any], kept: list[Any], made: Any) -> None:
    import numpy as np
    import torch
    from torch.utils._pytree import tree_leaves

    results = tree_leaves(out)
    tensors = [leaf for leaf in results if isinstance(leaf, torch.Tensor)]
    if not tensors:
        read.update(leaf for leaf in results if isinstance(leaf, (int, float)) and not isinstance(leaf, bool))
        read.update(_constant(torch.from_numpy(np.ascontiguousarray(leaf))) for leaf in results  # x.numpy(): data,
                    if isinstance(leaf, np.ndarray) and leaf.dtype.kind in "biufc")  # as .item()'s numbers are
        return
    for tensor in tensors:
        made[tensor] = True
    name = _function_name(func)
    calls.append((name, arguments))
    source = names.get(id(args[0])) if args and isinstance(args[0], torch.Tensor) else None
    if source and name in CONVERSIONS and isinstance(out, torch.Tensor) and id(out) not in names:
        names[id(out)] = source
        kept.append(out)


def _function_name(func: Any) -> str:
    """`torch.conv2d`, `Tensor.mul`, `relu` (torch.nn.functional's), as a reader writes them."""
    name = str(getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or type(func).__name__)
    return name.replace("_VariableFunctionsClass.", "torch.").replace("TensorBase.", "Tensor.")


def _argument(leaf: Any, names: dict[int, str], made: Any, read: set[Any], shared: _Shared | None = None) -> Any:
    import numpy as np
    import torch

    if isinstance(leaf, torch.Tensor):
        if shared is not None and shared.holds(leaf):  # written outside torch: its values are what it is
            return _constant(leaf)
        name = names.get(id(leaf))
        if name:
            return ("tensor", name)
        if leaf in made:
            return ("tensor",)
        # made outside the watched calls (`torch.from_numpy`, `torch.frombuffer`, a tensor kept outside the model's
        # modules): what it holds is what it is (hunt 24a); one holding an array this run read is its data
        value = _constant(leaf)
        return ("tensor",) if value in read else value
    if isinstance(leaf, np.ndarray):  # `y * np.array(k)`, `torch.as_tensor(array)`
        return _constant(torch.from_numpy(np.ascontiguousarray(leaf))) if leaf.dtype.kind in "biufc" \
            else ("object", "ndarray")
    if isinstance(leaf, np.generic) and leaf.dtype.kind in "biufc":  # np.float32(k): a number like Python's
        leaf = leaf.item()
    if isinstance(leaf, torch.dtype):
        return ("dtype",)  # `.to(x.dtype)`, `.float()` on purpose: what a dtype selects runs in both
    if isinstance(leaf, bool) or leaf is None or isinstance(leaf, (str, torch.device, torch.layout,
                                                                      torch.memory_format, complex)):
        return ("value", leaf)
    if isinstance(leaf, (int, float)):
        return ("number", leaf)
    if isinstance(leaf, slice) or leaf is Ellipsis:
        return ("value", repr(leaf))
    return ("object", type(leaf).__name__)


SHOWN_VALUES = 4
"""Values of a constant the refusal shows (more: its shape)."""


def _constant(tensor: Any) -> tuple[str, str, str]:
    """("constant", what the refusal shows, a digest of the values): a tensor or array made outside the watched calls,
    by its values, each floating value rounded to float32 (the same constant in each run's precision is one; a factor
    1.0005 in float64 and 1.0 in float32 is not)."""
    import hashlib

    import torch

    try:
        value = tensor.detach()
    except (RuntimeError, TypeError):
        return ("constant", type(tensor).__name__, "unreadable")
    if value.is_quantized or value.is_sparse or value.is_meta:
        return ("constant", str(value.dtype), "unreadable")
    if value.is_floating_point():
        value = value.to(torch.float32)
    elif value.is_complex():
        value = value.to(torch.complex64)
    elif value.dtype != torch.bool:
        value = value.to(torch.int64)
    value = value.cpu().contiguous()
    data = value.numpy().tobytes() if value.dtype != torch.bool else value.to(torch.uint8).numpy().tobytes()
    digest = hashlib.sha1(repr((tuple(value.shape), str(value.dtype))).encode() + data).hexdigest()[:16]
    if value.numel() <= SHOWN_VALUES:
        items = value.reshape(-1).tolist()
        shown = "[" + ", ".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in items) + "]"
    else:
        shown = "x".join(map(str, value.shape)) or "()"
    return ("constant", shown, digest)


def _finfo_pairs() -> set[tuple[float, float]]:
    import torch

    single, double = torch.finfo(torch.float32), torch.finfo(torch.float64)
    pairs = set()
    for field in FINFO_FIELDS:
        a, b = float(getattr(single, field)), float(getattr(double, field))
        pairs |= {(a, b), (-a, -b)}
    return pairs


def _same_number(a: float, b: float, read32: set[float], read64: set[float]) -> bool:
    """A number the float32 run passed (`a`) and the float64 run passed (`b`) in the same place: equal, one finfo
    field of each run's dtype, or each read out of the run's own tensors (`x.amax().item()`: data, which the runs'
    values are judged on)."""
    import math

    if a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)):
        return True
    return (float(a), float(b)) in _finfo_pairs() or (a in read32 and b in read64)


def _shown(call: tuple[str, tuple[Any, ...]]) -> str:
    name, arguments = call
    parts = []
    for argument in arguments:
        kind, *value = argument
        parts.append(("tensor " + value[0]) if kind == "tensor" and value else f"constant {value[0]}"
                     if kind == "constant" else kind if not value else repr(value[0]))
    text = f"{name}({', '.join(parts)})"
    return text if len(text) <= SHOWN_CALL else text[:SHOWN_CALL - 3] + "..."


def first_difference(single: CallLog, double: CallLog) -> str | None:
    """Where the float64 run's calls (`double`) first differ from the float32 run's (`single`), or None."""
    for index, (a, b) in enumerate(zip(single.calls, double.calls)):
        if a[0] != b[0] or len(a[1]) != len(b[1]) or any(
                x != y and not (x[0] == y[0] == "number" and _same_number(x[1], y[1], single.read, double.read))
                for x, y in zip(a[1], b[1])):
            return f"on the same input, call {index + 1} is {_shown(b)} in float64, {_shown(a)} in float32"
    if len(single.calls) != len(double.calls):
        index = min(len(single.calls), len(double.calls))
        extra = double.calls[index] if len(double.calls) > index else single.calls[index]
        where = "float64" if len(double.calls) > index else "float32"
        return f"on the same input, call {index + 1} is {_shown(extra)} only in {where}"
    return None


def watch_float64(exact: nn.Module, model: nn.Module, before: nn.Module | None = None) -> CallCheck:
    """Every call of `exact` (the float64 oracle) logged (`CallLog`) and held to a logged float32 run of `model` on the
    same input; the first difference is kept in the returned CallCheck (verify/judge/trust.py refuses to judge on such
    an oracle). The whole call is watched, whatever runs in it: the module's hooks (global ones too) and a `__call__`
    of its own (`exact` gets a subclass of its class that only adds this). The float32 runs go to a copy of `model`
    that shares its parameters (a hook the tool puts on the model does not see them), each input's log kept
    (WATCHED_INPUTS). A call while a hook of the tool's reads or moves a layer of `exact` (a mapped head's bound, the
    explain tracers) is not the oracle's and is not held to anything.
    Hunt 24a: `exact` must hold `model`'s tensors in float64 (`_state_difference`: all of them at the start, as a
    `_apply` of the model's own could change them, and its parameters after every call, as a run outside the watch or a
    write through a NumPy view could), and on each
    new input the float32 model run unwatched must give the watched float32 run's outputs (`_unwatched_difference`):
    a model that tests for the watch (`torch._C._is_torch_function_mode_enabled()`) could otherwise make its watched
    float32 run make the float64 calls while the float32 run the floor is measured on does not.
    Review 21: `before`, `model` as its factory returned it (sharing its parameters), is what the float32 runs start
    from, as `exact` is made from it: a cache keyed on the dtype, filled in float32 by a run before the watch, made the
    float64 run's first calls differ (a correct model refused)."""
    from collections import OrderedDict

    import torch
    from torch.utils.weak import WeakIdKeyDictionary

    parameters = {id(p): p for p in model.parameters()}
    single = copy.deepcopy(before if before is not None else model, memo=dict(parameters))
    own = WeakIdKeyDictionary()  # the tensors the watched runs' calls made (`_key_text`)
    logs: OrderedDict[str, CallLog] = OrderedDict()
    busy: list[bool] = []
    check = CallCheck(difference=_state_difference(exact, single, attributes=True))
    base = type(exact)
    fast = any(isinstance(m, _fast_path_modules()) for m in model.modules())

    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        x = next((a for a in args if isinstance(a, torch.Tensor)), None)
        if busy or x is None or _tool_hooked(self):  # the model calling itself: the outer call logs it
            return base.__call__(self, *args, **kwargs)
        x32 = x.detach().to(torch.float32).contiguous()  # before the run: a forward may write into its input
        plain = x32.clone()
        key = input_key(x32)
        busy.append(True)
        try:
            with CallLog(self, tuple(args) + tuple(kwargs.values()), own) as log:
                output = base.__call__(self, *args, **kwargs)
            log.returned(output)
        finally:
            busy.clear()
        state = _state_difference(self, model)  # after: what the run, or anything before it, left in either
        unwatched = None
        if key not in logs:
            with CallLog(single, (x32,), own) as logs[key], torch.no_grad():
                watched = single(x32)
            logs[key].returned(watched)
            with torch.no_grad():  # the model itself, as the runtimes run it (unless a hook of the tool's is on it)
                again = (single if _tool_hooked(model) else model)(plain)
            unwatched = _unwatched_difference(watched, again, output, fast)
            check.outputs[key] = output_digests(again)  # what every float32 run of this input must give
            while len(logs) > WATCHED_INPUTS:
                logs.popitem(last=False)
        check.runs += 1
        if check.difference is None:
            check.difference = state or first_difference(logs[key], log) or unwatched
        return output

    _RUNS_MODEL.add(__call__.__code__)
    exact.__class__ = type(base.__name__, (base,), {"__call__": __call__, "__slots__": (),
                                                     "__module__": base.__module__, "__qualname__": base.__qualname__})
    return check


def _tool_hooked(model: Any) -> bool:
    """Whether a forward hook of this tool's is on a module of `model`: one whose code is a function the tool defines
    inside another (`_tool_code`), as its hooks are. A hook that only named a tool module (`__module__ =
    "verify.x"`) left every call of the oracle unwatched (hunt 24a). The watch's own `__call__` is no hook of the
    tool's: a model that hung it on a module it never runs left every later float64 run unwatched (hunt 25a)."""
    for module in model.modules():
        for hooks in (module._forward_hooks, module._forward_pre_hooks):
            codes = [_callable_code(hook) for hook in hooks.values()]
            if any(code not in _RUNS_MODEL and _tool_code(code, inner=True) for code in codes):
                return True
    return False


def _fast_path_modules() -> tuple[type, ...]:
    """torch modules whose forward takes another kernel while a torch function mode is on (their fast paths test
    `has_torch_function`): a float32 run of them watched and one unwatched round differently."""
    from torch import nn

    return (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerEncoder, nn.TransformerDecoderLayer,
            nn.TransformerDecoder, nn.Transformer)


WATCHED_SLACK = 4.0
"""Where the model holds a module with such a fast path (`_fast_path_modules`), how much further from the float64
oracle its unwatched float32 run may be than its watched one (each output's largest distance, at least one float32
ulp of its magnitude); elsewhere the two must be equal bit for bit."""


def _unwatched_difference(watched: Any, unwatched: Any, exact: Any, fast: bool) -> str | None:
    """Where the float32 model run unwatched gives other outputs than its watched run on the same input (None: it
    does not): equal bit for bit, or, with a fast path (`fast`), no more than WATCHED_SLACK x as far from the float64
    oracle's outputs (`exact`) as the watched run is."""
    import torch
    from torch.utils._pytree import tree_flatten

    ours, spec = tree_flatten(watched)
    theirs, other = tree_flatten(unwatched)
    references, shape = tree_flatten(exact)
    said = "a model must compute the same whether or not its calls are watched"
    if spec != other:
        return f"on the same input, its float32 run returns other outputs unwatched than watched: {said}"
    for index, (a, b) in enumerate(zip(ours, theirs)):
        if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
            continue
        if a.shape != b.shape or a.dtype != b.dtype:
            return (f"on the same input, its float32 run's output {index} is another tensor unwatched than watched: "
                    f"{said}")
        a, b = a.detach().cpu().double(), b.detach().cpu().double()
        same = (a == b) | (a.isnan() & b.isnan())
        if bool(same.all()):
            continue
        apart = float(torch.where(same, 0.0, (a - b).abs()).nan_to_num(nan=float("inf")).max())
        reference = references[index] if shape == spec and isinstance(references[index], torch.Tensor) else None
        if fast and reference is not None and reference.shape == a.shape:
            reference = reference.detach().cpu().double()
            finite = reference.isfinite()
            scale = float(torch.where(finite, reference.abs(), 0.0).max()) if reference.numel() else 0.0
            ulp = float(torch.finfo(torch.float32).eps) * scale
            off = float(torch.where(finite, (b - reference).abs(), 0.0).nan_to_num(nan=float("inf")).max())
            near = float(torch.where(finite, (a - reference).abs(), 0.0).nan_to_num(nan=float("inf")).max())
            if off <= WATCHED_SLACK * max(near, ulp):
                continue
            return (f"on the same input, its float32 run's output {index} is {off:.3g} from the float64 oracle "
                    f"unwatched, {near:.3g} watched: {said}")
        return f"on the same input, its float32 run's output {index} is {apart:.3g} apart unwatched and watched: {said}"
    return None


def _state_difference(exact: Any, model: Any, attributes: bool = False) -> str | None:
    """Where the float64 oracle `exact` holds another value than the float32 `model` in float64: a parameter of the same
    name (`attributes`, as `exact` is made: any tensor of its modules too, buffers and those `_tensor_names` names),
    floating ones compared. A module's own `_apply` that moves a buffer when it becomes float64, or a `__deepcopy__`
    that changes one, passed: the call log names a tensor, not its values (hunt 24a). Only the parameters later on: a
    buffer may be a forward's working memory (`torch.add(a, b, out=self.out)`, hunt 8b's model)."""
    import torch

    def tensors(module: Any) -> dict[str, Any]:
        found = dict(module.named_parameters())
        if attributes:
            found.update(module.named_buffers())
            objects: dict[int, Any] = {}
            named = _tensor_names(module, objects)
            found = {**{name: objects[i] for i, name in named.items()}, **found}
        return found

    mine = tensors(model)
    for name, value in tensors(exact).items():
        own = mine.get(name)
        if own is None or not isinstance(value, torch.Tensor) or not value.is_floating_point():
            continue
        if own.shape != value.shape or not torch.equal(own.detach().to("cpu", torch.float64),
                                                       value.detach().to("cpu", torch.float64)):
            return f"its {name} holds other values than the float32 model's {name}"
    return None


def input_key(array: Any) -> str:
    """The key of one input (a tensor or array, in any float dtype: its float32 values) that the watch keeps its logs
    and outputs under: a float64 run of a float32 feed and the feed itself are one input."""
    import hashlib

    import numpy as np
    import torch

    if isinstance(array, torch.Tensor):
        array = array.detach().to("cpu", torch.float32).contiguous().numpy()
    array = np.ascontiguousarray(array, dtype=np.float32)
    return hashlib.sha1(repr(tuple(array.shape)).encode() + array.tobytes()).hexdigest()


def output_digests(outputs: Any) -> tuple[str, ...]:
    """One digest per output (tensors as the runtimes hand them on: on the CPU, float16 and bfloat16 as float32; or
    arrays), of its shape, dtype and bits, in the order of `outputs`' leaves."""
    import hashlib

    import numpy as np
    import torch
    from torch.utils._pytree import tree_leaves

    digests = []
    for leaf in tree_leaves(outputs):
        if isinstance(leaf, torch.Tensor):
            leaf = leaf.detach().cpu()
            leaf = (leaf.float() if leaf.dtype in (torch.bfloat16, torch.float16) else leaf).numpy()
        array = np.ascontiguousarray(leaf)
        digests.append(hashlib.sha1(repr((array.shape, array.dtype.str)).encode() + array.tobytes()).hexdigest())
    return tuple(digests)
