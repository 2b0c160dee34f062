"""A Pareto study on the bytes axis end to end on the tiny model: one study of the metric against the NNR stream's bytes,
its budgets fractions of the dense model's stream; each trial draws a budget and then a ratio of that budget's, is coded
within it and scored on the decoded model; the references at each given point; the front, any point of it exported with
its stream, resumed and joined like any other study; one-line errors."""

from __future__ import annotations

import json
import math

import optuna
import pytest
from optuna.trial import TrialState

from ranksearch import Method, RetrainSettings, RunOptions, SearchSettings, TrialRecord, search
from ranksearch.cli import main
from ranksearch.core._nnr import decode, encode
from ranksearch.errors import ConfigError
from ranksearch.study import Coding
from ranksearch.study._storage import read_study

pytest.importorskip("nncodec.nnc_core")

RECIPE = RetrainSettings(epochs=2, batch_size=32, lr_start=0.01, lr_end=0.001)
SHARES = (0.1, 0.05)


@pytest.fixture(scope="module")
def front(dense_and_task, tmp_path_factory):
    model, task = dense_and_task
    out = tmp_path_factory.mktemp("byte-front")
    settings = SearchSettings(1.0, pareto=SHARES, pareto_axis="bytes", retrain=RECIPE, sampler="random")
    return search(model, settings, task=task, run=RunOptions(n_trials=26, out_dir=out)), out


def test_one_study_measures_a_byte_point_per_budget_and_enqueues_the_references_at_each_given_one(front, dense_and_task):
    result, _ = front
    model, _ = dense_and_task
    study = result.study
    assert study.study_name.endswith("@pareto-bytes0.05-0.1")
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    record = read_study(study)
    assert record.byte_point is None and record.byte_front is not None
    dense_bytes = len(encode(model.eval()))
    shares = SearchSettings(1.0, pareto=SHARES, pareto_axis="bytes").front
    assert [p.share for p in record.byte_front] == list(shares) and len(shares) > 2  # geometric steps between the two
    for p in record.byte_front:
        assert p.dense_bytes == dense_bytes and p.budget == math.floor(p.share * dense_bytes)
        assert p.ratios[-1] == p.base_ratio and all(a / b <= 1.25 + 1e-3 for a, b in zip(p.ratios, p.ratios[1:]))
    bases = [p.base_ratio for p in record.byte_front]
    assert bases == sorted(bases, reverse=True) and bases[0] > bases[-1]  # a smaller budget meets the rule at a smaller ratio
    enqueued = [TrialRecord.of(t) for t in study.trials if TrialRecord.of(t).method.enqueued]
    for share in SHARES:  # at each given point: the dense model and the references at its base ratio at one qp, then per weight
        point = record.point_of(share)
        assert point is not None
        here = [r for r in enqueued if r.target == share]
        at_base = sorted(r.method for r in here if r.ratio_target == point.base_ratio)
        assert at_base == sorted([Method.SEED_RULE, Method.UNIFORM, Method.SENSITIVITY, Method.SENSITIVITY_SUM])
        assert all(r.coding is Coding.UNIFORM for r in here if r.ratio_target == point.base_ratio)
        larger = [r for r in here if r.ratio_target != point.base_ratio and r.method is not Method.DENSE]
        assert larger and all(r.method is Method.SEED_RULE and r.coding is Coding.FITTED and r.ratio_target in point.ratios
                              for r in larger)
        assert sorted(r.coding for r in here if r.method is Method.DENSE) == [Coding.FITTED, Coding.UNIFORM]
    assert not {r.target for r in enqueued} - set(SHARES)


def test_every_trial_codes_within_its_budget_and_its_cost_is_its_stream(front):
    result, _ = front
    study = result.study
    record = read_study(study)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) >= 18
    for t in done:
        r = TrialRecord.of(t)
        point = record.point_of(r.target)
        assert point is not None and r.bytes is not None and r.bytes <= point.budget
        assert t.params["bytes"] == r.target and t.params[f"ratio@{r.target:g}"] == r.ratio_target  # what the sampler learns from
        assert r.stream_share == pytest.approx(r.bytes / point.dense_bytes) and t.values[1] == r.stream_share
        if r.method is not Method.DENSE:
            assert r.ratio <= r.ratio_target + 1e-9 and r.ratio_target in point.ratios
        if r.coding is Coding.FITTED and r.method is Method.SEARCHED:  # the searched streams land within 2% of their budget
            assert r.bytes >= 0.98 * point.budget, (t.number, r.bytes, point.budget)
    sampled = [TrialRecord.of(t) for t in study.trials if TrialRecord.of(t).method is Method.SEARCHED]
    assert len({r.target for r in sampled}) >= 3  # the sampled trials spread over the budgets, not only the two given


