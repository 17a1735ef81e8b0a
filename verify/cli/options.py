"""The CLI's options, defined once: choices as Enums or registry-checked callbacks, numbers finite and
in range, paths of the right kind and outputs writable. Every check runs while typer parses, so a bad
value is refused before any model is built. Heavy imports stay out (`verify --help` is instant)."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from exporter.backbones import BACKBONES, VIEWS
from exporter.errors import UsageError
from exporter.formats import FORMATS, get_format
from exporter.fsio import check_writable_file, check_writable_folder, path_kind
from exporter.norms import NORMS
from exporter.plugin_options import OptionSpec, PluginOptions, option_fields, option_kind
from exporter.spec import parse_shape
from verify import bounds
from verify.inputs import DEFAULT_SAMPLES, MAX_SAMPLES, SAMPLES_ENV
from verify.judge.compare import AUTO_FACTOR
from verify.judge.precision import check_precision, check_tf32_flag
from verify.render.claim import names_a_stream
from verify.runtimes import RUNTIMES, RuntimeOptions, runtime_class


class Precision(str, Enum):
    """What every run computes in and what the verdict is judged at (verify/judge/precision.py PRECISIONS)."""

    fp32 = "fp32"
    tf32 = "tf32"
    bf16 = "bf16"
    fp16 = "fp16"


class Device(str, Enum):
    """Where every runtime runs (the oracle stays on the CPU); also preflight's --provider."""

    cpu = "cpu"
    cuda = "cuda"


def _bad(exc: UsageError) -> typer.BadParameter:
    return typer.BadParameter(str(exc))


# Callbacks: each returns the value unchanged or raises typer.BadParameter (one line, exit 2) ----------

def _refusing(check: Callable[[Any], object]) -> Callable[[Any], Any]:
    """A callback from a library check: None passes; the check's UsageError is the option's one-line error."""
    def callback(value: Any) -> Any:
        if value is not None:
            try:
                check(value)
            except UsageError as exc:
                raise _bad(exc) from None
        return value

    return callback


def _registry_choice(registry: Any) -> Any:
    return _refusing(registry.get)


def _number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
            integer: bool = False) -> Any:
    def check(value: float | int | None) -> float | int | None:
        if value is not None:
            problem = bounds.number_problem(value, low, high, low_open=low_open, integer=integer)
            if problem:
                raise typer.BadParameter(problem)
        return value

    return check


def check_runtimes(value: list[str] | None) -> list[str] | None:
    from verify.runtimes import RUNTIMES

    for name in value or []:
        try:
            RUNTIMES.get(name)
        except UsageError as exc:
            raise _bad(exc) from None
    if value and len(set(value)) != len(value):
        raise typer.BadParameter(f"a runtime is given twice ({', '.join(value)}); name each once")
    return value


def check_file_runtime(value: str) -> str:
    """preflight runs a file from the folder: a registered runtime that reads one."""
    from verify.runtimes import RUNTIMES, runtime_class

    try:
        runtime_class(value)
    except UsageError as exc:
        raise _bad(exc) from None
    from exporter.formats import get_format

    def runs_files(name: str) -> bool:
        return any(get_format(f).is_file for f in runtime_class(name).formats)

    if not runs_files(value):
        files = [n for n in RUNTIMES if runs_files(n)]
        raise typer.BadParameter(f"{value} runs in-memory models, not files; use one of {', '.join(files)}")
    return value


def check_formats(value: list[str] | None) -> list[str] | None:
    from exporter.formats import file_formats

    for name in value or []:
        if name not in file_formats():
            raise typer.BadParameter(f"unknown format {name!r}; choose among {', '.join(file_formats())}")
    if value and len(set(value)) != len(value):
        raise typer.BadParameter(f"a format is given twice ({', '.join(value)}); name each once")
    return value


def _source_kind(value: str) -> Any:
    """A model spec, a whole detector (name:norm, for explain) or an artifact file, told apart and checked
    without loading or building anything."""
    from verify.api import source_kind
    from verify.detect.explain import is_detector_spec

    return None if is_detector_spec(value) else source_kind(value)


check_source = _refusing(_source_kind)
check_shape = _refusing(parse_shape)


