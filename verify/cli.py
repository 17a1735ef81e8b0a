"""`verify`: thin over the library. Parses, calls, renders; maps errors to exit codes
(0 all agree, 1 a disagreement, 2 usage or environment error)."""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from exporter.backbones import list_backbones
from exporter.errors import UsageError, VerifyError
from exporter.norms import list_norms
from verify.matrix_cli import cache_app, matrix_app

app = typer.Typer(
    help="Export torchvision backbones and verify that every runtime computes the same thing.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
out_console = Console()
err_console = Console(stderr=True)


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
            self.console.print(f"[red]✗[/] {escape(description)}")
            raise
        self.console.print(f"[green]✓[/] {escape(description)} [dim]({time.perf_counter() - start:.1f}s)[/]")


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Our errors become one line and an exit code; no traceback unless VERIFY_DEBUG is set."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except VerifyError as exc:
            if os.environ.get("VERIFY_DEBUG"):
                raise
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:  # a bug or an unforeseen failure: still one line, and not "1"
            if os.environ.get("VERIFY_DEBUG"):
                raise
            first = (str(exc).strip().splitlines() or [""])[-1]
            err_console.print(f"[bold red]error:[/] unexpected {type(exc).__name__}: {escape(first)} "
                              "(rerun with VERIFY_DEBUG=1 for the traceback, and please report it)",
                              highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


# Shared options --------------------------------------------------------------------------
Weights = Annotated[str, typer.Option(help="synthetic (seeded, calibrated), imagenet (torchvision's "
                                           "local cache) or a .pt/.pth/.safetensors file")]
Seed = Annotated[int, typer.Option(help="Seed for synthetic weights and the input")]
Shape = Annotated[str | None, typer.Option(help="Input shape NxCxHxW [default: recorded, else 1x3x224x224]")]
InputFile = Annotated[Path | None, typer.Option("--input", help="Input array (.npy, NCHW float32)")]
Device = Annotated[str, typer.Option(help="cpu or cuda, for every runtime (the oracle stays on CPU)")]
OrtOpt = Annotated[str, typer.Option(help="ONNX Runtime graph optimisation: disable, basic, extended, all")]
Tf32 = Annotated[bool | None, typer.Option("--tf32/--no-tf32", help="TF32 on CUDA [default: each "
                                                                        "framework's own default]")]
Decimal = Annotated[int | None, typer.Option(help="numpy assert_array_almost_equal(decimal=N) semantics")]
Rtol = Annotated[float | None, typer.Option(help="numpy assert_allclose rtol (default 1e-7 with --atol)")]
Atol = Annotated[float | None, typer.Option(help="numpy assert_allclose atol (default 0 with --rtol)")]
Factor = Annotated[float | None, typer.Option(help="auto mode: allowed multiple of the float32 noise floor")]
JsonOut = Annotated[Path | None, typer.Option("--json", help="Write the whole result as JSON here")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="One table row per output, not per pair")]


def _settings(weights: str, seed: int, shape: str | None, input_file: Path | None, device: str,
              ort_opt_level: str, tf32: bool | None, decimal: int | None, rtol: float | None,
              atol: float | None, factor: float | None):
    from exporter.spec import parse_shape
    from verify.api import RunSettings
    from verify.compare import Tolerance
    from verify.runtimes import RuntimeOptions

    return RunSettings(
        weights=weights, seed=seed, shape=parse_shape(shape) if shape else None, input_file=input_file,
        runtime=RuntimeOptions(device=device, ort_opt_level=ort_opt_level, tf32=tf32),
        tolerance=Tolerance.from_options(decimal, rtol, atol, factor),
    )


def _finish(report: Any, json_path: Path | None, verbose: bool) -> None:
    from verify.report import render_pairs, write_json_report

    render_pairs(report, out_console, verbose)
    if json_path:
        write_json_report(report.to_dict(), json_path)
        err_console.print(f"[dim]wrote {json_path}[/]")
    raise typer.Exit(report.exit_code)


@app.command()
@handle_errors
def export(
    backbone: Annotated[str, typer.Option("--backbone", "-b",
                                          help=f"One of: {', '.join(list_backbones())}")] = "resnet50",
    norm: Annotated[str, typer.Option("--norm", "-n", help=f"One of: {', '.join(list_norms())}")] = "frozen",
    view: Annotated[str, typer.Option(help="body (layer1..4), fpn (with FPN) or trunk (classifier "
                                           "without avgpool/fc)")] = "body",
    weights: Weights = "synthetic",
    seed: Seed = 0,
    shape: Shape = None,
    input_file: InputFile = None,
    out: Annotated[Path, typer.Option(help="Folder for the artifacts")] = Path("artifacts"),
    onnx_exporter: Annotated[str, typer.Option(help="dynamo or torchscript (torch's legacy exporter)")]
    = "dynamo",
    opset: Annotated[int, typer.Option(help="ONNX opset")] = 18,
    trace: Annotated[bool, typer.Option("--trace", help="TorchScript by tracing instead of scripting")]
    = False,
    static: Annotated[bool, typer.Option("--static", help="No dynamic batch/height/width axes")] = False,
    fmt: Annotated[list[str] | None, typer.Option(
        "--format", help="Formats to export (repeat): torchscript, pt2, onnx, aoti "
                         "[default: torchscript, pt2, onnx]")] = None,
    runtime: Annotated[list[str] | None, typer.Option(
        help="Runtimes to run (repeat) [default: every runtime that runs an exported format]")] = None,
    device: Device = "cpu",
    ort_opt_level: OrtOpt = "all",
    tf32: Tf32 = None,
    decimal: Decimal = None,
    rtol: Rtol = None,
    atol: Atol = None,
    factor: Factor = None,
    json_path: JsonOut = None,
    verbose: Verbose = False,
) -> None:
    """Build a backbone, export it (TorchScript, ExportedProgram, ONNX...), run every runtime, judge every pair."""
    from exporter.export import ExportOptions
    from exporter.formats import default_formats
    from exporter.formats.aoti import AotiOptions
    from exporter.formats.onnx import OnnxOptions
    from exporter.formats.torchscript import TorchScriptOptions
    from exporter.spec import ModelSpec
    from verify.api import verify_export

    spec = ModelSpec(backbone, norm, view)
    settings = _settings(weights, seed, shape, input_file, device, ort_opt_level, tf32, decimal, rtol,
                         atol, factor)
    options = ExportOptions(formats=tuple(fmt or default_formats()), dynamic=not static, format_options=(
        TorchScriptOptions("trace" if trace else "script"), OnnxOptions(onnx_exporter, opset), AotiOptions(device)))
    report = verify_export(spec, settings, out=out, export=options, runtimes=runtime,
                           progress=RichProgress(err_console))
    err_console.print(f"[dim]artifacts in {report.artifacts['folder']}[/]")
    _finish(report, json_path, verbose)


@app.command()
@handle_errors
def compare(
    a: Annotated[str, typer.Argument(help="Model spec backbone:norm:view, or a .onnx / TorchScript .pt")],
    b: Annotated[str, typer.Argument(help="The reference side, same forms as A")],
    weights: Weights = "synthetic",
    seed: Seed = 0,
    shape: Shape = None,
    input_file: InputFile = None,
    device: Device = "cpu",
    ort_opt_level: OrtOpt = "all",
    tf32: Tf32 = None,
    decimal: Decimal = None,
    rtol: Rtol = None,
    atol: Atol = None,
    factor: Factor = None,
    json_path: JsonOut = None,
    verbose: Verbose = False,
) -> None:
    """Run any two models or artifacts on the same input and judge them on the outputs they share."""
    from verify.api import compare as run_compare

    settings = _settings(weights, seed, shape, input_file, device, ort_opt_level, tf32, decimal, rtol,
                         atol, factor)
    _finish(run_compare(a, b, settings, progress=RichProgress(err_console)), json_path, verbose)


@app.command()
@handle_errors
def explain(
    a: Annotated[str | None, typer.Argument(
        help="Model spec or artifact [default: resnet50:batch:trunk, the classifier's ResNet-50]")] = None,
    b: Annotated[str | None, typer.Argument(
        help="Model spec or artifact [default: resnet50:frozen:body, Faster R-CNN's backbone]")] = None,
    weights: Weights = "synthetic",
    seed: Seed = 0,
    shape: Shape = None,
    input_file: InputFile = None,
    factor: Factor = None,
    json_path: JsonOut = None,
) -> None:
    """Say whether two models compute the same function, and where and why they part if not."""
    from verify.explain import SEED_QUESTION, render_explanation
    from verify.explain import explain as run_explain
    from verify.report import write_json_report

    if (a is None) != (b is None):
        raise UsageError("Give both A and B, or neither to replay the seed question")
    settings = _settings(weights, seed, shape, input_file, "cpu", "all", None, None, None, None, factor)
    result = run_explain(a or SEED_QUESTION[0], b or SEED_QUESTION[1], settings,
                         progress=RichProgress(err_console))
    render_explanation(result, out_console)
    if json_path:
        write_json_report(result.to_dict(), json_path)
        err_console.print(f"[dim]wrote {json_path}[/]")
    raise typer.Exit(result.exit_code)


JunitOut = Annotated[Path | None, typer.Option("--junit", help="Write JUnit XML here (one test case per check)")]
MarkdownOut = Annotated[Path | None, typer.Option("--markdown", help="Write a Markdown summary here")]


def _finish_checks(report: Any, json_path: Path | None, junit: Path | None, markdown: Path | None) -> None:
    from verify.checks import render_checks, write_outputs

    render_checks(report, out_console)
    for path in write_outputs(report, json_path, junit, markdown):
        err_console.print(f"[dim]wrote {path}[/]")
    raise typer.Exit(report.exit_code)


@app.command()
@handle_errors
def artifact(
    paths: Annotated[list[Path], typer.Argument(help="Export folders, or their manifest.json")],
    ort_opt_level: OrtOpt = "all",
    json_path: JsonOut = None,
    junit: JunitOut = None,
    markdown: MarkdownOut = None,
) -> None:
    """Check export folders: integrity, then each artifact against its goldens (CI validation)."""
    from verify.runtimes import RuntimeOptions
    from verify.validate import validate

    _finish_checks(validate(paths, RuntimeOptions(ort_opt_level=ort_opt_level)), json_path, junit, markdown)


@app.command()
@handle_errors
def preflight(
    path: Annotated[Path, typer.Argument(help="The export folder, or its manifest.json")],
    provider: Annotated[str, typer.Option(help="cpu or cuda: where the artifact must run")] = "cpu",
    runtime: Annotated[str, typer.Option(help="onnxruntime (model.onnx) or torchscript (model.pt)")]
    = "onnxruntime",
    runs: Annotated[int, typer.Option(help="Timed runs")] = 50,
    warmup: Annotated[int, typer.Option(help="Untimed runs first")] = 5,
    max_latency_ms: Annotated[float | None, typer.Option(help="Budget for the p90 latency")] = None,
    tf32: Tf32 = None,
    json_path: JsonOut = None,
    junit: JunitOut = None,
    markdown: MarkdownOut = None,
) -> None:
    """Deployment check: loads on the provider asked for, matches its goldens, latency; GO or NO-GO."""
    from verify.preflight import PreflightOptions
    from verify.preflight import preflight as run_preflight

    options = PreflightOptions(provider=provider, runtime=runtime, runs=runs, warmup=warmup,
                               max_latency_ms=max_latency_ms, tf32=tf32)
    _finish_checks(run_preflight(path, options), json_path, junit, markdown)


@app.command(name="list")
def list_command() -> None:
    """List the registered backbones, norms, views and runtimes."""
    from exporter.backbones import VIEWS
    from exporter.norms import NORMS
    from verify.runtimes import list_runtimes

    out_console.print(f"backbones: {', '.join(list_backbones())}")
    out_console.print("norms:")
    for name in NORMS:
        out_console.print(f"  {name:12s} {NORMS.get(name).description}")
    out_console.print(f"views: {', '.join(VIEWS.names())}")
    out_console.print(f"runtimes: {', '.join(list_runtimes())}")


app.add_typer(matrix_app)
app.add_typer(cache_app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
