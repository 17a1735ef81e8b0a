"""Option groups: options several commands share, each defined once. A command names a group as a parameter's
default (`settings: Any = RUN`); typer sees that parameter replaced by the group's options (the parameters of its
parts in verify/cli/options.py, plus the options every registered runtime or format declares, read when the app is
built), and the command gets them back packed into the library's object (RunSettings, FormatChoice, ReportPaths)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.errors import UsageError
from exporter.formats import registered_formats
from verify.cli import options as opt
from verify.runtimes import registered_runtimes

GIVEN_PARAMETER = "given_options"
"""A command with a parameter of this name gets the flags of its group options set to other than their defaults."""


@dataclass(frozen=True)
class Part:
    """Some options of a group: `build`'s keyword parameters (their annotations make the CLI options); `plugins`
    adds the options plug-ins declare, which `build` takes as **values."""

    build: Callable[..., dict[str, Any]]
    plugins: Callable[[], list[inspect.Parameter]] | None = None

    def parameters(self) -> list[inspect.Parameter]:
        own = inspect.signature(self.build, eval_str=True).parameters.values()
        kept = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if p.kind != inspect.Parameter.VAR_KEYWORD]
        return kept + (self.plugins() if self.plugins else [])


@dataclass(frozen=True)
class OptionGroup:
    """Options shared by several commands: its parts' options, packed by `make` from what the parts return."""

    name: str
    parts: tuple[Part, ...]
    make: Callable[..., Any]

    def parameters(self) -> list[inspect.Parameter]:
        return [p for part in self.parts for p in part.parameters()]

    def pack(self, values: dict[str, Any]) -> Any:
        built: dict[str, Any] = {}
        for part in self.parts:
            built.update(part.build(**{p.name: values[p.name] for p in part.parameters()}))
        return self.make(**built)


@dataclass(frozen=True)
class ReportPaths:
    """Where the report files go (--json, --junit, --markdown); two into one file are refused."""

    json: Path | None = None
    junit: Path | None = None
    markdown: Path | None = None

    def __post_init__(self) -> None:
        opt.distinct_outputs(json=self.json, junit=self.junit, markdown=self.markdown)


@dataclass(frozen=True)
class FolderTrust:
    """What a folder check may trust and what it re-derives (artifact, preflight): the key its signature must
    verify with, unsigned code-executing files, and the reference rebuilt from the model it names."""

    verify_key: Path | None = None
    trust_unsigned_code: bool = False
    rebuild: bool = False
    checkpoint: Path | None = None

    def __post_init__(self) -> None:
        if self.checkpoint is not None and not self.rebuild:
            raise UsageError("--checkpoint names the weights to rebuild the model with: add --rebuild")


def trust_part(verify_key: opt.VerifyKey = None, trust_unsigned_code: opt.TrustUnsignedCode = False,
               rebuild: opt.Rebuild = False, checkpoint: opt.Checkpoint = None) -> dict[str, Any]:
    return {"verify_key": verify_key, "trust_unsigned_code": trust_unsigned_code, "rebuild": rebuild,
            "checkpoint": checkpoint}


def report_part(json_path: opt.JsonOut = None, junit: opt.JunitOut = None,
                markdown: opt.MarkdownOut = None) -> dict[str, Any]:
    return {"json": json_path, "junit": junit, "markdown": markdown}


def _run_settings(**values: Any) -> Any:
    from verify.settings import RunSettings  # not imported for --help

    return RunSettings(**values)


def _runtime_plugins_only(**values: Any) -> dict[str, Any]:
    return {"plugins": opt.runtime_plugins(values)}


INPUTS = Part(opt.input_part)
SAMPLES = Part(opt.samples_part)
RUNTIME = Part(opt.runtime_part, opt.runtime_option_parameters)
TOLERANCE = Part(opt.tolerance_part)
LAYERS = Part(opt.layers_part)