def test_the_front_is_the_non_dominated_trials_and_each_point_has_its_best_within_its_budget(front):
    result, _ = front
    done = result.study.get_trials(states=(TrialState.COMPLETE,))
    s = result.summary
    on = {f.trial for f in s.front}
    assert on and [f.stream_share for f in s.front] == sorted((f.stream_share for f in s.front), reverse=True)
    for t in done:
        dominated = any(o.values[0] >= t.values[0] and o.values[1] <= t.values[1] and o.values != t.values for o in done)
        assert (t.number in on) == (not dominated and t.number == min(o.number for o in done if o.values == t.values))
    assert [p.target_ratio for p in s.points] == list(SHARES)
    for p in s.points:
        within = [t for t in done if t.values[1] <= p.target_ratio]
        assert p.best.val == max(t.values[0] for t in within) and p.best.stream_share <= p.target_ratio
        assert p.coding["share"] == p.target_ratio and p.coding["dense"]["bytes"] <= p.coding["budget"]
        assert p.seed_rule is not None and p.seed_rule.trial is not None
        assert TrialRecord.of(result.study.trials[p.seed_rule.trial]).coding is Coding.UNIFORM  # the reference: one qp


def test_the_folder_holds_the_best_stream_and_the_report_reads_the_front_back(front, dense_and_task):
    result, out = front
    best = TrialRecord.of(result.study.trials[result.config.search["trial"]])
    stream = (out / "model.nnr").read_bytes()
    assert stream == result.stream and len(stream) == best.bytes
    assert result.config.search["bytes"]["budget"] == read_study(result.study).point_of(best.target).budget
    assert result.config.target_ratio == best.ratio_target  # the ratio it allocated for, not its budget's share
    summary = (out / "summary.md").read_text()
    assert "| bytes target (of dense stream) |" in summary and "| bytes | of dense stream |" in summary
    assert all(f"Byte working point {s:g} of the front" in summary for s in SHARES)
    trials = json.loads((out / "trials.json").read_text())["trials"]
    assert all(t["stream_share"] is not None for t in trials if t["state"] == "complete")
    from ranksearch.results import load_runs

    run = load_runs(out)[0]
    assert [p.coding["share"] for p in run.summary.points] == list(SHARES) and run.summary.front == result.summary.front
    if (out / "report.html").exists():  # matplotlib installed
        assert "Byte working point 0.05 of the front" in (out / "report.html").read_text()


def test_any_point_of_the_front_is_exported_with_its_own_stream(front, dense_and_task, tmp_path):
    from ranksearch.core._retrain import evaluate
    from ranksearch.results import export_study
    from ranksearch.study import artifact_store

    result, out = front
    model, task = dense_and_task
    smallest = result.summary.front[-1]
    assert smallest.trial is not None
    r = TrialRecord.of(result.study.trials[smallest.trial])

    def rebuild(t):  # a point without uploaded weights is retrained again (here: refused, every point of the front has them)
        raise AssertionError(f"trial {t.number} of the front has no weights")

    exported = export_study(result.study, model, result.curves, tmp_path / "point", artifacts=artifact_store(out / "artifacts"),
                            trial=smallest.trial, rebuild=rebuild)
    stream = (tmp_path / "point" / "model.nnr").read_bytes()
    assert len(stream) == r.bytes and exported.config.search["trial"] == smallest.trial
    assert exported.config.search["bytes"]["budget"] == read_study(result.study).point_of(r.target).budget
    assert evaluate(exported.model, task.val, task.metric) == pytest.approx(smallest.val, abs=1e-9)  # the decoded model it scored
    assert set(decode(stream, recompose=False))  # NNCodec reads it


