"""Resolve once, pass components down: settings and a model become a :class:`Plan`.

:func:`resolve` fills in what the study stores (``auto`` factors and rank grid, the model's identity,
the retrain recipe); :func:`make_plan` turns the resolved settings, the model and its task (or the user's
callables) into the parts a study runs on: views, callables, allocator, sampler, pruner, sensitivity
plan. ``search`` and ``run_worker`` both call them; no module below reads :class:`SearchSettings`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from torch import nn

from ranksearch._extras import require
from ranksearch.core._bytes import BytePoint
from ranksearch.core._cost import rank_multiple_for
from ranksearch.core._inputs import Forward
from ranksearch.core._retrain import RetrainSettings, best_device
from ranksearch.core._spectra import spectra
from ranksearch.core._surgery import count_params, factorize, layer_groups
from ranksearch.core._task import Task
from ranksearch.core._timing import Runtime, TimingTable
from ranksearch.core._weights import state_digest
from ranksearch.errors import StudyError
from ranksearch.study._allocator import Allocator
from ranksearch.study._bytes import Coder
from ranksearch.study._callables import Callables, Evaluate, Retrain, accepts, task_callables, user_callables
from ranksearch.study._gate import FrontGate
from ranksearch.study._latency import LatencyPlan, limited
from ranksearch.study._pruners import make_pruner
from ranksearch.study._record import StudyRecord, TrialRecord
from ranksearch.study._samplers import make_sampler
from ranksearch.study._sensitivity import SensitivityPlan, sensitivity_plan
from ranksearch.study._settings import QAT, Components, SearchSettings
from ranksearch.study._views import Views, views_for
from ranksearch.study._vocab import CUSTOM, Coding, Factors, Granularity, Method, Prior, Pruner, Sampler, SensitivityKind

__all__ = ["Plan", "Workload", "check_model", "latency_plan", "make_plan", "resolve"]


@dataclass(frozen=True)
class Workload:
    """What scores trials: a ``task`` (built-in retrain and metric) or the user's ``evaluate`` and
    ``retrain``, with the ``calibration`` input batches and the ``forward`` that calls the model on them."""

    task: Task | None = None
    evaluate: Evaluate | None = None
    retrain: Retrain | None = None
    calibration: Sequence[Any] | None = None
    forward: Forward | None = None

    def __post_init__(self) -> None:
        if (self.task is None) == (self.evaluate is None):
            raise StudyError("Give either task= (built-in retrain and metric) or evaluate= (your own callables).")
        if self.calibration is not None:
            object.__setattr__(self, "calibration", list(self.calibration))  # read by the factors and the output probes

    @property
    def has_inputs(self) -> bool:
        return self.task is not None or self.calibration is not None


@dataclass(frozen=True)
class Plan:
    """The parts a study runs on, resolved from its settings once per process."""

    views: Views
    calls: Callables
    allocator: Allocator
    sampler: optuna.samplers.BaseSampler
    pruner: optuna.pruners.BasePruner
    baselines: bool
    prior: Prior
    sensitivity: SensitivityPlan
    latency: LatencyPlan | None = None
    screen: FrontGate | None = None  #: a Pareto study's gate, asked by its objective (Optuna prunes no multi-objective study)
    points: tuple[float, ...] = ()  #: a Pareto study's working points, where the references are enqueued (largest first)
    coder: Coder | None = None  #: a byte working point's (its ratios come with :meth:`with_bytes`)

    def retrained(self, model: nn.Module, trial: TrialRecord) -> nn.Module:
        """A trial's factorized model retrained again with the study's seed (its weights were not uploaded), in eval mode."""
        _, factors = self.views.of(trial.factors or self.views.kind)
        small = factorize(model, trial.kept_ranks, factors)
        if trial.method is not Method.DENSE:  # a byte working point's dense candidates are scored as they were given
            quantize = None if self.coder is None or not trial.qat else dataclasses.replace(self.coder_of(trial), qat=trial.qat).quantize(
                trial.coding or Coding.FITTED)
            self.calls.retrain_again(small, quantize)
        return small.eval()

    def coder_of(self, trial: TrialRecord) -> Coder:
        """The coder of a trial: the study's, or on the bytes axis its budget's."""
        assert self.coder is not None
        return self.coder.at(trial.target) if self.coder.front and trial.target is not None else self.coder

    def with_byte_front(self, points: Sequence[BytePoint]) -> Plan:
        """The plan of a Pareto study on the bytes axis, its points measured (:func:`~ranksearch.study._bytes.measure_front`):
        each trial draws one of their budgets, then one of its ratios."""
        assert self.coder is not None
        allocator = dataclasses.replace(self.allocator, ratios={float(p.share): p.ratios for p in points if p.share is not None})
        return dataclasses.replace(self, allocator=allocator, coder=self.coder.with_front(points))

    def with_bytes(self, point: BytePoint) -> Plan:
        """The plan of a byte working point measured (:func:`~ranksearch.study._bytes.measure_point`): each trial draws one
        of its ratios; the references are enqueued at its base ratio."""
        allocator = dataclasses.replace(self.allocator, front=point.ratios)
        return dataclasses.replace(self, allocator=allocator, points=(point.base_ratio,))

    def with_stored(self, record: StudyRecord) -> Plan:
        """The plan with what the study's setup measured and stored: the timing table, the byte point or the byte front."""
        plan = self
        if plan.latency is not None and record.timing is not None:
            plan = plan.with_timing(record.timing)
        if plan.coder is not None and record.byte_point is not None:
            plan = plan.with_bytes(record.byte_point)
        if plan.coder is not None and record.byte_front is not None:
            plan = plan.with_byte_front(record.byte_front)
        return plan

    def with_timing(self, table: TimingTable) -> Plan:
        """The plan allocating within a latency working point's timing table (see :func:`~ranksearch.study._latency.limited`)."""
        if self.latency is None:
            return self
        allocator = limited(self.allocator, table, self.latency.fraction)
        return dataclasses.replace(self, allocator=allocator, views=allocator.views)


