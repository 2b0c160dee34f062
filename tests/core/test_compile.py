"""torch.compile of factorized models: every pair type, odd ranks, channels-last or not, forward and backward
against eager; no graph breaks; the built-in retrain's ``compile`` option (fit, settings, CLI).

The inductor tests compile one model holding every pair type (C++ on CPU), once per memory format, so
the suite pays two compilations of a forward and a backward graph.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from ranksearch import RetrainSettings, SearchSettings
from ranksearch.cli._commands import _settings, _space
from ranksearch.cli._parser import parser
from ranksearch.core._layers import LowRank, LowRankConv, LowRankConvTranspose2d, LowRankLinear
from ranksearch.core._retrain import compile_for_training, fit
from ranksearch.core._surgery import factorize
from ranksearch.core._task import Task

CPU = torch.device("cpu")

#: layer -> rank: odd ranks that are no multiple of 8, and rank 1 (a 1-channel activation between the pair)
RANKS = {"conv": 17, "conv_strided": 1, "up": 9, "conv1d": 5, "fc": 7}


class _AllPairs(nn.Module):
    """Conv2d, strided/dilated Conv2d, ConvTranspose2d called with ``output_size``, Conv1d and Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(6, 32, 3, padding=1)
        self.conv_strided = nn.Conv2d(32, 24, 3, stride=2, padding=2, dilation=2, bias=False)
        self.up = nn.ConvTranspose2d(24, 16, 4, stride=2, padding=1)
        self.conv1d = nn.Conv1d(16, 20, 3, padding=1)
        self.fc = nn.Linear(20, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv(x))
        y = F.relu(self.conv_strided(y))
        y = F.relu(self.up(y, output_size=[x.shape[2] + 1, x.shape[3] + 1]))  # odd size: output_padding 1
        y = F.relu(self.conv1d(y.flatten(2)))
        return self.fc(y.mean(2))


def _factorized() -> nn.Module:
    torch.manual_seed(0)
    model = factorize(_AllPairs(), RANKS)
    assert {type(m) for m in model.children()} == {LowRankConv, LowRankConvTranspose2d, LowRankLinear}
    return model


def _step(call: nn.Module, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Output of ``call`` (``model`` or its compiled wrapper), ``model``'s parameter gradients and the
    input gradient of one forward and backward."""
    x = x.detach().clone().requires_grad_(True)
    out = call(x)
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return out.detach(), grads, x.grad.detach()


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_compiled_factorized_model_matches_eager_forward_and_backward(channels_last: bool, monkeypatch) -> None:
    eager = _factorized()
    compiled_model = _factorized()
    x = torch.randn(3, 6, 14, 14, generator=torch.Generator().manual_seed(1))
    if channels_last:
        eager.to(memory_format=torch.channels_last)
        compiled_model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    reads = []
    dense_weight = LowRank.weight
    monkeypatch.setattr(LowRank, "weight", property(lambda self: reads.append(self) or dense_weight.fget(self)))
    torch._dynamo.reset()
    compiled = compile_for_training(compiled_model)
    out_c, grads_c, gx_c = _step(compiled, compiled_model, x)
    out_e, grads_e, gx_e = _step(eager, eager, x)
    assert out_c.shape == (3, 10)
    torch.testing.assert_close(out_c, out_e, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gx_c, gx_e, rtol=1e-4, atol=1e-5)
    assert grads_c.keys() == grads_e.keys() and len(grads_c) == 14  # 5 pairs x 2 weights + 4 biases
    for name in grads_e:
        torch.testing.assert_close(grads_c[name], grads_e[name], rtol=1e-4, atol=1e-5, msg=name)
    assert reads == []  # nothing in tracing or in the graphs rebuilds the dense G @ H weight


class _Bottleneck(nn.Module):
    """A ResNet-style 3x3 conv whose factorized first layer (rank 8 of 32 input channels) is one of
    the convolutions (``out * 2 <= in``, kernel > 1) for which inductor refuses channels-last."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(32, 32, 3, padding=1)
        self.bn = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.bn(self.conv(x))).mean((2, 3)))


@pytest.mark.parametrize("channels_last", [False, True])
def test_compile_for_training_keeps_channels_last_layout_for_factorized_convs(channels_last: bool, monkeypatch) -> None:
    # inductor's decision on the real training graph, taken as on CUDA (oneDNN off: on a CPU with oneDNN
    # inductor always lays out channels-last); fit asks for channels_last on CUDA, where it trains so
    from torch._inductor.graph import GraphLowering

    decisions: list[bool] = []
    decide = GraphLowering.decide_layout_opt
    monkeypatch.setattr(GraphLowering, "decide_layout_opt",
                        staticmethod(lambda gm, *, is_inference: decisions.append(decide(gm, is_inference=is_inference)) or decisions[-1]))
    torch.manual_seed(0)
    model = factorize(_Bottleneck(), {"conv": 8}).to(memory_format=torch.channels_last)
    x = torch.randn(2, 32, 8, 8).to(memory_format=torch.channels_last)
    torch._dynamo.reset()
    # no cache: a graph compiled before (this run, or an earlier one on disk) is loaded without a decision
    with torch.backends.mkldnn.flags(enabled=False), torch._inductor.config.patch(force_disable_caches=True):
        compile_for_training(model, channels_last=channels_last)(x).sum().backward()
    assert decisions and set(decisions) == {channels_last}
    assert model.conv.h.weight.grad is not None


def test_factorized_model_compiles_to_one_graph() -> None:
    torch._dynamo.reset()
    report = torch._dynamo.explain(_factorized())(torch.randn(2, 6, 10, 10))
    assert (report.graph_count, report.graph_break_count) == (1, 0), report.break_reasons


