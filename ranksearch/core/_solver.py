"""MSE-to-rank curves and the rank solver: singular values in, ranks out (pure numpy, no torch).

For an m x n weight with singular values s_1 >= s_2 >= ..., the truncation to rank r leaves the
reconstruction error ``MSE(r) = sum_{i > r} s_i^2 / (m * n)`` (mean over weight elements, Eckart-Young)
and costs ``r * (m + n)`` weights. The solver picks, per layer, the cheapest allowed choice whose error
is within the layer's bound:

* one MSE bound for every layer (the rule of the NNR CE1 contribution), or a bound per layer;
* a target ratio: the bound is found by an exact search over all error breakpoints so that the whole
  model's parameter count after factorization, divided by the original count, is at most the target
  and as close to it as the rank granularity allows. With ``weights`` the bound of layer l is
  ``bound * weights[l]``: how a search shares the budget between layers, every proposal on the target.
  What the breakpoints leave is filled greedily, one rank step at a time, best weighted MSE reduction
  per parameter first (``fill=True``); more than 0.1% unspent (small models with wide layers) is spent
  by exchanges (steps back in one layer, then refill). Without fill every rank is monotone in the bound.
* proportions of ranks (``project_ranks``): per-layer ``log2`` rank targets (an incumbent allocation
  plus a proposed step) shifted by one common amount until the allocation fills the budget; the
  search's default proposals, in which a step means the same relative change in every layer.

A layer stays dense (rank ``None``) where its bound would need a rank whose pair is no smaller than the
dense weight, or above its curve's ``limit`` (a latency working point's: the pair must run faster).
A :class:`Latency` adds a second budget, seconds of the eligible layers; every allocation fits both.

Example:
    >>> import numpy as np
    >>> c = Curve(shape=(4, 6), singular_values=np.array([4.0, 2.0, 1.0, 0.5]))
    >>> float(c.mse[1])  # (2^2 + 1^2 + 0.5^2) / 24
    0.21875
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ranksearch.errors import RankSearchError

BAND = 0.005  #: an allocation lands within this fraction of the model below its target ratio where the rank steps allow

__all__ = ["BAND", "Curve", "Latency", "Solution", "log2_ranks", "project_ranks", "ranks_for_bound", "reachable_ratio", "solve_ratio"]


@dataclass(frozen=True)
class Curve:
    """Singular values of one layer's weight matrix and everything derived from them.

    Attributes:
        shape: (m, n) of the weight matrix.
        singular_values: All min(m, n) singular values, descending.
        limit: The largest rank allowed, besides the parameter break-even (None: no other limit; 0: the layer
            stays dense), e.g. the largest rank whose pair runs faster than the dense layer.
    """

    shape: tuple[int, int]
    singular_values: np.ndarray = field(repr=False)
    limit: int | None = None

    def __post_init__(self) -> None:
        m, n = self.shape
        s = np.asarray(self.singular_values, dtype=np.float64)
        if s.ndim != 1 or len(s) != min(m, n):
            raise RankSearchError(f"A {m}x{n} weight has {min(m, n)} singular values, got shape {s.shape}.")
        if np.any(s < 0) or np.any(np.diff(s) > 1e-12 * max(float(s[0]), 1e-300)):
            raise RankSearchError("Singular values must be non-negative and sorted in descending order.")
        if self.limit is not None and (not isinstance(self.limit, (int, np.integer)) or self.limit < 0):
            raise RankSearchError(f"A curve's rank limit must be an int >= 0 (0: stays dense), got {self.limit!r}.")
        object.__setattr__(self, "shape", (int(m), int(n)))
        object.__setattr__(self, "singular_values", s)

    @property
    def dense_params(self) -> int:
        """Weights of the dense layer: m * n."""
        return self.shape[0] * self.shape[1]

    @cached_property
    def mse(self) -> np.ndarray:
        """``mse[r]`` for r = 0 .. min(m, n): mean squared error of the best rank-r approximation."""
        tail = np.concatenate([np.cumsum((self.singular_values**2)[::-1])[::-1], [0.0]])
        return tail / self.dense_params

    @property
    def max_rank(self) -> int:
        """The largest rank whose pair is strictly smaller than the dense weight and within ``limit`` (0: none is)."""
        m, n = self.shape
        smaller = max(0, math.ceil(m * n / (m + n)) - 1)
        return smaller if self.limit is None else min(smaller, int(self.limit))

    def params(self, rank: int | None) -> int:
        """Weights used at ``rank`` (None: dense)."""
        return self.dense_params if rank is None else rank * (self.shape[0] + self.shape[1])

    def ranks(self, multiple: int = 1, min_rank: int = 1) -> np.ndarray:
        """The allowed ranks: multiples of ``multiple``, at least ``min_rank``, at most ``max_rank``."""
        start = max(multiple, math.ceil(min_rank / multiple) * multiple)
        return np.arange(start, self.max_rank + 1, multiple, dtype=np.int64)


@dataclass(frozen=True)
class Solution:
    """Ranks chosen by the solver and what they cost.

    Attributes:
        ranks: Layer name -> rank, or None where the layer stays dense.
        bound: The (scaled) MSE bound found; per layer ``bound * weights[l]`` (with fill, some ranks lie above it).
        params, original_params: Parameters of the whole model after factorization, and of the dense model.
    """

    ranks: dict[str, int | None]
    bound: float
    params: int
    original_params: int

    @property
    def ratio(self) -> float:
        """params / original_params (the "Reduction Ratio" of the CE1 tables)."""
        return self.params / self.original_params


@dataclass(frozen=True)
class Latency:
    """A second budget: ``pair[l][r]``, seconds of layer l's pair at rank r = 0 .. min(m, n) (non-decreasing);
    ``dense[l]``, of the dense layer (counted as at least its slowest allowed rank's: the curves' ``limit``
    keeps the allowed pairs faster, as :meth:`~ranksearch.core.TimingTable.limits` sets it); ``budget``,
    the seconds all eligible layers may take together."""

    pair: Mapping[str, np.ndarray]
    dense: Mapping[str, float]
    budget: float


@dataclass(frozen=True)
class _Options:
    """Per layer, the allowed choices (ranks, then dense) padded into 2-D arrays."""

    names: list[str]
    ranks: np.ndarray  # (L, K) int, -1 marks dense
    cost: np.ndarray  # (L, K) weights of each choice; padding repeats the dense choice
    error: np.ndarray  # (L, K) MSE of each choice, non-increasing along K, dense = 0
    time: np.ndarray  # (L, K) seconds of each choice, non-decreasing along K (zeros without a latency budget)
    time_budget: float  # seconds the eligible layers may take (inf without a latency budget)

    def fits(self, idx: np.ndarray, budget: float) -> bool:  # the choices idx within both budgets (budget: eligible weights)
        rows = np.arange(len(idx))
        return bool(self.cost[rows, idx].sum() <= budget and self.time[rows, idx].sum() <= self.time_budget * (1 + 1e-12))


def _options(curves: Mapping[str, Curve], multiple: int, min_rank: int, latency: Latency | None = None) -> _Options:
    if multiple < 1 or min_rank < 1:
        raise RankSearchError(f"rank_multiple ({multiple}) and min_rank ({min_rank}) must be >= 1.")
    names = list(curves)
    if latency is not None and (missing := sorted((set(names) - set(latency.pair)) | (set(names) - set(latency.dense)))):
        raise RankSearchError(f"The latency table has no times for layers {missing[:3]}; measure it on this model.")
    per_layer = [curves[n].ranks(multiple, min_rank) for n in names]
    width = max((len(r) for r in per_layer), default=0) + 1
    ranks = np.full((len(names), width), -1, dtype=np.int64)
    cost = np.empty((len(names), width), dtype=np.int64)
    error = np.zeros((len(names), width), dtype=np.float64)
    time = np.zeros((len(names), width), dtype=np.float64)
    for i, (name, allowed) in enumerate(zip(names, per_layer)):
        c = curves[name]
        k = len(allowed)
        ranks[i, :k] = allowed
        cost[i, :k] = allowed * (c.shape[0] + c.shape[1])
        cost[i, k:] = c.dense_params
        error[i, :k] = c.mse[allowed]
        if latency is not None:
            time[i, :k] = np.asarray(latency.pair[name], dtype=np.float64)[allowed]
            time[i, k:] = max(float(latency.dense[name]), float(time[i, k - 1]) if k else 0.0)
    return _Options(names, ranks, cost, error, time, math.inf if latency is None else float(latency.budget))


def _choose(opts: _Options, scaled_error: np.ndarray, bound: float) -> np.ndarray:
    """Index of the first (cheapest) choice per layer whose scaled error is within ``bound``."""
    return np.minimum((scaled_error > bound).sum(axis=1), opts.ranks.shape[1] - 1)


def _solution(opts: _Options, idx: np.ndarray, bound: float, fixed: int, total: int) -> Solution:
    rows = np.arange(len(opts.names))
    chosen = opts.ranks[rows, idx]
    ranks = {n: (None if r < 0 else int(r)) for n, r in zip(opts.names, chosen)}
    return Solution(ranks, float(bound), int(fixed + opts.cost[rows, idx].sum()), int(total))


def _check_totals(curves: Mapping[str, Curve], total_params: int) -> int:
    fixed = total_params - sum(c.dense_params for c in curves.values())
    if fixed < 0:
        raise RankSearchError(
            f"total_params={total_params} is smaller than the eligible layers' weights "
            f"({total_params - fixed}); pass the whole model's parameter count."
        )
    return fixed


def ranks_for_bound(
    curves: Mapping[str, Curve],
    bound: float | Mapping[str, float],
    total_params: int,
    rank_multiple: int = 1,
    min_rank: int = 1,
) -> Solution:
    """The smallest allowed rank per layer whose MSE is at most the bound.

    Args:
        curves: Layer name -> curve of every layer that may be factorized.
        bound: One MSE bound for all layers, or a bound per layer name (layers not named stay dense).
        total_params: Parameter count of the whole dense model (untouched layers and biases included).
        rank_multiple: Ranks are multiples of this (the CE1 reference code rounds to 2, 4 or 8).
        min_rank: Smallest rank allowed.
    """
    fixed = _check_totals(curves, total_params)
    opts = _options(curves, rank_multiple, min_rank)
    if isinstance(bound, Mapping):
        unknown = sorted(set(bound) - set(curves))
        if unknown:
            raise RankSearchError(f"MSE bounds name layers that are not eligible: {unknown}.")
        per_layer = np.array([bound.get(n, -1.0) for n in opts.names], dtype=np.float64)
    else:
        per_layer = np.full(len(opts.names), float(bound))
    if np.any(np.isnan(per_layer)):
        raise RankSearchError(f"MSE bound must be a number, got {bound!r}.")
    idx = (opts.error > per_layer[:, None]).sum(axis=1)
    idx = np.minimum(idx, opts.ranks.shape[1] - 1)
    scalar = float(bound) if not isinstance(bound, Mapping) else float("nan")
    return _solution(opts, idx, scalar, fixed, total_params)


def reachable_ratio(curves: Mapping[str, Curve], total_params: int, rank_multiple: int = 1, min_rank: int = 1) -> float:
    """The smallest ratio the solver can reach: every layer at its smallest allowed rank."""
    fixed = _check_totals(curves, total_params)
    opts = _options(curves, rank_multiple, min_rank)
    return float(fixed + opts.cost[:, 0].sum()) / total_params


def solve_ratio(
    curves: Mapping[str, Curve],
    target_ratio: float,
    total_params: int,
    weights: Mapping[str, float] | None = None,
    rank_multiple: int = 1,
    min_rank: int = 1,
    fill: bool = True,
    latency: Latency | None = None,
) -> Solution:
    """Ranks whose whole-model ratio is at most ``target_ratio`` and as close to it as possible.

    The bound of layer l is ``bound * weights[l]`` (1 when no weights are given: the CE1 rule of one
    global MSE bound). The smallest bound that fits the budget is found exactly among the breakpoints
    of all layers' curves, so the result is the largest model of that family within the target.
    The next breakpoint may add a whole rank to a wide layer; with ``fill`` the budget left is then
    spent greedily, one allowed rank step at a time, on the steps with the largest (weighted) MSE
    reduction per parameter that still fit, so the ratio lands within one step of the narrowest layer.

    With ``latency`` the choices also fit its budget of seconds (the bound is the smallest that fits both).

    Raises:
        ValueError: for a ratio outside (0, 1], non-positive weights, or an unreachable target (the
            message names the smallest reachable ratio).
    """
    if not (isinstance(target_ratio, (int, float)) and 0.0 < target_ratio <= 1.0):
        raise RankSearchError(f"target ratio {target_ratio!r} must be in (0, 1], e.g. 0.25 to keep a quarter.")
    fixed = _check_totals(curves, total_params)
    opts = _options(curves, rank_multiple, min_rank, latency)
    w = np.ones(len(opts.names))
    if weights is not None:
        w = np.array([float(weights.get(n, 1.0)) for n in opts.names])
        if not np.all(np.isfinite(w) & (w > 0)):
            raise RankSearchError(f"Layer weights must be finite and > 0, got {dict(weights)}.")
    budget = _budget(target_ratio, total_params)
    _check_smallest(opts, target_ratio, fixed, budget, total_params)
    scaled = opts.error / w[:, None]
    candidates = np.unique(scaled)  # ascending; the largest always fits (every layer at its first choice)
    lo, hi = 0, len(candidates) - 1
    while lo < hi:  # smallest candidate bound whose choices fit the budget
        mid = (lo + hi) // 2
        if opts.fits(_choose(opts, scaled, candidates[mid]), budget - fixed):
            hi = mid
        else:
            lo = mid + 1
    bound = float(candidates[lo]) if len(candidates) else 0.0
    idx = _choose(opts, scaled, bound)
    if fill:
        idx = _tighten(opts, scaled, _fill(opts, scaled, idx, budget - fixed), budget - fixed, total_params)
    return _solution(opts, idx, bound, fixed, total_params)


def _check_smallest(opts: _Options, target_ratio: float, fixed: int, budget: int, total_params: int) -> None:
    """Raise, in one line, when even the smallest allowed rank in every layer misses a budget."""
    smallest, limited = fixed + int(opts.cost[:, 0].sum()), opts.time_budget < math.inf
    if smallest > budget:
        raise RankSearchError(f"target ratio {target_ratio} is unreachable: with the smallest rank{' the latency limits allow' * limited} "
                              f"in every eligible layer the model keeps {smallest / total_params:.4f} of its parameters; ask for a "
                              f"ratio >= {math.ceil(smallest / total_params * 1e4) / 1e4}" + (
                                  ", or time on a runtime (or batch) where more pairs run faster than their dense layers." if limited
                                  else " or make more layers eligible."))
    if not opts.fits(np.zeros(len(opts.names), dtype=np.int64), budget - fixed):
        raise RankSearchError(f"the latency budget is unreachable: at their smallest ranks the eligible layers take "
                              f"{float(opts.time[:, 0].sum()):.3g} s, over the {opts.time_budget:.3g} s allowed; ask for a larger latency fraction.")


def _tighten(opts: _Options, scaled: np.ndarray, idx: np.ndarray, budget: float, total: int,
             slack: float = 1e-3, max_back: int = 32, distance: np.ndarray | None = None) -> np.ndarray:
    """While over ``slack`` of the model is unspent, try up to ``max_back`` rank steps back in one layer, then
    refill: keep the exchange leaving least unspent; with ``distance``, the nearest of those within ``slack``."""
    rows = np.arange(len(idx))
    last = opts.ranks.shape[1] - 1

    def left(i: np.ndarray) -> float:
        return budget - float(opts.cost[rows, i].sum())

    def fits(i: np.ndarray) -> bool:
        return left(i) >= 0 and opts.fits(i, budget)

    for _ in range(len(idx)):
        if left(idx) <= slack * total:
            break
        moves = []
        for j in np.flatnonzero(idx > 0):
            for back in range(1, min(int(idx[j]), max_back) + 1):
                lowered = idx.copy()
                lowered[j] -= back
                for i in np.flatnonzero((np.arange(len(idx)) != j) & (idx < last)):
                    cand = lowered.copy()
                    cand[i] += 1  # force the exchange, then let the fill spend the rest
                    if fits(cand):
                        moves.append(_fill(opts, scaled, cand, budget))
        best = min(moves, key=left, default=idx)
        if left(best) >= left(idx):
            break
        landed = [m for m in moves if left(m) <= slack * total]
        if distance is not None and landed:
            return min(landed, key=lambda m: (float(distance[rows, m].sum()), left(m)))
        idx = best
    return idx


def _fill(opts: _Options, scaled: np.ndarray, idx: np.ndarray, budget: float) -> np.ndarray:
    """Spend what is left of ``budget`` on single rank steps, best error reduction per weight first."""
    idx = idx.copy()
    rows = np.arange(len(idx))
    last = opts.ranks.shape[1] - 1
    left = budget - opts.cost[rows, idx].sum()
    seconds = opts.time_budget - opts.time[rows, idx].sum()
    while True:
        nxt = np.minimum(idx + 1, last)
        step = opts.cost[rows, nxt] - opts.cost[rows, idx]
        slower = opts.time[rows, nxt] - opts.time[rows, idx]
        ok = (step > 0) & (step <= left) & (slower <= seconds)
        if not ok.any():
            return idx
        gain = np.where(ok, (scaled[rows, idx] - scaled[rows, nxt]) / np.maximum(step, 1), -np.inf)
        j = int(np.argmax(gain))
        idx[j] += 1
        left -= step[j]
        seconds -= slower[j]


def _budget(target_ratio: float, total_params: int) -> int:
    """The largest whole parameter count whose ratio is within ``target_ratio``."""
    budget = math.floor(target_ratio * total_params)
    while (budget + 1) / total_params <= target_ratio:
        budget += 1
    while budget / total_params > target_ratio:
        budget -= 1
    return budget


def log2_ranks(curves: Mapping[str, Curve], ranks: Mapping[str, int | None]) -> dict[str, float]:
    """``log2`` of each layer's rank (a layer left dense, or absent, counts as full rank ``min(m, n)``)."""
    return {n: math.log2(ranks[n] if ranks.get(n) is not None else min(c.shape)) for n, c in curves.items()}  # type: ignore[arg-type]


