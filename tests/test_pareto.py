"""A Pareto study end to end on the tiny model: one multi-objective study over several working points, its front,
any point of it exported, resumed and joined like any other study."""

from __future__ import annotations

import dataclasses
import json

import optuna
import pytest
from optuna.trial import TrialState

from ranksearch import Method, RetrainSettings, RunOptions, SearchSettings, TrialRecord, count_params, search
from ranksearch.cli import main
from ranksearch.results import collect, trial_model
from ranksearch.study import artifact_store
from ranksearch.study._storage import open_storage

RECIPE = RetrainSettings(epochs=2, batch_size=32, lr_start=0.01, lr_end=0.001)
POINTS = (0.5, 0.2)


@pytest.fixture(scope="module")
def pareto(dense_and_task, tmp_path_factory):
    model, task = dense_and_task
    out = tmp_path_factory.mktemp("pareto")
    settings = SearchSettings(0.5, pareto=POINTS, retrain=RECIPE, sampler="random")
    return search(model, settings, task=task, run=RunOptions(n_trials=18, out_dir=out)), out


def test_one_study_of_two_objectives_with_the_references_at_each_point(pareto):
    result, _ = pareto
    study = result.study
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert study.study_name.endswith("@pareto0.2-0.5")
    front = SearchSettings(0.5, pareto=POINTS).front
    enqueued = [(TrialRecord.of(t).method, TrialRecord.of(t).target) for t in study.trials if TrialRecord.of(t).method.enqueued]
    for point in POINTS:  # the seed rule and the three baselines at each point, once
        assert sorted(m for m, r in enqueued if r == point) == sorted([Method.SEED_RULE, Method.UNIFORM, Method.SENSITIVITY,
                                                                       Method.SENSITIVITY_SUM])
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        r = TrialRecord.of(t)
        assert r.target in front and t.params["ratio"] == r.target  # the sampler sees the ratio it allocated for
        assert r.target - 0.05 < r.ratio <= r.target and t.values == [pytest.approx(t.values[0]), r.ratio]
        assert t.system_attrs["constraints:ratio_over_target"] <= 0
    sampled = {TrialRecord.of(t).target for t in study.trials if TrialRecord.of(t).method is Method.SEARCHED}
    assert len(sampled) >= 3  # the sampled trials spread over the front's ratios, not only the two points


def test_the_front_is_the_non_dominated_trials_and_each_has_its_weights(pareto, dense_and_task):
    result, out = pareto
    model, task = dense_and_task
    done = [t for t in result.study.get_trials(states=(TrialState.COMPLETE,))]
    front = result.summary.front
    assert front and [f.ratio for f in front] == sorted((f.ratio for f in front), reverse=True)
    on = {f.trial for f in front}
    for t in done:
        dominated = any(o.values[0] >= t.values[0] and o.values[1] <= t.values[1] and o.values != t.values for o in done)
        assert (t.number in on) == (not dominated and t.number == min(o.number for o in done if o.values == t.values))
    store = artifact_store(out / "artifacts")
    for f in front:  # every point of the front was on the front when it finished: it uploaded its weights (or its twin did)
        small = trial_model(result.study, result.study.trials[f.trial], model, store)
        assert small is not None and count_params(small) == TrialRecord.of(result.study.trials[f.trial]).params
    for point, summary in zip(POINTS, result.summary.points):  # each point: the front's best no larger than it
        assert summary.target_ratio == point and summary.best.ratio <= point
        assert summary.best.val == max(t.values[0] for t in done if t.values[1] <= point)
        assert summary.seed_rule is not None and TrialRecord.of(result.study.trials[summary.seed_rule.trial]).target == point
    assert result.config.search["best_trial"] == front[0].trial  # the best of all: the largest ratio's point


