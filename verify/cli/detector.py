"""`verify export -b <detector>`: the whole detector exported to TorchScript and ONNX, judged before NMS
(dense head tensors) and after NMS (detections matched by IoU) by verify/detect/check.py, rendered to the
terminal, --json, --junit, --markdown and --html (verify/render/detections.py). The export command parses;
`export_detector` takes the parsed values; any option outside SUPPORTED_OPTIONS is refused by the command.
As for a backbone, the ONNX file takes any image size unless --static; then --input images keep their own sizes
(the detector's transform resizes them, as deployed) unless --shape is given."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from exporter.errors import UsageError
from verify.cli.base import err_console, out_console

if TYPE_CHECKING:
    import numpy as np

    from verify.detect.report import DetectorReport

SUPPORTED_OPTIONS = ("--norm", "--weights", "--seed", "--shape", "--input", "--format", "--out", "--overwrite",
                     "--factor", "--json", "--junit", "--markdown", "--html", "--static", "--sign-key", "--layers",
                     "--no-layers")
"""What a whole detector applies; the export command refuses every other option given (never ignored silently)."""
DEFAULT_SHAPE = (1, 3, 320, 320)


def refuse_unsupported(given: list[str]) -> None:
    """`given`: the export options the user set; the first one a detector does not apply is a usage error."""
    refused = [flag for flag in given if flag not in SUPPORTED_OPTIONS]
    if refused:  # a tolerance or a signature asked for and not applied would mislead
        raise UsageError(f"{refused[0]} is not supported for a whole detector yet (it takes "
                         f"{', '.join(SUPPORTED_OPTIONS)}); drop it")


def resolve_norm(name: str, norm: str | None) -> str:
    """The norm `name` is built with: `norm` as given (refused in one line when the detector has none of that name),
    or None (not given): the detector's own default (`frozen` where it has one, else what its builder makes)."""
    from exporter.families.detectors import DETECTORS

    detector = DETECTORS.get(name)
    if norm is None:
        return detector.default_norm
    if norm not in detector.norms:
        raise UsageError(f"{name} has no norm {norm!r}; choose one of: {', '.join(detector.norms)}")
    return norm


def _formats(formats: list[str] | None) -> tuple[str, ...]:
    from verify.detect.export import DEFAULT_FORMATS

    chosen = tuple(formats) if formats else DEFAULT_FORMATS
    unknown = [f for f in chosen if f not in DEFAULT_FORMATS]
    if unknown:
        raise UsageError(f"Detectors export to {' and '.join(DEFAULT_FORMATS)} (legacy exporter) only; drop "
                         f"--format {unknown[0]}")
    return chosen


def _check_paths(folder: Path, overwrite: bool, reports: dict[str, Path | None],
                 reads: dict[str, Path | None]) -> None:
    """Usage errors before any work: `folder` there without --overwrite, reports that clash or lie inside the folder
    the export replaces, and files it reads (`reads`: flag -> path) inside it, which --overwrite would delete."""
    from verify.cli import options as opt

    if folder.exists() and not overwrite:
        raise UsageError(f"{folder} already exists; pass --overwrite to replace it, or another --out")
    opt.distinct_outputs(**reports)
    opt.reports_apart_from_created_folders({f"--{flag}": path for flag, path in reports.items()},
                                           {"the export folder": folder})
    for flag, path in reports.items():
        if path and path.resolve().is_relative_to(folder.resolve()):
            raise UsageError(f"--{flag} {path} is inside the export folder {folder}, which the export replaces; "
                             "write it elsewhere")
    for flag, path in reads.items():  # before: --overwrite deleted the --input images it had just judged (exit 0)
        if path is not None and path.exists() and path.resolve().is_relative_to(folder.resolve()):
            raise UsageError(f"{flag} {path} is inside the export folder {folder}, which the export replaces as a "
                             "whole: put it elsewhere (or pass --out elsewhere)")
        clash = next((f"--{name} {report}" for name, report in reports.items() if report and path is not None
                      and path.is_file() and report.resolve() == path.resolve()), None)
        if clash:  # before: `--sign-key ci.pem --junit ci.pem` signed, agreed, then wrote the XML over the key
            raise UsageError(f"{clash} is the file {flag} reads; write the report elsewhere")
    if overwrite:  # an export folder only, never a folder of anything else (as backbone exports; hunt 12a)
        from verify.api import require_export_folder

        require_export_folder(folder)


