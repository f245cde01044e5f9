"""One registry of plug-ins per kind (methods, objectives): each module of a package registers its class on import.

The registry imports every module of its package the first time it is asked, so a plug-in is one file: no list
to keep in step. Plug-ins are instances of their class (they hold no state), found by their `name`, and each has
a `config` class (its strict section of a run config).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, package: str, kind: str):
        self.package, self.kind = package, kind
        self._items: dict[str, T] = {}
        self._loaded = False

    def register(self, cls):
        """Class decorator: `@register` on a plug-in class."""
        self._items[cls.name] = cls()
        return cls

    def all(self) -> dict[str, T]:
        """Every registered plug-in by name (imports each module of the package once)."""
        if not self._loaded:
            package = importlib.import_module(self.package)
            for info in pkgutil.iter_modules(package.__path__):
                if info.name != "base":
                    importlib.import_module(f"{self.package}.{info.name}")
            self._loaded = True
        return self._items

    def get(self, name: str) -> T:
        items = self.all()
        if name not in items:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(items))}")
        return items[name]

    def configs(self) -> list:
        """Every plug-in's config class, in name order (the discriminated union of its section in a run config)."""
        return [p.config for _, p in sorted(self.all().items())]
