"""Tests of ranksearch.core._solver against numpy SVD and brute force over every candidate bound."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ranksearch.core._solver import Curve, ranks_for_bound, reachable_ratio, solve_ratio

# ---------------------------------------------------------------------------------------------------
# helpers computing expectations independently of the solver


def _matrix(shape: tuple[int, int], seed: int, rank: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m, n = shape
    if rank is None:
        return rng.standard_normal(shape)
    return rng.standard_normal((m, rank)) @ rng.standard_normal((rank, n))


def _curve(shape: tuple[int, int], seed: int, decay: float = 0.0) -> Curve:
    w = _matrix(shape, seed)
    if decay:  # steeper spectra: scale columns
        w = w * np.exp(-decay * np.arange(shape[1]))[None, :]
    return Curve(shape, np.linalg.svd(w, compute_uv=False))


def _allowed(shape: tuple[int, int], multiple: int = 1, min_rank: int = 1) -> list[int]:
    m, n = shape
    return [r for r in range(1, min(m, n) + 1) if r * (m + n) < m * n and r % multiple == 0 and r >= min_rank]


def _mse(curve: Curve, r: int) -> float:
    s = curve.singular_values
    return float(np.sum(s[r:] ** 2) / (curve.shape[0] * curve.shape[1]))


def _pick(curve: Curve, bound: float, multiple: int = 1, min_rank: int = 1) -> int | None:
    """Smallest allowed rank whose MSE is within ``bound``; None (dense) when none is."""
    return next((r for r in _allowed(curve.shape, multiple, min_rank) if _mse(curve, r) <= bound), None)


def _cost(curves: dict[str, Curve], ranks: dict[str, int | None], fixed: int) -> int:
    total = fixed
    for name, c in curves.items():
        m, n = c.shape
        r = ranks[name]
        total += m * n if r is None else r * (m + n)
    return total


def _key(r: int | None) -> float:
    return math.inf if r is None else r


CURVES = {
    "a": _curve((20, 30), 0),
    "b": _curve((16, 48), 1, decay=0.05),
    "c": _curve((40, 12), 2, decay=0.1),
    "tiny": Curve((2, 2), np.array([2.0, 1.0])),  # no rank saves anything: always dense
}
FIXED = 123  # biases, norms, ... of the rest of the model
TOTAL = FIXED + sum(c.dense_params for c in CURVES.values())


# ---------------------------------------------------------------------------------------------------
# Curve


@pytest.mark.parametrize(
    "shape, seed, rank",
    [((7, 11), 0, None), ((11, 7), 1, None), ((9, 9), 2, None), ((1, 6), 3, None), ((6, 1), 4, None),
     ((12, 15), 5, 3), ((25, 8), 6, 1)],
)
def test_curve_mse_equals_direct_truncation_error(shape, seed: int, rank: int | None) -> None:
    w = _matrix(shape, seed, rank)
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    curve = Curve(shape, s)
    assert curve.mse.shape == (min(shape) + 1,)
    for r in range(min(shape) + 1):
        w_r = (u[:, :r] * s[:r]) @ vt[:r]
        direct = np.mean((w - w_r) ** 2)
        assert curve.mse[r] == pytest.approx(direct, rel=1e-9, abs=1e-12 * np.mean(w**2))
    assert curve.mse[0] == pytest.approx(np.mean(w**2), rel=1e-12)
    assert curve.mse[-1] == 0.0


@pytest.mark.parametrize("shape", [(1, 1), (2, 2), (2, 3), (3, 3), (4, 6), (5, 5), (7, 11), (64, 10), (10, 640)])
def test_curve_max_rank_and_params(shape) -> None:
    m, n = shape
    curve = Curve(shape, np.ones(min(shape)))
    saving = [r for r in range(1, min(m, n) + 1) if r * (m + n) < m * n]
    assert curve.max_rank == (max(saving) if saving else 0)
    assert curve.dense_params == m * n
    assert curve.params(None) == m * n
    for r in (1, 3):
        assert curve.params(r) == r * (m + n)


@pytest.mark.parametrize("multiple, min_rank", [(1, 1), (2, 1), (4, 1), (1, 3), (2, 3), (4, 5), (8, 1), (3, 7)])
def test_curve_allowed_ranks(multiple: int, min_rank: int) -> None:
    for curve in CURVES.values():
        assert list(curve.ranks(multiple, min_rank)) == _allowed(curve.shape, multiple, min_rank)


@pytest.mark.parametrize(
    "shape, values, match",
    [
        ((3, 5), [3.0, 2.0], "3 singular values"),
        ((3, 5), [3.0, 2.0, 1.0, 0.5], "3 singular values"),
        ((3, 5), [[3.0, 2.0, 1.0]], "singular values"),
        ((3, 5), [1.0, 2.0, 3.0], "descending"),
        ((3, 5), [3.0, 1.0, 2.0], "descending"),
        ((3, 5), [3.0, 2.0, -1.0], "non-negative"),
    ],
)
def test_curve_validation(shape, values, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Curve(shape, np.array(values))


def test_curve_accepts_ties_and_zeros() -> None:
    curve = Curve((3, 4), np.array([2.0, 2.0, 0.0]))
    np.testing.assert_allclose(curve.mse, [8 / 12, 4 / 12, 0.0, 0.0])


# ---------------------------------------------------------------------------------------------------
# ranks_for_bound


def _bounds() -> list[float]:
    values = sorted({_mse(c, r) for c in CURVES.values() for r in range(min(c.shape) + 1)})
    mids = [(a + b) / 2 for a, b in zip(values, values[1:])]
    return [-1.0, 0.0, *values[::7], *mids[::5], values[-1] * 2]


@pytest.mark.parametrize("multiple, min_rank", [(1, 1), (2, 1), (4, 3)])
def test_ranks_for_bound_picks_smallest_rank_within_bound(multiple: int, min_rank: int) -> None:
    for bound in _bounds():
        sol = ranks_for_bound(CURVES, bound, TOTAL, rank_multiple=multiple, min_rank=min_rank)
        assert set(sol.ranks) == set(CURVES)
        for name, c in CURVES.items():
            r = sol.ranks[name]
            assert r == _pick(c, bound, multiple, min_rank), (name, bound)
            allowed = _allowed(c.shape, multiple, min_rank)
            if r is not None:
                assert r in allowed and c.mse[r] <= bound
                smaller = [a for a in allowed if a < r]
                if smaller:  # minimality: the next smaller allowed rank violates the bound
                    assert c.mse[smaller[-1]] > bound
            else:
                assert all(c.mse[a] > bound for a in allowed)
        assert sol.params == _cost(CURVES, sol.ranks, FIXED)
        assert sol.original_params == TOTAL
        assert sol.ratio == sol.params / TOTAL
        assert sol.bound == bound
    assert ranks_for_bound(CURVES, -1.0, TOTAL).params == TOTAL


def test_ranks_for_bound_per_layer() -> None:
    bounds = {"a": _mse(CURVES["a"], 5), "c": _mse(CURVES["c"], 2) * 1.0000001}
    sol = ranks_for_bound(CURVES, bounds, TOTAL)
    assert sol.ranks["a"] == _pick(CURVES["a"], bounds["a"]) == 5
    assert sol.ranks["c"] == _pick(CURVES["c"], bounds["c"]) == 2
    assert sol.ranks["b"] is None and sol.ranks["tiny"] is None  # not named: dense
    assert sol.params == _cost(CURVES, sol.ranks, FIXED)


@pytest.mark.parametrize(
    "bound, match", [({"zz": 0.1}, "zz"), (float("nan"), "number"), ({"a": float("nan")}, "number")]
)
def test_ranks_for_bound_errors(bound, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ranks_for_bound(CURVES, bound, TOTAL)


# ---------------------------------------------------------------------------------------------------
# solve_ratio


def _family(curves, fixed, weights=None, multiple=1, min_rank=1):
    """Every (bound, ranks, cost) of the family 'layer l keeps error <= bound * w_l', by brute force."""
    w = {n: 1.0 if weights is None else weights.get(n, 1.0) for n in curves}
    cands = {0.0}
    for n, c in curves.items():
        for r in _allowed(c.shape, multiple, min_rank):
            cands.add(_mse(c, r) / w[n])
    out = []
    for b in sorted(cands):
        ranks = {n: _pick(c, b * w[n], multiple, min_rank) for n, c in curves.items()}
        out.append((b, ranks, _cost(curves, ranks, fixed)))
    return out


def _best(curves, fixed, total, target, weights=None, multiple=1, min_rank=1):
    """The largest model of the family whose ratio is <= target."""
    fits = [(cost, ranks) for _, ranks, cost in _family(curves, fixed, weights, multiple, min_rank)
            if cost / total <= target]
    return max(fits, key=lambda t: t[0])


def _ratios(curves=CURVES, total=TOTAL, multiple=1, min_rank=1, n=37) -> np.ndarray:
    lo = reachable_ratio(curves, total, multiple, min_rank)
    return np.unique(np.concatenate([np.linspace(lo + 1e-9, 1.0, n), [1.0]]))


@pytest.mark.parametrize("multiple, min_rank", [(1, 1), (2, 1), (4, 4)])
def test_solve_ratio_without_fill_is_largest_fitting_member_of_family(multiple: int, min_rank: int) -> None:
    for target in _ratios(multiple=multiple, min_rank=min_rank):
        sol = solve_ratio(CURVES, float(target), TOTAL, rank_multiple=multiple, min_rank=min_rank, fill=False)
        assert sol.ratio <= target
        assert sol.params == _cost(CURVES, sol.ranks, FIXED)
        best_cost, best_ranks = _best(CURVES, FIXED, TOTAL, target, multiple=multiple, min_rank=min_rank)
        assert sol.params == best_cost, target
        assert sol.ranks == best_ranks, target
        # the solution is exactly the family member at its own bound
        assert sol.ranks == ranks_for_bound(CURVES, sol.bound, TOTAL, multiple, min_rank).ranks
        for _name, r in sol.ranks.items():
            if r is not None:
                assert r % multiple == 0 and r >= min_rank


def _next_choice(curve: Curve, r: int | None, multiple: int, min_rank: int) -> int | None | str:
    """The next allowed choice after ``r`` (a larger rank, then dense); 'none' when ``r`` is dense."""
    if r is None:
        return "none"
    larger = [a for a in _allowed(curve.shape, multiple, min_rank) if a > r]
    return larger[0] if larger else None


@pytest.mark.parametrize("multiple, min_rank", [(1, 1), (2, 1), (4, 4)])
@pytest.mark.parametrize("weights", [None, {"a": 4.0, "c": 0.5}])
def test_solve_ratio_fill_spends_the_budget_left(multiple: int, min_rank: int, weights) -> None:
    for target in _ratios(multiple=multiple, min_rank=min_rank):
        base = solve_ratio(CURVES, float(target), TOTAL, weights, multiple, min_rank, fill=False)
        sol = solve_ratio(CURVES, float(target), TOTAL, weights, multiple, min_rank)  # fill is the default
        assert sol.ratio <= target
        assert sol.params == _cost(CURVES, sol.ranks, FIXED)
        assert sol.params >= base.params
        assert sol.bound == base.bound
        for name, c in CURVES.items():
            r = sol.ranks[name]  # (exchanges may lower a layer below the bound's rank to spend more)
            if r is not None:
                assert r in _allowed(c.shape, multiple, min_rank)
            # no single further step fits the target any more
            nxt = _next_choice(c, r, multiple, min_rank)
            if nxt != "none":
                extra = c.params(nxt) - c.params(r)
                assert (sol.params + extra) / TOTAL > target * (1 + 1e-12), (target, name, r, nxt)


def test_fill_takes_the_best_error_reduction_per_weight() -> None:
    # two 10 x 40 layers (rank step 50 weights); one step of budget left. Layer "y" gains more per weight.
    x = Curve((10, 40), np.array([5.0, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]))
    y = Curve((10, 40), np.array([5.0, 4.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]))
    curves = {"x": x, "y": y}
    total = 800
    base = solve_ratio(curves, 100 / 800, total, fill=False)
    assert base.ranks == {"x": 1, "y": 1}
    sol = solve_ratio(curves, 150 / 800, total)
    assert sol.ranks == {"x": 1, "y": 2}
    # with y's errors weighted down 100x its step gains less than x's
    sol = solve_ratio(curves, 150 / 800, total, weights={"y": 100.0})
    assert sol.ranks == {"x": 2, "y": 1}


def test_solve_ratio_no_smaller_candidate_bound_fits() -> None:
    for target in _ratios(n=23):
        for fill in (False, True):
            sol = solve_ratio(CURVES, float(target), TOTAL, fill=fill)
            for b, _, cost in _family(CURVES, FIXED):
                if b < sol.bound * (1 - 1e-9):  # a smaller breakpoint (not the same one rounded)
                    assert cost / TOTAL > target, (target, b, sol.bound)


def test_solve_ratio_monotone_in_target() -> None:
    prev = None
    for target in _ratios(n=61):
        sol = solve_ratio(CURVES, float(target), TOTAL, fill=False)
        if prev is not None:
            assert sol.params >= prev.params
            assert sol.bound <= prev.bound
            for name in CURVES:
                assert _key(sol.ranks[name]) >= _key(prev.ranks[name]), (target, name)
        prev = sol


def test_solve_ratio_full_target() -> None:
    sol = solve_ratio(CURVES, 1.0, TOTAL, fill=False)
    assert sol.params == _best(CURVES, FIXED, TOTAL, 1.0)[0]
    assert solve_ratio(CURVES, 1.0, TOTAL).params <= TOTAL


def test_layers_that_cannot_save_stay_dense() -> None:
    for target in _ratios(n=11):
        assert solve_ratio(CURVES, float(target), TOTAL).ranks["tiny"] is None
    # min_rank above a layer's max_rank: that layer stays dense too
    c = CURVES["c"]  # 40 x 12: max rank 9
    sol = solve_ratio({"c": c}, 1.0, c.dense_params, min_rank=10)
    assert sol.ranks["c"] is None and sol.params == c.dense_params
    with pytest.raises(ValueError, match="unreachable"):
        solve_ratio({"c": c}, 0.99, c.dense_params, min_rank=10)


@pytest.mark.parametrize("weights", [{"a": 4.0}, {"b": 8.0}, {"c": 16.0, "a": 0.5}, {"a": 0.25, "b": 0.5, "c": 2.0}])
def test_weighted_solve_matches_brute_force(weights) -> None:
    for target in _ratios(n=19):
        sol = solve_ratio(CURVES, float(target), TOTAL, weights=weights, fill=False)
        assert sol.ratio <= target
        best_cost, best_ranks = _best(CURVES, FIXED, TOTAL, target, weights=weights)
        assert (sol.params, sol.ranks) == (best_cost, best_ranks)
        per_layer = {n: sol.bound * weights.get(n, 1.0) for n in CURVES}
        assert ranks_for_bound(CURVES, per_layer, TOTAL).ranks == sol.ranks


@pytest.mark.parametrize("layer", ["a", "b", "c"])
def test_larger_weight_gives_smaller_rank(layer: str) -> None:
    strictly = 0
    for target in _ratios(n=31):
        plain = solve_ratio(CURVES, float(target), TOTAL, fill=False)
        up = solve_ratio(CURVES, float(target), TOTAL, weights={layer: 8.0}, fill=False)
        down = solve_ratio(CURVES, float(target), TOTAL, weights={layer: 0.125}, fill=False)
        assert _key(up.ranks[layer]) <= _key(plain.ranks[layer]) <= _key(down.ranks[layer])
        strictly += _key(up.ranks[layer]) < _key(down.ranks[layer])
    assert strictly > 0


@pytest.mark.parametrize("weights", [{"a": 0.0}, {"a": -1.0}, {"b": float("nan")}, {"c": float("inf")}])
def test_bad_weights(weights) -> None:
    with pytest.raises(ValueError, match="weights"):
        solve_ratio(CURVES, 0.5, TOTAL, weights=weights)


def test_unreachable_target_names_smallest_ratio() -> None:
    smallest = FIXED + sum(
        (_allowed(c.shape)[0] * sum(c.shape)) if _allowed(c.shape) else c.dense_params for c in CURVES.values()
    )
    lo = reachable_ratio(CURVES, TOTAL)
    assert lo == pytest.approx(smallest / TOTAL, rel=1e-15)
    for target in (lo * 0.999, lo / 2, 1e-6):
        with pytest.raises(ValueError, match="unreachable") as info:
            solve_ratio(CURVES, target, TOTAL)
        assert f"{lo:.4f}" in str(info.value)
    sol = solve_ratio(CURVES, lo * (1 + 1e-12), TOTAL)
    assert sol.params == smallest
    # the suggestion in the message is itself reachable
    suggested = math.ceil(lo * 1e4) / 1e4
    assert solve_ratio(CURVES, suggested, TOTAL).ratio <= suggested


@pytest.mark.parametrize("multiple, min_rank", [(2, 1), (4, 3), (1, 5)])
def test_reachable_ratio_respects_rank_constraints(multiple: int, min_rank: int) -> None:
    smallest = FIXED
    for c in CURVES.values():
        allowed = _allowed(c.shape, multiple, min_rank)
        smallest += allowed[0] * sum(c.shape) if allowed else c.dense_params
    assert reachable_ratio(CURVES, TOTAL, multiple, min_rank) == pytest.approx(smallest / TOTAL, rel=1e-15)


def test_target_equal_to_reachable_ratio_is_reachable() -> None:
    # rank 1 keeps 37 + 16 = 53 of 97 weights, and (53 / 97) * 97 rounds below 53 in floating point:
    # the advertised smallest ratio must still be accepted
    curves = {"a": Curve((6, 10), np.linspace(3.0, 1.0, 6))}
    total = 37 + 60
    lo = reachable_ratio(curves, total)
    assert lo == 53 / 97
    sol = solve_ratio(curves, lo, total)
    assert sol.ranks == {"a": 1} and sol.ratio <= lo


def test_achieved_ratio_never_exceeds_target_by_rounding() -> None:
    # the rank-1 model keeps exactly 36 / 80 = 0.45; a target one ulp below 0.45 must not accept it
    curves = {"a": Curve((6, 10), np.linspace(3.0, 1.0, 6))}
    total = 20 + 60
    target = float(np.nextafter(0.45, 0.0))
    try:
        sol = solve_ratio(curves, target, total)
    except ValueError as e:
        assert "unreachable" in str(e)
    else:
        assert sol.ratio <= target


@pytest.mark.parametrize("target", [0.0, -0.1, 1.0000001, 1.5, float("nan"), float("inf"), "0.5", None])
def test_target_outside_range(target) -> None:
    with pytest.raises(ValueError, match="target ratio"):
        solve_ratio(CURVES, target, TOTAL)


@pytest.mark.parametrize("kwargs", [{"rank_multiple": 0}, {"min_rank": 0}, {"rank_multiple": -2}])
def test_bad_rank_constraints(kwargs) -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        solve_ratio(CURVES, 0.5, TOTAL, **kwargs)
    with pytest.raises(ValueError, match="must be >= 1"):
        ranks_for_bound(CURVES, 0.1, TOTAL, **kwargs)


@pytest.mark.parametrize("fn", ["solve_ratio", "ranks_for_bound", "reachable_ratio"])
def test_total_params_smaller_than_eligible_weights(fn: str) -> None:
    eligible = sum(c.dense_params for c in CURVES.values())
    with pytest.raises(ValueError, match="total_params"):
        if fn == "solve_ratio":
            solve_ratio(CURVES, 0.5, eligible - 1)
        elif fn == "ranks_for_bound":
            ranks_for_bound(CURVES, 0.1, eligible - 1)
        else:
            reachable_ratio(CURVES, eligible - 1)
    # exactly the eligible weights (no other parameter) is fine
    assert solve_ratio(CURVES, 0.9, eligible).original_params == eligible


# ---------------------------------------------------------------------------------------------------
# project_ranks: proportions of ranks onto the budget


@pytest.mark.parametrize("target", [0.35, 0.5, 0.8])
@pytest.mark.parametrize("multiple, min_rank", [(1, 1), (2, 1), (1, 3)])
def test_project_ranks_fills_the_budget_and_keeps_the_grid(target: float, multiple: int, min_rank: int) -> None:
    from ranksearch.core._solver import project_ranks

    rng = np.random.default_rng(int(target * 100) + multiple + min_rank)
    targets = {n: float(rng.uniform(0, 4)) for n in CURVES}
    sol = project_ranks(CURVES, targets, target, TOTAL, multiple, min_rank)
    assert sol.params == _cost(CURVES, sol.ranks, FIXED) and sol.ratio <= target
    for n, r in sol.ranks.items():
        assert r is None or r in _allowed(CURVES[n].shape, multiple, min_rank)
    # no single allowed rank step (or a step to dense) still fits: the budget is spent
    budget = math.floor(target * TOTAL)
    for n, c in CURVES.items():
        r = sol.ranks[n]
        if r is None:
            continue
        higher = [x for x in _allowed(c.shape, multiple, min_rank) if x > r]
        nxt = higher[0] * sum(c.shape) if higher else c.dense_params
        assert sol.params - r * sum(c.shape) + nxt > budget


def test_project_ranks_is_the_identity_on_a_full_allocation() -> None:
    from ranksearch.core._solver import log2_ranks, project_ranks

    for target in (0.3, 0.5, 0.7):
        ranks = solve_ratio(CURVES, target, TOTAL).ranks
        again = project_ranks(CURVES, log2_ranks(CURVES, ranks), target, TOTAL)
        assert again.ranks == ranks


def test_project_ranks_a_step_moves_budget_towards_its_layer() -> None:
    """Layers whose rank steps are smaller than the band (on CURVES one rank is 3% of the model, and
    only the CE1 allocation lands within 0.005: the projection snaps back to it, see the next test)."""
    from ranksearch.core._solver import log2_ranks, project_ranks

    curves = {"a": _curve((200, 300), 0, decay=0.03), "b": _curve((160, 480), 1, decay=0.05), "c": _curve((400, 120), 2, decay=0.1)}
    total = sum(c.dense_params for c in curves.values())
    base = solve_ratio(curves, 0.4, total).ranks
    logs = log2_ranks(curves, base)
    for layer in ("a", "b", "c"):
        up = project_ranks(curves, {**logs, layer: logs[layer] + 1.0}, 0.4, total).ranks
        down = project_ranks(curves, {**logs, layer: logs[layer] - 1.0}, 0.4, total).ranks
        assert _key(up[layer]) > _key(base[layer]) > _key(down[layer])
        others = [n for n in ("a", "b", "c") if n != layer]
        assert all(_key(up[n]) <= _key(base[n]) <= _key(down[n]) for n in others)


def test_project_ranks_lands_in_the_band_where_one_rank_is_wider_than_it() -> None:
    """On CURVES a rank of any layer costs more than 0.005 of the model: a step that the greedy fill
    leaves short of the band is exchanged into it, nearest to the targets among the allocations that land."""
    from ranksearch.core._solver import BAND, log2_ranks, project_ranks

    base = solve_ratio(CURVES, 0.4, TOTAL)
    assert 0.4 - BAND <= base.ratio <= 0.4
    logs = log2_ranks(CURVES, base.ranks)
    for layer in ("a", "b", "c"):
        for d in (-1.0, -0.5, 0.5, 1.0):
            got = project_ranks(CURVES, {**logs, layer: logs[layer] + d}, 0.4, TOTAL)
            assert 0.4 - BAND <= got.ratio <= 0.4, (layer, d, got)


def test_project_ranks_scales_proportions_together() -> None:
    """Targets one log2 unit apart keep (about) a factor of two between the ranks, at any budget."""
    from ranksearch.core._solver import project_ranks

    curves = {"x": _curve((200, 300), 7), "y": _curve((200, 300), 8)}
    total = sum(c.dense_params for c in curves.values())
    for target in (0.1, 0.2, 0.3):
        r = project_ranks(curves, {"x": 3.0, "y": 4.0}, target, total).ranks
        assert 1.9 <= r["y"] / r["x"] <= 2.1  # type: ignore[operator]


def test_project_ranks_errors() -> None:
    from ranksearch.core._solver import project_ranks

    with pytest.raises(ValueError, match="unreachable"):
        project_ranks(CURVES, {}, 0.01, TOTAL)
    with pytest.raises(ValueError, match="finite"):
        project_ranks(CURVES, {"a": float("nan")}, 0.5, TOTAL)
    with pytest.raises(ValueError, match="target ratio"):
        project_ranks(CURVES, {}, 1.5, TOTAL)