def check_weights(value: str) -> str:
    """A named source, else a file that must exist and be a regular file (its contents load later)."""
    from exporter.fsio import require_readable, require_regular_file
    from exporter.weights import WEIGHT_FILE_SUFFIXES, WEIGHT_SOURCES, suffix_hint, weights_in_folder

    if value in WEIGHT_SOURCES:
        return value
    if path_kind(Path(value)) != "missing" or value.endswith(WEIGHT_FILE_SUFFIXES) or "/" in value:
        try:
            require_regular_file(Path(value), "Weights file", weights_in_folder(Path(value)))
        except UsageError as exc:
            raise _bad(exc) from None
        if not value.endswith(WEIGHT_FILE_SUFFIXES):
            raise typer.BadParameter(f"weights file {value} must end in {', '.join(WEIGHT_FILE_SUFFIXES)}"
                                     f"{suffix_hint(Path(value))}")
        try:
            require_readable(Path(value), "weights file")
        except UsageError as exc:
            raise _bad(exc) from None
        return value
    raise typer.BadParameter(f"unknown weights {value!r}; use one of {', '.join(WEIGHT_SOURCES)} or a "
                             f"{'/'.join(WEIGHT_FILE_SUFFIXES)} file path")


def _require_existing(path: Path, wanted: str, folders: bool = True) -> None:
    """There, and a regular file (or, with `folders`, a folder); else the option's one-line error."""
    kind = path_kind(path)
    if kind == "missing":
        raise typer.BadParameter(f"{path} does not exist")
    if kind is not None and not (folders and kind == "a directory"):
        raise typer.BadParameter(f"{path} is {kind}; pass {wanted}")


INPUT_PARAMETER = "input_path"
"""The parameter name of --input in every command that takes it."""
REPORT_FLAGS = {"json_path": "--json", "junit": "--junit", "markdown": "--markdown", "html": "--html"}
"""The parameter names of the report options, and their flags."""
OUT_PARAMETER = "out"
"""The parameter name of verify export's --out (the artifact folder), kept out of an --input folder too."""


def apart_from_input(input_path: Path | None, flag: str, output: Path | None) -> None:
    """A report written over the --input file would destroy it, and one written into an input folder is a file
    the next run refuses as an input; either is refused before any work."""
    if input_path is None or output is None:
        return
    given, written = Path(input_path).resolve(), Path(output).resolve()
    if written == given or written.is_relative_to(given) and path_kind(Path(input_path)) == "a directory":
        harm = "overwrite the --input file" if written == given else \
            "add a file (which the next run refuses as an input) to the --input folder"
        raise typer.BadParameter(f"{flag} {output} would {harm} {input_path}; write the report elsewhere")


def out_apart_from_input(input_path: Path | None, out: Path | None) -> None:
    """The artifact folder (--out) inside an --input folder: the export passed, then every later run with that
    --input refused its own export folder as an input ("is a directory, not a file"; newuser 48); refused before
    any work."""
    if input_path is None or out is None or path_kind(Path(input_path)) != "a directory":
        return
    if Path(out).resolve().is_relative_to(Path(input_path).resolve()):
        raise typer.BadParameter(f"--out {out} is inside the --input folder {input_path}, so the export folder would "
                                 "become an entry that every later run with this --input refuses (an input folder "
                                 "holds only arrays and images); pass --out outside it")


def check_input_path(ctx: typer.Context, value: Path | None) -> Path | None:
    """An input file or folder: what it holds is read (and checked) before any model is built."""
    if value is not None:
        _require_existing(value, "a .npy array, an image or a folder of them")
        for name, flag in REPORT_FLAGS.items():  # the reports parsed before --input
            apart_from_input(value, flag, ctx.params.get(name))
        out_apart_from_input(value, ctx.params.get(OUT_PARAMETER))  # verify export's --out, parsed before --input
    return value


def plain_output_name(path: Path) -> None:
    """An output's path is printed (`wrote PATH`) and can become a CI log line: a control character (a newline
    starts a forged line, `::error::...` on GitHub; ESC moves the cursor), a bidirectional override or a line
    separator in it is refused, never written."""
    from verify.cache import control_characters

    bad = control_characters(str(path))
    if bad:
        raise typer.BadParameter(f"the path holds control or format characters ({', '.join(bad[:4])}); give a "
                                 "plain file name")


