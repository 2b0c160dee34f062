"""Tests of ranksearch.core._layers and ranksearch.core._surgery: the low-rank pairs against the dense layers.

Expectations come from the dense torch layers themselves and from numpy's SVD, never from the code
under test.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from ranksearch.core._layers import (
    LowRank,
    LowRankConv,
    LowRankConvTranspose2d,
    LowRankLinear,
    build_low_rank,
    ineligible_reason,
    matrix_shape,
)
from ranksearch.core._surgery import count_params, factorize, find_layers

RTOL = 1e-5  # factors are kept in float32 by ranksearch.core._decompose

# name -> (module factory, input shape, expected pair type, (m, n) of the weight matrix)
LAYERS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], type, tuple[int, int]]] = {
    "linear_bias": (lambda: nn.Linear(12, 7), (5, 12), LowRankLinear, (7, 12)),
    "linear_nobias": (lambda: nn.Linear(9, 14, bias=False), (3, 9), LowRankLinear, (14, 9)),
    "linear_3d_input": (lambda: nn.Linear(6, 5), (2, 4, 6), LowRankLinear, (5, 6)),
    "conv1d": (
        lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1, dilation=2),
        (2, 4, 17), LowRankConv, (6, 12),
    ),
    "conv1d_replicate_nobias": (
        lambda: nn.Conv1d(3, 8, 5, padding=2, padding_mode="replicate", bias=False),
        (2, 3, 11), LowRankConv, (8, 15),
    ),
    "conv2d_plain": (lambda: nn.Conv2d(3, 5, 3), (2, 3, 8, 8), LowRankConv, (5, 27)),
    "conv2d_geometry_reflect": (
        lambda: nn.Conv2d(3, 5, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1),
                          padding_mode="reflect", bias=False),
        (2, 3, 9, 10), LowRankConv, (5, 18),
    ),
    "conv2d_geometry_circular": (
        lambda: nn.Conv2d(3, 5, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(2, 1),
                          padding_mode="circular", bias=False),
        (2, 3, 9, 10), LowRankConv, (5, 18),
    ),
    "conv2d_geometry_zeros_bias": (
        lambda: nn.Conv2d(4, 6, (2, 3), stride=(2, 1), padding=(1, 2), dilation=(2, 1)),
        (1, 4, 7, 9), LowRankConv, (6, 24),
    ),
    "conv2d_same": (lambda: nn.Conv2d(4, 7, (3, 5), padding="same"), (2, 4, 6, 9), LowRankConv, (7, 60)),
    "convT2d": (
        lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, dilation=2),
        (2, 4, 5, 6), LowRankConvTranspose2d, (4, 54),
    ),
    "convT2d_nonsquare_nobias": (
        lambda: nn.ConvTranspose2d(8, 3, (2, 3), stride=(2, 1), padding=(0, 1), output_padding=(1, 0), bias=False),
        (1, 8, 4, 5), LowRankConvTranspose2d, (8, 18),
    ),
}


def _dense(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layer = LAYERS[name][0]().double()
    with torch.no_grad():  # biases well away from zero so that a dropped bias is visible
        if getattr(layer, "bias", None) is not None:
            layer.bias.uniform_(0.5, 1.5)
    return layer


def _input(name: str, seed: int = 1) -> torch.Tensor:
    return torch.randn(LAYERS[name][1], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = RTOL) -> None:
    assert a.shape == b.shape
    err = (a - b).abs().max().item()
    assert err <= rtol * b.abs().max().item(), f"max abs error {err} vs scale {b.abs().max().item()}"


def _with_weight(dense: nn.Module, matrix: np.ndarray) -> nn.Module:
    """A copy of ``dense`` whose weight is ``matrix`` reshaped back to the weight's shape."""
    out = copy.deepcopy(dense)
    with torch.no_grad():
        out.weight.copy_(torch.from_numpy(matrix).reshape(out.weight.shape))
    return out


def _np_matrix(dense: nn.Module) -> np.ndarray:
    w = dense.weight.detach().numpy()
    return w.reshape(w.shape[0], -1)


