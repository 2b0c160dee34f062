"""Tests of ranksearch.core._decompose against float64 numpy SVD."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ranksearch.core import _decompose as decompose
from ranksearch.core._decompose import Factors, factorize, singular_values

TOL = 1e-3  # accuracy contract: |s - s_ref| <= TOL * s_max


def _geometric(m: int, n: int, low: float, seed: int = 0) -> np.ndarray:
    """Matrix with singular values geometrically spaced from 1 down to ``low``."""
    rng = np.random.default_rng(seed)
    r = min(m, n)
    u, _ = np.linalg.qr(rng.standard_normal((m, r)))
    v, _ = np.linalg.qr(rng.standard_normal((n, r)))
    return (u * np.logspace(0, np.log10(low), r)) @ v.T


def _cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "random_wide": rng.standard_normal((40, 70)),
        "random_tall": rng.standard_normal((90, 30)),
        "square": rng.standard_normal((33, 33)),
        "geometric_wide": _geometric(50, 80, 1e-12),
        "geometric_tall": _geometric(120, 48, 1e-12),
        "rank_deficient": rng.standard_normal((60, 4)) @ rng.standard_normal((4, 90)),
        "rank_one_tall": rng.standard_normal((70, 1)) @ rng.standard_normal((1, 20)),
        "repeated_columns": np.repeat(rng.standard_normal((30, 8)), 3, axis=1),
        "one_row": rng.standard_normal((1, 25)),
        "one_col": rng.standard_normal((25, 1)),
        "one_by_one": np.array([[-2.5]]),
        "zeros": np.zeros((6, 9)),
        "tiny_scale": rng.standard_normal((20, 30)) * 1e-30,
        "huge_scale": rng.standard_normal((20, 30)) * 1e30,
    }


CASES = _cases()


def _reference(w: torch.Tensor) -> np.ndarray:
    return np.linalg.svd(w.double().numpy(), compute_uv=False)


@pytest.mark.parametrize("name", sorted(CASES))
def test_singular_values_match_numpy(name: str) -> None:
    w = torch.tensor(CASES[name], dtype=torch.float32)
    ref = _reference(w)
    s = singular_values(w)
    assert isinstance(s, np.ndarray) and s.dtype == np.float64
    assert s.shape == (min(w.shape),)
    assert np.all(np.diff(s) <= 0)
    assert np.all(s >= 0)
    assert np.max(np.abs(s - ref)) <= TOL * max(ref[0], np.finfo(np.float64).tiny)
    if ref[0] > 0:  # relative error ~ eps64 * (s_max / s)^2: small for s >= 1e-4 * s_max
        big = ref >= 1e-4 * ref[0]
        np.testing.assert_allclose(s[big], ref[big], rtol=1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_factors_reconstruct_and_tail(name: str) -> None:
    w = torch.tensor(CASES[name], dtype=torch.float32)
    ref = _reference(w)
    f = factorize(w)
    k = min(w.shape)
    m, n = w.shape
    assert f.u.shape == (m, k) and f.s.shape == (k,) and f.vh.shape == (k, n)
    assert f.u.dtype == f.s.dtype == f.vh.dtype == torch.float32
    assert torch.all(f.s[:-1] >= f.s[1:])
    np.testing.assert_allclose(f.s.double().numpy(), ref, atol=TOL * ref[0] if ref[0] else 0, rtol=1e-5)
    g, h = f.pair(k)
    scale = float(w.abs().max()) or 1.0
    torch.testing.assert_close(g @ h, w, rtol=1e-5, atol=1e-5 * scale)
    total = float((ref**2).sum())
    w64 = w.double()
    for r in sorted({1, 2, k // 4, k // 2, k - 2, k - 1} & set(range(1, k))):
        g, h = f.pair(r)
        err2 = float(((w64 - g.double() @ h.double()) ** 2).sum())
        tail = float((ref[r:] ** 2).sum())
        if tail > 1e-6 * total:  # tail well above float32 rounding of the factors
            assert abs(err2 - tail) <= 1e-4 * tail, (r, err2, tail)
        else:
            assert abs(err2 - tail) <= 1e-10 * total + 1e-300, (r, err2, tail)


def test_max_rank_truncates_consistently() -> None:
    w = torch.tensor(CASES["random_wide"], dtype=torch.float32)
    full, part = factorize(w), factorize(w, max_rank=7)
    assert part.u.shape == (40, 7) and part.s.shape == (7,) and part.vh.shape == (7, 70)
    torch.testing.assert_close(part.s, full.s[:7])
    g_full, h_full = full.pair(7)
    g_part, h_part = part.pair(7)
    torch.testing.assert_close(g_part @ h_part, g_full @ h_full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(12, 30), (30, 12)])
def test_pair_shapes_and_balanced_split(shape: tuple[int, int]) -> None:
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    f = factorize(w)
    for r in (1, 5, 12):
        g, h = f.pair(r)
        assert g.shape == (shape[0], r) and h.shape == (r, shape[1])
        torch.testing.assert_close(g.norm(dim=0), h.norm(dim=1), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g.norm(dim=0), f.s[:r].sqrt(), rtol=1e-5, atol=1e-6)


def test_orthonormal_factors() -> None:
    w = torch.tensor(CASES["geometric_tall"][:, :40], dtype=torch.float32)
    f = factorize(w, max_rank=10)  # top values well separated: vectors accurate
    eye = torch.eye(10)
    torch.testing.assert_close(f.u.T @ f.u, eye, rtol=0, atol=1e-5)
    torch.testing.assert_close(f.vh @ f.vh.T, eye, rtol=0, atol=1e-5)


def test_svd_fallback_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decompose, "ABS_TOL", 0.0)
    for name in ("random_tall", "geometric_wide", "one_row"):
        w = torch.tensor(CASES[name], dtype=torch.float32)
        ref = _reference(w)
        np.testing.assert_allclose(singular_values(w), ref, rtol=1e-9, atol=1e-12 * ref[0])
        f = factorize(w, max_rank=1)
        assert isinstance(f, Factors)
        g, h = f.pair(1)
        assert g.shape == (w.shape[0], 1) and h.shape == (1, w.shape[1])
        np.testing.assert_allclose(float(f.s[0]), ref[0], rtol=1e-6)


def test_other_dtypes_and_grad() -> None:
    w = torch.randn(8, 5, dtype=torch.float64, requires_grad=True)
    ref = np.linalg.svd(w.detach().numpy(), compute_uv=False)
    np.testing.assert_allclose(singular_values(w), ref, rtol=1e-10)
    low = w.detach().bfloat16()
    np.testing.assert_allclose(singular_values(low), _reference(low.float()), rtol=1e-6)
    assert factorize(w).u.dtype == torch.float32


@pytest.mark.parametrize("bad", [torch.zeros(3), torch.zeros(2, 3, 4), torch.zeros(0, 4)])
def test_bad_shapes_raise(bad: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="matrix"):
        singular_values(bad)
    with pytest.raises(ValueError, match="matrix"):
        factorize(bad)


def test_non_finite_raises() -> None:
    w = torch.ones(3, 4)
    w[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        singular_values(w)


@pytest.mark.parametrize("max_rank", [0, -1, 6, 2.0, True])
def test_max_rank_out_of_range(max_rank: object) -> None:
    with pytest.raises(ValueError, match="max_rank"):
        factorize(torch.randn(5, 9), max_rank=max_rank)  # type: ignore[arg-type]


@pytest.mark.parametrize("rank", [0, 4])
def test_pair_rank_out_of_range(rank: int) -> None:
    f = factorize(torch.randn(5, 9), max_rank=3)
    with pytest.raises(ValueError, match="rank"):
        f.pair(rank)
