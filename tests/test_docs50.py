"""Docs 50: every `verify` command the README's user-facing sections show names a command and options the CLI has.
Parsed from README.md up to "## Development", checked against the typer app's own parameters."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer.main

from verify.cli.app import app

README = Path(__file__).resolve().parent.parent / "README.md"
END = "\n## Development"
SPAN = re.compile(r"`((?:\.venv/bin/)?verify(?: [^`]*)?)`")
OPTION = re.compile(r"^\[?(--?[A-Za-z][\w-]*)")


def user_sections(text: str) -> str:
    """The README before its Development section: what a new user reads and runs."""
    assert END in text, "README.md has no '## Development' section"
    return text[:text.index(END)]


def code_lines(text: str) -> list[str]:
    """Every command in a code block: each line of a bash block, each `$ ` line or CI `run:` step of another;
    continuations joined."""
    lines, block, joined = [], None, ""
    for raw in text.splitlines():
        if raw.lstrip().startswith("```"):
            block = raw.strip()[3:] if block is None else None
            continue
        if block is None:
            continue
        line = joined + raw
        joined = ""
        if line.endswith("\\"):
            joined = line[:-1]
            continue
        if block in ("bash", "sh", "shell"):
            lines.append(line.split(" #", 1)[0])
        elif line.startswith("$ "):
            lines.append(line[2:])
        elif "run: " in line:  # a CI step (yaml)
            lines.append(line.split("run: ", 1)[1])
    return lines


def inline_commands(text: str) -> list[str]:
    """Each inline code span outside code blocks that starts with `verify`."""
    outside = re.sub(r"^\s*```.*?^\s*```", "", text, flags=re.S | re.M)
    return [match.group(1) for match in SPAN.finditer(outside)]


def verify_commands(text: str) -> list[str]:
    """Every `verify ...` invocation the text shows (a shell line may hold several, joined by && or |)."""
    found = []
    for line in code_lines(text) + inline_commands(text):
        for part in re.split(r"&&|\|\||;| \| ", line):
            words = part.split()
            at = next((i for i, word in enumerate(words) if word.rsplit("/", 1)[-1] == "verify"), None)
            if at is not None:
                found.append(" ".join(words[at:]))
    return found


def resolve(group: Any, words: list[str]) -> tuple[Any, list[str], str]:
    """The (sub)command the words name, the words after it, and its name as typed."""
    command, name, rest = group, "verify", list(words[1:])
    while hasattr(command, "commands") and rest and not rest[0].startswith("-"):
        sub = command.commands.get(rest[0])
        if sub is None:
            if command is group:  # `verify X` for a command that does not exist
                return command, rest, name
            break  # a group's positional word (matrix merge's report files come after `merge`)
        command, name, rest = sub, f"{name} {rest[0]}", rest[1:]
    return command, rest, name


def known_options(command: Any) -> set[str]:
    names = {"--help"}
    for param in command.params:
        if param.param_type_name == "option":  # typer vendors its own click: no isinstance
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


def unknown_in(group: Any, text: str) -> list[str]:
    """Each README command that names a subcommand or an option its command does not have."""
    problems = []
    for line in verify_commands(user_sections(text)):
        command, rest, name = resolve(group, line.split())
        if command is group and rest and not rest[0].startswith("-"):
            problems.append(f"{line!r}: no command {rest[0]!r}")
            continue
        for word in rest:
            match = OPTION.match(word.split("=", 1)[0])
            if match and match.group(1) not in known_options(command):
                problems.append(f"{line!r}: {name} has no option {match.group(1)}")
    return problems


@pytest.fixture(scope="module")
def cli() -> Any:
    return typer.main.get_command(app)


def test_readme_commands_name_only_options_the_cli_has(cli):
    text = README.read_text(encoding="utf-8")
    assert len(verify_commands(user_sections(text))) > 100  # the parser found the README's commands
    assert unknown_in(cli, text) == []


def test_an_option_the_cli_lacks_is_found(cli):
    text = "```bash\nverify export --norm frozen --no-such-flag \\\n  --out x\n```\n`verify lint`\n" + END
    assert unknown_in(cli, text) == ["'verify export --norm frozen --no-such-flag --out x': verify export has no "
                                     "option --no-such-flag", "'verify lint': no command 'lint'"]


def test_each_subcommand_is_checked_against_its_own_options(cli):
    text = "`verify matrix merge a.json --jobs 2` and `verify cache prune --max-size 5G`" + END
    assert unknown_in(cli, text) == ["'verify matrix merge a.json --jobs 2': verify matrix merge has no option --jobs"]


def test_root_help_lists_every_command_whole():
    """`verify --help` shows each command's one-line summary whole: click cut the docstrings at ~60 characters."""
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "80"})
    listed = result.output.split("Commands:", 1)[1].splitlines()
    assert result.exit_code == 0 and len([line for line in listed if line.strip()]) == 9
    assert [line for line in listed if line.rstrip().endswith("...")] == []


def test_explain_usage_names_its_optional_sides_once():
    """`verify explain --help` read `[[A]] [[B]]`: typer brackets an optional argument itself."""
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["explain", "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0 and "explain [OPTIONS] [A] [B]" in result.output, result.output
