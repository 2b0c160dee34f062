"""One search trial: a proposal -> exact ranks -> factorize -> short retrain -> metric.

A proposal is, per layer (or group), a ``log2`` step of its rank from the incumbent (``incumbent``
proposals, :mod:`ranksearch.proposals`) or a ``log10`` weight on the MSE bound (``weights``).

:class:`Objective` is what Optuna calls per trial; :class:`Views` holds the curves and decompositions a
trial allocates on (plain SVD, or activation-whitened when data-aware). Every trial records, in its
user attrs, what it allocated (``method``, ``log10w`` or ``log2r``, ``anchor`` and ``redraws``, ``ranks``,
``mse``, ``params``, ``ratio``, ``factors``), who ran it (``worker``), what it scored (``before_retrain``,
on ``before_retrain_samples`` validation samples when not the whole split, the value, ``test``, and the
gate's decisions ``gate``, ``gate:<step>``), and, when it was the best so far, the artifact id of its retrained weights (``weights``). A trial that
raises is failed with ``error`` and ``traceback``; one interrupted by Ctrl-C is marked ``interrupted``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
import xxhash
from optuna.artifacts import upload_artifact
from optuna.trial import TrialState
from torch import nn
from torch.utils.data import Dataset, Subset

from ranksearch._storage import worker_id
from ranksearch.calibrate import calibration_batches, input_moments, whitened
from ranksearch.decompose import Factors
from ranksearch.errors import RankSearchError
from ranksearch.inputs import Forward
from ranksearch.retrain import RetrainSettings, evaluate as evaluate_metric, fit
from ranksearch.settings import SearchSettings
from ranksearch.proposals import STEP_BOUND, anchor_trial
from ranksearch.solver import Curve, Solution, log2_ranks, project_ranks, solve_ratio
from ranksearch.surgery import count_params, factorize, layer_factors, layer_groups
from ranksearch.task import Task
from ranksearch.weights import save_state_dict

__all__ = ["EXACT_ATTR", "PARAM_PREFIX", "RANK_ATTR", "REDRAWS", "STEP_PREFIX", "Evaluate", "Objective", "Retrain", "Views",
           "build_views", "task_callables", "val_subset"]

_log = logging.getLogger(__name__)
PARAM_PREFIX = "log10w:"  #: Optuna parameter of one searched weight: PARAM_PREFIX + layer (or group) name
EXACT_ATTR = "log10w"  #: user attr of a trial: the per-layer log-weights it allocates with (exact for enqueued ones)
STEP_PREFIX = "log2r:"  #: Optuna parameter of one searched step (incumbent proposals): STEP_PREFIX + layer (or group)
RANK_ATTR = "log2r"  #: user attr of a sampled incumbent-space trial: the per-layer log2 rank targets it projects

REDRAWS = 8  #: new draws of a sampled step whose ranks a trial of the study already has (the k-th: 2.25**k wider, up to +-1.5**k)
Evaluate = Callable[[nn.Module], float]
Retrain = Callable[..., Any]


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
    seconds: Mapping[str, float] = field(default_factory=dict)  #: what computing them took (spectra, calibration)

    def of(self, kind: str) -> tuple[Mapping[str, Curve], Mapping[str, Factors]]:
        """Curves and factors of a trial's ``factors`` attr."""
        return (self.plain_curves, self.plain_factors) if kind == "plain" else (self.curves, self.factors)