# ---------------------------------------------------------------------------------------------------
# full-rank equivalence and truncation, through surgery.factorize


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_full_rank_pair_computes_dense_output(name: str) -> None:
    dense = _dense(name)
    _, _, kind, (m, n) = LAYERS[name]
    assert ineligible_reason(dense) is None
    assert _np_matrix(dense).shape == (m, n)
    model = nn.Sequential(OrderedDict(layer=dense))
    small = factorize(model, {"layer": min(m, n)})
    pair = small.layer
    assert type(pair) is kind
    assert pair.rank == min(m, n) and tuple(pair.shape) == (m, n)
    x = _input(name)
    with torch.no_grad():
        _close(small(x), dense(x))


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("frac", [0.25, 0.6])
def test_truncated_pair_equals_dense_layer_with_svd_truncated_weight(name: str, frac: float) -> None:
    dense = _dense(name)
    m, n = LAYERS[name][3]
    r = max(1, int(frac * min(m, n)))
    w = _np_matrix(dense)
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    w_r = (u[:, :r] * s[:r]) @ vt[:r]
    reference = _with_weight(dense, w_r)
    pair = factorize(nn.Sequential(OrderedDict(layer=dense)), {"layer": r}).layer
    x = _input(name)
    with torch.no_grad():
        _close(pair(x), reference(x), rtol=1e-4)
    # Eckart-Young: the weight error is the tail energy of the singular values
    g, h = (t.detach().numpy() for t in pair.matrices())
    assert g.shape == (m, r) and h.shape == (r, n)
    err = np.sum((w - g @ h) ** 2)
    tail = np.sum(s[r:] ** 2)
    assert err == pytest.approx(tail, rel=1e-4, abs=1e-9 * np.sum(s**2))


def test_convtranspose_pair_honours_output_size() -> None:
    dense = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1).double()
    pair = factorize(nn.Sequential(OrderedDict(t=dense)), {"t": 4}).t
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    for size in ([9, 9], [10, 10], [9, 10]):
        with torch.no_grad():
            ref = dense(x, output_size=size)
            got = pair(x, output_size=size)
        assert list(got.shape[-2:]) == size
        _close(got, ref)


def test_float32_pair_close_to_dense() -> None:
    torch.manual_seed(0)
    dense = nn.Conv2d(6, 10, 3, padding=1)
    pair = factorize(nn.Sequential(OrderedDict(c=dense)), {"c": 10}).c
    assert pair.h.weight.dtype == torch.float32
    x = torch.randn(2, 6, 8, 8)
    with torch.no_grad():
        _close(pair(x), dense(x), rtol=1e-4)


# ---------------------------------------------------------------------------------------------------
# parameter counts


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_pair_parameter_count(name: str) -> None:
    dense = _dense(name)
    m, n = LAYERS[name][3]
    bias = 0 if dense.bias is None else dense.bias.numel()
    for r in sorted({1, 2, min(m, n)}):
        pair = factorize(nn.Sequential(OrderedDict(layer=dense)), {"layer": r}).layer
        assert count_params(pair) == r * (m + n) + bias
        assert sum(p.numel() for p in pair.parameters()) == r * (m + n) + bias


def test_count_params_counts_shared_once_and_ignores_buffers() -> None:
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.BatchNorm1d(4), shared)
    assert count_params(model) == 4 * 4 + 4 + 2 * 4


# ---------------------------------------------------------------------------------------------------
# eligibility


def _saves(m: int, n: int) -> bool:
    """Whether some rank r >= 1 has r * (m + n) < m * n."""
    return any(r * (m + n) < m * n for r in range(1, min(m, n) + 1))


@pytest.mark.parametrize(
    "module, words",
    [
        (nn.Conv2d(4, 4, 3, groups=4), ["depthwise", "groups=4"]),
        (nn.Conv2d(4, 8, 3, groups=4), ["depthwise", "groups=4"]),
        (nn.Conv2d(4, 8, 3, groups=2), ["grouped", "groups=2"]),
        (nn.Conv1d(6, 6, 3, groups=3), ["grouped", "groups=3"]),
        (nn.ConvTranspose2d(4, 4, 3, groups=4), ["depthwise", "groups=4"]),
        (nn.ConvTranspose2d(4, 8, 3, groups=2), ["grouped", "groups=2"]),
        (nn.ReLU(), ["ReLU"]),
        (nn.Conv3d(2, 4, 3), ["Conv3d"]),
        (nn.ConvTranspose1d(2, 4, 3), ["ConvTranspose1d"]),
    ],
)
def test_ineligible_reason_names_the_cause(module: nn.Module, words: list[str]) -> None:
    reason = ineligible_reason(module)
    assert reason is not None
    for word in words:
        assert word in reason


