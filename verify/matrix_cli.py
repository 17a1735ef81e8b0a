"""`verify matrix` (run, shard, merge) and `verify cache` (info, clear): thin over verify/matrix.py and
verify/cache.py. Registered on the main app in verify/cli.py."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

out_console = Console()
err_console = Console(stderr=True)

matrix_app = typer.Typer(
    name="matrix", add_completion=False, pretty_exceptions_enable=False,
    help="Every backbone x norm x view, exported and judged under every runtime: one table, cached, parallel "
         "(--jobs), split for CI (--shard I/N, then `verify matrix merge`).",
)
cache_app = typer.Typer(name="cache", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                        help="The cache of built weights, exported files and matrix results.")


def _handled(command: Callable[..., Any]) -> Callable[..., Any]:
    """verify.cli's error handling (one line, exit 2), looked up at call time: cli imports this module."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from verify.cli import handle_errors

        return handle_errors(command)(*args, **kwargs)

    return wrapper


JsonOut = Annotated[Path | None, typer.Option("--json", help="Write the whole result as JSON here (mergeable)")]
JunitOut = Annotated[Path | None, typer.Option("--junit", help="Write JUnit XML here (one test case per cell x pair)")]
MarkdownOut = Annotated[Path | None, typer.Option("--markdown", help="Write a Markdown summary here (CI job page)")]
HtmlOut = Annotated[Path | None, typer.Option("--html", help="Write one self-contained HTML page here (a heatmap)")]
CacheDir = Annotated[Path | None, typer.Option(help="Cache folder \\[default: $BACKBONE_VERIFY_CACHE_DIR, else the "
                                                    "platform's user cache folder, e.g. ~/.cache/backbone-verify]")]


def _write(result: Any, json_path: Path | None, junit: Path | None, markdown: Path | None,
           html: Path | None) -> None:
    from verify.render import write_outputs

    for path in write_outputs(result, json_path, junit, markdown, html):
        err_console.print(f"[dim]wrote {path}[/]")


class _CellProgress:
    """A bar over cells (weighted by each cell's expected cost, so the ETA is fair to big backbones),
    and one line per finished cell above it."""

    def __init__(self, console: Console) -> None:
        from rich.progress import (
            BarColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.fields[cells]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), console=console, transient=True)
        self.task: Any = None
        self.done = 0
        self.total = 0

    def start(self, plan: Any) -> None:
        self.total = len(plan.selected)
        cost = sum(plan.costs[i] for i in plan.selected) or 1.0
        where = f" (shard {plan.shard[0]}/{plan.shard[1]})" if plan.shard else ""
        self.task = self.progress.add_task(f"matrix{where}", total=cost, cells=f"0/{self.total} cells")

    def finished(self, cell: Any, cost: float) -> None:
        from verify.render.matrix_table import cell_line

        self.done += 1
        self.progress.advance(self.task, cost)
        self.progress.update(self.task, cells=f"{self.done}/{self.total} cells")
        self.progress.console.print(cell_line(cell), highlight=False, soft_wrap=True)


