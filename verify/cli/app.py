"""`verify`: the typer app, its commands registered by name, and the entry point."""

from __future__ import annotations

import signal
import sys

import typer

from exporter.errors import interrupt_in
from verify.cli import commands
from verify.cli.base import OneLineErrors, _on_sigint, _on_sigterm, interrupt_exit
from verify.cli.matrix import cache_app, matrix_app
from verify.cli.reduce import reduce as reduce_command

app = typer.Typer(
    cls=OneLineErrors,
    help="Export torchvision backbones and verify that every runtime computes the same thing.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: `[default: ...]` in help texts survives, and it stays fast
)

SHORT_HELP = {  # `verify --help` lists each command on one line: click cuts a longer text at ~60 characters with "..."
    "export": "Export a backbone, detector or your model; judge every runtime",
    "compare": "Run two models or files on one input and judge the pair",
    "explain": "Say whether two models compute the same function, and why",
    "artifact": "Check export folders: integrity, then each file vs goldens",
    "preflight": "Deployment check of one folder: provider, goldens, latency",
    "reduce": "Write the layer that differs most as a standalone ONNX piece",
    "list": "List backbones, detectors, norms, views, runtimes, formats",
    "matrix": "Every backbone x norm x view: one table, cached, parallel",
    "cache": "Where the cache is, its size; prune or clear it",
}

for _name, _command in (("export", commands.export), ("compare", commands.compare), ("explain", commands.explain),
                        ("artifact", commands.artifact), ("preflight", commands.preflight),
                        ("reduce", reduce_command), ("list", commands.list_command)):
    app.command(name=_name, short_help=SHORT_HELP[_name])(_command)
app.add_typer(matrix_app, short_help=SHORT_HELP["matrix"])
app.add_typer(cache_app, short_help=SHORT_HELP["cache"])


def main() -> None:
    """The `verify` entry point: SIGTERM ends a run as cleanly as Ctrl-C (staging removed, one line); the exit
    skips the interpreter's teardown (`exit_now`)."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    encodable_streams()
    undecodable = undecodable_argument(sys.argv[1:])
    if undecodable is not None:
        sys.stderr.write(f"error: {undecodable}\n")
        exit_now(2)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # an ignored SIGINT (a background job) stays so
        signal.signal(signal.SIGINT, _on_sigint)
    try:
        app()
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            exit_now(exc.code or 0)
        raise
    except BaseException as exc:  # noqa: B036 - an interrupt while typer builds the command, before parsing
        interrupt = interrupt_in(exc)
        if interrupt is None:
            raise
        exit_now(interrupt_exit(interrupt))  # not sys.exit: see verify/__main__.py `_interrupted`
    exit_now(0)


NEVER_FAILS = ("backslashreplace", "namereplace", "replace", "xmlcharrefreplace", "ignore")
"""The error handlers under which a stream writes any text (Python's own for stderr: backslashreplace)."""


def encodable_streams() -> None:
    """stdout and stderr write what their encoding cannot hold as `\\u2713`, never fail on it (surface 30: under a
    non-UTF-8 locale, LC_ALL=C with PYTHONCOERCECLOCALE=0 or PYTHONIOENCODING=ascii, a passing `verify compare` printed
    its table, then died on the summary's check mark: exit 2, "unexpected UnicodeEncodeError"). Python's own stderr
    does this already; stdout is strict by default, or surrogateescape under the C locale, which fails as well."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)  # None where the stream is closed (`>&-`) or replaced
        if reconfigure is not None and getattr(stream, "errors", None) not in NEVER_FAILS:
            try:
                reconfigure(errors="backslashreplace")
            except (OSError, ValueError):
                pass


def undecodable_argument(arguments: list[str]) -> str | None:
    """The one-line refusal of an argument holding bytes the locale's encoding cannot decode (Python keeps them as lone
    surrogates), or None. torch, onnx and ONNX Runtime take paths as UTF-8 text and refuse such a string deep in the
    run (surface 30: `--out 'art ü'` under LC_ALL=C with PYTHONUTF8=0 failed after the eager runs, "torch.jit.load:
    incompatible function arguments", and the ONNX file was "not a readable ONNX model")."""
    import os

    for argument in arguments:
        try:
            argument.encode("utf-8")
        except UnicodeEncodeError:
            return (f"the argument {os.fsencode(argument)!r} is not text in this locale's encoding "
                    f"({sys.getfilesystemencoding()}), and torch and onnx cannot open such a path: run under a "
                    "UTF-8 locale (e.g. LC_ALL=C.UTF-8) or use an ASCII name")
    return None


def exit_now(code: int) -> None:
    """End the process with `code` once everything a normal exit does for the user is done: the atexit handlers
    (children stopped, temporary folders removed, logs flushed) and stdout/stderr flushed. What is skipped is the
    interpreter's teardown of torch's and ONNX Runtime's modules and of the run's objects, one by one: 1.1 s after
    the last atexit handler of every `verify export` (measured), for nothing anyone reads. A thread that is not a
    daemon would be waited for by a normal exit: then the normal exit it is."""
    import atexit
    import os
    import threading

    if any(t is not threading.main_thread() and not t.daemon and t.is_alive() for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # a reader gone, a closed or missing stream: nothing to tell
            pass
    os._exit(code)
