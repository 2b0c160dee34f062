"""Baseline allocations and the per-layer sensitivity they and the search's prior use.

* **uniform**: every layer keeps the same fraction of its useful rank range.
* **sensitivity (AIMET-style greedy)**: each layer is truncated alone at a few ranks and scored with the
  user's metric (no retrain); a common score is found by bisection such that every layer takes its
  smallest measured rank that keeps the score, as AIMET's weight-SVD greedy selection does.
* the table's scores are the user's metric (``measured``), or (``output``) the *output fidelity*: one
  minus the squared error of the model's outputs relative to the dense model's, on a few validation
  inputs. It needs no labels and no metric, and varies smoothly where a metric on a small subset moves
  in steps, so a few dozen inputs measure what the metric needs the whole split for.
* **sensitivity sum** (ranksearch's own, the centre of the search's prior): the same table, read as if
  the layers' score drops added up; the ranks that maximize the sum of the layers' scores within the
  budget (a multiple-choice knapsack, solved exactly by dynamic programming). Where no common score fits the
  budget (aggressive working points) the greedy rule can only fall back to the smallest ranks, while
  this one still trades the layers that lose little against those that lose much.

Any allocation is turned into per-layer weights on the MSE bound (``w_l = mse_l(r_l)``), so that the
solver scales it to hit the target ratio exactly, and so that it can be enqueued in, or centre, the
search's space of weights.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ranksearch.core._decompose import Factors
from ranksearch.core._solver import Curve
from ranksearch.core._surgery import factorize
from ranksearch.errors import RankSearchError

__all__ = ["PROXY_EVALUATIONS", "additive_ranks", "greedy_ranks", "isotonic", "log_weights_for", "measure_sensitivity", "output_fidelity", "probe_ranks",
           "proxy_sensitivity", "table_size", "uniform_ranks"]

#: evaluations of the model the proxy sensitivity table is calibrated on
PROXY_EVALUATIONS = 24

_log = logging.getLogger(__name__)

#: layer name -> list of (rank, metric with only that layer truncated to rank)
Sensitivity = dict[str, list[tuple[int, float]]]


def probe_ranks(max_rank: int, multiple: int = 1, min_rank: int = 1) -> list[int]:
    """Ranks at which a layer's sensitivity is measured: the powers of two below half its useful rank
    range, and half of it (``max_rank`` 236 -> 1, 2, 4, ..., 64, 118; 7 -> 1, 2, 4), each rounded down
    onto the rank grid (multiples of ``multiple``, at least ``min_rank``; 236 on a grid of 8 -> 8, 16,
    32, 64, 112). None when no rank of the grid saves parameters."""
    start = max(multiple, math.ceil(min_rank / multiple) * multiple)
    top = max_rank // multiple * multiple
    if top < start:
        return []
    ranks, r = {math.ceil(max_rank / 2)}, 1
    while r < max_rank / 2:
        ranks.add(r)
        r *= 2
    return sorted({min(top, max(start, v // multiple * multiple)) for v in ranks})


def measure_sensitivity(model: nn.Module, curves: Mapping[str, Curve], factors: Mapping[str, Factors],
                        evaluate: Callable[[nn.Module], float], known: Mapping[str, Any] | None = None,
                        on_layer: Callable[[str, list[tuple[int, float]]], None] | None = None,
                        rank_multiple: int = 1, min_rank: int = 1) -> Sensitivity:
    """Metric with one layer at a time truncated to each of its :func:`probe_ranks` (on the rank grid).

    Layers in ``known`` (rows measured before, e.g. by a search that was interrupted) are not measured
    again; ``on_layer(name, rows)`` is called after each newly measured layer.
    """
    table: Sensitivity = {}
    for i, (name, c) in enumerate(curves.items()):
        if known is not None and name in known:
            table[name] = [(int(r), float(v)) for r, v in known[name]]
            continue
        table[name] = [(r, float(evaluate(factorize(model, {name: r}, factors)))) for r in probe_ranks(c.max_rank, rank_multiple, min_rank)]
        if on_layer is not None:
            on_layer(name, table[name])
        _log.info("sensitivity %d/%d %s: %s", i + 1, len(curves), name, ", ".join(f"r{r}={v:.3f}" for r, v in table[name]))
    return table


def output_fidelity(reference: nn.Module, batches: Sequence[Any], forward: Any = None) -> Callable[[nn.Module], float]:
    """A score for sensitivity probes: ``1 - sum |y - y0|^2 / sum |y0|^2`` over the floating-point
    outputs ``y`` of a model and ``y0`` of ``reference`` (copied now; its outputs are computed on the
    first call, which counts as one evaluation) on the input ``batches`` (any structure
    :func:`ranksearch.core._inputs.call` takes). 1 means the same outputs; a layer whose truncation moves
    the outputs more scores lower."""
    from ranksearch.core._inputs import call, tensors, to_device
    from ranksearch.core._retrain import best_device

    reference = copy.deepcopy(reference)
    cached: list[list[torch.Tensor]] = []
    energy = [0.0]
    device = best_device()
    moved: list[Any] = []  # the batches on the device, moved once for all probes

    def outputs(model: nn.Module) -> list[list[torch.Tensor]]:
        if not moved:
            moved.extend(to_device(b, device) for b in batches)
        model.to(device).eval()
        out = []
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            for b in moved:
                out.append([t.float() for t in tensors(call(model, b, forward))])  # compared where they are
        return out

    def score(model: nn.Module) -> float:
        if not cached:
            cached.extend(outputs(reference))
            energy[0] = max(sum(float(t.square().sum()) for ts in cached for t in ts), 1e-30)
            if not any(ts for ts in cached):
                raise RankSearchError("The model's outputs hold no floating-point tensor; sensitivity 'output' needs one "
                                      "(use sensitivity='measured').")
        err = sum(float((y - y0).square().sum()) for ys, y0s in zip(outputs(model), cached) for y, y0 in zip(ys, y0s))
        return 1.0 - err / energy[0]

    return score


def table_size(curves: Mapping[str, Curve], rank_multiple: int = 1, min_rank: int = 1) -> int:
    """Evaluations of the model a measured sensitivity table needs (one per layer and probe rank)."""
    return sum(len(probe_ranks(c.max_rank, rank_multiple, min_rank)) for c in curves.values())


def proxy_sensitivity(model: nn.Module, curves: Mapping[str, Curve], factors: Mapping[str, Factors],
                      evaluate: Callable[[nn.Module], float], dense: float, evaluations: int = PROXY_EVALUATIONS,
                      rank_multiple: int = 1, min_rank: int = 1,
                      groups: Mapping[str, str] | None = None) -> tuple[Sensitivity, list[tuple[str, int]]]:
    """A sensitivity table from about ``evaluations`` evaluations of the model, whatever its number of layers.

    Each (layer, probe rank) has a relative error ``e = mse[r] / mse[0]``, known without evaluating
    anything: with data-aware curves, the fraction of the layer's output energy that truncation loses.
    The metric drop is taken to be one monotone function of ``log e`` for all layers (or, with
    ``groups``: layer -> group, one per group of similar layers, e.g. every block's query projection,
    while there are at most ``evaluations // 2`` groups): it is measured at points spread evenly over the
    range of ``log e`` (each layer truncated alone, as :func:`measure_sensitivity` does), fitted by
    isotonic regression and read off for the other points. Returns the table (measured values where
    measured) and the measured points. On vit-mnist one fit for all layers gave better allocations than
    one per :func:`~ranksearch.core._surgery.layer_groups` group, and both worse than the measured table and
    than output probes on a subset (``benchmarks/RESULTS.md``), which is why it is only ever opt-in.
    """
    points = [(n, r, _log_error(c, r)) for n, c in curves.items() for r in probe_ranks(c.max_rank, rank_multiple, min_rank)]
    if not points:
        return {}, []
    if groups is None or len(set(groups.values())) > evaluations // 2:  # too many groups for 2 points each: one fit
        groups = {}
    members: dict[str, list[int]] = {}
    for i, (n, _, _) in enumerate(points):
        members.setdefault(groups.get(n, ""), []).append(i)
    share, extra = divmod(evaluations, len(members))
    table: Sensitivity = {}
    measured: dict[tuple[str, int], float] = {}
    for g, (_, idx) in enumerate(sorted(members.items())):
        order = sorted(idx, key=lambda i: points[i][2])
        k = min(max(1, share + (g < extra)), len(order))
        picks = sorted({order[round(j * (len(order) - 1) / (k - 1))] for j in range(k)}) if k > 1 else [order[len(order) // 2]]
        for i in picks:
            n, r, _ = points[i]
            measured[(n, r)] = float(evaluate(factorize(model, {n: r}, factors)))
        x = np.array([points[i][2] for i in picks])
        drop = np.array([dense - measured[(points[i][0], points[i][1])] for i in picks])
        fit = isotonic(x, drop)  # more error never drops the metric less
        for i in idx:
            n, r, e = points[i]
            table.setdefault(n, []).append((r, measured.get((n, r), dense - fit(e))))
    table = {n: sorted(table[n]) for n in curves if n in table}
    _log.info("proxy sensitivity: %d points of %d groups from %d evaluations", len(points), len(members), len(measured))
    return table, list(measured)


def isotonic(x: np.ndarray, y: np.ndarray) -> Callable[[float], float]:
    """The non-decreasing least-squares fit of ``y`` against ``x`` (pool adjacent violators; equal ``x``
    pooled first), read off by linear interpolation between the fitted points and clipped outside them:
    what ``sklearn.isotonic.IsotonicRegression(out_of_bounds="clip")`` computes."""
    ux, inverse = np.unique(np.asarray(x, float), return_inverse=True)
    weight = np.bincount(inverse).astype(float)
    level = np.bincount(inverse, weights=np.asarray(y, float)) / weight
    blocks: list[list[float]] = []  # [mean, weight, points]
    for v, w in zip(level, weight):
        blocks.append([float(v), float(w), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:  # a violation: pool the two blocks
            v2, w2, n2 = blocks.pop()
            v1, w1, n1 = blocks[-1]
            blocks[-1] = [(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, n1 + n2]
    fitted = np.repeat([b[0] for b in blocks], [int(b[2]) for b in blocks])
    return lambda e: float(np.interp(e, ux, fitted))


def _log_error(c: Curve, r: int) -> float:
    """``log10`` of the layer's relative truncation error at rank ``r`` (floored: an exact rank is tiny, not -inf)."""
    total = max(float(c.mse[0]), 1e-300)
    return math.log10(max(float(c.mse[min(r, len(c.mse) - 1)]) / total, 1e-12))


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


def _dense_only(curves: Mapping[str, Curve], budget: int) -> tuple[dict[str, Curve], int]:
    """The layers that have a rank to choose, and ``budget`` less the weights of those that stay dense
    (no allowed rank: e.g. no pair that runs faster at a latency working point)."""
    open_ = {n: c for n, c in curves.items() if c.max_rank >= 1}
    return open_, budget - sum(c.dense_params for n, c in curves.items() if n not in open_)


def uniform_ranks(curves: Mapping[str, Curve], budget: int) -> dict[str, int]:
    """The largest common fraction of every layer's useful rank range that fits ``budget`` weights."""
    curves, budget = _dense_only(curves, budget)

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
    curves, budget = _dense_only(curves, budget)
    table = {n: rows for n, rows in table.items() if n in curves and rows}

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


def additive_ranks(curves: Mapping[str, Curve], table: Sensitivity, budget: int, max_states: int = 50_000) -> dict[str, int]:
    """The measured ranks that maximize the sum of the layers' scores within ``budget`` weights.

    Each layer chooses one of its measured ranks or its full useful rank (scored as its best
    measurement): a multiple-choice knapsack, solved exactly by dynamic programming over the Pareto
    front of (weights, score) of the layers taken so far. Should the front grow beyond ``max_states``
    it is thinned to that many states evenly spread over the weights (then nearly optimal).
    If even the smallest ranks do not fit, they are returned.
    """
    curves, budget = _dense_only(curves, budget)
    names = [n for n in table if n in curves]
    options = []
    for n in names:
        c, rows = curves[n], table[n]
        rows = [*rows, (c.max_rank, max(v for _, v in rows))] if rows else [(c.max_rank, 0.0)]
        options.append((np.array([r for r, _ in rows]), np.array([v for _, v in rows], float),
                        np.array([c.params(r) for r, _ in rows], np.int64)))
    if sum(int(o[2].min()) for o in options) > budget:
        return {n: int(o[0][np.argmin(o[2])]) for n, o in zip(names, options)}
    cost, score = np.zeros(1, np.int64), np.zeros(1)
    trail = []  # per layer: (state it came from, option taken) for every state of the new front
    for _ranks, values, params in options:
        w = (cost[:, None] + params[None, :]).ravel()
        v = (score[:, None] + values[None, :]).ravel()
        src = np.repeat(np.arange(len(cost)), len(params))
        opt = np.tile(np.arange(len(params)), len(cost))
        ok = w <= budget
        w, v, src, opt = w[ok], v[ok], src[ok], opt[ok]
        order = np.lexsort((-v, w))  # by weights, best score first among equal weights
        w, v, src, opt = w[order], v[order], src[order], opt[order]
        keep = v > np.concatenate(([-np.inf], np.maximum.accumulate(v)[:-1]))  # strictly better than any cheaper
        w, v, src, opt = w[keep], v[keep], src[keep], opt[keep]
        if len(w) > max_states:
            pick = np.unique(np.linspace(0, len(w) - 1, max_states).round().astype(int))
            w, v, src, opt = w[pick], v[pick], src[pick], opt[pick]
        trail.append((src, opt))
        cost, score = w, v
    state = int(np.argmax(score))
    out = {}
    for n, (ranks, _, _), (src, opt) in zip(reversed(names), reversed(options), reversed(trail)):
        out[n] = int(ranks[opt[state]])
        state = int(src[state])
    return {n: out[n] for n in names}
