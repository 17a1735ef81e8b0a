"""`verify matrix` (run, shard, merge) and `verify cache` (info, clear): thin over verify/matrix/ and
verify/cache.py. Registered on the main app in verify/cli/app.py."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from exporter.errors import UsageError
from verify.cli import options as opt
from verify.cli.base import OneValueOptions, err_console, handle_errors, out_console
from verify.cli.groups import EXPORT, RUN, with_option_groups
from verify.pipeline.isolation import USER_CODE_TIMEOUT
from verify.render.console import print_line
from verify.render.text import markup

matrix_app = typer.Typer(
    name="matrix", cls=OneValueOptions, add_completion=False, pretty_exceptions_enable=False,
    help="Every backbone x norm x view (and each whole detector named with -b), exported and judged under every "
         "runtime: one table, cached, parallel (--jobs), split for CI (--shard I/N, then `verify matrix merge`).",
)
cache_app = typer.Typer(name="cache", cls=OneValueOptions, no_args_is_help=True, add_completion=False,
                        pretty_exceptions_enable=False,
                        help="The cache of ONNX exports and matrix results (an input, re-checked on every read).")


JsonOut = Annotated[Path | None, typer.Option("--json", callback=opt.check_output_file,
                                              help="Write the whole result as JSON here (mergeable)")]
JunitOut = Annotated[Path | None, typer.Option("--junit", callback=opt.check_output_file,
                                               help="Write JUnit XML here (one test case per cell x pair)")]
MarkdownOut = Annotated[Path | None, typer.Option("--markdown", callback=opt.check_output_file,
                                                  help="Write a Markdown summary here (CI job page)")]
HtmlOut = Annotated[Path | None, typer.Option("--html", callback=opt.check_output_file,
                                              help="Write one self-contained HTML page here (a heatmap)")]

def _write(result: Any, json_path: Path | None, junit: Path | None, markdown: Path | None,
           html: Path | None) -> None:
    from verify.render import write_outputs

    for path in write_outputs(result, json_path, junit, markdown, html):
        print_line(err_console, f"[dim]wrote {markup(path)}[/]")


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
@handle_errors
@with_option_groups
def matrix(
    ctx: typer.Context,
    backbone: Annotated[list[str] | None, typer.Option(
        "--backbone", "-b", metavar="NAME", help="Backbones, or whole detectors (repeat) [default: every registered "
                                                 "backbone]")] = None,
    norm: Annotated[list[str] | None, typer.Option(
        "--norm", "-n", metavar="NAME", help="Norm variants (repeat) [default: every registered norm]")] = None,
    view: Annotated[list[str] | None, typer.Option(
        metavar="NAME", help="Views (repeat): body, fpn, trunk [default: body]")] = None,
    model: Annotated[list[str] | None, typer.Option(
        "--model", metavar="FILE.py:FACTORY",
        help="Your own model (repeat): path/to/file.py:factory or package.module:factory, one row each; with no "
             "--backbone only these run. This IMPORTS AND RUNS that code: name only code you trust")] = None,
    runtime: opt.Runtimes = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Cells run in parallel, each in its own "
                                                                  "worker process (cores are divided)")] = 1,
    shard: Annotated[str | None, typer.Option(help="Run only part I of N (I/N): a balanced, deterministic "
                                                   "split for CI jobs; join with `verify matrix merge`. Not "
                                                   "given: GitLab's $CI_NODE_INDEX/$CI_NODE_TOTAL, or a "
                                                   "Kubernetes indexed job's $JOB_COMPLETION_INDEX with "
                                                   "--shard-count")] = None,
    shard_count: Annotated[int | None, typer.Option(
        "--shard-count", metavar="N", help="The number of shards when the index comes from "
                                           "$JOB_COMPLETION_INDEX (0-based: a Kubernetes indexed job's "
                                           "completions)")] = None,
    timeout: Annotated[float | None, typer.Option(
        "--timeout", metavar="SECONDS", callback=opt.MATRIX_TIMEOUT_CHECK,
        show_default=f"{USER_CODE_TIMEOUT:g} for --model cells, none otherwise",
        help="Stop a cell that runs longer than this (at least 1 s; in its worker process) and fail it; a --model cell "
             "always runs in a worker of its own")] = None,
    cache_dir: opt.CacheDir = None,
    no_cache: opt.NoCache = False,
    detector_shape: Annotated[str | None, typer.Option(
        "--detector-shape", metavar="NxCxHxW", callback=opt.check_shape, show_default="1x3x320x320",
        help="A whole detector's cells (-b <detector>): the synthetic images it is judged on, as `verify export "
             "-b <detector> --shape` (--shape is the backbone cells')")] = None,
    json_path: JsonOut = None,
    junit: JunitOut = None,
    markdown: MarkdownOut = None,
    html: HtmlOut = None,
    settings: Any = RUN,
    formats: Any = EXPORT,
    given_options: Any = None,
) -> None:
    """Run the matrix: rows backbone x norm x view (and whole detectors, -b <detector>), columns runtime pairs,
    each the worst ratio to the floor."""
    if ctx.invoked_subcommand is not None:
        return
    from exporter.spec import parse_shape
    from verify.matrix import MatrixRequest, resolve_shard, run_matrix
    from verify.render.matrix_table import render_matrix

    opt.distinct_outputs(json=json_path, junit=junit, markdown=markdown, html=html)
    from verify.explain.outputs import refuse_overwriting_sources

    # a report over the user's model code or checkpoint replaced it (`--model m.py:make --json m.py`, exit 0: hunt 13d)
    refuse_overwriting_sources([*(model or []), opt.weights_file(settings.weights)], json=json_path, junit=junit,
                               markdown=markdown, html=html)
    _refuse_for_detectors(backbone or [], given_options or [], runtime, view, detector_shape, bool(model))
    if model and not backbone:  # only the models run: a backbone's own options would be silently ignored
        unused = [flag for flag, value in (("--norm", norm), ("--view", view),
                                           ("--weights", settings.weights != "synthetic")) if value]
        if unused:
            raise UsageError(f"{', '.join(unused)} appl{'ies' if len(unused) == 1 else 'y'} to a registered backbone's "
                             "cells, and with --model and no -b only your models run (a factory brings its own "
                             f"weights and structure), so it would be ignored; drop {', '.join(unused)} or add -b")
    export = formats.export_options(settings.runtime.device, runtime)
    request = MatrixRequest.create(backbone, norm, view, settings, export, runtime, model,
                                   parse_shape(detector_shape) if detector_shape else None)
    split = resolve_shard(shard, shard_count, os.environ)
    folder = opt.cache_folder(cache_dir, no_cache)
    opt.reports_apart_from_created_folders({"--json": json_path, "--junit": junit, "--markdown": markdown,
                                            "--html": html}, {"the cache folder": folder})
    from verify.render import start_reports

    start_reports("matrix", json=json_path, junit=junit, markdown=markdown, html=html)
    display = _CellProgress(err_console)
    with display.progress:
        result = run_matrix(request, jobs=jobs, shard=split, cache_dir=folder, on_start=display.start,
                            on_done=display.finished, timeout=timeout)
    render_matrix(result, out_console)
    _write(result, json_path, junit, markdown, html)
    raise typer.Exit(result.exit_code)


def _refuse_for_detectors(names: list[str], given: list[str], runtime: list[str] | None, view: list[str] | None,
                          detector_shape: str | None, models: bool) -> None:
    """The options a whole detector's cell does not apply, refused by flag before any work (never ignored); --shape
    and --view shape the other cells, so they stand only beside a backbone's or a user model's cells."""
    from verify.matrix.detectors import refuse_options, split_detectors

    backbones, detectors = split_detectors(names)
    others = bool(backbones) or models
    if not detectors:
        if detector_shape:
            raise UsageError("--detector-shape sets a whole detector's images, and no -b names a detector; drop it")
        return
    own = [flag for flag, value in (("--runtime", runtime), ("--view", view and not others)) if value]
    refuse_options(detectors[0], own + given, others)


@matrix_app.command()
@handle_errors
def merge(
    reports: Annotated[list[Path], typer.Argument(help="Shard reports (verify matrix --shard I/N --json ...)")],
    json_path: JsonOut = None,
    junit: JunitOut = None,
    markdown: MarkdownOut = None,
    html: HtmlOut = None,
) -> None:
    """Join shard reports into the matrix's whole report, every cell judged again from its numbers; a cell
    missing, doubled or foreign, or a report whose cells do not follow from its settings, fails (exit 1)."""
    from verify.matrix import load_result, merge_results
    from verify.render.matrix_table import render_matrix

    opt.distinct_outputs(json=json_path, junit=junit, markdown=markdown, html=html)
    _not_a_report(reports, json=json_path, junit=junit, markdown=markdown, html=html)
    for path in reports:
        _not_a_failure_report(path)
    loaded = [load_result(path) for path in reports]  # a malformed shard is refused before any output is touched
    from verify.render import start_reports

    start_reports("matrix merge", json=json_path, junit=junit, markdown=markdown, html=html)
    result = merge_results(loaded, reports)
    render_matrix(result, out_console)
    from verify.matrix.merge import UNSIGNED_NOTE
    from verify.matrix.result import REPORT_KEY_ENV

    if not os.environ.get(REPORT_KEY_ENV):  # review 35: what an unsigned merge's exit 0 rests on, said once
        print_line(err_console, f"[yellow]![/] {markup(UNSIGNED_NOTE)}")
    _write(result, json_path, junit, markdown, html)
    raise typer.Exit(result.exit_code)


def _not_a_failure_report(path: Path) -> None:
    """A shard whose run failed wrote a failure report (verify/render `settle_reports`): named as such, not as "no
    schema", so the job knows to rerun that shard."""
    import json
    import stat

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return  # a FIFO or a device is never opened here (load_result refuses it unread)
        with open(path, "rb") as handle:
            data = json.loads(handle.read(1 << 16))
    except (OSError, ValueError):
        return  # not one: load_result says what it is
    from verify.render import is_failure_report

    if is_failure_report(data):
        raise UsageError(f"{path} records a run that failed (exit {data.get('exit_code')}: {data['error'][:200]}), "
                         "not a shard's cells; rerun that shard, then merge")


