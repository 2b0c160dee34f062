"""A latency working point end to end: the timing table is measured once and stored in the study, every
trial keeps to its limits and budget, a worker and a resumed search allocate with the stored table, and
the winner's end-to-end latency is measured against dense and recorded."""

from __future__ import annotations

import optuna
import pytest
import torch

import ranksearch.core._timing as timing_module
from ranksearch import RunOptions, SearchSettings, TrialRecord, run_worker, search
from ranksearch.core import spectra
from ranksearch.study import open_storage, read_study


def _net() -> torch.nn.Module:
    """Wide layers, whose pairs save time in place as well as alone (so the calibrated budgets are reachable), and small ones."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(256, 1536), torch.nn.ReLU(), torch.nn.Linear(1536, 1536), torch.nn.ReLU(),
                               torch.nn.Linear(1536, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))


def _ev(m: torch.nn.Module) -> float:
    with torch.no_grad():
        x = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))
        return float(-(m(x) - _net()(x)).pow(2).mean())


@pytest.fixture
def measured(monkeypatch):
    """How many timing tables were measured."""
    calls = []
    real = timing_module.measure_table

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr("ranksearch.study._latency.measure_table", counting)
    return calls


def test_a_latency_search_keeps_every_trial_within_the_stored_table(tmp_path, measured):
    net = _net()
    settings = SearchSettings(0.5, sampler="random", target_latency=1.0, latency_batch=64, baselines=False)
    run = RunOptions(n_trials=5, out_dir=tmp_path / "out", report=False)
    result = search(net, settings, evaluate=_ev, calibration=[torch.randn(8, 256)], run=run)
    assert measured == [1]
    record = read_study(result.study)
    table = record.timing
    assert table is not None and table.batch == 64 and table.runtime == "torch" and set(table.dense) == set(spectra(net))
    assert record.fixed_cost is not None and record.fixed_cost["timing_s"] == round(table.took_s, 3) > 0
    assert 0.0 <= table.scale <= 1.5  # calibrated on the CE1 rule timed in place
    limits = table.limits(spectra(net))
    lat = table.latency(spectra(net), 1.0)
    for t in result.study.trials:
        ranks = TrialRecord.of(t).kept_ranks
        assert ranks and all(r <= limits[n] for n, r in ranks.items())  # only faster pairs
        assert sum(float(lat.pair[n][r]) for n, r in ranks.items()) + sum(lat.dense[n] for n in lat.dense if n not in ranks) <= lat.budget * (1 + 1e-9)
        assert table.predicted(ranks) <= table.model * (1 + 1e-9)
    got = result.config.search["latency"]
    assert got["runtime"] == "torch" and got["batch"] == 64 and got["target"] == 1.0
    assert got["dense_s"] > 0 and got["factorized_s"] > 0 and got["ratio"] == pytest.approx(got["factorized_s"] / got["dense_s"])
    assert "Latency of the best model on torch" in (tmp_path / "out" / "summary.md").read_text()
    assert result.study.study_name == "Sequential@0.5+latency1"
    assert result.config.search["settings"]["target_latency"] == 1.0

    # a worker joining the study allocates with the stored table: it measures nothing
    ran = run_worker(_net(), RunOptions(storage=str(tmp_path / "out" / "study.journal"), study_name=result.study.study_name, n_trials=7),
                     evaluate=_ev, calibration=[torch.randn(8, 256)])
    assert ran == 2 and measured == [1]
    study = optuna.load_study(study_name=result.study.study_name, storage=open_storage(str(tmp_path / "out" / "study.journal")))
    assert len(study.trials) == 7
    for t in study.trials:
        assert all(r <= limits[n] for n, r in TrialRecord.of(t).kept_ranks.items())

    # so does a resumed search, which then measures the winner end to end again
    again = search(_net(), settings, evaluate=_ev, calibration=[torch.randn(8, 256)],
                   run=RunOptions(n_trials=8, out_dir=tmp_path / "out", resume=True, report=False))
    assert measured == [1] and len(again.study.trials) == 8 and again.config.search["latency"]["dense_s"] > 0
    assert all(r <= limits[n] for t in again.study.trials for n, r in TrialRecord.of(t).kept_ranks.items())


def test_every_trial_of_a_pareto_study_with_a_latency_bound_keeps_to_it(tmp_path, measured):
    net = _net()
    settings = SearchSettings(0.5, pareto=(0.5, 0.3), sampler="random", target_latency=1.0, latency_batch=64, baselines=False)
    result = search(net, settings, evaluate=_ev, calibration=[torch.randn(8, 256)],
                    run=RunOptions(n_trials=6, out_dir=tmp_path / "out", report=False))
    assert measured == [1] and result.study.study_name == "Sequential@pareto0.3-0.5+latency1"
    table = read_study(result.study).timing
    assert table is not None
    limits, lat = table.limits(spectra(net)), table.latency(spectra(net), 1.0)
    targets = set()
    for t in result.study.trials:
        r = TrialRecord.of(t)
        targets.add(r.target)
        assert r.target in settings.front and r.ratio <= r.target
        assert all(k <= limits[n] for n, k in r.kept_ranks.items())
        assert sum(float(lat.pair[n][k]) for n, k in r.kept_ranks.items()) + sum(
            lat.dense[n] for n in lat.dense if n not in r.kept_ranks) <= lat.budget * (1 + 1e-9)
    assert {0.5, 0.3} <= targets  # the seed rule at each point, then sampled ratios
    assert result.config.search["latency"]["dense_s"] > 0 and result.summary.front


def test_a_pareto_study_on_the_latency_axis_keeps_each_trial_within_its_own_fraction(tmp_path, measured):
    net = _net()
    settings = SearchSettings(1.0, target_latency=1.0, pareto=(1.0, 0.8), pareto_axis="latency", sampler="random", latency_batch=64,
                              baselines=False)
    result = search(net, settings, evaluate=_ev, calibration=[torch.randn(8, 256)],
                    run=RunOptions(n_trials=7, out_dir=tmp_path / "out", report=False))
    assert measured == [1] and result.study.study_name == "Sequential@pareto-latency0.8-1"
    table = read_study(result.study).timing
    assert table is not None
    curves = spectra(net)
    for t in result.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        r = TrialRecord.of(t)
        assert r.target in settings.front and t.params["latency"] == r.target
        lat = table.latency(curves, r.target)  # the budget of its own fraction
        assert sum(float(lat.pair[n][k]) for n, k in r.kept_ranks.items()) + sum(
            lat.dense[n] for n in lat.dense if n not in r.kept_ranks) <= lat.budget * (1 + 1e-9)
        assert t.values[1] == pytest.approx(r.latency) == pytest.approx(table.predicted(r.kept_ranks) / table.model)
        assert r.latency <= r.target * (1 + 1e-9)
        # the ratio constraint is against the study's ratio (1 here), not the trial's latency fraction
        assert t.system_attrs["constraints:ratio_over_target"] == pytest.approx(r.ratio - 1.0)
    front = result.summary.front
    assert front and [f.latency for f in front] == sorted((f.latency for f in front), reverse=True)
    assert [p.target_ratio for p in result.summary.points] == [1.0, 0.8]  # the points are latency fractions here
    text = (tmp_path / "out" / "summary.md").read_text()
    assert "latency target" in text and "latency (predicted, of dense)" in text
    assert result.config.search["latency"]["dense_s"] > 0  # the best measured end to end against dense


def test_a_ratio_the_faster_pairs_cannot_reach_is_one_line_before_any_study(tmp_path):
    """Said after the timing table, before the study: in one line that names the latency limits."""
    with pytest.raises(Exception, match="unreachable: with the smallest rank the latency limits allow") as e:
        search(_net(), SearchSettings(0.001, target_latency=1.0, latency_batch=64), evaluate=_ev, calibration=[torch.randn(8, 256)],
               run=RunOptions(n_trials=2, out_dir=tmp_path / "out"))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out" / "study.journal").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="on CUDA the grid is 8 with or without a latency working point")
def test_a_latency_working_point_on_the_cpu_puts_ranks_on_the_channel_block():
    """onnxruntime's and oneDNN's convolutions block channels by 8: auto resolves to 8 (halved on a small model), 1 without latency."""
    from ranksearch.study._plan import Workload, resolve

    work = Workload(evaluate=_ev)
    plain = resolve(_net(), SearchSettings(0.5), work)
    timed = resolve(_net(), SearchSettings(0.5, target_latency=1.0, runtime="onnxruntime"), work)
    assert plain.rank_multiple == 1 and timed.rank_multiple in (2, 4, 8)
    wide = torch.nn.Sequential(torch.nn.Linear(2048, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 2048))
    assert resolve(wide, SearchSettings(0.5, target_latency=1.0), work).rank_multiple == 8


def test_a_latency_working_point_alone_has_no_parameter_budget(tmp_path):
    """target_ratio 1 with target_latency: only the latency budget binds; target_ratio 1 alone is refused."""
    net = _net()
    settings = SearchSettings(1.0, sampler="random", target_latency=0.95, latency_batch=64, baselines=False)
    result = search(net, settings, evaluate=_ev, calibration=[torch.randn(8, 256)], run=RunOptions(n_trials=3))
    table = read_study(result.study).timing
    assert table is not None and result.study.study_name == "Sequential@latency0.95"
    assert all(table.predicted(TrialRecord.of(t).kept_ranks) <= 0.95 * table.model * (1 + 1e-9) for t in result.study.trials)
    assert result.config.achieved_ratio < 1 and result.config.search["latency"]["target"] == 0.95
    with pytest.raises(Exception, match="target_ratio 1 would keep every parameter"):
        SearchSettings(1.0)
