"""Every registered sampler and pruner: its name is the vocabulary's, it builds, and it runs a study.
A new entry is tested by being registered."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from ranksearch.errors import StudyError
from ranksearch.study import PRUNERS, SAMPLERS, GatePruner, Pruner, Sampler
from ranksearch.study._pruners import make_pruner
from ranksearch.study._samplers import TrialSeeded, make_sampler


def test_the_registries_hold_exactly_the_vocabulary():
    assert list(SAMPLERS) == list(Sampler) and list(PRUNERS) == list(Pruner)


def _steps(trial: optuna.Trial) -> float:
    x = trial.suggest_float("log2r:a", -1, 1)
    y = trial.suggest_float("log2r:b", -1, 1)
    return -(x - 0.3) ** 2 - (y + 0.2) ** 2


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_runs_a_study_and_reseeds_per_trial(name):
    sampler = make_sampler(name, seed=3, step=0.2)
    assert isinstance(sampler, TrialSeeded)

    def run(parts: tuple[int, ...]) -> list[dict[str, float]]:
        study = optuna.create_study(direction="maximize", sampler=make_sampler(name, seed=3, step=0.2))
        study.enqueue_trial({"log2r:a": 0.0, "log2r:b": 0.0})  # an enqueued allocation: not counted by the seeding
        for n in parts:  # each part a fresh sampler object, as a resumed search or another worker process has
            study.sampler = make_sampler(name, seed=3, step=0.2)
            study.optimize(_steps, n_trials=n)
        return [t.params for t in study.trials]

    whole, resumed = run((7,)), run((3, 2, 2))
    assert len(whole) == 7 and all(-1 <= v <= 1 for p in whole for v in p.values())
    assert resumed == whole  # the k-th sampled trial draws from a seed of the study's seed and k, not the object's past
    assert len({tuple(p.values()) for p in whole}) > 1


def test_custom_samplers_and_pruners_are_named_and_refused_by_name():
    with pytest.raises(StudyError, match="custom sampler 'custom:QMCSampler'"):
        make_sampler("custom:QMCSampler", 0, 0.2)
    with pytest.raises(StudyError, match="custom pruner 'custom:Odd'"):
        make_pruner("custom:Odd", 0.2)


def _reporting(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", 0, 1)
    trial.set_user_attr("method", "searched")  # the gate screens sampled trials only
    for step in range(3):
        trial.report(x * (step + 1), step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return x


@pytest.mark.parametrize("name", list(PRUNERS))
def test_every_pruner_runs_a_study(name):
    pruner = make_pruner(name, keep=0.2)
    assert isinstance(pruner, optuna.pruners.BasePruner)
    if name is Pruner.GATE:
        assert isinstance(pruner, GatePruner) and pruner.keep == 0.2
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0), pruner=pruner)
    study.optimize(_reporting, n_trials=12)
    states = {t.state for t in study.trials}
    assert TrialState.COMPLETE in states and states <= {TrialState.COMPLETE, TrialState.PRUNED}
    if name in (Pruner.GATE, Pruner.MEDIAN):  # both stop a trial that screens low among enough others
        assert TrialState.PRUNED in states
