"""Tests of ranksearch.core._retrain: the short retrain, its schedule, distillation and the metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.data import TensorDataset

from ranksearch.core._retrain import RetrainSettings, evaluate, fit
from ranksearch.core._task import Task

CPU = torch.device("cpu")


def _blobs(n: int, seed: int) -> TensorDataset:
    """Three well separated Gaussian blobs in 6-D."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[3.0, 0, 0, 0, 0, 0], [0, 3.0, 0, 0, 0, 0], [0, 0, 3.0, 0, 0, 0]])
    y = torch.randint(0, 3, (n,), generator=g)
    x = centers[y] + 0.5 * torch.randn(n, 6, generator=g)
    return TensorDataset(x, y)


def _task(n_train: int = 96) -> Task:
    return Task(_blobs(n_train, 0), _blobs(48, 1), _blobs(48, 2), loss="cross_entropy", metric="accuracy")


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 3))


def _loss(model: nn.Module, data: TensorDataset) -> float:
    x, y = data.tensors
    model.eval()
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))


class _LrRecorder:
    """Learning rate of the first param group at every optimizer step."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def __enter__(self) -> _LrRecorder:
        self.handle = register_optimizer_step_pre_hook(lambda opt, args, kwargs: self.lrs.append(opt.param_groups[0]["lr"]))
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_fit_lowers_training_loss(optimizer: str) -> None:
    task = _task()
    model = _net()
    before = _loss(model, task.train)
    lr = 0.05 if optimizer == "sgd" else 0.03
    settings = RetrainSettings(epochs=4, batch_size=16, lr_start=lr, lr_end=lr / 10, optimizer=optimizer)
    out = fit(model, task, settings, device=CPU)
    assert out is model and not model.training
    after = _loss(model, task.train)
    assert after < 0.5 * before
    assert evaluate(model, task.val, "accuracy", device=CPU) > 0.9


@pytest.mark.parametrize(
    "epochs, batch_size, n_train, max_steps, lr_start, lr_end",
    [
        (3, 16, 96, None, 0.05, 1e-4),  # 6 steps per epoch
        (2, 10, 95, None, 0.1, 0.001),  # last batch short: 10 steps per epoch
        (2, 8, 96, 3, 0.01, 0.02),  # capped; a rising schedule is allowed
        (1, 200, 96, None, 0.03, 0.0003),  # a single step: lr_start
    ],
)
def test_learning_rate_is_geometric(epochs, batch_size, n_train, max_steps, lr_start, lr_end) -> None:
    task = _task(n_train)
    settings = RetrainSettings(epochs=epochs, batch_size=batch_size, lr_start=lr_start, lr_end=lr_end,
                               max_steps_per_epoch=max_steps)
    per_epoch = math.ceil(n_train / batch_size)
    if max_steps is not None:
        per_epoch = min(per_epoch, max_steps)
    total = per_epoch * epochs
    with _LrRecorder() as rec:
        fit(_net(), task, settings, device=CPU)
    assert len(rec.lrs) == total
    if total == 1:
        expected = [lr_start]
    else:
        expected = [lr_start * (lr_end / lr_start) ** (k / (total - 1)) for k in range(total)]
    np.testing.assert_allclose(rec.lrs, expected, rtol=1e-9)
    assert rec.lrs[0] == pytest.approx(lr_start, rel=1e-12)
    if total > 1:
        assert rec.lrs[-1] == pytest.approx(lr_end, rel=1e-9)


def test_zero_epochs_leaves_model_unchanged() -> None:
    model = _net()
    before = [p.clone() for p in model.parameters()]
    with _LrRecorder() as rec:
        fit(model, _task(), RetrainSettings(epochs=0), device=CPU)
    assert rec.lrs == []
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    task = _task()
    settings = RetrainSettings(epochs=2, batch_size=16, lr_start=0.05, lr_end=0.001)
    a = fit(_net(), task, settings, seed=3, device=CPU)
    b = fit(_net(), task, settings, seed=3, device=CPU)
    c = fit(_net(), task, settings, seed=4, device=CPU)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))


def _kl(student: nn.Module, teacher: nn.Module, x: torch.Tensor, t: float = 2.0) -> float:
    student.eval()
    teacher.eval()
    with torch.no_grad():
        return float(F.kl_div(F.log_softmax(student(x) / t, 1), F.log_softmax(teacher(x) / t, 1),
                              log_target=True, reduction="batchmean"))


def test_distillation_pulls_student_towards_teacher() -> None:
    task = _task()
    # the teacher disagrees with the labels: a permutation of a well-trained classifier's classes
    teacher = fit(_net(1), task, RetrainSettings(epochs=4, batch_size=16, lr_start=0.05, lr_end=0.005), device=CPU)
    with torch.no_grad():
        last = teacher[3]
        last.weight.copy_(last.weight[[1, 2, 0]])
        last.bias.copy_(last.bias[[1, 2, 0]])
    x = task.train.tensors[0]
    settings = dict(epochs=4, batch_size=16, lr_start=0.05, lr_end=0.005)
    start = _kl(_net(), teacher, x)
    plain = fit(_net(), task, RetrainSettings(**settings), device=CPU)
    distilled = fit(_net(), task, RetrainSettings(distill=1.0, **settings), teacher=teacher, device=CPU)
    half = fit(_net(), task, RetrainSettings(distill=0.5, **settings), teacher=teacher, device=CPU)
    kl_plain, kl_dist, kl_half = _kl(plain, teacher, x), _kl(distilled, teacher, x), _kl(half, teacher, x)
    assert kl_dist < 0.5 * start
    assert kl_dist < kl_half < kl_plain
    # pure distillation follows the teacher, not the labels
    with torch.no_grad():
        agree = (distilled(x).argmax(1) == teacher(x).argmax(1)).float().mean()
    assert agree > 0.9
    # without distill weight the teacher is ignored
    ignored = fit(_net(), task, RetrainSettings(**settings), teacher=teacher, device=CPU)
    for pa, pb in zip(ignored.parameters(), plain.parameters()):
        assert torch.equal(pa, pb)


def test_distillation_for_regression_uses_mse() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 8, generator=g)
    data = TensorDataset(x, x.clone())
    task = Task(data, data, data, loss="mse", metric="psnr")
    torch.manual_seed(5)
    teacher = nn.Linear(8, 8)
    student = nn.Linear(8, 8)
    with torch.no_grad():
        start = float(F.mse_loss(student(x), teacher(x)))
    fit(student, task, RetrainSettings(epochs=20, batch_size=16, lr_start=0.1, lr_end=0.01, distill=1.0),
        teacher=teacher, device=CPU)
    with torch.no_grad():
        assert float(F.mse_loss(student(x), teacher(x))) < 0.2 * start


def test_on_epoch_reports_validation_metric() -> None:
    task = _task()
    seen: list[tuple[int, float | None]] = []
    model = fit(_net(), task, RetrainSettings(epochs=3, batch_size=32), device=CPU, validate=True,
                on_epoch=lambda e, v: seen.append((e, v)))
    assert [e for e, _ in seen] == [1, 2, 3]
    assert all(isinstance(v, float) and 0 <= v <= 1 for _, v in seen)
    assert seen[-1][1] == evaluate(model, task.val, "accuracy", device=CPU)
    seen.clear()
    fit(_net(), task, RetrainSettings(epochs=2, batch_size=32), device=CPU, on_epoch=lambda e, v: seen.append((e, v)))
    assert seen == [(1, None), (2, None)]


class _Echo(nn.Module):
    """Returns its input: the dataset's inputs are the 'outputs' to score."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.mark.parametrize("batch_size", [1, 3, 256])