def fits_file_system(path: Path) -> None:
    """A name longer than its file system takes (NAME_MAX, 255 bytes on most) or a path longer than PATH_MAX (4096
    bytes on Linux) is refused while parsing: surface 29, `--json` of a 300-byte name or of a 5000-byte path ran the
    whole export, then failed to write it ("File name too long", exit 2)."""
    absolute = Path(os.path.abspath(path))
    base = next((p for p in (absolute, *absolute.parents) if os.path.isdir(p)), Path("/"))
    try:
        name_max, path_max = os.pathconf(base, "PC_NAME_MAX"), os.pathconf(base, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    name, whole = len(os.fsencode(absolute.name)), len(os.fsencode(str(absolute)))
    if name > name_max:
        raise typer.BadParameter(f"the name {absolute.name[:24]}… is {name} bytes, more than the {name_max} its file "
                                 "system allows; give a shorter name")
    if whole >= path_max:
        raise typer.BadParameter(f"the path is {whole} bytes as an absolute path, more than the {path_max - 1} this "
                                 "system allows; give a shorter one")


def check_output_file(ctx: typer.Context, param: typer.CallbackParam, value: Path | None) -> Path | None:
    """A report file: a plain name that fits the file system, writable, and not the --input (parsed before it;
    check_input_path checks those after)."""
    if value is not None:
        plain_output_name(value)
        kind = path_kind(value)  # a missing path in a folder nothing can be written to: check_writable_file says so
        unwritable = kind == "missing" and not os.access(os.path.dirname(os.path.abspath(value)), os.W_OK)
        if names_a_stream(value) and not unwritable:  # hunt 27: `-` wrote a file named `-`; /dev/stdout was replaced
            named = kind is not None and kind != "missing" and not kind.startswith("unreadable")
            what = "'-' (standard output) is" if str(value) == "-" else f"{value} is {kind}," \
                if named else f"{value} (a device or stream) is"
            raise typer.BadParameter(f"{what} not a file: a report is written whole, then renamed into place; "
                                     "give a file name")
        fits_file_system(value)
        try:
            check_writable_file(value, "output")
        except UsageError as exc:
            raise _bad(exc) from None
        flag = next((o for o in param.opts if o.startswith("--")), f"--{param.name}")
        apart_from_input(ctx.params.get(INPUT_PARAMETER), flag, value)
    return value


def check_output_folder(value: Path | None) -> Path | None:
    """An artifact folder: a plain name (it is printed, `artifacts in PATH`) that fits the file system, writable where
    it exists."""
    if value is not None:
        plain_output_name(value)
        fits_file_system(value)
        try:
            check_writable_folder(value, "output folder")
        except UsageError as exc:
            raise _bad(exc) from None
    return value


def check_export_folder(ctx: typer.Context, value: Path | None) -> Path | None:
    """verify export's --out: an artifact folder (check_output_folder), not inside the --input folder (parsed before
    it; check_input_path checks it after)."""
    check_output_folder(value)
    out_apart_from_input(ctx.params.get(INPUT_PARAMETER), value)
    return value


SIZE_UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "KIB": 2**10, "M": 2**20, "MB": 2**20, "MIB": 2**20,
              "G": 2**30, "GB": 2**30, "GIB": 2**30, "T": 2**40, "TB": 2**40, "TIB": 2**40}


def parse_size(text: str) -> int:
    """`5G`, `500M`, `1.5GB`, `123` (bytes) -> bytes (binary units); anything else is a usage error."""
    import re

    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).upper() if match else None
    if match is None or unit not in SIZE_UNITS:
        raise typer.BadParameter(f"{text!r} is not a size; give e.g. 5G, 500M or a number of bytes")
    return int(float(match.group(1)) * SIZE_UNITS[unit])


def _cache_folder(path: Path) -> None:
    plain_output_name(path)
    fits_file_system(path)
    check_writable_folder(path, "cache folder")


check_cache_folder = _refusing(_cache_folder)
"""A cache folder: a plain name (`verify cache` prints it), writable where it exists, creatable where it does not."""


def _readable_folder(path: Path) -> None:
    from exporter.fsio import path_kind

    plain_output_name(path)
    kind = path_kind(path) if os.path.lexists(path) else "a directory"
    if kind != "a directory":
        raise UsageError(f"cache folder {path} is {kind or 'a file'}; give a folder")


