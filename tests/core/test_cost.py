"""The cost model: positions and multiply-adds per layer, dense and factorized, and the rank grid."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ranksearch.core._cost import TENSOR_CORE_MULTIPLE, dense_macs, model_cost, positions, rank_multiple_for
from ranksearch.core._surgery import factorize
from ranksearch.errors import RankSearchError


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, stride=2, padding=1)  # 12x12 -> 6x6
        self.up = nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1)  # 6x6 -> 12x12, applied per input pixel
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # depthwise: counted, never factorized
        self.seq = nn.Conv1d(8, 12, 5)  # over 144 - 4 = 140 steps
        self.fc = nn.Linear(12, 10)  # per token: 140 tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dw(self.up(self.conv(x)))
        y = self.seq(y.flatten(2))  # (B, 12, 140)
        return self.fc(y.transpose(1, 2))


def _macs_by_hand(name: str, module: nn.Module, count: int) -> int:
    """m * n per position from the weight itself: out * in / groups * kernel (transposed: per input pixel)."""
    w = module.weight
    return w.numel() * count


def test_positions_per_layer_type() -> None:
    net = _Net()
    p = positions(net, (3, 12, 12))
    assert p == {"conv": 36, "up": 36, "dw": 144, "seq": 140, "fc": 140}
    cost = model_cost(net, (3, 12, 12))
    modules = dict(net.named_modules())
    for name, count in p.items():
        assert cost.dense(name) == dense_macs(modules[name], count) == _macs_by_hand(name, modules[name], count)


def test_factorized_macs_are_the_pairs_own() -> None:
    """The recorded MACs after factorization are those of the pair's two layers, counted by hand."""
    net = _Net()
    cost = model_cost(net, (3, 12, 12))
    ranks = {"conv": 4, "up": 3, "seq": 5, "fc": 2}
    small = factorize(net, ranks)
    p = positions(small, (3, 12, 12))  # the pairs' own sub-layers, counted like any layer
    for name, r in ranks.items():
        mine = sum(dict(small.named_modules())[f"{name}.{part}"].weight.numel() * p[f"{name}.{part}"] for part in ("g", "h"))
        assert cost.factorized(name, r) == mine
    assert cost.total(ranks) == sum(dict(small.named_modules())[n].weight.numel() * c for n, c in p.items())
    assert cost.total({}) == cost.dense_total


@pytest.mark.parametrize("m,n", [(16, 27), (8, 256), (64, 64), (10, 12)])
def test_a_pair_saves_parameters_exactly_when_it_saves_multiply_adds(m: int, n: int) -> None:
    net = nn.Sequential(nn.Linear(n, m))
    cost = model_cost(net, (7, n))  # 7 tokens
    for r in range(1, min(m, n) + 1):
        saves_params = r * (m + n) < m * n
        assert (cost.factorized("0", r) < cost.dense("0")) == saves_params


def test_a_model_that_does_not_run_on_the_shape_is_named() -> None:
    with pytest.raises(RankSearchError, match=r"does not run on one input of shape \[5, 12, 12\]"):
        positions(_Net(), (5, 12, 12))


def test_unknown_layer_is_refused() -> None:
    cost = model_cost(_Net(), (3, 12, 12))
    with pytest.raises(RankSearchError, match="'nope' did not run"):
        cost.dense("nope")


def test_auto_rank_multiple() -> None:
    assert rank_multiple_for(torch.device("cuda"), 1) == TENSOR_CORE_MULTIPLE == 8
    assert rank_multiple_for(torch.device("cpu"), 4) == 4
