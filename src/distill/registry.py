"""A registry is a plain dict filled by a decorator; a duplicate name is a bug and raises (timm's idea)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import DistillError, nearest

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object. `@REG.register("name")` adds; `REG.get("name")` looks up with a helpful error."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"duplicate {self.kind} name {name!r} in registry")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        if name not in self._items:
            raise DistillError(
                f"unknown {self.kind} {name!r}{nearest(name, self._items)}; "
                f"choose one of: {', '.join(sorted(self._items))}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
