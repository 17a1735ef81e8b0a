"""`python -m verify`, `python -m verify.cli` and the `verify` script (pyproject.toml [project.scripts]
`verify.__main__:main`): the CLI of verify/cli/app.py `main`, imported here, where a Ctrl-C or SIGTERM can be caught.
Review 29: one during that import (typer, the commands, ~0.3-1 s) printed a traceback and the process died by SIGINT
(return code -2): it imported before any code of ours ran (`from verify.cli import main`); surface 29: a SIGTERM then
killed it silently (-15), and `python -m verify.cli` was not guarded at all. This module imports nothing but `signal`
and `sys`; the first thing it does is claim the report paths the command line names (verify/render/claim.py)."""

from __future__ import annotations

import signal
import sys


def main() -> None:
    """The CLI, its import guarded: a Ctrl-C while it loads ends in `error: interrupted` and exit 130, a SIGTERM in
    `error: terminated (SIGTERM)` and 143, as during a run; also when the import swallowed the KeyboardInterrupt where
    it landed and failed otherwise (review 28: a half-imported numpy). An ignored SIGINT (a background job) or SIGTERM
    stays ignored."""
    _standard_streams_held()
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
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:  # app's main installs its own once loaded
        signal.signal(signal.SIGTERM, remember)
    sys.unraisablehook, unraisable_hook = quiet, sys.unraisablehook
    try:
        from verify.render.claim import claim_report_paths

        claim_report_paths(sys.argv[1:])  # an earlier run's report never outlives this run's first moment
        from verify.cli.app import main as run
    except BaseException as exc:  # noqa: B036 - any error an interrupted import turned into
        if interrupted or isinstance(exc, KeyboardInterrupt):
            _interrupted(interrupted, claim=True)
        raise
    finally:
        sys.unraisablehook = unraisable_hook
    if interrupted:
        _interrupted(interrupted, claim=True)
    if ours:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # app's main installs its own, as it did before
    try:
        run()
    except KeyboardInterrupt:  # one landing before app's main has its handlers in place
        _interrupted(interrupted)


def _standard_streams_held() -> None:
    """File descriptors 0-2 each open, on the null device where the caller closed one (`verify ... >&-`, `<&-`), and
    sys.stdout/sys.stderr streams on them. Surface 30: with stdout closed a passing `verify compare` ended in a
    traceback and exit 1 (sys.stdout is None); and a closed descriptor is the next file opened, so a report or model
    file would have taken fd 1 or 2 and whatever native code prints there."""
    import os

    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            try:
                null = os.open(os.devnull, os.O_RDWR)
            except OSError:
                continue
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    for name, fd in (("stdout", 1), ("stderr", 2)):
        if getattr(sys, name) is None:
            try:
                setattr(sys, name, open(fd, "w", encoding="utf-8", errors="backslashreplace", closefd=False))
            except OSError:
                pass


def _interrupted(signals: list[int], claim: bool = False) -> None:
    """The line and exit code of verify/cli/base.py `interrupt_exit` (143 after SIGTERM, else 130), without importing
    it: a second signal is ignored from here on. With `claim`, an interrupt that landed before or inside the claim of
    the report paths (its own import) claims them now, signals ignored (measured: a Ctrl-C 0.06 s in exited 130
    beside the earlier run's pass). The exit is verify/cli/app.py `exit_now`'s (atexit handlers, then
    `os._exit`): one that landed while a module exec'd generated source (a dataclass's `__init__`) left CPython's
    "unhandled KeyboardInterrupt" mark set though it was caught, and a normal exit then killed the process with SIGINT
    (return code -2 after `error: terminated (SIGTERM)`, 1 run in 12 at 0.1 s, measured)."""
    import atexit
    import os

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    terminated = signal.SIGTERM in signals
    if claim:
        try:
            from verify.render.claim import claim_report_paths

            claim_report_paths(sys.argv[1:])
        except Exception:  # the interrupt's line and exit code come first
            pass
    try:
        sys.stderr.write("error: terminated (SIGTERM)\n" if terminated else "error: interrupted\n")
    except (OSError, ValueError, AttributeError):  # a closed stream: the exit code still says it
        pass
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # a closed or missing stream
            pass
    os._exit(128 + (signal.SIGTERM if terminated else signal.SIGINT))


if __name__ == "__main__":
    main()