def test_evaluate_accuracy_and_top5(batch_size: int) -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((23, 9)).astype(np.float32)
    labels = rng.integers(0, 9, 23)
    data = TensorDataset(torch.from_numpy(logits), torch.from_numpy(labels))
    acc = np.mean(logits.argmax(1) == labels)
    ranks = (logits > logits[np.arange(23), labels][:, None]).sum(1)  # classes scoring above the label
    top5 = np.mean(ranks < 5)
    assert 0 < acc < top5 < 1
    assert evaluate(_Echo(), data, "accuracy", batch_size=batch_size, device=CPU) == pytest.approx(acc, abs=1e-12)
    assert evaluate(_Echo(), data, "top5", batch_size=batch_size, device=CPU) == pytest.approx(top5, abs=1e-12)


def test_top5_with_fewer_than_five_classes() -> None:
    data = TensorDataset(torch.randn(10, 3), torch.randint(0, 3, (10,)))
    assert evaluate(_Echo(), data, "top5", device=CPU) == 1.0


@pytest.mark.parametrize("batch_size", [2, 256])
def test_evaluate_psnr(batch_size: int) -> None:
    rng = np.random.default_rng(1)
    target = rng.random((7, 1, 4, 5)).astype(np.float32)
    out = (target + rng.normal(0, 0.1, target.shape)).astype(np.float32)  # partly outside [0, 1]
    out[0] = target[0]  # a perfect sample: mse floored at 1e-10 -> 100 dB
    assert out.min() < 0 or out.max() > 1
    mse = ((np.clip(out.astype(np.float64), 0, 1) - target) ** 2).reshape(7, -1).mean(1)
    psnr = np.mean(-10 * np.log10(np.maximum(mse, 1e-10)))
    data = TensorDataset(torch.from_numpy(out), torch.from_numpy(target))
    assert evaluate(_Echo(), data, "psnr", batch_size=batch_size, device=CPU) == pytest.approx(psnr, rel=1e-5)


