"""`verify`: the typer app, its commands registered by name, and the entry point."""

from __future__ import annotations

import signal
import sys

import typer

from exporter.errors import interrupt_in
from verify.cli import commands
from verify.cli.base import OneLineErrors, _on_sigterm, interrupt_exit
from verify.cli.matrix import cache_app, matrix_app
from verify.cli.reduce import reduce as reduce_command

app = typer.Typer(
    cls=OneLineErrors,
    help="Export torchvision backbones and verify that every runtime computes the same thing.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: `[default: ...]` in help texts survives, and it stays fast
)

for _name, _command in (("export", commands.export), ("compare", commands.compare), ("explain", commands.explain),
                        ("artifact", commands.artifact), ("preflight", commands.preflight),
                        ("reduce", reduce_command), ("list", commands.list_command)):
    app.command(name=_name)(_command)
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
