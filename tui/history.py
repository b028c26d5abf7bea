"""Browser-like back/forward history of visited features."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class History(Generic[T]):
    """Visiting an item drops everything forward of the current position, as a browser does."""

    def __init__(self) -> None:
        self._items: list[T] = []
        self._pos = -1

    def visit(self, item: T) -> None:
        if self._pos >= 0 and self._items[self._pos] == item:
            return
        del self._items[self._pos + 1 :]
        self._items.append(item)
        self._pos = len(self._items) - 1

    @property
    def current(self) -> T | None:
        return self._items[self._pos] if self._pos >= 0 else None

    @property
    def position(self) -> int:
        """Index of the current item (-1 when empty)."""
        return self._pos

    @property
    def can_back(self) -> bool:
        return self._pos > 0

    @property
    def can_forward(self) -> bool:
        return self._pos < len(self._items) - 1

    def back(self) -> T | None:
        if not self.can_back:
            return None
        self._pos -= 1
        return self._items[self._pos]

    def forward(self) -> T | None:
        if not self.can_forward:
            return None
        self._pos += 1
        return self._items[self._pos]

    def __len__(self) -> int:
        return len(self._items)
