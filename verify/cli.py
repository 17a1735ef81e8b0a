"""`verify`: thin over the library. Parses, calls, renders; maps errors to exit codes
(0 all agree, 1 a disagreement, 2 usage or environment error). Every option is checked while
typer parses (verify/options.py), so nothing is built before the arguments are known good."""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from exporter.backbones import list_backbones
from exporter.errors import UsageError, VerifyError, interrupt_in
from exporter.messages import one_line, strip_unsafe_advice
from verify import options as opt
from verify.matrix_cli import cache_app, matrix_app
from verify.render.console import make_console, progress_for

# click's base exception, wherever this typer keeps it (its own vendored copy, or click itself)
ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

out_console = make_console()
err_console = make_console(stderr=True)


def print_error(message: str) -> None:
    """The one line every failure prints: flattened, bounded, without unsafe advice."""
    err_console.print(f"[bold red]error:[/] {escape(one_line(strip_unsafe_advice(message)))}", highlight=False,
                      soft_wrap=True)


class OneLineErrors(TyperGroup):
    """typer/click parse errors (unknown option, missing argument, bad value) as one `error:` line and
    exit 2, instead of click's usage box; also what `main()` and CliRunner both go through."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            result = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                                  standalone_mode=False, **extra)
            code = result if isinstance(result, int) else 0
            if code == 128 + signal.SIGINT and not _received["reported"]:  # typer's bare Exit(130), outside commands
                code = interrupt_exit(Terminated() if _received["SIGTERM"] else KeyboardInterrupt())
        except ClickException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare `verify`: the help, as click shows it
                exc.show()
                code = exc.exit_code
            else:
                ctx = getattr(exc, "ctx", None)
                hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
                print_error(exc.format_message() + hint)
                code = 2
        except BaseException as exc:  # noqa: B036 - an interrupt anywhere (parsing included) gets its own code
            interrupt = interrupt_in(exc)
            if interrupt is None and not isinstance(exc, typer.Abort):
                raise
            code = interrupt_exit(interrupt) if interrupt is not None else 1
            if interrupt is None:
                print_error("aborted")
        if not standalone_mode:
            return code
        sys.exit(code)


app = typer.Typer(
    cls=OneLineErrors,
    help="Export torchvision backbones and verify that every runtime computes the same thing.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: `[default: ...]` in help texts survives, and it stays fast
)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Python runs next, so staging folders are removed as on Ctrl-C."""


_received = {"SIGTERM": False, "reported": False}
"""Set by the handler: typer reports an interrupt during parsing as a bare exit code 130, whichever it was."""


def _on_sigterm(signum: int, frame: Any) -> None:
    _received["SIGTERM"] = True
    raise Terminated


def interrupt_exit(interrupt: KeyboardInterrupt) -> int:
    """One line and the conventional code: 143 after SIGTERM, 130 after Ctrl-C, wherever it landed."""
    _received["reported"] = True
    if isinstance(interrupt, Terminated):
        print_error("terminated (SIGTERM)")
        return 128 + signal.SIGTERM
    print_error("interrupted")
    return 128 + signal.SIGINT