def test_a_byte_front_resumes_without_measuring_again_and_a_worker_joins(dense_and_task, tmp_path, monkeypatch):
    from ranksearch import run_worker
    from ranksearch.study import _bytes

    model, task = dense_and_task
    settings = SearchSettings(1.0, pareto=(0.1, 0.08), pareto_axis="bytes", retrain=RetrainSettings(epochs=1, batch_size=32),
                              sampler="random", baselines=False)
    first = search(model, settings, task=task, run=RunOptions(n_trials=8, out_dir=tmp_path, report=False))
    stored = read_study(first.study).byte_front
    enqueued = sum(TrialRecord.of(t).method.enqueued for t in first.study.trials)

    def refuse(*a, **k):
        raise AssertionError("the byte points are measured once, when the study is created")

    monkeypatch.setattr(_bytes, "measure_point", refuse)
    resumed = search(model, settings, task=task, run=RunOptions(n_trials=10, out_dir=tmp_path, report=False, resume=True))
    assert read_study(resumed.study).byte_front == stored
    assert run_worker(model, RunOptions(n_trials=12, storage=str(tmp_path / "study.journal"), study_name=first.study.study_name),
                      task=task) == 2
    trials = resumed.study.get_trials()
    assert sum(TrialRecord.of(t).method.enqueued for t in trials) == enqueued  # nothing enqueued again
    assert all(r.bytes <= read_study(resumed.study).point_of(r.target).budget
               for t in trials if t.state is TrialState.COMPLETE and (r := TrialRecord.of(t)))


def test_the_cli_runs_a_front_over_bytes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["search", "--space", "tiny-digits", "--epochs", "1", "-q", "--pareto-bytes", "0.1,0.07", "--trials", "12",
                 "--no-baselines", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "bytes target (of dense stream)" in printed and "Byte working point 0.07 of the front" in printed
    settings = json.loads((out / "rank_config.json").read_text())["search"]["settings"]
    assert settings["pareto_axis"] == "bytes" and settings["pareto"] == [0.1, 0.07] and settings["qat"] == 0.5
    assert (out / "model.nnr").exists()


@pytest.mark.parametrize(("extra", "message"), [
    (["--pareto-bytes", "0.1,0.05", "--bytes", "5000"], "leave --bytes and --bits-per-param out"),
    (["--pareto-bytes", "0.1,0.05", "--pareto-latency", "1,0.8"], "give one of them"),
    (["--pareto-bytes", "0.1", ], "two working points or more"),
    (["--pareto-bytes", "0.1,0.05", "--latency", "1.0"], "leave --pareto and --latency out"),
    (["--pareto-bytes", "0.1,0.05", "--ratio", "0.3,0.1"], "one ratio or none"),
])
def test_bad_fronts_over_bytes_fail_in_one_line_and_write_nothing(tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert main(["search", "--space", "tiny-digits", "--trials", "2", "--epochs", "1", "--out", str(out), "--no-progress",
                 *extra]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("ranksearch ")]
    assert len(err) == 1 and message in err[0], err
    assert not (out / "study.journal").exists()


def test_a_byte_fraction_of_one_or_more_is_refused_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["search", "--space", "tiny-digits", "--pareto-bytes", "1,0.5", "--out", str(tmp_path / "run")])
    assert e.value.code == 2 and "byte fraction 1.0 must be in (0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("changes", "message"), [
    (dict(pareto=(1.0, 0.5)), "fractions of the dense model's NNR stream"),
    (dict(pareto=(0.1, 0.05), target_latency=1.0), "with a front over bytes is not built yet"),
    (dict(pareto=(0.1, 0.05), target_bytes=5000), "a front over bytes is pareto_axis 'bytes'"),
    (dict(pareto=(0.1, 0.05), sampler="cmaes"), "sampler 'cmaes' optimizes one objective"),
])
def test_bad_byte_front_settings_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SearchSettings(1.0, pareto_axis="bytes", **changes)


def test_byte_front_settings_round_trip_and_name_their_point():
    s = SearchSettings(0.5, pareto=(0.05, 0.1), pareto_axis="bytes", qat=0.25)
    assert s.pareto == (0.1, 0.05) and s.codes and s.point == "pareto-bytes0.05-0.1+0.5"
    assert SearchSettings.from_dict(s.to_dict()) == s
    assert s.front[0] == 0.1 and s.front[-1] == 0.05 and len(s.front) == 5
