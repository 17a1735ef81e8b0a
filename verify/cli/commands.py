"""The top-level commands (export, compare, explain, artifact, preflight, list): each parses, calls the library,
renders. Registered on the app in verify/cli/app.py. Every option is checked while typer parses
(verify/cli/options.py), so nothing is built before the arguments are known good."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from exporter.backbones import list_backbones
from exporter.errors import SetupError, UsageError
from verify.cli import options as opt
from verify.cli.base import err_console, handle_errors, out_console
from verify.cli.groups import (
    EXPORT,
    FEED,
    FOLDER_TRUST,
    JUDGED_RUN,
    REPORTS,
    RUNTIME_PLUGINS,
    ReportPaths,
    with_option_groups,
)
from verify.render import start_reports
from verify.render.console import print_line, progress_for


def user_timeout(timeout: float | None) -> float:
    from verify.pipeline.isolation import USER_CODE_TIMEOUT

    return USER_CODE_TIMEOUT if timeout is None else timeout


def _finish(report: Any, reports: ReportPaths, verbose: bool) -> None:
    from verify.render.pairs import write_report_outputs
    from verify.report import render_pairs, write_json_report

    render_pairs(report, out_console, verbose)
    if reports.json:
        write_json_report(report.to_dict(), reports.json)
        print_line(err_console, f"[dim]wrote {escape(str(reports.json))}[/]")
    for path in write_report_outputs(report, reports.junit, reports.markdown):
        print_line(err_console, f"[dim]wrote {escape(str(path))}[/]")
    raise typer.Exit(report.exit_code)


@handle_errors
@with_option_groups
def export(
    ctx: typer.Context,
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
    html: Annotated[Path | None, typer.Option(
        "--html", callback=opt.check_output_file,
        help="A whole detector (-b <detector>): one HTML page with the detection tables and each image with "
             "every runtime's boxes drawn")] = None,
    settings: Any = JUDGED_RUN,
    formats: Any = EXPORT,
    reports: Any = REPORTS,
    given_options: Any = None,
) -> None:
    """Build a backbone, export it (TorchScript, ExportedProgram, ONNX...), run every runtime, judge every pair."""
    from exporter.spec import ModelSpec
    from exporter.user_model import FACTORY_WEIGHTS, UserModelSpec
    from verify.api import verify_export
    from verify.cache import open_cache
    from verify.explain.outputs import refuse_overwriting_sources

    moved = changed_from_defaults(export, backbone=backbone, norm=norm, view=view)
    if model is not None and moved:
        raise UsageError(f"--{moved[0]} applies to a registered backbone, and --model builds your own as its "
                         f"factory defines it, so it would be ignored: drop --{moved[0]} (or --model)")
    if model is not None and settings.weights != FACTORY_WEIGHTS:  # before a worker starts on the factory
        raise UsageError(f"--weights {settings.weights} applies to registered backbones; {model} brings its own "
                         "weights (load a checkpoint inside the factory)")
    if model is None and backbone in detector_names():
        from verify.cli.detector import export_detector, refuse_unsupported

        own = {"--sign-key": sign_key, "--runtime": runtime, "--cache-dir": cache_dir, "--timeout": timeout,
               "--html": html, "--view": view if "view" in moved else None}
        refuse_unsupported([flag for flag, value in own.items() if value is not None] + list(given_options))
        shape = "x".join(map(str, settings.shape)) if settings.shape else None
        factor = settings.tolerance.factor if "--factor" in given_options else None
        export_detector(backbone, norm if typed(ctx, "norm") else None, settings.weights, settings.seed, shape,
                        settings.input_file, list(formats.formats) or None, out, factor, reports.json, overwrite,
                        junit=reports.junit, markdown=reports.markdown, html=html, dynamic=not formats.static,
                        sign_key=sign_key, layers=settings.layers)
    if model is None:  # a registered backbone runs in this process: no worker for --timeout to stop
        refuse_unused_timeout(timeout, [])
    # a whole detector refuses these itself, naming the option (verify/cli/detector.py)
    refuse_overwriting_sources([opt.weights_file(settings.weights), sign_key and str(sign_key)], json=reports.json,
                               junit=reports.junit, markdown=reports.markdown, html=html)
    if html is not None:
        raise UsageError("--html is written for a whole detector (-b <detector>); a backbone export writes --json, "
                         "--junit or --markdown")
    spec = UserModelSpec.parse(model) if model else ModelSpec(backbone, norm, view)
    folder = out / spec.slug
    refuse_overwriting_sources([model], json=reports.json, junit=reports.junit, markdown=reports.markdown)
    for flag, path in (("--json", reports.json), ("--junit", reports.junit), ("--markdown", reports.markdown)):
        if path and path.resolve().is_relative_to(folder.resolve()):
            raise UsageError(f"{flag} {path} is inside the export folder {folder}, which the export replaces; "
                             "write it elsewhere")
    folder_of_cache = opt.cache_folder(cache_dir, no_cache)  # $BACKBONE_VERIFY_NO_CACHE computes everything too
    opt.reports_apart_from_created_folders(
        {"--json": reports.json, "--junit": reports.junit, "--markdown": reports.markdown},
        {"the export folder": folder, "the cache folder": folder_of_cache})
    cache = open_cache(folder_of_cache, folder_of_cache is None)
    refuse_inside_export(folder, settings, sign_key, cache)
    options = formats.export_options(settings.runtime.device, runtime)
    start_reports("export", json=reports.json, junit=reports.junit, markdown=reports.markdown)
    report = verify_export(spec, settings, out=out, export=options, runtimes=runtime,
                           progress=progress_for(err_console), overwrite=overwrite, sign_key=sign_key,
                           cache=cache, timeout=user_timeout(timeout))
    if "folder" in report.artifacts:
        print_line(err_console, f"[dim]artifacts in {escape(report.artifacts['folder'])}[/]")
    if not report.passed and not report.problems and not report.layers:  # a file differs: name its culprits
        from verify.explain.isolate import failing_files, name_culprits  # (the layer verdict re-ran every layer)

        name_culprits(report, [(file, model or str(spec)) for file in failing_files(report)], settings,
                      progress_for(err_console), user_timeout(timeout))
    _finish(report, reports, verbose)


def refuse_inside_export(folder: Path, settings: Any, sign_key: Path | None, cache: Any) -> None:
    """UsageError, before any work, when a file or folder the export reads or writes lies inside the folder it
    replaces (the cache there was taken for a foreign folder at rename time, after the whole export; with
    --overwrite an input, checkpoint or key there is deleted), or the export would go into the cache's own folder
    (which `verify cache clear` removes)."""
    from verify.cache import LAYOUT

    weights = Path(settings.weights) if settings.weights and Path(settings.weights).exists() else None
    target = folder.resolve()
    for flag, path in (("--input", settings.input_file), ("--weights", weights), ("--sign-key", sign_key),
                       ("--cache-dir", cache.root if cache is not None else None)):
        if path is not None and Path(path).resolve().is_relative_to(target):
            raise UsageError(f"{flag} {path} is inside the export folder {folder}, which the export replaces as a "
                             "whole: put it elsewhere (or pass --out elsewhere)")
    if cache is not None and target.is_relative_to((cache.root / LAYOUT).resolve()):
        raise UsageError(f"The export folder {folder} is inside the cache's own folder {cache.root / LAYOUT}, which "
                         "`verify cache clear` removes: pass --out elsewhere")


def changed_from_defaults(command: Any, **values: Any) -> list[str]:
    """The names among `values` set to other than `command`'s defaults (options the user gave)."""
    import inspect

    defaults = inspect.signature(getattr(command, "__wrapped__", command)).parameters
    return [name for name, value in values.items() if value != defaults[name].default]


