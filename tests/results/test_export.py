"""Tests of ranksearch.results._export: the NNR G/H naming and the results folder."""

from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from ranksearch.core._allocation import apply, load_factorized, solve
from ranksearch.core._config import RankConfig
from ranksearch.core._surgery import factorize
from ranksearch.results import Figures, Summary, TrialCounts, nnr_tensors, summary_table, write_results
from ranksearch.study import Method

FACTORIZED = {"conv": 3, "up": 2, "fc": 4, "fc_nobias": 5}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(3, 8, (3, 2), stride=(2, 1), padding=(1, 0)),
        bn=nn.BatchNorm2d(8),
        up=nn.ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1),
        keep=nn.Conv2d(6, 6, 1),  # stays dense
        pool=nn.AdaptiveAvgPool2d(2),
        flat=nn.Flatten(),
        fc=nn.Linear(24, 16),
        fc_nobias=nn.Linear(16, 10, bias=False),
    ))


def _factorized() -> nn.Module:
    small = factorize(_model(), FACTORIZED)
    with torch.no_grad():  # as if retrained: the pair no longer matches the SVD of the dense weight
        for p in small.parameters():
            p.add_(0.05 * torch.randn_like(p))
        small.bn.running_mean.uniform_(-1, 1)
    return small


def _dense_like(pair: nn.Module, dense: nn.Module, g: torch.Tensor, h: torch.Tensor, bias) -> nn.Module:
    """A copy of the dense layer type whose weight is G @ H reshaped, with ``bias``."""
    out = type(dense)(**_ctor(dense)).double()
    with torch.no_grad():
        out.weight.copy_((g @ h).reshape(out.weight.shape))
        if bias is not None:
            out.bias.copy_(bias)
    return out


def _ctor(dense: nn.Module) -> dict:
    if isinstance(dense, nn.Linear):
        return dict(in_features=dense.in_features, out_features=dense.out_features, bias=dense.bias is not None)
    kw = dict(in_channels=dense.in_channels, out_channels=dense.out_channels, kernel_size=dense.kernel_size,
              stride=dense.stride, padding=dense.padding, dilation=dense.dilation, bias=dense.bias is not None)
    if isinstance(dense, nn.ConvTranspose2d):
        kw["output_padding"] = dense.output_padding
    return kw


INPUTS = {"conv": (2, 3, 9, 6), "up": (2, 8, 4, 5), "fc": (3, 24), "fc_nobias": (3, 16)}


def test_nnr_tensors_names_and_shapes() -> None:
    dense = _model()
    small = _factorized()
    tensors = nnr_tensors(small)
    expected = set()
    for key in dense.state_dict():
        layer, _, leaf = key.rpartition(".")
        if layer in FACTORIZED and leaf == "weight":
            expected |= {f"{layer}.weight_G", f"{layer}.weight_H"}
        else:
            expected.add(key)
    assert set(tensors) == expected
    for name, r in FACTORIZED.items():
        w = dense.get_submodule(name).weight
        m, n = w.shape[0], w[0].numel()
        assert tuple(tensors[f"{name}.weight_G"].shape) == (m, r)
        assert tuple(tensors[f"{name}.weight_H"].shape) == (r, n)
    # dense tensors keep their names and values
    sd = small.state_dict()
    for key in ("bn.weight", "bn.running_mean", "bn.num_batches_tracked", "keep.weight", "keep.bias"):
        assert torch.equal(tensors[key], sd[key])
    # biases of factorized layers keep the dense name
    assert torch.equal(tensors["conv.bias"], small.conv.g.bias)
    assert torch.equal(tensors["up.bias"], small.up.h.bias)
    assert torch.equal(tensors["fc.bias"], small.fc.g.bias)
    assert "fc_nobias.bias" not in tensors


@pytest.mark.parametrize("name", sorted(FACTORIZED))
def test_nnr_product_is_the_effective_weight(name: str) -> None:
    dense = _model().get_submodule(name)
    small = _factorized()
    pair = small.get_submodule(name)
    tensors = nnr_tensors(small)
    g, h = tensors[f"{name}.weight_G"], tensors[f"{name}.weight_H"]
    equivalent = _dense_like(pair, dense, g.double(), h.double(), tensors.get(f"{name}.bias"))
    x = torch.randn(INPUTS[name], dtype=torch.float64)
    with torch.no_grad():
        ref = pair.double()(x)
        got = equivalent.double()(x)
    assert got.shape == ref.shape
    assert (got - ref).abs().max() <= 1e-10 * ref.abs().max()


@pytest.mark.parametrize("name", sorted(FACTORIZED))
def test_nnr_product_before_retrain_is_svd_truncation(name: str) -> None:
    dense = _model().get_submodule(name)
    r = FACTORIZED[name]
    tensors = nnr_tensors(factorize(_model(), FACTORIZED))
    g, h = tensors[f"{name}.weight_G"].double().numpy(), tensors[f"{name}.weight_H"].double().numpy()
    w = dense.weight.detach().double().numpy()
    w = w.reshape(w.shape[0], -1)
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    np.testing.assert_allclose(g @ h, (u[:, :r] * s[:r]) @ vt[:r], atol=1e-5 * s[0])