RUN = OptionGroup("run", (INPUTS, SAMPLES, RUNTIME, TOLERANCE), _run_settings)
"""Everything a run takes (matrix): inputs, runtime options (shared and each runtime's), tolerance."""
JUDGED_RUN = OptionGroup("run", (INPUTS, SAMPLES, RUNTIME, TOLERANCE, LAYERS), _run_settings)
"""A run whose files may also be judged layer by layer (export, compare): RUN and --layers."""
FEED = OptionGroup("feed", (INPUTS,), _run_settings)
"""What feeds the model alone (explain): no runtime, no tolerance of its own."""
RUNTIME_PLUGINS = OptionGroup("runtime plug-ins", (Part(_runtime_plugins_only, opt.runtime_option_parameters),),
                              lambda plugins: plugins)
"""Each runtime's own options, {runtime name: its Options} (artifact, preflight)."""
EXPORT = OptionGroup("export", (Part(opt.format_part, opt.format_option_parameters),), opt.FormatChoice)
"""Which formats, their axes, and each format's own options (export, matrix)."""
FOLDER_TRUST = OptionGroup("folder trust", (Part(trust_part),), FolderTrust)
"""--verify-key, --trust-unsigned-code, --rebuild and --checkpoint (artifact, preflight)."""
REPORTS = OptionGroup("reports", (Part(report_part),), ReportPaths)
"""--json, --junit and --markdown as every command but the matrix words them."""


def flag_of(parameter: inspect.Parameter, value: Any = None) -> str:
    """The option's main flag (`--tf32` of --tf32/--no-tf32; --some-name when none is spelled); with `value` False,
    the flag that sets it (`--no-normalize`), so a refusal names the flag the user gave."""
    info = next((m for m in getattr(parameter.annotation, "__metadata__", ()) if hasattr(m, "param_decls")), None)
    spelled = [getattr(info, "default", None), *(getattr(info, "param_decls", None) or ())]  # Annotated: a name
    declared = [d for d in spelled if isinstance(d, str) and d.startswith("--")]
    if not declared:
        return "--" + parameter.name.replace("_", "-")
    flags = [flag.strip() for flag in declared[0].split("/")]
    return flags[1] if value is False and len(flags) == 2 else flags[0]


class WithOptionGroups:
    """A command whose parameters defaulting to an OptionGroup are, to typer, that group's options (computed
    when the app is built, once per set of registered plug-ins); called, it gets each group packed."""

    def __init__(self, command: Callable[..., Any]) -> None:
        functools.update_wrapper(self, command)
        self._signatures: dict[tuple, inspect.Signature] = {}

    def groups(self) -> dict[str, OptionGroup]:
        own = inspect.signature(self.__wrapped__).parameters.values()
        return {p.name: p.default for p in own if isinstance(p.default, OptionGroup)}

    @property
    def __signature__(self) -> inspect.Signature:
        key = (registered_runtimes(), registered_formats())  # inspect asks many times per build
        if key not in self._signatures:
            self._signatures = {key: self._signature()}
        return self._signatures[key]

    def _signature(self) -> inspect.Signature:
        own = inspect.signature(self.__wrapped__, eval_str=True)
        groups = self.groups()
        kept = [p for p in own.parameters.values() if p.name not in groups and p.name != GIVEN_PARAMETER]
        extra = [p for group in groups.values() for p in group.parameters()]
        names = [p.name for p in kept + extra]
        clash = sorted({name for name in names if names.count(name) > 1})
        if clash:  # a plug-in's bug: its option would silently replace another
            raise TypeError(f"Two options of {self.__name__} share a name: {', '.join(clash)}")
        return own.replace(parameters=kept + extra)

    def __call__(self, **kwargs: Any) -> Any:
        packed, given = {}, []
        for name, group in self.groups().items():
            parameters = group.parameters()
            values = {p.name: kwargs.pop(p.name) for p in parameters}
            given += [flag_of(p, values[p.name]) for p in parameters if values[p.name] != p.default]
            packed[name] = group.pack(values)
        if GIVEN_PARAMETER in inspect.signature(self.__wrapped__).parameters:
            packed[GIVEN_PARAMETER] = given
        return self.__wrapped__(**kwargs, **packed)


def with_option_groups(command: Callable[..., Any]) -> Callable[..., Any]:
    return WithOptionGroups(command)
