"""The short retrain of a factorized model, and the metrics that score it.

The learning rate moves geometrically from ``lr_start`` to ``lr_end`` over all steps (the CE1 tables
write this as ".05->.00001"). Optional knowledge distillation mixes the task loss with a loss towards
the dense model's outputs. Runs on CUDA when present (bf16 autocast, channels-last for convs), else CPU.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ranksearch._fields import document, option, validate
from ranksearch.core._inputs import Forward, call, to_device
from ranksearch.core._qat import QuantAware, quantization_aware
from ranksearch.core._task import Task
from ranksearch.errors import RankSearchError

__all__ = ["Optimizer", "RetrainSettings", "best_device", "compile_for_training", "evaluate", "fit", "sample_scores"]

_log = logging.getLogger(__name__)

#: Called after each epoch with (epoch index from 1, validation metric or None); may raise to stop.
EpochCallback = Callable[[int, float | None], None]


class Optimizer(StrEnum):
    SGD = "sgd"  #: momentum 0.9, Nesterov
    ADAM = "adam"


RETRAIN = "retrain (default: the space's recipe)"


@dataclass(frozen=True)
class RetrainSettings:
    epochs: int = option(2, "passes over the training set", "int", low=0, group=RETRAIN)
    batch_size: int = option(64, "samples per step", "int", low=1)
    lr_start: float = option(0.01, "learning rate of the first step", "float", low=0, open_low=True)
    lr_end: float = option(1e-4, "learning rate of the last step (geometric interpolation in between)", "float", low=0,
                           open_low=True)
    optimizer: Optimizer = option(Optimizer.SGD, "sgd (momentum 0.9, Nesterov) or adam", "choice", choices=Optimizer)
    weight_decay: float = option(0.0, "L2 penalty", "float", low=0)
    distill: float = option(0.0, "weight in [0, 1] of the distillation loss towards the dense model (0: off)", "float", low=0,
                            high=1, group=RETRAIN)
    temperature: float = option(2.0, "softmax temperature of the distillation loss for classifiers", "float", low=0, open_low=True)
    max_steps_per_epoch: int | None = option(None, "cap on steps per epoch (None: the whole training set)", "int", low=1,
                                             optional=True)
    compile: bool = option(False, "train through torch.compile (inductor): compiling costs time per trial, worth it for long "
                           "retrains (older stored recipes, which lack the field, load with False)", "bool", group=RETRAIN)

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["optimizer"] = str(self.optimizer)
        return d


document(RetrainSettings, "Recipe of a (re)training run.")


def best_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def compile_for_training(model: nn.Module, how: Forward | None = None, *, channels_last: bool = False) -> Callable[[Any], torch.Tensor]:
    """``model``'s forward through ``torch.compile`` (inductor), as :func:`fit` trains it: a function of
    the batch that calls ``model`` itself, so its parameters, buffers and ``training`` flag are the model's
    and training through it trains ``model``.

    Shapes are static (``dynamic=False``): a short last batch costs one recompile for its size, after which
    both graphs stay static. With the default (``dynamic=None``) that recompile would make the batch size
    symbolic, and since Dynamo tries its newest graph first, every later full batch would run the dynamic
    graph, for which inductor also turns off its channels-last layout optimization.

    The function has a code object of its own, so its graphs are cached with it (and freed with it) and
    count against Dynamo's recompile limit (8) apart from every other compiled model: ``torch.compile``
    of a module caches the graphs of all modules on one shared frame, so in a search, whose trials each
    bring new shapes, training would silently turn eager at the fifth trial (with a short last batch; the
    ninth without).

    ``channels_last`` (what :func:`fit` passes on CUDA, where it trains channels-last): inductor keeps
    activations channels-last too (``force_layout_optimization``). Its own rule for training graphs
    (``GraphLowering.decide_layout_opt``) refuses the layout for a whole graph as soon as one convolution
    has ``out * 2 <= in`` and a kernel larger than 1x1, which the first layer of every factorized k x k
    convolution of rank at most half its input channels has (the dense ResNet50 has none); then every
    activation that inductor writes is contiguous, and each convolution of the channels-last model
    reads it in the other layout. On a CPU with oneDNN inductor lays out channels-last anyway.
    """
    def forward(x: Any) -> torch.Tensor:
        return call(model, x, how)

    forward.__code__ = forward.__code__.replace()  # a copy: Dynamo keys its cache by code object
    layout: dict[str, Any] = {"options": {"force_layout_optimization": True}} if channels_last else {}
    compiled: Callable[[Any], torch.Tensor] = torch.compile(forward, dynamic=False, **layout)
    return compiled


def _loader(data: Dataset, batch_size: int, shuffle: bool, seed: int, device: torch.device) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=g, pin_memory=device.type == "cuda")


def _task_loss(kind: str, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, target) if kind == "cross_entropy" else F.mse_loss(out, target)


def _distill_loss(kind: str, out: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    if kind != "cross_entropy":
        return F.mse_loss(out, teacher)
    t = temperature
    return F.kl_div(F.log_softmax(out / t, 1), F.log_softmax(teacher / t, 1), log_target=True, reduction="batchmean") * t * t


def fit(
    model: nn.Module,
    task: Task,
    settings: RetrainSettings,
    *,
    teacher: nn.Module | None = None,
    seed: int = 0,
    device: torch.device | None = None,
    on_epoch: EpochCallback | None = None,
    validate: bool = False,
    screen: float = 0.0,
    subset: Dataset | None = None,
    quantize: QuantAware | None = None,
) -> nn.Module:
    """Train ``model`` in place on ``task.train`` and return it (on ``device``, in eval mode).

    With ``settings.compile`` the training steps run through :func:`compile_for_training` (the returned
    model is still ``model``, trained, not the compiled wrapper); the teacher and every evaluation run eager,
    so evaluation batches never compile. Each ``fit`` compiles its model once, and once more for a short last
    batch. Compiled dropout draws from inductor's own generator, so a compiled run is not bitwise the eager one.

    Args:
        model: The model to train.
        task: Data, loss and metric.
        settings: The recipe.
        teacher: Dense model for distillation (used when ``settings.distill > 0``).
        seed: Seeds the shuffling and dropout, so equal seeds give equal runs on CPU.
        device: Where to train (default: :func:`best_device`).
        on_epoch: Called after each epoch with the validation metric when ``validate``.
        validate: Evaluate ``task.val`` after each epoch (for pruning).
        screen: With ``validate``, also evaluate after this fraction of the first epoch and call
            ``on_epoch(0, value)`` (the gate pruner's cheap first look; 0: not).
        subset: With ``validate``, the validation data of the screen and of every epoch's report but
            the last (default: ``task.val``); the last epoch is always scored on ``task.val``.
        quantize: Train the last steps quantization-aware (:class:`~ranksearch.core._qat.QuantAware`): from its start, each
            coded weight is rounded to its qp's step going forward (straight through going back), the reports after it
            are of the rounded model, and the model returned holds the float weights.
    """
    device = device or best_device()
    torch.manual_seed(seed)
    model.to(device)
    cuda = device.type == "cuda"
    if cuda:
        model.to(memory_format=torch.channels_last)
    teacher = teacher if settings.distill > 0 else None  # distillation off: no teacher
    if teacher is not None:
        teacher.to(device).eval()
    loader = _loader(task.train, settings.batch_size, True, seed, device)
    steps_per_epoch = len(loader) if settings.max_steps_per_epoch is None else min(len(loader), settings.max_steps_per_epoch)
    total = max(1, steps_per_epoch * settings.epochs)
    net = compile_for_training(model, task.forward, channels_last=cuda) if settings.compile else (lambda batch: call(model, batch, task.forward))
    params = [p for p in model.parameters() if p.requires_grad]
    if settings.optimizer is Optimizer.SGD:
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=settings.lr_start, momentum=0.9, nesterov=True, weight_decay=settings.weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=settings.lr_start, weight_decay=settings.weight_decay)
    decay = math.log(settings.lr_end / settings.lr_start) / max(1, total - 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: math.exp(decay * min(step, total - 1)))
    screen_at = math.ceil(screen * steps_per_epoch) if validate and screen > 0 and settings.epochs > 0 else None
    begin, done = -1 if quantize is None else quantize.start(total), 0
    with contextlib.ExitStack() as rounding:  # the rounding, once it is entered, until the retrain ends
        for epoch in range(1, settings.epochs + 1):
            model.train()
            running = torch.zeros((), device=device)
            for step, (x, y) in enumerate(loader):
                if step >= steps_per_epoch:
                    break
                if done == begin:  # the quantization-aware part begins (never without one: begin is -1)
                    assert quantize is not None
                    qps = quantize.qps(model.eval())
                    rounding.enter_context(quantization_aware(model, qps))
                    _log.debug("step %d: the last %d%% of the retrain trains quantization-aware (%d weights)", done,
                               round(100 * quantize.fraction), len(qps))
                    model.train()
                done += 1
                if epoch == 1 and step == screen_at:  # never at steps_per_epoch: that is the epoch's own report
                    screened = evaluate(model, task.val if subset is None else subset, task.metric, device=device, forward=task.forward)
                    _log.debug("screen after %d of %d steps: val %s %.4f", step, steps_per_epoch, task.metric, screened)
                    model.train()
                    if on_epoch is not None:
                        on_epoch(0, screened)
                x, y = to_device(x, device, True), y.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                    out = net(x)
                    loss = _task_loss(task.loss, out.float(), y)
                    if teacher is not None:
                        with torch.no_grad():
                            t_out = call(teacher, x, task.forward).float()
                        loss = (1 - settings.distill) * loss + settings.distill * _distill_loss(task.loss, out.float(), t_out, settings.temperature)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                running += loss.detach()
            data = task.val if subset is None or epoch == settings.epochs else subset
            value: float | None = evaluate(model, data, task.metric, device=device, forward=task.forward) if validate else None
            _log.debug(
                "epoch %d/%d loss %.4f lr %.2e%s", epoch, settings.epochs, float(running) / max(1, steps_per_epoch),
                opt.param_groups[0]["lr"], "" if value is None else f" val {task.metric} {value:.4f}",
            )
            if on_epoch is not None:
                on_epoch(epoch, value)
    return model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, metric: str, *, batch_size: int = 256, device: torch.device | None = None,
             forward: Forward | None = None) -> float:
    """``metric`` of ``model`` on ``data``: accuracy or top-5 in [0, 1], or mean PSNR in dB on [0, 1] images
    (each input batch called as :func:`ranksearch.core._inputs.call` does, ``forward`` when given)."""
    scores = sample_scores(model, data, metric, batch_size=batch_size, device=device, forward=forward)
    return float(scores.sum()) / max(1, len(scores))


def sample_scores(model: nn.Module, data: Dataset, metric: str, *, batch_size: int = 256, device: torch.device | None = None,
                  forward: Forward | None = None) -> torch.Tensor:
    """The ``metric`` of each sample of ``data`` (1 or 0 for accuracy and top-5, PSNR in dB), on the CPU, in
    order: :func:`evaluate` is their mean, and two models scored on the same data can be compared sample by
    sample (a paired difference)."""
    if metric not in ("accuracy", "top5", "psnr"):
        raise RankSearchError(f"metric {metric!r} is not supported; use accuracy, top5 or psnr.")
    device = device or best_device()
    model.to(device).eval()
    scores = []
    for x, y in _loader(data, batch_size, False, 0, device):
        x, y = to_device(x, device, True), y.to(device, non_blocking=True)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = call(model, x, forward).float()
        if metric == "accuracy":
            scores.append(out.argmax(1) == y)
        elif metric == "top5":
            scores.append((out.topk(min(5, out.shape[1]), 1).indices == y[:, None]).any(1))
        else:
            scores.append(-10 * torch.log10(((out.clamp(0, 1) - y) ** 2).flatten(1).mean(1).clamp_min(1e-10)))
    return torch.cat(scores).double().cpu() if scores else torch.zeros(0, dtype=torch.float64)
