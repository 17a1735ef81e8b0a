"""The top-level commands (export, compare, explain, artifact, preflight, list): each parses, calls the library,
renders. Registered on the app in verify/cli/app.py. Every option is checked while typer parses
(verify/options.py), so nothing is built before the arguments are known good."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from exporter.backbones import list_backbones
from exporter.errors import UsageError
from verify import options as opt
from verify.cli.base import err_console, handle_errors, out_console
from verify.cli.groups import EXPORT, FEED, REPORTS, RUN, RUNTIME_PLUGINS, ReportPaths, with_option_groups
from verify.render.console import progress_for

DETECTOR_TAKES = ("--weights", "--seed", "--shape", "--input", "--normalize", "--format", "--factor", "--json")
"""The shared options a whole detector applies (beside --norm, --out, --overwrite); any other given is refused."""


def user_timeout(timeout: float | None) -> float:
    from verify.isolation import USER_CODE_TIMEOUT

    return USER_CODE_TIMEOUT if timeout is None else timeout


def _finish(report: Any, reports: ReportPaths, verbose: bool) -> None:
    from verify.render.pairs import write_report_outputs
    from verify.report import render_pairs, write_json_report

    render_pairs(report, out_console, verbose)
    if reports.json:
        write_json_report(report.to_dict(), reports.json)
        err_console.print(f"[dim]wrote {escape(str(reports.json))}[/]")
    for path in write_report_outputs(report, reports.junit, reports.markdown):
        err_console.print(f"[dim]wrote {escape(str(path))}[/]")
    raise typer.Exit(report.exit_code)


@handle_errors
@with_option_groups
def export(
    backbone: opt.Backbone = "resnet50",
    norm: opt.Norm = "frozen",
    view: opt.View = "body",
    model: Annotated[str | None, typer.Option(
        "--model", help="Your own model instead of a backbone: path/to/file.py:factory or package.module:factory "
                        "(the factory returns an nn.Module or (module, example_input)). This IMPORTS AND RUNS "
                        "that code: name only code you trust")] = None,
    out: opt.OutFolder = Path("artifacts"),
    overwrite: opt.Overwrite = False,
    runtime: opt.Runtimes = None,
    verbose: opt.Verbose = False,
    sign_key: opt.SignKey = None,
    cache_dir: opt.CacheDir = None,
    no_cache: opt.NoCache = False,
    timeout: opt.Timeout = None,
    settings: Any = RUN,
    formats: Any = EXPORT,
    reports: Any = REPORTS,
    given_options: Any = None,
) -> None:
    """Build a backbone, export it (TorchScript, ExportedProgram, ONNX...), run every runtime, judge every pair."""
    from exporter.spec import ModelSpec
    from exporter.user_model import UserModelSpec
    from verify.api import verify_export
    from verify.cache import open_cache

    if model is None and backbone in detector_names():
        own = {"--sign-key": sign_key, "--runtime": runtime, "--cache-dir": cache_dir, "--timeout": timeout}
        given = [flag for flag, value in own.items() if value is not None] + given_options
        refused = [flag for flag in given if flag not in DETECTOR_TAKES]
        if refused:  # never ignored silently: a tolerance or a signature asked for and not applied would mislead
            raise UsageError(f"{refused[0]} is not supported for a whole detector yet (it takes --norm, --weights, "
                             "--seed, --shape, --input, --format, --out, --overwrite, --factor, --json); drop it")
        shape = "x".join(map(str, settings.shape)) if settings.shape else None
        factor = settings.tolerance.factor if "--factor" in given_options else None
        _export_detector(backbone, norm, settings.weights, settings.seed, shape, settings.input_file,
                         list(formats.formats) or None, out, factor, reports.json, overwrite)
    spec = UserModelSpec.parse(model) if model else ModelSpec(backbone, norm, view)
    folder = out / spec.slug
    for flag, path in (("--json", reports.json), ("--junit", reports.junit), ("--markdown", reports.markdown)):
        if path and path.resolve().is_relative_to(folder.resolve()):
            raise UsageError(f"{flag} {path} is inside the export folder {folder}, which the export replaces; "
                             "write it elsewhere")
    options = formats.export_options(settings.runtime.device, runtime)
    report = verify_export(spec, settings, out=out, export=options, runtimes=runtime,
                           progress=progress_for(err_console), overwrite=overwrite, sign_key=sign_key,
                           cache=open_cache(cache_dir, no_cache), timeout=user_timeout(timeout))
    if "folder" in report.artifacts:
        err_console.print(f"[dim]artifacts in {escape(report.artifacts['folder'])}[/]")
    _finish(report, reports, verbose)


def detector_names() -> list[str]:
    from exporter.families.detectors import list_detectors

    return list_detectors()


def _export_detector(name: str, norm: str, weights: str, seed: int, shape: str | None, input_path: Path | None,
                     formats: list[str] | None, out: Path, factor: float | None, json_path: Path | None,
                     overwrite: bool = False) -> None:
    """`verify export -b <detector>`: the whole detector exported to TorchScript and ONNX, judged before NMS
    (dense head tensors) and after NMS (detections matched by IoU); verify/detector_check.py."""
    import warnings

    import numpy as np

    from exporter.families.detectors import DETECTORS
    from exporter.fsio import staged_folder
    from exporter.spec import parse_shape
    from verify.detector_check import DEFAULT_FORMATS, verify_detector
    from verify.inputs import load_inputs
    from verify.render.console import print_line
    from verify.render.text import markup
    from verify.report import write_json_report

    detector = DETECTORS.get(name)
    if norm not in detector.norms:
        if norm != "frozen":  # an explicit norm the detector does not have; the default falls back
            raise UsageError(f"{name} has no norm {norm!r}; choose one of: {', '.join(detector.norms)}")
        norm = detector.default_norm
    size = parse_shape(shape) if shape else (1, 3, 320, 320)
    images = None
    if input_path is not None:
        images = np.concatenate([item.array for item in load_inputs(input_path, size, normalize=False)])
    chosen = tuple(formats) if formats else DEFAULT_FORMATS
    unknown = [f for f in chosen if f not in DEFAULT_FORMATS]
    if unknown:
        raise UsageError(f"Detectors export to {' and '.join(DEFAULT_FORMATS)} (legacy exporter) only; drop "
                         f"--format {unknown[0]}")
    folder = out / f"{name}-{norm}"
    if folder.exists() and not overwrite:
        raise UsageError(f"{folder} already exists; pass --overwrite to replace it, or another --out")
    with staged_folder(folder) as staging, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation, once per call
        report = verify_detector(name, norm, size, weights, seed, chosen, out=staging, factor=factor, images=images,
                                 progress=lambda what: print_line(err_console, f"[dim]{markup(what)}[/]"))
    for row in report.rows():
        mark = "ok  " if row["passed"] else "FAIL"
        pair = f"{row['a']} vs {row['b']}" if row["b"] else row["a"]
        print_line(out_console, f"{mark} {markup(row['level'])}  {markup(pair)}  {markup(row['text'])}")
    print_line(out_console, ("[bold green]✓ " if report.passed else "[bold red]✗ ") + markup(report.summary()) + "[/]")
    if json_path:
        write_json_report(report.to_dict(), json_path)
    raise typer.Exit(report.exit_code)


@handle_errors
@with_option_groups
def compare(
    a: Annotated[str, typer.Argument(callback=opt.check_source, metavar="A",
                                     help="Model spec backbone:norm:view, a model file (.onnx, .pt2, "
                                          "TorchScript .pt), or your own model file.py:factory / pkg.mod:factory "
                                          "(imports and runs it)")],
    b: Annotated[str, typer.Argument(callback=opt.check_source, metavar="B",
                                     help="The reference side, same forms as A")],
    runtime: opt.SideRuntime = None,
    verbose: opt.Verbose = False,
    timeout: opt.Timeout = None,
    settings: Any = RUN,
    reports: Any = REPORTS,
) -> None:
    """Run any two models or artifacts on the same input and judge them on the outputs they share."""
    from verify.api import compare as run_compare

    _finish(run_compare(a, b, settings, progress=progress_for(err_console), timeout=user_timeout(timeout),
                        runtime=runtime), reports, verbose)


@handle_errors
@with_option_groups
def explain(
    a: Annotated[str | None, typer.Argument(
        callback=opt.check_source, metavar="[A]",
        help="Model spec, artifact or your own file.py:factory (imports and runs it) [default: "
             "resnet50:batch:trunk, the classifier's ResNet-50]")] = None,
    b: Annotated[str | None, typer.Argument(
        callback=opt.check_source, metavar="[B]",
        help="Model spec or artifact [default: resnet50:frozen:body, Faster R-CNN's backbone]")] = None,
    factor: opt.Factor = None,
    json_path: opt.JsonOut = None,
    timeout: opt.Timeout = None,
    settings: Any = FEED,
) -> None:
    """Say whether two models compute the same function, and where and why they part if not."""
    from dataclasses import replace

    from verify.explain import SEED_QUESTION, render_explanation
    from verify.explain import explain as run_explain
    from verify.report import write_json_report

    if (a is None) != (b is None):
        raise UsageError("Give both A and B, or neither to replay the seed question")
    settings = replace(settings, **opt.tolerance_part(factor=factor))
    result = run_explain(a or SEED_QUESTION[0], b or SEED_QUESTION[1], settings,
                         progress=progress_for(err_console), timeout=user_timeout(timeout))
    render_explanation(result, out_console)
    if json_path:
        write_json_report(result.to_dict(), json_path)
        err_console.print(f"[dim]wrote {escape(str(json_path))}[/]")
    raise typer.Exit(result.exit_code)


def _finish_checks(report: Any, reports: ReportPaths) -> None:
    from verify.checks import render_checks, write_outputs

    render_checks(report, out_console)
    for path in write_outputs(report, reports.json, reports.junit, reports.markdown):
        err_console.print(f"[dim]wrote {escape(str(path))}[/]")
    raise typer.Exit(report.exit_code)


@handle_errors
@with_option_groups
def artifact(
    paths: Annotated[list[Path], typer.Argument(callback=opt.check_existing_paths,
                                                help="Export folders, or their manifest.json")],
    verify_key: opt.VerifyKey = None,
    trust_unsigned_code: opt.TrustUnsignedCode = False,
    reports: Any = REPORTS,
    plugins: Any = RUNTIME_PLUGINS,
) -> None:
    """Check export folders: integrity, then each artifact against its goldens (CI validation)."""
    from verify.runtimes import RuntimeOptions
    from verify.validate import validate

    _finish_checks(validate(paths, RuntimeOptions(plugins=plugins), verify_key=verify_key,
                            trust_unsigned_code=trust_unsigned_code), reports)


@handle_errors
@with_option_groups
def preflight(
    path: Annotated[Path, typer.Argument(callback=opt.check_existing_paths,
                                         help="The export folder, or its manifest.json")],
    provider: opt.Provider = opt.Device.cpu,
    runtime: opt.FileRuntime = "onnxruntime",
    runs: opt.Runs = 50,
    warmup: opt.Warmup = 5,
    max_latency_ms: opt.MaxLatency = None,
    tf32: opt.Tf32 = None,
    verify_key: opt.VerifyKey = None,
    trust_unsigned_code: opt.TrustUnsignedCode = False,
    reports: Any = REPORTS,
    plugins: Any = RUNTIME_PLUGINS,
) -> None:
    """Deployment check: loads on the provider asked for, matches its goldens, latency; GO or NO-GO."""
    from verify.preflight import PreflightOptions
    from verify.preflight import preflight as run_preflight

    options = PreflightOptions(provider=provider.value, runtime=runtime, runs=runs, warmup=warmup,
                               max_latency_ms=max_latency_ms, tf32=tf32, plugins=plugins)
    _finish_checks(run_preflight(path, options, verify_key=verify_key, trust_unsigned_code=trust_unsigned_code),
                   reports)


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