def refuse_unused_weights(weights: str, sources: list[str]) -> None:
    """UsageError when --weights is given and no side is a registered spec that loads it: model files carry their own
    weights (and a factory loads its own), so `compare a.onnx b.pt --weights w.pth` ignored w.pth, passed, and its
    report recorded w.pth as the weights."""
    from exporter.user_model import FACTORY_WEIGHTS
    from verify.api import source_kind
    from verify.detect.explain import is_detector_spec

    if weights == FACTORY_WEIGHTS or not sources:
        return
    if any(is_detector_spec(s) or getattr(source_kind(s), "registered", False) for s in sources):
        return
    raise UsageError(f"drop --weights {Path(weights).name}: it loads into a registered backbone (backbone:norm:view), "
                     f"and {Path(sources[0]).name} and {Path(sources[1]).name} carry their own weights, so it would be "
                     "ignored (or compare a spec built with it)")


def refuse_unused_seed_for(settings: Any, sources: list[str]) -> None:
    """--seed draws a registered model's synthetic weights (and a backbone's FPN, which no classifier checkpoint
    holds), torch's seed before a user's factory, and the seeded inputs: with --input and no side it draws for, it
    draws nothing, so `compare`/`explain` refuse it as `export` does (`compare a.pt2 b.pt2 --input x.npy --seed 4`
    agreed, exit 0, the seed recorded)."""
    from exporter.user_model import FACTORY_WEIGHTS
    from verify.api import source_kind
    from verify.detect.explain import is_detector_spec

    if settings.seed == 0 or settings.input_file is None or not sources:
        return
    synthetic = settings.weights == FACTORY_WEIGHTS
    for text in sources:
        if is_detector_spec(text):
            if synthetic:
                return
            continue
        kind = source_kind(text)
        if getattr(kind, "runs_user_code", False) or getattr(kind, "registered", False) and (
                synthetic or getattr(kind, "view", None) == "fpn"):
            return
    raise UsageError(f"drop --seed {settings.seed}: it draws synthetic weights, a factory's initial weights and seeded "
                     f"inputs, and here --input gives the inputs and no side draws weights from it")


