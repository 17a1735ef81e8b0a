"""What every command of the CLI shares: the consoles, the one-line error, the exit codes for errors and
interrupts (0 all agree, 1 a disagreement, 2 usage or environment error, 130/143 Ctrl-C/SIGTERM)."""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from exporter.errors import VerifyError, interrupt_in
from exporter.fsio import PUBLISH_CHECKS
from exporter.messages import one_line, strip_unsafe_advice
from verify.render import reports_failed, reports_finished, settle_reports
from verify.render.console import make_console
from verify.render.text import terminal_text

# click's base exception, wherever this typer keeps it (its own vendored copy, or click itself)
ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

out_console = make_console()
err_console = make_console(stderr=True)


def print_error(message: str) -> None:
    """The one line every failure prints: flattened, bounded, without unsafe advice."""
    # a message may quote a file's own text (a checkpoint's key): its control characters are shown, never sent
    line = terminal_text(one_line(strip_unsafe_advice(message)))
    err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
    reports_failed(line)  # what a report asked for says, when the run had started


def settle_report_files(code: int) -> None:
    """A run whose reports were asked for and that ends without its verdict's code writes them as failures
    (verify/render `settle_reports`); nothing more is printed: a failure stays one line on stderr."""
    settle_reports(code)


UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


class OneValueOptions(TyperGroup):
    """A group whose commands refuse a single-value option given more than once: click keeps the last one, so
    `verify export -b fasterrcnn_resnet50_fpn -b resnet18` judged resnet18 alone and exited 0, the detector dropped
    without a word (found by hunt 10a)."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        name, command, rest = super().resolve_command(ctx, args)
        if command is not None:  # parsed in the command's own context: the group's stops at the first argument
            own = type(ctx)(command, parent=ctx, info_name=name)  # (`compare A B --json x --json y` passed)
            _refuse_repeated_options(command, own, rest, f"{ctx.command_path} {name}")
        return name, command, rest


def _refuse_repeated_options(command: Any, ctx: Any, args: list[str], path: str) -> None:
    from collections import Counter

    try:
        values, _, order = command.make_parser(ctx).parse_args(args=list(args))
    except ClickException:
        return  # the command's own parse says what is wrong
    _refuse_empty_values(order, values, path)
    options = [p for p in order if getattr(p, "param_type_name", "") == "option"
               and not getattr(p, "multiple", False) and not getattr(p, "count", False)]
    counts = Counter(id(p) for p in options)
    for option in options:
        if counts[id(option)] > 1:
            names = "/".join(option.opts)
            raise UsageError(f"{names} was given {counts[id(option)]} times; it takes one value and only the last "
                             "would count: give it once" + ("; several backbones: verify matrix -b A -b B"
                                                            if option.name == "backbone" else "")
                             + f" (see '{path} --help')")


def _refuse_empty_values(order: list[Any], values: dict[str, Any], path: str) -> None:
    """An option given an empty text is refused: `--model ""` (an unset variable in a CI script) verified the default
    resnet50 and could exit 0; `--out ""` wrote into the working folder and `--input ""` read it (review 25)."""
    for option in order:
        kind = getattr(option, "param_type_name", "")
        # a path argument too (`verify artifact ""` checked the working folder); a spec argument refuses "" itself
        if getattr(option, "is_flag", False) or not (kind == "option" or kind == "argument" and _takes_paths(option)):
            continue
        given = values.get(option.name)
        if given == "" or isinstance(given, (list, tuple)) and "" in given:
            names = "/".join(option.opts) if kind == "option" else f"the argument {option.name.upper()}"
            raise UsageError(f"{names} was given an empty value; give it a value or leave it out (an unset "
                             f"variable in a script?) (see '{path} --help')")


def _takes_paths(parameter: Any) -> bool:
    """Whether a parameter's annotation is a path or a list of them (typer keeps it as `bare_type()`: the annotation's
    text where the command's module postpones annotations, `list[Path]`)."""
    import re

    bare = getattr(parameter, "bare_type", None)
    annotation = bare() if callable(bare) else None
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return re.search(r"\b(Path|PosixPath|WindowsPath)\b", text) is not None


class OneLineErrors(OneValueOptions):
    """typer/click parse errors (unknown option, missing argument, bad value) as one `error:` line and
    exit 2, instead of click's usage box; also what `main()` and CliRunner both go through."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            result = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                                  standalone_mode=False, **extra)
            code = result if isinstance(result, int) else 0
            # typer's bare Exit(130), outside commands; or a SIGTERM whose exception was swallowed where it landed
            # (measured: inside importlib's module-lock callback, "Exception ignored", and the run exited 0)
            interrupted = _received["SIGTERM"] or _received["SIGINT"] or code == 128 + signal.SIGINT
            if not _received["reported"] and interrupted:
                code = interrupt_exit(Terminated() if _received["SIGTERM"] else KeyboardInterrupt())
        except ClickException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare `verify`: the help, as click shows it
                exc.show()
                code = exc.exit_code
            else:
                ctx = getattr(exc, "ctx", None)
                hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
                print_error(exc.format_message() + hint)
                code = 2
        except BaseException as exc:  # noqa: B036 - an interrupt anywhere (parsing included) gets its own code
            interrupt = interrupt_in(exc)
            if interrupt is None and not isinstance(exc, Exception):
                raise
            if interrupt is not None:
                code = interrupt_exit(interrupt)
            elif isinstance(exc, typer.Abort):
                print_error("aborted")
                code = 1
            else:  # a failure while the command line is parsed (a callback's bug): one line and 2, not a traceback
                code = unexpected_exit(exc)
        settle_report_files(code)
        if not standalone_mode:
            return code
        sys.exit(code)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Python runs next, so staging folders are removed as on Ctrl-C."""


