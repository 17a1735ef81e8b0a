"""pytest plugin: verify your own model's exports from your own test suite, with `verify export`'s verdicts.

    def test_my_model_exports(assert_exports_agree):
        assert_exports_agree(MyNet(), torch.randn(1, 3, 224, 224))

The fixture `assert_exports_agree` writes the artifacts under the test's `tmp_path`; the function of the
same name (`from verify.pytest_plugin import assert_exports_agree`) takes `out=` instead. A disagreement
fails the test with one headline (which pair, which output, how far, where the artifacts are), then the
verdict table and the notes as plain text; an export that cannot be made or judged (the model does not
script, an `out` folder holding another export, a bad option) fails it with one line saying what failed
and what to do, not a traceback into this package. Installed, the plugin loads through its
`pytest11` entry point (`backbone_verify`); from a checkout, `pytest -p verify.pytest_plugin`.
Nothing heavy is imported until a test calls it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from verify.judge.compare import Tolerance
    from verify.report import Report

PLUGIN_HOW = "pass another out= or name= to keep both, or delete that folder"
"""The plugin's words for the CLI's `--out elsewhere ... --overwrite` advice (verify.folder.identity.HOW)."""
SHAPE_HOW = "pass the input shape it takes with --shape, or return (module, example_input)"
PLUGIN_SHAPE_HOW = "pass an example of the shape it takes"
"""exporter/user_model.py's advice for a model that fails on the input, in the plugin's words (it has no --shape)."""
CLI_WORDS = (
    (r"--rtol/--atol or --decimal", "tolerance=Tolerance.from_options(rtol=..., atol=...)"),
    (r"another --input\b", "another example"),
    (r"(?:, or )?drop --input for seeded inputs", "; pass torch.randn(...) as the example"),
    (r", or drop --input\b", ", e.g. torch.randn(...)"),
    (r"whether --input reaches", "whether the example reaches"),
    (r"--device (\w+)", r'device="\1"'),
    (r"add --format (\w+)", r"add '\1' to formats"),
    (r"leave out --format (\w+)", r"leave '\1' out of formats"),
    (r"add that --format", "add that format to formats"),
    (r"add --runtime (\w+)", r"add '\1' to runtimes"),
    (r"drop --runtime (\w+)", r"drop '\1' from runtimes"),
    (r"(a|no) --(runtime|format)\b", r"\1 \2"),
    (r"--(runtime|format) (\w+)", r"\1 \2"),
    (r"--opset\b", "opset"),
    (r"--onnx-exporter\b", "onnx_exporter"),
    (r"pass --trace\b", "pass trace=True"),
    (r"--trace\b", "trace"),
    (r"--no-layers\b", "layers=False"),
    (r"--layers\b", "layers=True"),
    (r"--static\b", "dynamic=False"),
)
"""The CLI's options in messages from the shared code, as the plugin's arguments (regex, replacement): a test that
fails says what to pass to assert_exports_agree, not a flag it does not take."""
TABLE_WIDTH = 120
"""Columns of the table in the assertion message (wide enough that pair labels do not wrap)."""


def assert_exports_agree(module: Any, example: Any, *, out: Path | str, formats: Sequence[str] | None = None,
                         runtimes: Sequence[str] | None = None, tolerance: Tolerance | None = None,
                         trace: bool = False, onnx_exporter: str = "dynamo", opset: int = 18, dynamic: bool = True,
                         device: str = "cpu", name: str | None = None, layers: bool = False) -> Report:
    """Export `module` (default formats: those `verify export` writes), run every runtime on `example` (one
    float NCHW tensor, used as the input), judge every pair and each run against the float64 oracle, and
    raise AssertionError with the table and notes if any pair disagrees. Returns the Report.

    `layers`: also the layer verdict (`verify export --layers`): every layer of each file re-run alone on the module's
    float64 values and judged on its own floor.
    `tolerance`: `verify.judge.compare.Tolerance()` (auto, the default) or e.g. `Tolerance.from_options(rtol=1e-5,
    atol=1e-6)`; a model that cannot run in float64 needs an explicit one. `trace`: TorchScript by tracing.
    Artifacts go to `out/<name>/` (the manifest and goldens with them), the report to `out/<name>-report.json`.
    The module is copied first: the caller's object is left as it was."""
    __tracebackhide__ = True  # a failure points at the user's test line, not here
    from exporter.errors import VerifyError
    from exporter.user_model import ModuleSpec
    from verify.api import verify_export
    from verify.render import clear_stale_reports
    from verify.report import write_json_report

    spec, failure = None, None
    _claim_report(out, module, name)  # before any check can fail (surface 30), as the `verify` script claims its own
    try:  # a bad option is one line too, never a traceback into this package
        _check_arguments(out=out, formats=formats, runtimes=runtimes, trace=trace, dynamic=dynamic, name=name,
                         layers=layers)
        _check_module(module)
        out, spec = Path(out), ModuleSpec.of(_copy(module), example, name)
        settings, options = _prepare(spec, example, out, formats, runtimes, tolerance, trace, onnx_exporter, opset,
                                     dynamic, device, layers)
        # an earlier run's report must not stand in for this one, should it fail (review 28: a passing one stayed)
        clear_stale_reports(out / f"{spec.slug}-report.json")
        with _tracer_log_quiet():
            report = verify_export(spec, settings, out=out, export=options, runtimes=runtimes)
    except VerifyError as exc:
        failure = failure_line(spec if spec is not None else ModuleSpec.of(module, example), exc)
    if failure is not None:  # outside the except: no chained traceback into this package
        pytest.fail(failure, pytrace=False)
    if not report.passed and not report.problems and not layers:  # a file differs: name its culprits
        with _tracer_log_quiet():
            _name_culprits(report, spec, settings, example)
    report_path = out / f"{spec.slug}-report.json"
    write_json_report(report.to_dict(), report_path)
    if not report.passed:
        raise AssertionError(f"{headline(spec, report, report_path)}\n" + render_text(report))
    return report