def refuse_unused_timeout(timeout: float | None, sources: list[str]) -> None:
    """--timeout stops the worker that runs a user's own code (--model, file.py:factory); with no such side it stops
    nothing (`verify export -b resnet18 --timeout 0.01` ran 12 s and exited 0), so it is refused, not ignored."""
    from verify.api import source_kind

    if timeout is None or any(getattr(source_kind(s), "runs_user_code", False) for s in sources):
        return
    raise UsageError(f"--timeout {timeout:g} stops the worker that runs your own model's code (--model, "
                     "file.py:factory), and nothing here runs any, so it would be ignored; drop --timeout")


def refuse_detector_specs(*sources: str) -> None:
    """`verify compare` of a whole detector (name:norm, which explain takes): hunt 27, `verify compare
    keypointrcnn_resnet50_fpn:batch keypointrcnn_resnet50_fpn:frozen` said "Unknown backbone" and listed backbones."""
    from verify.detect.explain import is_detector_spec

    detector = next((source for source in sources if is_detector_spec(source)), None)
    if detector is not None:
        name = detector.partition(":")[0]
        raise UsageError(f"{detector} is a whole detector, which `verify compare` does not take (backbones and model "
                         f"files only): compare two detectors with `verify explain A B`, or judge one's exports with "
                         f"`verify export -b {name}`")


def detector_names() -> list[str]:
    from exporter.families.detectors import list_detectors

    return list_detectors()


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
    settings: Any = JUDGED_RUN,
    reports: Any = REPORTS,
) -> None:
    """Run any two models or artifacts on the same input and judge them on the outputs they share."""
    from verify.api import SIDES
    from verify.api import compare as run_compare
    from verify.explain.outputs import refuse_inside_export, refuse_overwriting_sources

    refuse_detector_specs(a, b)
    for flag, path in (("--json", reports.json), ("--junit", reports.junit), ("--markdown", reports.markdown)):
        refuse_inside_export(path, flag)
    refuse_unused_weights(settings.weights, [a, b])
    refuse_unused_seed_for(settings, [a, b])
    refuse_unused_timeout(timeout, [a, b])
    refuse_overwriting_sources([a, b, opt.weights_file(settings.weights)], json=reports.json, junit=reports.junit,
                               markdown=reports.markdown)

    start_reports("compare", json=reports.json, junit=reports.junit, markdown=reports.markdown)
    report = run_compare(a, b, settings, progress=progress_for(err_console), timeout=user_timeout(timeout),
                         runtime=runtime)
    if any(not pair.passed and {pair.a, pair.b} == set(SIDES) for pair in report.pairs) and not report.problems \
            and not settings.layers and not note_shape_mismatch(report, set(SIDES)):
        from verify.explain.isolate import name_culprits  # A and B differ: name the layers that differ on their own

        name_culprits(report, [(a, b)], settings, progress_for(err_console), user_timeout(timeout))
    _finish(report, reports, verbose)


def note_shape_mismatch(report: Any, sides: set[str]) -> bool:
    """Whether the failing pair between `sides` differs in an output's shape; each such output becomes a
    note saying what differs and what to do. Re-running layers alone cannot explain two shapes (review: compare of
    two models with differently shaped outputs noted "the difference builds up across layers")."""
    found = False
    for pair in report.pairs:
        if pair.passed or {pair.a, pair.b} != sides:
            continue
        for out in pair.outputs:
            if list(out.shape_a) != list(out.shape_b):
                found = True
                report.notes.append(f"{pair.a} vs {pair.b}: {out.name} is {tuple(out.shape_a)} in {pair.a} and "
                                    f"{tuple(out.shape_b)} in {pair.b}: they compute differently shaped outputs, so "
                                    "no layer was isolated; compare the same model (architecture, view) at the "
                                    "same --shape")
    return found