def _summary(**changes) -> Summary:
    s = Summary(metric="accuracy", target_ratio=0.5, achieved_ratio=0.4987, dense=Figures(val=0.91, test=0.9, ratio=1.0),
                seed_rule=Figures(trial=0, val=0.8, test=0.79, before_retrain=0.5, ratio=0.4991, method=Method.SEED_RULE),
                best=Figures(trial=7, val=0.85, test=0.84, before_retrain=0.55, before_retrain_samples=512, method=Method.SEARCHED,
                             ratio=0.4987),
                trials=TrialCounts(8, 2, 1), wall_time_s=12.5)
    return dataclasses.replace(s, **changes)


def test_summary_table_contents() -> None:
    text = summary_table(_summary()).markdown()
    lines = text.splitlines()
    assert lines[0].startswith("| model | ratio | val accuracy | test accuracy |")
    dense_row = next(line for line in lines if line.startswith("| dense"))
    assert "0.9100" in dense_row and "0.9000" in dense_row and "1.0000" in dense_row
    seed_row = next(line for line in lines if line.startswith("| seed rule"))
    assert all(v in seed_row for v in ("0.4991", "0.8000", "0.7900", "0.5000"))
    best_row = next(line for line in lines if line.startswith("| best (sampled trial)"))
    assert all(v in best_row for v in ("0.4987", "0.8500", "0.8400", "0.5500 (512 val samples)", "| 7 |"))
    assert "val samples" not in seed_row
    baseline = summary_table(_summary(best=dataclasses.replace(_summary().best, method=Method.SENSITIVITY))).markdown()
    assert "| best (AIMET-style sensitivity) |" in baseline  # the best's method is named, never called "searched"
    assert "8 complete, 2 pruned, 1 failed" in text and "12.5 s" in text and "Target ratio 0.5" in text
    no_seed = summary_table(_summary(seed_rule=None)).markdown()
    seed_row = next(line for line in no_seed.splitlines() if line.startswith("| seed rule"))
    assert seed_row.count("| - ") >= 5
    assert "multiply-adds" not in text  # no input shape, no cost model
    cost = {"input_shape": [1, 28, 28], "macs_before": 12_000_000, "macs_after": 4_500_000, "macs_ratio": 0.375, "params_ratio": 0.4987}
    with_cost = summary_table(_summary(cost=cost)).markdown()
    assert ("parameters 0.4987 of the dense model's, multiply-adds 0.3750 (4,500,000 against 12,000,000 MACs per input of "
            "shape [1, 28, 28]") in with_cost
    with_baseline = summary_table(_summary(baselines={Method.UNIFORM: Figures(trial=1, val=0.7, test=0.69, ratio=0.4999)})).markdown()
    assert "| uniform | 0.4999 | 0.7000 | 0.6900 |" in with_baseline  # the baselines, between the seed rule and the best
    html = summary_table(_summary()).html()
    assert "<th>val accuracy</th>" in html and "<td>best (sampled trial)</td>" in html  # the same table as a page
    assert "Latency" not in text  # no latency working point, no latency line
    lat = {"runtime": "onnxruntime", "device": "cpu", "batch": 1, "dense_s": 0.004, "factorized_s": 0.0038, "ratio": 0.95,
           "target": 1.0, "predicted_ratio": 0.94}
    met = summary_table(_summary(latency=lat)).markdown()
    assert ("Latency of the best model on onnxruntime (cpu, batch 1): 0.950x of the dense model's (3.8 against 4 ms, medians "
            "side by side; target 1x, the timing table predicted 0.940x).") in met
    missed = summary_table(_summary(latency={**lat, "ratio": 1.02, "factorized_s": 0.00408})).markdown()
    assert "1.020x of the dense model's" in missed and "target 1x, missed," in missed


def test_write_results_writes_every_file(tmp_path: Path) -> None:
    dense = _model()
    config = solve(dense, 0.6, model_name="tiny")
    seed = RankConfig.from_dict({**config.to_dict(), "search": {"method": "mse_rule"}})
    small = apply(dense, config)
    with torch.no_grad():
        for p in small.parameters():
            p.mul_(1.01)
    out = tmp_path / "results"
    written = write_results(out, config, small, seed, _summary())
    names = {"factorized.safetensors", "factorized_nnr.safetensors", "rank_config_seed_rule.json", "summary.md",
             "rank_config.json"}
    assert {p.name for p in written} == names
    assert {p.name for p in out.iterdir()} == names  # no temporary file left
    assert written[-1].name == "rank_config.json"
    assert RankConfig.load(out / "rank_config.json") == config
    assert RankConfig.load(out / "rank_config_seed_rule.json") == seed
    plain = load_file(str(out / "factorized.safetensors"))
    sd = small.state_dict()
    assert set(plain) == set(sd) and all(torch.equal(plain[k], sd[k]) for k in sd)
    nnr = load_file(str(out / "factorized_nnr.safetensors"))
    ref = nnr_tensors(small)
    assert set(nnr) == set(ref) and all(torch.equal(nnr[k], ref[k]) for k in ref)
    with safe_open(str(out / "factorized.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "ranksearch.factorized" and json.loads(meta["ranks"]) == config.ranks
    assert meta["model"] == "tiny"
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# ranksearch: tiny") and summary_table(_summary()).markdown() in summary
    # the saved weights load back through the public API
    loaded = load_factorized(dense, config, out / "factorized.safetensors")
    x = torch.randn(2, 3, 9, 6)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), small.eval()(x))


def test_write_results_without_seed_rule(tmp_path: Path) -> None:
    dense = _model()
    config = solve(dense, 0.6)
    write_results(tmp_path, config, apply(dense, config), None, _summary())
    assert not (tmp_path / "rank_config_seed_rule.json").exists()
    assert (tmp_path / "rank_config.json").exists()
