"""Hardware-aware ranks: every solver path allocates on the rank grid and lands on the working point.

The spaces' own architectures (random initialization: the spectra are what matters, no training) at
every working point, on the grid auto takes on CUDA and on the tensor-core grid of 8: the CE1 rule, a weighted bound (the baselines and
the weights space), the incumbent projection (sampled trials) and the sensitivity probes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ranksearch import RetrainSettings, RunOptions, SearchSettings, load_space, search
from ranksearch.core._cost import GRID_SHARE, TENSOR_CORE_MULTIPLE, _lands, rank_multiple_for
from ranksearch.core._solver import Curve, log2_ranks, project_ranks, reachable_ratio, solve_ratio
from ranksearch.core._spectra import spectra
from ranksearch.core._surgery import count_params
from ranksearch.study._baselines import log_weights_for, probe_ranks, uniform_ranks

CASES = [(name, wp) for name in ("mnist5k-cnn", "dcase-audio", "image-compression")
         for wp in load_space(name).working_points]


def _random(name: str) -> torch.nn.Module:
    return load_space(name).build_architecture()  # the seeded random initialization, nothing trained


def _check(sol, curves, target: float, total: int, grid: int) -> None:
    ranks = {n: r for n, r in sol.ranks.items() if r is not None}
    assert all(r % grid == 0 for r in ranks.values()), ranks
    params = total - sum(c.dense_params - c.params(ranks[n]) for n, c in curves.items() if n in ranks)
    assert params == sol.params
    assert target - 0.005 <= sol.ratio <= target, (sol.ratio, target)


@pytest.mark.parametrize("name,wp", CASES)
@pytest.mark.parametrize("choice", ["auto", 8])
def test_every_solver_path_is_on_the_auto_grid_and_at_the_working_point(name: str, wp: float, choice) -> None:
    """The grid auto takes on CUDA (on these small models mostly 1: see the share rule), and the grid
    of 8 where its allocations land: the CE1 rule, a baseline's weights, random weights (the weights
    space), random steps from an incumbent (the incumbent space) and the sensitivity probes all use it
    and land within 0.005 below."""
    model = _random(name)
    curves = spectra(model, exclude=load_space(name).exclude)
    total = count_params(model)
    if choice == 8 and not _lands(curves, wp, total, 8, 1):
        pytest.skip(f"the grid of 8 does not land at {wp} on {name}")
    grid = rank_multiple_for(torch.device("cuda"), 1, curves, wp, total) if choice == "auto" else choice
    assert grid in (1, 2, 4, 8)
    if choice == "auto" and grid < TENSOR_CORE_MULTIPLE:  # the coarser grid: a step over 2% of the kept parameters, or it would not land
        coarse = 2 * grid
        widest = max(sum(c.shape) for c in curves.values())
        assert coarse * widest > GRID_SHARE * wp * total or not _lands(curves, wp, total, coarse, 1)
    _check(solve_ratio(curves, wp, total, None, grid), curves, wp, total, grid)  # the CE1 rule
    fixed = total - sum(c.dense_params for c in curves.values())
    logw = log_weights_for(curves, uniform_ranks(curves, math.floor(wp * total) - fixed))  # a baseline's weights
    _check(solve_ratio(curves, wp, total, {n: 10.0**v for n, v in logw.items()}, grid), curves, wp, total, grid)
    rng = np.random.default_rng(0)
    base = log2_ranks(curves, solve_ratio(curves, wp, total, None, grid).ranks)
    for _ in range(5):  # weights-space trials and incumbent-space trials
        _check(solve_ratio(curves, wp, total, {n: 10.0 ** rng.uniform(-3, 3) for n in curves}, grid), curves, wp, total, grid)
        targets = {n: v + rng.normal(0, 0.3) for n, v in base.items()}
        _check(project_ranks(curves, targets, wp, total, grid), curves, wp, total, grid)
    for c in curves.values():  # the sensitivity probes
        assert all(r % grid == 0 and r <= c.max_rank for r in probe_ranks(c.max_rank, grid))


def test_auto_is_the_space_setting_on_cpu_and_eight_on_cuda() -> None:
    model = _random("mnist5k-cnn")
    curves = spectra(model)
    total = count_params(model)
    assert rank_multiple_for(torch.device("cpu"), 2, curves, 0.25, total) == 2
    assert rank_multiple_for(torch.device("cuda"), 1) == TENSOR_CORE_MULTIPLE  # nothing known of the model
    wide = _wide(40, (512, 512))
    assert rank_multiple_for(torch.device("cuda"), 1, wide, 0.25, sum(c.dense_params for c in wide.values())) == TENSOR_CORE_MULTIPLE


def _wide(layers: int, shape: tuple[int, int]) -> dict[str, Curve]:
    rng = np.random.default_rng(0)
    return {f"l{i}": Curve(shape, np.sort(rng.uniform(0.1, 1.0, min(shape)))[::-1]) for i in range(layers)}


def test_auto_halves_the_cuda_grid_where_one_step_is_a_large_share_of_the_model() -> None:
    """mnist5k-cnn: one step of 8 ranks in its first FC (8 x 3,392 weights) is 12% of what the model keeps
    at 0.25 and 62% at 0.05: auto takes 1 though the grid of 8 lands there. 40 layers of 512 x 512 (a
    ResNet-sized model): a step of 8 is under 2% of what it keeps at 0.1, and the grid stays 8."""
    model = _random("mnist5k-cnn")
    curves, total = spectra(model), count_params(model)
    assert _lands(curves, 0.25, total, 8, 1)  # not the landing: the share
    for wp in (0.03, 0.05, 0.1, 0.25):
        assert rank_multiple_for(torch.device("cuda"), 1, curves, wp, total) == 1
    wide = _wide(40, (512, 512))
    total = sum(c.dense_params for c in wide.values())
    for wp in (0.1, 0.25, 0.5):
        assert 8 * 1024 <= GRID_SHARE * wp * total
        assert rank_multiple_for(torch.device("cuda"), 1, wide, wp, total) == TENSOR_CORE_MULTIPLE
    assert rank_multiple_for(torch.device("cuda"), 1, wide, 0.01, total) < TENSOR_CORE_MULTIPLE  # 8 x 1024 is 4% there


def test_auto_halves_the_cuda_grid_until_the_allocations_land(caplog) -> None:
    """100 layers of 64 x 64: one step of 8 is 1.25% of what the model keeps at 0.2, but rank 8 in every
    layer keeps 0.25 of it: auto halves to 4 (0.125), where the CE1 rule and random steps land, and says why."""
    curves = _wide(100, (64, 64))
    total = sum(c.dense_params for c in curves.values())
    assert reachable_ratio(curves, total, 8) == 0.25
    with caplog.at_level("WARNING", logger="ranksearch.core._cost"):
        grid = rank_multiple_for(torch.device("cuda"), 1, curves, 0.2, total)
    assert grid == 4 and "do not all land" in caplog.text and "widest" not in caplog.text
    base = log2_ranks(curves, solve_ratio(curves, 0.2, total, None, grid).ranks)
    rng = np.random.default_rng(1)
    for _ in range(20):
        _check(project_ranks(curves, {n: v + rng.normal(0, 0.5) for n, v in base.items()}, 0.2, total, grid), curves, 0.2, total, grid)


def test_a_search_allocates_every_trial_and_probe_on_the_grid(dense_and_task) -> None:
    """On the tiny model (too coarse for the 0.005 band: one rank step of its first Linear is 3% of it)
    every trial, enqueued or sampled, and every sensitivity probe uses multiples of 2, never above the target."""
    model, task = dense_and_task
    settings = SearchSettings(0.3, retrain=RetrainSettings(epochs=1, batch_size=32), rank_multiple=2, seed=0)
    res = search(model, settings, task=task, run=RunOptions(n_trials=10))
    trials = [t for t in res.study.trials if "ranks" in t.user_attrs]
    assert {t.user_attrs["method"] for t in trials} >= {"seed_rule", "uniform", "sensitivity", "sensitivity_sum", "searched"}
    for t in trials:
        assert all(r % 2 == 0 for r in t.user_attrs["ranks"].values()), t.user_attrs["ranks"]
        assert t.user_attrs["ratio"] <= 0.3
    assert res.sensitivity and all(r % 2 == 0 for rows in res.sensitivity.values() for r, _ in rows)
    assert res.config.search["settings"]["rank_multiple"] == 2
    # the cost model: MACs per layer and in total for the task's input shape, in the config and the summary
    assert res.config.cost["input_shape"] == [1, 8, 8]
    assert res.config.cost["macs_after"] < res.config.cost["macs_before"]
    for _name, layer in res.config.layers.items():
        assert layer.macs_after == layer.rank * sum(layer.matrix) * (layer.macs_before // (layer.matrix[0] * layer.matrix[1]))


def test_layers_kept_dense_say_why() -> None:
    """Depthwise, excluded, and too small for any rank of the grid to save parameters and MACs."""
    from torch import nn

    from ranksearch import solve

    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1, groups=32),
                        nn.Conv2d(32, 64, 3, padding=1), nn.Flatten(), nn.Linear(64 * 16, 12), nn.Linear(12, 10))
    cfg = solve(net, 0.5, rank_multiple=8, exclude={"0": "stem"}, input_shape=(3, 4, 4))
    assert set(cfg.ranks) == {"2", "4"}
    assert cfg.dense["0"] == "excluded: stem"
    assert cfg.dense["1"].startswith("depthwise convolution")
    assert cfg.dense["5"].startswith("no rank on the grid (multiples of 8, at least 1)")  # 10x12: rank 5 at most saves
    assert cfg.cost["input_shape"] == [3, 4, 4] and cfg.cost["macs_before"] == sum(
        m.weight.numel() * p for m, p in zip([net[0], net[1], net[2], net[4], net[5]], [16, 16, 16, 1, 1]))
    for _name, layer in cfg.layers.items():
        assert layer.macs_after < layer.macs_before and layer.params_after < layer.params_before


@pytest.mark.parametrize("multiple, top", [(1, 11), (4, 8)])
def test_a_layer_the_allocation_keeps_dense_names_its_largest_saving_rank(multiple: int, top: int) -> None:
    """The reason says which rank was the most the grid allows and what error it would leave."""
    from torch import nn

    from ranksearch.core._allocation import dense_reasons
    from ranksearch.core._solver import Solution

    net = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10))  # 30x20: 600 / 50 = 12, so rank 11 at most saves
    curves = spectra(net)
    sol = Solution(ranks={"0": None, "2": 2}, bound=0.0, params=600 + 2 * 40 + 40, original_params=count_params(net))
    reasons = dense_reasons(net, curves, sol, multiple, 1)
    assert set(reasons) == {"0"}
    assert reasons["0"].startswith(f"kept dense by the allocation: its largest saving rank on the grid, {top} of 20, ")
    assert f"MSE of {curves['0'].mse[top]:.3g} per weight" in reasons["0"]
