"""A byte working point in a study: measured once when the study is created, and the coder each trial ends with.

The budget is the whole NNR stream (NNCodec: factors, biases, normalization, the layers left dense, headers).
At creation (:func:`measure_point`):

* the dense model's stream at NNCodec's default qp, and NNCodec's own answer to the budget: the dense model at
  the finest uniform qp whose stream fits, decoded and scored (a reference, recorded in the study);
* the *base ratio*: the parameter ratio at which the seed rule's factorized model, at the default qp, meets the
  budget (bisected with the real encoder) -- where the issue's baselines are enqueued;
* the ratios the trials allocate for: from the base ratio up to :data:`SPAN` times it (at most the study's
  ``target_ratio`` when given, else :data:`TOP`, and at most the ratio whose seed rule still codes within 90% of
  the budget at the grid's coarsest qp), in steps of at most 1.25x. More parameters coded coarser, or fewer coded finer:
  the trade-off a one-shot rule cannot make, which each trial draws (the ``ratio`` parameter).

A Pareto study on the bytes axis measures one such point per budget of its front (:func:`measure_front`).

Each trial allocates its ranks at its ratio, retrains, and is then coded (:class:`Coder`): the enqueued
references at one uniform qp (the finest that fits), the rest each weight at its own qp
(:func:`~ranksearch.core._bytes.fit_bytes`, weighted by the Fisher information of the task's loss). The trial's
value is the decoded model's metric: what the stream delivers.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from torch import nn

from ranksearch.core._bytes import QP_GRID, BytePoint, fit_bytes, uniform_qp
from ranksearch.core._fold import task_folds
from ranksearch.core._nnr import DEFAULT_QP, QP_RANGE, decoded_model, encode, weight_names
from ranksearch.core._qat import QuantAware
from ranksearch.core._solver import reachable_ratio
from ranksearch.core._surgery import factorize
from ranksearch.core._task import Task
from ranksearch.errors import RankSearchError, StudyError
from ranksearch.study._allocator import Allocator
from ranksearch.study._callables import Callables
from ranksearch.study._settings import front_ratios
from ranksearch.study._vocab import Axis, Coding, Method

__all__ = ["SPAN", "TOP", "Coder", "measure_front", "measure_point", "spread"]

_log = logging.getLogger(__name__)

SPAN = 8.0  #: the trials' ratios reach this multiple of the base ratio (at most target_ratio)
TOP = 0.75  #: and at most this ratio when the study gives none


def _rule_bytes(model: nn.Module, allocator: Allocator, ratio: float, qp: int = DEFAULT_QP, folds: Mapping[str, str] | None = None) -> int:
    sol, _ = allocator.at(ratio).solution(Method.SEED_RULE, None)
    small = factorize(model, {n: r for n, r in sol.ranks.items() if r is not None}, allocator.views.plain_factors)
    return len(encode(small.eval(), qp=qp, folds=folds))


def _largest(model: nn.Module, allocator: Allocator, lo: float, hi: float, budget: float, qp: int, folds: Mapping[str, str]) -> float:
    """The largest ratio in [lo, hi] whose seed-rule stream at ``qp`` is within ``budget`` (bisected in log; lo if none)."""
    if _rule_bytes(model, allocator, hi, qp, folds) <= budget:
        return hi
    if _rule_bytes(model, allocator, lo, qp, folds) > budget:
        return lo
    for _ in range(12):  # the stream grows with the ratio
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if _rule_bytes(model, allocator, mid, qp, folds) <= budget else (lo, mid)
    return math.floor(lo * 1e4) / 1e4


def measure_point(model: nn.Module, allocator: Allocator, budget: int, calls: Callables, folds: Mapping[str, str] | None = None,
                  dense_bytes: int | None = None, share: float | None = None) -> BytePoint:
    """The byte working point of ``budget`` bytes on ``model`` (see the module's docstring); ``folds``: the batch norms that
    fold into the layers before them (:meth:`Coder.folds`; a factorized layer keeps its dense layer's name, and its fold);
    ``dense_bytes``: the dense model's stream at the default qp, if measured already; ``share``: the fraction of it the
    budget was asked as (recorded)."""
    start = time.perf_counter()
    folds = dict(folds or {})
    dense = copy.deepcopy(model).eval()
    dense_bytes = len(encode(dense, qp=DEFAULT_QP)) if dense_bytes is None else dense_bytes
    if budget >= dense_bytes:
        raise StudyError(f"--bytes {budget:,} is at least the dense model's NNR stream at the default qp ({dense_bytes:,} bytes): "
                         f"there is nothing to search; ask for fewer, e.g. {dense_bytes // 10:,} (a tenth).")
    reference: dict[str, float] = {}
    try:
        qp, data, tensors = uniform_qp(dense, budget, folds)
    except RankSearchError:  # no qp brings the dense model's stream within the budget (its non-weights, headers): a factorized one may
        reference["floor"] = len(encode(dense, qp=QP_RANGE[1], folds=folds))
        _log.warning("NNCodec cannot code the dense model within %s bytes at any qp (at qp %d: %s bytes); the factorized models may",
                     f"{budget:,}", QP_RANGE[1], f"{int(reference['floor']):,}")
    else:
        decoded = decoded_model(dense, tensors, folds)
        reference.update(qp=qp, bytes=len(data), val=float(calls.evaluate(decoded)))
        if calls.test is not None:
            reference["test"] = float(calls.test(decoded))
    lo = reachable_ratio(allocator.views.plain_curves, allocator.total, allocator.grid, allocator.min_rank)
    cap = allocator.target if allocator.target < 1 else TOP
    if (smallest := _rule_bytes(model, allocator, lo, QP_RANGE[1], folds)) > budget:
        raise StudyError(f"--bytes {budget:,} is unreachable for this model: even at its smallest ratio {lo:.4f} and the coarsest qp "
                         f"{QP_RANGE[1]} its stream takes {smallest:,} bytes (the biases, normalization and headers); ask for more bytes.")
    if _rule_bytes(model, allocator, lo, DEFAULT_QP, folds) > budget:
        _log.warning("even at its smallest ratio %.4f the seed rule's stream at qp %d is over %s bytes: its baselines are coded at "
                     "the finest uniform qp that fits", lo, DEFAULT_QP, f"{budget:,}")
    base = _largest(model, allocator, lo, cap, budget, DEFAULT_QP, folds)
    # the largest ratio still codes within the budget at the grid's coarsest qp (with a tenth to spare: a retrain moves the weights)
    top = _largest(model, allocator, base, min(cap, SPAN * base), 0.9 * budget, QP_GRID[-1], folds)
    ratios = front_ratios((base, top)) if top > base * 1.0001 else (base,)
    point = BytePoint(int(budget), dense_bytes, base, ratios, reference, round(time.perf_counter() - start, 3), share)
    _log.info("bytes %s: the dense model's stream is %s at qp %d; NNCodec on it: %s; the seed rule meets the budget at ratio %.4f; "
              "trials allocate for %d ratios, %.4f to %.4f", f"{budget:,}", f"{dense_bytes:,}", DEFAULT_QP,
              f"qp {reference['qp']:g} ({reference['bytes']:,.0f} bytes, {calls.metric} {reference['val']:.4f})" if "qp" in reference
              else "no qp fits", base, len(ratios), ratios[-1], ratios[0])
    return point


def measure_front(model: nn.Module, allocator: Allocator, shares: Sequence[float], calls: Callables,
                  folds: Mapping[str, str] | None = None) -> tuple[BytePoint, ...]:
    """A Pareto study's byte working points on the bytes axis: one per share of the dense model's stream at the default qp
    (largest first), each measured as :func:`measure_point` measures one."""
    dense_bytes = len(encode(copy.deepcopy(model).eval(), qp=DEFAULT_QP))
    allocator = dataclasses.replace(allocator, axis=Axis.RATIO, front=())  # each point is measured at ratios
    points = []
    for i, share in enumerate(shares):
        budget = max(1, math.floor(share * dense_bytes))
        _log.info("byte point %d of %d: %s of the dense model's %s bytes", i + 1, len(shares), f"{share:g}", f"{dense_bytes:,}")
        points.append(measure_point(model, allocator, budget, calls, folds, dense_bytes, float(share)))
    return tuple(points)


@dataclass(frozen=True)
class Coder:
    """Codes a trial's retrained model within the byte budget and returns the decoded model and what it took.

    Args:
        budget: Bytes of the stream.
        task: Whose training data weighs each weight's coding error (the Fisher information), and on whose first validation
            batch each batch-norm fold is checked; None: plain squared error, nothing folded.
        qat: The share of each trial's retrain, its last steps, trained quantization-aware (:meth:`quantize`; 0: plain).
        front: On a Pareto study's bytes axis, each point's budget by its share of ``dense_bytes`` (:meth:`at`).
        dense_bytes: The dense model's stream at the default qp (what the bytes axis counts in).
    """

    budget: int
    task: Task | None = None
    qat: float = 0.0
    front: Mapping[float, int] = field(default_factory=dict)
    dense_bytes: int = 0

    def at(self, share: float) -> Coder:
        """The coder of the bytes axis' point ``share`` (its budget)."""
        return dataclasses.replace(self, budget=self.front[share])

    def with_front(self, points: Sequence[BytePoint]) -> Coder:
        """The coder of a front over bytes measured (:func:`measure_front`)."""
        assert all(p.share is not None for p in points), "a front's points are measured as shares"
        return dataclasses.replace(self, budget=points[0].budget, front={float(p.share): p.budget for p in points if p.share is not None},
                                   dense_bytes=points[0].dense_bytes)

    def folds(self, model: nn.Module) -> dict[str, str]:
        """The batch norms of ``model`` that fold into the layers before them (checked on a batch of the task's data)."""
        return task_folds(model, self.task) if self.task is not None else {}

    def __call__(self, model: nn.Module, coding: Coding) -> tuple[nn.Module, dict[str, Any]]:
        model = model.eval()
        folds = self.folds(model)
        if coding is Coding.UNIFORM:
            qp, data, tensors = uniform_qp(model, self.budget, folds)
            qps = dict.fromkeys(weight_names(model), qp)
            return decoded_model(model, tensors, folds), {"bytes": len(data), "qps": qps, "predicted_bytes": None, "folds": folds or None}
        coded = fit_bytes(model, self.budget, folds=folds, task=self.task)
        return decoded_model(model, coded.tensors, folds), {"bytes": coded.bytes, "qps": coded.qps, "predicted_bytes": coded.predicted,
                                                            "other_qps": coded.other_qps or None, "folds": folds or None}

    def qps(self, model: nn.Module, coding: Coding) -> dict[str, int]:
        """Each weight's qp were ``model`` coded now (what a quantization-aware retrain rounds to)."""
        return dict(self(model, coding)[1]["qps"])

    def quantize(self, coding: Coding) -> QuantAware | None:
        """The quantization-aware part of a retrain whose model is coded by ``coding`` (None: a plain retrain): its last
        :attr:`qat` of steps round each weight to the step of the qp it would be coded at as that part begins. A model
        that codes over the budget even at the coarsest qps prunes its trial there, as the coding after the retrain would."""
        def qps(model: nn.Module) -> dict[str, int]:
            try:
                return self.qps(model, coding)
            except RankSearchError as e:
                raise optuna.TrialPruned(f"not coded within the budget: {e}") from None

        return QuantAware(self.qat, qps) if self.qat > 0 else None


def spread(qps: dict[str, int]) -> str:
    """``-40..-24`` (or one qp): how a trial's qps read in a log line."""
    values = np.array(list(qps.values()))
    return f"{values.min()}" if values.min() == values.max() else f"{values.min()}..{values.max()}"
