"""The one Registry type for every family of named things: benchmarks, decoding methods, head-scoring
criteria, training methods and model families. A name is registered once; an unknown name gets a
one-line error with the closest valid names."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from headgame.errors import HeadgameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name → object, in registration order, with a fix-it error for unknown names."""

    def __init__(self, kind: str, flag: str) -> None:
        self.kind, self.flag = kind, flag
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            import difflib

            close = difflib.get_close_matches(str(name), list(self._items), n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise HeadgameError(
                f"unknown {self.kind} '{name}'; {hint}valid {self.flag} values: {', '.join(self._items)}"
            ) from None

    def add(self, name: str, obj: T) -> T:
        """Register ``obj`` under ``name`` (the non-decorator form of :meth:`register`)."""
        return self.register(name)(obj)

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())

    def values(self) -> list[T]:
        return list(self._items.values())

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
