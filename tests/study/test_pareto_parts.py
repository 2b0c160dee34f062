"""A Pareto study's parts: its settings and ratios, the front's gate, the anchor at a ratio, the front of figures."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from ranksearch import SearchSettings
from ranksearch.errors import ConfigError
from ranksearch.results._summary import Figures, front_of
from ranksearch.study._allocator import anchor_trial
from ranksearch.study._gate import FrontGate
from ranksearch.study._record import TrialRecord
from ranksearch.study._settings import FRONT_STEP, front_ratios


@pytest.mark.parametrize("points", [(0.25, 0.1), (0.1, 0.25), (0.85, 0.8, 0.7, 0.65), (0.5, 0.05, 0.03)])
def test_front_ratios_hold_the_points_and_no_step_is_larger_than_the_front_step(points):
    front = front_ratios(points)
    assert set(points) <= set(front)
    assert list(front) == sorted(front, reverse=True) and len(set(front)) == len(front)
    assert all(a / b <= FRONT_STEP * 1.001 for a, b in zip(front, front[1:]))
    assert all(a / b > 1.0 for a, b in zip(front, front[1:]))


def test_pareto_settings_keep_their_points_largest_first_and_round_trip():
    s = SearchSettings(0.25, pareto=[0.1, 0.25])
    assert s.pareto == (0.25, 0.1) and s.front == front_ratios((0.25, 0.1)) and s.point == "pareto0.1-0.25"
    assert SearchSettings.from_dict(s.to_dict()) == s
    assert s.replace(target_latency=1.0).point == "pareto0.1-0.25+latency1"  # every trial also keeps the latency bound
    fast = SearchSettings(1.0, target_latency=1.0, pareto=(0.7, 1.0), pareto_axis="latency")  # the front over latency fractions
    assert fast.pareto == (1.0, 0.7) and fast.front[0] == 1.0 and fast.point == "pareto-latency0.7-1"
    assert fast.replace(target_ratio=0.5).point == "pareto-latency0.7-1+0.5"
    assert SearchSettings.from_dict(fast.to_dict()) == fast
    old = {k: v for k, v in SearchSettings(0.25).to_dict().items() if k != "pareto"} | {"format_version": 7}
    assert SearchSettings.from_dict(old).pareto == ()  # version 7 had no Pareto studies


@pytest.mark.parametrize("kw, message", [
    (dict(target_ratio=0.25, pareto=(0.25,)), "two working points or more"),
    (dict(target_ratio=0.1, pareto=(0.25, 0.1)), "must be the largest of its points"),
    (dict(target_ratio=0.25, pareto=(0.25, 0.1, 0.25)), "repeats a ratio"),
    (dict(target_ratio=0.25, pareto=(0.25, 1.5)), "pareto value 1.5 must be a number in (0, 1]"),
    (dict(target_ratio=0.25, pareto=(0.25, 0.1), sampler="cmaes"), "optimizes one objective"),
    (dict(target_ratio=0.25, pareto=(0.25, 0.1), pruner="median"), "Optuna prunes no multi-objective study"),
    (dict(target_ratio=0.25, pareto="0.25,0.1"), "must be a list of numbers"),
    (dict(target_ratio=0.5, pareto=(1.0, 0.5)), "keeps every parameter at 1"),
    (dict(target_ratio=1.0, target_latency=0.9, pareto=(1.0, 0.8), pareto_axis="latency"), "must be the largest of its points"),
    (dict(target_ratio=0.25, pareto_axis="latency"), "goes with pareto"),
])
def test_bad_pareto_settings_are_refused_in_one_line(kw, message):
    with pytest.raises(ConfigError, match=None) as e:
        SearchSettings(**kw)
    assert message in str(e.value) and "\n" not in str(e.value)


def _pareto_study() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(directions=["maximize", "minimize"])


def _finished(study: optuna.Study, target: float, reports: dict[int, float], method: str = "searched", ratio: float | None = None,
              state: TrialState = TrialState.COMPLETE) -> None:
    attrs = TrialRecord(target=target, ratio=ratio or target, reports=reports, ranks={"fc": 1}).to_attrs()
    if method != "searched":
        attrs["method"] = method
    values = [reports[max(reports)], ratio or target] if state == TrialState.COMPLETE else None
    study.add_trial(optuna.trial.create_trial(state=state, values=values, user_attrs=attrs, params={}, distributions={}))


def _screened(study: optuna.Study, target: float, value: float, method: str = "searched", last: bool = False) -> bool:
    """Whether a running trial at ``target`` whose first report is ``value`` goes on (its record is checked too)."""
    trial = study.ask()
    trial.set_user_attr("target", target)
    trial.set_user_attr("ratio", target * 0.99)
    if method != "searched":
        trial.set_user_attr("method", method)
    reports: dict[int, float] = {}
    try:
        FrontGate(keep=0.2, n_min=5)(trial, reports, 0, value, last)
        went_on = True
    except optuna.TrialPruned:
        went_on = False
    record = TrialRecord.of(study.trials[-1])
    assert record.reports == {0: value}
    study.tell(trial, state=TrialState.PRUNED if not went_on else TrialState.FAIL)
    return went_on


def test_the_front_gate_compares_a_screen_with_the_trials_at_its_ratio_or_smaller():
    study = _pareto_study()
    for v in (0.90, 0.91, 0.92, 0.93, 0.94):  # five trials at the small ratio
        _finished(study, 0.1, {0: v})
    # at 0.1: 0.90 is not in the top fifth of the six values there; 0.95 is
    assert not _screened(study, 0.1, 0.90)
    assert _screened(study, 0.1, 0.95)
    # at 0.25 the trials at 0.1 are its peers too: 0.93 loses to them...
    for v in (0.96, 0.97):
        _finished(study, 0.25, {0: v})
    assert not _screened(study, 0.25, 0.93)
    # ...while at 0.05 there are none to compare with yet (fewer than n_min): it goes on
    assert _screened(study, 0.05, 0.10)
    # enqueued allocations and a retrain's last report always go on
    assert _screened(study, 0.1, 0.10, method="uniform")
    assert _screened(study, 0.1, 0.10, last=True)
    decision = TrialRecord.of(study.trials[5]).gate  # the 0.90 screen
    assert decision is not None and decision["promoted"] is False and decision["of"] == 6 and decision["peers"] == "target <= 0.1"


def test_the_anchor_of_a_pareto_trial_is_the_best_at_its_ratio_else_the_nearest():
    study = _pareto_study()
    _finished(study, 0.25, {0: 0.97})
    _finished(study, 0.25, {0: 0.98})
    _finished(study, 0.1, {0: 0.90})
    assert anchor_trial(study, target=0.25).number == 1  # the best at its own ratio
    assert anchor_trial(study, target=0.1).number == 2  # not the better ones at 0.25
    assert anchor_trial(study, target=0.2).number == 1  # none at 0.2: 0.25 is nearer in log than 0.1
    assert anchor_trial(study, target=0.12).number == 2
    assert anchor_trial(study).number == 1  # one working point: the best of all


def test_the_anchor_on_the_bytes_axis_is_the_best_of_its_budget_at_the_nearest_ratio():
    study = _pareto_study()
    for budget, ratio, value in ((0.1, 0.3, 0.99), (0.05, 0.2, 0.90), (0.05, 0.1, 0.92), (0.05, 0.3, 0.80)):
        attrs = TrialRecord(target=budget, ratio_target=ratio, ratio=ratio, ranks={"fc": 1}).to_attrs()
        study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, values=[value, budget], user_attrs=attrs))
    assert anchor_trial(study, target=0.3, budget=0.05).number == 3  # its budget's trial at its ratio, not the better one at 0.1
    assert anchor_trial(study, target=0.12, budget=0.05).number == 2  # none at 0.12 in its budget: the nearest ratio, 0.1
    assert anchor_trial(study, target=0.2, budget=0.07).number == 1  # no trial of its budget yet: any budget's, at its ratio
    assert anchor_trial(study, budget=0.05).number == 2  # no ratio asked: the best of its budget


def test_front_of_keeps_exactly_the_non_dominated_figures():
    figs = [Figures(trial=0, val=0.90, ratio=0.25), Figures(trial=1, val=0.95, ratio=0.24), Figures(trial=2, val=0.95, ratio=0.20),
            Figures(trial=3, val=0.80, ratio=0.10), Figures(trial=4, val=0.85, ratio=0.12), Figures(trial=5, val=0.70, ratio=0.11),
            Figures(trial=6, val=None, ratio=0.05)]
    front = front_of(figs)
    assert [f.trial for f in front] == [2, 4, 3]
    for f in figs:  # every figure left out is dominated by one on the front
        if f not in front and f.val is not None:
            assert any(g.val >= f.val and g.ratio <= f.ratio for g in front)