def test_the_folder_says_the_front_and_the_report_reads_it_back(pareto):
    result, out = pareto
    text = (out / "summary.md").read_text()
    assert "Working points of the Pareto study" in text and "The front:" in text
    for f in result.summary.front:
        assert f"| {f.ratio:.4f} | {f.val:.4f} |" in text
    cfg = json.loads((out / "rank_config.json").read_text())
    assert [p["target_ratio"] for p in cfg["search"]["points"]] == list(POINTS)
    trials = json.loads((out / "trials.json").read_text())["trials"]
    assert all(t["target"] in SearchSettings(0.5, pareto=POINTS).front for t in trials)
    page = (out / "report.html").read_text()
    assert "The front" in page and "front&#x27;s best" in page and (out / "tradeoff.png").is_file()
    from ranksearch.results._files import load_runs

    assert load_runs(out)[0].summary.front == result.summary.front  # what the report draws is what the study found


def test_any_trial_of_the_front_is_exported_with_its_own_ranks(pareto, dense_and_task, tmp_path):
    result, out = pareto
    model, _ = dense_and_task
    last = result.summary.front[-1]  # the smallest point of the front
    store = open_storage(str(out / "study.journal"))
    study = optuna.load_study(study_name=result.study.study_name, storage=store)
    picked = collect(study, model, result.curves, artifacts=artifact_store(out / "artifacts"), trial=last.trial)
    assert picked.config.search["trial"] == last.trial
    assert picked.config.ranks == TrialRecord.of(study.trials[last.trial]).ranks
    assert picked.config.achieved_ratio == pytest.approx(last.ratio)
    assert picked.config.target_ratio == TrialRecord.of(study.trials[last.trial]).target == picked.summary.target_ratio


def test_a_resumed_pareto_study_keeps_its_trials_and_enqueues_nothing_again(dense_and_task, tmp_path):
    model, task = dense_and_task
    settings = SearchSettings(0.5, pareto=POINTS, retrain=RECIPE)
    first = search(model, settings, task=task, run=RunOptions(n_trials=9, out_dir=tmp_path, report=False))
    before = {t.number: t.values for t in first.study.get_trials(states=(TrialState.COMPLETE,))}
    again = search(model, settings, task=task, run=RunOptions(n_trials=13, out_dir=tmp_path, report=False, resume=True))
    after = {t.number: t.values for t in again.study.get_trials(states=(TrialState.COMPLETE,))}
    assert before.items() <= after.items()
    assert len(again.study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) >= 13
    enqueued = [TrialRecord.of(t) for t in again.study.trials if TrialRecord.of(t).method.enqueued]
    assert len(enqueued) == len({(r.method, r.target) for r in enqueued}) == 8


def test_the_cli_runs_a_pareto_study_and_exports_a_point_of_its_front(tmp_path, capsys):
    base = ["search", "--space", "tiny-digits", "--epochs", "1", "-q"]
    assert main([*base, "--ratio", "0.5,0.2", "--pareto", "--trials", "10", "--out", str(tmp_path / "p")]) == 0
    printed = capsys.readouterr().out
    assert "The front:" in printed and "--trial N" in printed
    assert not list(tmp_path.glob("p/ratio-*"))  # one study, one folder
    cfg = json.loads((tmp_path / "p" / "rank_config.json").read_text())
    trial = cfg["search"]["front"][-1]["trial"]
    assert main(["export", "--storage", str(tmp_path / "p" / "study.journal"), "--study-name", "tiny-digits@pareto0.2-0.5",
                 "--trial", str(trial), "--out", str(tmp_path / "x"), "-q"]) == 0
    assert json.loads((tmp_path / "x" / "rank_config.json").read_text())["search"]["trial"] == trial