@pytest.mark.parametrize(
    "module",
    [nn.Linear(1, 5), nn.Linear(5, 1), nn.Linear(2, 2), nn.Linear(3, 2), nn.Linear(2, 3), nn.Linear(3, 3),
     nn.Linear(2, 4), nn.Conv2d(1, 1, 1), nn.Conv2d(1, 2, 1), nn.Conv2d(2, 2, 1), nn.Conv2d(1, 3, (1, 2)),
     nn.Conv2d(1, 2, 2), nn.Conv1d(1, 1, 5), nn.ConvTranspose2d(1, 1, 2), nn.ConvTranspose2d(2, 1, 1),
     nn.ConvTranspose2d(3, 1, (1, 2)), nn.Linear(64, 10)],
)
def test_ineligible_when_rank_one_saves_nothing(module: nn.Module) -> None:
    w = module.weight
    m, n = w.shape[0], w[0].numel()
    reason = ineligible_reason(module)
    if _saves(m, n):
        assert reason is None
    else:
        assert reason is not None and f"{m}x{n}" in reason and "saves nothing" in reason


def test_ineligible_layers_are_refused_by_factorize_and_build() -> None:
    model = nn.Sequential(OrderedDict(dw=nn.Conv2d(4, 4, 3, groups=4), tiny=nn.Linear(2, 2)))
    for name in ("dw", "tiny"):
        with pytest.raises(ValueError, match=name):
            factorize(model, {name: 1})
    with pytest.raises(ValueError, match="depthwise"):
        build_low_rank(model.dw, torch.ones(4, 1), torch.ones(1, 9))


# ---------------------------------------------------------------------------------------------------
# find_layers


def _net() -> nn.Module:
    return nn.Sequential(OrderedDict(
        stem=nn.Conv2d(3, 16, 3),
        dw=nn.Conv2d(16, 16, 3, groups=16),
        block=nn.Sequential(OrderedDict(conv1=nn.Conv2d(16, 16, 3), conv2=nn.Conv2d(16, 16, 1), act=nn.ReLU())),
        up=nn.ConvTranspose2d(16, 8, 2, stride=2),
        tiny=nn.Linear(2, 2),
        head=nn.Linear(32, 10),
    ))


def test_find_layers_default() -> None:
    layers = find_layers(_net())
    assert list(layers.eligible) == ["stem", "block.conv1", "block.conv2", "up", "head"]
    assert set(layers.skipped) == {"dw", "tiny"}
    assert "depthwise" in layers.skipped["dw"]
    assert "saves nothing" in layers.skipped["tiny"]
    net = _net()
    assert find_layers(net).eligible["head"] is net.head


@pytest.mark.parametrize(
    "exclude, skipped, reason_word",
    [
        (["head"], {"head"}, "excluded"),
        (["block.conv1"], {"block.conv1"}, "excluded"),
        ([r"block\..*"], {"block.conv1", "block.conv2"}, "excluded"),
        ({"stem": "first layer stays dense"}, {"stem"}, "first layer stays dense"),
        ({r"(stem|head)": "ends stay dense"}, {"stem", "head"}, "ends stay dense"),
        (["conv1"], set(), None),  # full match: a bare suffix does not exclude block.conv1
        (["hea"], set(), None),
    ],
)
def test_find_layers_exclude(exclude, skipped: set[str], reason_word: str | None) -> None:
    base = find_layers(_net())
    layers = find_layers(_net(), exclude)
    assert set(layers.eligible) == set(base.eligible) - skipped
    assert set(layers.skipped) == set(base.skipped) | skipped
    for name in skipped:
        assert reason_word in layers.skipped[name]


def test_find_layers_bad_regex() -> None:
    with pytest.raises(ValueError, match="regular expression"):
        find_layers(_net(), ["block.(conv"])


# ---------------------------------------------------------------------------------------------------
# build_low_rank validation and direct construction


