"""`verify`: thin over the library. Parses, calls, renders; maps errors to exit codes
(0 all agree, 1 a disagreement, 2 usage or environment error). Every option is checked while
typer parses (verify/options.py), so nothing is built before the arguments are known good."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from exporter.backbones import list_backbones
from exporter.errors import UsageError, VerifyError, interrupt_in
from exporter.messages import one_line, strip_unsafe_advice
from verify import options as opt
from verify.matrix_cli import cache_app, matrix_app

# click's base exception, wherever this typer keeps it (its own vendored copy, or click itself)
ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

out_console = Console()
err_console = Console(stderr=True)


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
        except ClickException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare `verify`: the help, as click shows it
                exc.show()
                code = exc.exit_code
            else:
                ctx = getattr(exc, "ctx", None)
                hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
                print_error(exc.format_message() + hint)
                code = 2
        except typer.Abort:
            print_error("aborted")
            code = 1
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


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated


class RichProgress:
    """A spinner while a step runs, then one line per finished step (on stderr)."""

    def __init__(self, console: Console) -> None:
        self.console = console

    @contextlib.contextmanager
    def step(self, description: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            with self.console.status(escape(description)):
                yield
        except BaseException:
            self.console.print(f"[red]✗[/] {escape(description)}", soft_wrap=True)
            raise
        self.console.print(f"[green]✓[/] {escape(description)} [dim]({time.perf_counter() - start:.1f}s)[/]",
                           soft_wrap=True)  # one line per step, whatever the terminal's width


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
            if isinstance(interrupt, Terminated):
                print_error("terminated (SIGTERM)")
                raise typer.Exit(128 + signal.SIGTERM) from None
            if interrupt is not None:
                print_error("interrupted")
                raise typer.Exit(130) from None
            if not isinstance(exc, Exception) or os.environ.get("VERIFY_DEBUG"):
                raise
            if isinstance(exc, VerifyError):
                print_error(str(exc))
                raise typer.Exit(exc.exit_code) from None
            # a bug or an unforeseen failure: still one line, and not "1"
            first = one_line((str(exc).strip().splitlines() or [""])[-1], 200)
            print_error(f"unexpected {type(exc).__name__}: {first} (rerun with VERIFY_DEBUG=1 for the traceback, "
                        "and please report it)")
            raise typer.Exit(2) from None

    return wrapper


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
                           progress=RichProgress(err_console), overwrite=overwrite, sign_key=sign_key,
                           cache=open_cache(cache_dir, no_cache))
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
) -> None:
    """Run any two models or artifacts on the same input and judge them on the outputs they share."""
    from verify.api import compare as run_compare

    settings = opt.run_settings(weights, seed, shape, input_path, normalize, device, ort_opt_level, tf32, decimal, rtol,
                         atol, factor, precision)
    _finish(run_compare(a, b, settings, progress=RichProgress(err_console)), json_path, verbose)


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
                         progress=RichProgress(err_console))
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
) -> None:
    """Check export folders: integrity, then each artifact against its goldens (CI validation)."""
    from verify.runtimes import RuntimeOptions
    from verify.validate import validate

    opt.distinct_outputs(json=json_path, junit=junit, markdown=markdown)
    _finish_checks(validate(paths, RuntimeOptions(ort_opt_level=ort_opt_level.value), verify_key=verify_key),
                   json_path, junit, markdown)


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
) -> None:
    """Deployment check: loads on the provider asked for, matches its goldens, latency; GO or NO-GO."""
    from verify.preflight import PreflightOptions
    from verify.preflight import preflight as run_preflight

    opt.distinct_outputs(json=json_path, junit=junit, markdown=markdown)
    options = PreflightOptions(provider=provider.value, runtime=runtime, runs=runs, warmup=warmup,
                               max_latency_ms=max_latency_ms, tf32=tf32)
    _finish_checks(run_preflight(path, options, verify_key=verify_key), json_path, junit, markdown)


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
    app()


if __name__ == "__main__":
    main()
