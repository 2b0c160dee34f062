"""Quantization-aware retraining: NNCodec's step of a qp, the rounding going forward and straight through going back, and
fit's last steps trained through it."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ranksearch.core._layers import LowRank
from ranksearch.core._qat import QuantAware, quantization_aware, step_of
from ranksearch.core._retrain import RetrainSettings, evaluate, fit
from ranksearch.core._surgery import factorize
from ranksearch.errors import RankSearchError


def test_step_of_is_nncodecs_step_at_qp_density_2():
    common = pytest.importorskip("nncodec.nnc_core.common")
    for qp in range(-90, 20):
        assert step_of(qp) == pytest.approx(common.get_stepsize_from_qp(qp, 2), rel=1e-12), qp
    assert step_of(-24) == 2**-6 and step_of(-38) == pytest.approx(6 * 2**-12)


def test_the_decoder_reconstructs_integer_multiples_of_the_step():
    pytest.importorskip("nncodec.nnc_core")
    from ranksearch.core._nnr import encode_tensors

    w = (np.random.default_rng(0).standard_normal((32, 48)) * 0.05).astype(np.float32)
    for qp in (-38, -31, -21):
        _, decoded = encode_tensors({"fc.weight": w}, {}, qp)
        levels = decoded["fc.weight"] / step_of(qp)
        assert np.abs(levels - np.round(levels)).max() < 1e-3, qp
        assert len(np.unique(np.round(levels))) > 3  # not all zero: the multiples are of this step


def _lattice(t: torch.Tensor, step: float) -> bool:
    return bool(torch.allclose(t / step, torch.round(t / step), atol=1e-4))


def test_the_weights_round_going_forward_and_train_straight_through():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4))
    param = model[0].weight
    w = param.detach().clone()
    x = torch.randn(5, 8)
    step = step_of(-20)
    with quantization_aware(model, {"0.weight": -20}):
        assert parametrize.is_parametrized(model[0], "weight") and model[0].parametrizations.weight.original is param
        rounded = torch.round(w / step) * step
        out = model(x)
        torch.testing.assert_close(out, F.linear(x, rounded, model[0].bias))
        out.square().sum().backward()
        wq = rounded.clone().requires_grad_()
        F.linear(x, wq, model[0].bias.detach()).square().sum().backward()
        torch.testing.assert_close(param.grad, wq.grad)  # the gradient of the rounded weight, passed straight to the float one
        assert not torch.equal(rounded, w)
    assert not parametrize.is_parametrized(model[0]) and model[0].weight is param  # the same parameter, an optimizer's still
    assert _lattice(param.detach(), step) and list(model.state_dict()) == ["0.weight", "0.bias"]


def test_a_pair_rounds_both_factors_and_any_coded_weight_by_name():
    torch.manual_seed(0)

    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gamma = nn.Parameter(torch.rand(6))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.gamma

    model = factorize(nn.Sequential(nn.Linear(10, 6), Scale(), nn.Linear(6, 3)), {"0": 2})
    assert isinstance(model[0], LowRank)
    with quantization_aware(model, {"0.weight": -16, "1.gamma": -12, "2.weight": -24}):
        pass
    g, h = model[0].matrices()
    assert _lattice(g.detach(), step_of(-16)) and _lattice(h.detach(), step_of(-16))
    assert _lattice(model[1].gamma.detach(), step_of(-12)) and _lattice(model[2].weight.detach(), step_of(-24))
    assert not _lattice(model[2].bias.detach(), step_of(-24))  # only what was named
    before = copy.deepcopy(model.state_dict())
    for bad in ("3.weight", "2.bias_x", "0.g.missing"):
        with pytest.raises(RankSearchError, match="is not a weight of this model"):
            with quantization_aware(model, {"2.weight": -8, bad: -20}):  # a good name first: it must not be rounded either
                pass
    assert not any(parametrize.is_parametrized(m) for m in model.modules())  # a refusal leaves nothing registered
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # and no weight changed


def test_the_share_says_where_the_quantization_aware_steps_begin():
    assert QuantAware(0.5, dict).start(10) == 5 and QuantAware(1.0, dict).start(10) == 0
    assert QuantAware(0.01, dict).start(10) == 9  # at least the last step
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(RankSearchError, match="must be in \\(0, 1\\]"):
            QuantAware(bad, dict)


def test_fit_trains_its_last_steps_through_the_rounding(dense_and_task):
    model, task = dense_and_task
    small = factorize(model, {"2": 4, "5": 8})  # tests/tinyspace.py: convs 0 and 2, linears 5 and 7
    names = ["0", "2", "5", "7"]
    qps = {f"{n}.weight": -14 for n in names}
    calls: list[tuple[bool, dict[str, torch.Tensor]]] = []

    def at_start(m: nn.Module) -> dict[str, int]:
        calls.append((m.training, copy.deepcopy(m.state_dict())))
        return qps

    reports: list[float | None] = []
    recipe = RetrainSettings(epochs=2, batch_size=32, lr_start=0.01, lr_end=0.001)
    fit(small, task, recipe, seed=0, device=torch.device("cpu"), validate=True, on_epoch=lambda e, v: reports.append(v),
        quantize=QuantAware(0.5, at_start))
    assert len(calls) == 1 and calls[0][0] is False  # asked once, in eval mode, as the quantization-aware half begins
    for n in names:
        module = small.get_submodule(n)
        tensors = module.matrices() if isinstance(module, LowRank) else (module.weight,)
        assert all(_lattice(t.detach(), step_of(-14)) for t in tensors), n
    assert any(not torch.equal(v, small.state_dict()[k]) for k, v in calls[0][1].items())  # it trained after the rounding began
    # the last report was of the rounded model, which is the model returned
    assert reports[-1] == pytest.approx(evaluate(small, task.val, task.metric, device=torch.device("cpu")))
    plain = copy.deepcopy(model)
    fit(plain, task, recipe, seed=0, device=torch.device("cpu"))
    assert not all(_lattice(m.weight.detach(), step_of(-14)) for m in plain.modules() if isinstance(m, nn.Linear))
