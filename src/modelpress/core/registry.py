"""One small registry class for every kind of named thing (models, data sets, methods)."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from modelpress.core.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object map that refuses duplicates and answers unknown names with the known ones.

    Args:
        kind: what is registered, used in error messages ("model", "data set", ...).

    Example:
        >>> models = Registry("model")
        >>> @models.register("mlp")
        ... def build_mlp(): ...
        >>> models.get("mlp") is build_mlp
        True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers its target under ``name``; a second use of a name raises."""

        def add(item: T) -> T:
            if name in self._items:
                raise ConfigError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return add

    def get(self, name: str) -> T:
        """Return the object registered as ``name``.

        Raises:
            ConfigError: ``name`` is unknown; the message lists the known names.
        """
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items))
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
