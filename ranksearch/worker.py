"""Joining a study and running trials: the part of a search every worker process runs.

A study is set up once (the dense metric, the sensitivity table, the prior's centre, the enqueued
allocations: :func:`set_up`) by the process that created it; every worker then runs
:func:`run_trials`, which takes trials from the shared storage until the study holds ``n_trials``
finished ones (complete or pruned; with K workers at most K-1 more finish, those already running,
and the reruns of trials whose workers died, which the cap never counted).
:func:`run_worker` is what ``ranksearch worker`` calls: join a study knowing only where it is.

Faults: a trial that raises is failed with its error and traceback in its user attrs and the worker
goes on (three failures in a row stop it with that error); Ctrl-C (or SIGTERM) fails the running
trial, enqueues its allocation again and re-raises; trials of dead workers are failed and run again
(heartbeats on a database, process ids on a journal file); at the end a worker fails trials left
running by dead workers, waiting out the grace period for their heartbeats.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import optuna
import torch
import xxhash
from optuna.trial import TrialState
from torch import nn

from ranksearch._storage import (GRACE_S, HEARTBEAT_S, StudyAttrs, artifact_store, create_or_join, fail_dead_trials,
                                 open_storage, release, retry_trial, settle, wait_until_ready, worker_id)
from ranksearch.baselines import (Sensitivity, additive_ranks, greedy_ranks, log_weights_for, measure_sensitivity, output_fidelity,
                                  proxy_sensitivity,
                                  table_size, uniform_ranks)
from ranksearch.errors import StudyError
from ranksearch.export import fixed_cost_line
from ranksearch.gate import GatePruner
from ranksearch.progress import bar
from ranksearch.proposals import LocalSampler
from ranksearch.retrain import RetrainSettings, evaluate as evaluate_metric
from ranksearch.settings import SearchSettings
from ranksearch.spectra import spectra
from ranksearch.surgery import count_params, find_layers
from ranksearch.task import Task
from ranksearch.calibrate import calibration_batches
from ranksearch.inputs import Forward, batch_len, first_samples
from ranksearch.trial import EXACT_ATTR, Evaluate, Objective, Retrain, Views, build_views, subset_of, task_callables, val_subset
from ranksearch.weights import state_digest

__all__ = ["FINISHED", "Callables", "InterruptGate", "TrialSeeded", "TrialsFailing", "WorkersFailed", "callables_for", "check_model",
           "make_pruner", "make_sampler", "objective_for", "probe_for", "run_trials", "run_worker", "sensitivity_plan", "set_up",
           "trial_seed", "views_for"]

_log = logging.getLogger(__name__)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  #: the states the trial cap counts


class TrialsFailing(RuntimeError):
    """Several trials in a row raised: the worker stops (the error is likely in the retrain or metric)."""


class WorkersFailed(RuntimeError):
    """A worker process started by ``search(workers=K)`` exited with an error."""


#: sampler name -> factory(seed, settings)
_SAMPLERS: dict[str, Callable[[int, SearchSettings], optuna.samplers.BaseSampler]] = {
    "local": lambda seed, s: LocalSampler(s.step, seed=seed),
    "tpe": lambda seed, s: optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=5, constant_liar=True),
    "gp": lambda seed, s: optuna.samplers.GPSampler(seed=seed, n_startup_trials=5),
    "random": lambda seed, s: optuna.samplers.RandomSampler(seed=seed),
    # in the incumbent space CMA-ES starts at the origin (the best enqueued allocation) with a step of a
    # sixth of the range, 1/3 in log2 (Optuna's default; its x0 and sigma0 arguments are deprecated)
    "cmaes": lambda seed, s: optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False),
}
#: pruner name -> factory(settings)
_PRUNERS: dict[str, Callable[[SearchSettings], optuna.pruners.BasePruner]] = {
    "gate": lambda s: GatePruner(keep=s.keep, later=0.5),
    "median": lambda s: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
    "hyperband": lambda s: optuna.pruners.HyperbandPruner(min_resource=1),
    "none": lambda s: optuna.pruners.NopPruner(),
}


def trial_seed(seed: int, ordinal: int) -> int:
    """The seed of the ``ordinal``-th sampled proposal of a study seeded with ``seed``."""
    return xxhash.xxh32_intdigest(f"{seed}:{ordinal}".encode()) % (2**31)


def _sampled_before(study: optuna.Study, number: int) -> int:
    """How many trials numbered below ``number`` were sampled (not enqueued: no ``fixed_params``; not
    the rerun of a failed trial: no ``failed_trial``). Set when each trial is created, so the count is
    the same in every process and for every later reader."""
    trials = study._storage.get_all_trials(study._study_id, deepcopy=False)  # the whole study, even under Hyperband
    return sum(1 for t in trials if t.number < number and not {"fixed_params", "failed_trial"} & t.system_attrs.keys())


class TrialSeeded(optuna.samplers.BaseSampler):
    """One of :data:`~ranksearch.settings.SAMPLERS`, drawing the k-th sampled proposal of the study
    from a seed that depends only on the study's seed and k (it is rebuilt, so seeded, before each
    trial); enqueued allocations and reruns of killed trials do not count.

    So a one-process search is deterministic, a study resumed after Ctrl-C or a kill proposes what an
    uninterrupted one would have, and two workers never draw the same random point, whatever process
    runs which trial. The samplers keep no other state between trials (CMA-ES keeps its optimizer in
    the trials' system attrs).
    """

    def __init__(self, settings: SearchSettings) -> None:
        self._settings, self._name, self._seed = settings, settings.sampler, settings.seed
        self._inner = _SAMPLERS[self._name](self._seed, settings)

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self._inner = _SAMPLERS[self._name](trial_seed(self._seed, _sampled_before(study, trial.number)), self._settings)
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, param_name: str, param_distribution: Any) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: TrialState, values: Any) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def make_sampler(settings: SearchSettings) -> optuna.samplers.BaseSampler:
    if settings.sampler not in _SAMPLERS:
        raise StudyError(f"Study uses the custom sampler {settings.sampler!r}; join it from Python with the same sampler object.")
    return TrialSeeded(settings)


def make_pruner(settings: SearchSettings) -> optuna.pruners.BasePruner:
    if settings.pruner not in _PRUNERS:
        raise StudyError(f"Study uses the custom pruner {settings.pruner!r}; join it from Python with the same pruner object.")
    return _PRUNERS[settings.pruner](settings)


@dataclass(frozen=True)
class Callables:
    """The metric on validation data, the short retrain, the metric on test data, and the metric's name."""

    evaluate: Evaluate
    retrain: Retrain | None
    test: Evaluate | None
    metric: str
    quick: tuple[Evaluate, int] | None = None  #: the metric on the screen's validation subset, and its size
    input_shape: tuple[int, ...] | None = None  #: one input sample's shape (the task's), for the cost model
    val: Any = None  #: the task's validation split (None with the user's own evaluate)
    inputs: list[Any] | None = None  #: the calibration input batches, when given (the ``output`` probes' fallback)
    forward: Forward | None = None


def sample_shape(task: Task) -> tuple[int, ...] | None:
    """Shape of the task's first validation input (None when it is not a tensor)."""
    try:
        x = task.val[0][0]  # type: ignore[index]
    except (IndexError, TypeError, KeyError):
        return None
    return tuple(int(d) for d in x.shape) if isinstance(x, torch.Tensor) else None


def callables_for(model: nn.Module, settings: SearchSettings, task: Task | None, evaluate: Evaluate | None,
                  retrain: Retrain | None, calibration: list[Any] | None = None, forward: Forward | None = None) -> Callables:
    """The built-in ones of a ``task`` (retrain recipe from the settings) or the user's own."""
    if (task is None) == (evaluate is None):
        raise StudyError("Give either task= (built-in retrain and metric) or evaluate= (your own callables).")
    if task is not None:
        subset = val_subset(task, settings.screen_samples)
        ev, re, te = task_callables(task, settings.retrain or RetrainSettings(), copy.deepcopy(model), settings.seed,
                                    settings.screen, subset)
        quick = None if subset is None else (lambda m: evaluate_metric(m, subset, task.metric, forward=task.forward), len(subset))  # type: ignore[arg-type]
        return Callables(ev, re, te, task.metric, quick, sample_shape(task), task.val, calibration, task.forward)
    if settings.sensitivity == "output" and not calibration:
        raise StudyError("sensitivity 'output' runs the model on inputs: give task= (its validation split) or calibration= "
                         "(input batches), or use sensitivity='measured'.")
    if settings.sensitivity_samples and (settings.sensitivity in ("measured", "proxy") or not calibration):
        raise StudyError(f"sensitivity_samples {settings.sensitivity_samples} needs task= (a validation split to take them from); "
                         "with your own evaluate, use sensitivity='output' with calibration= inputs, or sensitivity_samples=0.")
    return Callables(evaluate, retrain, None, getattr(evaluate, "__name__", "evaluate"), inputs=calibration, forward=forward)  # type: ignore[arg-type]


def views_for(model: nn.Module, settings: SearchSettings, task: Task | None, calibration: Iterable[Any] | None,
              cache_dir: Any, forward: Forward | None = None) -> Views:
    """Curves and factors of the study's layers (data-aware ones from the calibration inputs), with the
    seconds each part took."""
    start = time.perf_counter()
    curves = spectra(model, cache_dir=cache_dir, exclude=settings.exclude)
    if not curves:
        raise StudyError(f"{type(model).__name__} has no eligible Linear/Conv layer to factorize; nothing to search.")
    took = time.perf_counter() - start
    layers = find_layers(model).eligible
    views = build_views(model, {n: layers[n] for n in curves}, curves, settings.data_aware, calibration, task, forward)
    return replace(views, seconds={"spectra": took, **views.seconds})


def objective_for(study: optuna.Study, model: nn.Module, views: Views, settings: SearchSettings, calls: Callables,
                  artifacts: Any, n_trials: int | None) -> Objective:
    """The trial function of a set-up study (the prior's centre read from the study)."""
    centre = StudyAttrs(study).get("centre") or {}
    return Objective(model, views, settings, centre, evaluate=calls.evaluate, retrain=calls.retrain, test=calls.test,
                     artifacts=artifacts, n_trials=n_trials, quick=calls.quick)


#: fewest validation inputs ``auto`` scores output probes on, whatever the budget
MIN_OUTPUT_SAMPLES = 16


@dataclass(frozen=True)
class SensitivityPlan:
    """How a study's sensitivity table is made: ``kind`` (measured, output or proxy) on ``samples`` of the
    ``of`` validation samples (or calibration inputs) there are (``samples == of``: all of them; ``of`` 0:
    the user's evaluate, of unknown size)."""

    kind: str
    samples: int
    of: int

    @property
    def share(self) -> float:
        """One probe's cost in evaluations on the whole split."""
        return self.samples / self.of if self.of else 1.0


def sensitivity_plan(settings: SearchSettings, views: Views, calls: Callables) -> SensitivityPlan:
    """The kind and the samples of the table. Measured probes run on the validation split (or the user's
    evaluate, of unknown size), output probes on its inputs (or on the calibration inputs, which then
    stand in for the split). ``auto`` measures the metric when the table fits
    ``settings.sensitivity_budget`` (counted in passes over the split); else it scores output probes on
    a subset small enough to fit (at least :data:`MIN_OUTPUT_SAMPLES`); with no inputs to run them on
    (the user's evaluate and no calibration) it measures the whole table and says how to bound it."""
    val = len(calls.val) if calls.val is not None else 0
    inputs = val or (sum(batch_len(b) for b in calls.inputs) if calls.inputs else 0)
    want = settings.sensitivity_samples

    def take(of: int) -> int:
        return min(want, of) if want and of else of

    measured = SensitivityPlan("measured", take(val), val)
    if settings.sensitivity in ("measured", "proxy"):
        return replace(measured, kind=settings.sensitivity)
    if settings.sensitivity == "output":
        return SensitivityPlan("output", take(inputs), inputs)
    size = table_size(views.curves, settings.rank_multiple, settings.min_rank)
    if size * measured.share <= settings.sensitivity_budget:
        return measured
    if not inputs:
        _log.warning("the sensitivity table needs %d evaluations of your evaluate (budget %d); give calibration= inputs to "
                     "score them on a subset (sensitivity 'output'), or sensitivity='proxy' for a cheap, less accurate one",
                     size, settings.sensitivity_budget)
        return measured
    fits = max(MIN_OUTPUT_SAMPLES, math.floor(settings.sensitivity_budget * inputs / max(size, 1)))
    return SensitivityPlan("output", min(take(inputs), fits), inputs)


def probe_for(model: nn.Module, plan: SensitivityPlan, calls: Callables) -> tuple[Evaluate, bool]:
    """The score the plan's probes take, and whether it is the study's own metric on the whole split
    (else its value for the dense model must be measured too)."""
    whole = plan.samples == plan.of
    if plan.kind == "output":
        assert calls.val is not None or calls.inputs, "callables_for checks that output probes have inputs"
        batches = (calibration_batches(calls.val, plan.samples, batch_size=128, seed=0) if calls.val is not None
                   else first_samples(calls.inputs or [], plan.samples))
        return output_fidelity(model, batches, calls.forward), False
    if whole or not plan.of:  # the whole split, or the user's evaluate (callables_for refuses samples without a task)
        return calls.evaluate, True
    subset = subset_of(calls.val, plan.samples)
    metric = calls.metric
    return (lambda m: evaluate_metric(m, subset, metric, forward=calls.forward)), False


def set_up(study: optuna.Study, model: nn.Module, views: Views, settings: SearchSettings, calls: Callables, *,
           sensitivity: Sensitivity | None = None, warm_start: Iterable[Mapping[str, float]] = (),
           progress: bool = False) -> Sensitivity | None:
    """Set a created study up, once: the dense model's metric, the sensitivity table (measured here
    unless given; rows already stored by an interrupted setup are kept), the prior's centre, and the
    enqueued allocations (the seed rule first, then uniform, the AIMET-style greedy and the
    sensitivity-sum ones, then the warm starts). An allocation the study already holds is not
    enqueued again, so a setup taken over after a crash enqueues each one once. Returns the table."""
    attrs = StudyAttrs(study)
    setup = dict(attrs.get("setup") or {})

    def beat() -> None:  # tells joiners on other hosts that the setup is alive
        attrs.set("setup", {**setup, "at": time.time()})

    if attrs.get("input_shape") is None and calls.input_shape is not None:
        attrs.set("input_shape", list(calls.input_shape))
    cost: dict[str, Any] = {f"{k}_s": round(v, 3) for k, v in views.seconds.items()}
    start = time.perf_counter()
    if attrs.get("dense") is not None or attrs.prefixed("sensitivity_row:"):
        cost["resumed"] = True  # an interrupted setup did part of the work: its share is not in these figures
    if attrs.get("dense") is None:
        dense = {"val": float(calls.evaluate(copy.deepcopy(model)))}
        if calls.test is not None:
            dense["test"] = float(calls.test(copy.deepcopy(model)))
        attrs.set("dense", dense)
        attrs.set("metric", calls.metric)
        _log.info("dense model: %s", dense)
        cost.update(dense_s=round(time.perf_counter() - start, 3), dense_evaluations=len(dense))
    table = sensitivity
    start, measured = time.perf_counter(), 0
    if table is None and (settings.baselines or settings.prior == "sensitivity"):
        stored = attrs.get("sensitivity")
        if stored is not None:
            table = {n: [(int(r), float(v)) for r, v in rows] for n, rows in stored.items()}
        else:
            partial = attrs.prefixed("sensitivity_row:")  # one attr per layer: rows an interrupted setup measured
            shown = bar(len(views.curves), "sensitivity", progress, initial=len(partial), unit="layer")

            def keep(name: str, rows: list[tuple[int, float]]) -> None:
                nonlocal measured
                measured += len(rows)
                attrs.set(f"sensitivity_row:{name}", [[r, v] for r, v in rows])
                beat()
                shown.update(1)

            plan = sensitivity_plan(settings, views, calls)
            probe, own = probe_for(model, plan, calls)
            if plan.kind == "proxy":  # a few evaluations, whatever the number of layers: measured again after an interruption
                reference = float(attrs.get("dense")["val"]) if own else float(probe(copy.deepcopy(model)))
                table, points = proxy_sensitivity(model, views.curves, views.factors, probe, reference,
                                                  rank_multiple=settings.rank_multiple, min_rank=settings.min_rank)
                measured = len(points) + (not own)
                attrs.set("sensitivity_measured", [[n, r] for n, r in points])
            else:
                with shown:
                    table = measure_sensitivity(model, views.curves, views.factors, probe, known=partial, on_layer=keep,
                                                rank_multiple=settings.rank_multiple, min_rank=settings.min_rank)
                measured += plan.kind == "output"  # the dense model's outputs, computed by the first probe
            attrs.set("sensitivity_kind", plan.kind)
            attrs.set("sensitivity_samples", [plan.samples, plan.of])
    if table is not None and attrs.get("sensitivity") is None:
        attrs.set("sensitivity", {n: [[r, v] for r, v in rows] for n, rows in table.items()})
    if attrs.get("fixed_cost") is None:  # stored once, by the process that set the study up
        cost.update(sensitivity_s=round(time.perf_counter() - start, 3), sensitivity_evaluations=measured)
        if (kind := attrs.get("sensitivity_kind")) is not None:
            cost["sensitivity_kind"] = kind
        share = 1.0
        if (samples := attrs.get("sensitivity_samples")) is not None:
            cost["sensitivity_samples"], cost["val_samples"] = samples
            share = samples[0] / samples[1] if samples[1] else 1.0
        cost["evaluations"] = cost.get("dense_evaluations", 0) + measured
        cost["split_evaluations"] = round(cost.get("dense_evaluations", 0) + measured * share, 1)  # as whole-split passes
        cost["total_s"] = round(sum(v for k, v in cost.items() if k.endswith("_s")), 3)
        attrs.set("fixed_cost", cost)
        _log.info("fixed cost before the first trial: %s", fixed_cost_line(cost))
    starts = _starting_points(model, views, settings.target_ratio, table)
    centre = starts.get("sensitivity_sum", {}) if settings.prior == "sensitivity" else {}
    attrs.set("centre", centre)
    objective = Objective(model, views, settings, centre, evaluate=calls.evaluate, retrain=None, test=None)
    have = {t.user_attrs.get("method") for t in study.get_trials(deepcopy=False)}
    if "seed_rule" not in have:
        study.enqueue_trial({p: 0.0 for p in objective.search_space()}, user_attrs={"method": "seed_rule"})
    exact = [*((m, w) for m, w in starts.items() if settings.baselines), *(("warm_start", dict(w)) for w in warm_start)]
    for method, logw in exact:
        if method in have:
            continue
        logw = {n: float(logw.get(n, 0.0)) for n in views.curves}
        study.enqueue_trial(objective.params_for(logw), user_attrs={"method": method, EXACT_ATTR: logw})
    attrs.set("setup", {**setup, "state": "ready", "at": time.time()})
    return table


def _starting_points(model: nn.Module, views: Views, target: float,
                     sensitivity: Sensitivity | None) -> dict[str, dict[str, float]]:
    """Log-weights of the enqueued allocations: uniform, and from the sensitivity table the AIMET-style
    greedy one and the sum-of-scores one (the prior's centre)."""
    total = count_params(model)
    fixed = total - sum(c.dense_params for c in views.curves.values())
    budget = math.floor(target * total) - fixed
    starts = {"uniform": log_weights_for(views.curves, uniform_ranks(views.curves, budget))}
    if sensitivity is not None:
        starts["sensitivity"] = log_weights_for(views.curves, greedy_ranks(views.curves, sensitivity, budget))
        starts["sensitivity_sum"] = log_weights_for(views.curves, additive_ranks(views.curves, sensitivity, budget))
    return starts


def check_model(study: optuna.Study, settings: SearchSettings, model: nn.Module) -> None:
    """Refuse a dense model whose weights are not the ones the study was made with."""
    digest = state_digest(model.state_dict())
    if settings.weights_digest and digest != settings.weights_digest:
        raise StudyError(f"The dense weights here (digest {digest[:13]}) are not the ones study {study.study_name!r} was "
                         f"made with ({settings.weights_digest[:13]}); pass --weights with the same file.")


class InterruptGate:
    """Ctrl-C (SIGINT) and SIGTERM stop a worker only inside a trial's objective.

    Outside it (while Optuna creates, samples or finishes a trial) the signal is held back and raised
    at the next objective's start, where the trial is failed and its allocation enqueued again; so an
    interrupt can never leave a trial RUNNING without a worker, or pop an enqueued allocation and
    drop it. Only the main thread can handle signals; elsewhere the gate does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.pending = False
        self.active = False
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> InterruptGate:
        self.active = threading.current_thread() is threading.main_thread()
        if self.active:
            for sig in self.SIGNALS:
                self._saved[sig] = signal.signal(sig, self._hold)
        return self

    def __exit__(self, kind: Any, value: Any, tb: Any) -> None:
        if self.active:
            for sig, handler in self._saved.items():
                signal.signal(sig, handler)
            self.active = False
        if self.pending and kind is None:
            self.pending = False
            raise KeyboardInterrupt

    def _hold(self, signum: int, frame: Any) -> None:
        self.pending = True

    @staticmethod
    def _raise(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def open(self) -> Iterator[None]:
        """Inside: a signal (or one held back) raises KeyboardInterrupt."""
        if not self.active:
            yield
            return
        for sig in self.SIGNALS:
            signal.signal(sig, self._raise)
        try:
            if self.pending:
                self.pending = False
                raise KeyboardInterrupt
            yield
        finally:
            for sig in self.SIGNALS:
                signal.signal(sig, self._hold)


def run_trials(study: optuna.Study, objective: Objective, *, n_trials: int | None, timeout: float | None,
               grace: float = GRACE_S, max_failures: int = 3, progress: bool = False) -> int:
    """Run trials of ``study`` in this process until it holds ``n_trials`` finished ones or
    ``timeout`` seconds have passed; returns how many this process ran.

    Raises:
        KeyboardInterrupt: after failing the running trial and enqueueing its allocation again.
        TrialsFailing: after ``max_failures`` trials in a row raised (the last error in the message).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    ran = failures = 0
    with warnings.catch_warnings():  # the ratio constraint always holds (the solver hits it); CMA-ES says it ignores it
        warnings.filterwarnings("ignore", message="Constraints have been set, but CmaEsSampler")
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials are logged by ranksearch, in one line
        shown = bar(n_trials, "trials", progress, initial=len(study.get_trials(deepcopy=False, states=FINISHED)), unit="trial")
        with InterruptGate() as gate, shown:
            objective.gate = gate
            try:
                while True:
                    fail_dead_trials(study)
                    finished = len(study.get_trials(deepcopy=False, states=FINISHED))
                    shown.update(finished - shown.n)
                    if n_trials is not None and finished >= n_trials:
                        settle(study, grace, sleep=lambda s: _nap(gate, s))  # dead workers' trials: failed, queued again
                        if not _retries_waiting(study):
                            break  # else run them: a killed trial's allocation always finishes (it never counted)
                    if deadline is not None and time.monotonic() >= deadline:
                        break
                    objective.current = None
                    study.optimize(objective, n_trials=1, catch=(Exception,))
                    ran += 1
                    last = _trial(study, objective.current)
                    if last is not None:
                        best = max((t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))), default=None)
                        shown.set_postfix_str(f"last {last.user_attrs.get('method')} {last.state.name.lower()}"
                                              + (f", best {best:.4f}" if best is not None else ""))
                    if last is not None and last.state == TrialState.FAIL:
                        failures += 1
                        _log.warning("trial %d [%s] failed: %s", last.number, last.user_attrs.get("method"), last.user_attrs.get("error"))
                        if failures >= max_failures:
                            raise TrialsFailing(f"{failures} trials in a row failed, the last (trial {last.number}) with "
                                                f"{last.user_attrs.get('error')}; its 'traceback' user attr has the details.")
                    else:
                        failures = 0
            except KeyboardInterrupt:  # a second signal meanwhile is held by the gate, not lost in the requeue
                _requeue(study, objective.current)
                raise
            finally:
                objective.gate = None
    settle(study, grace)
    return ran