check_cache_folder_to_read = _refusing(_readable_folder)
"""A cache folder only read (`verify cache info`): a folder or nothing; a read-only one is fine (it was refused as
not writable)."""


def check_existing_paths(value: list[Path] | Path | None) -> Any:
    """Export folders (or their manifest.json) for artifact/preflight: there, and a folder or a file."""
    for path in value if isinstance(value, list) else [value] if value is not None else []:
        _require_existing(path, "an export folder or its manifest.json")
    return value


def check_key_file(value: Path | None) -> Path | None:
    """A PEM key for signing or verifying: a regular file; its content is checked by exporter.signing."""
    if value is not None:
        _require_existing(value, "a PEM key file", folders=False)
    return value


def weights_file(weights: str | Path | None) -> str | None:
    """The checkpoint a run reads, as a source that no report may be written over (`--weights w.pt --json w.pt`
    replaced the checkpoint with the report, exit 0); None for a named source."""
    from exporter.weights import WEIGHT_SOURCES

    return None if weights is None or str(weights) in WEIGHT_SOURCES else str(weights)


def distinct_outputs(**paths: Path | None) -> None:
    """Two reports into one file would overwrite each other."""
    seen: dict[Path, str] = {}
    for option, path in paths.items():
        if path is None:
            continue
        key = path.resolve()
        if key in seen:
            raise UsageError(f"--{seen[key]} and --{option} both write {path}; give each its own file")
        seen[key] = option


def reports_apart_from_created_folders(reports: Mapping[str, Path | None], folders: Mapping[str, Path | None]) -> None:
    """A report at a folder the run creates (the export folder under --out, the cache folder), or above one, could not
    be written once that folder exists: refused before any work (surface 29: `verify export --out o --json o` ran
    the whole export, 20 s, then "Cannot write o: it is a directory", exit 2)."""
    for flag, report in reports.items():
        if report is None:
            continue
        written = Path(report).resolve()
        for owner, folder in folders.items():
            if folder is not None and Path(folder).resolve().is_relative_to(written):
                raise UsageError(f"{flag} {report} is where this run creates {owner} {folder} (a folder), so the "
                                 "report could not be written there: write it elsewhere")


def outside_folders(folders: list[Path], **paths: Path | None) -> None:
    """A report written into a folder being checked would overwrite its files or add one its manifest does not
    list (a `--json F/manifest.json` replaced the manifest it checked); refused before any check."""
    for given in folders:
        folder = (given.parent if given.is_file() else given).resolve()
        for option, path in paths.items():
            if path is not None and path.resolve().is_relative_to(folder):
                raise UsageError(f"--{option} {path} is inside the folder being checked ({given}); write it "
                                 "elsewhere")


# Options shared by several commands ---------------------------------------------------------------
def _backbone_or_detector(value: str | None) -> str | None:
    from exporter.families.detectors import DETECTORS, unknown_model

    if value is None or value in DETECTORS or value in BACKBONES:
        return value
    # its short name: the refusal lists every backbone or detector in one line (MAX_MESSAGE), click's prefix included
    raise typer.BadParameter(str(unknown_model(value, BACKBONES.names())), param_hint="'-b'")


def _backbone_help() -> str:
    from exporter.families.detectors import DETECTORS

    return f"One of: {', '.join(BACKBONES.names())}; or a whole detector: {', '.join(DETECTORS.names())}"


Backbone = Annotated[str, typer.Option("--backbone", "-b", callback=_backbone_or_detector, help=_backbone_help())]
Norm = Annotated[str, typer.Option("--norm", "-n", callback=_registry_choice(NORMS),
                                   help=f"One of: {', '.join(NORMS.names())}")]
View = Annotated[str, typer.Option(callback=_registry_choice(VIEWS),
                                   help="body (layer1..4), fpn (with FPN) or trunk (classifier without avgpool/fc)")]
Weights = Annotated[str, typer.Option(callback=check_weights,
                                      help="synthetic (seeded, calibrated), imagenet (torchvision's local cache) "
                                           "or a .pt/.pth/.safetensors/.ckpt file")]
Seed = Annotated[int, typer.Option(callback=_number(*bounds.SEED_RANGE, integer=True),
                                   help=f"Seed for synthetic weights and the input (0..{bounds.SEED_RANGE[1]})")]
