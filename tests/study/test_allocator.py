"""Incumbent proposals: sampled trials step each layer's rank from the best trial so far, onto the budget."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState

from ranksearch import RetrainSettings, RunOptions, SearchSettings, count_params, search
from ranksearch.core._solver import log2_ranks, project_ranks
from ranksearch.core._spectra import spectra
from ranksearch.study._allocator import REDRAWS, STEP_PREFIX, anchor_trial
from ranksearch.study._samplers import LocalSampler

RECIPE = RetrainSettings(epochs=1, batch_size=32, lr_start=0.01, lr_end=0.001)


def _best_before(trials: list[optuna.trial.FrozenTrial], number: int, enqueued_only: bool) -> int:
    done = [t for t in trials if t.number < number and t.state == TrialState.COMPLETE
            and not (enqueued_only and t.user_attrs["method"] == "searched")]
    return max(done, key=lambda t: (t.value, -t.number)).number


@pytest.mark.parametrize("sampler", ["local", "cmaes"])
def test_sampled_trials_step_from_the_incumbent_onto_the_budget(dense_and_task, sampler):
    model, task = dense_and_task
    res = search(model, SearchSettings(0.3, retrain=RECIPE, sampler=sampler, screen=0.5, seed=2), task=task, run=RunOptions(n_trials=14))
    trials = res.study.trials
    curves = spectra(model)
    total = count_params(model)
    sampled = [t for t in trials if t.user_attrs.get("method") == "searched"]
    assert len(sampled) >= 8
    for t in sampled:
        # local: the best trial so far; CMA-ES (its own mean moves): the best enqueued allocation
        assert t.user_attrs["anchor"] == _best_before(trials, t.number, enqueued_only=sampler == "cmaes")
        base = log2_ranks(curves, trials[t.user_attrs["anchor"]].user_attrs["ranks"])
        steps = {n: t.user_attrs["log2r"][n] - base[n] for n in curves}
        if t.user_attrs["redraws"] == 0:  # the sampler's step itself
            assert all(math.isclose(steps[n], t.params[STEP_PREFIX + n], abs_tol=1e-9) for n in curves)
        sol = project_ranks(curves, t.user_attrs["log2r"], 0.3, total)
        assert {n: r for n, r in sol.ranks.items() if r is not None} == t.user_attrs["ranks"]
        assert t.user_attrs["ratio"] <= 0.3
        # a step that gives ranks some trial already had is drawn again; only the last draw may repeat one
        earlier = [u.user_attrs["ranks"] for u in trials if u.number < t.number]
        assert t.user_attrs["ranks"] not in earlier or t.user_attrs["redraws"] == REDRAWS
    assert any(t.user_attrs["redraws"] == 0 for t in sampled)


def test_gate_screens_sampled_trials_and_keeps_the_references(dense_and_task):
    model, task = dense_and_task
    settings = SearchSettings(0.3, retrain=RetrainSettings(epochs=2, batch_size=32), keep=0.25, screen_samples=100, seed=1)
    res = search(model, settings, task=task, run=RunOptions(n_trials=16))
    trials = res.study.trials
    enqueued = [t for t in trials if t.user_attrs["method"] != "searched"]
    assert len(enqueued) == 4 and all(t.state == TrialState.COMPLETE for t in enqueued)
    # the screen and epoch 1 are scored on 100 of the 400 validation digits, the last epoch on all of them;
    # a sampled trial's metric before retrain on the 100, an enqueued one's on all
    for t in trials:
        for step, v in t.intermediate_values.items():
            assert math.isclose(v * (100 if step < 2 else 400), round(v * (100 if step < 2 else 400)), abs_tol=1e-6)
    assert all(t.user_attrs["before_retrain_samples"] == 100 for t in trials if t.user_attrs["method"] == "searched")
    assert not any("before_retrain_samples" in t.user_attrs for t in enqueued)
    done = [t for t in trials if t.state == TrialState.COMPLETE and "same_as" not in t.user_attrs]
    assert any(not math.isclose(t.value * 100, round(t.value * 100), abs_tol=1e-6) for t in done)
    gated = [t for t in trials if "gate" in t.user_attrs and "same_as" not in t.user_attrs]
    assert gated and all(0 in t.intermediate_values for t in gated)  # screened after part of the first epoch
    pruned = [t for t in gated if t.state == TrialState.PRUNED]
    assert pruned and all(not t.user_attrs["gate"]["promoted"] for t in pruned if list(t.intermediate_values) == [0])
    assert any(list(t.intermediate_values) == [0] for t in pruned)  # stopped at the screen, before epoch 1 ended
    assert res.summary.trials.pruned == len(res.study.get_trials(states=(TrialState.PRUNED,)))


def test_weights_proposals_are_still_there(dense_and_task):
    model, task = dense_and_task
    res = search(model, SearchSettings(0.15, retrain=RECIPE, proposals="weights", sampler="tpe", pruner="median", screen=0.0), task=task, run=RunOptions(n_trials=6))
    sampled = [t for t in res.study.trials if t.user_attrs.get("method") == "searched"]
    assert sampled and all("log10w" in t.user_attrs and "anchor" not in t.user_attrs for t in sampled)
    assert all(p.startswith("log10w:") for p in sampled[0].params)


def test_anchor_before_any_trial_completes_is_none():
    study = optuna.create_study(direction="maximize")
    assert anchor_trial(study) is None


def test_local_sampler_is_seeded_and_clipped():
    def draws(seed: int) -> list[float]:
        study = optuna.create_study(sampler=LocalSampler(0.8, seed=seed), direction="maximize")
        study.optimize(lambda t: t.suggest_float("u", -1, 1), n_trials=30)
        return [t.params["u"] for t in study.trials]

    a, b = draws(0), draws(0)
    assert a == b and a != draws(1)
    assert all(-1 <= v <= 1 for v in a) and any(abs(v) == 1 for v in a)  # sigma 0.8: some clipped at the bounds
    assert abs(sum(a) / len(a)) < 0.4