class Objective:
    """One trial: proposal -> exact ranks -> factorize -> short retrain -> metric.

    Args:
        model: The dense model (left unchanged).
        views: Curves and factors (:func:`build_views`).
        settings: The study's settings (target, spread, granularity, rank grid).
        centre: Per-layer log-weights the searched offsets are added to (the prior's centre).
        evaluate, retrain, test: The metric on validation data, the short retrain, the metric on test data.
        artifacts: Where a trial that beats the best so far uploads its retrained weights (None: nowhere).
        n_trials: The trial cap, for the log lines.
        quick: ``(metric, samples)``: the metric on a subset of the validation data, which scores a
            sampled trial before its retrain (the pruner may stop it after a fraction of an epoch, so
            the whole split would cost it more than its screen); None: ``evaluate``.
    """

    def __init__(self, model: nn.Module, views: Views, settings: SearchSettings, centre: Mapping[str, float], *,
                 evaluate: Evaluate, retrain: Retrain | None, test: Evaluate | None,
                 artifacts: Any = None, n_trials: int | None = None, quick: tuple[Evaluate, int] | None = None) -> None:
        self.model, self.views, self.settings, self.target = model, views, settings, settings.target_ratio
        self.quick = quick
        self.curves, self.factors = views.curves, views.factors
        self.evaluate, self.retrain, self.test = evaluate, retrain, test
        self.centre, self.artifacts, self.n_trials = dict(centre), artifacts, n_trials
        modules = dict(model.named_modules())
        self.groups = (layer_groups({n: modules[n] for n in views.curves}) if settings.granularity == "group"
                       else {n: n for n in views.curves})
        self.total = count_params(model)
        self.current: int | None = None  #: number of the trial running now (for Ctrl-C)
        self.gate: Any = None  #: :class:`~ranksearch.worker.InterruptGate`: signals interrupt only inside a trial

    @property
    def incumbent(self) -> bool:
        """Whether sampled trials step from the incumbent (else: log-weights around the centre)."""
        return self.settings.proposals == "incumbent"

    def search_space(self) -> list[str]:
        """Names of the searched parameters (one per layer or group)."""
        prefix = STEP_PREFIX if self.incumbent else PARAM_PREFIX
        return [prefix + g for g in dict.fromkeys(self.groups.values())]

    def params_for(self, logw: Mapping[str, float]) -> dict[str, float]:
        """The point of the searched space nearest to absolute per-layer log-weights (for enqueueing;
        in the incumbent space, whose coordinates are relative, the origin)."""
        if self.incumbent:
            return {p: 0.0 for p in self.search_space()}
        offsets: dict[str, list[float]] = {}
        for n in self.curves:
            offsets.setdefault(self.groups[n], []).append(float(logw.get(n, 0.0)) - self.centre.get(n, 0.0))
        s = self.settings.spread
        return {PARAM_PREFIX + g: float(min(s, max(-s, sum(o) / len(o)))) for g, o in offsets.items()}

    def solution(self, method: str | None, logw: Mapping[str, float] | None) -> tuple[Solution, str]:
        """Ranks of an allocation and the kind of factors they use (the seed rule: plain, no weights)."""
        s = self.settings
        if method == "seed_rule":
            return solve_ratio(self.views.plain_curves, self.target, self.total, None, s.rank_multiple, s.min_rank), "plain"
        w = {n: 10.0 ** (logw or {}).get(n, 0.0) for n in self.curves}
        return solve_ratio(self.curves, self.target, self.total, w, s.rank_multiple, s.min_rank), self.views.kind

    def anchor(self, study: optuna.Study) -> tuple[int | None, dict[str, int | None]]:
        """The trial number and ranks sampled incumbent-space proposals step from (None: the centre)."""
        best = anchor_trial(study, enqueued_only=self.settings.sampler == "cmaes")
        if best is not None:
            return best.number, dict(best.user_attrs["ranks"])
        return None, dict(self.solution(None, self.centre)[0].ranks)

    def propose(self, trial: optuna.Trial) -> tuple[Solution, str]:
        """Ranks of the trial and the kind of factors they use.

        An enqueued allocation (the seed rule, uniform, sensitivity, a warm start, a retried trial)
        allocates exactly as it was given (its per-layer log-weights, or for a retried sampled trial
        of the incumbent space its log2 rank targets, ride in the trial's user attrs); its
        parameters are its nearest point in the searched space, for the sampler to learn from.
        Every trial records what it allocated with, absolutely.
        """
        if self.incumbent:
            return self._propose_steps(trial)
        spread = self.settings.spread
        u = {g: trial.suggest_float(PARAM_PREFIX + g, -spread, spread) for g in dict.fromkeys(self.groups.values())}
        method = trial.user_attrs.get("method")
        logw = trial.user_attrs.get(EXACT_ATTR)
        if logw is None and method != "seed_rule":
            logw = {n: self.centre.get(n, 0.0) + u[self.groups[n]] for n in self.curves}
            trial.set_user_attr(EXACT_ATTR, logw)
        return self.solution(method, logw)

    def _propose_steps(self, trial: optuna.Trial) -> tuple[Solution, str]:
        u = {g: trial.suggest_float(STEP_PREFIX + g, -STEP_BOUND, STEP_BOUND) for g in dict.fromkeys(self.groups.values())}
        method = trial.user_attrs.get("method")
        logw = trial.user_attrs.get(EXACT_ATTR)
        if method == "seed_rule" or logw is not None:
            return self.solution(method, logw)
        s = self.settings
        targets = trial.user_attrs.get(RANK_ATTR)
        if targets is not None:  # a retried trial: exactly what it allocated before
            return project_ranks(self.curves, targets, self.target, self.total, s.rank_multiple, s.min_rank), self.views.kind
        number, ranks = self.anchor(trial.study)
        base = log2_ranks(self.curves, ranks)
        seen = [t.user_attrs["ranks"] for t in trial.study.get_trials(deepcopy=False) if "ranks" in t.user_attrs]
        # a step whose ranks a trial already has is drawn again, wider (seeded by the step: deterministic),
        # so that few trials are twins, whose value is known without a retrain but which fill the trial cap;
        # the k-th draw: normal with std step * 1.5**k clipped to [-1, 1], times 1.5**k
        rng = np.random.default_rng(xxhash.xxh32_intdigest(json.dumps(u, sort_keys=True).encode()))
        step = dict(u)
        for redraw in range(REDRAWS + 1):
            if redraw:
                wider = 1.5**redraw
                step = {g: float(np.clip(rng.normal(0.0, s.step * wider), -STEP_BOUND, STEP_BOUND)) * wider for g in u}
            targets = {n: base[n] + step[self.groups[n]] for n in self.curves}
            sol = project_ranks(self.curves, targets, self.target, self.total, s.rank_multiple, s.min_rank)
            if {n: r for n, r in sol.ranks.items() if r is not None} not in seen:
                break
        trial.set_user_attr("anchor", number)
        trial.set_user_attr("redraws", redraw)
        trial.set_user_attr(RANK_ATTR, targets)
        return sol, self.views.kind

    def __call__(self, trial: optuna.Trial) -> float:
        self.current = trial.number
        with self.gate.open() if self.gate is not None else contextlib.nullcontext():
            trial.set_user_attr("worker", worker_id())
            return self._guarded(trial)

    def _guarded(self, trial: optuna.Trial) -> float:
        try:
            return self._run(trial)
        except optuna.TrialPruned as e:
            _log.info("trial %d [%s] pruned: %s", trial.number, trial.user_attrs.get("method"), e)
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        except Exception as e:
            trial.set_user_attr("error", f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
            trial.set_user_attr("traceback", traceback.format_exc()[-8000:])
            if isinstance(e, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            raise

    def _run(self, trial: optuna.Trial) -> float:
        start = time.perf_counter()
        if "method" not in trial.user_attrs:  # enqueued trials carry theirs (seed_rule, ...)
            trial.set_user_attr("method", "searched")
        sol, kind = self.propose(trial)
        ranks = {n: r for n, r in sol.ranks.items() if r is not None}
        curves, factors = self.views.of(kind)
        trial.set_constraint("ratio_over_target", sol.ratio - self.target)
        trial.set_user_attr("ranks", ranks)
        trial.set_user_attr("mse", {n: float(curves[n].mse[r]) for n, r in ranks.items()})
        trial.set_user_attr("factors", kind)
        trial.set_user_attr("params", sol.params)
        trial.set_user_attr("ratio", sol.ratio)
        twin = next((t for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                     if t.user_attrs.get("ranks") == ranks and t.user_attrs.get("factors") == kind), None)
        if twin is not None:  # same ranks as a finished trial: the retrain is deterministic, reuse it
            trial.set_user_attr("same_as", twin.number)
            for key in ("before_retrain", "before_retrain_samples", "test"):
                if key in twin.user_attrs:
                    trial.set_user_attr(key, twin.user_attrs[key])
            _log.info("trial %d [%s] has the ranks of trial %d: value %.4f reused", trial.number,
                      trial.user_attrs["method"], twin.number, twin.value)
            return float(twin.value)  # type: ignore[arg-type]
        model = factorize(self.model, ranks, factors)
        if self.quick is not None and trial.user_attrs["method"] == "searched":
            trial.set_user_attr("before_retrain", float(self.quick[0](model)))
            trial.set_user_attr("before_retrain_samples", self.quick[1])
        else:
            trial.set_user_attr("before_retrain", float(self.evaluate(model)))
        scored = None
        if self.retrain is not None:
            if _accepts_report(self.retrain):
                scored = self.retrain(model, report=lambda step, value, last=False: _report(trial, step, value, last))
            else:
                scored = self.retrain(model)
        # a retrain that returns a number has scored the model on the validation split already
        value = float(scored) if isinstance(scored, (int, float)) and not isinstance(scored, bool) else float(self.evaluate(model))
        if not math.isfinite(value):
            raise RankSearchError(f"evaluate returned {value!r}; it must return a finite number (higher is better).")
        if self.test is not None:
            trial.set_user_attr("test", float(self.test(model)))
        done = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        # a tie uploads too: with several workers a later-numbered twin of this value may have finished
        # first, and the best trial (the earliest of the best value) must have its weights
        if self.artifacts is not None and (not done or value >= max(t.value for t in done)):
            self._upload(trial, model)
        _log.info("trial %d%s [%s] ratio %.4f -> %.4f (before retrain %.4f) in %.1f s",
                  trial.number, f"/{self.n_trials}" if self.n_trials else "", trial.user_attrs["method"],
                  sol.ratio, value, trial.user_attrs["before_retrain"], time.perf_counter() - start)
        return value

    def _upload(self, trial: optuna.Trial, model: nn.Module) -> None:
        """Upload the retrained weights as an artifact of the trial; the ``weights`` attr, set only
        once the upload is complete, names it."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"trial_{trial.number}.safetensors"
            save_state_dict(model.state_dict(), path, {"format": "ranksearch.factorized", "trial": str(trial.number)})
            artifact = upload_artifact(artifact_store=self.artifacts, file_path=str(path), study_or_trial=trial)
        trial.set_user_attr("weights", artifact)

    def retrain_again(self, model: nn.Module) -> None:
        """Retrain ``model`` as a trial does, without reporting (the best trial's weights were not kept)."""
        if _accepts_report(self.retrain):  # type: ignore[arg-type]
            self.retrain(model, report=lambda step, value, last=False: None)  # type: ignore[misc]
        else:
            self.retrain(model)  # type: ignore[misc]


def _report(trial: optuna.Trial, step: int, value: float | None, last: bool = False) -> None:
    """Report an intermediate value; the pruner may stop the trial, except after its ``last`` step."""
    if value is None:
        return
    trial.report(float(value), step)
    if not last and trial.should_prune():
        raise optuna.TrialPruned(f"pruned at step {step} with {value:.4f}")


def val_subset(task: Task, samples: int) -> Dataset | None:
    """A fixed random subset of ``samples`` validation samples (seed 0: the same in every process), or
    None when ``samples`` is 0 or covers the whole split."""
    return subset_of(task.val, samples)


def subset_of(data: Dataset, samples: int) -> Dataset | None:
    """:func:`val_subset` of any dataset: ``samples`` of it drawn with seed 0, or None for all of it."""
    n = len(data)  # type: ignore[arg-type]
    if samples <= 0 or samples >= n:
        return None
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:samples]
    return Subset(data, sorted(order.tolist()))


def task_callables(task: Task, settings: RetrainSettings, teacher: nn.Module, seed: int,
                   screen: float = 0.0, subset: Dataset | None = None) -> tuple[Evaluate, Retrain, Evaluate]:
    """The built-in metric, retrain and test metric of a ``task``; the retrain reports the validation
    metric after each epoch, and as step 0 after ``screen`` of the first epoch (when > 0), scoring
    every report but the last on ``subset`` when given (:func:`val_subset`)."""
    def evaluate(model: nn.Module) -> float:
        return evaluate_metric(model, task.val, task.metric, forward=task.forward)

    def retrain(model: nn.Module, report: Callable[..., None]) -> float | None:
        last: list[float | None] = [None]

        def on_epoch(step: int, value: float | None) -> None:
            last[0] = value
            if step == settings.epochs:  # the retrain is done: nothing left to save by pruning it
                report(step, value, last=True)
            else:
                report(step, value)

        fit(model, task, settings, teacher=teacher, seed=seed, on_epoch=on_epoch, validate=True, screen=screen, subset=subset)
        return last[0]  # the validation metric after the last epoch (None without epochs)

    def test(model: nn.Module) -> float:
        return evaluate_metric(model, task.test, task.metric, forward=task.forward)

    return evaluate, retrain, test


def build_views(model: nn.Module, modules: Mapping[str, nn.Module], curves: Mapping[str, Curve], data_aware: bool,
                calibration: Iterable[Any] | None, task: Task | None, forward: Forward | None = None) -> Views:
    """Plain factors and, when ``data_aware``, the activation-whitened ones, from the input moments over
    ``calibration`` (default: 512 samples of ``task.train``), each batch called with ``forward`` (default:
    the task's, else by the batch's structure)."""
    start = time.perf_counter()
    plain = layer_factors(modules, {n: max(1, c.max_rank) for n, c in curves.items()})
    if not data_aware:
        return Views(curves, plain, curves, plain, "plain", {"factors": time.perf_counter() - start})
    if calibration is None:
        if task is None:
            raise RankSearchError("data_aware=True needs calibration batches (calibration=) or a task.")
        calibration = calibration_batches(task.train)
    forward = forward if forward is not None else task.forward if task is not None else None
    moments = input_moments(model, modules, calibration, device=next(model.parameters()).device, forward=forward)
    pairs = {n: whitened(m, moments[n], max(1, curves[n].max_rank)) for n, m in modules.items()}
    _log.info("data-aware factors from %d layers' input moments", len(pairs))
    return Views({n: c for n, (c, _) in pairs.items()}, {n: f for n, (_, f) in pairs.items()}, curves, plain, "data_aware",
                 {"factors": time.perf_counter() - start})

