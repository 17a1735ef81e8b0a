"""Where the output goes, and what it can show there: a terminal gets tables, colour and a spinner; a CI log
or a pipe (no TTY, or `CI`/`GITHUB_ACTIONS`/... set) gets one line per pair and per finished stage, never a
redraw, and colour only where its log viewer shows it. `NO_COLOR` (any value) turns colour off,
`FORCE_COLOR` on; `COLUMNS` sets the width (rich reads it). Under GitHub Actions a disagreement is also
written as a workflow annotation (`::error title=...::...`)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

CI_VARIABLES = ("CI", "GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL", "BUILDKITE", "TF_BUILD", "TEAMCITY_VERSION",
                "CIRCLECI", "BUILD_NUMBER")
"""Set by CI runners: their logs are files, read after the fact (no redraws, no cursor moves)."""
COLOUR_LOGS = ("GITHUB_ACTIONS", "GITLAB_CI", "BUILDKITE", "TF_BUILD")
"""CI runners whose log viewers render ANSI colour."""
FALSE_WORDS = ("", "0", "false", "no", "off")
FILE_WIDTH = 80
"""rich's width without a terminal; also where COLUMNS=0 (which rich would take as zero columns) is ignored."""
UNBOUNDED = 10_000
"""Columns to measure a table's natural width in (rich clamps a measurement to the width it is given)."""


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in FALSE_WORDS


def in_ci() -> bool:
    return any(_flag(name) for name in CI_VARIABLES)


def github_actions() -> bool:
    """GitHub sets GITHUB_ACTIONS=true on its runners."""
    return os.environ.get("GITHUB_ACTIONS", "").strip().lower() == "true"


def wants_colour() -> bool | None:
    """True or False where the environment says, None to let the terminal decide (https://no-color.org,
    https://force-color.org)."""
    if os.environ.get("NO_COLOR", "") != "":
        return False
    if os.environ.get("FORCE_COLOR", "") != "":
        return True
    return True if any(_flag(name) for name in COLOUR_LOGS) else None


def make_console(stderr: bool = False, **options: Any) -> Any:
    """A rich Console for this environment. In CI it is never a terminal (no live redraw, whatever
    FORCE_COLOR says), and it has colour where the log shows colour."""
    from rich.console import Console

    class PipeSafeConsole(Console):
        def on_broken_pipe(self) -> None:
            """A reader that stopped reading (`verify ... | head`) ends what is shown, never the run: the verdict
            is still judged, its reports written and its exit code returned (rich's own exits 1, a
            disagreement's code, before any report is written)."""
            self.quiet = True
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, self.file.fileno())
                os.close(devnull)

    colour = wants_colour()
    if colour is False:
        options.setdefault("color_system", None)
        options.setdefault("no_color", True)
    elif colour is True:
        options.setdefault("color_system", "standard")
    if in_ci():
        options.setdefault("force_terminal", False)
    columns = os.environ.get("COLUMNS", "").strip()
    if columns and set(columns) == {"0"}:  # rich takes COLUMNS=0 as zero columns and prints nothing, errors included
        options.setdefault("width", _real_width(stderr))
    return PipeSafeConsole(stderr=stderr, **options)


def _real_width(stderr: bool) -> int:
    """The terminal's own width, else rich's default for a file (80)."""
    try:
        return os.get_terminal_size(2 if stderr else 1).columns or FILE_WIDTH
    except OSError:
        return FILE_WIDTH


def writes_to_terminal(console: Any) -> bool:
    """Whether the console writes to a terminal: as its owner forced it, else whether its file is a TTY (rich
    also counts FORCE_COLOR as a terminal, which would redraw spinners into a log)."""
    forced = getattr(console, "_force_terminal", None)
    if forced is not None:
        return bool(forced)
    isatty = getattr(console.file, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed file
        return False


def line_layout(console: Any) -> bool:
    """One line per pair (greppable, never wrapped) unless the console is an interactive terminal outside CI."""
    return not writes_to_terminal(console) or console.is_dumb_terminal or in_ci()


def fits(console: Any, renderable: Any) -> bool:
    """Whether `renderable` at its natural width fits the console without wrapping."""
    from rich.measure import Measurement

    unbounded = console.options.update_width(UNBOUNDED)
    return Measurement.get(console, unbounded, renderable).maximum <= console.width


def print_line(console: Any, text: str) -> None:
    """One line of rich markup, never wrapped (a log line stays one line at any width)."""
    console.print(text, highlight=False, soft_wrap=True)


def annotate(console: Any, commands: list[str]) -> None:
    """Write GitHub workflow commands as they are (no markup, no wrapping), each on a line of its own."""
    for command in commands:
        console.out(command, highlight=False)


class SpinnerProgress:
    """A spinner while a step runs, then one line per finished step: for an interactive terminal."""

    def __init__(self, console: Any) -> None:
        self.console = console

    @contextlib.contextmanager
    def step(self, description: str) -> Iterator[None]:
        from verify.render.text import markup

        start = time.perf_counter()
        try:
            with self.console.status(markup(description)):
                yield
        except BaseException:
            print_line(self.console, f"[red]✗[/] {markup(description)}")
            raise
        print_line(self.console, f"[green]✓[/] {markup(description)} [dim]({time.perf_counter() - start:.1f}s)[/]")


class LineProgress(SpinnerProgress):
    """One line per finished step and nothing in between: for logs and pipes."""

    @contextlib.contextmanager
    def step(self, description: str) -> Iterator[None]:
        from verify.render.text import markup

        start = time.perf_counter()
        try:
            yield
        except BaseException:
            print_line(self.console, f"[red]✗[/] {markup(description)}")
            raise
        print_line(self.console, f"[green]✓[/] {markup(description)} [dim]({time.perf_counter() - start:.1f}s)[/]")


def progress_for(console: Any) -> SpinnerProgress:
    """The spinner on an interactive terminal outside CI, else a line per finished step."""
    return LineProgress(console) if line_layout(console) or not console.is_interactive else SpinnerProgress(console)


def error_annotation(title: str, message: str) -> str:
    """`::error title=TITLE::MESSAGE`, both escaped by GitHub's rules (one physical line whatever they hold)."""
    from verify.render.text import gh_data, gh_property, one_line

    return f"::error title={gh_property(title)}::{gh_data(one_line(message))}"
