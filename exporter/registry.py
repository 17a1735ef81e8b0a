"""A name -> object registry that refuses duplicates and lists valid names on a miss."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from exporter.errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"A {self.kind} named {name!r} is already registered")
        self._items[name] = item
        return item

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(item: T) -> T:
            return self.add(name, item)

        return decorator

    def remove(self, name: str) -> T:
        """Unregister `name` (a plug-in added for a while, e.g. by a test); its item is returned."""
        if name not in self._items:
            raise ValueError(f"No {self.kind} named {name!r} is registered")
        return self._items.pop(name)

    @contextmanager
    def adding(self, name: str, item: T) -> Iterator[T]:
        """`name` registered inside the block only (a plug-in a test adds), removed on the way out."""
        self.add(name, item)
        try:
            yield item
        finally:
            self.remove(name)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UsageError(
                f"Unknown {self.kind} {name!r}; choose one of: {', '.join(self._items)}"
            ) from None

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
