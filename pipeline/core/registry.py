"""The registries of every pluggable concept, and the one ``Registry`` type behind them.

Each registry discovers its entries itself: on the first lookup it imports every module below its package
(``pipeline.methods``, ``pipeline.datasets``, ...), and each module registers what it defines. So a new
method or dataset is one file or package, nothing else edited, and no package ``__init__`` imports its
plugins (which is what made the old import circle).
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object table filled by the modules of ``package``; unknown names fail with the known ones."""

    def __init__(self, kind: str, package: str | None = None) -> None:
        self.kind = kind
        self.package = package
        self._items: dict[str, T] = {}
        self._discovered = package is None
        self._discovering = False

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        if name in self._items and self._items[name] is not obj:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = obj

    def discover(self) -> None:
        """Import every module below the package (again, for modules added since: a test's temporary one)."""
        if self.package is None or self._discovering:
            return
        self._discovering = True
        try:
            package = importlib.import_module(self.package)
            for info in pkgutil.walk_packages(package.__path__, prefix=f"{self.package}."):
                importlib.import_module(info.name)
            self._discovered = True
        finally:
            self._discovering = False

    def _table(self) -> dict[str, T]:
        if not self._discovered:
            self.discover()
        return self._items

    def get(self, name: str) -> T:
        try:
            return self._table()[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}") from None

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._table().items())

    def names(self) -> list[str]:
        return sorted(self._table())

    def __contains__(self, name: object) -> bool:
        return name in self._table()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


DATASETS: Registry[Any] = Registry("dataset", "pipeline.datasets")  # base.Dataset subclasses
METHODS: Registry[Any] = Registry("method", "pipeline.methods")  # methods.base.MethodSpec entries
AUXNETS: Registry[Any] = Registry("auxiliary network", "pipeline.methods.auxnets")  # g(ℓ; φ) classes
MODELS: Registry[Any] = Registry("model", "pipeline.models")  # primary networks f(x; W)
