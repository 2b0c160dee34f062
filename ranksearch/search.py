"""The Optuna rank search: trials share the budget between layers, the solver makes it exact.

Each trial proposes a weight per layer on the MSE bound (``log10`` in ``[-spread, spread]``); the solver
turns the proposal into ranks that hit the target ratio of the whole model, so no trial is wasted on an
infeasible allocation. The trial factorizes the model (slicing decompositions computed once), retrains
it briefly, reports the validation metric after each epoch (a pruner may stop it) and returns the final
validation metric. The CE1 rule (all weights 1: one global MSE bound) is enqueued as the first trial,
so the search never returns something worse than it on the same retrain budget.

The study lives in any Optuna storage; by default a journal file in the output folder, so a killed
search resumes (``resume=True``) without losing a finished trial; an interrupted trial is run again.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import sqlalchemy
import torch
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.study import MaxTrialsCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from torch import nn

from ranksearch.allocation import config_for
from ranksearch.baselines import Sensitivity, additive_ranks, greedy_ranks, log_weights_for, measure_sensitivity, uniform_ranks
from ranksearch.config import RankConfig
from ranksearch.retrain import RetrainSettings
from ranksearch.solver import Solution, solve_ratio
from ranksearch.spectra import spectra
from ranksearch.surgery import count_params, factorize, find_layers, layer_groups
from ranksearch.task import Task
from ranksearch.trial import (EXACT_ATTR, PARAM_PREFIX, Evaluate, Objective, Retrain, Views, build_views, task_callables,
                              worker_alive)
from ranksearch.weights import load_state_dict

__all__ = ["GRANULARITIES", "PRUNERS", "SAMPLERS", "SearchResult", "open_storage", "search"]

_log = logging.getLogger(__name__)


@dataclass
class SearchResult:
    """What a search found.

    Attributes:
        config: Rank config of the best trial (metrics and search settings recorded in it).
        study: The Optuna study (all trials, their ranks and metrics in ``user_attrs``).
        model: The best factorized model, retrained.
        seed_rule: Rank config of the CE1 rule (first trial) with its metric.
        summary: Figures of the run: dense, seed rule and best searched metrics, trials, wall time.
    """

    config: RankConfig
    study: optuna.Study
    model: nn.Module
    seed_rule: RankConfig
    summary: dict[str, Any] = field(default_factory=dict)
    sensitivity: Sensitivity | None = None


def open_storage(storage: str | BaseStorage | None, out_dir: str | os.PathLike[str] | None) -> BaseStorage:
    """An Optuna storage: a URL (``postgresql://``, ``sqlite://``, ...), a journal file path, or by
    default ``study.journal`` in ``out_dir``."""
    if isinstance(storage, BaseStorage):
        return storage
    if storage is None:
        if out_dir is None:
            return optuna.storages.InMemoryStorage()
        storage = str(Path(out_dir) / "study.journal")
    if "://" in storage:
        return _rdb(storage)
    Path(storage).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(storage))


def _rdb(url: str, tries: int = 5) -> RDBStorage:
    """An RDB storage with heartbeats; workers that start together may race to create the schema
    (one gets an integrity error), so creation is retried."""
    for attempt in range(tries):
        try:
            return RDBStorage(url, heartbeat_interval=60, grace_period=180)
        except sqlalchemy.exc.SQLAlchemyError:
            if attempt == tries - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def _open_study(storage: BaseStorage, name: str, resume: bool, sampler: optuna.samplers.BaseSampler,
                pruner: optuna.pruners.BasePruner) -> tuple[optuna.Study, bool]:
    exists = name in {s.study_name for s in storage.get_all_studies()}
    if exists and not resume:
        raise ValueError(f"Study {name!r} already exists in this storage; pass --resume (resume=True) to continue it or choose another --out.")
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize", sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if resume and not worker_alive(t.user_attrs.get("worker")):  # killed: fail it, run its proposal again
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            again = {k: t.user_attrs[k] for k in ("method", EXACT_ATTR) if k in t.user_attrs}
            study.enqueue_trial(t.params, user_attrs={"method": "searched", **again})
            _log.info("trial %d was interrupted; it will run again", t.number)
    return study, not exists


_SAMPLER_FACTORIES: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=5),
    "gp": lambda seed: optuna.samplers.GPSampler(seed=seed, n_startup_trials=5),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
    "cmaes": lambda seed: optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False),
}
_PRUNER_FACTORIES: dict[str, Callable[[], optuna.pruners.BasePruner]] = {
    "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
    "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1),
    "none": lambda: optuna.pruners.NopPruner(),
}
SAMPLERS = tuple(_SAMPLER_FACTORIES)  #: names accepted by ``search(sampler=...)``, the default first
PRUNERS = tuple(_PRUNER_FACTORIES)  #: names accepted by ``search(pruner=...)``, the default first
GRANULARITIES = ("layer", "group")  #: names accepted by ``search(granularity=...)``, the default first


def search(
    model: nn.Module,
    target_ratio: float,
    *,
    task: Task | None = None,
    retrain_settings: RetrainSettings | None = None,
    evaluate: Evaluate | None = None,
    retrain: Retrain | None = None,
    n_trials: int | None = 20,
    timeout: float | None = None,
    storage: str | BaseStorage | None = None,
    study_name: str | None = None,
    resume: bool = False,
    out_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    spread: float = 3.0,
    exclude: Iterable[str] | Mapping[str, str] = (),
    rank_multiple: int = 1,
    min_rank: int = 1,
    cache_dir: str | os.PathLike[str] | None = None,
    model_name: str | None = None,
    source: dict[str, Any] | None = None,
    data_aware: bool | None = None,
    calibration: Iterable[torch.Tensor] | None = None,
    baselines: bool = True,
    prior: str = "none",
    sensitivity: Sensitivity | None = None,
    warm_start: Iterable[Mapping[str, float]] = (),
    sampler: str = "tpe",
    pruner: str = "median",
    granularity: str = "layer",
) -> SearchResult:
    """Search the rank allocation of ``model`` at ``target_ratio`` that scores best after a short retrain.

    Either give a ``task`` (data, loss and metric: the built-in retrain runs ``retrain_settings`` and
    scores the validation split, the test split is reported) or your own ``evaluate(model) -> float``
    (higher is better) and optionally ``retrain(model)`` (which may accept ``report=fn(step, value)``
    to let the pruner stop bad trials, and may return the retrained model's ``evaluate`` value to save
    evaluating it again).

    Args:
        model: The dense model (left unchanged).
        target_ratio: Fraction of the whole model's parameters to keep.
        n_trials: Trials to finish (complete or pruned), counting those of a resumed study.
        timeout: Wall-clock limit in seconds for this call.
        storage: Optuna storage URL or journal file (default: ``study.journal`` in ``out_dir``).
        resume: Continue an existing study of the same name.
        out_dir: Where the best trial's weights are kept while the search runs.
        seed: Seeds the sampler and every retrain; sequential runs are deterministic on CPU.
        spread: Layer weights on the MSE bound range over ``10**[-spread, spread]``.
        data_aware: Trials use activation-whitened factors and curves (the seed rule stays plain SVD).
            Default (None): on when there are calibration inputs (``calibration`` or a ``task``).
        calibration: Input batches for ``data_aware`` (default: 512 samples of ``task.train``).
        baselines: Enqueue the uniform, the sensitivity (AIMET-style greedy) and the sensitivity-sum
            allocations after the seed rule; the sensitivity needs one evaluation per layer and
            measured rank (:func:`~ranksearch.baselines.probe_ranks`).
        prior: ``"none"`` (weights centred on the seed rule) or ``"sensitivity"`` (centred on the
            sensitivity-sum allocation, :func:`~ranksearch.baselines.additive_ranks`).
        sensitivity: A table measured before (``result.sensitivity`` of another working point).
        warm_start: Per-layer ``log10`` weights to enqueue after the baselines (e.g. the best trial's
            ``user_attrs["log10w"]`` at another working point), so several working points share what
            the search has learned.
        sampler: ``"tpe"`` (multivariate TPE), ``"gp"`` (Gaussian process), ``"cmaes"`` or ``"random"``.
        pruner: ``"median"``, ``"hyperband"`` or ``"none"`` (on the retrain's per-epoch metric).
        granularity: ``"layer"`` (one weight per layer) or ``"group"`` (one per group of
            :func:`~ranksearch.surgery.layer_groups`: same path without block indices, same type).
    """
    if sampler not in SAMPLERS or pruner not in PRUNERS:
        raise ValueError(f"sampler {sampler!r} / pruner {pruner!r} not supported; use one of {list(SAMPLERS)} / {list(PRUNERS)}.")
    if prior not in ("none", "sensitivity"):
        raise ValueError(f"prior {prior!r} is not supported; use 'none' or 'sensitivity'.")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity {granularity!r} is not supported; use one of {list(GRANULARITIES)}.")
    if (task is None) == (evaluate is None):
        raise ValueError("Give either task= (built-in retrain and metric) or evaluate= (your own callables).")
    if n_trials is not None and n_trials < 1:
        raise ValueError(f"n_trials {n_trials} must be >= 1 (or None with a timeout).")
    if n_trials is None and timeout is None:
        raise ValueError("Give n_trials, timeout or both, or the search never ends.")
    curves = spectra(model, cache_dir=cache_dir, exclude=exclude)
    if not curves:
        raise ValueError(f"{type(model).__name__} has no eligible Linear/Conv layer to factorize; nothing to search.")
    solve_ratio(curves, target_ratio, count_params(model), None, rank_multiple, min_rank)  # fail fast if unreachable
    warm = [dict(w) for w in warm_start]
    for w in warm:  # before any study is written
        if unknown := sorted(set(w) - set(curves)):
            raise ValueError(f"warm_start names layers {unknown[:3]} that {type(model).__name__} has no eligible layer for; "
                             "give per-layer log10 weights of this model (a trial's user_attrs['log10w']).")
    test: Evaluate | None = None
    settings = retrain_settings or RetrainSettings()
    if task is not None:
        evaluate, retrain, test = task_callables(task, settings, copy.deepcopy(model), seed)
    started = time.perf_counter()
    dense = {"val": float(evaluate(copy.deepcopy(model)))}  # type: ignore[misc]
    if test is not None:
        dense["test"] = float(test(copy.deepcopy(model)))
    _log.info("dense model: %s", dense)

    name = study_name or f"{model_name or type(model).__name__}@{target_ratio:g}"
    store = open_storage(storage, out_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, fresh = _open_study(store, name, resume, _SAMPLER_FACTORIES[sampler](seed), _PRUNER_FACTORIES[pruner]())
    if data_aware is None:
        data_aware = calibration is not None or task is not None
    layers = find_layers(model).eligible
    modules = {n: layers[n] for n in curves}
    views = build_views(model, modules, curves, data_aware, calibration, task)
    if sensitivity is None and ((fresh and baselines) or prior == "sensitivity"):  # resumed: enqueued exactly
        sensitivity = measure_sensitivity(model, views.curves, views.factors, evaluate)  # type: ignore[arg-type]
    starts = _starting_points(model, views, target_ratio, sensitivity)
    centre = starts.get("sensitivity_sum", {}) if prior == "sensitivity" else {}
    groups = layer_groups(modules) if granularity == "group" else {n: n for n in curves}
    if fresh:
        study.enqueue_trial({PARAM_PREFIX + g: 0.0 for g in dict.fromkeys(groups.values())}, user_attrs={"method": "seed_rule"})
        exact = [*(starts.items() if baselines else ()), *(("warm_start", w) for w in warm)]
        for method, logw in exact:
            logw = {n: float(logw.get(n, 0.0)) for n in curves}
            offsets: dict[str, list[float]] = {}
            for n, v in logw.items():
                offsets.setdefault(groups[n], []).append(v - centre.get(n, 0.0))
            u = {PARAM_PREFIX + g: float(np.clip(np.mean(o), -spread, spread)) for g, o in offsets.items()}
            study.enqueue_trial(u, user_attrs={"method": method, EXACT_ATTR: logw})
    weights_dir = Path(out_dir) / "trials" if out_dir is not None else None
    objective = Objective(model, views, target_ratio, evaluate=evaluate, retrain=retrain, test=test,  # type: ignore[arg-type]
                           spread=spread, prior=centre, groups=groups,
                           rank_multiple=rank_multiple, min_rank=min_rank,
                           weights_dir=weights_dir, n_trials=n_trials)
    finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    remaining = None if n_trials is None else max(0, n_trials - finished)
    if remaining != 0:
        stop = [MaxTrialsCallback(n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED))] if n_trials else []
        with warnings.catch_warnings():  # the ratio constraint always holds (the solver hits it); CMA-ES says it ignores it
            warnings.filterwarnings("ignore", message="Constraints have been set, but CmaEsSampler")
            study.optimize(objective, n_trials=remaining, timeout=timeout, catch=(), callbacks=stop)
    wall = time.perf_counter() - started
    metric_name = task.metric if task is not None else getattr(evaluate, "__name__", "evaluate")
    result = _result(study, objective, model, target_ratio, dense, wall, weights_dir, name, seed, spread,
                     settings if task is not None else None, exclude, model_name, source, n_trials, timeout, metric_name,
                     {"sampler": sampler, "pruner": pruner, "prior": prior, "granularity": granularity,
                      "data_aware": data_aware, "baselines": baselines})
    result.sensitivity = sensitivity
    return result


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


def _result(study: optuna.Study, objective: Objective, model: nn.Module, target: float, dense: dict[str, float],
            wall: float, weights_dir: Path | None, name: str, seed: int, spread: float,
            settings: RetrainSettings | None, exclude: Iterable[str] | Mapping[str, str], model_name: str | None,
            source: dict[str, Any] | None, n_trials: int | None, timeout: float | None, metric_name: str,
            choices: dict[str, Any]) -> SearchResult:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise ValueError(f"No trial of study {name!r} completed (timeout too short?); raise --timeout or --trials.")
    best = study.best_trial
    seed_trials = [t for t in complete if t.user_attrs.get("method") == "seed_rule"]
    seed_trial = seed_trials[0] if seed_trials else None

    def figures(t: optuna.trial.FrozenTrial | None) -> dict[str, Any]:
        if t is None:
            return {}
        return {"trial": t.number, "val": t.value, "test": t.user_attrs.get("test"), "before_retrain": t.user_attrs.get("before_retrain")}

    metric = {"name": metric_name, "dense": dense, "seed_rule": figures(seed_trial), "searched": figures(best)}
    for method in ("uniform", "sensitivity", "sensitivity_sum"):
        first = next((t for t in study.trials if t.user_attrs.get("method") == method), None)
        if first is not None and first.state == TrialState.COMPLETE:
            metric[method] = figures(first)
    counts = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    settings_record = {
        "method": "optuna", "study_name": name, **choices,
        "n_trials": n_trials, "timeout": timeout, "seed": seed, "spread": spread, "trials": counts,
        "best_trial": best.number, "wall_time_s": round(wall, 2), "exclude": list(exclude),
        "rank_multiple": objective.rank_multiple, "min_rank": objective.min_rank,
        "retrain": settings.to_dict() if settings is not None else "user callable",
    }

    def config_of(t: optuna.trial.FrozenTrial, m: dict[str, Any]) -> RankConfig:
        sol = _solution_of(t, objective)
        curves = objective.views.plain_curves if t.user_attrs.get("factors") == "plain" else objective.curves
        return config_for(model, curves, sol, target, model_name=model_name, source=source, metric=m,
                          search={**settings_record, "factors": t.user_attrs.get("factors"), "trial_method": t.user_attrs.get("method")})

    plain_best = best.user_attrs.get("factors") == "plain"
    best_model = factorize(model, best.user_attrs["ranks"], objective.views.plain_factors if plain_best else objective.factors)
    path = weights_dir / f"trial_{best.number}.safetensors" if weights_dir is not None else None
    if path is not None and path.exists():
        best_model.load_state_dict(load_state_dict(path))
    elif objective.retrain is not None:  # weights not kept (no out_dir): retrain the best again, same seed
        objective.retrain_again(best_model)
    if weights_dir is not None:
        for p in weights_dir.glob("trial_*.safetensors"):
            if p != path:
                p.unlink(missing_ok=True)
    summary = {"target_ratio": target, "achieved_ratio": best.user_attrs["ratio"], "trials": counts,
               "wall_time_s": round(wall, 1), "seed_rule_ratio": seed_trial.user_attrs["ratio"] if seed_trial else None,
               **metric}
    seed_cfg = config_of(seed_trial, metric) if seed_trial else None
    cfg = config_of(best, metric)
    return SearchResult(config=cfg, study=study, model=best_model, seed_rule=seed_cfg or cfg, summary=summary)


def _solution_of(t: optuna.trial.FrozenTrial, objective: Objective) -> Solution:
    ranks = {n: t.user_attrs["ranks"].get(n) for n in objective.curves}
    return Solution(ranks, float("nan"), int(t.user_attrs["params"]), objective.total)