def debug_enabled() -> bool:
    """VERIFY_DEBUG=1 (or true/yes/on) shows tracebacks; 0, false, no, off or empty do not."""
    return os.environ.get("VERIFY_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Our errors become one line and an exit code; no traceback unless VERIFY_DEBUG is set."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except BaseException as exc:
            interrupt = interrupt_in(exc)
            if interrupt is not None:
                raise typer.Exit(interrupt_exit(interrupt)) from None
            if not isinstance(exc, Exception):
                raise
            if debug_enabled():  # the traceback as well; never another exit code
                import traceback

                traceback.print_exception(exc, file=sys.stderr)
            if isinstance(exc, VerifyError):
                print_error(str(exc))
                raise typer.Exit(exc.exit_code) from None
            # a bug or an unforeseen failure: still one line, and not "1"
            first = one_line((str(exc).strip().splitlines() or [""])[-1], 200)
            print_error(f"unexpected {type(exc).__name__}: {first} (rerun with VERIFY_DEBUG=1 for the traceback, "
                        "and please report it)")
            raise typer.Exit(2) from None

    return wrapper


def user_timeout(timeout: float | None) -> float:
    from verify.isolation import USER_CODE_TIMEOUT

    return USER_CODE_TIMEOUT if timeout is None else timeout


def _finish(report: Any, json_path: Path | None, verbose: bool) -> None:
    from verify.report import render_pairs, write_json_report

    render_pairs(report, out_console, verbose)
    if json_path:
        write_json_report(report.to_dict(), json_path)
        err_console.print(f"[dim]wrote {escape(str(json_path))}[/]")
    raise typer.Exit(report.exit_code)


@app.command()
@handle_errors
def export(
    backbone: opt.Backbone = "resnet50",
    norm: opt.Norm = "frozen",
    view: opt.View = "body",
    model: Annotated[str | None, typer.Option(
        "--model", help="Your own model instead of a backbone: path/to/file.py:factory or package.module:factory "
                        "(the factory returns an nn.Module or (module, example_input)). This IMPORTS AND RUNS "
                        "that code: name only code you trust")] = None,
    weights: opt.Weights = "synthetic",
    seed: opt.Seed = 0,
    shape: opt.Shape = None,
    input_path: opt.InputPath = None,
    normalize: opt.Normalize = True,
    out: opt.OutFolder = Path("artifacts"),
    overwrite: opt.Overwrite = False,
    onnx_exporter: opt.OnnxExporterOption = opt.OnnxExporter.dynamo,
    opset: opt.Opset = 18,
    trace: opt.Trace = False,
    static: opt.Static = False,
    fmt: opt.Formats = None,
    runtime: opt.Runtimes = None,
    device: opt.DeviceOption = opt.Device.cpu,
    ort_opt_level: opt.OrtOpt = opt.OrtOptLevel.all,
    tf32: opt.Tf32 = None,
    precision: opt.PrecisionOption = opt.Precision.fp32,
    decimal: opt.Decimal = None,
    rtol: opt.Rtol = None,
    atol: opt.Atol = None,
    factor: opt.Factor = None,
    json_path: opt.JsonOut = None,
    verbose: opt.Verbose = False,
    sign_key: opt.SignKey = None,
    cache_dir: opt.CacheDir = None,
    no_cache: opt.NoCache = False,
    timeout: opt.Timeout = None,
) -> None:
    """Build a backbone, export it (TorchScript, ExportedProgram, ONNX...), run every runtime, judge every pair."""
    from exporter.spec import ModelSpec
    from exporter.user_model import UserModelSpec
    from verify.api import verify_export
    from verify.cache import open_cache

    spec = UserModelSpec.parse(model) if model else ModelSpec(backbone, norm, view)
    folder = out / spec.slug
    if json_path and json_path.resolve().is_relative_to(folder.resolve()):
        raise UsageError(f"--json {json_path} is inside the export folder {folder}, which the export replaces; "
                         "write it elsewhere")
    settings = opt.run_settings(weights, seed, shape, input_path, normalize, device, ort_opt_level, tf32, decimal, rtol,
                         atol, factor, precision)
    options = opt.export_options(fmt, static, trace, onnx_exporter, opset, device, runtime)
    report = verify_export(spec, settings, out=out, export=options, runtimes=runtime,
                           progress=progress_for(err_console), overwrite=overwrite, sign_key=sign_key,
                           cache=open_cache(cache_dir, no_cache), timeout=user_timeout(timeout))
    if "folder" in report.artifacts:
        err_console.print(f"[dim]artifacts in {escape(report.artifacts['folder'])}[/]")
    _finish(report, json_path, verbose)


@app.command()
@handle_errors
def compare(
    a: Annotated[str, typer.Argument(callback=opt.check_source, metavar="A",
                                     help="Model spec backbone:norm:view, a model file (.onnx, .pt2, "
                                          "TorchScript .pt), or your own model file.py:factory / pkg.mod:factory "
                                          "(imports and runs it)")],
    b: Annotated[str, typer.Argument(callback=opt.check_source, metavar="B",
                                     help="The reference side, same forms as A")],
    weights: opt.Weights = "synthetic",
    seed: opt.Seed = 0,
    shape: opt.Shape = None,
    input_path: opt.InputPath = None,
    normalize: opt.Normalize = True,
    device: opt.DeviceOption = opt.Device.cpu,
    ort_opt_level: opt.OrtOpt = opt.OrtOptLevel.all,
    tf32: opt.Tf32 = None,
    precision: opt.PrecisionOption = opt.Precision.fp32,
    decimal: opt.Decimal = None,
    rtol: opt.Rtol = None,
    atol: opt.Atol = None,
    factor: opt.Factor = None,
    json_path: opt.JsonOut = None,
    verbose: opt.Verbose = False,
    timeout: opt.Timeout = None,
) -> None:
    """Run any two models or artifacts on the same input and judge them on the outputs they share."""
    from verify.api import compare as run_compare

    settings = opt.run_settings(weights, seed, shape, input_path, normalize, device, ort_opt_level, tf32, decimal, rtol,
                         atol, factor, precision)
    _finish(run_compare(a, b, settings, progress=progress_for(err_console), timeout=user_timeout(timeout)),
            json_path, verbose)


@app.command()
@handle_errors
def explain(
    a: Annotated[str | None, typer.Argument(
        callback=opt.check_source, metavar="[A]",
        help="Model spec, artifact or your own file.py:factory (imports and runs it) [default: "
             "resnet50:batch:trunk, the classifier's ResNet-50]")] = None,
    b: Annotated[str | None, typer.Argument(
        callback=opt.check_source, metavar="[B]",
        help="Model spec or artifact [default: resnet50:frozen:body, Faster R-CNN's backbone]")] = None,
    weights: opt.Weights = "synthetic",
    seed: opt.Seed = 0,
    shape: opt.Shape = None,
    input_path: opt.InputPath = None,
    normalize: opt.Normalize = True,
    factor: opt.Factor = None,
    json_path: opt.JsonOut = None,
    timeout: opt.Timeout = None,
) -> None:
    """Say whether two models compute the same function, and where and why they part if not."""
    from verify.explain import SEED_QUESTION, render_explanation
    from verify.explain import explain as run_explain
    from verify.report import write_json_report

    if (a is None) != (b is None):
        raise UsageError("Give both A and B, or neither to replay the seed question")
    settings = opt.run_settings(weights, seed, shape, input_path, normalize, opt.Device.cpu, opt.OrtOptLevel.all, None,
                         None, None, None, factor)
    result = run_explain(a or SEED_QUESTION[0], b or SEED_QUESTION[1], settings,
                         progress=progress_for(err_console), timeout=user_timeout(timeout))
    render_explanation(result, out_console)
    if json_path:
        write_json_report(result.to_dict(), json_path)
        err_console.print(f"[dim]wrote {escape(str(json_path))}[/]")
    raise typer.Exit(result.exit_code)


def _finish_checks(report: Any, json_path: Path | None, junit: Path | None, markdown: Path | None) -> None:
    from verify.checks import render_checks, write_outputs

    render_checks(report, out_console)
    for path in write_outputs(report, json_path, junit, markdown):
        err_console.print(f"[dim]wrote {escape(str(path))}[/]")
    raise typer.Exit(report.exit_code)


@app.command()
@handle_errors
def artifact(
    paths: Annotated[list[Path], typer.Argument(callback=opt.check_existing_paths,
                                                help="Export folders, or their manifest.json")],
    ort_opt_level: opt.OrtOpt = opt.OrtOptLevel.all,
    json_path: opt.JsonOut = None,
    junit: opt.JunitOut = None,
    markdown: opt.MarkdownOut = None,
    verify_key: opt.VerifyKey = None,
    trust_unsigned_code: opt.TrustUnsignedCode = False,
) -> None:
    """Check export folders: integrity, then each artifact against its goldens (CI validation)."""
    from verify.runtimes import RuntimeOptions
    from verify.validate import validate

    opt.distinct_outputs(json=json_path, junit=junit, markdown=markdown)
    _finish_checks(validate(paths, RuntimeOptions(ort_opt_level=ort_opt_level.value), verify_key=verify_key,
                            trust_unsigned_code=trust_unsigned_code), json_path, junit, markdown)


@app.command()
@handle_errors
def preflight(
    path: Annotated[Path, typer.Argument(callback=opt.check_existing_paths,
                                         help="The export folder, or its manifest.json")],
    provider: opt.Provider = opt.Device.cpu,
    runtime: opt.FileRuntime = "onnxruntime",
    runs: opt.Runs = 50,
    warmup: opt.Warmup = 5,
    max_latency_ms: opt.MaxLatency = None,
    tf32: opt.Tf32 = None,
    json_path: opt.JsonOut = None,
    junit: opt.JunitOut = None,
    markdown: opt.MarkdownOut = None,
    verify_key: opt.VerifyKey = None,
    trust_unsigned_code: opt.TrustUnsignedCode = False,
) -> None:
    """Deployment check: loads on the provider asked for, matches its goldens, latency; GO or NO-GO."""
    from verify.preflight import PreflightOptions
    from verify.preflight import preflight as run_preflight

    opt.distinct_outputs(json=json_path, junit=junit, markdown=markdown)
    options = PreflightOptions(provider=provider.value, runtime=runtime, runs=runs, warmup=warmup,
                               max_latency_ms=max_latency_ms, tf32=tf32)
    _finish_checks(run_preflight(path, options, verify_key=verify_key, trust_unsigned_code=trust_unsigned_code),
                   json_path, junit, markdown)


@app.command(name="list")
@handle_errors
def list_command() -> None:
    """List the registered backbones, norms, views, runtimes and formats."""
    from exporter.backbones import VIEWS
    from exporter.norms import NORMS
    from verify.runtimes import list_runtimes

    out_console.print(f"backbones: {', '.join(list_backbones())}")
    out_console.print("norms:")
    for name in NORMS:
        out_console.print(f"  {name:12s} {escape(NORMS.get(name).description)}")
    out_console.print(f"views: {', '.join(VIEWS.names())}")
    out_console.print(f"runtimes: {', '.join(list_runtimes())}")
    from exporter.formats import FORMATS, get_format
    from verify.runtimes import runtimes_for

    out_console.print("formats (file, runtimes, what loading it can execute):")
    for name in FORMATS:
        entry = get_format(name)
        out_console.print(f"  {name:12s} {entry.filename or '(in memory)'}; {', '.join(runtimes_for(name))}"
                          + (f"; {entry.executes}" if entry.executes else ""), highlight=False, soft_wrap=True)


app.add_typer(matrix_app)
app.add_typer(cache_app)


def main() -> None:
    """The `verify` entry point: SIGTERM ends a run as cleanly as Ctrl-C (staging removed, one line)."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        app()
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: B036 - an interrupt while typer builds the command, before parsing
        interrupt = interrupt_in(exc)
        if interrupt is None:
            raise
        sys.exit(interrupt_exit(interrupt))


if __name__ == "__main__":
    main()
