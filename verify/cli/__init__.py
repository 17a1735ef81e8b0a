"""`verify`: thin over the library (verify/api.py). `app` is the typer app, `main` the entry point; the commands live
in verify/cli/commands.py and verify/cli/matrix.py, what they share (errors, exit codes, consoles) in
verify/cli/base.py. Under `python -m verify.cli` this package is imported while Python locates its __main__
(`sys.argv[0]` is "-m" then): it imports nothing, so that the CLI loads under verify/__main__.py's guard, where a
Ctrl-C or SIGTERM is one line and 130 or 143 (surface 29: here, before that guard, it was a traceback and death by
SIGINT)."""

import sys

if sys.argv[:1] != ["-m"]:
    from verify.cli.app import app, main
    from verify.cli.base import Terminated, handle_errors

__all__ = ["Terminated", "app", "handle_errors", "main"]


def __getattr__(name: str) -> object:
    """The names above, loaded on first use where the import was left to verify/__main__.py."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module("verify.cli.base" if name in ("Terminated", "handle_errors")
                                           else "verify.cli.app"), name)