@handle_errors
@with_option_groups
def explain(
    a: Annotated[str | None, typer.Argument(
        callback=opt.check_source, metavar="A",
        help="Model spec, artifact or your own file.py:factory (imports and runs it) [default: "
             "resnet50:batch:trunk, the classifier's ResNet-50]")] = None,
    b: Annotated[str | None, typer.Argument(
        callback=opt.check_source, metavar="B",
        help="Model spec or artifact [default: resnet50:frozen:body, Faster R-CNN's backbone]")] = None,
    factor: opt.Factor = None,
    json_path: opt.JsonOut = None,
    timeout: opt.Timeout = None,
    isolate: Annotated[bool, typer.Option(
        "--isolate", help="Also re-run every layer of the non-torch side alone on the torch side's float64 inputs "
                          "and name the layers whose own computation differs, ranked by their own error over "
                          "their own float32 floor")] = False,
    settings: Any = FEED,
) -> None:
    """Say whether two models compute the same function, and where and why they part if not."""
    from dataclasses import replace

    from verify.detect.explain import is_detector_spec
    from verify.explain.equivalence import SEED_QUESTION, render_explanation
    from verify.explain.equivalence import explain as run_explain
    from verify.explain.outputs import refuse_inside_export, refuse_overwriting_sources
    from verify.report import write_json_report

    if (a is None) != (b is None):
        raise UsageError("Give both A and B, or neither to replay the seed question")
    refuse_unused_weights(settings.weights, [a, b] if a is not None else [])
    refuse_unused_seed_for(settings, [a, b] if a is not None else [])
    refuse_inside_export(json_path, "--json")
    refuse_overwriting_sources([a, b, opt.weights_file(settings.weights)], json=json_path)
    if is_detector_spec(a) or is_detector_spec(b):
        if isolate:
            raise UsageError("--isolate runs on a backbone or your own model against its export; drop it for "
                             "detectors")
        given = {"--timeout": timeout is not None, "--no-normalize": not settings.normalize}
        ignored = [flag for flag, set_ in given.items() if set_]
        if ignored:  # a detector runs no user code, and its own transform normalises its [0, 1] images
            raise UsageError(f"{ignored[0]} does not apply to whole detectors (they run no code of yours, and their "
                             f"own transform normalises the images), so it would be ignored; drop {', '.join(ignored)}")
        from verify.cli.detector import explain_detector

        shape = "x".join(map(str, settings.shape)) if settings.shape else None
        explain_detector(a, b, settings.weights, settings.seed, shape, factor, json_path, settings.input_file)
    settings = replace(settings, **opt.tolerance_part(factor=factor))
    a, b = a or SEED_QUESTION[0], b or SEED_QUESTION[1]
    refuse_unused_timeout(timeout, [a, b])
    start_reports("explain", json=json_path)
    result = run_explain(a, b, settings, progress=progress_for(err_console), timeout=user_timeout(timeout))
    render_explanation(result, out_console)
    data, code = result.to_dict(), result.exit_code
    if isolate:
        from verify.explain.isolate import isolate_report
        from verify.render.layers import render_isolation

        isolation = isolate_report(a, b, settings, progress=progress_for(err_console), timeout=user_timeout(timeout))
        render_isolation(isolation, out_console)
        # no layer re-run is no isolation: a check asked for and not reached is never a pass (as with --layers)
        data, code = {**data, "isolation": isolation.to_dict()}, max(code, 0 if isolation.passed else 1)
    if json_path:  # `passed` as every other report has it, the exit code's verdict (with --isolate, not `equivalent`)
        write_json_report({"command": "explain", "passed": code == 0, **data}, json_path)
        print_line(err_console, f"[dim]wrote {escape(str(json_path))}[/]")
    raise typer.Exit(code)


def refuse_reports_over_reads(trust: Any, reports: ReportPaths) -> None:
    """A report over the --verify-key or --checkpoint file is refused before any check, as the writer refuses it
    after them (verify/folder/checks.py): the reports asked for are cleared when the checks start."""
    import os

    from verify.folder.validate import read_inputs

    for path in (reports.json, reports.junit, reports.markdown):
        for what, source in read_inputs(trust.verify_key, trust.checkpoint).items():
            if path is not None and os.path.lexists(path) and os.path.exists(source) and os.path.samefile(path, source):
                raise UsageError(f"the report {path} is the {what} file this run read; write the report elsewhere "
                                 "(nothing was written)")


def _finish_checks(report: Any, reports: ReportPaths) -> None:
    from verify.folder.checks import render_checks, write_outputs

    render_checks(report, out_console)
    for path in write_outputs(report, reports.json, reports.junit, reports.markdown):
        print_line(err_console, f"[dim]wrote {escape(str(path))}[/]")
    raise typer.Exit(report.exit_code)


