"""What scores a trial: the metric on validation data, the short retrain, the metric on test data.

Either built from a :class:`~ranksearch.core.Task` (the built-in retrain and metric,
:func:`task_callables`) or the user's own ``evaluate`` and ``retrain`` (:func:`user_callables`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from ranksearch.core._inputs import Forward
from ranksearch.core._qat import QuantAware
from ranksearch.core._retrain import RetrainSettings, fit
from ranksearch.core._retrain import evaluate as evaluate_metric
from ranksearch.core._task import Task

__all__ = ["Callables", "Evaluate", "Retrain", "accepts", "sample_shape", "subset_of", "task_callables", "user_callables"]

Evaluate = Callable[[nn.Module], float]
Retrain = Callable[..., Any]


def accepts(fn: Callable[..., Any], keyword: str) -> bool:
    """Whether a retrain callable takes ``keyword``: ``report=`` (so the pruner can stop it), ``quantize=`` (the built-in one)."""
    try:
        return keyword in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class Callables:
    """The metric on validation data, the short retrain, the metric on test data, and the metric's name."""

    evaluate: Evaluate
    retrain: Retrain | None
    test: Evaluate | None
    metric: str
    quick: tuple[Evaluate, int] | None = None  #: the metric on the screen's validation subset, and its size
    input_shape: tuple[int, ...] | None = None  #: one input sample's shape, for the cost model
    val: Dataset[Any] | None = None  #: the task's validation split (None with the user's own evaluate)
    inputs: Sequence[Any] | None = None  #: the calibration input batches, when given (the ``output`` probes' fallback)
    forward: Forward | None = None

    def retrain_with(self, model: nn.Module, report: Callable[..., None] | None = None, quantize: QuantAware | None = None) -> Any:
        """Run the retrain on ``model`` (it must be given): ``report`` where it takes one, ``quantize`` (which only the
        built-in retrain takes: the plan checks) where given; returns what the retrain returns."""
        assert self.retrain is not None
        kwargs: dict[str, Any] = {} if quantize is None else {"quantize": quantize}
        if report is not None and accepts(self.retrain, "report"):
            kwargs["report"] = report
        return self.retrain(model, **kwargs)

    def retrain_again(self, model: nn.Module, quantize: QuantAware | None = None) -> None:
        """Retrain ``model`` as a trial does, without reporting (the best trial's weights were not kept); ``quantize``: as a
        byte working point's trial that trained its last steps quantization-aware."""
        if self.retrain is not None:
            self.retrain_with(model, lambda step, value, last=False: None, quantize)


def sample_shape(task: Task) -> tuple[int, ...] | None:
    """Shape of the task's first validation input (None when it is not a tensor)."""
    try:
        x = task.val[0][0]
    except (IndexError, TypeError, KeyError):
        return None
    return tuple(int(d) for d in x.shape) if isinstance(x, torch.Tensor) else None


def batch_shape(batches: Sequence[Any] | None) -> tuple[int, ...] | None:
    """One sample's shape from the first calibration batch, when it is a tensor."""
    first = batches[0] if batches else None
    return tuple(int(d) for d in first.shape[1:]) if isinstance(first, torch.Tensor) and first.dim() > 1 else None


def subset_of(data: Dataset[Any], samples: int) -> Dataset[Any] | None:
    """``samples`` of ``data`` drawn with seed 0 (the same in every process), or None for all of it
    (``samples`` 0, or at least its length)."""
    n = len(data)  # type: ignore[arg-type]
    if samples <= 0 or samples >= n:
        return None
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:samples]
    return Subset(data, sorted(order.tolist()))


def task_callables(task: Task, recipe: RetrainSettings, teacher: nn.Module, seed: int, screen: float = 0.0,
                   screen_samples: int = 0) -> Callables:
    """The built-in metric, retrain and test metric of a ``task``. The retrain reports the validation
    metric after each epoch, and as step 0 after ``screen`` of the first epoch (when > 0), scoring every
    report but the last on ``screen_samples`` validation samples (a fixed subset; 0: all); its ``quantize`` trains its
    last steps quantization-aware (:func:`~ranksearch.core._retrain.fit`)."""
    subset = subset_of(task.val, screen_samples)

    def evaluate(model: nn.Module) -> float:
        return evaluate_metric(model, task.val, task.metric, forward=task.forward)

    def retrain(model: nn.Module, report: Callable[..., None], quantize: QuantAware | None = None) -> float | None:
        last: list[float | None] = [None]

        def on_epoch(step: int, value: float | None) -> None:
            last[0] = value
            if step == recipe.epochs:  # the retrain is done: nothing left to save by pruning it
                report(step, value, last=True)
            else:
                report(step, value)

        fit(model, task, recipe, teacher=teacher, seed=seed, on_epoch=on_epoch, validate=True, screen=screen, subset=subset,
            quantize=quantize)
        return last[0]  # the validation metric after the last epoch (None without epochs)

    def test(model: nn.Module) -> float:
        return evaluate_metric(model, task.test, task.metric, forward=task.forward)

    def quick(model: nn.Module) -> float:
        return evaluate_metric(model, subset, task.metric, forward=task.forward)  # type: ignore[arg-type]

    return Callables(evaluate, retrain, test, task.metric, None if subset is None else (quick, len(subset)),  # type: ignore[arg-type]
                     sample_shape(task), task.val, None, task.forward)


def user_callables(evaluate: Evaluate, retrain: Retrain | None, calibration: Sequence[Any] | None,
                   forward: Forward | None) -> Callables:
    """The user's own metric and retrain (no test metric: the user reports it)."""
    return Callables(evaluate, retrain, None, getattr(evaluate, "__name__", "evaluate"), input_shape=batch_shape(calibration),
                     inputs=calibration, forward=forward)