Shape = Annotated[str | None, typer.Option(callback=check_shape,
                                           help="Input shape NxCxHxW [default: the input's, else recorded, "
                                                "else 1x3x224x224]")]
InputPath = Annotated[Path | None, typer.Option(
    "--input", callback=check_input_path,
    help="A .npy array (NCHW float), a PNG/JPEG image (resized to --shape's HxW, ToTensor scaling, ImageNet "
         "mean/std unless --no-normalize), or a folder of them: each is an input, the worst verdict counts")]
Normalize = Annotated[bool, typer.Option(
    "--normalize/--no-normalize",
    help="Images: ImageNet mean/std after ToTensor's [0, 1] scaling; --no-normalize gives ToTensor() exactly")]
Samples = Annotated[int | None, typer.Option(
    callback=_number(1, MAX_SAMPLES, integer=True), show_default=False,
    help=f"Seeded inputs per verdict without --input (1..{MAX_SAMPLES}): normal, uniform and image-like, each "
         f"channel's floor the largest over them, every pair judged on each [default: ${SAMPLES_ENV} or "
         f"{DEFAULT_SAMPLES}; 1: one normal input]")]
DeviceOption = Annotated[Device, typer.Option(help="For every runtime (the oracle stays on the CPU)")]
SignKey = Annotated[Path | None, typer.Option(
    "--sign-key", callback=check_key_file,
    help="Sign the folder with this elliptic-curve private key (PEM), OpenSSF model-signing")]
VerifyKey = Annotated[Path | None, typer.Option(
    "--verify-key", callback=check_key_file,
    help="Refuse the folder unless its model-signing signature verifies with this public key (PEM)")]
PrecisionOption = Annotated[Precision, typer.Option(
    "--precision", help="fp32, tf32 (CUDA), bf16 or fp16: every run at this precision, judged on the floor "
                        "measured at it (the deployment's precision)")]
Tf32 = Annotated[bool | None, typer.Option("--tf32/--no-tf32",
                                           help="TF32 on CUDA [default: each framework's own default]")]
Decimal = Annotated[int | None, typer.Option(
    callback=_number(*bounds.DECIMAL_RANGE, integer=True),
    help=f"numpy assert_array_almost_equal(decimal=N) semantics, N in {bounds.DECIMAL_RANGE[0]}.."
         f"{bounds.DECIMAL_RANGE[1]}")]
Rtol = Annotated[float | None, typer.Option(callback=_number(0.0),
                                            help="numpy assert_allclose rtol, finite >= 0 (default 1e-7 with "
                                                 "--atol)")]
Atol = Annotated[float | None, typer.Option(callback=_number(0.0),
                                            help="numpy assert_allclose atol, finite >= 0 (default 0 with --rtol)")]
Factor = Annotated[float | None, typer.Option(callback=_number(0.0, low_open=True),
                                              help="auto mode: allowed multiple of the float32 noise floor, "
                                                   f"finite > 0 [default: {AUTO_FACTOR:g}]")]
JsonOut = Annotated[Path | None, typer.Option("--json", callback=check_output_file,
                                              help="Write the whole result as JSON here")]
JunitOut = Annotated[Path | None, typer.Option("--junit", callback=check_output_file,
                                               help="Write JUnit XML here (one test case per check)")]
MarkdownOut = Annotated[Path | None, typer.Option("--markdown", callback=check_output_file,
                                                  help="Write a Markdown summary here")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="One table row per output, not per pair")]
Layers = Annotated[bool | None, typer.Option(
    "--layers/--no-layers", show_default=False,
    help="Also judge every layer of each file (ONNX, .pt2, TorchScript) on its own: each re-run alone on the torch "
         "model's float64 inputs, judged on its own float32 floor; a layer that differs on its own fails, however "
         "small its effect on the outputs (about 3-5 s more on a ResNet-50 export at 224x224). [default: verify "
         "export of a registered backbone or of your model, and verify compare of a model against a file, on the "
         "CPU in float32 with the auto tolerance run it, and note a file it cannot judge (--layers fails it); "
         "$BACKBONE_VERIFY_LAYERS=0 or --no-layers: the outputs' verdict alone]")]
FolderLayers = Annotated[bool, typer.Option(
    "--layers", help="With --rebuild: also judge every layer of each file checked on its own, each re-run alone on the "
                     "rebuilt model's float64 inputs and judged on its own float32 floor (the layer verdict of "
                     "verify export --layers); a layer that differs on its own fails its file's check")]