def test_evaluate_unknown_metric() -> None:
    data = TensorDataset(torch.randn(4, 3), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="f1"):
        evaluate(_Echo(), data, "f1", device=CPU)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"epochs": -1}, ["epochs"]),
        ({"batch_size": 0}, ["batch_size"]),
        ({"lr_start": 0.0}, ["lr_start 0.0", "> 0"]),
        ({"lr_end": -1e-3}, ["lr_end -0.001", "> 0"]),
        ({"optimizer": "rmsprop"}, ["rmsprop"]),
        ({"distill": 1.5}, ["distill"]),
        ({"distill": -0.1}, ["distill"]),
    ],
)
def test_retrain_settings_validation(kwargs, words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        RetrainSettings(**kwargs)
    for word in words:
        assert word in str(info.value)


def test_retrain_settings_to_dict() -> None:
    s = RetrainSettings(epochs=3, lr_start=0.05, lr_end=1e-5, distill=0.5)
    d = s.to_dict()
    assert d["epochs"] == 3 and d["lr_start"] == 0.05 and d["lr_end"] == 1e-5 and d["distill"] == 0.5
    assert RetrainSettings(**d) == s


@pytest.mark.parametrize(
    "kwargs, words",
    [({"loss": "hinge"}, ["hinge"]), ({"metric": "f1"}, ["f1"]), ({"val": TensorDataset(torch.zeros(0, 2))}, ["val"])],
)
def test_task_validation(kwargs, words) -> None:
    data = _blobs(8, 0)
    base = dict(train=data, val=data, test=data, loss="cross_entropy", metric="accuracy")
    with pytest.raises(ValueError) as info:
        Task(**{**base, **kwargs})
    for word in words:
        assert word in str(info.value)


def test_reports_before_the_last_epoch_are_scored_on_the_subset() -> None:
    task = _task()
    x, y = task.val.tensors
    other = TensorDataset(x[:20], (y[:20] + 1) % 3)  # a different set: its accuracy is not val's
    settings = RetrainSettings(epochs=3, batch_size=16, lr_start=0.05, lr_end=0.001)
    seen: list[tuple[int, float, float, float]] = []

    def on_epoch(step: int, value: float | None) -> None:
        seen.append((step, value, evaluate(model, other, "accuracy", device=CPU), evaluate(model, task.val, "accuracy", device=CPU)))
        model.train()

    model = _net()
    fit(model, task, settings, seed=1, device=CPU, validate=True, screen=0.5, subset=other, on_epoch=on_epoch)
    assert [s[0] for s in seen] == [0, 1, 2, 3]
    assert all(value == sub for step, value, sub, _ in seen if step < 3)
    assert seen[-1][1] == seen[-1][3] != seen[-1][2]  # the last epoch: the whole validation split


def test_screen_reports_step_zero_first_and_does_not_change_the_run() -> None:
    task = _task()
    settings = RetrainSettings(epochs=2, batch_size=16, lr_start=0.05, lr_end=0.001)
    seen: list[tuple[int, float | None]] = []
    a = fit(_net(), task, settings, seed=3, device=CPU, validate=True, screen=0.25, on_epoch=lambda e, v: seen.append((e, v)))
    assert [e for e, _ in seen] == [0, 1, 2] and all(isinstance(v, float) for _, v in seen)
    b = fit(_net(), task, settings, seed=3, device=CPU, validate=True)  # same trajectory without the screen
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    seen.clear()
    fit(_net(), task, settings, seed=3, device=CPU, screen=0.25, on_epoch=lambda e, v: seen.append((e, v)))
    assert [e for e, _ in seen] == [1, 2]  # no validation: no screen
