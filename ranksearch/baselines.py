"""Baseline allocations and the per-layer sensitivity they and the search's prior use.

* **uniform**: every layer keeps the same fraction of its useful rank range.
* **sensitivity (AIMET-style greedy)**: each layer is truncated alone at a few ranks and scored with the
  user's metric (no retrain); a common score is found by bisection such that every layer takes its
  smallest measured rank that keeps the score, as AIMET's weight-SVD greedy selection does.

Any allocation is turned into per-layer weights on the MSE bound (``w_l = mse_l(r_l)``), so that the
solver scales it to hit the target ratio exactly, and so that it can be enqueued in, or centre, the
search's space of weights.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping

import numpy as np
from torch import nn

from ranksearch.decompose import Factors
from ranksearch.solver import Curve
from ranksearch.surgery import factorize

__all__ = ["FRACTIONS", "greedy_ranks", "log_weights_for", "measure_sensitivity", "uniform_ranks"]

_log = logging.getLogger(__name__)
FRACTIONS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2)

#: layer name -> list of (rank, metric with only that layer truncated to rank)
Sensitivity = dict[str, list[tuple[int, float]]]


def measure_sensitivity(model: nn.Module, curves: Mapping[str, Curve], factors: Mapping[str, Factors],
                        evaluate: Callable[[nn.Module], float], fractions: tuple[float, ...] = FRACTIONS) -> Sensitivity:
    """Metric with one layer at a time truncated to each fraction of its useful rank range."""
    table: Sensitivity = {}
    for i, (name, c) in enumerate(curves.items()):
        ranks = sorted({max(1, min(c.max_rank, math.ceil(f * c.max_rank))) for f in fractions})
        table[name] = [(r, float(evaluate(factorize(model, {name: r}, factors)))) for r in ranks if c.max_rank >= 1]
        _log.info("sensitivity %d/%d %s: %s", i + 1, len(curves), name, ", ".join(f"r{r}={v:.3f}" for r, v in table[name]))
    return table


def log_weights_for(curves: Mapping[str, Curve], ranks: Mapping[str, int | None]) -> dict[str, float]:
    """``log10`` of the MSE-bound weights that reproduce ``ranks`` (up to scale), centred on zero.

    A dense layer gets the weight of its largest useful rank; an error of exactly zero is floored.
    """
    logs = {}
    for n, c in curves.items():
        r = ranks.get(n)
        r = c.max_rank if r is None else r
        floor = 1e-12 * max(float(c.mse[0]), 1e-300)
        logs[n] = math.log10(max(float(c.mse[min(r, len(c.mse) - 1)]), floor))
    mean = float(np.mean(list(logs.values()))) if logs else 0.0
    return {n: v - mean for n, v in logs.items()}


def uniform_ranks(curves: Mapping[str, Curve], budget: int) -> dict[str, int]:
    """The largest common fraction of every layer's useful rank range that fits ``budget`` weights."""
    def ranks_at(frac: float) -> dict[str, int]:
        return {n: max(1, math.floor(frac * c.max_rank)) for n, c in curves.items() if c.max_rank >= 1}

    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        cost = sum(curves[n].params(r) for n, r in ranks_at(mid).items())
        lo, hi = (mid, hi) if cost <= budget else (lo, mid)
    return ranks_at(lo)


def greedy_ranks(curves: Mapping[str, Curve], table: Sensitivity, budget: int) -> dict[str, int]:
    """AIMET-style: the highest common score such that each layer's smallest rank keeping it fits.

    For a score s, layer l takes the smallest measured rank whose metric is >= s (its largest measured
    rank if none is); the best s whose allocation costs at most ``budget`` weights is kept.
    """
    def ranks_at(score: float) -> dict[str, int]:
        out = {}
        for n, rows in table.items():
            ok = [r for r, v in rows if v >= score]
            out[n] = min(ok) if ok else max(r for r, _ in rows)
        return out

    scores = sorted({v for rows in table.values() for _, v in rows}, reverse=True)
    for s in scores:  # from the best score down: the first that fits
        ranks = ranks_at(s)
        if sum(curves[n].params(r) for n, r in ranks.items()) <= budget:
            return ranks
    return {n: min(r for r, _ in rows) for n, rows in table.items()}
