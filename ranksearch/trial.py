"""One search trial: a proposal of per-layer weights -> exact ranks -> factorize -> short retrain -> metric.

:class:`Objective` is what Optuna calls per trial; :class:`Views` holds the curves and decompositions a
trial allocates on (plain SVD, or activation-whitened when data-aware). Internal to :mod:`ranksearch.search`.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState
from torch import nn

from ranksearch.calibrate import calibration_batches, input_moments, whitened
from ranksearch.decompose import Factors
from ranksearch.retrain import RetrainSettings, evaluate as evaluate_metric, fit
from ranksearch.solver import Curve, Solution, solve_ratio
from ranksearch.surgery import count_params, factorize, layer_factors
from ranksearch.task import Task
from ranksearch.weights import save_state_dict

__all__ = ["EXACT_ATTR", "PARAM_PREFIX", "Evaluate", "Objective", "Retrain", "Views", "build_views", "task_callables",
           "worker_alive", "worker_id"]

_log = logging.getLogger(__name__)
PARAM_PREFIX = "log10w:"  #: Optuna parameter of one searched weight: PARAM_PREFIX + layer (or group) name
EXACT_ATTR = "log10w"  #: user attr of a trial: the per-layer log-weights it allocates with (exact for enqueued ones)

Evaluate = Callable[[nn.Module], float]
Retrain = Callable[..., Any]


def worker_id() -> str:
    """``host:pid`` of this process, recorded on the trials it runs (read back by :func:`worker_alive`)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_alive(worker: str | None) -> bool:
    """Whether the process that runs a trial is alive. Workers on other hosts are presumed alive
    (a database storage's heartbeat fails their trials if they die)."""
    if worker is None:
        return False
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def _accepts_report(fn: Callable[..., Any]) -> bool:
    try:
        return "report" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class Views:
    """Curves and decompositions a trial allocates on: the trial space's (plain or data-aware) and the
    plain ones, which the CE1 rule (the seed rule) always uses."""

    curves: Mapping[str, Curve]
    factors: Mapping[str, Factors]
    plain_curves: Mapping[str, Curve]
    plain_factors: Mapping[str, Factors]
    kind: str  # "plain" or "data_aware"


