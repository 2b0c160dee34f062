"""Lazy public names (PEP 562): a package's ``__init__`` lists what it exports and from which private
module; a name's module is imported on first use, so ``from ranksearch.core import solve_ratio`` loads
only the pure-numpy solver, not torch or optuna."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["exports"]


def exports(package: str, names: Mapping[str, str],
            subpackages: tuple[str, ...] = ()) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``names`` maps each public name to ``module`` or
    ``module:attribute`` (another name in that module), relative to the package; ``subpackages`` are
    imported on first use too (``ranksearch.results.summary_table`` after ``import ranksearch``)."""
    def __getattr__(name: str) -> Any:
        if name in subpackages:
            return importlib.import_module(f"{package}.{name}")
        where = names.get(name)
        if where is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attr = where.partition(":")
        value = getattr(importlib.import_module(f"{package}.{module}"), attr or name)
        importlib.import_module(package).__dict__[name] = value  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(importlib.import_module(package).__dict__) | set(names) | set(subpackages))

    return __getattr__, __dir__
