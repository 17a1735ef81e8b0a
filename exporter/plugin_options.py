"""The options a plug-in (a runtime, a format) declares for itself: a frozen dataclass whose fields each carry
their CLI flag, help and bounds (`option(...)`), so the CLI builds its options by looping over the registries
and the library refuses a value as the CLI does. Light on purpose: `verify --help` reads these."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

from exporter.errors import UsageError

METADATA_KEY = "plugin_option"
KINDS = (bool, int, float, str)
"""The value types an option may have (its default's type); bool before int, as bool is an int."""


@dataclass(frozen=True)
class OptionSpec:
    """How one option is spelled, explained and bounded."""

    flag: str
    help: str
    choices: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None

    @property
    def key(self) -> str:
        """Its name in reports and CLI parameters: the flag without dashes (--some-flag: some_flag)."""
        return self.flag.lstrip("-").replace("-", "_")

    def problem(self, value: Any, kind: type) -> str | None:
        """Why `value` is refused (one line), or None."""
        if kind is bool or self.choices is not None:
            valid = (True, False) if kind is bool else self.choices
            if not isinstance(value, kind) or value not in valid:
                return f"{self.flag} {value!r} is not one of: {', '.join(map(str, valid))}"
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
            return f"{self.flag} must be {'a whole' if kind is int else 'a'} number, got {value!r}"
        if not math.isfinite(value):
            return f"{self.flag} must be a finite number, got {value!r}"
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            return f"{self.flag} must be {self.bounds_text()}, got {value!r}"
        return None

    def bounds_text(self) -> str:
        """`between 0 and 10`, `>= 0` or `<= 10` (empty when unbounded)."""
        if self.low is not None and self.high is not None:
            return f"between {self.low:g} and {self.high:g}"
        return f">= {self.low:g}" if self.low is not None else f"<= {self.high:g}" if self.high is not None else ""


def option(default: Any, *, flag: str, help: str, choices: tuple[str, ...] | None = None,
           low: float | None = None, high: float | None = None) -> Any:
    """A field of a plug-in's Options: its default (whose type is the option's), CLI flag, help and bounds."""
    if not flag.startswith("--") or not isinstance(default, KINDS):
        raise TypeError(f"option {flag!r}: the flag starts with -- and the default is one of "
                        f"{', '.join(k.__name__ for k in KINDS)}")
    return field(default=default, metadata={METADATA_KEY: OptionSpec(flag, help, choices, low, high)})


@dataclass(frozen=True)
class PluginOptions:
    """Base of a plug-in's `Options`: no options of its own; a subclass adds fields made with `option(...)`,
    each value checked on creation (library and CLI refuse the same values)."""

    def __post_init__(self) -> None:
        for item, spec in option_fields(type(self)):
            problem = spec.problem(getattr(self, item.name), option_kind(item))
            if problem:
                raise UsageError(problem)

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