def export_detector(name: str, norm: str | None, weights: str, seed: int, shape: str | None, input_path: Path | None,
                    formats: list[str] | None, out: Path, factor: float | None, json_path: Path | None = None,
                    overwrite: bool = False, junit: Path | None = None, markdown: Path | None = None,
                    html: Path | None = None, dynamic: bool = True, sign_key: Path | None = None,
                    layers: bool | None = None) -> None:
    """Export, run and judge the detector `name`; print one line per pair, write the reports asked for, and
    exit with the verdict's code (0 all agree, 1 a failure). `dynamic`: ONNX for any image size. The folder
    proves itself (verify/detect/folder.py: goldens, manifest, and a signature with `sign_key`). `layers`: the layer
    verdict asked for (--layers), refused (--no-layers) or by default (None: best effort, hunt 23b)."""
    import warnings

    from exporter.fsio import staged_folder
    from exporter.spec import parse_shape
    from verify.detect.check import check_inputs, verify_detector
    from verify.detect.folder import write_detector_folder
    from verify.render.console import print_line
    from verify.render.text import markup
    from verify.settings import refuse_unused_seed

    norm = resolve_norm(name, norm)
    refuse_unused_seed(seed, weights, input_path)
    size = parse_shape(shape) if shape else DEFAULT_SHAPE
    chosen = _formats(formats)
    folder = out / f"{name}-{norm}"
    _check_paths(folder, overwrite, {"json": json_path, "junit": junit, "markdown": markdown, "html": html},
                 {"--input": input_path, "--weights": None if weights == "synthetic" else Path(weights),
                  "--sign-key": sign_key})
    if sign_key is not None:
        from exporter.signing import check_private_key

        check_private_key(sign_key)  # a usage error, before the detector is built
    from verify.render import start_reports

    start_reports("export", json=json_path, junit=junit, markdown=markdown, html=html)
    images = None
    if input_path is not None and shape is None and not dynamic and input_path.suffix.lower() == ".npy":
        # an array is not resized: with no --shape its own shape is the export's, as a backbone's --input .npy is
        # (review 20: `--static --input two.npy` said "--shape asks 1x3x320x320; drop --shape" with no --shape given)
        images = load_images(input_path, None)
        size = (len(images), *images[0].shape) if images else size
    elif input_path is not None:
        images = load_images(input_path, size if shape or not dynamic else None)  # static: one size
    check_inputs(name, size, images)  # before any folder is made
    with staged_folder(folder) as staging, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation, once per call
        report = verify_detector(name, norm, size, weights, seed, chosen, out=staging, factor=factor, images=images,
                                 dynamic=dynamic, layers=layers,
                                 progress=lambda what: print_line(err_console, f"[dim]{markup(what)}[/]"))
        identity = {"detector": name, "norm": norm, "weights": weights, "seed": seed, "formats": list(chosen),
                    "dynamic": dynamic, "shape": list(size), "images_sha256": images_sha256(report.images)}
        if not write_detector_folder(staging, report, identity, sign_key):
            err_console.print("[dim]no manifest written: the export has no file or no floor to prove[/]")
    report.files = published(report.files, staging, folder)
    for row in report.rows():
        mark = "ok  " if row.passed else "FAIL"
        print_line(out_console, f"{mark} {markup(row.level)}  {markup(row.pair)}  {markup(row.named_text)}")
    for note in report.notes:
        print_line(err_console, f"[dim]note: {markup(note)}[/]")
    print_line(out_console, ("[bold green]✓ " if report.passed else "[bold red]✗ ") + markup(report.summary()) + "[/]")
    for path in write_outputs(report, json_path, junit, markdown, html):
        print_line(err_console, f"[dim]wrote {escape(str(path))}[/]")
    raise typer.Exit(report.exit_code)


def published(files: dict[str, str], staging: Path, folder: Path) -> dict[str, str]:
    """Each file's path in `folder`, where the staging folder it was written and judged in became it: the report
    named the staging folder, gone once the run ended (determ 47)."""
    return {fmt: str(folder / Path(path).relative_to(staging)) if Path(path).is_relative_to(staging) else path
            for fmt, path in files.items()}


def images_sha256(images: list[np.ndarray]) -> str:
    """One digest over the judged images' shapes and bytes (what the folder's goldens were made from)."""
    import hashlib

    digest = hashlib.sha256()
    for image in images:
        digest.update(repr(image.shape).encode() + image.tobytes())
    return digest.hexdigest()


def load_images(path: Path, size: tuple[int, ...] | None) -> list[np.ndarray]:
    """Each image (3 x H x W in [0, 1]) in `path`, resized to `size`'s H x W when given."""
    from verify.inputs import load_inputs

    return [image for item in load_inputs(path, size, normalize=False) for image in item.array]


def write_outputs(report: DetectorReport, json_path: Path | None, junit: Path | None, markdown: Path | None,
                  html: Path | None) -> list[Path]:
    """Each report file asked for, through the writers every command shares; the paths written."""
    from exporter.fsio import write_text_atomic
    from verify.render.detections import detector_html, detector_junit, detector_markdown
    from verify.render.markdown import write_markdown
    from verify.report import write_json_report

    written = []
    if json_path:
        write_json_report(report.to_dict(), json_path)
        written.append(json_path)
    if junit:
        write_text_atomic(junit, detector_junit(report))
        written.append(junit)
    if markdown:
        write_markdown(markdown, detector_markdown(report))
        written.append(markdown)
    if html:
        write_text_atomic(html, detector_html(report))
        written.append(html)
    return written


def explain_detector(a: str, b: str, weights: str, seed: int, shape: str | None, factor: float | None,
                     json_path: Path | None = None, input_path: Path | None = None) -> None:
    """`verify explain A B` where A or B names a detector: both must be detectors (name:norm); on `input_path`'s
    one image when given (resized to `shape`'s H x W when that is given too), else on the seeded one."""
    from exporter.spec import parse_shape
    from verify.detect.explain import explain_detectors, is_detector_spec
    from verify.explain.equivalence import render_explanation
    from verify.render.console import print_line
    from verify.report import write_json_report

    other = next((spec for spec in (a, b) if not is_detector_spec(spec)), None)
    if other is not None:
        raise UsageError(f"explain compares a detector with another detector (name:norm); {other} is not one")
    size = parse_shape(shape) if shape else None
    image = None
    from verify.render import start_reports

    start_reports("explain", json=json_path)
    if input_path is not None:
        images = load_images(input_path, size)
        if len(images) != 1:
            raise UsageError(f"explain judges one detector image; {input_path} holds {len(images)}: pass one")
        image = (images[0], input_path.name)
    result = explain_detectors(a, b, weights, seed, size or DEFAULT_SHAPE, factor, image)
    render_explanation(result, out_console)
    if json_path:
        write_json_report({"command": "explain", "passed": result.exit_code == 0, **result.to_dict()}, json_path)
        print_line(err_console, f"[dim]wrote {escape(str(json_path))}[/]")
    raise typer.Exit(result.exit_code)