def _nap(gate: InterruptGate, seconds: float) -> None:
    """Sleep where Ctrl-C may interrupt (no trial is running)."""
    with gate.open():
        time.sleep(seconds)


def _retries_waiting(study: optuna.Study) -> bool:
    return any(t.system_attrs.get("failed_trial") is not None for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def _trial(study: optuna.Study, number: int | None) -> optuna.trial.FrozenTrial | None:
    if number is None:
        return None
    storage = study._storage
    return storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study._study_id, number))


def _requeue(study: optuna.Study, number: int | None) -> None:
    """Fail the trial Ctrl-C interrupted (Optuna does when it was inside the objective) and enqueue
    its allocation again, so that a resumed study runs it."""
    trial = _trial(study, number)
    if trial is None:
        return
    if trial.state == TrialState.RUNNING:  # interrupted outside the objective (Optuna fails it inside)
        study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        trial = study._storage.get_trial(trial._trial_id)
    if trial.state == TrialState.FAIL:
        retry_trial(study, trial)


def run_worker(model: nn.Module, storage: Any, study_name: str, *, task: Task | None = None,
               evaluate: Evaluate | None = None, retrain: Retrain | None = None, calibration: Iterable[Any] | None = None,
               forward: Forward | None = None, n_trials: int | None = None, timeout: float | None = None, artifacts: Any = None, cache_dir: Any = None,
               sampler: optuna.samplers.BaseSampler | None = None,
               pruner: optuna.pruners.BasePruner | None = None, heartbeat: int = HEARTBEAT_S, grace: int = GRACE_S,
               progress: bool = False) -> int:
    """Join the study ``study_name`` in ``storage`` (URL, journal file or Optuna storage) and run its trials until
    it holds ``n_trials`` finished ones (default: the cap its creator gave) or ``timeout`` seconds pass;
    returns how many ran here.

    Everything that defines the study comes from it (its :class:`SearchSettings`); ``model`` must be
    the dense model it was made with (checked by digest), with ``task`` or ``evaluate``/``retrain`` as
    when it was made. ``artifacts`` (default: the folder the study records) receives the weights of
    trials that beat the best so far.
    """
    probe = optuna.samplers.RandomSampler()
    storage = open_storage(storage, heartbeat=heartbeat, grace=grace)
    try:  # however the worker ends, a database storage's pooled connections are closed
        study, _ = create_or_join(storage, study_name, None, resume=True, sampler=probe, pruner=optuna.pruners.NopPruner())
        attrs = StudyAttrs(study)
        settings = attrs.settings()
        assert settings is not None
        n_trials = n_trials if n_trials is not None else attrs.get("n_trials")  # default: the creator's cap
        if n_trials is None and timeout is None:
            raise StudyError(f"Study {study_name!r} records no trial cap; give n_trials (--trials) or timeout (--timeout).")
        study.sampler = sampler or make_sampler(settings)
        study.pruner = pruner or make_pruner(settings)
        check_model(study, settings, model)
        calibration = None if calibration is None else list(calibration)  # read by the factors and the output probes
        calls = callables_for(model, settings, task, evaluate, retrain, calibration, forward)
        views = views_for(model, settings, task, calibration, cache_dir, forward)
        wait_until_ready(study, on_orphan=lambda: set_up(study, model, views, settings, calls, progress=progress))
        where = artifacts if artifacts is not None else attrs.get("artifacts")
        objective = objective_for(study, model, views, settings, calls, artifact_store(where) if where is not None else None, n_trials)
        _log.info("worker %s joined study %s", worker_id(), study_name)
        return run_trials(study, objective, n_trials=n_trials, timeout=timeout, grace=grace, progress=progress)
    finally:
        release(storage)