def _not_a_report(reports: list[Path], **outputs: Path | None) -> None:
    """An output written over a report being merged would destroy the shard's own evidence."""
    given = {report.resolve(): report for report in reports}
    for option, path in outputs.items():
        if path is not None and path.resolve() in given:
            raise UsageError(f"--{option} {path} is one of the reports being merged; write the merged report "
                             "elsewhere")


@cache_app.command()
@handle_errors
def info(cache_dir: opt.CacheDirToRead = None) -> None:
    """Where the cache is, its entries per kind and its size."""
    from verify.cache import Cache, default_cache_dir

    data = Cache(cache_dir or default_cache_dir()).info()
    # the folder may come from $BACKBONE_VERIFY_CACHE_DIR: shown as text, never as markup or a line of its own
    out_console.print(f"cache: {markup(data['root'])}", highlight=False, soft_wrap=True)
    kinds = ", ".join(f"{markup(kind)} {n}" for kind, n in sorted(data["entries"].items())) or "none"
    out_console.print(f"entries: {kinds}; files: {data['blobs']}; size: {data['bytes'] / 2**20:.1f} MiB",
                      highlight=False)


@cache_app.command()
@handle_errors
def prune(
    cache_dir: opt.CacheDir = None,
    max_size: Annotated[int, typer.Option("--max-size", metavar="SIZE", parser=opt.parse_size, show_default="5G",
                                          help="Keep at most this much, e.g. 5G, 500M or bytes; the least "
                                               "recently used entries go first")] = 5 * 2**30,
) -> None:
    """Shrink the cache to --max-size by removing its least recently used entries and their files."""
    from verify.cache import ENV_DIR, Cache, default_cache_dir

    cache = Cache(cache_dir or default_cache_dir())
    if not cache.found():
        out_console.print(f"no cache of this tool in {markup(cache.root)}: nothing was pruned (check --cache-dir or "
                          f"${ENV_DIR})", highlight=False, soft_wrap=True)
        return
    removed, freed = cache.prune(max_size)
    out_console.print(f"pruned {markup(cache.root)}: {removed} entries removed, {freed / 2**20:.1f} MiB freed, "
                      f"{cache.info()['bytes'] / 2**20:.1f} MiB kept", highlight=False, soft_wrap=True)


@cache_app.command()
@handle_errors
def clear(cache_dir: opt.CacheDir = None) -> None:
    """Remove every cached entry and file (only this tool's own folder inside the cache folder)."""
    from verify.cache import ENV_DIR, Cache, default_cache_dir

    cache = Cache(cache_dir or default_cache_dir())
    if not cache.found():
        out_console.print(f"no cache of this tool in {markup(cache.root)}: nothing was removed (check --cache-dir or "
                          f"${ENV_DIR})", highlight=False, soft_wrap=True)
        return
    freed = cache.clear()
    out_console.print(f"cleared {markup(cache.root)}: {freed / 2**20:.1f} MiB freed", highlight=False, soft_wrap=True)
