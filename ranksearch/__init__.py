"""ranksearch: low-rank factorization of Linear/Conv layers with searched per-layer ranks.

Public API::

    curves = ranksearch.spectra(model)                      # per-layer singular values and MSE curves
    config = ranksearch.solve(model, target_ratio=0.25)     # one global MSE bound (the NNR CE1 rule)
    settings = ranksearch.SearchSettings(target_ratio=0.25, seed=0)  # what the study searches
    result = ranksearch.search(model, settings, evaluate=..., retrain=..., n_trials=20)
    result.config.save("rank_config.json")
    small = ranksearch.apply(model, ranksearch.RankConfig.load("rank_config.json"))
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

# Public name -> the module that defines it. Imported on first use (PEP 562), so that
# ``import ranksearch.solver`` (pure numpy) loads neither torch nor optuna.
_API = {
    "Curve": "solver",
    "Solution": "solver",
    "LayerRank": "config",
    "RankConfig": "config",
    "RetrainSettings": "retrain",
    "SearchResult": "export",
    "export_study": "export",
    "SearchSettings": "settings",
    "Space": "spaces",
    "load_space": "spaces",
    "Task": "task",
    "apply": "allocation",
    "load_factorized": "allocation",
    "solve": "allocation",
    "count_params": "surgery",
    "factorize": "surgery",
    "search": "search",
    "spectra": "spectra",
    "run_worker": "worker",
}

__all__ = sorted(_API)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from ranksearch.allocation import apply, load_factorized, solve
    from ranksearch.config import LayerRank, RankConfig
    from ranksearch.export import SearchResult, export_study
    from ranksearch.retrain import RetrainSettings
    from ranksearch.search import search
    from ranksearch.settings import SearchSettings
    from ranksearch.solver import Curve, Solution
    from ranksearch.spaces import Space, load_space
    from ranksearch.spectra import spectra
    from ranksearch.surgery import count_params, factorize
    from ranksearch.task import Task
    from ranksearch.worker import run_worker


# ``search`` and ``spectra`` are functions and submodules both; importing the submodule must not rebind
# the package's name (the import system sets it on the package), so the name keeps meaning the function.
_SHADOWED = {name for name, module in _API.items() if name == module}


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return  # the submodule stays reachable in sys.modules
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'ranksearch' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ranksearch.{module}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
