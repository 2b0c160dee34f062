"""The Optuna search on a tiny model: exact ratios, the seed rule first, determinism, resume after a kill."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from ranksearch import Components, RetrainSettings, RunOptions, SearchSettings, count_params, load_space, search, solve
from ranksearch.cli import main
from ranksearch.errors import StudyError
from ranksearch.study._storage import open_storage

RECIPE = RetrainSettings(epochs=1, batch_size=32, lr_start=0.01, lr_end=0.001)


def _s(ratio, **kw):
    return SearchSettings(target_ratio=ratio, retrain=RECIPE, **kw)


def test_search_hits_ratio_and_runs_the_seed_rule_first(dense_and_task, tmp_path):
    model, task = dense_and_task
    res = search(model, _s(0.2), task=task, run=RunOptions(n_trials=4, out_dir=tmp_path))
    trials = res.study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(trials) == 4
    first = res.study.trials[0]
    assert first.user_attrs["method"] == "seed_rule" and set(first.params.values()) == {0.0}
    assert first.user_attrs["ranks"] == solve(model, 0.2).ranks  # trial 0 is exactly the CE1 rule
    for t in trials:
        assert 0.2 - 0.02 < t.user_attrs["ratio"] <= 0.2
        assert t.system_attrs["constraints:ratio_over_target"] <= 0
    assert res.config.achieved_ratio <= 0.2
    assert res.config.compressed_params == count_params(res.model)
    assert res.summary.best.trial == res.config.search["best_trial"]
    assert res.summary.best.val == res.study.best_value
    assert res.config.search["settings"]["factors"] == "data_aware"  # a task gives calibration inputs: data-aware by default
    factors = {t.user_attrs["method"]: t.user_attrs["factors"] for t in trials}
    assert factors["seed_rule"] == "plain" and factors.get("uniform") == "data_aware"
    uploaded = [t for t in trials if "weights" in t.user_attrs]  # each trial that matched or beat the best so far
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert uploaded == [t for i, t in enumerate(complete) if "same_as" not in t.user_attrs
                        and all(t.value >= u.value for u in complete[:i])]
    best = res.study.trials[res.config.search["best_trial"]]
    assert uploaded[0].number == 0 and best in uploaded + [
        t for t in trials if t.user_attrs.get("same_as") in {u.number for u in uploaded}]
    assert len(list((tmp_path / "artifacts").iterdir())) == len(uploaded)


def test_sequential_search_is_deterministic(dense_and_task):
    model, task = dense_and_task
    runs = [search(model, _s(0.3, seed=7), task=task, run=RunOptions(n_trials=3)) for _ in range(2)]
    a, b = ([(t.params, t.value, t.user_attrs["ranks"]) for t in r.study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))]
            for r in runs)
    assert len(a) == 3
    assert a == b


def test_user_callables_get_reports_and_pruning(dense_and_task, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="ranksearch")
    model, task = dense_and_task
    from ranksearch.core._retrain import evaluate as metric

    calls: list[int] = []

    def evaluate(m: torch.nn.Module) -> float:
        return metric(m, task.val, "accuracy")

    def retrain(m: torch.nn.Module, report) -> None:
        late = len(calls) >= 9  # after three full retrains every report is far below the median: pruned at step 0
        for step in range(3):
            calls.append(step)
            report(step, evaluate(m) - (1.0 if late else 0.0))

    res = search(model, SearchSettings(0.3, seed=1, factors="plain", baselines=False), evaluate=evaluate, retrain=retrain, run=RunOptions(n_trials=12))
    assert len(calls) >= 10 and res.config.achieved_ratio <= 0.3
    assert res.summary.metric == "evaluate"
    pruned = res.study.get_trials(states=(TrialState.PRUNED,))
    assert pruned and all(len(t.intermediate_values) < 3 for t in pruned)  # stopped before its last report
    logged = [r.getMessage() for r in caplog.records]
    assert all(any(m.startswith(f"trial {t.number} [searched] pruned") for m in logged) for t in pruned)


def test_retrain_that_returns_its_score_is_not_evaluated_again(dense_and_task):
    model, task = dense_and_task
    from ranksearch.core._retrain import evaluate as metric

    evaluated: list[int] = []

    def evaluate(m: torch.nn.Module) -> float:
        evaluated.append(1)
        return metric(m, task.val, "accuracy")

    def retrain(m: torch.nn.Module) -> float:
        return 0.25  # "the validation metric after retraining"

    res = search(model, SearchSettings(0.3, baselines=False), evaluate=evaluate, retrain=retrain, run=RunOptions(n_trials=3))
    done = res.study.get_trials(states=(TrialState.COMPLETE,))
    assert [t.value for t in done] == [0.25] * len(done)
    retrained = [t for t in done if "same_as" not in t.user_attrs]  # a twin reuses its value: no evaluation at all
    assert retrained and len(evaluated) == 1 + len(retrained)  # the dense model, then each trial before its retrain only


def test_task_trial_value_is_the_validation_metric_of_the_returned_model(dense_and_task):
    model, task = dense_and_task
    from ranksearch.core._retrain import evaluate as metric

    two_epochs = RetrainSettings(epochs=2, batch_size=32, lr_start=0.01, lr_end=0.001)  # the last epoch's score counts
    res = search(model, SearchSettings(0.3, retrain=two_epochs, baselines=False), task=task, run=RunOptions(n_trials=2))
    assert res.study.best_value == pytest.approx(metric(res.model, task.val, "accuracy"))


def test_existing_study_needs_resume(dense_and_task, tmp_path):
    model, task = dense_and_task
    search(model, _s(0.3), task=task, run=RunOptions(n_trials=1, out_dir=tmp_path))
    with pytest.raises(ValueError, match="--resume"):
        search(model, _s(0.3), task=task, run=RunOptions(n_trials=2, out_dir=tmp_path))
    with pytest.raises(ValueError, match="spread=3.0.*spread=1.0"):  # a resume must not mix other settings in
        search(model, _s(0.3, spread=1.0), task=task, run=RunOptions(n_trials=2, out_dir=tmp_path, resume=True))
    res = search(model, _s(0.3), task=task, run=RunOptions(n_trials=2, out_dir=tmp_path, resume=True))
    assert len(res.study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 2


def test_bad_search_arguments(dense_and_task):
    model, task = dense_and_task
    with pytest.raises(ValueError, match="unreachable"):
        search(model, 0.001, task=task, run=RunOptions(n_trials=1))
    with pytest.raises(ValueError, match="target_ratio"):
        search(model, 1.0, task=task, run=RunOptions(n_trials=1))
    with pytest.raises(ValueError, match="either task"):
        search(model, 0.3, run=RunOptions(n_trials=1))
    with pytest.raises(ValueError, match="n_trials"):
        search(model, 0.3, task=task, run=RunOptions(n_trials=0))


def _finished(journal: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    if not journal.exists():
        return []
    study = optuna.load_study(study_name=name, storage=open_storage(str(journal), None))
    return study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))


KILLED_ARGS = ["search", "--space", "tiny-digits", "--ratio", "0.2", "--trials", "7", "--epochs", "6", "--pruner", "none", "-q"]


def _kill_inside_a_trial(out: Path) -> int:
    """Start the search of :data:`KILLED_ARGS` and SIGKILL it inside a retrain once two trials completed;
    returns the killed trial's number."""
    proc = subprocess.Popen([sys.executable, "-m", "ranksearch.cli", *KILLED_ARGS, "--out", str(out)], env=os.environ.copy())
    journal, name = out / "study.journal", "tiny-digits@0.2"
    deadline, killed = time.time() + 240, None
    try:
        while killed is None:
            assert proc.poll() is None, "the search ended before it could be killed"
            assert time.time() < deadline, "no trial finished in time"
            trials = _all(journal, name)
            running = [t for t in trials if t.state == TrialState.RUNNING and "before_retrain" in t.user_attrs
                       and "same_as" not in t.user_attrs]  # inside a retrain (a twin would end at once)
            if len([t for t in trials if t.state == TrialState.COMPLETE]) >= 2 and running:
                proc.send_signal(signal.SIGKILL)
                killed = running[0].number
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
    return killed