class Objective:
    """One trial: proposal -> exact ranks -> factorize -> short retrain -> metric."""

    def __init__(self, model: nn.Module, views: Views, target: float, *, evaluate: Evaluate,
                 retrain: Retrain | None, test: Evaluate | None, spread: float, prior: Mapping[str, float],
                 groups: Mapping[str, str], rank_multiple: int, min_rank: int, weights_dir: Path | None, n_trials: int | None) -> None:
        self.model, self.views, self.target = model, views, target
        self.curves, self.factors = views.curves, views.factors
        self.evaluate, self.retrain, self.test = evaluate, retrain, test
        self.spread, self.prior, self.rank_multiple, self.min_rank = spread, prior, rank_multiple, min_rank
        self.groups = groups
        self.weights_dir, self.n_trials = weights_dir, n_trials
        self.total = count_params(model)

    def propose(self, trial: optuna.Trial) -> tuple[Solution, str]:
        """Ranks of the trial and the kind of factors they use.

        An enqueued allocation (the seed rule, uniform, sensitivity, a warm start) allocates exactly
        as it was given (its per-layer log-weights ride in the trial's user attrs, so a resumed study
        runs it again exactly); its parameters are its nearest point in the searched space, for the
        sampler to learn from. Every trial records the absolute log-weights it allocated with.
        """
        u = {g: trial.suggest_float(PARAM_PREFIX + g, -self.spread, self.spread) for g in dict.fromkeys(self.groups.values())}
        if trial.user_attrs.get("method") == "seed_rule":
            sol = solve_ratio(self.views.plain_curves, self.target, self.total, None, self.rank_multiple, self.min_rank)
            return sol, "plain"
        logw = trial.user_attrs.get(EXACT_ATTR)
        if logw is None:
            logw = {n: self.prior.get(n, 0.0) + u[self.groups[n]] for n in self.curves}
            trial.set_user_attr(EXACT_ATTR, logw)
        w = {n: 10.0 ** logw.get(n, 0.0) for n in self.curves}
        return solve_ratio(self.curves, self.target, self.total, w, self.rank_multiple, self.min_rank), self.views.kind

    def __call__(self, trial: optuna.Trial) -> float:
        start = time.perf_counter()
        trial.set_user_attr("worker", worker_id())
        if "method" not in trial.user_attrs:  # enqueued trials carry theirs (seed_rule, ...)
            trial.set_user_attr("method", "searched")
        sol, kind = self.propose(trial)
        ranks = {n: r for n, r in sol.ranks.items() if r is not None}
        trial.set_constraint("ratio_over_target", sol.ratio - self.target)
        trial.set_user_attr("ranks", ranks)
        trial.set_user_attr("factors", kind)
        trial.set_user_attr("params", sol.params)
        trial.set_user_attr("ratio", sol.ratio)
        twin = next((t for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                     if t.user_attrs.get("ranks") == ranks and t.user_attrs.get("factors") == kind), None)
        if twin is not None:  # same ranks as a finished trial: the retrain is deterministic, reuse it
            for key in ("before_retrain", "test"):
                if key in twin.user_attrs:
                    trial.set_user_attr(key, twin.user_attrs[key])
            trial.set_user_attr("same_as", twin.number)
            _log.info("trial %d has the ranks of trial %d: value reused", trial.number, twin.number)
            return float(twin.value)  # type: ignore[arg-type]
        model = factorize(self.model, ranks, self.views.plain_factors if kind == "plain" else self.factors)
        trial.set_user_attr("before_retrain", self.evaluate(model))
        scored = None
        if self.retrain is not None:
            if _accepts_report(self.retrain):
                scored = self.retrain(model, report=lambda step, value: _report(trial, step, value))
            else:
                scored = self.retrain(model)
        # a retrain that returns a number has scored the model on the validation split already
        value = float(scored) if isinstance(scored, (int, float)) and not isinstance(scored, bool) else float(self.evaluate(model))
        if not math.isfinite(value):
            raise ValueError(f"evaluate returned {value!r}; it must return a finite number (higher is better).")
        if self.test is not None:
            trial.set_user_attr("test", float(self.test(model)))
        done = [t for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        if self.weights_dir is not None and (not done or value > max(t.value for t in done)):
            save_state_dict(model.state_dict(), self.weights_dir / f"trial_{trial.number}.safetensors")
        _log.info("trial %d%s [%s] ratio %.4f -> %.4f (before retrain %.4f) in %.1f s",
                  trial.number, f"/{self.n_trials}" if self.n_trials else "", trial.user_attrs["method"],
                  sol.ratio, value, trial.user_attrs["before_retrain"], time.perf_counter() - start)
        return value

    def retrain_again(self, model: nn.Module) -> None:
        """Retrain ``model`` as a trial does, without reporting (the best trial's weights were not kept)."""
        if _accepts_report(self.retrain):  # type: ignore[arg-type]
            self.retrain(model, report=lambda step, value: None)  # type: ignore[misc]
        else:
            self.retrain(model)  # type: ignore[misc]


def _report(trial: optuna.Trial, step: int, value: float | None) -> None:
    if value is None:
        return
    trial.report(float(value), step)
    if trial.should_prune():
        raise optuna.TrialPruned(f"pruned at step {step} with {value:.4f}")


def task_callables(task: Task, settings: RetrainSettings, teacher: nn.Module, seed: int) -> tuple[Evaluate, Retrain, Evaluate]:
    def evaluate(model: nn.Module) -> float:
        return evaluate_metric(model, task.val, task.metric)

    def retrain(model: nn.Module, report: Callable[[int, float | None], None]) -> float | None:
        last: list[float | None] = [None]

        def on_epoch(step: int, value: float | None) -> None:
            last[0] = value
            report(step, value)

        fit(model, task, settings, teacher=teacher, seed=seed, on_epoch=on_epoch, validate=True)
        return last[0]  # the validation metric after the last epoch (None without epochs)

    def test(model: nn.Module) -> float:
        return evaluate_metric(model, task.test, task.metric)

    return evaluate, retrain, test


def build_views(model: nn.Module, modules: Mapping[str, nn.Module], curves: Mapping[str, Curve], data_aware: bool,
                calibration: Iterable[torch.Tensor] | None, task: Task | None) -> Views:
    plain = layer_factors(modules, {n: max(1, c.max_rank) for n, c in curves.items()})
    if not data_aware:
        return Views(curves, plain, curves, plain, "plain")
    if calibration is None:
        if task is None:
            raise ValueError("data_aware=True needs calibration batches (calibration=) or a task.")
        calibration = calibration_batches(task.train)
    moments = input_moments(model, modules, calibration, device=next(model.parameters()).device)
    pairs = {n: whitened(m, moments[n], max(1, curves[n].max_rank)) for n, m in modules.items()}
    _log.info("data-aware factors from %d layers' input moments", len(pairs))
    return Views({n: c for n, (c, _) in pairs.items()}, {n: f for n, (_, f) in pairs.items()}, curves, plain, "data_aware")

