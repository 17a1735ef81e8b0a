"""User-controlled text (labels, paths, messages, a tampered file's contents) made safe for each output
format, one helper per format. Every renderer passes every string it did not write itself through one.

- terminal: one line, control characters shown as `\\xNN` (no ANSI injection, no forged lines);
- XML (JUnit): only characters XML 1.0 allows; ElementTree escapes `<`, `&`, `>` and quotes itself;
- HTML: `html.escape`, control characters shown;
- Markdown: no raw HTML, no formatting, one table row per row (`|` and newlines neutralised);
- GitHub workflow commands: `%`, CR and LF escaped as GitHub's runner reads them back.
"""

from __future__ import annotations

import re

_WHITESPACE = re.compile(r"[\t\n\v\f\r\x1c-\x1f\x85\u2028\u2029 ]+")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069"
                      r"\ud800-\udfff\ufeff\ufffe\uffff]")
"""C0/C1 controls (ESC included), bidirectional overrides (a line that reads other than it is),
surrogates, BOM and the non-characters: never shown raw."""
_XML_ILLEGAL = re.compile(r"[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
"""Outside XML 1.0's Char production: a parser must reject a document holding one."""
_MD_SPECIAL = re.compile(r"([\\`*_\[\]{}|~#!])")
"""Markdown punctuation that can start emphasis, code, links, tables, headings or images."""
_MD_ENTITY = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def _shown(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def one_line(text: object) -> str:
    """Whitespace runs (newlines included) as one space, every other control character as `\\xNN`."""
    return _CONTROL.sub(_shown, _WHITESPACE.sub(" ", str(text))).strip()


def terminal_text(text: object) -> str:
    """For a terminal or a CI log: one line, nothing the terminal would interpret (rich markup is the
    caller's to escape)."""
    return one_line(text)


def markup(text: object) -> str:
    """`terminal_text`, escaped for rich markup (a `[red]` in a path stays text)."""
    from rich.markup import escape

    return escape(terminal_text(text))


def xml_text(text: object, flat: bool = True) -> str:
    """For an XML attribute (`flat`, one line) or element text: characters XML 1.0 forbids as `\\xNN`."""
    value = one_line(text) if flat else _CONTROL.sub(_shown, str(text))
    return _XML_ILLEGAL.sub(_shown, value)


def md_text(text: object) -> str:
    """For Markdown inline text or a table cell: one line, `&<>` as entities (so no raw HTML and no
    entity trickery) and every formatting character backslash-escaped (`\\|` keeps the table's columns)."""
    flat = one_line(text)
    flat = "".join(_MD_ENTITY.get(ch, ch) for ch in flat)
    return _MD_SPECIAL.sub(r"\\\1", flat)


_CODE_UNSAFE = re.compile(r"[`<>|&\\]")
"""Characters a code span would show raw or a table would split on: text holding one is escaped instead."""


def md_code(text: object) -> str:
    """A Markdown code span for a name or a path (`resnet18:frozen:body`); text that holds a backtick, `<`,
    `>`, `|`, `&` or a backslash is shown escaped (`md_text`) instead, so no `<` ever reaches the page raw."""
    flat = one_line(text)
    return md_text(flat) if not flat or _CODE_UNSAFE.search(flat) else f"`{flat}`"


def html_text(text: object) -> str:
    """For HTML text or a quoted attribute: one line, `html.escape`d, control characters and lone surrogates
    (which a merged JSON report can hold, and which cannot even be written as UTF-8) as `\\xNN`."""
    from html import escape

    return escape(one_line(text))


def gh_data(text: object) -> str:
    """The message of a GitHub workflow command (`::error ...::MESSAGE`): `%`, CR and LF escaped as the
    runner unescapes them; other control characters shown as `\\xNN`."""
    value = _CONTROL.sub(_shown, str(text))
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def gh_property(text: object) -> str:
    """A property of a GitHub workflow command (`title=...`): as `gh_data`, and `:` and `,` too."""
    return gh_data(one_line(text)).replace(":", "%3A").replace(",", "%2C")
