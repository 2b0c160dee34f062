"""ranksearch: low-rank factorization of Linear/Conv layers with searched per-layer ranks.

Public API::

    curves = ranksearch.spectra(model)                      # per-layer singular values and MSE curves
    config = ranksearch.solve(model, target_ratio=0.25)     # one global MSE bound (the NNR CE1 rule)
    result = ranksearch.search(model, target_ratio=0.25, evaluate=..., retrain=..., n_trials=20)
    result.config.save("rank_config.json")
    small = ranksearch.apply(model, ranksearch.RankConfig.load("rank_config.json"))
"""

from __future__ import annotations

from ranksearch.allocation import apply, load_factorized, solve
from ranksearch.config import LayerRank, RankConfig
from ranksearch.retrain import RetrainSettings
from ranksearch.search import SearchResult, search
from ranksearch.solver import Curve, Solution
from ranksearch.spaces import Space, load_space
from ranksearch.spectra import spectra
from ranksearch.surgery import count_params, factorize
from ranksearch.task import Task

__all__ = [
    "Curve",
    "LayerRank",
    "RankConfig",
    "RetrainSettings",
    "SearchResult",
    "Solution",
    "Space",
    "Task",
    "apply",
    "count_params",
    "factorize",
    "load_factorized",
    "load_space",
    "search",
    "solve",
    "spectra",
]

__version__ = "0.1.0"
