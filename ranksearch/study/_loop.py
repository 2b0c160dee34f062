"""The trial loop every worker runs: take trials from the shared study until it holds ``n_trials``
finished ones (complete or pruned; with K workers at most K-1 more finish, those already running, and the
reruns of trials whose workers died, which the cap never counted) or the timeout passes.

Faults: a trial that raises is failed with its error and traceback in its record and the worker goes on
(three failures in a row stop it with that error); Ctrl-C (or SIGTERM) fails the running trial, enqueues
its allocation again and re-raises; trials of dead workers are failed and run again (heartbeats on a
database, process ids on a journal file); at the end a worker fails trials left running by dead workers,
waiting out the grace period for their heartbeats.
"""

from __future__ import annotations

import logging
import time
import warnings

import optuna
from optuna.trial import TrialState

from ranksearch.core._progress import bar
from ranksearch.study._objective import Objective
from ranksearch.study._record import TrialRecord, metric_of
from ranksearch.study._settings import GRACE_S
from ranksearch.study._signals import InterruptGate
from ranksearch.study._storage import fail_dead_trials, fail_running, retry_trial, settle, trial_by_number

__all__ = ["FINISHED", "TrialsFailing", "run_trials"]

_log = logging.getLogger(__name__)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  #: the states the trial cap counts


class TrialsFailing(RuntimeError):
    """Several trials in a row raised: the worker stops (the error is likely in the retrain or metric)."""


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
                    if last is None:  # no trial ran (the objective was never called)
                        failures = 0
                        continue
                    record = TrialRecord.of(last)
                    best = max((m for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                                if (m := metric_of(t)) is not None), default=None)
                    shown.set_postfix_str(f"last {record.method} {last.state.name.lower()}"
                                          + (f", best {best:.4f}" if best is not None else ""))
                    if last.state == TrialState.FAIL:
                        failures += 1
                        _log.warning("trial %d [%s] failed: %s", last.number, record.method, record.error)
                        if failures >= max_failures:
                            raise TrialsFailing(f"{failures} trials in a row failed, the last (trial {last.number}) with "
                                                f"{record.error}; its 'traceback' user attr has the details.")
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
    return None if number is None else trial_by_number(study, number)


def _requeue(study: optuna.Study, number: int | None) -> None:
    """Fail the trial Ctrl-C interrupted (Optuna does when it was inside the objective) and enqueue
    its allocation again, so that a resumed study runs it."""
    trial = _trial(study, number)
    if trial is None:
        return
    if trial.state == TrialState.RUNNING:  # interrupted outside the objective (Optuna fails it inside)
        trial = fail_running(study, trial, TrialRecord(interrupted=True))
    if trial.state == TrialState.FAIL:
        retry_trial(study, trial)