def resolve(model: nn.Module, settings: SearchSettings | float, work: Workload, given: Components = Components(),
            cache_dir: str | os.PathLike[str] | None = None) -> SearchSettings:
    """The settings a study stores: ``factors`` and ``rank_multiple`` resolved, the model's name and weights
    digest filled in, a task's retrain recipe defaulted, custom sampler/pruner objects named.
    ``cache_dir``: the spectra cache (the CUDA grid reads the curves)."""
    s = settings if isinstance(settings, SearchSettings) else SearchSettings(target_ratio=settings)
    digest = state_digest(model.state_dict())
    if s.weights_digest and s.weights_digest != digest:
        raise StudyError(f"settings.weights_digest {s.weights_digest[:13]} is not this model's ({digest[:13]}); "
                         "leave it empty (search fills it in) or pass the model the settings were made for.")
    changes: dict[str, Any] = {"weights_digest": digest, "model": s.model or type(model).__name__}
    if s.factors is Factors.AUTO:
        changes["factors"] = Factors.DATA_AWARE if work.has_inputs else Factors.PLAIN
    elif s.factors is Factors.DATA_AWARE and not work.has_inputs:
        raise StudyError("factors='data_aware' needs calibration inputs: pass calibration= (input batches) or task=, or use factors='plain'.")
    if s.rank_multiple == "auto":
        block = lp.block if (lp := latency_plan(s)) is not None else None
        curves = spectra(model, cache_dir=cache_dir, exclude=s.exclude) if best_device().type == "cuda" or block else None
        target = s.target_ratio if s.target_ratio < 1 else None  # a latency working point alone: no parameter budget to land on
        changes["rank_multiple"] = rank_multiple_for(best_device(), 1, curves, target, count_params(model), s.min_rank, block)
    if s.bits_per_param is not None:  # the budget in bytes, of this model's parameters
        budget = max(1, math.floor(s.bits_per_param * count_params(model) / 8))
        if s.target_bytes is not None and s.target_bytes != budget:
            raise StudyError(f"target_bytes {s.target_bytes:,} and bits_per_param {s.bits_per_param:g} disagree: {s.bits_per_param:g} bits "
                             f"per parameter of {count_params(model):,} are {budget:,} bytes; give one of the two.")
        changes["target_bytes"] = budget
    if s.qat is None:  # quantization-aware at a byte working point with the built-in retrain (it won there: benchmarks/RESULTS.md)
        changes["qat"] = QAT if s.codes and work.task is not None else 0.0
    if work.task is not None and s.retrain is None:
        changes["retrain"] = RetrainSettings()
    if work.task is None and s.retrain is not None:
        raise StudyError("settings.retrain is the built-in retrain's recipe (used with task=); with your own "
                         "retrain callable leave it None.")
    if given.sampler is not None:
        changes["sampler"] = CUSTOM + type(given.sampler).__name__
    if given.pruner is not None:
        changes["pruner"] = CUSTOM + type(given.pruner).__name__
    return s.replace(**changes)


