"""`verify`: thin over the library (verify/api.py). `app` is the typer app, `main` the entry point; the commands live
in verify/cli/commands.py and verify/cli/matrix.py, what they share (errors, exit codes, consoles) in
verify/cli/base.py."""

from verify.cli.app import app, main
from verify.cli.base import Terminated, handle_errors

__all__ = ["Terminated", "app", "handle_errors", "main"]