def _claim_report(out: Any, module: Any, name: Any) -> None:
    """Remove an earlier run's report at the path this call writes its own to, before the call's argument checks: a
    call that fails one of them writes no report, and an earlier passing one left there stood in for it (surface 30).
    Only a file that reads as a report of this tool (verify/render/claim.py, the CLI's rule); nothing when `out` or
    `name` are not what the checks take (the path is then unknown)."""
    import contextlib
    import os

    from exporter.user_model import ModuleSpec
    from verify.render.claim import is_earlier_report

    if not isinstance(out, str | os.PathLike) or not str(out) \
            or name is not None and not (isinstance(name, str) and name.strip()):
        return
    path = Path(out) / f"{ModuleSpec.of(module, None, name).slug}-report.json"
    with contextlib.suppress(OSError, ValueError):
        if is_earlier_report(path):
            path.unlink()


def _prepare(spec: Any, example: Any, out: Path, formats: Sequence[str] | None, runtimes: Sequence[str] | None,
             tolerance: Any, trace: bool, onnx_exporter: str, opset: int, dynamic: bool,
             device: str, layers: bool = False) -> tuple[Any, Any]:
    """The run settings and export options of one call, every argument checked (UsageError) before any work; the
    example is saved under `out` as the run's input."""
    import numpy as np
    import torch

    from exporter.errors import UsageError
    from exporter.export import ExportOptions
    from exporter.formats import default_formats
    from exporter.formats.aoti import AotiOptions
    from exporter.formats.onnx import OnnxOptions
    from exporter.formats.torchscript import TorchScriptOptions
    from exporter.fsio import check_writable_folder
    from verify.api import RunSettings
    from verify.inputs import BLANK_HOW, require_finite
    from verify.judge.compare import Tolerance
    from verify.runtimes import RuntimeOptions, formats_run_by

    if not (isinstance(example, torch.Tensor) and example.is_floating_point() and example.dim() == 4):
        dtype = f" {str(example.dtype).removeprefix('torch.')}" if isinstance(example, torch.Tensor) else ""
        raise UsageError(f"example must be one float NCHW tensor, e.g. torch.randn(1, 3, 224, 224); got "
                         f"{type(example).__name__} {tuple(getattr(example, 'shape', ()))}{dtype}")
    if example.layout != torch.strided or example.device.type == "meta":  # no values to save as the input
        raise UsageError(f"example must be a dense tensor holding its values; got a {example.layout} tensor on "
                         f"{example.device.type}: pass example.to_dense(), or a tensor made on the cpu")
    values = example.detach().to("cpu", torch.float32).numpy()
    require_finite("example", values)  # before its file is written
    if not np.any(values):  # review 33: a 1 %-off first conv passed on torch.zeros(...)
        shape = ", ".join(map(str, values.shape))
        raise UsageError(f"example holds only zeros: {BLANK_HOW}; pass torch.randn({shape}) or a real image")
    if tolerance is not None and not isinstance(tolerance, Tolerance):
        raise UsageError(f"tolerance must be a verify.judge.compare.Tolerance, e.g. Tolerance.from_options(rtol=1e-5, "
                         f"atol=1e-6); got {type(tolerance).__name__} {tolerance!r}")
    input_file = out / f"{spec.slug}-input.npy"
    settings = RunSettings(input_file=input_file, tolerance=tolerance or Tolerance(),
                           runtime=RuntimeOptions(device=device), layers=layers)
    # no formats: what `verify export` exports, or with runtimes what they run (as `verify export --runtime` does)
    chosen = tuple(formats) if formats else tuple(formats_run_by(runtimes)) if runtimes else default_formats()
    options = ExportOptions(formats=chosen, dynamic=dynamic, format_options=(
        TorchScriptOptions("trace" if trace else "script"), OnnxOptions(onnx_exporter, opset), AotiOptions(device)))
    check_writable_folder(out, "out")
    out.mkdir(parents=True, exist_ok=True)  # written only once every option is known good
    np.save(input_file, example.detach().to("cpu", torch.float32).numpy())
    return settings, options


