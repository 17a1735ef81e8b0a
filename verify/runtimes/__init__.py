"""Runtimes: each a small class that loads an artifact and runs it on numpy inputs.

Adding one means one module with a `Runtime` subclass (its own options, if any, a nested `Options` dataclass of
`exporter.plugin_options.option` fields) and one `RUNTIMES.add` line below; the CLI finds its options here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

from exporter.errors import ArtifactError, SetupError, UsageError
from exporter.plugin_options import PluginOptions
from exporter.registry import Registry

if TYPE_CHECKING:
    import numpy as np

    from exporter.artifacts import Artifact

DEVICES = ("cpu", "cuda")
DTYPES = ("float32", "float64")
"""What RuntimeOptions.dtype can be: float32 runs, or float64 (a torch runtime turned into the oracle)."""


@dataclass(frozen=True)
class RuntimeOptions:
    """What every runtime shares, and each runtime's own options (its `Options`) by runtime name."""

    device: str = "cpu"
    dtype: str = "float32"
    """float64 turns a torch runtime into the oracle."""
    tf32: bool | None = None
    """None keeps the framework's own default (PyTorch: cuDNN TF32 on; ORT CUDA: use_tf32=1)."""
    precision: str = "fp32"
    """fp32 | tf32 (CUDA) | bf16 | fp16: what the run computes in (verify/judge/precision.py); a runtime that
    cannot honour it refuses, and the floor is measured at it."""
    plugins: Mapping[str, PluginOptions] | tuple[tuple[str, PluginOptions], ...] = ()
    """Runtime name -> that runtime's Options; a runtime not named runs with its defaults. Kept as sorted
    pairs without the defaults, so equal settings compare and hash equal however they were spelled."""

    def __post_init__(self) -> None:
        self._check_shared_fields()
        if not isinstance(self.plugins, (Mapping, tuple)):  # review 30: ["onnxruntime"] failed in dict()
            raise TypeError(f"plugins must be a mapping of runtime name -> that runtime's Options, e.g. "
                            f"{{'onnxruntime': runtime_class('onnxruntime').Options()}}, not "
                            f"{type(self.plugins).__name__}")
        try:
            given = dict(self.plugins)
        except (TypeError, ValueError):
            raise TypeError(f"plugins must be a mapping of runtime name -> that runtime's Options, not "
                            f"{type(self.plugins).__name__} {self.plugins!r:.80}") from None
        for name, value in given.items():
            expected = runtime_class(name).option_class()  # an unknown runtime: UsageError listing the known ones
            if type(value) is not expected:
                raise UsageError(f"The options of runtime {name} are a {expected.__qualname__}, not a "
                                 f"{type(value).__qualname__}; build them with runtime_class({name!r}).Options(...)")
        kept = tuple(sorted((n, v) for n, v in given.items() if v != runtime_class(n).option_class()()))
        object.__setattr__(self, "plugins", kept)

    def _check_shared_fields(self) -> None:
        """Each shared field by name, at construction (surface 29 checked them in RunSettings only; review 30: a
        runtime made from RuntimeOptions(tf32="yes") alone took it)."""
        from verify.judge.precision import PRECISIONS

        if not isinstance(self.device, str):
            raise TypeError(f"runtime.device must be 'cpu' or 'cuda', not {type(self.device).__name__}")
        if self.device not in DEVICES:
            raise UsageError(f"Unknown device {self.device!r}: runtime.device must be one of {', '.join(DEVICES)}")
        if not isinstance(self.dtype, str):
            raise TypeError(f"runtime.dtype must be one of {', '.join(DTYPES)}, not {type(self.dtype).__name__}")
        if self.dtype not in DTYPES:
            raise UsageError(f"runtime.dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")
        if self.tf32 is not None and not isinstance(self.tf32, bool):
            raise TypeError(f"runtime.tf32 must be True, False or None (the framework's default), not "
                            f"{type(self.tf32).__name__}")
        if not isinstance(self.precision, str):
            raise TypeError(f"runtime.precision must be one of {', '.join(PRECISIONS)}, not "
                            f"{type(self.precision).__name__}")
        if self.precision not in PRECISIONS:
            raise UsageError(f"Unknown precision {self.precision!r}: runtime.precision must be one of "
                             f"{', '.join(PRECISIONS)}")

    def of(self, runtime: type[Runtime] | Runtime) -> Any:
        """The options of `runtime`'s class, or of the nearest parent that declares some (a base class reads its
        own by naming itself: `of(OnnxRuntime)` stays ONNX Runtime's options in a subclass that has others)."""
        owner = runtime.options_owner()
        given = dict(self.plugins).get(getattr(owner, "name", ""))
        return owner.Options() if given is None else given

    def replacing(self, runtime: type[Runtime] | Runtime, **changes: Any) -> RuntimeOptions:
        """These settings with some of `runtime`'s options (see `of`) changed."""
        owner = runtime.options_owner()
        return replace(self, plugins={**dict(self.plugins), owner.name: replace(self.of(owner), **changes)})

    def record(self) -> dict[str, Any]:
        """As reports and cache keys record them: device, dtype, every registered runtime's options by key (its
        flag's name, in registry order), tf32, precision."""
        own: dict[str, Any] = {}
        for name in RUNTIMES:
            for key, value in self.of(runtime_class(name)).to_dict().items():
                if key in own:
                    raise TypeError(f"Runtime {name} declares an option {key!r} that another runtime declares too")
                own[key] = value
        return {"device": self.device, "dtype": self.dtype, **own, "tf32": self.tf32, "precision": self.precision}


