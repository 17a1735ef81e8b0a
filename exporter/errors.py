"""The project's exception tree. Every message says what failed and what to do."""

from __future__ import annotations


class VerifyError(Exception):
    """Base of every error the tool raises on purpose; `exit_code` is what the CLI returns."""

    exit_code = 2


class UsageError(VerifyError):
    """Bad input from the user: unknown name, malformed option, missing file. Catch it (or VerifyError) by name: it is
    no ValueError, on purpose (review 29): this code's own `except ... ValueError` sites around calls that raise it
    would then reword it (verify/matrix/result.py `load_result`), or turn its refusal of a recorded floor into a
    trust problem (verify/judge/trust.py `evidence_problems`), and pydantic validators would make it a
    ValidationError."""


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


BUG_TYPES = (ImportError, NameError, AttributeError)
"""The errors only a programming mistake raises in this project's own code. Not RuntimeError, TypeError or ValueError:
torch's kernels raise those for the model's own inputs, and a kernel called through this tool's wrappers (the call
watch's TorchFunctionMode) has one of this project's frames innermost on the traceback (a float32-only model's
"expected scalar type Float but found Double" was blamed on the tool)."""


def raised_by_tool(exc: BaseException) -> bool:
    """An error of this tool's own code (a bug: an ImportError, an AttributeError in verify/ or exporter/), not of
    the model or library it called: raised in the innermost frame of this project's packages on its traceback, or
    an AttributeError from the `__getattr__` that frame's attribute lookup called (torch's `Module.__getattr__`).
    Our VerifyErrors are raised on purpose; what a model or torch computes has their frames deeper (interrupt28)."""
    import os
    import traceback

    if isinstance(exc, VerifyError) or not isinstance(exc, BUG_TYPES):
        return False
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    roots = tuple(os.path.join(here, package) + os.sep for package in ("verify", "exporter"))
    codes = [frame.f_code for frame, _ in traceback.walk_tb(exc.__traceback__)]
    ours = [i for i, code in enumerate(codes) if os.path.abspath(code.co_filename).startswith(roots)]
    if not ours:
        return False
    called = codes[ours[-1] + 1:]
    return not called or (isinstance(exc, AttributeError) and all(code.co_name == "__getattr__" for code in called))
