"""Name -> class tables that fill themselves: a new exit method or strategy is one decorated class.

A ``Registry`` is a plain dict (tests may ``monkeypatch.setitem`` it); ``register`` is the
decorator each class module applies, ``get`` the lookup that names the known entries when
asked for an unknown one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from berter.errors import ConfigError

T = TypeVar("T")


class Registry(dict[str, type]):
    """Classes by name for one config field (``what``), e.g. ``exit_method`` or ``strategy``."""

    def __init__(self, what: str):
        super().__init__()
        self.what = what

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def add(cls: type[T]) -> type[T]:
            if name in self:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            self[name] = cls
            return cls

        return add

    def get_class(self, name: str) -> type:
        if name not in self:
            raise ConfigError(f"{self.what}={name!r} is not one of {', '.join(sorted(self))}")
        return self[name]