ArtifactLayers = Annotated[bool | None, typer.Option(
    "--layers/--no-layers", show_default=False,
    help="With --rebuild: also judge every layer of each file checked on its own, each re-run alone on the rebuilt "
         "model's float64 inputs and judged on its own float32 floor (the layer verdict verify export runs); a layer "
         "that differs on its own fails its file's check. By default with --rebuild, best effort (a file it cannot "
         "judge is a note); --layers fails such a file, --no-layers skips the layer verdict")]
OutFolder = Annotated[Path, typer.Option(callback=check_export_folder,
                                         help="Folder for the artifacts (one subfolder backbone-norm-view)")]
Overwrite = Annotated[bool, typer.Option(
    "--overwrite", help="Replace an existing export folder even when it holds a different export")]
Static = Annotated[bool, typer.Option("--static", help="No dynamic batch/height/width axes")]
Runtimes = Annotated[list[str] | None, typer.Option(
    "--runtime", callback=check_runtimes, metavar="NAME",
    help="Runtimes to run (repeat) [default: every runtime that runs an exported format]")]
Formats = Annotated[list[str] | None, typer.Option(
    "--format", callback=check_formats, metavar="NAME",
    help="Formats to export (repeat): torchscript, pt2, onnx, aoti (compiles C++) "
         "[default: torchscript, pt2, onnx]")]
CacheDir = Annotated[Path | None, typer.Option(
    callback=check_cache_folder,
    help="Cache folder [default: $BACKBONE_VERIFY_CACHE_DIR, else the platform's user cache folder, e.g. "
         "~/.cache/backbone-verify]")]
CacheDirToRead = Annotated[Path | None, typer.Option(
    "--cache-dir", callback=check_cache_folder_to_read,
    help="Cache folder [default: $BACKBONE_VERIFY_CACHE_DIR, else the platform's user cache folder, e.g. "
         "~/.cache/backbone-verify]")]
NoCache = Annotated[bool, typer.Option("--no-cache", help="Compute everything; read and write no cache")]


def cache_folder(cache_dir: Path | None, no_cache: bool) -> Path | None:
    """The cache folder a run uses (export, matrix): None with --no-cache or $BACKBONE_VERIFY_NO_CACHE (which
    computes everything, --cache-dir or not), else --cache-dir or the default. --cache-dir with --no-cache names a
    folder nothing reads: refused."""
    from verify.cache import cache_disabled_by_env, default_cache_dir

    if no_cache and cache_dir is not None:
        raise UsageError(f"--cache-dir {cache_dir} names the cache that --no-cache turns off; drop one of them")
    return None if no_cache or cache_disabled_by_env() else (cache_dir or default_cache_dir())
Runs = Annotated[int, typer.Option(callback=_number(*bounds.RUNS_RANGE, integer=True),
                                   help=f"Timed runs ({bounds.RUNS_RANGE[0]}..{bounds.RUNS_RANGE[1]})")]
Warmup = Annotated[int, typer.Option(callback=_number(*bounds.WARMUP_RANGE, integer=True),
                                     help=f"Untimed runs first ({bounds.WARMUP_RANGE[0]}..{bounds.WARMUP_RANGE[1]})")]
MaxLatency = Annotated[float | None, typer.Option(callback=_number(0.0, low_open=True),
                                                  help="Budget for the p90 latency in ms, finite > 0")]
FileRuntime = Annotated[str, typer.Option("--runtime", callback=check_file_runtime,
                                          help="a runtime that runs a file: onnxruntime (model.onnx), torchscript "
                                               "(model.pt), exported (model.pt2), aoti (model_aoti.pt2)")]
Provider = Annotated[Device, typer.Option(help="Where the artifact must run")]
SideRuntime = Annotated[str | None, typer.Option(
    "--runtime", callback=_registry_choice(RUNTIMES), metavar="NAME",
    help="Run each side whose format this runtime runs with it [default: each format's own runtime]")]


# The parts of the library's settings, each the one definition of a group of shared options (verify/cli/groups.py
# makes CLI options of their parameters); each returns keyword arguments of RunSettings.
def input_part(weights: Weights = "synthetic", seed: Seed = 0, shape: Shape = None, input_path: InputPath = None,
               normalize: Normalize = True) -> dict[str, Any]:
    """What feeds the model: its weights, the seeded or given input."""
    return {"weights": weights, "seed": seed, "shape": parse_shape(shape) if shape else None,
            "input_file": input_path, "normalize": normalize}