def project_ranks(
    curves: Mapping[str, Curve],
    targets: Mapping[str, float],
    target_ratio: float,
    total_params: int,
    rank_multiple: int = 1,
    min_rank: int = 1,
    latency: Latency | None = None,
) -> Solution:
    """The allocation nearest in proportion to per-layer target ranks that fills the budget.

    ``targets[l]`` is a ``log2`` rank (e.g. an incumbent's ``log2`` ranks plus a proposed step). All
    targets are shifted by one common ``c`` (each layer keeps ``2**(targets[l] + c)``, rounded down to
    an allowed rank; dense when that is at least ``min(m, n)``), ``c`` the largest whose allocation fits
    ``target_ratio``; what is left is then spent one allowed rank step at a time on the layer furthest
    below its shifted target (in ``log2``), so a step of ``+0.5`` in one layer means the same relative
    change of its rank, and so of its parameters, whichever layer it is. Should more than :data:`BAND` of
    the model still be unspent (coarse steps: a grid of 8, or one rank of a wide layer of a small
    model), exchanges (steps back in one layer, then refill) are tried until it is not. With ``latency``
    every choice also fits its budget of seconds.

    Raises:
        RankSearchError: for a ratio outside (0, 1], a target that is not finite, or an unreachable target.
    """
    if not (isinstance(target_ratio, (int, float)) and 0.0 < target_ratio <= 1.0):
        raise RankSearchError(f"target ratio {target_ratio!r} must be in (0, 1], e.g. 0.25 to keep a quarter.")
    fixed = _check_totals(curves, total_params)
    opts = _options(curves, rank_multiple, min_rank, latency)
    t = np.array([float(targets.get(n, math.log2(min(curves[n].shape)))) for n in opts.names])
    if not np.all(np.isfinite(t)):
        raise RankSearchError(f"log2 rank targets must be finite, got {dict(targets)}.")
    budget = _budget(target_ratio, total_params) - fixed
    _check_smallest(opts, target_ratio, fixed, budget + fixed, total_params)
    full = np.array([min(curves[n].shape) for n in opts.names], dtype=np.float64)
    value = np.where(opts.ranks < 0, full[:, None], opts.ranks).astype(np.float64)  # rank of each choice (dense: full)
    with np.errstate(divide="ignore"):
        logv = np.log2(value)
    rows = np.arange(len(t))
    last = opts.ranks.shape[1] - 1

    def pick(shift: float) -> np.ndarray:  # the largest choice at or below each shifted target (else the first)
        return np.clip((logv <= (t + shift)[:, None] + 1e-12).sum(axis=1) - 1, 0, last)

    def cost(idx: np.ndarray) -> int:
        return int(opts.cost[rows, idx].sum())

    lo, hi = -64.0 - float(t.max()), 64.0 - float(t.min())  # all at the first choice / all at the last
    if opts.fits(pick(hi), budget):
        lo = hi
    for _ in range(100):  # bisection on the common shift: cost is non-decreasing in it
        if hi - lo < 1e-9:
            break
        mid = (lo + hi) / 2
        if opts.fits(pick(mid), budget):
            lo = mid
        else:
            hi = mid
    idx = pick(lo)
    left = budget - cost(idx)
    seconds = opts.time_budget - float(opts.time[rows, idx].sum())
    while True:  # spend the rest on the layers furthest below their targets
        nxt = np.minimum(idx + 1, last)
        step = opts.cost[rows, nxt] - opts.cost[rows, idx]
        slower = opts.time[rows, nxt] - opts.time[rows, idx]
        ok = (step > 0) & (step <= left) & (slower <= seconds)
        if not ok.any():
            break
        j = int(np.argmax(np.where(ok, t + lo - logv[rows, idx], -np.inf)))
        idx[j] += 1
        left -= int(step[j])
        seconds -= float(slower[j])
    if left > BAND * total_params:  # coarse steps (a grid of 8, or one rank of a small model): exchange to fill the band
        below = np.maximum(0.0, (t + lo)[:, None] - logv)  # how far each choice is under its layer's target, in log2
        idx = _tighten(opts, below, idx, budget, total_params, slack=BAND, distance=np.abs((t + lo)[:, None] - logv))
    return _solution(opts, idx, float("nan"), fixed, total_params)
