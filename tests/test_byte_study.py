"""A byte working point end to end on the tiny model: one study whose trials draw a parameter ratio, retrain, code their
model within the budget (NNCodec) and are scored on the decoded model; the references at the base ratio coded at one
uniform qp; the stream written, exported, resumed and joined like any other study; one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from optuna.trial import TrialState

from ranksearch import Method, RetrainSettings, RunOptions, SearchSettings, TrialRecord, search
from ranksearch.cli import main
from ranksearch.core._nnr import DEFAULT_QP, decode, encode
from ranksearch.core._retrain import evaluate
from ranksearch.core._surgery import factorize
from ranksearch.study import Coding
from ranksearch.study._record import StudyRecord
from ranksearch.study._storage import read_study

pytest.importorskip("nncodec.nnc_core")

RECIPE = RetrainSettings(epochs=2, batch_size=32, lr_start=0.01, lr_end=0.001)


@pytest.fixture(scope="module")
def budget(dense_and_task):
    model, _ = dense_and_task
    return len(encode(model.eval())) // 10


@pytest.fixture(scope="module")
def searched(dense_and_task, budget, tmp_path_factory):
    model, task = dense_and_task
    out = tmp_path_factory.mktemp("bytes")
    settings = SearchSettings(1.0, target_bytes=budget, retrain=RECIPE, sampler="random")
    return search(model, settings, task=task, run=RunOptions(n_trials=12, out_dir=out)), out


def test_the_study_measures_its_point_once_and_enqueues_the_references_at_the_base_ratio(searched, dense_and_task, budget):
    result, _ = searched
    model, task = dense_and_task
    study = result.study
    assert study.study_name.endswith(f"@bytes{budget}") and len(study.directions) == 1
    point = read_study(study).byte_point
    assert point is not None and point.budget == budget and point.dense_bytes == len(encode(model.eval()))
    assert point.ratios[-1] == point.base_ratio and point.base_ratio < point.ratios[0] <= min(0.75, 8 * point.base_ratio)
    assert all(a / b <= 1.25 + 1e-3 for a, b in zip(point.ratios, point.ratios[1:]))
    # the base ratio: the seed rule's stream at the default qp meets the budget there, and not much above it
    from ranksearch.core import solve

    def rule_bytes(ratio: float) -> int:
        ranks = {n: r.rank for n, r in solve(model, ratio).layers.items() if r.rank is not None}
        return len(encode(factorize(model, ranks).eval(), qp=DEFAULT_QP))

    assert rule_bytes(point.base_ratio) <= budget < rule_bytes(point.base_ratio * 1.1)
    # NNCodec's own answer on the dense model: the finest uniform qp within the budget, decoded and scored
    assert point.dense["bytes"] == len(encode(model.eval(), qp=int(point.dense["qp"]))) <= budget
    assert len(encode(model.eval(), qp=int(point.dense["qp"]) - 1)) > budget
    enqueued = [TrialRecord.of(t) for t in study.trials if TrialRecord.of(t).method.enqueued]
    at_base = sorted(r.method for r in enqueued if r.target == point.base_ratio)
    assert at_base == sorted([Method.SEED_RULE, Method.UNIFORM, Method.SENSITIVITY, Method.SENSITIVITY_SUM])
    assert all(r.coding is Coding.UNIFORM for r in enqueued if r.target == point.base_ratio)
    larger = [r for r in enqueued if r.target != point.base_ratio and r.method is not Method.DENSE]
    assert larger and all(r.method is Method.SEED_RULE and r.coding is Coding.FITTED for r in larger)
    # the dense model as given (no layer factorized, not retrained): first, NNCodec's own answer; last, coded per tensor
    dense = [r for r in enqueued if r.method is Method.DENSE]
    assert TrialRecord.of(study.trials[0]).method is Method.DENSE and [r.coding for r in dense] == [Coding.UNIFORM, Coding.FITTED]
    assert all(r.ranks == {} and r.ratio == 1.0 and r.before_coding == pytest.approx(read_study(study).dense["val"]) for r in dense)
    assert study.trials[0].value == pytest.approx(point.dense["val"])  # the same stream as the reference: the same decoded model


def test_every_trial_is_scored_on_its_decoded_stream_within_the_budget(searched, budget):
    result, _ = searched
    done = result.study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) >= 6
    for t in done:
        r = TrialRecord.of(t)
        assert r.bytes is not None and r.bytes <= budget and r.before_coding is not None
        assert t.params["ratio"] == r.target and (r.ratio <= r.target or r.method is Method.DENSE)
        assert t.constraints == {"ratio_over_target": pytest.approx(r.ratio - 1.0)}  # at a byte working point the bytes are the constraint, the ratio a knob
        if r.coding is Coding.FITTED and r.same_as is None:
            assert r.bytes >= 0.95 * budget and r.predicted_bytes is not None  # each weight's qp fills the budget
        if r.coding is Coding.UNIFORM:
            assert len(set(r.qps.values())) == 1
    assert len({TrialRecord.of(t).target for t in done}) >= 3  # the trials spread over the ratios


def test_the_results_hold_the_stream_and_what_it_decodes_to(searched, dense_and_task, budget):
    result, out = searched
    model, task = dense_and_task
    best = TrialRecord.of(result.study.trials[result.config.search["trial"]])
    stream = (out / "model.nnr").read_bytes()
    assert stream == result.stream and 0.98 * budget <= len(stream) == best.bytes <= budget  # it lands within 2% of the budget
    decoded = decode(stream, recompose=False)
    for name, pair in ((n, m) for n, m in result.model.named_modules() if hasattr(m, "matrices")):
        g, h = pair.matrices()
        assert np.array_equal(decoded[f"{name}.weight_G"], g.detach().numpy()) and np.array_equal(decoded[f"{name}.weight_H"],
                                                                                                h.detach().numpy())
    assert evaluate(result.model, task.test, task.metric) == pytest.approx(best.test, abs=1e-9)  # the decoded model's
    record = result.config.search["bytes"]
    assert record["budget"] == budget and record["bytes"] == len(stream) and record["qps"] == best.qps
    summary = (out / "summary.md").read_text()
    assert "The byte working point:" in summary and "| best (" in summary and "dense, NNCodec at qp" in summary
    trials = json.loads((out / "trials.json").read_text())["trials"]
    assert {t["coding"] for t in trials if t["state"] == "complete"} == {"uniform", "fitted"}
    from ranksearch.results import load_runs

    assert load_runs(out)[0].summary.coding["budget"] == budget  # the report reads it back
    if (out / "report.html").exists():  # matplotlib installed
        assert "The byte working point:" in (out / "report.html").read_text() and "dense, NNCodec at qp" in (out / "report.html").read_text()


def test_export_writes_the_same_stream_and_the_best_beats_the_references(searched, dense_and_task, tmp_path):
    from ranksearch.results import export_study
    from ranksearch.study import artifact_store

    result, out = searched
    model, _ = dense_and_task
    export_study(result.study, model, result.curves, tmp_path / "again", artifacts=artifact_store(out / "artifacts"))
    assert (tmp_path / "again" / "model.nnr").read_bytes() == (out / "model.nnr").read_bytes()  # the coding is deterministic
    s = result.summary
    assert s.best.val is not None and s.seed_rule is not None and s.best.val >= s.seed_rule.val


def test_a_byte_study_resumes_without_measuring_its_point_again_and_a_worker_joins(dense_and_task, budget, tmp_path, monkeypatch):
    from ranksearch import run_worker
    from ranksearch.study import _bytes

    model, task = dense_and_task
    settings = SearchSettings(1.0, target_bytes=budget, retrain=RetrainSettings(epochs=1, batch_size=32), sampler="random")
    first = search(model, settings, task=task, run=RunOptions(n_trials=7, out_dir=tmp_path, report=False))
    stored = read_study(first.study).byte_point

    def refuse(*a, **k):
        raise AssertionError("the byte point is measured once, when the study is created")

    monkeypatch.setattr(_bytes, "measure_point", refuse)
    resumed = search(model, settings, task=task, run=RunOptions(n_trials=9, out_dir=tmp_path, report=False, resume=True))
    assert read_study(resumed.study).byte_point == stored
    ran = run_worker(model, RunOptions(n_trials=11, storage=str(tmp_path / "study.journal"), study_name=first.study.study_name),
                     task=task)
    assert ran == 2
    done = resumed.study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert all(TrialRecord.of(t).bytes is None or TrialRecord.of(t).bytes <= budget for t in done)
    assert StudyRecord.from_attrs(resumed.study.user_attrs).byte_point == stored


@pytest.mark.parametrize(("extra", "message"), [
    (["--bytes", "999999999"], "is at least the dense model's NNR stream at the default qp"),
    (["--bytes", "40"], "--bytes 40 is unreachable for this model: even at its smallest ratio"),
    (["--bytes", "5000", "--latency", "1.0"], "a byte working point with a latency bound is not built yet"),
    (["--bytes", "5000", "--ratio", "0.5,0.2", "--pareto"], "a front over bytes is pareto_axis 'bytes' (--pareto-bytes F,F)"),
    (["--bits-per-param", "2", "--latency", "1.0"], "bits_per_param 2 goes alone"),
    (["--bits-per-param", "2", "--bytes", "5000"], "target_bytes 5,000 and bits_per_param 2 disagree"),
    (["--bits-per-param", "0.001"], "is unreachable for this model"),
])
def test_bad_byte_working_points_fail_in_one_line_and_write_nothing(tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert main(["search", "--space", "tiny-digits", "--trials", "2", "--epochs", "1", "--out", str(out), "--no-progress",
                 *extra]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("ranksearch ")]  # not the log lines
    assert len(err) == 1 and message in err[0], err
    assert not (out / "study.journal").exists() and not (out / "rank_config.json").exists()


def test_a_byte_budget_below_one_is_refused_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["search", "--space", "tiny-digits", "--bytes", "0", "--out", str(tmp_path / "run")])
    assert e.value.code == 2 and "--bytes 0 must be an int >= 1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_byte_settings_round_trip_and_older_ones_still_read():
    s = SearchSettings(0.5, target_bytes=12345)
    assert SearchSettings.from_dict(s.to_dict()) == s and s.point == "bytes12345+0.5"
    q = SearchSettings(1.0, target_bytes=12345, qat=0.25)
    assert SearchSettings.from_dict(q.to_dict()) == q and q.to_dict()["format_version"] >= 11 and q.to_dict()["qat"] == 0.25
    old = {**SearchSettings(0.25).to_dict(), "format_version": 8}
    old.pop("target_bytes")
    assert SearchSettings.from_dict(old).target_bytes is None


def test_decoded_metric_is_what_the_stream_delivers(searched, dense_and_task):
    """The trial's value is the decoded model's validation metric, not the retrained one's: recompute one trial's."""
    result, out = searched
    model, task = dense_and_task
    assert any(TrialRecord.of(t).before_coding != t.value for t in result.study.get_trials(states=(TrialState.COMPLETE,)))
    decoded = decode(out / "model.nnr")
    import tinyspace

    dense_shaped = tinyspace.build_model()
    dense_shaped.load_state_dict({k: torch.from_numpy(v) for k, v in decoded.items()})
    best = result.study.trials[result.config.search["trial"]]
    assert evaluate(dense_shaped.eval(), task.val, task.metric) == pytest.approx(best.value, abs=1e-6)


def test_the_byte_table_says_when_no_qp_codes_the_dense_model_within_the_budget(searched):
    """dcase-audio at 0.05x: NNCodec's non-weight qp leaves the dense stream over the budget at any qp; the reference
    row says so, with the floor, instead of a qp."""
    import dataclasses

    from ranksearch.results._tables import bytes_table

    result, _ = searched
    coding = {**result.summary.coding, "dense": {"floor": 5027}}
    text = bytes_table(dataclasses.replace(result.summary, coding=coding)).markdown()
    assert "dense, NNCodec: no qp fits (at least 5,027 bytes)" in text
    assert "dense, NNCodec at qp" in bytes_table(result.summary).markdown()


def test_bits_per_parameter_name_the_budget_of_this_model(dense_and_task, tmp_path):
    """--bits-per-param B: the budget is B bits per parameter of the dense model, and the study is that byte working point."""
    from ranksearch.core import count_params

    model, task = dense_and_task
    settings = SearchSettings(1.0, bits_per_param=1.5, retrain=RetrainSettings(epochs=1, batch_size=32), sampler="random")
    result = search(model, settings, task=task, run=RunOptions(n_trials=3, out_dir=tmp_path, report=False))
    budget = int(1.5 * count_params(model) / 8)
    stored = result.config.search["settings"]
    assert result.study.study_name.endswith(f"@bytes{budget}") and stored["bits_per_param"] == 1.5 and stored["target_bytes"] == budget
    assert read_study(result.study).byte_point.budget == budget and len(result.stream) <= budget
    assert SearchSettings.from_dict(stored).point == f"bytes{budget}"


def test_a_dense_candidate_is_rebuilt_as_it_was_given(searched, dense_and_task):
    """Where the best trial's weights were not uploaded, the results retrain it again; the dense candidates were never
    retrained, so their rebuild is the model itself."""
    from ranksearch.study._plan import Workload, make_plan

    result, _ = searched
    model, task = dense_and_task
    plan = make_plan(model, SearchSettings.from_dict(result.config.search["settings"]), Workload(task=task))
    rebuilt = plan.retrained(model, TrialRecord(method=Method.DENSE, ranks={}))
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), model.state_dict().values()))
    retrained = plan.retrained(model, TrialRecord(method=Method.UNIFORM, ranks={}))  # any other trial is retrained again
    assert not all(torch.equal(a, b) for a, b in zip(retrained.state_dict().values(), model.state_dict().values()))


def test_a_quantization_aware_study_trains_through_its_steps_and_retrains_its_trials_again_alike(dense_and_task, budget, tmp_path):
    """``qat``: each retrained trial's last steps round every weight to the step of the qp it would be coded at; the record says
    so, the summary says which retrain the best had, and a trial retrained again (its weights not kept) is the same model."""
    from ranksearch.core._qat import step_of
    from ranksearch.results import trial_model
    from ranksearch.study import artifact_store
    from ranksearch.study._plan import Workload, make_plan

    model, task = dense_and_task
    settings = SearchSettings(1.0, target_bytes=budget, retrain=RECIPE, sampler="random", qat=0.5)
    result = search(model, settings, task=task, run=RunOptions(n_trials=7, out_dir=tmp_path, report=False))
    done = [(t, TrialRecord.of(t)) for t in result.study.get_trials(states=(TrialState.COMPLETE,)) if TrialRecord.of(t).same_as is None]
    assert {r.qat for _, r in done if r.method is not Method.DENSE} == {0.5} and all(r.qat is None for _, r in done if r.method is Method.DENSE)
    kept = [(t, r) for t, r in done if r.weights is not None and r.method is not Method.DENSE]
    assert kept
    trial, record = kept[0]
    stored = trial_model(result.study, trial, model, artifact_store(tmp_path / "artifacts"))
    # its weights sit on the steps of the qps its quantization-aware half began with: a step finer or coarser than it was coded at
    layer = next(n for n, m in stored.named_modules() if isinstance(m, torch.nn.Linear) and not n.endswith((".g", ".h")))
    w = stored.get_submodule(layer).weight.detach()
    assert any(torch.allclose(w / step_of(q), torch.round(w / step_of(q)), atol=1e-4) for q in range(record.qps[f"{layer}.weight"] - 8,
                                                                                                        record.qps[f"{layer}.weight"] + 9))
    again = make_plan(model, SearchSettings.from_dict(result.config.search["settings"]), Workload(task=task)).retrained(model, record)
    for key, value in stored.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value, msg=key)
    assert result.summary.coding["qat"] == TrialRecord.of(result.study.trials[result.config.search["trial"]]).qat


@pytest.mark.parametrize(("extra", "message"), [
    (["--ratio", "0.5", "--qat", "0.5"], "qat 0.5 rounds each weight to the step it is coded at, which only a byte working point"),
    (["--bytes", "5000", "--qat", "1.5"], "--qat 1.5 must be"),
])
def test_quantization_aware_retrain_outside_a_byte_working_point_is_refused_in_one_line(tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    try:
        code = main(["search", "--space", "tiny-digits", "--trials", "2", "--epochs", "1", "--out", str(out), "--no-progress", *extra])
    except SystemExit as e:  # the parser's own range check
        code = e.code
    assert code == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith(("ranksearch ", "usage")) or message in line]
    assert any(message in line for line in err), err
    assert not (out / "study.journal").exists()


def test_the_retrain_is_quantization_aware_by_default_at_a_byte_working_point_only(searched, dense_and_task):
    """qat left out: 0.5 at a byte working point with the built-in retrain (it won there), a plain retrain otherwise."""
    from ranksearch.study._plan import Workload, resolve
    from ranksearch.study._settings import QAT

    result, _ = searched
    model, task = dense_and_task
    assert SearchSettings.from_dict(result.config.search["settings"]).qat == QAT == 0.5
    assert resolve(model, SearchSettings(1.0, target_bytes=5000), Workload(task=task)).qat == 0.5
    assert resolve(model, SearchSettings(0.5), Workload(task=task)).qat == 0.0
    assert resolve(model, SearchSettings(1.0, target_bytes=5000, qat=0.0), Workload(task=task)).qat == 0.0
    assert resolve(model, SearchSettings(1.0, target_bytes=5000), Workload(evaluate=lambda m: 0.5)).qat == 0.0  # your own retrain


def test_quantization_aware_retrain_needs_the_built_in_retrain(dense_and_task, budget, tmp_path):
    from ranksearch.errors import StudyError

    model, task = dense_and_task
    settings = SearchSettings(1.0, target_bytes=budget, qat=0.5)
    with pytest.raises(StudyError, match="only the built-in retrain"):
        search(model, settings, evaluate=lambda m: 0.5, retrain=lambda m: None, run=RunOptions(n_trials=1, out_dir=tmp_path, report=False))
    assert not (tmp_path / "study.journal").exists()


def test_a_byte_study_resumes_with_its_default_qat_and_refuses_another(tmp_path, capsys):
    """The default qat is resolved when the study is made (0.5 here): a resume that leaves it out joins, one that asks for a
    plain retrain is refused in one line before any model is built."""
    base = ["search", "--space", "tiny-digits", "--bytes", "3000", "--epochs", "1", "--no-progress", "--out", str(tmp_path / "run")]
    assert main([*base, "--trials", "2"]) == 0
    assert main([*base, "--trials", "3", "--resume"]) == 0
    capsys.readouterr()
    assert main([*base, "--trials", "4", "--resume", "--qat", "0"]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("ranksearch ")]
    assert len(err) == 1 and "was created with qat=0.5, this process has qat=0.0" in err[0], err


def test_several_byte_working_points_each_get_their_folder_and_study(dense_and_task, budget, tmp_path):
    from ranksearch import search_points

    model, task = dense_and_task
    points = [SearchSettings(1.0, target_bytes=n, retrain=RetrainSettings(epochs=1, batch_size=32), sampler="random",
                             baselines=False) for n in (budget, budget // 2)]
    results = search_points(model, points, task=task, run=RunOptions(n_trials=4, out_dir=tmp_path, report=False))
    assert [r.study.study_name.split("@")[-1] for r in results] == [f"bytes{budget}", f"bytes{budget // 2}"]
    for r, n in zip(results, (budget, budget // 2)):
        assert (tmp_path / f"bytes{n}" / "model.nnr").read_bytes() == r.stream and len(r.stream) <= n
    assert "| target |" in (tmp_path / "summary.md").read_text()
    with pytest.raises(ValueError, match=r"repeat one"):
        search_points(model, [points[0], points[0]], task=task, run=RunOptions(n_trials=1))
