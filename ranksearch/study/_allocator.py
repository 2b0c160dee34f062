"""From a trial's proposal to exact ranks on the budget.

A proposal is, per layer (or group), a ``log2`` step of its rank from the incumbent (``incumbent``
proposals) or a ``log10`` weight on the MSE bound around the prior's centre (``weights``); the solver
turns it into ranks that hit the target ratio of the whole model, so no trial is wasted on an
infeasible allocation.

In the ``incumbent`` space a sampled trial takes the best allocation found so far (the *anchor*), moves
each layer's rank by a factor ``2**u`` (``u`` in ``[-1, 1]``) and scales all ranks together back onto
the budget (:func:`~ranksearch.core.project_ranks`). A step of 0.3 thus changes any layer's rank, and so
its parameters, by about 23%, whether the layer is a 9x9 stem or a 4096-wide classifier; in the
``weights`` space the same step in one layer's MSE weight may move nothing or everything. The anchor is
the best completed trial (ties: the earliest); with CMA-ES, whose own mean moves, the best completed
*enqueued* allocation, so its coordinates stay put; before any trial completed, the prior's centre.

In a Pareto study each trial also draws the point it allocates for (the ``ratio`` parameter, one of the study's
front ratios, or ``latency`` on the latency axis; an enqueued allocation carries its own), and its anchor is the best trial at that ratio, or at
the nearest ratio that has one (its ranks scaled onto this trial's budget). On the bytes axis it draws its byte budget
(``bytes``, a fraction of the dense model's stream) and then, as a byte working point's trial does, its ratio among that
budget's (``ratio@F``); its anchor is the best trial of that budget at the nearest ratio.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import xxhash
from optuna.trial import FrozenTrial, TrialState

from ranksearch.core._solver import Latency, Solution, log2_ranks, project_ranks, solve_ratio
from ranksearch.core._timing import TimingTable
from ranksearch.study._record import TrialRecord, metric_of
from ranksearch.study._storage import write_trial
from ranksearch.study._views import Views
from ranksearch.study._vocab import Axis, FactorKind, Method, Proposals

__all__ = ["PARAM_PREFIX", "REDRAWS", "STEP_BOUND", "STEP_PREFIX", "Allocator", "anchor_trial"]

PARAM_PREFIX = "log10w:"  #: Optuna parameter of one searched weight: PARAM_PREFIX + layer (or group) name
STEP_PREFIX = "log2r:"  #: Optuna parameter of one searched step (incumbent proposals): STEP_PREFIX + layer (or group)
STEP_BOUND = 1.0  #: searched steps range over [-STEP_BOUND, STEP_BOUND] (log2 of the rank factor)
REDRAWS = 8  #: new draws of a sampled step whose ranks a trial of the study already has (the k-th: 2.25**k wider, up to +-1.5**k)


def anchor_trial(study: optuna.Study, *, enqueued_only: bool = False, target: float | None = None,
                 budget: float | None = None) -> FrozenTrial | None:
    """The completed trial sampled proposals start from: the best by value (the earliest of equals);
    ``enqueued_only``: among the enqueued allocations; ``target`` (a Pareto study): among the trials that allocated
    for that ratio, else for the nearest one (in log; of two as near, the smaller); ``budget`` (a front over bytes: the
    trial's byte point, its ``target``): first among the trials of that budget, if any. None before any qualifying
    trial completed."""
    done: list[tuple[FrozenTrial, TrialRecord]] = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        record = TrialRecord.of(t)
        if record.ranks is not None and not (enqueued_only and record.method is Method.SEARCHED):
            done.append((t, record))

    def ratio(r: TrialRecord) -> float | None:  # on the bytes axis a trial's target is its budget, its ratio_target the ratio
        return r.target if budget is None else r.ratio_target

    if budget is not None:
        done = [(t, r) for t, r in done if r.target == budget] or done
    if target is not None and (targets := {x for _, r in done if (x := ratio(r)) is not None}):
        near = min(targets, key=lambda r: (abs(math.log(r / target)), r))
        done = [(t, r) for t, r in done if ratio(r) == near]
    return max((t for t, _ in done), key=lambda t: (metric_of(t), -t.number), default=None)


def ratio_param(budget: float) -> str:
    """The Optuna parameter of a bytes-axis trial's ratio, one per budget (each budget has its own ratios)."""
    return f"ratio@{budget:g}"


@dataclass(frozen=True)
class Allocator:
    """Turns proposals into ranks on the study's budget and rank grid.

    Args:
        views: Curves and factors (the seed rule allocates on the plain ones).
        target: The target ratio of the whole model's parameters.
        total: The dense model's parameters.
        grid: Ranks are multiples of this; ``min_rank`` the smallest.
        groups: Layer -> the searched parameter it shares (itself, or its group of similar layers).
        proposals: What sampled trials' parameters are.
        spread: Searched log10 weights range over ``[-spread, spread]`` (``weights`` proposals).
        step: The sampler's step (std of the redraws of a step that repeats a trial's ranks).
        enqueued_anchor: Step from the best enqueued allocation, not the best trial (CMA-ES).
        centre: Per-layer log-weights the searched offsets are added to (the prior's centre).
        latency: A latency working point's budget of seconds (the views' curves then carry each layer's
            limit: the largest rank whose pair runs faster than the dense layer).
        front: A Pareto study's ratios (largest first): each trial allocates for one of them, not for ``target``; on the
            latency axis (``axis``), its latency fractions: each trial keeps to one of them, within ``target``; on the bytes
            axis, its budgets (fractions of the dense model's stream): each trial codes within one of them.
        ratios: On the bytes axis, each budget's ratios (largest first): a trial allocates for one of its budget's.
        budget: On the bytes axis, the budget an allocator :meth:`at` a point codes within (its anchor's first filter).
        timing: A latency working point's timing table (the budgets of a Pareto study's latency fractions, and each
            allocation's predicted latency).
    """

    views: Views
    target: float
    total: int
    grid: int
    min_rank: int
    groups: Mapping[str, str]
    proposals: Proposals
    spread: float
    step: float
    enqueued_anchor: bool = False
    centre: Mapping[str, float] = field(default_factory=dict)
    latency: Latency | None = None
    front: tuple[float, ...] = ()
    axis: Axis = Axis.RATIO
    timing: TimingTable | None = None
    ratios: Mapping[float, tuple[float, ...]] = field(default_factory=dict)
    budget: float | None = None

    def at(self, target: float, ratio: float | None = None) -> Allocator:
        """The allocator of another working point of a Pareto study: a target ratio, or on the latency axis a latency fraction,
        or on the bytes axis a budget (a fraction of the dense model's stream) and the ``ratio`` it allocates for."""
        if self.axis is Axis.BYTES:
            assert ratio is not None, "a trial on the bytes axis allocates for a ratio of its budget's"
            return dataclasses.replace(self, target=float(ratio), budget=float(target))
        if self.axis is Axis.RATIO:
            return dataclasses.replace(self, target=float(target))
        assert self.timing is not None, "a latency axis allocates within the timing table (limited())"
        return dataclasses.replace(self, latency=self.timing.latency(self.views.plain_curves, float(target)))

    def reference_ratio(self, point: float) -> float:
        """The ratio a working point's references allocate for: the point itself on the ratio axis, the study's on the latency
        axis (within the point's latency), the point's base ratio on the bytes axis (its smallest: where the seed rule's
        stream at the default qp meets its budget)."""
        if self.axis is Axis.BYTES:
            return self.ratios[point][-1]
        return point if self.axis is Axis.RATIO else self.target

    def fixed(self, target: float, ratio: float | None = None) -> dict[str, Any]:
        """The Optuna parameters that pin an enqueued trial to a working point (:meth:`at`)."""
        if self.axis is Axis.BYTES:
            return {Axis.BYTES.value: target, ratio_param(target): ratio}
        return {self.axis.value: target}

    def cost(self, sol: Solution) -> float:
        """An allocation's value on the Pareto study's axis: its ratio, or its predicted latency as a fraction of dense (the
        bytes axis: known once the trial is coded)."""
        if self.axis is Axis.RATIO:
            return float(sol.ratio)
        assert self.timing is not None
        return self.timing.predicted(sol.ranks) / self.timing.model

    def with_centre(self, centre: Mapping[str, float]) -> Allocator:
        return dataclasses.replace(self, centre=dict(centre))

    def search_space(self) -> list[str]:
        """Names of the searched parameters (one per layer or group)."""
        prefix = STEP_PREFIX if self.proposals is Proposals.INCUMBENT else PARAM_PREFIX
        return [prefix + g for g in dict.fromkeys(self.groups.values())]

    def params_for(self, logw: Mapping[str, float]) -> dict[str, float]:
        """The point of the searched space nearest to absolute per-layer log-weights (for enqueueing;
        in the incumbent space, whose coordinates are relative, the origin)."""
        if self.proposals is Proposals.INCUMBENT:
            return {p: 0.0 for p in self.search_space()}
        offsets: dict[str, list[float]] = {}
        for n in self.views.curves:
            offsets.setdefault(self.groups[n], []).append(float(logw.get(n, 0.0)) - self.centre.get(n, 0.0))
        s = self.spread
        return {PARAM_PREFIX + g: float(min(s, max(-s, sum(o) / len(o)))) for g, o in offsets.items()}

    def solution(self, method: Method | None, logw: Mapping[str, float] | None) -> tuple[Solution, FactorKind]:
        """Ranks of an allocation and the kind of factors they use (the seed rule: plain, no weights)."""
        if method is Method.SEED_RULE:
            return (solve_ratio(self.views.plain_curves, self.target, self.total, None, self.grid, self.min_rank, latency=self.latency),
                    FactorKind.PLAIN)
        w = {n: 10.0 ** (logw or {}).get(n, 0.0) for n in self.views.curves}
        return solve_ratio(self.views.curves, self.target, self.total, w, self.grid, self.min_rank, latency=self.latency), self.views.kind

    def exact(self, method: Method | None, ranks: Mapping[str, int]) -> tuple[Solution, FactorKind]:
        """An allocation given as ranks (an enqueued one, or the rerun of a failed trial): exactly those, in
        every process (curves computed elsewhere may differ in their last bits and tip a solver's choice)."""
        seed = method is Method.SEED_RULE
        curves = self.views.plain_curves if seed else self.views.curves
        fixed = self.total - sum(c.dense_params for c in curves.values())
        params = fixed + sum(c.params(ranks.get(n)) for n, c in curves.items())
        return Solution({n: ranks.get(n) for n in curves}, float("nan"), int(params), self.total), (FactorKind.PLAIN if seed else
                                                                                                        self.views.kind)

    def anchor(self, study: optuna.Study) -> tuple[int | None, dict[str, int | None]]:
        """The trial number and ranks sampled incumbent-space proposals step from (None: the centre)."""
        best = anchor_trial(study, enqueued_only=self.enqueued_anchor, target=self.target if self.front else None, budget=self.budget)
        if best is not None:
            return best.number, dict(TrialRecord.of(best).kept_ranks)
        return None, dict(self.solution(None, self.centre)[0].ranks)

    def propose(self, trial: optuna.Trial) -> tuple[Solution, FactorKind]:
        """Ranks of the trial and the kind of factors they use.

        An enqueued allocation (the seed rule, uniform, sensitivity, a warm start, a retried trial)
        allocates exactly as it was given (its per-layer log-weights, or for a retried sampled trial
        of the incumbent space its log2 rank targets, ride in the trial's record); its parameters are
        its nearest point in the searched space, for the sampler to learn from. Every trial records
        what it allocated with, absolutely. In a Pareto study the trial first takes its point: the
        parameter named by the study's axis (``ratio`` or ``latency``).
        """
        if self.front:
            drawn = trial.suggest_categorical(self.axis.value, self.front)  # an enqueued or retried trial: its own, fixed
            record = TrialRecord.of(trial)
            target = float(drawn) if record.target is None else record.target
            ratio = None
            if self.axis is Axis.BYTES:  # then its ratio, among its budget's
                drawn_ratio = trial.suggest_categorical(ratio_param(target), self.ratios[target])
                ratio = float(drawn_ratio) if record.ratio_target is None else record.ratio_target
            if record.target is None:
                write_trial(trial, TrialRecord(target=target, ratio_target=ratio))
            return self.at(target, ratio)._propose(trial)
        return self._propose(trial)

    def _propose(self, trial: optuna.Trial) -> tuple[Solution, FactorKind]:
        if self.proposals is Proposals.INCUMBENT:
            return self._propose_steps(trial)
        groups = dict.fromkeys(self.groups.values())
        u = {g: trial.suggest_float(PARAM_PREFIX + g, -self.spread, self.spread) for g in groups}
        record = TrialRecord.of(trial)
        if record.ranks is not None:
            return self.exact(record.method, record.ranks)
        logw = record.log10w
        if logw is None and record.method is not Method.SEED_RULE:
            logw = {n: self.centre.get(n, 0.0) + u[self.groups[n]] for n in self.views.curves}
            write_trial(trial, TrialRecord(log10w=logw))
        return self.solution(record.method, logw)

    def _propose_steps(self, trial: optuna.Trial) -> tuple[Solution, FactorKind]:
        u = {g: trial.suggest_float(STEP_PREFIX + g, -STEP_BOUND, STEP_BOUND) for g in dict.fromkeys(self.groups.values())}
        record = TrialRecord.of(trial)
        if record.ranks is not None:
            return self.exact(record.method, record.ranks)
        if record.method is Method.SEED_RULE or record.log10w is not None:
            return self.solution(record.method, record.log10w)
        curves = self.views.curves
        if record.log2r is not None:  # a retried trial: exactly what it allocated before
            return project_ranks(curves, record.log2r, self.target, self.total, self.grid, self.min_rank, self.latency), self.views.kind
        number, ranks = self.anchor(trial.study)
        base = log2_ranks(curves, ranks)
        seen = [r.ranks for t in trial.study.get_trials(deepcopy=False) if (r := TrialRecord.of(t)).ranks is not None]
        # a step whose ranks a trial already has is drawn again, wider (seeded by the step: deterministic),
        # so that few trials are twins, whose value is known without a retrain but which fill the trial cap;
        # the k-th draw: normal with std step * 1.5**k clipped to [-1, 1], times 1.5**k
        rng = np.random.default_rng(xxhash.xxh32_intdigest(json.dumps(u, sort_keys=True).encode()))
        step: dict[str, Any] = dict(u)
        for redraw in range(REDRAWS + 1):
            if redraw:
                wider = 1.5**redraw
                step = {g: float(np.clip(rng.normal(0.0, self.step * wider), -STEP_BOUND, STEP_BOUND)) * wider for g in u}
            targets = {n: base[n] + step[self.groups[n]] for n in curves}
            sol = project_ranks(curves, targets, self.target, self.total, self.grid, self.min_rank, self.latency)
            if {n: r for n, r in sol.ranks.items() if r is not None} not in seen:
                break
        write_trial(trial, TrialRecord(anchor=number, redraws=redraw, log2r=targets))
        return sol, self.views.kind
