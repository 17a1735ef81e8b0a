"""The project's exception tree. Every message says what failed and what to do."""

from __future__ import annotations


class VerifyError(Exception):
    """Base of every error the tool raises on purpose; `exit_code` is what the CLI returns."""

    exit_code = 2


class UsageError(VerifyError):
    """Bad input from the user: unknown name, malformed option, missing file."""


class SetupError(VerifyError):
    """The environment cannot do what was asked: weights absent, CUDA unavailable."""


class ExportError(VerifyError):
    """A model could not be exported."""


class ArtifactError(VerifyError):
    """An artifact is unreadable, corrupt or unsafe to load."""


def interrupt_in(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM behind `exc`, if any. One that lands inside a library call comes back wrapped
    (pybind11's "returned a result with an exception set", then our own "export failed" around that): the
    user stopped the run, and the exit code and message must say so, not blame the model."""
    pending: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, KeyboardInterrupt):
            return current
        pending += [current.__cause__, current.__context__]
    return None
