"""Tests of ranksearch.core._allocation: solve, apply and load_factorized on small models."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ranksearch.core._allocation import apply, load_factorized, solve
from ranksearch.core._config import RankConfig
from ranksearch.core._layers import LowRank
from ranksearch.core._surgery import count_params, find_layers, layer_groups
from ranksearch.core._weights import save_state_dict


def _model(seed: int = 0, width: int = 8, head: int = 10) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, width, 3, padding=1),
        act1=nn.ReLU(),
        conv2=nn.Conv2d(width, 2 * width, 3, padding=1),
        bn=nn.BatchNorm2d(2 * width),
        act2=nn.ReLU(),
        up=nn.ConvTranspose2d(2 * width, width, 2, stride=2),
        pool=nn.AdaptiveAvgPool2d(2),
        flat=nn.Flatten(),
        fc1=nn.Linear(4 * width, 48),
        act3=nn.ReLU(),
        fc2=nn.Linear(48, head),
    ))


def _weights(model: nn.Module) -> dict[str, np.ndarray]:
    out = {}
    for name in ("conv1", "conv2", "up", "fc1", "fc2"):
        w = model.get_submodule(name).weight.detach().double().numpy()
        out[name] = w.reshape(w.shape[0], -1)
    return out


def _dense_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("target", [0.35, 0.5, 0.7, 0.9, 1.0])
def test_solve_at_ratio(target: float) -> None:
    model = _model()
    config = solve(model, target)
    total = _dense_params(model)
    assert config.original_params == total
    assert config.achieved_ratio <= target
    assert config.achieved_ratio == config.compressed_params / config.original_params
    assert config.target_ratio == target
    # the recorded per-layer figures agree with numpy
    mats = _weights(model)
    expected = total
    for name, r in config.ranks.items():
        w = mats[name]
        m, n = w.shape
        s = np.linalg.svd(w, compute_uv=False)
        layer = config.layers[name]
        assert layer.rank == r and layer.matrix == [m, n]
        assert layer.weight_shape == list(model.get_submodule(name).weight.shape)
        assert layer.type == type(model.get_submodule(name)).__name__
        assert layer.params_before == m * n and layer.params_after == r * (m + n) < m * n
        assert layer.mse == pytest.approx(np.sum(s[r:] ** 2) / (m * n), rel=1e-5, abs=1e-12)
        expected += r * (m + n) - m * n
    assert config.compressed_params == expected


def test_apply_has_exactly_compressed_params_and_ranks() -> None:
    model = _model()
    for target in (0.4, 0.6, 0.8):
        config = solve(model, target)
        small = apply(model, config)
        assert count_params(small) == config.compressed_params
        pairs = {n: m for n, m in small.named_modules() if isinstance(m, LowRank)}
        assert {n: p.rank for n, p in pairs.items()} == config.ranks
        x = torch.randn(2, 3, 6, 6)
        with torch.no_grad():
            assert small.eval()(x).shape == model.eval()(x).shape


def test_apply_at_full_rank_keeps_outputs() -> None:
    model = _model().double().eval()
    ranks = {"conv2": 16, "fc1": 32}  # both full rank
    total = _dense_params(model)
    compressed = total + 16 * (16 + 72) - 16 * 72 + 32 * (48 + 32) - 48 * 32
    layers = {
        "conv2": dict(type="Conv2d", weight_shape=[16, 8, 3, 3], matrix=[16, 72], rank=16, mse=0.0,
                      params_before=16 * 72, params_after=16 * 88),
        "fc1": dict(type="Linear", weight_shape=[48, 32], matrix=[48, 32], rank=32, mse=0.0,
                    params_before=48 * 32, params_after=32 * 80),
    }
    config = RankConfig(model="m", target_ratio=1.0, achieved_ratio=compressed / total, original_params=total,
                        compressed_params=compressed, ranks=ranks, layers=layers)
    with pytest.raises(ValueError, match="allow_growth"):  # full rank grows both layers: refused unless asked
        apply(model, config)
    small = apply(model, config, allow_growth=True).eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        ref, got = model(x), small(x)
    assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_apply_leaves_model_unchanged() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply(model, solve(model, 0.5))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert not any(isinstance(m, LowRank) for m in model.modules())


def _renamed() -> nn.Module:
    m = _model()
    return nn.Sequential(OrderedDict((("x" + k), v) for k, v in m.named_children()))


@pytest.mark.parametrize(
    "other, words",
    [
        (lambda: _model(head=11), ["parameters"]),  # different parameter count
        (lambda: _renamed(), ["does not have"]),  # same count, other layer names
        (lambda: _swapped(), ["shape"]),  # same count and names, other shapes
        (lambda: _grouped(), ["not factorizable"]),
    ],
)
def test_apply_refuses_config_of_another_model(other, words: list[str]) -> None:
    config = solve(_model(), 0.5)
    target = other()
    with pytest.raises(ValueError) as info:
        apply(target, config)
    for word in words:
        assert word in str(info.value)


def _swapped() -> nn.Module:
    """Same names and parameter count as _model(), but fc1 and fc2 have other shapes."""
    m = _model()
    # fc1: 32 -> 48 and fc2: 48 -> 10 become fc1: 32 -> 48 ... keep counts with transposed-like shapes
    m.fc1 = nn.Linear(32, 48)
    m.conv2 = nn.Conv2d(8, 16, (1, 9), padding=(0, 4))  # 8 * 9 * 16 weights: same count, other shape
    assert _dense_params(m) == _dense_params(_model())
    return m


def _grouped() -> nn.Module:
    """conv2 grouped with the same weight count: not factorizable."""
    m = _model()
    m.conv2 = nn.Conv2d(8, 16, (3, 6), padding=1, groups=2)  # 16 * 4 * 18 = 16 * 8 * 9
    assert _dense_params(m) == _dense_params(_model())
    return m


def test_apply_refuses_inconsistent_compressed_params() -> None:
    model = _model()
    d = solve(model, 0.5).to_dict()
    d["compressed_params"] += 1
    d["achieved_ratio"] = d["compressed_params"] / d["original_params"]
    with pytest.raises(ValueError, match="inconsistent"):
        apply(model, RankConfig.from_dict(d))


def test_model_without_eligible_layer() -> None:
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.ReLU(), nn.Linear(2, 2), nn.BatchNorm1d(2))
    with pytest.raises(ValueError, match="no eligible"):
        solve(model, 0.5)
    with pytest.raises(ValueError, match="no eligible"):
        solve(_model(), 0.5, exclude=[".*"])


@pytest.mark.parametrize("kwargs", [{}, {"target_ratio": 0.5, "mse_bound": 0.1}])
def test_solve_needs_exactly_one_of_ratio_and_bound(kwargs) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        solve(_model(), **kwargs)


def test_solve_unreachable_ratio() -> None:
    with pytest.raises(ValueError, match="unreachable"):
        solve(_model(), 0.01)


def test_solve_exclude_keeps_layers_dense() -> None:
    config = solve(_model(), 0.6, exclude={"fc1": "keep it"})
    assert "fc1" not in config.ranks
    assert config.search["exclude"] == ["fc1"]
    assert config.achieved_ratio <= 0.6


@pytest.mark.parametrize("multiple, min_rank", [(2, 1), (4, 4)])
def test_solve_rank_constraints(multiple: int, min_rank: int) -> None:
    config = solve(_model(), 0.6, rank_multiple=multiple, min_rank=min_rank)
    assert config.ranks
    for r in config.ranks.values():
        assert r % multiple == 0 and r >= min_rank


def test_mse_bound_route() -> None:
    model = _model()
    mats = _weights(model)
    bound = 0.002
    config = solve(model, mse_bound=bound)
    total = _dense_params(model)
    expected_params = total
    for name, w in mats.items():
        m, n = w.shape
        s = np.linalg.svd(w, compute_uv=False)
        mse = [np.sum(s[r:] ** 2) / (m * n) for r in range(min(m, n) + 1)]
        allowed = [r for r in range(1, min(m, n) + 1) if r * (m + n) < m * n]
        want = next((r for r in allowed if mse[r] <= bound), None)
        assert config.ranks.get(name) == want, name
        if want is not None:
            expected_params += want * (m + n) - m * n
    assert config.compressed_params == expected_params
    assert config.target_ratio == config.achieved_ratio == expected_params / total
    assert count_params(apply(model, config)) == expected_params
    # per-layer bounds: the named layers only
    per_layer = solve(model, mse_bound={"fc1": 1.0})
    assert set(per_layer.ranks) == {"fc1"} and per_layer.ranks["fc1"] == 1


def test_solve_records_metadata() -> None:
    config = solve(_model(), 0.5, model_name="tiny", source={"factory": "x:y"})
    assert config.model == "tiny" and config.source == {"factory": "x:y"}
    assert config.search["method"] == "mse_rule"
    assert solve(_model(), 0.5, weights={"fc1": 2.0}).search["method"] == "weighted_mse"
    assert solve(_model(), 0.5).model == "Sequential"


def test_solve_uses_cache(tmp_path: Path) -> None:
    a = solve(_model(), 0.5, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 5
    b = solve(_model(), 0.5, cache_dir=tmp_path)
    assert a == b


def test_load_factorized_round_trip(tmp_path: Path) -> None:
    model = _model()
    config = solve(model, 0.5)
    small = apply(model, config)
    with torch.no_grad():  # "retrained" weights: different from the SVD initialization
        for p in small.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        small.bn.running_mean.add_(1.0)
    path = save_state_dict(small.state_dict(), tmp_path / "factorized.safetensors")
    loaded = load_factorized(model, config, path)
    for k, v in small.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), small.eval()(x))


def test_load_factorized_refuses_wrong_weights(tmp_path: Path) -> None:
    model = _model()
    config = solve(model, 0.5)
    other = solve(model, 0.8)
    assert other.ranks != config.ranks
    wrong = save_state_dict(apply(model, other).state_dict(), tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="do not fit"):
        load_factorized(model, config, wrong)
    dense = save_state_dict(model.state_dict(), tmp_path / "dense.safetensors")
    with pytest.raises(ValueError, match="do not fit"):
        load_factorized(model, config, dense)
    sd = apply(model, config).state_dict()
    sd.pop(next(iter(sd)))
    missing = save_state_dict(sd, tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="do not fit"):
        load_factorized(model, config, missing)
    with pytest.raises(ValueError, match="does not exist"):
        load_factorized(model, config, tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt"):
        load_factorized(model, config, bad)


def test_layer_groups_strip_block_indices_and_split_types() -> None:
    from torchvision.models import resnet18

    layers = find_layers(resnet18()).eligible
    groups = layer_groups(layers)
    assert groups["layer3.1.conv2"] == groups["layer3.0.conv2"] == "layer3.conv2:Conv2d"
    assert groups["layer3.0.conv2"] != groups["layer4.0.conv2"]
    assert groups["fc"] == "fc:Linear"
    flat = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    assert layer_groups(find_layers(flat).eligible) == {"0": "Conv2d", "1": "Conv2d", "3": "Linear"}
