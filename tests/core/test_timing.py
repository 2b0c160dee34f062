"""Latency in the solver and the timing table: rank limits, a budget of seconds, interpolation, and real
measurements on torch and onnxruntime (whose one-layer graphs compute what the layer computes)."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from ranksearch.core import Curve, Latency, Runtime, TimingTable, measure_layers, measure_models, project_ranks, solve_ratio, timing_ranks
from ranksearch.core._timing import _layer_graph, _session
from ranksearch.errors import RankSearchError


def _curves(seed: int) -> dict[str, Curve]:
    rng = np.random.default_rng(seed)
    shapes = [(64, 48), (96, 32), (40, 120), (128, 128)]
    out = {}
    for i, shape in enumerate(shapes):
        s = np.sort(rng.gamma(1.0, size=min(shape)) * np.exp(-rng.uniform(0, 0.1) * np.arange(min(shape))))[::-1]
        out[f"l{i}"] = Curve(shape, s)
    return out


def _latency(curves: dict[str, Curve], seed: int, fraction: float) -> Latency:
    """Seconds that grow with the rank, dense slower than every allowed rank (as the table's limits make it)."""
    rng = np.random.default_rng(seed)
    pair, dense = {}, {}
    for n, c in curves.items():
        r = np.arange(min(c.shape) + 1, dtype=float)
        pair[n] = 1e-5 + r * rng.uniform(1e-7, 1e-6)
        dense[n] = float(pair[n][max(1, c.max_rank)] * rng.uniform(1.01, 2.0))
    return Latency(pair, dense, fraction * sum(dense.values()))


def _seconds(lat: Latency, ranks: dict[str, int | None]) -> float:
    return sum(lat.dense[n] if r is None else float(lat.pair[n][r]) for n, r in ranks.items())


def test_a_curve_limit_caps_every_allocation():
    curves = _curves(0)
    capped = {n: dataclasses.replace(c, limit=lim) for (n, c), lim in zip(curves.items(), (3, 0, 50, 10))}
    assert [c.max_rank for c in capped.values()] == [3, 0, min(50, curves["l2"].max_rank), 10]
    total = sum(c.dense_params for c in curves.values()) + 1000
    for ratio in (0.9, 0.6):
        for sol in (solve_ratio(capped, ratio, total), project_ranks(capped, {n: 3.0 for n in capped}, ratio, total)):
            assert sol.ranks["l1"] is None and sol.params <= ratio * total
            assert all(r is None or r <= capped[n].max_rank for n, r in sol.ranks.items())
    with pytest.raises(RankSearchError, match="latency limits|unreachable"):
        solve_ratio({n: dataclasses.replace(c, limit=0) for n, c in curves.items()}, 0.5, total)
    with pytest.raises(RankSearchError, match="limit"):
        Curve((4, 4), np.ones(4), limit=-1)


@pytest.mark.parametrize("seed, fraction", list(itertools.product(range(6), (1.0, 0.8, 0.6))))
def test_every_allocation_fits_both_budgets(seed, fraction):
    curves = _curves(seed)
    total = sum(c.dense_params for c in curves.values()) + 500
    lat = _latency(curves, seed, fraction)
    targets = {n: np.log2(max(1, c.max_rank)) - 1 for n, c in curves.items()}
    for ratio in (0.8, 0.5):
        try:
            sols = [solve_ratio(curves, ratio, total, latency=lat), project_ranks(curves, targets, ratio, total, latency=lat)]
        except RankSearchError as e:  # only when even the smallest ranks miss a budget
            assert "unreachable" in str(e)
            smallest = {n: int(c.ranks()[0]) for n, c in curves.items()}
            assert _seconds(lat, smallest) > lat.budget or sum(c.params(smallest[n]) for n, c in curves.items()) + 500 > ratio * total
            continue
        free = solve_ratio(curves, ratio, total)
        for sol in sols:
            assert sol.params <= ratio * total
            assert _seconds(lat, sol.ranks) <= lat.budget * (1 + 1e-9)
        if _seconds(lat, free.ranks) <= lat.budget:  # a budget that does not bind changes nothing
            assert sols[0].ranks == free.ranks


def test_the_table_interpolates_limits_predicts_and_round_trips():
    table = TimingTable("torch", 1, "cpu", 2, model=1.0, dense={"a": 0.2, "b": 0.1},
                        ranks={"a": [1, 4, 8], "b": [2, 6]}, pair={"a": [0.05, 0.15, 0.12], "b": [0.2, 0.3]})
    t = table.seconds("a", 10)
    assert t[0] == 0 and np.all(np.diff(t[1:]) >= 0)  # non-decreasing: the dip at rank 8 is noise
    assert t[1] == pytest.approx(0.05) and t[4] == pytest.approx(0.15) and t[10] == pytest.approx(0.15)
    assert t[2] == pytest.approx(0.05 + (0.15 - 0.05) / 3)
    curves = {"a": Curve((16, 16), np.linspace(2, 1, 16)), "b": Curve((12, 12), np.linspace(2, 1, 12))}
    assert table.limits(curves) == {"a": 16, "b": 0}  # a: 0.15 <= 0.95 * 0.2 up to its full rank (flat beyond 8); b: never faster
    lat = table.latency(curves, 0.9)
    assert lat.budget == pytest.approx(0.3 - 0.1)  # its layers' dense seconds less a tenth of the model's
    assert table.predicted({"a": 4, "b": None}) == pytest.approx(1.0 - (0.2 - 0.15))
    assert TimingTable.from_dict(table.to_dict()) == table
    # calibrated on a measurement: a saving of 0.05 alone that saved 0.025 in place halves every saving
    half = table.calibrated({"a": 4}, 0.975)
    assert half.scale == pytest.approx(0.5) and half.predicted({"a": 4}) == pytest.approx(0.975)
    assert half.limits(curves) == table.limits(curves)  # which pairs are faster is decided alone
    assert half.latency(curves, 1.0).budget == pytest.approx(0.3) and half.seconds("a", 10)[4] == pytest.approx(0.2 - 0.025)
    assert table.calibrated({"a": 4}, 1.2).scale == 0.0 and table.calibrated({"a": 4}, 0.0).scale == 1.5  # clipped
    assert table.calibrated({"b": None}, 0.5) is table  # nothing saved alone: nothing to calibrate
    assert table.fastest(curves) == {"a": 1, "b": None} and table.fastest(curves, multiple=4) == {"a": 4, "b": None}
    with pytest.raises(RankSearchError, match="measure it again"):
        TimingTable.from_dict({**table.to_dict(), "extra": 1})
    with pytest.raises(RankSearchError, match="measure it again"):
        TimingTable.from_dict({**table.to_dict(), "runtime": "tflite"})
    assert TimingTable.from_dict(table.to_dict()).runtime is Runtime.TORCH
    with pytest.raises(RankSearchError, match="another model"):
        table.latency({"zz": curves["a"]}, 1.0)


def test_timing_ranks_are_geometric_on_the_grid_up_to_the_break_even():
    c = Curve((256, 256), np.linspace(3, 1, 256))
    ranks = timing_ranks(c, multiple=4, min_rank=4, points=8)
    assert ranks == sorted(set(ranks)) and len(ranks) == 8 and all(r % 4 == 0 for r in ranks)
    assert ranks[0] == 4 and ranks[-1] == int(c.ranks(4, 4)[-1])
    assert timing_ranks(Curve((6, 6), np.linspace(2, 1, 6))) == [1, 2]


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(8, 32, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(32 * 8 * 8, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_a_measured_table_holds_a_median_for_every_layer_and_rank(runtime):
    torch.manual_seed(0)
    net = _Net().eval()
    modules = {"conv": net.conv, "fc": net.fc}
    ranks = {"conv": [2, 4, 8], "fc": [4, 16]}
    table = measure_layers(net, modules, ranks, torch.randn(4, 8, 16, 16), runtime, repeats=3)
    assert table.runtime == runtime and table.batch == 4 and table.ranks == ranks and table.model > 0
    assert all(len(table.pair[n]) == len(ranks[n]) and min(table.pair[n]) > 0 and table.dense[n] > 0 for n in modules)
    a, b = measure_models([net, net], torch.randn(4, 8, 16, 16), runtime, repeats=3)
    assert a > 0 and b > 0


@pytest.mark.parametrize("layer, shape", [(torch.nn.Conv2d(6, 10, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)), (2, 6, 9, 11)),
                                          (torch.nn.Conv1d(5, 7, 3, padding=2), (3, 5, 12)), (torch.nn.Linear(9, 4), (5, 9)),
                                          (torch.nn.Linear(9, 4, bias=False), (2, 3, 9))])
def test_the_onnxruntime_graph_of_a_dense_layer_computes_the_layer(layer, shape):
    """The one-layer graphs timed in onnxruntime are the layer, so a time is the layer's time; its pair has the layer's output shape."""
    torch.manual_seed(0)
    x = torch.randn(*shape)
    with torch.no_grad():
        expected = layer(x).numpy()
    got = _session(_layer_graph(layer, x, None)).run(None, {"x": x.numpy()})[0]
    assert np.allclose(got, expected, atol=1e-5)
    pair = _session(_layer_graph(layer, x, 2)).run(None, {"x": x.numpy()})[0]
    assert pair.shape == expected.shape
