"""A latency working point in a study: its timing table, measured once, and the allocator that keeps to it.

The process that creates the study measures the per-layer timing table (:func:`measure_timing`) before
the study is written, and the setup stores it; every process then allocates with the stored table
(:func:`limited`): each layer only at ranks whose pair runs faster than the dense layer, and the
eligible layers together within the latency fraction. The winner's end-to-end latency is measured
against the dense model's, side by side (:func:`end_to_end`), and recorded in its config.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ranksearch.core._cost import CPU_BLOCK
from ranksearch.core._retrain import best_device
from ranksearch.core._timing import Runtime, TimingTable, calibrate, measure_models, measure_table
from ranksearch.errors import StudyError
from ranksearch.study._allocator import Allocator

__all__ = ["LatencyPlan", "end_to_end", "limited", "measure_timing"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatencyPlan:
    """A latency working point: at most ``fraction`` of the dense model's seconds on ``runtime``, batches of ``batch``."""

    fraction: float
    runtime: Runtime
    batch: int

    def device(self) -> torch.device:
        """Where it is measured: the CPU for onnxruntime, else the device the search retrains on."""
        return torch.device("cpu") if self.runtime is Runtime.ONNXRUNTIME else best_device()

    @property
    def block(self) -> int | None:
        """The channel block ranks go on when it is measured on the CPU (``rank_multiple`` auto; None on CUDA)."""
        return CPU_BLOCK if self.device().type == "cpu" else None

    def example(self, input_shape: tuple[int, ...] | None) -> torch.Tensor:
        """A batch of random inputs (a time does not depend on the values)."""
        if input_shape is None:
            raise StudyError("A latency working point times the model on inputs of its shape, which is not known here: "
                             "give task= or calibration= batches, or Components(input_shape=...).")
        return torch.randn(self.batch, *input_shape, generator=torch.Generator().manual_seed(0)).to(self.device())


def measure_timing(model: nn.Module, allocator: Allocator, plan: LatencyPlan, input_shape: tuple[int, ...] | None,
                   progress: bool = False) -> TimingTable:
    """The timing table of the allocator's layers, each at the ranks of its grid the table samples."""
    example = plan.example(input_shape)
    here = copy.deepcopy(model).to(example.device).eval()
    curves = allocator.views.plain_curves
    _log.info("timing %d layers at up to 8 ranks each on %s (batch %d, %s)", len(curves), plan.runtime.value, plan.batch, example.device)
    table = measure_table(here, curves, example, plan.runtime, multiple=allocator.grid, min_rank=allocator.min_rank, progress=progress)
    table = _calibrated(table, here, allocator, plan, example)
    slow = sorted(n for n, r in table.limits(curves).items() if r == 0)
    _log.info("dense model %.3g ms on %s; %d of %d layers have no faster pair and stay dense%s", table.model * 1e3,
              plan.runtime.value, len(slow), len(curves), f" ({', '.join(slow[:4])}{', ...' if len(slow) > 4 else ''})" if slow else "")
    return table


def _calibrated(table: TimingTable, model: nn.Module, allocator: Allocator, plan: LatencyPlan, example: torch.Tensor) -> TimingTable:
    # model: the dense model on the example's device
    """``table`` calibrated on the allocation that saves most when timed alone (every layer at its smallest rank
    within the limits: the largest signal against the timing noise), timed against dense, side by side."""
    start = time.perf_counter()
    ranks = table.fastest(allocator.views.plain_curves, allocator.grid, allocator.min_rank)
    out = calibrate(table, model, ranks, example, plan.runtime, allocator.views.plain_factors)
    if out is table:  # no layer has a faster pair: nothing to calibrate on
        return table
    _log.info("calibrated on every layer at its smallest rank within the limits (%.3fx of dense predicted alone, %.3fx measured "
              "in place): pairs save %.2fx in place what they save timed alone", table.predicted(ranks) / table.model,
              out.predicted(ranks) / out.model, out.scale)
    return dataclasses.replace(out, took_s=table.took_s + time.perf_counter() - start)


def limited(allocator: Allocator, table: TimingTable, fraction: float) -> Allocator:
    """``allocator`` keeping to ``table``: each layer at most at its largest faster rank, and the eligible
    layers within ``fraction`` of the dense model's seconds."""
    views = allocator.views
    limits = table.limits(views.plain_curves)

    def capped(curves: Mapping[str, Any]) -> dict[str, Any]:
        return {n: dataclasses.replace(c, limit=limits[n]) for n, c in curves.items()}

    views = dataclasses.replace(views, curves=capped(views.curves), plain_curves=capped(views.plain_curves))
    return dataclasses.replace(allocator, views=views, latency=table.latency(views.plain_curves, fraction), timing=table)


def end_to_end(dense: nn.Module, factorized: nn.Module, table: TimingTable, plan: LatencyPlan,
               input_shape: tuple[int, ...] | None, ranks: Mapping[str, int | None]) -> dict[str, Any]:
    """The dense and the factorized model's seconds, measured side by side, and what the table predicted."""
    example = plan.example(input_shape)
    models = [copy.deepcopy(m).to(example.device).eval() for m in (dense, factorized)]
    dense_s, factorized_s = measure_models(models, example, plan.runtime)
    predicted = table.predicted(ranks)
    out: dict[str, Any] = {"runtime": plan.runtime.value, "batch": plan.batch, "device": str(example.device), "threads": torch.get_num_threads(),
           "target": plan.fraction, "dense_s": dense_s, "factorized_s": factorized_s, "ratio": factorized_s / dense_s,
           "predicted_ratio": predicted / table.model}
    _log.info("latency on %s (batch %d): dense %.3g ms, factorized %.3g ms: %.3fx of dense (the timing table predicted %.3fx)",
              plan.runtime.value, plan.batch, dense_s * 1e3, factorized_s * 1e3, out["ratio"], out["predicted_ratio"])
    if out["ratio"] > plan.fraction:
        _log.warning("the winner runs %.3fx of the dense model's time, above the target %gx, where the timing table predicted %.3fx: "
                     "layers timed alone mispredict a model this fast (%.3g ms); time a larger --latency-batch or ask for a lower "
                     "--latency", out["ratio"], plan.fraction, out["predicted_ratio"], dense_s * 1e3)
    return out
