"""The gate pruner: sampled trials retrain fully only when their screen is in the study's top fraction."""

from __future__ import annotations

import logging

import optuna
import pytest
from optuna.trial import TrialState

from ranksearch.study._gate import GatePruner


def _study(keep: float = 0.25) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(direction="maximize", pruner=GatePruner(keep=keep), sampler=optuna.samplers.RandomSampler(seed=0))


def _run(study: optuna.Study, screen: float, method: str = "searched", final: float | None = None) -> optuna.trial.FrozenTrial:
    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("method", method)
        for step, value in ((0, screen), (1, final if final is not None else screen)):
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return final if final is not None else screen

    study.optimize(objective, n_trials=1)
    return study.trials[-1]


def test_enqueued_allocations_are_never_pruned() -> None:
    study = _study()
    for v in (0.9, 0.8, 0.7, 0.6, 0.5):
        _run(study, v, method="searched")
    low = _run(study, 0.01, method="uniform")
    assert low.state == TrialState.COMPLETE and "gate" not in low.user_attrs


def test_only_the_top_fraction_of_screens_retrains(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ranksearch.study._gate")
    study = _study(keep=0.25)
    alone = _run(_study(keep=0.25), 0.1)  # fewer than 5 values: all go on
    assert alone.state == TrialState.COMPLETE and alone.user_attrs["gate"]["threshold"] == float("-inf")
    for v in (0.50, 0.60, 0.70, 0.80):
        _run(study, v, method="uniform")
    bad, good, best = _run(study, 0.55), _run(study, 0.79), _run(study, 0.95)
    assert bad.state == TrialState.PRUNED and bad.user_attrs["gate"]["promoted"] is False
    assert good.state == TrialState.COMPLETE  # 0.79 is 2nd of 6: in the top quarter (ties and the 'higher' quantile go on)
    # of the 2 sampled trials screened before it 1 went on: a quarter of 3 is less, but the best screen goes on
    assert best.state == TrialState.COMPLETE and best.user_attrs["gate"]["rank"] == 1
    assert {k: best.user_attrs["gate"][k] for k in ("went_on", "screened", "best")} == {"went_on": 1, "screened": 2, "best": True}
    g = bad.user_attrs["gate"]
    assert (g["step"], g["value"], g["of"], g["rank"]) == (0, 0.55, 5, 4) and g["threshold"] > 0.55
    logged = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"trial {bad.number} screened at step 0: 0.5500") and m.endswith("-> pruned") for m in logged)
    assert any(m.startswith(f"trial {best.number} screened") and m.endswith("-> goes on") for m in logged)


def test_pruned_screens_count_so_the_bar_is_a_fraction_of_all_trials() -> None:
    study = _study(keep=0.5)
    values = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    trials = [_run(study, v) for v in values]
    promoted = [t.user_attrs["gate"]["promoted"] for t in trials[4:]]
    assert promoted == [True, True, True, True, True]  # rising values: each is the best screen so far
    falling = [_run(study, v) for v in (0.35, 0.45)]
    assert [t.state for t in falling] == [TrialState.PRUNED, TrialState.PRUNED]


def test_at_most_keep_of_the_screened_trials_go_on() -> None:
    """When every sampled trial ranks high at the screen (the incumbent improved), the budget rations
    full retrains to ``keep`` of the screened trials, the unused budget carrying over."""
    study = _study(keep=0.5)
    for v in (0.1, 0.2, 0.3, 0.4, 0.5):
        _run(study, v, method="uniform")
    trials = [_run(study, v) for v in (0.9, 0.8, 0.85, 0.7, 0.75)]  # all in the top half of the study's screens
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE,
                                         TrialState.PRUNED, TrialState.COMPLETE]
    assert [t.user_attrs["gate"]["went_on"] for t in trials] == [0, 1, 1, 2, 2]
    assert trials[1].user_attrs["gate"]["value"] >= trials[1].user_attrs["gate"]["threshold"]  # ranked in, budget out


def test_after_the_screen_each_report_must_be_in_the_top_half() -> None:
    study = _study(keep=1.0)  # everyone passes the screen
    for v in (0.5, 0.6, 0.7, 0.8, 0.9):
        _run(study, v)
    late = _run(study, 0.95, final=0.55)  # great screen, epoch 1 in the bottom half of the study's epoch-1 values
    assert late.state == TrialState.PRUNED and late.user_attrs["gate"]["promoted"]
    assert late.user_attrs["gate:1"] == {"step": 1, "value": 0.55, "threshold": 0.7, "rank": 5, "of": 6, "promoted": False}
    good = _run(study, 0.95, final=0.85)
    assert good.state == TrialState.COMPLETE and good.user_attrs["gate:1"]["promoted"]


def test_the_last_report_of_a_finished_retrain_is_not_pruned() -> None:
    from ranksearch.study._objective import _report

    study = _study(keep=1.0)
    for v in (0.5, 0.6, 0.7, 0.8, 0.9):
        _run(study, v)

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("method", "searched")
        _report(trial, 0, 0.95)
        _report(trial, 1, 0.1, last=True)  # far below everyone: pruning now would only throw the retrain away
        return 0.1

    study.optimize(objective, n_trials=1)
    assert study.trials[-1].state == TrialState.COMPLETE


def test_fractions_out_of_range() -> None:
    with pytest.raises(ValueError, match="keep 0"):
        GatePruner(keep=0)
    with pytest.raises(ValueError, match="later 1.5"):
        GatePruner(later=1.5)
