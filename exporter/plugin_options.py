"""The options a plug-in (a runtime, a format) declares for itself: a frozen dataclass whose fields each carry
their CLI flag, help and bounds (`option(...)`), so the CLI builds its options by looping over the registries
and the library refuses a value as the CLI does. Light on purpose: `verify --help` reads these."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

from exporter.errors import UsageError

METADATA_KEY = "plugin_option"
KINDS = (bool, int, float, str)
"""The value types an option may have (its default's type); bool before int, as bool is an int."""

Bound = float | Callable[[], float] | None
"""A number, or a function asked when a value is checked (e.g. the newest opset the installed onnx knows)."""


@dataclass(frozen=True)
class OptionSpec:
    """How one option is spelled, explained and bounded."""

    flag: str
    help: str
    choices: tuple[str, ...] | None = None
    low: Bound = None
    high: Bound = None
    flag_value: Any = None
    """A bare flag (`--trace`): given, the option takes this value; absent, its default."""
    check: Callable[[Any], str | None] | None = None
    """A plug-in's own check of a value of the right type, before the bounds: why it is refused, without the
    flag (one line), or None."""
    shared: bool = False
    """No flag of its own: the value of the shared run option of this name (e.g. --device)."""

    @property
    def key(self) -> str:
        """Its name in reports and CLI parameters: the flag without dashes (--some-flag: some_flag)."""
        return self.flag.lstrip("-").replace("-", "_")

    def problem(self, value: Any, kind: type) -> str | None:
        """Why `value` is refused (one line, starting with the flag), or None."""
        reason = self.reason(value, kind)
        return f"{self.flag} {reason}" if reason else None

    def reason(self, value: Any, kind: type) -> str | None:
        """Why `value` is refused, without the flag (the CLI names it), or None."""
        choices = (True, False) if kind is bool else self.choices
        if choices is not None:
            if not isinstance(value, kind) or value not in choices:
                return f"{value!r} is not one of: {', '.join(map(str, choices))}"
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
            return f"must be {'a whole' if kind is int else 'a'} number, got {value!r}"
        elif not math.isfinite(value):
            return f"must be a finite number, got {value!r}"
        own = self.check(value) if self.check else None  # the plug-in's own words first (e.g. why that bound)
        if own or choices is not None:
            return own
        low, high = self.limits()
        if (low is not None and value < low) or (high is not None and value > high):
            return f"must be {bounds_text(low, high)}, got {value!r}"
        return None

    def limits(self) -> tuple[float | None, float | None]:
        """The bounds, functions asked now."""
        return tuple(bound() if callable(bound) else bound for bound in (self.low, self.high))  # type: ignore[return-value]

    def bounds_text(self) -> str:
        """The fixed bounds in words (a bound asked at check time is left out: help stays light)."""
        return bounds_text(*(None if callable(bound) else bound for bound in (self.low, self.high)))


def bounds_text(low: float | None, high: float | None) -> str:
    """`between 0 and 10`, `>= 0` or `<= 10` (empty when unbounded)."""
    if low is not None and high is not None:
        return f"between {low:g} and {high:g}"
    return f">= {low:g}" if low is not None else f"<= {high:g}" if high is not None else ""


def option(default: Any, *, flag: str, help: str, choices: tuple[str, ...] | None = None, low: Bound = None,
           high: Bound = None, flag_value: Any = None, check: Callable[[Any], str | None] | None = None,
           shared: bool = False) -> Any:
    """A field of a plug-in's Options: its default (whose type is the option's), CLI flag, help and bounds;
    `flag_value`: a bare flag that sets this value; `check`: the plug-in's own check; `shared`: the value of
    the shared run option `flag` (no flag of its own)."""
    if not flag.startswith("--") or not isinstance(default, KINDS):
        raise TypeError(f"option {flag!r}: the flag starts with -- and the default is one of "
                        f"{', '.join(k.__name__ for k in KINDS)}")
    if flag_value is not None and (type(flag_value) is not type(default) or flag_value == default):
        raise TypeError(f"option {flag!r}: its flag_value is another value of the default's type")
    spec = OptionSpec(flag, help, choices, low, high, flag_value, check, shared)
    return field(default=default, metadata={METADATA_KEY: spec})


@dataclass(frozen=True)
class PluginOptions:
    """Base of a plug-in's `Options`: no options of its own; a subclass adds fields made with `option(...)`,
    each value checked on creation (library and CLI refuse the same values)."""

    def __post_init__(self) -> None:
        for item, spec in option_fields(type(self)):
            problem = spec.problem(getattr(self, item.name), option_kind(item))
            if problem:
                raise UsageError(problem)

    def validate(self) -> None:
        """Checks across fields, before any work (each field was checked on creation)."""
        return None

    def to_dict(self) -> dict[str, Any]:
        """{key: value}, as reports record these options."""
        return {spec.key: getattr(self, item.name) for item, spec in option_fields(type(self))}

    @classmethod
    def from_keys(cls, values: Mapping[str, Any]) -> PluginOptions:
        """The options whose keys `values` holds (e.g. parsed CLI parameters); the others keep their defaults."""
        return cls(**{item.name: values[spec.key] for item, spec in option_fields(cls) if spec.key in values})


def option_fields(cls: type) -> list[tuple[Field, OptionSpec]]:
    """Every field of an Options class with its spec; a field not made with `option(...)` is a plug-in's bug."""
    found = []
    for item in fields(cls):
        spec = item.metadata.get(METADATA_KEY)
        if spec is None or item.default is MISSING:
            raise TypeError(f"{cls.__qualname__}.{item.name} is not declared with option(...)")
        found.append((item, spec))
    return found


def option_kind(item: Field) -> type:
    """The option's value type: its default's."""
    return next(kind for kind in KINDS if isinstance(item.default, kind))
