"""Activation-whitened factors: exact at full rank, and never worse than plain SVD on the output error."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ranksearch.core._calibrate import _columns, input_moments, whitened
from ranksearch.core._decompose import factorize as plain_factorize
from ranksearch.core._layers import build_low_rank, matrix_shape, weight_matrix

LAYERS = {
    "linear": (lambda: nn.Linear(24, 16), (64, 24)),
    "conv2d": (lambda: nn.Conv2d(6, 10, 3, stride=(2, 1), padding=1, dilation=(1, 2)), (8, 6, 9, 9)),
    "conv2d_reflect": (lambda: nn.Conv2d(4, 8, 3, padding=1, padding_mode="reflect"), (8, 4, 7, 7)),
    "conv1d": (lambda: nn.Conv1d(5, 12, 3, padding=1), (8, 5, 20)),
    "convtranspose2d": (lambda: nn.ConvTranspose2d(12, 4, 3, stride=2, padding=1), (8, 12, 5, 5)),
}


def _inputs(shape: tuple[int, ...]) -> torch.Tensor:
    """Correlated inputs (a random mixing of few sources), where whitening matters."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=g)
    if len(shape) > 2:
        mix = torch.randn(shape[1], shape[1], generator=g) * torch.logspace(0, -2, shape[1])[None]
        x = torch.einsum("bc...,dc->bd...", x, mix)
    else:
        x = x @ (torch.randn(shape[1], shape[1], generator=g) * torch.logspace(0, -2, shape[1])[None])
    return x


@pytest.mark.parametrize("kind", LAYERS)
def test_whitened_full_rank_is_exact_and_truncation_beats_plain(kind):
    torch.manual_seed(0)
    make, shape = LAYERS[kind]
    layer = make()
    x = _inputs(shape)
    model = nn.Sequential(layer)
    moments = input_moments(model, {"0": layer}, [x[:4], x[4:]])
    curve, f = whitened(layer, moments["0"], damping=1e-9)
    m, n = matrix_shape(layer)
    g, h = f.pair(min(m, n))
    torch.testing.assert_close(g @ h, weight_matrix(layer), rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        y = layer(x)
        for r in (1, 2, 4):
            aware = build_low_rank(layer, *f.pair(r))(x)
            plain = build_low_rank(layer, *plain_factorize(weight_matrix(layer), r).pair(r))(x)
            err_aware, err_plain = float(((aware - y) ** 2).sum()), float(((plain - y) ** 2).sum())
            assert err_aware <= err_plain * (1 + 1e-4) + 1e-9, (r, err_aware, err_plain)
            if kind != "convtranspose2d":  # (overlapping outputs mix columns there)
                # the curve is the output error: mse[r] * m * n == mean over input columns of ||(W - W_r) x||^2
                columns = _columns(layer, x).shape[0]
                assert err_aware / columns == pytest.approx(curve.mse[r] * m * n, rel=1e-3)


def test_moments_refuse_unused_layer():
    used, unused = nn.Linear(4, 4), nn.Linear(4, 4)
    model = nn.Sequential(used)
    with pytest.raises(ValueError, match="no input"):
        input_moments(model, {"0": used, "x": unused}, [torch.randn(2, 4)])