class Runtime:
    """Base: subclasses implement `_load` and `_run`; input checks happen here, once."""

    name: ClassVar[str]
    formats: ClassVar[tuple[str, ...]]
    Options: ClassVar[type[PluginOptions]] = PluginOptions
    """Its own options (a frozen dataclass of `exporter.plugin_options.option` fields): the CLI gives each a
    flag on every command that runs runtimes; the runtime reads them with `self.options.of(self)`."""
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "tf32", "bf16", "fp16")
    """The precisions this runtime can honour (verify/judge/precision.py): asking another is refused."""
    supports_float64: ClassVar[bool] = False
    """Can run the artifact in float64 (and so serve as the oracle)."""
    float64_reference: ClassVar[tuple[str, str] | None] = None
    """(module, class) of a reference evaluator that runs this runtime's files in float64 where the runtime cannot
    (`verify compare` of two such files measures their floors on it: `float64_reference_for`)."""
    loads_in_background: ClassVar[bool] = False
    """Its load is long Python work (a .pt2's deserialisation) that a thread may do while this process runs other
    runtimes or the oracle (verify/pipeline/preload.py): `_load` then touches no process-wide torch setting."""
    runs_natively: ClassVar[bool] = False
    """A run is one native call that leaves the GIL free (ONNX Runtime's session.run): a background load beside it
    costs it nothing. A torch module's run takes the GIL back after each operator, so a load beside it waits it
    out operator by operator (the switch interval), and is held back until such runs are over."""

    @classmethod
    def option_class(cls) -> type[PluginOptions]:
        """The Options this class declares itself; an inherited one stays its parent's (one flag, one key)."""
        return cls.__dict__.get("Options", PluginOptions)

    @classmethod
    def options_owner(cls) -> type[Runtime]:
        """The nearest class, itself or a parent, that declares Options: whose options it reads."""
        return next(c for c in cls.__mro__ if "Options" in c.__dict__)

    def __init__(self, options: RuntimeOptions | None = None) -> None:
        self.options = options or RuntimeOptions()
        if self.options.device not in DEVICES:
            raise UsageError(f"Unknown device {self.options.device!r}; use one of {', '.join(DEVICES)}")
        self.artifact: Artifact | None = None

    @property
    def label(self) -> str:
        return self.name + (f"({', '.join(self._label_details())})" if self._label_details() else "")

    def _label_details(self) -> list[str]:
        details = []
        if self.options.device != "cpu":
            details.append(self.options.device)
            if self.options.tf32 is not None:
                details.append("tf32" if self.options.tf32 else "no-tf32")
        if self.options.dtype != "float32":
            details.append(self.options.dtype)
        return details

    def load(self, artifact: Artifact) -> Runtime:
        if artifact.format not in self.formats:
            raise UsageError(f"Runtime {self.name} cannot run a {artifact.format} artifact")
        self.artifact = artifact
        self._load(artifact)
        return self

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import numpy as np

        if self.artifact is None:
            raise RuntimeError(f"{self.label}: load() an artifact before run()")
        expected = self.artifact.meta.input_name
        if set(inputs) != {expected}:
            raise UsageError(f"{self.label} expects one input named {expected!r}, got {sorted(inputs)}")
        array = inputs[expected]
        if array.ndim != 4 or array.dtype != np.float32:
            raise UsageError(f"{self.label} expects a float32 NCHW array, got {array.dtype} {array.shape}")
        outputs = {name: np.asarray(value) for name, value in self._run(np.ascontiguousarray(array)).items()}
        empty = next((name for name, value in outputs.items() if value.size == 0), None)
        if empty is not None:  # no element to compare: any tolerance would pass it, so no verdict can rest on it
            raise ArtifactError(f"{self.label} returned an empty {empty!r} (shape {outputs[empty].shape}) on "
                                f"input {array.shape}: there is nothing to compare; check the model's outputs")
        return outputs

    def running_on(self) -> str:
        """Where the loaded artifact really runs (a runtime that can fall back elsewhere asks its library)."""
        return self.options.device

    def alternatives(self) -> list[RuntimeOptions]:
        """Other valid settings of this runtime (e.g. graph optimisation levels) whose spread
        estimates the float32 floor where no float64 run is possible; none by default."""
        return []

    def _load(self, artifact: Artifact) -> None:
        raise NotImplementedError

    def _run(self, array: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError


def _lazy(module: str, cls: str):
    def load() -> type[Runtime]:
        from importlib import import_module

        return getattr(import_module(f"verify.runtimes.{module}"), cls)

    return load


RUNTIMES: Registry = Registry("runtime")
RUNTIMES.add("eager", _lazy("eager", "EagerRuntime"))
RUNTIMES.add("torchscript", _lazy("torchscript", "TorchScriptRuntime"))
RUNTIMES.add("exported", _lazy("exported", "ExportedProgramRuntime"))
RUNTIMES.add("aoti", _lazy("aoti", "AotiRuntime"))
RUNTIMES.add("onnxruntime", _lazy("onnxruntime", "OnnxRuntime"))


def runtime_class(name: str) -> type[Runtime]:
    return RUNTIMES.get(name)()


def runtimes_for(fmt: str, float64: bool = False) -> list[str]:
    """The registered runtimes that run artifacts of format `fmt` (in float64 when asked)."""
    return [name for name in RUNTIMES if fmt in runtime_class(name).formats
            and (not float64 or runtime_class(name).supports_float64)]


def float64_reference_for(fmt: str) -> type | None:
    """The reference evaluator class that runs files of `fmt` in float64 (its default runtime's `float64_reference`),
    or None where it has none."""
    from importlib import import_module

    where = runtime_class(default_runtime(fmt)).float64_reference
    return None if where is None else getattr(import_module(where[0]), where[1])


def default_runtime(fmt: str) -> str:
    """The runtime a format names as its own (`Format.default_runtime`), checked to be registered and to run it."""
    from exporter.formats import get_format

    name = get_format(fmt).default_runtime
    if name not in RUNTIMES.names() or fmt not in runtime_class(name).formats:
        raise UsageError(f"Format {fmt} names {name!r} as its runtime, which is not a registered runtime of {fmt}; "
                         f"register it, or name one of: {', '.join(runtimes_for(fmt)) or 'none'}")
    return name


def side_runtimes(formats: Sequence[str], chosen: str | None = None) -> list[str]:
    """The runtime for each side of a comparison: `chosen` where it runs that side's format, else the format's
    own; a `chosen` that runs no side is refused (it would be ignored)."""
    if chosen is not None and not set(runtime_class(chosen).formats) & set(formats):
        raise UsageError(f"Runtime {chosen} runs {', '.join(runtime_class(chosen).formats)}, and neither side is "
                         f"one (they are {' and '.join(formats)}); drop --runtime or name a runtime of "
                         f"{' or '.join(dict.fromkeys(formats))}")
    return [chosen if chosen is not None and fmt in runtime_class(chosen).formats else default_runtime(fmt)
            for fmt in formats]


def require_device(device: str) -> None:
    """Refuse --device cuda where neither torch nor ONNX Runtime sees a GPU: one line before any model work, not
    after the build and the exports (each runtime still checks its own library when it loads)."""
    if device != "cuda":
        return
    import torch

    if torch.cuda.is_available():
        return
    try:
        import onnxruntime
    except ImportError:
        onnxruntime = None
    if onnxruntime is not None and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return
    raise SetupError("--device cuda: no CUDA GPU is available here (torch.cuda.is_available() is False and ONNX "
                     "Runtime has no CUDA provider); run on a machine with a GPU, or drop --device cuda")


def check_runtimes(names: Sequence[str], options: RuntimeOptions) -> None:
    """Refuse settings `names` cannot honour (device, precision: each runtime's constructor checks them), and
    options of runtimes not among them, before any model is built, loaded or run."""
    require_device(options.device)
    for name in dict.fromkeys(names):
        make_runtime(name, options)
    refuse_unused_options(names, options)


def refuse_unused_options(names: Sequence[str], options: RuntimeOptions) -> None:
    """A runtime's own option set (not its default) while no runtime that reads it runs would be silently ignored:
    refused in one line, before any work. A runtime reads its own options and those of the parents it inherits
    from (the dummy runtime of the tests reads --ort-opt-level)."""
    from exporter.plugin_options import option_fields

    readers = {c.name for name in names for c in runtime_class(name).__mro__
               if "Options" in c.__dict__ and isinstance(c.__dict__.get("name"), str)}
    for owner, given in dict(options.plugins).items():
        if owner in readers:
            continue
        default = type(given)()
        flag = next((spec.flag for item, spec in option_fields(type(given))
                     if getattr(given, item.name) != getattr(default, item.name)), None)
        if flag is None:  # an options object left at its defaults chooses nothing (a bare StopIteration before)
            continue
        raise UsageError(f"{flag} applies to runtime {owner}, which this run does not use (it runs "
                         f"{', '.join(dict.fromkeys(names))}); drop {flag}")


def make_runtime(name: str, options: RuntimeOptions | None = None) -> Runtime:
    return runtime_class(name)(options)


def registered_runtimes() -> tuple[tuple[str, Any], ...]:
    """What is registered now, name and loader: equal while no runtime was added, removed or replaced."""
    return tuple((name, RUNTIMES.get(name)) for name in RUNTIMES)


def list_runtimes() -> list[str]:
    return RUNTIMES.names()


def formats_run_by(runtimes: Sequence[str]) -> tuple[str, ...]:
    """The file formats to export for `runtimes` when no format is named: each runtime's first file
    format, in registry order (the in-memory eager runtime needs none)."""
    from exporter.formats import file_formats

    files = file_formats()
    wanted = {next((f for f in runtime_class(name).formats if f in files), None) for name in runtimes}
    return tuple(f for f in files if f in wanted)


def runtimes_for_formats(formats: list[str] | tuple[str, ...]) -> list[str]:
    """Every registered runtime that runs one of `formats`, in registry order."""
    return [name for name in RUNTIMES if set(runtime_class(name).formats) & set(formats)]