def _blobs(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = 3.0 * F.one_hot(y, 6).float() + 0.5 * torch.randn(n, 6, generator=g)
    return TensorDataset(x, y)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(6, 24), nn.ReLU(), nn.Linear(24, 3))
    return factorize(dense, {"0": 5})


def test_fit_with_compile_trains_the_model_passed_in() -> None:
    """The real inductor path: the model handed to fit (not a wrapper) ends up trained, in eval mode, as
    an eager fit trains it (no dropout: the same run up to rounding)."""
    task = Task(_blobs(96, 0), _blobs(48, 1), _blobs(48, 2), loss="cross_entropy", metric="accuracy")
    model, eager = _mlp(), _mlp()
    before = [p.detach().clone() for p in model.parameters()]
    x, y = task.train.tensors
    with torch.no_grad():
        loss_before = float(F.cross_entropy(model(x), y))
    torch._dynamo.reset()
    settings = RetrainSettings(epochs=3, batch_size=32, lr_start=0.05, lr_end=0.005)
    out = fit(model, task, dataclasses.replace(settings, compile=True), device=CPU)
    assert out is model and not model.training
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    fit(eager, task, settings, device=CPU)
    for a, b in zip(model.parameters(), eager.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        assert float(F.cross_entropy(model(x), y)) < 0.7 * loss_before


def test_fit_with_compile_recompiles_once_for_a_short_last_batch(monkeypatch) -> None:
    """95 samples in batches of 10: one static graph for 10, one for the last 5, none for evaluation;
    the trained parameters are the model's own. (aot_eager stands in for inductor: the same tracing.)"""
    shapes: list[tuple[int, ...]] = []
    calls: list[dict[str, object]] = []

    aot_eager = torch._dynamo.lookup_backend("aot_eager")

    def backend(gm: torch.fx.GraphModule, inputs: list[torch.Tensor]):
        shapes.append(tuple(next(t for t in inputs if t.dim() == 2 and not t.requires_grad).shape))  # the batch
        return aot_eager(gm, inputs)

    real_compile = torch.compile

    def recording_compile(model: nn.Module, **kwargs: object) -> nn.Module:
        calls.append(kwargs)
        return real_compile(model, backend=backend, **kwargs)

    monkeypatch.setattr(torch, "compile", recording_compile)
    task = Task(_blobs(95, 0), _blobs(30, 1), _blobs(30, 2), loss="cross_entropy", metric="accuracy")
    eager, compiled_model = _mlp(), _mlp()
    torch._dynamo.reset()
    settings = RetrainSettings(epochs=2, batch_size=10, lr_start=0.05, lr_end=0.005)
    events: list[tuple[int, float | None]] = []
    fit(compiled_model, task, dataclasses.replace(settings, compile=True), device=CPU, validate=True, screen=0.5,
        on_epoch=lambda e, v: events.append((e, v)))
    assert calls == [{"dynamic": False}]
    assert shapes == [(10, 6), (5, 6)]  # static shapes; two epochs, a screen and three evaluations add nothing
    assert [e for e, _ in events] == [0, 1, 2]
    fit(eager, task, settings, device=CPU)
    for a, b in zip(compiled_model.parameters(), eager.parameters()):  # no dropout: the same run as eager
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_each_compiled_model_has_its_own_recompile_budget(monkeypatch) -> None:
    """A search compiles a model of new shapes per trial: all six here compile (two batch sizes each),
    none falls back to eager at Dynamo's recompile limit of 8."""
    graphs: list[int] = []

    def backend(gm: torch.fx.GraphModule, inputs: list[torch.Tensor]):
        graphs.append(len(inputs))
        return gm.forward

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda f, **kwargs: real_compile(f, backend=backend, **kwargs))
    torch._dynamo.reset()
    for rank in range(1, 7):
        torch.manual_seed(rank)
        model = factorize(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)), {"0": rank})
        forward = compile_for_training(model)
        for batch in (8, 5, 8):
            x = torch.randn(batch, 16)
            torch.testing.assert_close(forward(x), model(x))
    assert len(graphs) == 12


def test_compile_field_defaults_to_false_for_stored_recipes() -> None:
    """Recipes and studies stored before the field existed load with compile=False."""
    stored = SearchSettings(0.2, retrain=RetrainSettings(epochs=3)).to_dict()
    assert stored["retrain"].pop("compile") is False
    s = SearchSettings.from_dict(stored)
    assert s.retrain == RetrainSettings(epochs=3) and s.retrain.compile is False
    assert RetrainSettings(**{k: v for k, v in stored["retrain"].items()}).compile is False
    on = SearchSettings(0.2, retrain=RetrainSettings(compile=True))
    assert SearchSettings.from_dict(on.to_dict()).retrain.compile is True
    assert on.differences(SearchSettings(0.2, retrain=RetrainSettings())) == [
        ("retrain", on.to_dict()["retrain"], {**on.to_dict()["retrain"], "compile": False})]
    with pytest.raises(ValueError, match="compile 'yes' must be true or false"):
        RetrainSettings(compile="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("flags, epochs, compiled", [([], 2, False), (["--compile"], 2, True),
                                                     (["--epochs", "1", "--compile"], 1, True)])
def test_cli_compile_flag_sets_the_retrain_recipe(flags: list[str], epochs: int, compiled: bool, tmp_path) -> None:
    args = parser().parse_args(["search", "--space", "tiny-digits", "--ratio", "0.2", "--out", str(tmp_path), *flags])
    space = _space(args)
    settings = _settings(args, space, 0.2, {})
    assert settings.retrain is not None
    assert (settings.retrain.epochs, settings.retrain.compile) == (epochs, compiled)
    assert settings.retrain.lr_start == 0.001  # the rest of the space's recipe is kept