def test_a_worker_joins_a_pareto_study_and_allocates_at_its_ratios(dense_and_task, tmp_path):
    from ranksearch import run_worker

    model, task = dense_and_task
    settings = SearchSettings(0.5, pareto=POINTS, retrain=RECIPE)
    first = search(model, settings, task=task, run=RunOptions(n_trials=9, out_dir=tmp_path, report=False))
    ran = run_worker(model, RunOptions(n_trials=12, storage=str(tmp_path / "study.journal"), study_name=first.study.study_name),
                     task=task)
    assert ran >= 3
    store = open_storage(str(tmp_path / "study.journal"))
    study = optuna.load_study(study_name=first.study.study_name, storage=store)
    assert len(study.directions) == 2
    later = [t for t in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)) if t.number >= 9]
    assert later and all(TrialRecord.of(t).target in settings.front for t in later)
    # the worker's trials report to the front's gate too (a twin of a finished trial reuses its value: no retrain)
    assert all((r := TrialRecord.of(t)).reports or r.same_as is not None for t in later)


def test_a_settings_file_with_pareto_points_is_a_pareto_study(tmp_path, capsys):
    (tmp_path / "front.yaml").write_text("pareto: [0.5, 0.2]\nsampler: nsga2\n")
    assert main(["search", "--space", "tiny-digits", "--epochs", "1", "-q", "--settings", str(tmp_path / "front.yaml"), "--trials", "9",
                 "--out", str(tmp_path / "p")]) == 0
    cfg = json.loads((tmp_path / "p" / "rank_config.json").read_text())
    assert cfg["search"]["study_name"] == "tiny-digits@pareto0.2-0.5" and cfg["search"]["settings"]["sampler"] == "nsga2"
    assert [p["target_ratio"] for p in cfg["search"]["points"]] == [0.5, 0.2]


def test_the_cli_runs_a_front_over_latency_fractions(tmp_path, monkeypatch):
    """--pareto-latency: the points are fractions of the dense model's latency; the x of the front is the predicted latency.

    The tiny model's layers take microseconds, so whether its pairs run faster depends on the host; the timing table is
    the measured one with every pair at 0.3 of its dense layer's time (and not calibrated), so the points are reachable
    on every host."""
    import ranksearch.core._timing as timing

    def faster(*a, **k):
        table = timing.measure_table(*a, **k)
        return dataclasses.replace(table, pair={n: [0.3 * table.dense[n] for _ in ts] for n, ts in table.pair.items()})

    monkeypatch.setattr("ranksearch.study._latency.measure_table", faster)
    monkeypatch.setattr("ranksearch.study._latency.calibrate", lambda table, *a, **k: table)
    assert main(["search", "--space", "tiny-digits", "--epochs", "1", "-q", "--pareto-latency", "1.0,0.95", "--latency-batch", "64",
                 "--trials", "8", "--out", str(tmp_path / "p")]) == 0
    cfg = json.loads((tmp_path / "p" / "rank_config.json").read_text())
    assert cfg["search"]["study_name"] == "tiny-digits@pareto-latency0.95-1" and cfg["search"]["axis"] == "latency"
    assert [p["target_ratio"] for p in cfg["search"]["points"]] == [1.0, 0.95]
    trials = json.loads((tmp_path / "p" / "trials.json").read_text())["trials"]
    assert all(t["latency"] <= t["target"] + 1e-9 for t in trials if t["state"] == "complete")
    assert all(f["latency"] is not None for f in cfg["search"]["front"])
    # from a settings file, its target_ratio is the parameter budget every trial keeps
    (tmp_path / "front.yaml").write_text("pareto: [1.0, 0.95]\npareto_axis: latency\ntarget_ratio: 0.9\nlatency_batch: 64\n")
    assert main(["search", "--space", "tiny-digits", "--epochs", "1", "-q", "--settings", str(tmp_path / "front.yaml"), "--trials", "5",
                 "--out", str(tmp_path / "f")]) == 0
    cfg = json.loads((tmp_path / "f" / "rank_config.json").read_text())
    assert cfg["search"]["study_name"] == "tiny-digits@pareto-latency0.95-1+0.9"
    trials = json.loads((tmp_path / "f" / "trials.json").read_text())["trials"]
    assert all(t["ratio"] <= 0.9 for t in trials if t["state"] == "complete")

