"""Setting a created study up, once: the dense metric, the sensitivity table, the prior's centre, and the
enqueued allocations (the seed rule, the baselines, warm starts)."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from torch import nn

from ranksearch.core._bytes import BytePoint
from ranksearch.core._surgery import count_params
from ranksearch.core._timing import TimingTable
from ranksearch.study._baselines import additive_ranks, greedy_ranks, log_weights_for, uniform_ranks
from ranksearch.study._bytes import measure_front, measure_point
from ranksearch.study._latency import measure_timing
from ranksearch.study._plan import Plan
from ranksearch.study._record import StudyRecord, TrialRecord, fixed_cost_line
from ranksearch.study._sensitivity import measure_table
from ranksearch.study._storage import read_study, write_study
from ranksearch.study._views import Views
from ranksearch.study._vocab import Axis, Coding, Method, Prior, Sensitivity

__all__ = ["set_up", "starting_points"]

_log = logging.getLogger(__name__)


def set_up(study: optuna.Study, model: nn.Module, plan: Plan, *, sensitivity: Sensitivity | None = None,
           timing: TimingTable | None = None, warm_start: Sequence[Mapping[str, float]] = (),
           progress: bool = False, byte_point: BytePoint | None = None,
           byte_front: Sequence[BytePoint] | None = None) -> Sensitivity | None:
    """Set a created study up, once: the dense model's metric, at a latency working point the timing
    table (measured here unless given or stored), the sensitivity table (measured here unless given;
    rows already stored by an interrupted setup are kept), the prior's centre, and the enqueued
    allocations (the seed rule first, then uniform, the AIMET-style greedy and the sensitivity-sum ones,
    then the warm starts), all within the timing table's limits. At a byte working point (measured here unless given or
    stored) the dense model as given, coded at a uniform qp, comes first (without a ratio bound); then the references at
    its base ratio, coded at a uniform qp, the seed rule, coded per weight, at a few of its larger ratios, and the dense
    model coded per tensor. A Pareto study on the bytes axis measures one byte working point per budget of its front and
    enqueues all of this at each of its given points. An allocation the study already holds
    is not enqueued again, so a setup taken over after a crash enqueues each one once. Returns the
    sensitivity table."""
    record = read_study(study)
    setup = dict(record.setup or {})

    def beat() -> None:  # tells joiners on other hosts that the setup is alive
        write_study(study, StudyRecord(setup={**setup, "at": time.time()}))

    if record.input_shape is None and plan.calls.input_shape is not None:
        write_study(study, StudyRecord(input_shape=plan.calls.input_shape))
    cost: dict[str, Any] = {f"{k}_s": round(v, 3) for k, v in plan.views.seconds.items()}
    if record.dense is not None or record.sensitivity_rows:
        cost["resumed"] = True  # an interrupted setup did part of the work: its share is not in these figures
    if record.dense is None:
        start = time.perf_counter()
        dense = {"val": float(plan.calls.evaluate(copy.deepcopy(model)))}
        if plan.calls.test is not None:
            dense["test"] = float(plan.calls.test(copy.deepcopy(model)))
        write_study(study, StudyRecord(dense=dense, metric=plan.calls.metric))
        _log.info("dense model: %s", dense)
        cost.update(dense_s=round(time.perf_counter() - start, 3), dense_evaluations=len(dense))
    if plan.latency is not None:  # stored once: every process allocates with the same table
        timing = record.timing or timing
        if record.timing is None:
            timing = timing or measure_timing(model, plan.allocator, plan.latency, plan.calls.input_shape, progress)
            write_study(study, StudyRecord(timing=timing))
            cost["timing_s"] = round(timing.took_s, 3)
        assert timing is not None
        plan = plan.with_timing(timing)
    bytes_axis = plan.allocator.axis is Axis.BYTES
    if plan.coder is not None and bytes_axis:  # stored once, like the timing table
        stored = record.byte_front
        if stored is None:
            stored = tuple(byte_front) if byte_front is not None else measure_front(model, plan.allocator, plan.allocator.front,
                                                                                    plan.calls, plan.coder.folds(model))
            write_study(study, StudyRecord(byte_front=stored))
            cost["bytes_s"] = round(sum(p.took_s for p in stored), 3)
        plan = plan.with_byte_front(stored)
    elif plan.coder is not None:
        byte_point = record.byte_point or byte_point
        if record.byte_point is None:
            byte_point = byte_point or measure_point(model, plan.allocator, plan.coder.budget, plan.calls, plan.coder.folds(model))
            write_study(study, StudyRecord(byte_point=byte_point))
            cost["bytes_s"] = round(byte_point.took_s, 3)
        assert byte_point is not None
        plan = plan.with_bytes(byte_point)
    table, start, measured = sensitivity, time.perf_counter(), 0
    if table is None and (plan.baselines or plan.prior is Prior.SENSITIVITY):
        table = read_study(study).sensitivity
        if table is None:
            table, measured = measure_table(study, model, plan.views, plan.sensitivity, plan.calls, beat, progress)
    record = read_study(study)
    if table is not None and record.sensitivity is None:
        write_study(study, StudyRecord(sensitivity=table))
    if record.fixed_cost is None:  # stored once, by the process that set the study up
        write_study(study, StudyRecord(fixed_cost=_fixed_cost(cost, record, time.perf_counter() - start, measured)))
    points = plan.points or (plan.allocator.target,)
    base = {r: plan.allocator.reference_ratio(r) for r in points}
    starts = {r: starting_points(model, plan.views, base[r], table) for r in points}
    first = starts[points[0]]  # a Pareto study's largest working point
    centre = first.get(Method.SENSITIVITY_SUM, {}) if plan.prior is Prior.SENSITIVITY else {}
    write_study(study, StudyRecord(centre=centre))
    coding = None if plan.coder is None else Coding.UNIFORM  # a byte working point's references: NNCodec's one qp
    for r in points:
        share = r if bytes_axis else None  # a byte working point's own budget, or the bytes axis' point r
        if plan.coder is not None:  # first, NNCodec on the dense model: a trial must beat it on validation to replace it
            _enqueue_dense(study, plan, Coding.UNIFORM, share)
        _enqueue(study, plan, centre, starts[r], warm_start, r if plan.points else None, coding, ratio=base[r] if bytes_axis else None)
        if plan.coder is None:
            continue
        larger = plan.allocator.ratios[r] if bytes_axis else plan.allocator.front
        for ratio in larger[:-1][::3]:  # the seed rule coded per weight, at larger ratios
            _enqueue(study, plan, centre, {}, (), r if bytes_axis else ratio, Coding.FITTED, rule_only=True,
                     ratio=ratio if bytes_axis else None)
        _enqueue_dense(study, plan, Coding.FITTED, share)  # and the dense model coded per tensor
    write_study(study, StudyRecord(setup={**setup, "state": "ready", "at": time.time()}))
    return table


def _enqueue_dense(study: optuna.Study, plan: Plan, coding: Coding, share: float | None = None) -> None:
    """At a byte working point without a ratio bound: the dense model as it was given (no layer factorized, not retrained),
    coded with ``coding``, once (on the bytes axis, once per point ``share``)."""
    a = plan.allocator
    target, ratio = (a.front[0], None) if share is None else (share, a.ratios[share][0])
    if a.target < 1 or any((r := TrialRecord.of(t)).method is Method.DENSE and r.coding is coding and r.target == target
                           for t in study.get_trials(deepcopy=False)):
        return
    study.enqueue_trial({**{p: 0.0 for p in a.search_space()}, **a.fixed(target, ratio)},
                        user_attrs=TrialRecord(method=Method.DENSE, target=target, ratio_target=ratio, ranks={}, coding=coding).to_attrs())


def _fixed_cost(cost: dict[str, Any], record: StudyRecord, seconds: float, measured: int) -> dict[str, Any]:
    """What the setup took before the first trial, in seconds and evaluations of the model."""
    cost.update(sensitivity_s=round(seconds, 3), sensitivity_evaluations=measured)
    if record.sensitivity_kind is not None:
        cost["sensitivity_kind"] = record.sensitivity_kind.value
    share = 1.0
    if record.sensitivity_samples is not None:
        cost["sensitivity_samples"], cost["val_samples"] = record.sensitivity_samples
        samples, of = record.sensitivity_samples
        share = samples / of if of else 1.0
    cost["evaluations"] = cost.get("dense_evaluations", 0) + measured
    cost["split_evaluations"] = round(cost.get("dense_evaluations", 0) + measured * share, 1)  # as whole-split passes
    cost["total_s"] = round(sum(v for k, v in cost.items() if k.endswith("_s")), 3)
    _log.info("fixed cost before the first trial: %s", fixed_cost_line(cost))
    return cost


def _enqueue(study: optuna.Study, plan: Plan, centre: Mapping[str, float], starts: Mapping[Method, dict[str, float]],
             warm_start: Sequence[Mapping[str, float]], target: float | None = None, coding: Coding | None = None,
             rule_only: bool = False, ratio: float | None = None) -> None:
    """Enqueue the seed rule, the baselines and the warm starts, each once (in a Pareto study, once at each of its
    working points: ``target``, on the bytes axis at its ``ratio``; at a byte working point with its ``coding``);
    ``rule_only``: the seed rule alone."""
    allocator = plan.allocator.with_centre(centre)
    fixed = {} if target is None else allocator.fixed(target, ratio)
    allocator = allocator if target is None else allocator.at(target, ratio)
    have = {r.method for t in study.get_trials(deepcopy=False) if (r := TrialRecord.of(t)).target == target and r.ratio_target == ratio}

    def ranks(method: Method, logw: Mapping[str, float] | None) -> dict[str, int]:  # solved here, once: the same in every worker
        return {n: r for n, r in allocator.solution(method, logw)[0].ranks.items() if r is not None}

    if Method.SEED_RULE not in have:
        study.enqueue_trial({**{p: 0.0 for p in allocator.search_space()}, **fixed},
                            user_attrs=TrialRecord(method=Method.SEED_RULE, target=target, ratio_target=ratio,
                                                   ranks=ranks(Method.SEED_RULE, None), coding=coding).to_attrs())
    if rule_only:
        return
    exact = [*((m, w) for m, w in starts.items() if plan.baselines), *((Method.WARM_START, dict(w)) for w in warm_start)]
    for method, logw in exact:
        if method in have:
            continue
        logw = {n: float(logw.get(n, 0.0)) for n in plan.views.curves}
        study.enqueue_trial({**allocator.params_for(logw), **fixed},
                            user_attrs=TrialRecord(method=method, target=target, ratio_target=ratio, log10w=logw,
                                                   ranks=ranks(method, logw), coding=coding).to_attrs())


def starting_points(model: nn.Module, views: Views, target: float, sensitivity: Sensitivity | None) -> dict[Method, dict[str, float]]:
    """Log-weights of the enqueued allocations: uniform, and from the sensitivity table the AIMET-style
    greedy one and the sum-of-scores one (the prior's centre)."""
    total = count_params(model)
    fixed = total - sum(c.dense_params for c in views.curves.values())
    budget = math.floor(target * total) - fixed
    starts = {Method.UNIFORM: log_weights_for(views.curves, uniform_ranks(views.curves, budget))}
    if sensitivity is not None:
        starts[Method.SENSITIVITY] = log_weights_for(views.curves, greedy_ranks(views.curves, sensitivity, budget))
        starts[Method.SENSITIVITY_SUM] = log_weights_for(views.curves, additive_ranks(views.curves, sensitivity, budget))
    return starts