TRACE_LOGGER = "torch.__trace"
"""torch's structured-trace logger: always at DEBUG and not propagating, so pytest (9.1 on) attaches its capture
handlers to it directly, and every torch.export the check runs put dozens of empty DEBUG lines in the test's
captured log."""


@contextlib.contextmanager
def _tracer_log_quiet() -> Iterator[None]:
    """While the check's own exports run: the handlers torch's trace logger shares with the root logger (pytest's
    capture handlers) are taken off it, and put back after. torch's own trace handler (TORCH_TRACE) stays, and no
    other logger is touched: the user's own logging is captured as before."""
    import logging

    logger = logging.getLogger(TRACE_LOGGER)
    shared = [handler for handler in logger.handlers if handler in logging.getLogger().handlers]
    for handler in shared:
        logger.removeHandler(handler)
    try:
        yield
    finally:
        for handler in shared:
            logger.addHandler(handler)


def _copy(module: Any) -> Any:
    """A deep copy of the caller's module, which is then put in eval mode and float64 (the caller's object is left as it
    was); one that cannot be copied is refused, where it was used as given: changed, then a traceback."""
    import copy

    from exporter.errors import UsageError
    from exporter.user_model import COPY_WHY, require_faithful_copy

    try:
        copied = copy.deepcopy(module)
    except Exception as exc:
        from exporter.messages import library_reason

        raise UsageError(f"the module cannot be copied ({library_reason(exc)}), and the check changes what it runs "
                         "(eval mode, float64); make it deep-copyable (keep locks, files or generators outside it)"
                         ) from None
    require_faithful_copy(module, copied, "the module", COPY_WHY)
    return copied


def _check_module(module: Any) -> None:
    """UsageError unless `module` is a torch.nn.Module: a function (or a factory) was taken for a factory's result
    and failed with "function() returned a tuple of 2 (function, Tensor)"."""
    import torch

    from exporter.errors import UsageError

    if not isinstance(module, torch.nn.Module):
        raise UsageError(f"module must be a torch.nn.Module, e.g. MyNet().eval(); got {type(module).__name__} "
                         f"{repr(module)[:80]}")


def _check_arguments(out: Any, formats: Any, runtimes: Any, trace: Any, dynamic: Any, name: Any,
                     layers: Any = False) -> None:
    """The arguments whose type no later check reads (UsageError): `trace="no"` is truthy, so it traced, and
    `formats=[]` exported every default format; each is refused instead of taken for something else."""
    import os

    from exporter.errors import UsageError

    if not isinstance(out, (str, os.PathLike)) or not str(out):
        raise UsageError(f"out must be a folder path (str or pathlib.Path); got {type(out).__name__} {out!r}")
    for option, value in (("trace", trace), ("dynamic", dynamic), ("layers", layers)):
        if not isinstance(value, bool):
            raise UsageError(f"{option} must be True or False; got {type(value).__name__} {value!r}")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise UsageError(f"name must be a non-empty string (the artifact folder's name) or None; got "
                         f"{type(name).__name__} {name!r}")
    for option, names in (("formats", formats), ("runtimes", runtimes)):
        if names is None:
            continue
        if isinstance(names, str):
            raise UsageError(f"{option} takes a list of names, e.g. {option}=[{names!r}]; got the string {names!r}")
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise UsageError(f"{option} takes a list of names (strings); got {type(names).__name__} {names!r}")
        if not names:
            raise UsageError(f"{option}=[] names none; leave {option} out for the default ones, or name some")