@matrix_app.callback(invoke_without_command=True)
@_handled
def matrix(
    ctx: typer.Context,
    backbone: Annotated[list[str] | None, typer.Option(
        "--backbone", "-b", help="Backbones (repeat) \\[default: every registered backbone]")] = None,
    norm: Annotated[list[str] | None, typer.Option(
        "--norm", "-n", help="Norm variants (repeat) \\[default: every registered norm]")] = None,
    view: Annotated[list[str] | None, typer.Option(help="Views (repeat): body, fpn, trunk \\[default: body]")] = None,
    fmt: Annotated[list[str] | None, typer.Option(
        "--format", help="Formats to export (repeat) \\[default: the default formats, as verify export]")] = None,
    runtime: Annotated[list[str] | None, typer.Option(
        help="Runtimes (repeat) \\[default: every runtime that runs an exported format]")] = None,
    weights: Annotated[str, typer.Option(help="synthetic, imagenet or a .pt/.pth/.safetensors file")] = "synthetic",
    seed: Annotated[int, typer.Option(help="Seed for synthetic weights and the input")] = 0,
    shape: Annotated[str | None, typer.Option(help="Input shape NxCxHxW \\[default: 1x3x224x224]")] = None,
    input_file: Annotated[Path | None, typer.Option("--input", help="Input array (.npy, NCHW float32)")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda, for every runtime (the oracle stays on CPU)")] = "cpu",
    ort_opt_level: Annotated[str, typer.Option(help="ONNX Runtime graph optimisation: disable, basic, "
                                                    "extended, all")] = "all",
    tf32: Annotated[bool | None, typer.Option("--tf32/--no-tf32", help="TF32 on CUDA \\[default: each "
                                                                       "framework's own]")] = None,
    decimal: Annotated[int | None, typer.Option(help="numpy assert_array_almost_equal(decimal=N)")] = None,
    rtol: Annotated[float | None, typer.Option(help="numpy assert_allclose rtol")] = None,
    atol: Annotated[float | None, typer.Option(help="numpy assert_allclose atol")] = None,
    factor: Annotated[float | None, typer.Option(help="auto mode: allowed multiple of the noise floor")] = None,
    onnx_exporter: Annotated[str, typer.Option(help="dynamo or torchscript (torch's legacy exporter)")] = "dynamo",
    opset: Annotated[int, typer.Option(help="ONNX opset")] = 18,
    trace: Annotated[bool, typer.Option("--trace", help="TorchScript by tracing instead of scripting")] = False,
    static: Annotated[bool, typer.Option("--static", help="No dynamic batch/height/width axes")] = False,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Cells run in parallel, each in its own "
                                                                  "worker process (cores are divided)")] = 1,
    shard: Annotated[str | None, typer.Option(help="Run only part I of N (I/N): a balanced, deterministic "
                                                   "split for CI jobs; join with `verify matrix merge`")] = None,
    cache_dir: CacheDir = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Compute everything; read and write no cache")]
    = False,
    json_path: JsonOut = None,
    junit: JunitOut = None,
    markdown: MarkdownOut = None,
    html: HtmlOut = None,
) -> None:
    """Run the matrix: rows backbone x norm x view, columns runtime pairs, each the worst ratio to the floor."""
    if ctx.invoked_subcommand is not None:
        return
    from exporter.export import ExportOptions
    from exporter.formats import default_formats
    from exporter.formats.aoti import AotiOptions
    from exporter.formats.onnx import OnnxOptions
    from exporter.formats.torchscript import TorchScriptOptions
    from exporter.spec import parse_shape
    from verify.api import RunSettings
    from verify.cache import default_cache_dir
    from verify.compare import Tolerance
    from verify.matrix import MatrixRequest, parse_shard, run_matrix
    from verify.render.matrix_table import render_matrix
    from verify.runtimes import RuntimeOptions

    settings = RunSettings(weights=weights, seed=seed, shape=parse_shape(shape) if shape else None,
                           input_file=input_file,
                           runtime=RuntimeOptions(device=device, ort_opt_level=ort_opt_level, tf32=tf32),
                           tolerance=Tolerance.from_options(decimal, rtol, atol, factor))
    export = ExportOptions(formats=tuple(fmt or default_formats()), dynamic=not static, format_options=(
        TorchScriptOptions("trace" if trace else "script"), OnnxOptions(onnx_exporter, opset), AotiOptions(device)))
    request = MatrixRequest.create(backbone, norm, view, settings, export, runtime)
    split = parse_shard(shard) if shard else None
    folder = None if no_cache else (cache_dir or default_cache_dir())
    display = _CellProgress(err_console)
    with display.progress:
        result = run_matrix(request, jobs=jobs, shard=split, cache_dir=folder, on_start=display.start,
                            on_done=display.finished)
    render_matrix(result, out_console)
    _write(result, json_path, junit, markdown, html)
    raise typer.Exit(result.exit_code)


@matrix_app.command()
@_handled
def merge(
    reports: Annotated[list[Path], typer.Argument(help="Shard reports (verify matrix --shard I/N --json ...)")],
    json_path: JsonOut = None,
    junit: JunitOut = None,
    markdown: MarkdownOut = None,
    html: HtmlOut = None,
) -> None:
    """Join shard reports into the matrix's whole report; refuses shards of other matrices or settings."""
    from verify.matrix import load_result, merge_results
    from verify.render.matrix_table import render_matrix

    result = merge_results([load_result(path) for path in reports], reports)
    render_matrix(result, out_console)
    _write(result, json_path, junit, markdown, html)
    raise typer.Exit(result.exit_code)


@cache_app.command()
@_handled
def info(cache_dir: CacheDir = None) -> None:
    """Where the cache is, its entries per kind and its size."""
    from verify.cache import Cache, default_cache_dir

    data = Cache(cache_dir or default_cache_dir()).info()
    out_console.print(f"cache: {data['root']}", highlight=False, soft_wrap=True)
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(data["entries"].items())) or "none"
    out_console.print(f"entries: {kinds}; files: {data['blobs']}; size: {data['bytes'] / 2**20:.1f} MiB",
                      highlight=False)


@cache_app.command()
@_handled
def clear(cache_dir: CacheDir = None) -> None:
    """Remove every cached entry and file (only this tool's own folder inside the cache folder)."""
    from verify.cache import Cache, default_cache_dir

    cache = Cache(cache_dir or default_cache_dir())
    freed = cache.clear()
    out_console.print(f"cleared {cache.root}: {freed / 2**20:.1f} MiB freed", highlight=False, soft_wrap=True)