@handle_errors
@with_option_groups
def artifact(
    paths: Annotated[list[Path], typer.Argument(callback=opt.check_existing_paths,
                                                help="Export folders, or their manifest.json")],
    trust: Any = FOLDER_TRUST,
    layers: opt.ArtifactLayers = None,
    reports: Any = REPORTS,
    plugins: Any = RUNTIME_PLUGINS,
) -> None:
    """Check export folders: integrity, then each artifact against its goldens (CI validation)."""
    from verify.folder.validate import LAYERS_NEED_REBUILD, validate
    from verify.runtimes import RuntimeOptions

    if layers and not trust.rebuild:  # before anything is read
        raise UsageError(LAYERS_NEED_REBUILD)
    opt.outside_folders(paths, json=reports.json, junit=reports.junit, markdown=reports.markdown)
    refuse_reports_over_reads(trust, reports)
    start_reports("artifact", json=reports.json, junit=reports.junit, markdown=reports.markdown)
    _finish_checks(validate(paths, RuntimeOptions(plugins=plugins), verify_key=trust.verify_key,
                            trust_unsigned_code=trust.trust_unsigned_code, rebuild=trust.rebuild,
                            weights_file=trust.checkpoint, layers=layers), reports)


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
    trust: Any = FOLDER_TRUST,
    layers: opt.FolderLayers = False,
    reports: Any = REPORTS,
    plugins: Any = RUNTIME_PLUGINS,
) -> None:
    """Deployment check: loads on the provider asked for, matches its goldens, latency; GO or NO-GO."""
    from verify.folder.preflight import PreflightOptions
    from verify.folder.preflight import preflight as run_preflight
    from verify.runtimes import require_device

    opt.outside_folders([path], json=reports.json, junit=reports.junit, markdown=reports.markdown)
    refuse_reports_over_reads(trust, reports)
    try:  # no GPU at all: exit 2 before any check, not a NO-GO of an unsigned file after the integrity checks
        require_device(provider.value)
    except SetupError:
        raise SetupError("--provider cuda: CUDA is not available here (torch.cuda.is_available() is False and ONNX "
                         "Runtime has no CUDA provider); run on a machine with a GPU, or use --provider cpu") from None

    options = PreflightOptions(provider=provider.value, runtime=runtime, runs=runs, warmup=warmup,
                               max_latency_ms=max_latency_ms, tf32=tf32, plugins=plugins, rebuild=trust.rebuild,
                               weights_file=trust.checkpoint, layers=layers)
    start_reports("preflight", json=reports.json, junit=reports.junit, markdown=reports.markdown)
    _finish_checks(run_preflight(path, options, verify_key=trust.verify_key,
                                 trust_unsigned_code=trust.trust_unsigned_code), reports)


@handle_errors
def list_command() -> None:
    """List the registered backbones, whole detectors, norms, views, runtimes and formats (a line each, never
    wrapped: `verify list | grep` finds a name)."""
    from exporter.backbones import VIEWS
    from exporter.norms import NORMS
    from verify.runtimes import list_runtimes

    print_line(out_console, f"backbones: {', '.join(list_backbones())}")
    print_line(out_console, f"detectors (-b, whole): {', '.join(detector_names())}")
    print_line(out_console, "norms:")
    for name in NORMS:
        print_line(out_console, f"  {name:12s} {escape(NORMS.get(name).description)}")
    print_line(out_console, f"views: {', '.join(VIEWS.names())}")
    print_line(out_console, f"runtimes: {', '.join(list_runtimes())}")
    from exporter.formats import FORMATS, get_format
    from verify.runtimes import runtimes_for

    out_console.print("formats (file, runtimes, what loading it can execute):")
    for name in FORMATS:
        entry = get_format(name)
        out_console.print(f"  {name:12s} {entry.filename or '(in memory)'}; {', '.join(runtimes_for(name))}"
                          + (f"; {entry.executes}" if entry.executes else ""), highlight=False, soft_wrap=True)


def typed(ctx: typer.Context, parameter: str) -> bool:
    """Whether the command's `parameter` was given on the command line (or by its environment variable), not left to
    its default: `--norm frozen` typed for a detector without a frozen norm must be refused, never quietly taken as
    that detector's own default (review 31: `-b retinanet_resnet50_fpn_v2 --norm frozen` exported and judged its
    BatchNorm2d build, exit 0). Read by name: typer vendors its own click, whose ParameterSource is another class."""
    source = ctx.get_parameter_source(parameter)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")