def _name_culprits(report: Report, spec: Any, settings: Any, example: Any) -> None:
    """As `verify export` does on a failure (verify/explain/isolate.py name_culprits), against the caller's module,
    built again from the spec (the module no name resolves)."""
    import torch

    from exporter.formats.eager import eager_artifact
    from verify.explain.isolate import failing_files, isolate_against, name_culprits

    x = example.detach().to("cpu", torch.float32).numpy()
    reference = eager_artifact(spec.build(settings.seed, tuple(x.shape), settings.weights), tuple(x.shape))
    name_culprits(report, [(file, str(spec)) for file in failing_files(report)],
                  isolate=isolate_against(reference, x, settings))


def failure_line(spec: Any, exc: BaseException) -> str:
    """What failed before any verdict, in one line, with what to do."""
    import re

    from exporter.errors import ExportError, SetupError, UsageError
    from verify.folder.identity import HOW

    message = " ".join(str(exc).split()) or type(exc).__name__
    for cli, plugin in {HOW: PLUGIN_HOW, SHAPE_HOW: PLUGIN_SHAPE_HOW}.items():
        message = message.replace(cli, plugin)
    for cli, plugin in CLI_WORDS:
        message = re.sub(cli, plugin, message)
    if isinstance(exc, ExportError):
        return f"exporting {spec} failed, so nothing was compared: {message} (try formats=[...] without that format)"
    if isinstance(exc, UsageError):
        return f"assert_exports_agree({spec}) was called wrongly: {message}"
    if isinstance(exc, SetupError):
        return f"this machine cannot verify {spec}: {message}"
    return f"verifying {spec} failed before a verdict: {message}"


def headline(spec: Any, report: Report, report_path: Path) -> str:
    """`exports of X disagree: a vs b on output (12.3x the floor, ...); N of M pairs differ; artifacts in ...`."""
    folder = report.artifacts.get("folder")  # none when nothing was judged: no folder is written
    where = (f"; artifacts in {folder}," if folder else ";") + f" report {report_path}"
    failed = [pair for pair in report.pairs if not pair.passed]
    unequal = [check for check in report.layers if not check.passed]
    if report.pairs and not failed and not report.problems and unequal:  # the outputs agree; a file's layers do not
        from verify.judge.layers import verdict_line

        return (f"exports of {spec} agree on their outputs, and {len(unequal)} of {len(report.layers)} files fail the "
                f"layer verdict: {verdict_line(unequal[0])}{where}")
    if not failed:
        why = "; ".join(report.problems) or "no pair was judged"
        return f"exports of {spec} could not be judged: {why}{where}"
    pair = failed[0]
    worst = pair.worst
    if worst.ratio is not None:
        size = f"{worst.ratio:.1f}x the noise floor" + (f" in channel {worst.channel}" if worst.channel is not None
                                                        else "")
    else:
        size = worst.reason or f"max abs {worst.max_abs or 0.0:.3g}"
    return (f"exports of {spec} disagree: {pair.a} vs {pair.b} on output {worst.name!r} ({size}); "
            f"{len(failed)} of {len(report.pairs)} pairs differ{where}")


def render_text(report: Report, width: int = TABLE_WIDTH) -> str:
    """The verdict table (one row per pair and output) and the notes, as plain text."""
    import io

    from rich.console import Console

    from verify.report import render_pairs

    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False, highlight=False,
                      emoji=False)
    render_pairs(report, console, verbose=True, layout="table", annotate=False)  # the table at TABLE_WIDTH
    return buffer.getvalue().rstrip()


@pytest.fixture(name="assert_exports_agree")
def _assert_exports_agree_fixture(tmp_path: Path, request: pytest.FixtureRequest):
    """`assert_exports_agree(module, example, **options)`, with artifacts under this test's tmp_path and the
    test's name as the model's."""

    def check(module: Any, example: Any, **options: Any) -> Report:
        __tracebackhide__ = True
        options.setdefault("out", tmp_path)
        options.setdefault("name", request.node.name)
        return assert_exports_agree(module, example, **options)

    return check
