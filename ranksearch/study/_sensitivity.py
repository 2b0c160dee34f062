"""The study's sensitivity table: which kind, on how many samples (:func:`sensitivity_plan`), and
measuring it so that an interrupted setup keeps the rows it measured (:func:`measure_table`)."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import optuna
from torch import nn

from ranksearch.core._calibrate import calibration_batches
from ranksearch.core._inputs import batch_len, first_samples
from ranksearch.core._progress import bar
from ranksearch.core._retrain import evaluate as evaluate_metric
from ranksearch.study._baselines import measure_sensitivity, output_fidelity, proxy_sensitivity, table_size
from ranksearch.study._callables import Callables, Evaluate, subset_of
from ranksearch.study._record import StudyRecord
from ranksearch.study._storage import read_study, write_study
from ranksearch.study._views import Views
from ranksearch.study._vocab import Sensitivity, SensitivityKind

__all__ = ["MIN_OUTPUT_SAMPLES", "SensitivityPlan", "measure_table", "probe_for", "sensitivity_plan"]

_log = logging.getLogger(__name__)

#: fewest validation inputs ``auto`` scores output probes on, whatever the budget
MIN_OUTPUT_SAMPLES = 16


@dataclass(frozen=True)
class SensitivityPlan:
    """How a study's sensitivity table is made: ``kind`` (measured, output or proxy) on ``samples`` of the
    ``of`` validation samples (or calibration inputs) there are (``samples == of``: all of them; ``of`` 0:
    the user's evaluate, of unknown size), probing ranks on the grid (multiples of ``grid``, at least
    ``min_rank``)."""

    kind: SensitivityKind
    samples: int
    of: int
    grid: int = 1
    min_rank: int = 1

    @property
    def share(self) -> float:
        """One probe's cost in evaluations on the whole split."""
        return self.samples / self.of if self.of else 1.0


def sensitivity_plan(kind: SensitivityKind, budget: int, samples: int, views: Views, calls: Callables, grid: int = 1,
                     min_rank: int = 1) -> SensitivityPlan:
    """The kind and the samples of the table. Measured probes run on the validation split (or the user's
    evaluate, of unknown size), output probes on its inputs (or on the calibration inputs, which then
    stand in for the split). ``auto`` measures the metric when the table fits ``budget`` (counted in
    passes over the split); else it scores output probes on a subset small enough to fit (at least
    :data:`MIN_OUTPUT_SAMPLES`); with no inputs to run them on (the user's evaluate and no calibration)
    it measures the whole table and says how to bound it."""
    val = len(calls.val) if calls.val is not None else 0  # type: ignore[arg-type]
    inputs = val or (sum(batch_len(b) for b in calls.inputs) if calls.inputs else 0)

    def take(of: int) -> int:
        return min(samples, of) if samples and of else of

    measured = SensitivityPlan(SensitivityKind.MEASURED, take(val), val, grid, min_rank)
    if kind in (SensitivityKind.MEASURED, SensitivityKind.PROXY):
        return replace(measured, kind=kind)
    if kind is SensitivityKind.OUTPUT:
        return SensitivityPlan(kind, take(inputs), inputs, grid, min_rank)
    size = table_size(views.curves, grid, min_rank)
    if size * measured.share <= budget:
        return measured
    if not inputs:
        _log.warning("the sensitivity table needs %d evaluations of your evaluate (budget %d); give calibration= inputs to "
                     "score them on a subset (sensitivity 'output'), or sensitivity='proxy' for a cheap, less accurate one",
                     size, budget)
        return measured
    fits = max(MIN_OUTPUT_SAMPLES, math.floor(budget * inputs / max(size, 1)))
    return SensitivityPlan(SensitivityKind.OUTPUT, min(take(inputs), fits), inputs, grid, min_rank)


def probe_for(model: nn.Module, plan: SensitivityPlan, calls: Callables) -> tuple[Evaluate, bool]:
    """The score the plan's probes take, and whether it is the study's own metric on the whole split
    (else its value for the dense model must be measured too)."""
    whole = plan.samples == plan.of
    if plan.kind is SensitivityKind.OUTPUT:
        assert calls.val is not None or calls.inputs, "the plan checks that output probes have inputs"
        batches = (calibration_batches(calls.val, plan.samples, batch_size=128, seed=0) if calls.val is not None
                   else first_samples(calls.inputs or [], plan.samples))
        return output_fidelity(model, batches, calls.forward), False
    if whole or not plan.of or calls.val is None:  # the whole split, or the user's evaluate (the plan refuses samples without a task)
        return calls.evaluate, True
    subset = subset_of(calls.val, plan.samples)
    metric, forward = calls.metric, calls.forward
    return (lambda m: evaluate_metric(m, subset, metric, forward=forward)), False  # type: ignore[arg-type]


def measure_table(study: optuna.Study, model: nn.Module, views: Views, plan: SensitivityPlan, calls: Callables,
                  beat: Callable[[], None], progress: bool = False) -> tuple[Sensitivity, int]:
    """Measure the study's table per :func:`sensitivity_plan`, keeping each layer's rows in the study as
    they come (a setup taken over after a crash measures only the rest); returns the table and the
    evaluations of the model it took. Records how it was made (kind, samples)."""
    partial = read_study(study).sensitivity_rows or {}
    measured = 0
    probe, own = probe_for(model, plan, calls)
    if plan.kind is SensitivityKind.PROXY:  # a few evaluations, whatever the number of layers: measured again after an interruption
        dense = read_study(study).dense or {}
        reference = float(dense["val"]) if own else float(probe(copy.deepcopy(model)))
        table, points = proxy_sensitivity(model, views.curves, views.factors, probe, reference, rank_multiple=plan.grid,
                                          min_rank=plan.min_rank)
        measured = len(points) + (not own)
        write_study(study, StudyRecord(sensitivity_measured=points))
    else:
        shown = bar(len(views.curves), "sensitivity", progress, initial=len(partial), unit="layer")

        def keep(name: str, rows: list[tuple[int, float]]) -> None:
            nonlocal measured
            measured += len(rows)
            write_study(study, StudyRecord(sensitivity_rows={name: rows}))
            beat()
            shown.update(1)

        with shown:
            table = measure_sensitivity(model, views.curves, views.factors, probe, known=partial, on_layer=keep,
                                        rank_multiple=plan.grid, min_rank=plan.min_rank)
        measured += plan.kind is SensitivityKind.OUTPUT  # the dense model's outputs, computed by the first probe
    write_study(study, StudyRecord(sensitivity_kind=plan.kind, sensitivity_samples=(plan.samples, plan.of)))
    return table, measured