def samples_part(samples: Samples = None) -> dict[str, Any]:
    """How many seeded inputs a verdict is judged on (commands that judge; explain takes one input)."""
    return {"samples": samples}


def layers_part(layers: Layers = None) -> dict[str, Any]:
    """The layer verdict (export, compare: a torch model and its files)."""
    return {"layers": layers}


def runtime_part(device: DeviceOption = Device.cpu, tf32: Tf32 = None, precision: PrecisionOption = Precision.fp32,
                 **plugins: Any) -> dict[str, Any]:
    """What every runtime shares, and each runtime's own options (`plugins`: their parsed values by key)."""
    check_tf32_flag(Device(device).value, tf32)
    check_precision(Precision(precision).value, Device(device).value, tf32)
    return {"runtime": RuntimeOptions(device=Device(device).value, tf32=tf32, precision=Precision(precision).value,
                                      plugins=runtime_plugins(plugins))}


def tolerance_part(decimal: Decimal = None, rtol: Rtol = None, atol: Atol = None,
                   factor: Factor = None) -> dict[str, Any]:
    """How the verdict is judged."""
    from verify.judge.compare import Tolerance

    return {"tolerance": Tolerance.from_options(decimal, rtol, atol, factor)}


def run_settings(weights: str, seed: int, shape: str | None, input_path: Path | None, normalize: bool,
                 device: Device, tf32: bool | None, decimal: int | None, rtol: float | None, atol: float | None,
                 factor: float | None, precision: Precision = Precision.fp32,
                 plugins: Mapping[str, PluginOptions] | None = None) -> Any:
    """The parsed options as the library's RunSettings (for a command that spells them one by one);
    `plugins`: each runtime's own options, already made."""
    from dataclasses import replace

    from verify.api import RunSettings

    runtime = runtime_part(device, tf32, precision)["runtime"]
    return RunSettings(**input_part(weights, seed, shape, input_path, normalize),
                       runtime=replace(runtime, plugins=plugins or {}),
                       **tolerance_part(decimal, rtol, atol, factor))


# Each plug-in's own options (its `Options`), one CLI option per field ----------------------------------------
def plugin_option_parameters(options: type[PluginOptions], owner: str | None = None) -> list[inspect.Parameter]:
    """One keyword parameter per option field of a plug-in (a field `shared` with a run option has none), for
    typer to make a CLI option of; `owner` ("runtime onnxruntime") is named in the help with the bounds."""
    found = []
    for item, spec in option_fields(options):
        if not spec.shared:
            default = False if spec.flag_value is not None else item.default
            found.append(inspect.Parameter(spec.key, inspect.Parameter.KEYWORD_ONLY, default=default,
                                           annotation=_plugin_annotation(owner, spec, option_kind(item))))
    return found


def runtime_option_parameters() -> list[inspect.Parameter]:
    """The options of every registered runtime; read from the registry each time the app is built, so a runtime
    registered after import shows up."""
    return [p for name in RUNTIMES for p in plugin_option_parameters(runtime_class(name).option_class(),
                                                                     f"runtime {name}")]


def format_option_parameters() -> list[inspect.Parameter]:
    """The options of every registered format (export and matrix), as runtime_option_parameters."""
    return [p for name in FORMATS for p in plugin_option_parameters(get_format(name).Options)]


def _plugin_annotation(owner: str | None, spec: OptionSpec, kind: type) -> Any:
    bounds = f", {spec.bounds_text()}" if spec.bounds_text() else ""
    help_text = f"{spec.help} ({owner}{bounds})" if owner else spec.help
    if spec.flag_value is not None:
        return Annotated[bool, typer.Option(spec.flag, help=help_text)]
    if kind is bool:
        return Annotated[bool, typer.Option(f"{spec.flag}/--no-{spec.flag[2:]}", help=help_text)]
    if spec.choices is not None:
        return Annotated[Literal[spec.choices], typer.Option(spec.flag, help=help_text)]  # type: ignore[valid-type]

    def check(value: Any) -> Any:
        problem = spec.reason(value, kind)
        if problem:
            raise typer.BadParameter(problem)
        return value

    return Annotated[kind, typer.Option(spec.flag, callback=check, help=help_text)]


