"""Batch-norm folding in the NNR stream: which normalizations fold (checked on real outputs), the folded stream against
the unfolded one, the decoder's model, a low-rank pair's fold, the Fisher weights of folded and running tensors, and a
budget below NNCodec's default stream at the grid's coarsest qp."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ranksearch.core._fold import SCALING, candidates, foldable
from ranksearch.core._surgery import factorize

pytest.importorskip("nncodec.nnc_core")

from ranksearch.core._bytes import QP_GRID, fisher, fit_bytes
from ranksearch.core._nnr import decode, decoded_model, encode, encode_model, nnr_parameters, weight_names


def _trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Weights spread as trained ones are, and normalizations whose statistics are far from the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.distributions.Laplace(0.0, 0.05).sample(m.weight.shape))
            if isinstance(m, nn.modules.batchnorm._NormBase):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(torch.randn(n, generator=g) * 0.3)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(0.2 + 3 * torch.rand(n, generator=g))
    return model.eval()


def _net() -> nn.Module:
    torch.manual_seed(0)
    return _trained_like(nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),  # folds (no bias of its own)
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(16),  # a ReLU in between: proposed, and refused
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),  # folds (its bias into the fold's)
        nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10)))


X = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(1))


def _run(net: nn.Module) -> torch.Tensor:
    return net(X)


def test_the_module_order_proposes_and_real_outputs_decide():
    net = _net()
    assert candidates(net) == {"0": "1", "3": "5", "6": "7", "10": "11"}
    assert foldable(net, _run) == {"0": "1", "6": "7", "10": "11"}  # the ReLU between 3 and 5 makes that fold wrong
    transposed = nn.Sequential(nn.ConvTranspose2d(3, 8, 2), nn.BatchNorm2d(8))  # channels are not its weight's rows
    assert candidates(transposed) == {}


def test_a_folded_stream_is_smaller_and_decodes_to_the_model():
    net = _net()
    folds = foldable(net, _run)
    params, _ = nnr_parameters(net, folds)
    assert {f"{layer}.weight{SCALING}" for layer in folds} <= set(params)
    assert not any(k.startswith(("1.", "7.", "11.")) for k in params)  # the folded normalizations' tensors are gone
    for qp in (-38, 0):
        assert len(encode(net, qp=qp, folds=folds)) < len(encode(net, qp=qp))
    stream, tensors = encode_model(net, -72, folds=folds)  # fine steps: the decoded model computes what the model does
    decoded = decoded_model(net, tensors, folds)
    with torch.no_grad():
        assert torch.allclose(decoded(X), net(X), atol=1e-3, rtol=1e-3)
        raw = decode(stream, recompose=False)  # the decoder's tensors, read back from the bytes alone
        assert torch.allclose(decoded_model(net, raw, folds)(X), decoded(X), atol=1e-6)
        assert decoded[1].running_var.tolist() == pytest.approx([1 - decoded[1].eps] * 16)
        # recomposed, each folded weight comes scaled: into the same network with identity normalizations, the same outputs
        plain = decode(stream)
        assert not any(k.endswith(SCALING) for k in plain)
        again = decoded_model(net, {k: v for k, v in tensors.items() if not k.endswith(SCALING)})
        for layer, norm in folds.items():
            getattr(again, layer).weight.copy_(torch.from_numpy(plain[f"{layer}.weight"]))
            bn = getattr(again, norm)
            bn.weight.fill_(1.0), bn.running_mean.zero_(), bn.running_var.fill_(1 - bn.eps)
            bias = torch.from_numpy(plain[f"{layer}.bias"])
            if getattr(again, layer).bias is not None:
                getattr(again, layer).bias.copy_(bias), bn.bias.zero_()
            else:
                bn.bias.copy_(bias)
        assert torch.allclose(again(X), decoded(X), atol=1e-5)


def test_a_low_rank_pair_folds_its_normalization_into_g():
    net = _net()
    small = factorize(net, {"6": 4, "10": 8}).eval()
    folds = foldable(small, _run)
    assert folds == {"0": "1", "6": "7", "10": "11"}
    stream, tensors = encode_model(small, -72, folds=folds)
    with torch.no_grad():
        assert torch.allclose(decoded_model(small, tensors, folds)(X), small(X), atol=1e-3, rtol=1e-3)
    assert decode(stream, recompose=False)["6.weight_G"].shape == (16, 4)


def test_fisher_weights_the_folded_and_running_tensors_from_the_affine_ones():
    from torch.utils.data import TensorDataset

    from ranksearch.core._task import Task

    net = _net()
    data = TensorDataset(torch.randn(64, 3, 4, 4), torch.randint(0, 10, (64,)))
    task = Task(data, data, data, "cross_entropy", "accuracy")
    folds = foldable(net, _run)
    plain, folded = fisher(net, task), fisher(net, task, folds=folds)
    bn = net[5]  # not folded: its running statistics weighted from its gamma and beta
    s2 = (bn.running_var + bn.eps).detach().numpy()
    gamma = bn.weight.detach().numpy()
    assert np.allclose(plain["5.running_mean"], plain["5.bias"] * gamma**2 / s2, rtol=1e-5)
    assert np.allclose(plain["5.running_var"], plain["5.weight"] * (gamma / (2 * s2)) ** 2, rtol=1e-5)
    assert np.allclose(folded["6.weight_scaling"], plain["7.weight"] * (net[7].running_var + net[7].eps).detach().numpy(), rtol=1e-5)
    assert np.allclose(folded["6.bias"], plain["7.bias"]) and "7.weight" not in folded
    assert all(v.min() >= 0 for v in folded.values()) and plain["5.running_var"].max() > 0


def test_a_budget_below_nncodecs_default_stream_at_the_coarsest_qp_is_met_folded():
    net = _net()
    folds = foldable(net, _run)
    floor = len(encode(net, qp=QP_GRID[-1]))  # every weight at the grid's coarsest qp, NNCodec's defaults for the rest
    budget = int(0.9 * floor)
    coded = fit_bytes(net, budget, folds=folds)
    assert coded.bytes <= budget and coded.bytes >= 0.9 * budget and coded.folds == folds
    params = nnr_parameters(net, folds)[0]
    assert set(coded.qps) == set(weight_names(net))  # each weight, and every other float tensor, at its own qp
    assert set(coded.other_qps) == {k for k, v in params.items() if k not in coded.qps and v.dtype.kind == "f"}
    assert {"5.running_var", "6.weight_scaling", "0.bias"} <= set(coded.other_qps)
    assert len(encode(net, qps={**coded.qps, **coded.other_qps}, folds=folds)) == coded.bytes  # the stream, again
    with torch.no_grad():
        assert torch.isfinite(decoded_model(net, coded.tensors, folds)(X)).all()
