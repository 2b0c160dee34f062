"""One search trial: a proposal -> exact ranks -> factorize -> short retrain -> metric.

:class:`Objective` is what Optuna calls per trial. Every trial records (:class:`~ranksearch.study._record.TrialRecord`)
what it allocated, who ran it, what it scored and, when it was the best so far, the artifact id of its
retrained weights. A trial that raises is failed with ``error`` and ``traceback``; one interrupted by
Ctrl-C is marked ``interrupted``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.artifacts import upload_artifact
from optuna.trial import TrialState
from torch import nn

from ranksearch.core._surgery import factorize
from ranksearch.core._weights import save_state_dict
from ranksearch.errors import RankSearchError
from ranksearch.study._allocator import Allocator
from ranksearch.study._callables import Callables, accepts_report
from ranksearch.study._record import TrialRecord
from ranksearch.study._storage import worker_id, write_trial
from ranksearch.study._vocab import Method

__all__ = ["Objective"]

_log = logging.getLogger(__name__)


class Objective:
    """One trial: proposal -> exact ranks -> factorize -> short retrain -> metric.

    Args:
        model: The dense model (left unchanged).
        allocator: Proposals to ranks (with the study's centre).
        calls: The metric, the retrain, the test metric; ``calls.quick`` scores a sampled trial before
            its retrain on a validation subset (the pruner may stop it after a fraction of an epoch, so
            the whole split would cost it more than its screen).
        artifacts: Where a trial that beats the best so far uploads its retrained weights (None: nowhere).
        n_trials: The trial cap, for the log lines.
    """

    def __init__(self, model: nn.Module, allocator: Allocator, calls: Callables, *, artifacts: Any = None,
                 n_trials: int | None = None) -> None:
        self.model, self.allocator, self.calls = model, allocator, calls
        self.artifacts, self.n_trials = artifacts, n_trials
        self.current: int | None = None  #: number of the trial running now (for Ctrl-C)
        self.gate: Any = None  #: :class:`~ranksearch.study._signals.InterruptGate`: signals interrupt only inside a trial

    def __call__(self, trial: optuna.Trial) -> float:
        self.current = trial.number
        with self.gate.open() if self.gate is not None else contextlib.nullcontext():
            write_trial(trial, TrialRecord(worker=worker_id()))
            return self._guarded(trial)

    def _guarded(self, trial: optuna.Trial) -> float:
        try:
            return self._run(trial)
        except optuna.TrialPruned as e:
            _log.info("trial %d [%s] pruned: %s", trial.number, TrialRecord.of(trial).method, e)
            raise
        except KeyboardInterrupt:
            write_trial(trial, TrialRecord(interrupted=True))
            raise
        except Exception as e:
            write_trial(trial, TrialRecord(error=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}",
                                           traceback=traceback.format_exc()[-8000:]))
            if isinstance(e, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            raise

    def _run(self, trial: optuna.Trial) -> float:
        start = time.perf_counter()
        method = TrialRecord.of(trial).method  # enqueued trials carry theirs (seed_rule, ...), sampled ones get "searched"
        write_trial(trial, TrialRecord(method=method))
        sol, kind = self.allocator.propose(trial)
        ranks = {n: r for n, r in sol.ranks.items() if r is not None}
        curves, factors = self.allocator.views.of(kind)
        trial.set_constraint("ratio_over_target", sol.ratio - self.allocator.target)
        write_trial(trial, TrialRecord(ranks=ranks, mse={n: float(curves[n].mse[r]) for n, r in ranks.items()}, factors=kind,
                                       params=sol.params, ratio=sol.ratio))
        twin = next((t for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                     if (r := TrialRecord.of(t)).ranks == ranks and r.factors == kind), None)
        if twin is not None:  # same ranks as a finished trial: the retrain is deterministic, reuse it
            r = TrialRecord.of(twin)
            write_trial(trial, TrialRecord(same_as=twin.number, before_retrain=r.before_retrain,
                                           before_retrain_samples=r.before_retrain_samples, test=r.test))
            _log.info("trial %d [%s] has the ranks of trial %d: value %.4f reused", trial.number, method, twin.number, twin.value)
            return float(twin.value)  # type: ignore[arg-type]
        model = factorize(self.model, ranks, factors)
        calls = self.calls
        if calls.quick is not None and method is Method.SEARCHED:
            before = float(calls.quick[0](model))
            write_trial(trial, TrialRecord(before_retrain=before, before_retrain_samples=calls.quick[1]))
        else:
            before = float(calls.evaluate(model))
            write_trial(trial, TrialRecord(before_retrain=before))
        scored = None
        if calls.retrain is not None:
            if accepts_report(calls.retrain):
                scored = calls.retrain(model, report=lambda step, value, last=False: _report(trial, step, value, last))
            else:
                scored = calls.retrain(model)
        # a retrain that returns a number has scored the model on the validation split already
        value = float(scored) if isinstance(scored, (int, float)) and not isinstance(scored, bool) else float(calls.evaluate(model))
        if not math.isfinite(value):
            raise RankSearchError(f"evaluate returned {value!r}; it must return a finite number (higher is better).")
        if calls.test is not None:
            write_trial(trial, TrialRecord(test=float(calls.test(model))))
        done = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        # a tie uploads too: with several workers a later-numbered twin of this value may have finished
        # first, and the best trial (the earliest of the best value) must have its weights
        if self.artifacts is not None and (not done or value >= max(float(t.value or 0.0) for t in done)):
            self._upload(trial, model)
        _log.info("trial %d%s [%s] ratio %.4f -> %.4f (before retrain %.4f) in %.1f s",
                  trial.number, f"/{self.n_trials}" if self.n_trials else "", method, sol.ratio, value, before,
                  time.perf_counter() - start)
        return value

    def _upload(self, trial: optuna.Trial, model: nn.Module) -> None:
        """Upload the retrained weights as an artifact of the trial; the ``weights`` attr, set only
        once the upload is complete, names it."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"trial_{trial.number}.safetensors"
            save_state_dict(model.state_dict(), path, {"format": "ranksearch.factorized", "trial": str(trial.number)})
            artifact = upload_artifact(artifact_store=self.artifacts, file_path=str(path), study_or_trial=trial)
        write_trial(trial, TrialRecord(weights=artifact))


def _report(trial: optuna.Trial, step: int, value: float | None, last: bool = False) -> None:
    """Report an intermediate value; the pruner may stop the trial, except after its ``last`` step."""
    if value is None:
        return
    trial.report(float(value), step)
    if not last and trial.should_prune():
        raise optuna.TrialPruned(f"pruned at step {step} with {value:.4f}")