def plugin_values(options: type[PluginOptions], values: Mapping[str, Any],
                  shared: Mapping[str, Any] | None = None) -> PluginOptions:
    """A plug-in's Options from parsed CLI values by key: a bare flag given takes its flag_value, a shared
    field the shared run option's value; options not given keep their defaults."""
    chosen = {}
    for item, spec in option_fields(options):
        if spec.shared and shared is not None and spec.key in shared:
            chosen[spec.key] = shared[spec.key]
        elif spec.flag_value is not None and spec.key in values:
            chosen[spec.key] = spec.flag_value if values[spec.key] else item.default
        elif spec.key in values:
            chosen[spec.key] = values[spec.key]
    return options.from_keys(chosen)


def runtime_plugins(values: Mapping[str, Any]) -> dict[str, PluginOptions]:
    """Each registered runtime's own options from the parsed values by key; runtimes left at their defaults
    are left out."""
    found = {}
    for name in RUNTIMES:
        options = runtime_class(name).option_class()
        chosen = plugin_values(options, values)
        if chosen != options():
            found[name] = chosen
    return found


@dataclass(frozen=True)
class FormatChoice:
    """The export options as parsed: --format, --static, and every format's own option values by key."""

    formats: tuple[str, ...] = ()
    static: bool = False
    values: tuple[tuple[str, Any], ...] = ()

    def export_options(self, device: str, runtimes: list[str] | None = None) -> Any:
        """The library's ExportOptions (a format's option shared with a run option, as AOTInductor's device,
        takes that option's value). With no --format, the default formats; with --runtime and no --format,
        the formats those runtimes run."""
        from exporter.export import ExportOptions
        from exporter.formats import default_formats
        from verify.runtimes import formats_run_by

        chosen = self.formats or (formats_run_by(runtimes) if runtimes else default_formats())
        shared = {"device": Device(device).value}
        made = [plugin_values(get_format(name).Options, dict(self.values), shared) for name in FORMATS]
        return ExportOptions(formats=tuple(chosen), dynamic=not self.static,
                             format_options=tuple(o for o in made if option_fields(type(o))))


def format_part(fmt: Formats = None, static: Static = False, **values: Any) -> dict[str, Any]:
    """Which formats, their axes and each format's own options (`values`: their parsed values by key)."""
    return {"formats": tuple(fmt or ()), "static": static, "values": tuple(sorted(values.items()))}


def _timeout_help() -> str:
    from verify.pipeline.isolation import USER_CODE_TIMEOUT

    return (f"Seconds your own model's code (--model, or file.py:factory as A or B) may run before its worker "
            f"process is stopped (no verdict, exit 2); finite > 0 [default: {USER_CODE_TIMEOUT:g}]")


MATRIX_TIMEOUT_CHECK = _number(1.0)
"""verify matrix --timeout: finite and at least a second (`inf` reached the workers' wait: an OverflowError)."""
Timeout = Annotated[float | None, typer.Option("--timeout", callback=_number(0.0, low_open=True), help=_timeout_help())]
def check_rebuild_weights(value: Path | None) -> Path | None:
    """A checkpoint for `--rebuild`: a weights file (a named source is what the manifest already records)."""
    if value is not None:
        check_weights(str(value) if "/" in str(value) else f"./{value}")
    return value


Rebuild = Annotated[bool, typer.Option(
    "--rebuild",
    help="Rebuild the model each folder names (its weights' sha256 checked) and judge against its own float32 and "
         "float64 runs: the goldens must be its own, so an unsigned folder whose goldens were rewritten fails")]
Checkpoint = Annotated[Path | None, typer.Option(
    "--checkpoint", callback=check_rebuild_weights,
    help="With --rebuild: the weights file the folders were exported with (.pt/.pth/.safetensors/.ckpt), when their "
         "weights were a file")]
TrustUnsignedCode = Annotated[bool, typer.Option(
    "--trust-unsigned-code",
    help="Load TorchScript, .pt2 and AOTInductor files even when no signature of the folder was verified "
         "(--verify-key): loading them can run code, so pass this only for a folder you trust. Without it, "
         "those files' checks fail (ONNX files are data and are checked either way)")]
