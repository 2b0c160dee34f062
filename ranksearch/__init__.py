"""ranksearch: low-rank factorization of Linear/Conv layers with searched per-layer ranks.

Public API::

    curves = ranksearch.spectra(model)                      # per-layer singular values and MSE curves
    config = ranksearch.solve(model, target_ratio=0.25)     # one global MSE bound (the NNR CE1 rule)
    settings = ranksearch.SearchSettings(target_ratio=0.25, seed=0)  # what the study searches
    result = ranksearch.search(model, settings, evaluate=..., retrain=..., run=ranksearch.RunOptions(n_trials=20))
    result.config.save("rank_config.json")
    small = ranksearch.apply(model, ranksearch.RankConfig.load("rank_config.json"))

The layers below (``ranksearch.core``: maths and surgery; ``ranksearch.study``: the Optuna study;
``ranksearch.results``: results, tables, files, formats; ``ranksearch.spaces``: the shipped spaces) export
more. Every name is imported on first use, so ``import ranksearch`` loads neither torch nor optuna.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ranksearch._lazy import exports
from ranksearch.errors import ConfigError, RankSearchError, SpaceError, StorageError, StudyError

_NAMES = {
    "search": "_api", "run_worker": "_api", "search_points": "_points",
    "SearchSettings": "study._settings", "RunOptions": "study._settings", "Components": "study._settings",
    "Method": "study._vocab", "FactorKind": "study._vocab", "Factors": "study._vocab", "Sampler": "study._vocab",
    "Pruner": "study._vocab", "SensitivityKind": "study._vocab", "Proposals": "study._vocab", "Granularity": "study._vocab",
    "Prior": "study._vocab", "TrialRecord": "study._record", "StudyRecord": "study._record",
    "SearchResult": "results._collect", "Summary": "results._summary", "export_study": "results._export",
    "write_model": "results._formats", "write_report": "results._report",
    "Curve": "core._solver", "Solution": "core._solver", "LayerRank": "core._config", "RankConfig": "core._config",
    "RetrainSettings": "core._retrain", "Task": "core._task", "apply": "core._allocation", "load_factorized": "core._allocation",
    "solve": "core._allocation", "count_params": "core._surgery", "factorize": "core._surgery", "spectra": "core._spectra",
    "Space": "spaces._space", "load_space": "spaces._space",
}
__all__ = sorted([*_NAMES, "ConfigError", "RankSearchError", "SpaceError", "StorageError", "StudyError"])
__version__ = "0.2.0"
__getattr__, __dir__ = exports(__name__, _NAMES, subpackages=("core", "study", "results", "spaces"))

if TYPE_CHECKING:
    from ranksearch._api import run_worker, search
    from ranksearch._points import search_points
    from ranksearch.core._allocation import apply, load_factorized, solve
    from ranksearch.core._config import LayerRank, RankConfig
    from ranksearch.core._retrain import RetrainSettings
    from ranksearch.core._solver import Curve, Solution
    from ranksearch.core._spectra import spectra
    from ranksearch.core._surgery import count_params, factorize
    from ranksearch.core._task import Task
    from ranksearch.results._collect import SearchResult
    from ranksearch.results._export import export_study
    from ranksearch.results._formats import write_model
    from ranksearch.results._report import write_report
    from ranksearch.results._summary import Summary
    from ranksearch.spaces._space import Space, load_space
    from ranksearch.study._record import StudyRecord, TrialRecord
    from ranksearch.study._settings import Components, RunOptions, SearchSettings
    from ranksearch.study._vocab import FactorKind, Factors, Granularity, Method, Prior, Proposals, Pruner, Sampler, SensitivityKind