@pytest.mark.parametrize(
    "g_shape, h_shape",
    [((7, 3), (4, 12)), ((8, 3), (3, 12)), ((7, 3), (3, 11)), ((3, 7), (3, 12)), ((7, 0), (0, 12)),
     ((12, 3), (3, 7))],
)
def test_build_low_rank_rejects_mismatched_factors(g_shape, h_shape) -> None:
    dense = nn.Linear(12, 7)
    with pytest.raises(ValueError, match="7x12"):
        build_low_rank(dense, torch.zeros(g_shape), torch.zeros(h_shape))


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_build_low_rank_from_numpy_svd(name: str) -> None:
    dense = _dense(name, seed=3)
    m, n = LAYERS[name][3]
    u, s, vt = np.linalg.svd(_np_matrix(dense), full_matrices=False)
    g = torch.from_numpy(u * s)
    h = torch.from_numpy(vt.copy())
    pair = build_low_rank(dense, g, h)
    assert isinstance(pair, LowRank) and pair.rank == min(m, n)
    G, H = pair.matrices()
    np.testing.assert_allclose(G.detach().numpy(), g.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(H.detach().numpy(), h.numpy(), rtol=0, atol=1e-12)
    x = _input(name)
    with torch.no_grad():
        _close(pair(x), dense(x), rtol=1e-10)


# ---------------------------------------------------------------------------------------------------
# factorize: the model level


def test_factorize_leaves_input_model_unchanged() -> None:
    torch.manual_seed(0)
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    types = {n: type(m) for n, m in net.named_modules()}
    small = factorize(net, {"stem": 2, "block.conv1": 3, "up": 4, "head": 5})
    assert {n: type(m) for n, m in net.named_modules()} == types
    after = net.state_dict()
    assert set(after) == set(before)
    for k in before:
        assert torch.equal(before[k], after[k])
    # the result is independent of the input
    with torch.no_grad():
        small.block.conv2.weight.add_(1.0)
    assert torch.equal(net.block.conv2.weight, before["block.conv2.weight"])
    assert isinstance(small.stem, LowRankConv) and small.stem.rank == 2
    assert isinstance(small.block.conv1, LowRankConv) and small.block.conv1.rank == 3
    assert isinstance(small.up, LowRankConvTranspose2d) and small.up.rank == 4
    assert isinstance(small.head, LowRankLinear) and small.head.rank == 5
    assert type(small.block.conv2) is nn.Conv2d


def test_factorize_param_count_of_model() -> None:
    net = _net()
    ranks = {"stem": 2, "block.conv1": 3, "head": 4}
    expected = count_params(net)
    for name, r in ranks.items():
        w = net.get_submodule(name).weight
        m, n = w.shape[0], w[0].numel()
        expected += r * (m + n) - m * n
    assert count_params(factorize(net, ranks)) == expected


@pytest.mark.parametrize(
    "ranks, match",
    [
        ({"nope": 1}, "nope"),
        ({"block.nope": 1}, "block.nope"),
        ({"head": 0}, "head"),
        ({"head": 11}, "head"),  # min(10, 32) = 10
        ({"head": 2.0}, "head"),
        ({"block.act": 1}, "block.act"),
    ],
)
def test_factorize_rejects_bad_requests(ranks, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        factorize(_net(), ranks)


def test_factorize_full_rank_max_accepted_even_if_not_saving() -> None:
    net = _net()
    small = factorize(net, {"head": 10})
    assert small.head.rank == 10
    x = torch.randn(3, 32)
    with torch.no_grad():
        _close(small.head(x), net.head(x), rtol=1e-4)


def test_multihead_attention_out_proj_is_not_factorized() -> None:
    # nn.MultiheadAttention reads ``out_proj.weight`` / ``out_proj.bias`` directly (F.multi_head_attention_forward)
    # instead of calling the module, so replacing out_proj by a pair breaks the model: it must be skipped.
    torch.manual_seed(0)
    model = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    layers = find_layers(model)
    assert "self_attn.out_proj" not in layers.eligible
    assert "self_attn.out_proj" in layers.skipped
    ranks = {name: 2 for name in layers.eligible}
    small = factorize(model, ranks).eval()
    with torch.no_grad():
        assert small(torch.randn(2, 5, 16)).shape == (2, 5, 16)


@pytest.mark.parametrize("dense", [nn.Linear(12, 9), nn.Conv2d(4, 6, (3, 2)), nn.ConvTranspose2d(5, 3, 3, stride=2)],
                         ids=["linear", "conv2d", "convtranspose2d"])
def test_pair_exposes_equivalent_dense_weight_and_bias(dense: nn.Module) -> None:
    """``pair.weight`` is G @ H in the dense layer's shape: code reading ``.weight`` sees the same layer."""
    torch.manual_seed(0)
    dense = dense.double()
    m, n = matrix_shape(dense)
    pair = factorize(nn.Sequential(dense), {"0": min(m, n)})[0]
    assert pair.weight.shape == dense.weight.shape
    torch.testing.assert_close(pair.weight, dense.weight.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pair.bias, dense.bias.detach())
    pair.weight.sum().backward()
    assert pair.g.weight.grad is not None and pair.h.weight.grad is not None