_received = {"SIGTERM": False, "SIGINT": False, "reported": False}
"""Set by the handler: typer reports an interrupt during parsing as a bare exit code 130, whichever it was."""


def _on_sigterm(signum: int, frame: Any) -> None:
    _received["SIGTERM"] = True
    if not _deferred(signum, frame):
        raise Terminated


def _on_sigint(signum: int, frame: Any) -> None:
    """Ctrl-C remembered as SIGTERM is: a KeyboardInterrupt swallowed where it landed (a half-imported numpy, measured
    by review 28) ended the run as `unexpected AttributeError ...` and exit 2, not 130."""
    _received["SIGINT"] = True
    if not _deferred(signum, frame):
        raise KeyboardInterrupt


IMPORT_GRACE_SECONDS = 10.0
"""How long a signal that lands inside an import waits for it to end before it is raised there all the same."""
RESEND_SECONDS = 0.05
"""A signal sent again is sent again after this long until its handler ran: one that arrived as the main thread let
the GIL go to block (the moment the sending thread gets it) does not interrupt that call, and would wait for it."""
_DEFERRED: dict[str, Any] = {"since": None, "thread": None}


def _deferred(signum: int, frame: Any) -> bool:
    """Whether the signal lands inside an import and is sent again once the import is over (at most
    IMPORT_GRACE_SECONDS later): review 30, a SIGTERM raised where `import torch` had C++ run Python
    (torch._C._c10d_init) crossed pybind11 code that cannot pass an exception on: "terminate called after throwing
    an instance of 'pybind11::error_already_set'", SIGABRT (exit 134, 2 runs of 9 at 1 s under python -m
    verify.cli), no line, no failure report."""
    import threading
    import time

    since = _DEFERRED["since"]
    if not _importing(frame) or since is not None and time.monotonic() - since > IMPORT_GRACE_SECONDS:
        _DEFERRED["since"] = None  # tells the sending thread the handler ran
        return False
    if since is None:
        _DEFERRED["since"] = time.monotonic()
    if _DEFERRED["thread"] is None or not _DEFERRED["thread"].is_alive():
        _DEFERRED["thread"] = threading.Thread(target=_send_after_import, args=(signum, threading.main_thread().ident),
                                               daemon=True)
        _DEFERRED["thread"].start()
    return True


def _importing(frame: Any) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _send_after_import(signum: int, main: int) -> None:
    """The signal again, to the main thread, once it is out of its import (or the grace is over), until its handler
    ran there; no longer once its handler is not ours (the run ignores it by then: resent, it would never run)."""
    import time

    while (since := _DEFERRED["since"]) is not None:
        if signal.getsignal(signum) not in (_on_sigterm, _on_sigint):  # ignored meanwhile (a run's last reports)
            _DEFERRED["since"] = None
            return
        if _importing(sys._current_frames().get(main)) and time.monotonic() - since <= IMPORT_GRACE_SECONDS:
            time.sleep(IMPORT_POLL_SECONDS)
            continue
        signal.pthread_kill(main, signum)
        time.sleep(RESEND_SECONDS)


IMPORT_POLL_SECONDS = 0.01


def _refuse_publishing_after_sigterm() -> None:
    """exporter.fsio's PUBLISH_CHECKS: a run a SIGTERM ended publishes no folder, also where the Terminated its handler
    raised was swallowed where it landed ("Exception ignored in" a weakref callback or `__del__`) and the run went on
    to exit 143 beside a published folder (review 16)."""
    if _received["SIGTERM"]:
        raise Terminated


PUBLISH_CHECKS.append(_refuse_publishing_after_sigterm)


def interrupt_exit(interrupt: KeyboardInterrupt) -> int:
    """One line and the conventional code: 143 after SIGTERM, 130 after Ctrl-C, wherever it landed."""
    _received["reported"] = True
    if isinstance(interrupt, Terminated):
        print_error("terminated (SIGTERM)")
        return 128 + signal.SIGTERM
    print_error("interrupted")
    return 128 + signal.SIGINT


def debug_enabled() -> bool:
    """VERIFY_DEBUG=1 (or true/yes/on) shows tracebacks; 0, false, no, off or empty do not."""
    return os.environ.get("VERIFY_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def handle_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Our errors become one line and an exit code; no traceback unless VERIFY_DEBUG is set."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            result = command(*args, **kwargs)
        except typer.Exit as exc:
            reports_finished(exc.exit_code)  # the command's own verdict (its reports written)
            raise
        except typer.Abort:
            raise
        except BaseException as exc:
            interrupt = interrupt_in(exc)
            if interrupt is not None:
                raise typer.Exit(interrupt_exit(interrupt)) from None
            if not isinstance(exc, Exception):
                raise
            raise typer.Exit(unexpected_exit(exc)) from None
        reports_finished(0)
        return result

    return wrapper


def unexpected_exit(exc: Exception) -> int:
    """One line for a failure, and its exit code: ours say what to do; a bug or an unforeseen failure is still one
    line, and 2, not "1" (with VERIFY_DEBUG, the traceback as well; never another exit code)."""
    if debug_enabled():
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, VerifyError):
        print_error(str(exc))
        return exc.exit_code
    first = one_line((str(exc).strip().splitlines() or [""])[-1], 200)
    print_error(f"unexpected {type(exc).__name__}: {first} (rerun with VERIFY_DEBUG=1 for the traceback, "
                "and please report it)")
    return 2
