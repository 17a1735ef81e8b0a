"""`verify reduce`: write the smallest failing piece of an ONNX file, or check a written piece alone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from exporter.errors import UsageError
from verify.cli import options as opt
from verify.cli.base import err_console, handle_errors, out_console
from verify.judge.compare import AUTO_FACTOR
from verify.pipeline.isolation import USER_CODE_TIMEOUT
from verify.render.console import print_line, progress_for

PieceOut = Annotated[Path | None, typer.Option(
    "--out", "-o", callback=lambda v: opt.check_output_folder(v) if v is not None else v,
    help="Folder for piece.onnx and piece.npz (its inputs, the reference output, its floor)")]
CheckPiece = Annotated[Path | None, typer.Option(
    "--check", callback=lambda v: v if v is None else _piece_file(v),
    help="Rerun a written piece.onnx alone under ONNX Runtime against its stored reference (piece.npz beside it)")]


def _piece_file(path: Path) -> Path:
    """--check takes a written piece.onnx: there, and a regular file (a folder was told it "needs dir.npz")."""
    opt._require_existing(path, "a piece.onnx written by `verify reduce A B --out FOLDER`", folders=False)
    return path


@handle_errors
def reduce(
    a: Annotated[str | None, typer.Argument(callback=opt.check_source, metavar="[A]",
                                            help="The ONNX file, or the model it was exported from")] = None,
    b: Annotated[str | None, typer.Argument(callback=opt.check_source, metavar="[B]",
                                            help="The other side")] = None,
    out: PieceOut = None,
    check: CheckPiece = None,
    weights: opt.Weights = "synthetic",
    seed: opt.Seed = 0,
    shape: opt.Shape = None,
    input_path: opt.InputPath = None,
    normalize: opt.Normalize = True,
    factor: opt.Factor = None,
    timeout: opt.Timeout = None,
) -> None:
    """Write the layer whose own computation differs most as a standalone .onnx + .npz, and check it alone."""
    from verify.cli.commands import refuse_unused_timeout
    from verify.explain.reduce import check_piece, reduce_pair
    from verify.render.layers import render_isolation

    if check is not None:
        if a is not None or b is not None or out is not None:
            raise UsageError("--check takes a written piece alone; give A B --out FOLDER or --check PIECE.onnx")
        given = {"--weights": weights != "synthetic", "--seed": seed != 0, "--shape": shape is not None,
                 "--input": input_path is not None, "--no-normalize": not normalize, "--timeout": timeout is not None}
        unused = [flag for flag, set_ in given.items() if set_]
        if unused:  # the piece runs on the inputs its .npz stores: they would be silently ignored
            raise UsageError(f"--check runs the piece on the inputs stored in its .npz, so {', '.join(unused)} would "
                             f"be ignored; drop {', '.join(unused)} (--factor is the only option --check takes)")
        result = check_piece(check, factor or AUTO_FACTOR)
        mark = "[bold red]✗[/] " if result.reproduces else "[bold green]✓[/] "
        print_line(out_console, mark + escape(result.text()))
        raise typer.Exit(result.exit_code)
    if a is None or b is None or out is None:
        raise UsageError("Give A, B and --out FOLDER (or --check PIECE.onnx)")
    refuse_unused_timeout(timeout, [a, b])
    settings = opt.run_settings(weights, seed, shape, input_path, normalize, opt.Device.cpu, None, None, None, None,
                                factor)
    reduction = reduce_pair(a, b, out, settings, progress=progress_for(err_console),
                            timeout=timeout or USER_CODE_TIMEOUT)
    render_isolation(reduction.isolation, out_console, limit=3)
    if reduction.check is None:
        print_line(out_console, "nothing to reduce: no layer differs on its own")
        raise typer.Exit(0)
    print_line(out_console, f"wrote {escape(str(reduction.piece))} and {escape(str(reduction.data))}")
    mark = "[bold red]✗[/] " if reduction.check.reproduces else "[yellow]![/] "
    print_line(out_console, mark + escape(reduction.check.text()))
    raise typer.Exit(reduction.exit_code)
