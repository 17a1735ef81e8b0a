"""`python -m verify` and the `verify` script (pyproject.toml [project.scripts] `verify.__main__:main`): the CLI of
verify/cli/app.py `main`, imported here, where a Ctrl-C can be caught. Review 29: one during that import (typer, the
commands, ~0.3-1 s) printed a traceback and the process died by SIGINT (return code -2): it imported before any code
of ours ran (`from verify.cli import main`). This module imports nothing but `signal` and `sys`."""

from __future__ import annotations

import signal
import sys


def main() -> None:
    """The CLI, its import guarded: a Ctrl-C while it loads ends in `error: interrupted` and exit 130, as one during
    a run does; also when the import swallowed the KeyboardInterrupt where it landed and failed otherwise (review 28:
    a half-imported numpy). An ignored SIGINT (a background job) stays ignored."""
    interrupted: list[int] = []

    def remember(signum: int, frame: object) -> None:
        interrupted.append(signum)
        raise KeyboardInterrupt

    def quiet(unraisable: object, _report=sys.unraisablehook) -> None:  # "Exception ignored in" a __del__ it hit
        if not isinstance(getattr(unraisable, "exc_value", None), KeyboardInterrupt):
            _report(unraisable)

    ours = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if ours:
        signal.signal(signal.SIGINT, remember)
    sys.unraisablehook, unraisable_hook = quiet, sys.unraisablehook
    try:
        from verify.cli.app import main as run
    except BaseException as exc:  # noqa: B036 - any error an interrupted import turned into
        if interrupted or isinstance(exc, KeyboardInterrupt):
            _interrupted()
        raise
    finally:
        sys.unraisablehook = unraisable_hook
    if interrupted:
        _interrupted()
    if ours:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # app's main installs its own, as it did before
    try:
        run()
    except KeyboardInterrupt:  # one landing before app's main has its handlers in place
        _interrupted()


def _interrupted() -> None:
    """The line and exit code of verify/cli/base.py `interrupt_exit` for Ctrl-C, without importing it: a second
    Ctrl-C is ignored from here on."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        sys.stderr.write("error: interrupted\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed stream: the exit code still says it
        pass
    raise SystemExit(128 + signal.SIGINT)


if __name__ == "__main__":
    main()
