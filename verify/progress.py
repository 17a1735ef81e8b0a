"""How the library reports long work; the CLI plugs a rich display in, the API default is silent."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol


class Progress(Protocol):
    def step(self, description: str) -> contextlib.AbstractContextManager[None]: ...


class NullProgress:
    @contextlib.contextmanager
    def step(self, description: str) -> Iterator[None]:
        yield