def _runs(study: optuna.Study) -> list[tuple[str, str]]:
    done = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    return sorted((t.user_attrs["method"], json.dumps(t.user_attrs["ranks"], sort_keys=True)) for t in done)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> list[tuple[str, str]]:
    """The trials of :data:`KILLED_ARGS` run without interruption."""
    out = tmp_path_factory.mktemp("whole")
    assert main([*KILLED_ARGS, "--out", str(out)]) == 0
    return _runs(optuna.load_study(study_name="tiny-digits@0.2", storage=open_storage(str(out / "study.journal"), None)))


@pytest.mark.slow
def test_killed_search_resumes_without_losing_trials(tmp_path, uninterrupted):
    """SIGKILL inside a trial, then --resume: the finished trials stay as they were, and the study ends
    with the trials of an uninterrupted run (same methods, same ranks, same count)."""
    out, name = tmp_path / "run", "tiny-digits@0.2"
    journal = out / "study.journal"
    killed = _kill_inside_a_trial(out)
    before = {t.number: (t.value, t.params, t.state) for t in _finished(journal, name)}
    assert not (out / "rank_config.json").exists()

    assert main([*KILLED_ARGS, "--out", str(out), "--resume"]) == 0
    study = optuna.load_study(study_name=name, storage=open_storage(str(journal), None))
    after = {t.number: (t.value, t.params, t.state) for t in study.trials}
    assert all(after[n] == v for n, v in before.items())
    assert study.trials[killed].state == TrialState.FAIL and not study.get_trials(states=(TrialState.RUNNING,))
    assert (out / "rank_config.json").exists()
    assert _runs(study) == uninterrupted and len(uninterrupted) == 7


