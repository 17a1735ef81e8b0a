"""Error text fit for one terminal line: flattened, bounded, and never relaying a library's advice to
load something unsafely (torch's "weights_only=False will likely succeed", numpy's "allow_pickle")."""

from __future__ import annotations

import re

MAX_MESSAGE = 400
"""Characters: two terminal lines at most; a 4,000-character key list helps nobody."""
_UNSAFE = re.compile(
    r"weights_only`?\s*(=|set to|to)\s*`?False|allow_pickle\s*=\s*True|allow_pickle=`|load it unsafely|"
    r"pickle\.load|can still be loaded|safe_globals|if you trust|trusted source|arbitrary code",
    re.IGNORECASE)
_SENTENCE = re.compile(r"(?<=[.!?;])\s+")


def strip_unsafe_advice(text: str) -> str:
    """`text` without the sentences that tell the reader to turn a safety off."""
    kept = [s for s in _SENTENCE.split(text) if not _UNSAFE.search(s)]
    return " ".join(kept).strip()


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """Whitespace runs (newlines included) become one space; beyond `limit` the text is cut, saying so."""
    flat = " ".join(str(text).split())
    if len(flat) <= limit:
        return flat
    return f"{flat[:limit - 40].rstrip()} … ({len(flat) - limit + 40} more characters)"


def library_reason(exc: BaseException, limit: int = 200) -> str:
    """A library exception's first line, safe and short, for `... (reason)` in our own messages."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    text = strip_unsafe_advice(lines[0]) if lines else ""
    return one_line(text or type(exc).__name__, limit)
