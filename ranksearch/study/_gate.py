"""Cheap first, full retrain for the promising: the ``gate`` pruner (multi-fidelity screening).

A sampled trial's first report (the built-in retrain reports the validation metric after
``screen`` of the first epoch, as step 0; a retrain of your own, its first report) is its
*screen*. The gate lets it go on only if that value is among the best ``keep`` fraction of the
values every trial of the study had at the same step (pruned ones included, as in asynchronous
successive halving), and if fewer than ``keep`` of the sampled trials screened so far went on (a
budget of full retrains: when the incumbent improves, most trials near it rank high at the screen;
the budget saved by earlier trials carries over), unless its screen is the best of the study so far
(failed trials, whose allocations run again, count in neither);
at each later report (the end of an epoch but the last) it must be in the top
half of the values there. A trial that has finished its retrain is never pruned. Enqueued
allocations (the seed rule, the baselines, warm starts) are never pruned: they are the references
the search must beat, and the incumbent sampled trials start from.

Every decision is logged (``ranksearch.study._gate`` logger) and kept in the trial's ``gate`` user attr:
step, value, threshold, how many values it was ranked among, the budget used before it (``went_on``
of ``screened``), and ``promoted`` (``gate:<step>`` for the later reports).

Optuna prunes no multi-objective study. A Pareto study's objective asks the :class:`FrontGate` instead: the
same fractions, among the trials that allocated for its ratio or a smaller one (a trial is worth a full
retrain only if it may beat the cheaper ones), on the values the trials record themselves (``reports``).
"""

from __future__ import annotations

import logging

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from ranksearch.study._record import TrialRecord
from ranksearch.study._storage import write_frozen_trial, write_trial
from ranksearch.study._vocab import Method

__all__ = ["FrontGate", "GatePruner"]

_log = logging.getLogger(__name__)


class GatePruner(optuna.pruners.BasePruner):
    """Successive halving for sampled trials: the top ``keep`` of the study at the screen, within a budget
    of ``keep`` of the sampled trials (a best screen always goes on), then the top half at each later report.

    Args:
        keep: Fraction of the screened values a trial must be among to go on (ties go on), and of the
            screened trials that may go on.
        later: The same fraction at every later report (the built-in retrain does not ask after its
            last epoch: a finished retrain is kept).
        n_min: With fewer values than this at a step (this trial's included), every trial goes on.
    """

    def __init__(self, keep: float = 0.2, later: float = 0.5, n_min: int = 5) -> None:
        for name, v in (("keep", keep), ("later", later)):
            if not 0 < v <= 1:
                raise ValueError(f"{name} {v!r} must be in (0, 1].")
        self.keep, self.later, self.n_min = float(keep), float(later), int(n_min)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or TrialRecord.of(trial).method is not Method.SEARCHED:
            return False
        value = float(trial.intermediate_values[step])
        screen = step == min(trial.intermediate_values)
        fraction = self.keep if screen else self.later
        # failed trials (interrupted, or their worker died) do not count: their allocation runs again
        # and is screened again, so a resumed study decides as an uninterrupted one would have
        trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
                  if t.number != trial.number]
        others = [float(t.intermediate_values[step]) for t in trials if step in t.intermediate_values]
        values = np.array([*others, value])
        record: dict[str, object] = {"step": int(step), "value": value}
        threshold = _threshold(values, fraction, self.n_min)
        promoted = value >= threshold
        if screen:  # the budget: at most `keep` of the sampled trials screened so far go on, but a best screen does
            gated = [g for t in trials if (g := TrialRecord.of(t).gate) is not None]
            went_on = sum(1 for g in gated if g.get("promoted"))
            best = not others or value > max(others)
            record.update(went_on=went_on, screened=len(gated), best=best)
            promoted = best or (promoted and went_on < self.keep * (len(gated) + 1))
        rank = int((values > value).sum()) + 1
        record.update(threshold=threshold, rank=rank, of=int(len(values)), promoted=bool(promoted))
        write_frozen_trial(study, trial, TrialRecord(gate=record) if screen else TrialRecord(gate_later={int(step): record}))
        _log.info("trial %d %s at step %d: %.4f, %s of %d (threshold %s, top %.0f%%%s) -> %s", trial.number,
                  "screened" if screen else "checked", step, value, _ordinal(rank), len(values),
                  "none yet" if threshold == float("-inf") else f"{threshold:.4f}", 100 * fraction,
                  f"; {record['went_on']} of the {record['screened']} screened before went on" if screen else "",
                  "goes on" if promoted else "pruned")
        return not promoted


class FrontGate:
    """The gate of a Pareto study, asked by its objective at each report: a sampled trial goes on only if its value is
    among the best ``keep`` of the values at the same step of the trials that allocated for its ratio or a smaller
    one (with fewer than ``n_min`` such values it goes on), then the top ``later`` at each later
    report but the last. Enqueued allocations always go on. Every trial's reports are kept in its record."""

    def __init__(self, keep: float = 0.2, later: float = 0.5, n_min: int = 5) -> None:
        self.keep, self.later, self.n_min = float(keep), float(later), int(n_min)

    def __call__(self, trial: optuna.Trial, reports: dict[int, float], step: int, value: float, last: bool) -> None:
        """Record ``value`` at ``step`` in ``reports`` (the trial's so far) and raise :class:`optuna.TrialPruned` if it stops."""
        reports[int(step)] = float(value)
        write_trial(trial, TrialRecord(reports=dict(reports)))
        record = TrialRecord.of(trial)
        if last or record.method is not Method.SEARCHED or record.target is None:
            return
        screen = step == min(reports)
        fraction = self.keep if screen else self.later
        others = [r.reports[step] for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                                                            TrialState.RUNNING))
                  if t.number != trial.number and (r := TrialRecord.of(t)).reports and step in r.reports
                  and r.target is not None and r.target <= record.target]
        values = np.array([*others, value])
        threshold = _threshold(values, fraction, self.n_min)
        promoted = value >= threshold
        rank = int((values > value).sum()) + 1
        decision = {"step": int(step), "value": float(value), "threshold": threshold, "rank": rank, "of": int(len(values)),
                    "promoted": bool(promoted), "peers": f"target <= {record.target:g}"}
        write_trial(trial, TrialRecord(gate=decision) if screen else TrialRecord(gate_later={int(step): decision}))
        _log.info("trial %d %s at step %d: %.4f, %s of %d trials at point %g or less (threshold %s, top %.0f%%) -> %s",
                  trial.number, "screened" if screen else "checked", step, value, _ordinal(rank), len(values), record.target,
                  "none yet" if threshold == float("-inf") else f"{threshold:.4f}", 100 * fraction,
                  "goes on" if promoted else "pruned")
        if not promoted:
            raise optuna.TrialPruned(f"pruned at step {step} with {value:.4f}")


def _threshold(values: np.ndarray, fraction: float, n_min: int) -> float:
    """The value a trial must reach to be among the best ``fraction`` of ``values`` (its own included); -inf with
    fewer than ``n_min``."""
    if len(values) < n_min:
        return float("-inf")
    return float(np.quantile(values, 1.0 - fraction, method="higher"))


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"