def latency_plan(s: SearchSettings) -> LatencyPlan | None:
    """The latency working point of ``s`` (None without one)."""
    return None if s.target_latency is None else LatencyPlan(s.target_latency, s.runtime, s.latency_batch)


def check_model(settings: SearchSettings, model: nn.Module, study_name: str) -> None:
    """Refuse a dense model whose weights are not the ones the study was made with."""
    digest = state_digest(model.state_dict())
    if settings.weights_digest and digest != settings.weights_digest:
        raise StudyError(f"The dense weights here (digest {digest[:13]}) are not the ones study {study_name!r} was "
                         f"made with ({settings.weights_digest[:13]}); pass --weights with the same file.")


def _callables(model: nn.Module, s: SearchSettings, work: Workload) -> Callables:
    if work.task is not None:
        return task_callables(work.task, s.retrain or RetrainSettings(), copy.deepcopy(model), s.seed, s.screen, s.screen_samples)
    if s.sensitivity is SensitivityKind.OUTPUT and not work.calibration:
        raise StudyError("sensitivity 'output' runs the model on inputs: give task= (its validation split) or calibration= "
                         "(input batches), or use sensitivity='measured'.")
    if s.sensitivity_samples and (s.sensitivity in (SensitivityKind.MEASURED, SensitivityKind.PROXY) or not work.calibration):
        raise StudyError(f"sensitivity_samples {s.sensitivity_samples} needs task= (a validation split to take them from); "
                         "with your own evaluate, use sensitivity='output' with calibration= inputs, or sensitivity_samples=0.")
    assert work.evaluate is not None
    return user_callables(work.evaluate, work.retrain, work.calibration, work.forward)


def make_plan(model: nn.Module, s: SearchSettings, work: Workload, given: Components = Components(),
              cache_dir: str | os.PathLike[str] | None = None) -> Plan:
    """The parts a study of the resolved settings ``s`` runs on (:func:`resolve`)."""
    if not isinstance(s.rank_multiple, int):
        raise StudyError("make_plan needs resolved settings (rank_multiple 'auto' is resolved by resolve()).")
    calls = _callables(model, s, work)
    if given.input_shape is not None:
        calls = dataclasses.replace(calls, input_shape=given.input_shape)
    views = views_for(model, s.exclude, s.factor_kind, work.task, work.calibration, cache_dir, work.forward)
    modules = dict(model.named_modules())
    groups = (layer_groups({n: modules[n] for n in views.curves}) if s.granularity is Granularity.GROUP
              else {n: n for n in views.curves})
    allocator = Allocator(views, s.target_ratio, count_params(model), s.rank_multiple, s.min_rank, groups, s.proposals,
                          s.spread, s.step, enqueued_anchor=s.sampler is Sampler.CMAES, front=s.front, axis=s.pareto_axis)
    sampler = given.sampler if given.sampler is not None else make_sampler(s.sampler, s.seed, s.step)
    screen = None
    if s.pareto:  # the study's pruner never runs: the objective asks the front's gate
        if given.pruner is not None:
            raise StudyError("A Pareto study screens with its own gate (pruner gate or none); Optuna prunes no multi-objective "
                             "study, so a pruner object cannot be used.")
        pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
        screen = FrontGate(keep=s.keep, later=0.5) if s.pruner is Pruner.GATE else None
    else:
        pruner = given.pruner if given.pruner is not None else make_pruner(s.pruner, s.keep)
    plan = sensitivity_plan(s.sensitivity, s.sensitivity_budget, s.sensitivity_samples, views, calls, s.rank_multiple, s.min_rank)
    latency = latency_plan(s)
    if latency is not None and s.runtime is Runtime.ONNXRUNTIME:  # said before any work
        require("onnxruntime", "onnx", "runtime onnxruntime")
    if s.qat and (calls.retrain is None or not accepts(calls.retrain, "quantize")):
        raise StudyError(f"qat {s.qat:g} trains the retrain's last steps quantization-aware, which only the built-in retrain (a task "
                         "and its recipe) does; drop --qat, or give the task instead of your own retrain.")
    coder = Coder(s.target_bytes or 0, work.task, s.qat or 0.0) if s.codes else None
    return Plan(views, calls, allocator, sampler, pruner, s.baselines, s.prior, plan, latency, screen, s.pareto, coder)