@pytest.mark.slow
def test_a_journal_whose_last_record_is_cut_short_resumes_to_the_same_trials(tmp_path, uninterrupted, caplog):
    """A crash mid-write leaves the journal's last line half-written: --resume keeps the file as it was
    beside it, cuts the torn record off, says so in one line, and ends with an uninterrupted run's trials."""
    out, name = tmp_path / "run", "tiny-digits@0.2"
    journal = out / "study.journal"
    _kill_inside_a_trial(out)
    data = journal.read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    journal.write_bytes(data[: last + (len(data) - last) // 2])  # the last record, half written, no newline
    torn = journal.read_bytes()
    caplog.set_level(logging.WARNING, logger="ranksearch")
    assert main([*KILLED_ARGS, "--out", str(out), "--resume"]) == 0
    kept = list(out.glob("study.journal.torn-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == torn  # nothing of the file is lost
    said = [r.getMessage() for r in caplog.records if "cut short" in r.getMessage()]
    assert len(said) == 1 and str(kept[0]) in said[0]
    study = optuna.load_study(study_name=name, storage=open_storage(str(journal), None))
    assert _runs(study) == uninterrupted and not study.get_trials(states=(TrialState.RUNNING,))


def _all(journal: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    if not journal.exists():
        return []
    try:
        return optuna.load_study(study_name=name, storage=open_storage(str(journal), None)).trials
    except KeyError:
        return []


@pytest.mark.parametrize("sampler, pruner", [("gp", "hyperband"), ("random", "none"), ("cmaes", "median")])
def test_other_samplers_and_pruners(dense_and_task, sampler, pruner):
    model, task = dense_and_task
    res = search(model, _s(0.3, sampler=sampler, pruner=pruner, baselines=False), task=task, run=RunOptions(n_trials=4))
    assert res.config.search["settings"]["sampler"] == sampler and res.config.search["settings"]["pruner"] == pruner
    assert res.config.achieved_ratio <= 0.3
    with pytest.raises(ValueError, match="sampler"):
        search(model, _s(0.3, sampler="cmaes-ish"), task=task, run=RunOptions(n_trials=1))


def test_optuna_objects_as_sampler_and_pruner(dense_and_task):
    model, task = dense_and_task
    sampler = optuna.samplers.RandomSampler(seed=5)
    res = search(model, _s(0.3, baselines=False), task=task, run=RunOptions(n_trials=3), given=Components(sampler=sampler, pruner=optuna.pruners.NopPruner()))
    assert res.study.sampler is sampler
    assert res.config.search["settings"]["sampler"] == "custom:RandomSampler"
    assert res.config.search["settings"]["pruner"] == "custom:NopPruner"


def test_group_granularity_and_exact_baseline_trials(dense_and_task):
    """One searched weight per group; the enqueued baselines allocate exactly as their methods do."""
    from ranksearch.core._solver import solve_ratio
    from ranksearch.core._spectra import spectra
    from ranksearch.study._baselines import greedy_ranks, log_weights_for, uniform_ranks

    model, task = dense_and_task
    res = search(model, _s(0.2, granularity="group", factors="plain", prior="sensitivity"), task=task, run=RunOptions(n_trials=5))
    first = res.study.trials[0]
    assert sorted(first.params) == ["log2r:Conv2d", "log2r:Linear"]
    assert res.config.search["settings"]["granularity"] == "group" and res.config.search["settings"]["prior"] == "sensitivity"
    curves = spectra(model)
    budget = int(0.2 * count_params(model)) - (count_params(model) - sum(c.dense_params for c in curves.values()))
    by_method = {t.user_attrs["method"]: t.user_attrs["ranks"] for t in res.study.trials}
    uniform, greedy = uniform_ranks(curves, budget), greedy_ranks(curves, res.sensitivity, budget)
    for method, ranks in (("uniform", uniform), ("sensitivity", greedy)):
        w = {n: 10.0 ** v for n, v in log_weights_for(curves, ranks).items()}
        expected = solve_ratio(curves, 0.2, count_params(model), w).ranks
        assert by_method[method] == {n: r for n, r in expected.items() if r is not None}
        # the solver spends what the baseline leaves unused, so ranks only grow (missing: dense)
        assert all(by_method[method].get(n, math.inf) >= r for n, r in ranks.items())
    with pytest.raises(ValueError, match="granularity"):
        search(model, _s(0.2, granularity="block"), task=task, run=RunOptions(n_trials=1))


def test_resumed_study_runs_its_queued_baselines_exactly(dense_and_task, tmp_path):
    """A study stopped before its sensitivity trials ran (no table measured on resume) still runs them
    with their exact allocations, which ride in the queued trials."""
    model, task = dense_and_task
    s = _s(0.2, factors="plain", pruner="none", spread=0.2)  # params clip
    fresh = search(model, s, task=task, run=RunOptions(n_trials=4))
    search(model, s, task=task, run=RunOptions(n_trials=1, out_dir=tmp_path))
    resumed = search(model, s, task=task, run=RunOptions(n_trials=4, out_dir=tmp_path, resume=True))
    assert resumed.sensitivity == fresh.sensitivity  # read back from the study, not measured again

    def by_method(res):
        return {t.user_attrs["method"]: t.user_attrs["ranks"] for t in res.study.trials}

    assert by_method(resumed) == by_method(fresh)
    assert set(by_method(fresh)) == {"seed_rule", "uniform", "sensitivity", "sensitivity_sum"}


def test_warm_start_allocates_exactly_and_trials_record_log_weights(dense_and_task):
    from ranksearch.core._solver import solve_ratio
    from ranksearch.core._spectra import spectra

    model, task = dense_and_task
    curves = spectra(model)
    names = list(curves)
    warm = {n: (-2.5 if i == 2 else 0.0) for i, n in enumerate(names)}  # outside the searched range of +-1
    res = search(model, _s(0.3, factors="plain", baselines=False, spread=1.0, proposals="weights"), task=task, run=RunOptions(n_trials=3), given=Components(warm_start=[warm]))
    trial = next(t for t in res.study.trials if t.user_attrs["method"] == "warm_start")

    def ranks(logw):
        sol = solve_ratio(curves, 0.3, count_params(model), {n: 10.0 ** v for n, v in logw.items()})
        return {n: r for n, r in sol.ranks.items() if r is not None}

    assert trial.user_attrs["ranks"] == ranks(warm)
    assert ranks(warm) != ranks({n: t for n, t in zip(names, trial.params.values())})  # not its clipped params
    assert trial.user_attrs["log10w"] == warm
    searched = [t for t in res.study.trials if t.user_attrs["method"] == "searched"]
    assert searched and all(t.user_attrs["log10w"] == {n: t.params[f"log10w:{n}"] for n in names} for t in searched)


def test_warm_start_for_another_model_is_refused_before_any_study(dense_and_task, tmp_path):
    model, task = dense_and_task
    with pytest.raises(ValueError, match="warm_start names layers"):
        search(model, _s(0.3), task=task, run=RunOptions(n_trials=1, out_dir=tmp_path), given=Components(warm_start=[{"features.99": 1.0}]))
    assert not (tmp_path / "study.journal").exists()


def test_progress_bar_and_one_log_line_per_trial(dense_and_task, capsys, caplog):
    """progress=True shows a trial counter; every trial, complete or pruned, is logged once with its method
    (and the gate's screening decision, if any, once by the gate)."""
    import logging

    model, task = dense_and_task
    caplog.set_level(logging.INFO, logger="ranksearch")
    res = search(model, _s(0.3, baselines=False), task=task, run=RunOptions(n_trials=4, progress=True))
    err = capsys.readouterr().err
    assert "trials: 100%" in err and "4/4" in err
    for t in res.study.trials:
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"trial {t.number}") and r.name == "ranksearch.study._objective"]
        assert len(lines) == 1 and f"[{t.user_attrs['method']}]" in lines[0], lines
        gate = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"trial {t.number} ") and r.name == "ranksearch.study._gate"]
        assert len(gate) == ("gate" in t.user_attrs), gate


def test_the_fixed_cost_is_stored_once_and_shown(dense_and_task, tmp_path):
    model, task = dense_and_task
    res = search(model, _s(0.2), task=task, run=RunOptions(n_trials=5, out_dir=tmp_path))
    cost = res.study.user_attrs["ranksearch:fixed_cost"]
    rows = sum(len(r) for r in res.sensitivity.values())
    assert cost["sensitivity_evaluations"] == rows > 0 and cost["dense_evaluations"] == 2  # val and test
    assert cost["evaluations"] == rows + 2
    parts = [cost[k] for k in ("spectra_s", "factors_s", "dense_s", "sensitivity_s")]
    assert all(v >= 0 for v in parts) and cost["total_s"] == pytest.approx(sum(parts), abs=0.01)
    from ranksearch.results import summary_table

    assert f"Fixed cost before the first trial (stored once in the study): {cost['total_s']:.1f} s and {rows + 2} evaluations" \
        in summary_table(res.summary).markdown()
    again = search(model, _s(0.2), task=task, run=RunOptions(n_trials=6, out_dir=tmp_path, resume=True))  # resuming measures nothing again
    assert again.study.user_attrs["ranksearch:fixed_cost"] == cost


def test_output_probes_on_a_subset_cost_their_share_of_the_split(dense_and_task, tmp_path):
    """``sensitivity='output'`` scores each probe by how close the outputs stay to the dense model's, on
    ``sensitivity_samples`` validation inputs; the fixed cost counts them as that share of a pass."""
    from ranksearch.results import summary_table

    model, task = dense_and_task
    n_val, k = len(task.val), len(task.val) // 4
    res = search(model, _s(0.2, sensitivity="output", sensitivity_samples=k), task=task, run=RunOptions(n_trials=4, out_dir=tmp_path))
    cost = res.study.user_attrs["ranksearch:fixed_cost"]
    rows = sum(len(r) for r in res.sensitivity.values())
    assert cost["sensitivity_kind"] == "output" and cost["sensitivity_evaluations"] == rows + 1  # + the dense outputs
    assert (cost["sensitivity_samples"], cost["val_samples"]) == (k, n_val)
    assert cost["split_evaluations"] == pytest.approx(2 + (rows + 1) * k / n_val, abs=0.05)
    for name, probes in res.sensitivity.items():  # fidelities: below 1, and the largest probe rank keeps the most
        assert all(v < 1.0 for _, v in probes) and probes[-1][1] >= probes[0][1], (name, probes)
    assert [t.user_attrs["method"] for t in res.study.trials[:4]] == ["seed_rule", "uniform", "sensitivity", "sensitivity_sum"]
    assert f"sensitivity table output on {k:,} of {n_val:,} samples" in summary_table(res.summary).markdown()


def test_the_metric_on_a_subset_is_measured_on_those_samples(dense_and_task):
    model, task = dense_and_task
    res = search(model, _s(0.2, sensitivity="measured", sensitivity_samples=37), task=task, run=RunOptions(n_trials=1))
    values = [v for rows in res.sensitivity.values() for _, v in rows]
    assert all(abs(v * 37 - round(v * 37)) < 1e-9 for v in values)  # accuracies on 37 digits
    assert not all(abs(v * len(task.val) - round(v * len(task.val))) < 1e-9 for v in values)
    assert res.study.user_attrs["ranksearch:fixed_cost"]["split_evaluations"] == pytest.approx(2 + len(values) * 37 / len(task.val), abs=0.05)


def test_probes_that_need_data_say_what_to_give(dense_and_task):
    model, _ = dense_and_task

    def evaluate(m):
        return 0.5

    with pytest.raises(StudyError, match="sensitivity_samples 10 needs task="):
        search(model, SearchSettings(0.3, sensitivity_samples=10), evaluate=evaluate, run=RunOptions(n_trials=1))
    with pytest.raises(StudyError, match="sensitivity 'output' runs the model on inputs: give task="):
        search(model, SearchSettings(0.3, sensitivity="output"), evaluate=evaluate, run=RunOptions(n_trials=1))


@pytest.mark.slow
def test_a_transformer_of_38_layers_costs_at_most_30_evaluations_before_its_trials(tmp_path):
    """vit-mnist's architecture (6 blocks: 36 Linear layers in them) needs about 200 evaluations for a
    measured table. Given inputs, ``auto`` (the default) scores the probes on a subset of them that fits
    the budget, 30 passes' worth in all; with nothing but the user's evaluate it measures the table (and
    says how to bound it); the proxy costs 25 evaluations whatever the model."""
    from ranksearch.core._spectra import spectra
    from ranksearch.study._baselines import table_size

    model = load_space("vit-mnist").build_architecture().eval()
    x = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
    calls = []

    def agreement(m: torch.nn.Module) -> float:
        calls.append(1)
        with torch.no_grad():
            return float((m.eval()(x).argmax(1) == ref.argmax(1)).float().mean())

    assert table_size(spectra(model)) > 150
    res = search(model, SearchSettings(0.25, sensitivity="proxy"), evaluate=agreement, run=RunOptions(n_trials=5, out_dir=tmp_path))
    cost = res.study.user_attrs["ranksearch:fixed_cost"]
    assert cost["sensitivity_kind"] == "proxy" and cost["evaluations"] <= 30
    assert cost["evaluations"] == cost["dense_evaluations"] + cost["sensitivity_evaluations"] == 1 + 24
    assert set(res.sensitivity) == set(spectra(model))  # every layer has its row
    methods = [t.user_attrs["method"] for t in res.study.trials]
    assert {"uniform", "sensitivity", "sensitivity_sum"} <= set(methods)
    for settings in (SearchSettings(0.25), SearchSettings(0.25, sensitivity="measured", sensitivity_budget=0)):
        measured = search(model, settings, evaluate=agreement, run=RunOptions(n_trials=1))  # auto without inputs, and measured whatever the budget
        assert measured.study.user_attrs["ranksearch:fixed_cost"]["sensitivity_kind"] == "measured"
    inputs = torch.randn(256, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    calls.clear()
    given = search(model, SearchSettings(0.25, sensitivity="auto", sensitivity_budget=24), evaluate=agreement, calibration=[inputs[:128], inputs[128:]], run=RunOptions(n_trials=1))  # inputs to run output probes on: auto scores them on a subset
    cost = given.study.user_attrs["ranksearch:fixed_cost"]
    assert cost["sensitivity_kind"] == "output" and len(calls) == 1 + 2  # the dense model and the trial (before and after): no probe
    assert cost["sensitivity_samples"] == 30 and cost["val_samples"] == 256  # 24 passes' worth of 199 probes: floor(24 * 256 / 199)
    assert cost["split_evaluations"] <= 30 and cost["evaluations"] == 1 + 199 + 1
    assert set(given.sensitivity) == set(res.sensitivity)


def test_search_leaves_no_idle_database_connections_and_trial_model_gives_the_trials_weights(dense_and_task, tmp_path):
    from ranksearch.core._retrain import evaluate, sample_scores
    from ranksearch.results import trial_model

    model, task = dense_and_task
    res = search(model, _s(0.3), task=task, run=RunOptions(n_trials=2, storage=f"sqlite:///{tmp_path / 's.db'}", artifacts=tmp_path / "a"))
    rdb = getattr(res.study._storage, "_backend", res.study._storage)
    assert isinstance(rdb, optuna.storages.RDBStorage) and rdb.engine.pool.checkedin() == 0  # released at the end
    best = res.study.best_trial
    again = trial_model(res.study, best, model, optuna.artifacts.FileSystemArtifactStore(str(tmp_path / "a")))
    scores = sample_scores(again, task.test, "accuracy")
    assert scores.shape == (len(task.test),) and set(scores.tolist()) <= {0.0, 1.0}
    assert float(scores.mean()) == pytest.approx(best.user_attrs["test"]) == pytest.approx(evaluate(again, task.test, "accuracy"))
    assert res.study.trials[1].value is not None  # the released storage reconnects when read again


def test_a_search_or_worker_that_fails_still_closes_its_database_connections(dense_and_task, tmp_path):
    from ranksearch import run_worker

    model, task = dense_and_task
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    search(model, _s(0.3), task=task, run=RunOptions(n_trials=1, storage=storage, study_name="s"))
    storage.get_all_studies()  # a connection back in the pool
    assert storage.engine.pool.checkedin() >= 1
    with pytest.raises(StudyError, match="already exists"):  # fails after opening the storage, before any trial
        search(model, _s(0.3), task=task, run=RunOptions(n_trials=1, storage=storage, study_name="s"))
    assert storage.engine.pool.checkedin() == 0
    storage.get_all_studies()
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))  # not the study's dense model
    with pytest.raises(StudyError):
        run_worker(other, RunOptions(storage=storage, study_name="s", n_trials=2), task=task)
    assert storage.engine.pool.checkedin() == 0
