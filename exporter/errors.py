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
