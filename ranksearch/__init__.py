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

from ranksearch.allocation import apply, load_factorized, solve
from ranksearch.config import LayerRank, RankConfig
from ranksearch.retrain import RetrainSettings
from ranksearch.export import SearchResult, export_study
from ranksearch.search import search
from ranksearch.settings import SearchSettings
from ranksearch.solver import Curve, Solution
from ranksearch.spaces import Space, load_space
from ranksearch.spectra import spectra
from ranksearch.surgery import count_params, factorize
from ranksearch.task import Task
from ranksearch.worker import run_worker

__all__ = [
    "Curve",
    "LayerRank",
    "RankConfig",
    "RetrainSettings",
    "SearchResult",
    "SearchSettings",
    "Solution",
    "Space",
    "Task",
    "apply",
    "count_params",
    "export_study",
    "factorize",
    "load_factorized",
    "load_space",
    "search",
    "solve",
    "run_worker",
    "spectra",
]

__version__ = "0.1.0"
