"""Baseline allocations (uniform, AIMET-style greedy) and their expression as MSE-bound weights."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ranksearch.core._solver import Curve, ranks_for_bound
from ranksearch.study._baselines import additive_ranks, greedy_ranks, log_weights_for, probe_ranks, uniform_ranks


def _curves() -> dict[str, Curve]:
    rng = np.random.default_rng(0)
    out = {}
    for name, (m, n) in {"a": (16, 40), "b": (32, 64), "c": (64, 300)}.items():
        s = np.sort(rng.gamma(1.0, 1.0, min(m, n)))[::-1] * (1 + rng.random())
        out[name] = Curve((m, n), s)
    return out


def test_uniform_ranks_fit_and_are_maximal():
    curves = _curves()
    budget = 3000
    ranks = uniform_ranks(curves, budget)
    cost = sum(curves[n].params(r) for n, r in ranks.items())
    assert cost <= budget
    fracs = {n: r / curves[n].max_rank for n, r in ranks.items()}
    assert max(fracs.values()) - min(fracs.values()) < 0.2  # the same share of each layer's range


def test_greedy_takes_highest_common_score_that_fits():
    curves = _curves()
    table = {"a": [(1, 0.2), (2, 0.8), (4, 0.95)], "b": [(1, 0.5), (4, 0.9), (8, 0.97)], "c": [(1, 0.1), (8, 0.85), (16, 0.96)]}
    cost = lambda ranks: sum(curves[n].params(r) for n, r in ranks.items())  # noqa: E731
    big = greedy_ranks(curves, table, 10**9)
    assert big == {"a": 4, "b": 8, "c": 16}  # everything fits: the best score everywhere
    budget = cost({"a": 2, "b": 4, "c": 8})
    ranks = greedy_ranks(curves, table, budget)
    assert cost(ranks) <= budget and ranks == {"a": 2, "b": 4, "c": 8}  # common score 0.8 .. 0.85


@pytest.mark.parametrize("ranks", [{"a": 3, "b": 7, "c": 20}, {"a": 1, "b": 1, "c": 1}, {"a": 10, "b": 2, "c": 40}])
def test_log_weights_reproduce_an_allocation(ranks):
    curves = _curves()
    logw = log_weights_for(curves, ranks)
    assert abs(sum(logw.values())) < 1e-9  # centred
    scale = 10 ** -np.mean([np.log10(curves[n].mse[r]) for n, r in ranks.items()])
    bounds = {n: 10 ** v / scale * (1 + 1e-9) for n, v in logw.items()}  # float slack at the breakpoint
    total = sum(c.dense_params for c in curves.values())
    got = ranks_for_bound(curves, bounds, total).ranks
    assert got == ranks


@pytest.mark.parametrize(("max_rank", "expected"), [(236, [1, 2, 4, 8, 16, 32, 64, 118]), (7, [1, 2, 4]), (1, [1]), (2, [1]), (0, [])])
def test_probe_ranks_are_powers_of_two_and_half(max_rank, expected):
    assert probe_ranks(max_rank) == expected


@pytest.mark.parametrize(("max_rank", "multiple", "min_rank", "expected"),
                         [(236, 8, 1, [8, 16, 32, 64, 112]), (236, 8, 20, [24, 32, 64, 112]), (12, 8, 1, [8]),
                          (7, 8, 1, []), (60, 4, 1, [4, 8, 16, 28])])
def test_probe_ranks_lie_on_the_rank_grid(max_rank, multiple, min_rank, expected):
    got = probe_ranks(max_rank, multiple, min_rank)
    assert got == expected
    assert all(r % multiple == 0 and min_rank <= r <= max_rank for r in got)


def _table():
    return {"a": [(1, 0.2), (2, 0.8), (4, 0.95)], "b": [(1, 0.5), (4, 0.9), (8, 0.97)], "c": [(1, 0.1), (8, 0.85), (16, 0.96)]}


@pytest.mark.parametrize("budget", [700, 1500, 3000, 6000, 12000])
def test_additive_ranks_fit_and_are_the_knapsack_optimum(budget):
    curves, table = _curves(), _table()
    cost = lambda ranks: sum(curves[n].params(r) for n, r in ranks.items())  # noqa: E731
    options = {n: [*rows, (curves[n].max_rank, max(v for _, v in rows))] for n, rows in table.items()}
    score = lambda ranks: sum(dict(options[n])[r] for n, r in ranks.items())  # noqa: E731
    ranks = additive_ranks(curves, table, budget)
    assert cost(ranks) <= budget
    feasible = [dict(zip(options, combo)) for combo in itertools.product(*([r for r, _ in o] for o in options.values()))]
    feasible = [f for f in feasible if cost(f) <= budget]
    assert score(ranks) == pytest.approx(max(score(f) for f in feasible))  # the exact optimum (brute force)


def test_additive_ranks_maximize_the_sum_where_greedy_maximizes_the_minimum():
    curves = _curves()
    # b gains much from rank 8, a little from rank 2: the sum says spend on b, a common score says on a
    table = {"a": [(1, 0.5), (2, 0.6)], "b": [(1, 0.55), (8, 0.99)], "c": [(1, 0.9), (2, 0.9)]}
    cost = lambda ranks: sum(curves[n].params(r) for n, r in ranks.items())  # noqa: E731
    budget = cost({"a": 1, "b": 8, "c": 1})
    assert cost({"a": 2, "b": 8, "c": 1}) > budget
    assert additive_ranks(curves, table, budget) == {"a": 1, "b": 8, "c": 1}  # scores sum to 2.39
    assert greedy_ranks(curves, table, budget) == {"a": 2, "b": 1, "c": 1}  # 2.05, its minimum 0.55 is higher
    assert additive_ranks(curves, table, 10) == {"a": 1, "b": 1, "c": 1}  # nothing fits: the smallest ranks


def _proxy_case(model):
    """Curves, factors and a counting metric (minus the relative output error on fixed inputs) of ``model``."""
    import torch
    from torch import nn

    from ranksearch.core._spectra import spectra
    from ranksearch.core._surgery import find_layers, layer_factors

    x = torch.randn(64, model[0].in_features, generator=torch.Generator().manual_seed(0))
    ref = model(x).detach()
    calls = []

    def closeness(m: nn.Module) -> float:
        calls.append(1)
        with torch.no_grad():
            return -float(((m(x) - ref) ** 2).sum() / (ref**2).sum())

    curves = spectra(model)
    layers = find_layers(model).eligible
    factors = layer_factors({n: layers[n] for n in curves}, {n: c.max_rank for n, c in curves.items()})
    return curves, factors, closeness, calls


def test_proxy_sensitivity_spends_its_evaluations_and_fills_the_table():
    """The proxy measures ``evaluations`` points spread over the error range and predicts the rest from
    one monotone fit of metric drop against relative output error."""
    import torch
    from torch import nn

    from ranksearch.core._surgery import factorize
    from ranksearch.study._baselines import proxy_sensitivity, table_size

    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Linear(48, 48) for _ in range(6)), nn.Linear(48, 4)).eval()
    curves, factors, closeness, calls = _proxy_case(model)
    table, points = proxy_sensitivity(model, curves, factors, closeness, 0.0, evaluations=10)
    assert len(calls) == len(points) == 10 < table_size(curves)
    assert {n: [r for r, _ in rows] for n, rows in table.items()} == {n: probe_ranks(c.max_rank) for n, c in curves.items()}
    for n, r in points:  # measured where measured
        assert dict(table[n])[r] == pytest.approx(closeness(factorize(model, {n: r}, factors)))
    measured = [dict(table[n])[r] for n, r in points]
    predicted = sorted((curves[n].mse[r] / curves[n].mse[0], v) for n, rows in table.items() for r, v in rows if (n, r) not in points)
    assert predicted  # the rest is read off the fit: falling as the error grows, within the measured range
    values = [v for _, v in predicted]
    assert all(a >= b - 1e-12 for a, b in zip(values, values[1:]))
    assert min(measured) - 1e-12 <= min(values) and max(values) <= max(measured) + 1e-12


def test_proxy_sensitivity_fits_each_group_of_similar_layers_apart():
    import torch
    from torch import nn

    from ranksearch.study._baselines import proxy_sensitivity

    torch.manual_seed(1)
    model = nn.Sequential(*(nn.Linear(40, 40) for _ in range(6))).eval()
    curves, factors, closeness, calls = _proxy_case(model)
    groups = {n: "early" if int(n) < 3 else "late" for n in curves}
    table, points = proxy_sensitivity(model, curves, factors, closeness, 0.0, evaluations=8, groups=groups)
    assert len(calls) == len(points) == 8
    assert {groups[n] for n, _ in points} == {"early", "late"} and sum(groups[n] == "early" for n, _ in points) == 4
    for g in ("early", "late"):  # each group's predictions fall with the error, within its own measured range
        pred = sorted((curves[n].mse[r] / curves[n].mse[0], v) for n, rows in table.items() if groups[n] == g
                      for r, v in rows if (n, r) not in points)
        own = [dict(table[n])[r] for n, r in points if groups[n] == g]
        values = [v for _, v in pred]
        assert values and all(a >= b - 1e-12 for a, b in zip(values, values[1:]))
        assert min(own) - 1e-12 <= min(values) and max(values) <= max(own) + 1e-12


def test_output_fidelity_is_one_for_the_dense_model_and_falls_with_the_rank():
    """The ``output`` probes' score on a real model (torchvision's MobileNetV3-small, random weights):
    1 for the dense model itself, lower the more a layer is truncated, computed on dict outputs too."""
    import torch
    from torchvision.models import mobilenet_v3_small

    from ranksearch.core._spectra import spectra
    from ranksearch.core._surgery import factorize
    from ranksearch.study._baselines import output_fidelity

    torch.manual_seed(0)
    model = mobilenet_v3_small(num_classes=10).eval()
    batches = [torch.randn(4, 3, 64, 64), torch.randn(3, 3, 64, 64)]
    score = output_fidelity(model, batches)
    assert score(model) == pytest.approx(1.0, abs=1e-9)
    name = "classifier.0"
    top = spectra(model)[name].max_rank
    values = [score(factorize(model, {name: r})) for r in (1, top // 8, top // 2)]
    assert values[0] < values[1] < values[2] < 1.0

    class Wrapped(torch.nn.Module):  # a Hugging Face-like output: a mapping of tensors
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.inner(x), "ids": torch.zeros(len(x), dtype=torch.long)}

    wrapped = Wrapped().eval()
    as_dict = output_fidelity(wrapped, batches)
    assert as_dict(factorize(wrapped, {f"inner.{name}": 1})) == pytest.approx(values[0], rel=1e-6)


def test_isotonic_fit_is_sklearns():
    """The proxy's monotone fit, in numpy: the same values as scikit-learn's IsotonicRegression (clip)."""
    import numpy as np
    from sklearn.isotonic import IsotonicRegression

    from ranksearch.study._baselines import isotonic

    rng = np.random.default_rng(0)
    for trial in range(100):
        n = int(rng.integers(1, 30))
        x = rng.integers(0, 8, n).astype(float) if trial % 2 else rng.normal(size=n)  # ties, then none
        y = rng.normal(size=n) + 0.3 * x
        ours, theirs = isotonic(x, y), IsotonicRegression(increasing=True, out_of_bounds="clip").fit(x, y)
        q = np.linspace(x.min() - 1, x.max() + 1, 40)
        np.testing.assert_allclose([ours(e) for e in q], theirs.predict(q), atol=1e-12)
