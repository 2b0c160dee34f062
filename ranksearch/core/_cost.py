"""What a layer costs: parameters and multiply-adds (MACs) for one input sample.

A Linear / Conv / ConvTranspose layer applies its weight matrix (m x n, see
:func:`~ranksearch.core._layers.matrix_shape`) once per *position*: per output pixel for a convolution,
per input pixel for a transposed one, per token (every leading dimension but the batch) for a
Linear. Dense, that is ``m * n / groups`` MACs per position; a low-rank pair of rank r does
``r * (m + n)`` (its ``h`` and ``g`` run over the same positions), so per layer the factorized MACs
ratio is the parameter ratio, and a pair that saves parameters also saves MACs. The model's ratio
differs, because layers run over very different numbers of positions: an early conv at full
resolution counts its weights hundreds of times, a classifier once.

:func:`positions` finds the positions with one forward pass of a single sample (forward hooks); the
solver stays numpy-only and never sees this module. MACs count the Linear / Conv layers only
(normalization, activations and pooling are a few percent of them and not counted).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ranksearch.core._layers import DENSE_TYPES, matrix_shape
from ranksearch.core._solver import BAND, Curve, log2_ranks, project_ranks, reachable_ratio, solve_ratio
from ranksearch.errors import RankSearchError

__all__ = ["CPU_BLOCK", "GRID_SHARE", "TENSOR_CORE_MULTIPLE", "ModelCost", "dense_macs", "model_cost", "positions", "rank_multiple_for"]

#: rank step for CUDA half / bf16: tensor cores want matrix sizes in multiples of 8 (PyTorch's tuning
#: guide); one 4096-wide layer of rank 1017 ran 5x slower than at 1016 in a bf16 test
TENSOR_CORE_MULTIPLE = 8
#: rank step of a latency working point on the CPU: onnxruntime's and oneDNN's convolutions block channels
#: by 8 (AVX2); a rank off the block breaks the blocked layout between the pair's two convolutions. MobileNetV2
#: at its Table 1 points on onnxruntime: the seed rule 1.15-1.28x of dense on a grid of 1, 0.96-0.99x on 8
#: (benchmarks/LOG.md, "Latency working points")
CPU_BLOCK = 8
#: auto's CUDA grid: one rank step of the widest layer may cost at most this share of the kept parameters
GRID_SHARE = 0.02
_log = logging.getLogger(__name__)


def rank_multiple_for(device: torch.device, fallback: int = 1, curves: Mapping[str, Curve] | None = None,
                      target_ratio: float | None = None, total_params: int | None = None, min_rank: int = 1,
                      block: int | None = None) -> int:
    """The rank step ``rank_multiple="auto"`` means on ``device``: :data:`TENSOR_CORE_MULTIPLE` on
    CUDA (the retrain runs there under bf16 autocast), else ``block`` when given (a latency working
    point on the CPU: :data:`CPU_BLOCK`), else ``fallback`` (the space's setting).

    Given the layers' ``curves``, the ``target_ratio`` and the model's ``total_params``, a CUDA step
    is halved (8, 4, 2, 1), with a warning, until both hold:

    * one step in the widest layer (``step * (m + n)``) costs at most :data:`GRID_SHARE` of the
      parameters the model keeps. On a small model a coarser grid, not the layers' errors, decides
      the allocation: grids of 8 and 4 cost mnist5k-cnn (one step of its first FC: 62% of what it
      keeps at 0.05) 1.0 and 2.2 test standard errors at 0.05 and 0.03, a grid of 2 cost dcase-audio
      2.1 at 0.15; and matrices that small give tensor cores nothing to gain. ResNet50, VGG16 and
      MobileNetV2 keep 8 at every Table 1 point;
    * the CE1 rule on that grid, and projections of seeded random steps around it (what the
      incumbent space's trials are), land within :data:`~ranksearch.core._solver.BAND` below the target.
    """
    if device.type != "cuda" and block is None:
        return fallback
    step = TENSOR_CORE_MULTIPLE if device.type == "cuda" else int(block)  # type: ignore[arg-type]
    wanted = step
    if curves is not None and target_ratio is not None and total_params is not None and curves:
        reasons, widest = [], max(sum(c.shape) for c in curves.values())
        kept = target_ratio * total_params
        while step > 1 and step * widest > GRID_SHARE * kept:
            step //= 2
        if step < wanted:
            reasons.append(f"a step of {2 * step} in the widest layer costs {2 * step * widest / kept:.1%} of the "
                           f"{kept:,.0f} parameters kept at {target_ratio:g}, over {GRID_SHARE:.0%}")
        fine = step
        while step > 1 and not _lands(curves, target_ratio, total_params, step, min_rank):
            step //= 2
        if step < fine:
            reasons.append(f"on the grid of {2 * step} the allocations do not all land within {BAND:g} below the target")
        if reasons:
            _log.warning("rank multiple auto: %d instead of %d (%s): the layers are too small for the blocked kernels to gain",
                         step, wanted, "; ".join(reasons))
    return step


def _lands(curves: Mapping[str, Curve], target: float, total: int, step: int, min_rank: int, probes: int = 16) -> bool:
    """The CE1 rule on the grid of ``step``, and the projections of ``probes`` seeded random steps
    around it (sd 0.5 in log2 rank per layer), land within BAND below ``target``."""
    if reachable_ratio(curves, total, step, min_rank) > target:
        return False
    sol = solve_ratio(curves, target, total, None, step, min_rank)
    if sol.ratio < target - BAND:
        return False
    base = log2_ranks(curves, sol.ranks)
    rng = np.random.default_rng(0)
    for _ in range(probes):
        targets = {n: v + float(rng.normal(0.0, 0.5)) for n, v in base.items()}
        if not target - BAND <= project_ranks(curves, targets, target, total, step, min_rank).ratio <= target:
            return False
    return True


def _dims(t: object) -> tuple[int, ...]:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else ()


@torch.no_grad()
def positions(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """Positions per sample at which each Linear / Conv / ConvTranspose layer of ``model`` applies its
    weight, from one forward pass of a zero sample of ``input_shape`` (without the batch dimension).

    Raises:
        RankSearchError: when the model does not run on that shape (the message names it).
    """
    counts: dict[str, int] = {}
    hooks = []

    def hook(name: str):  # type: ignore[no-untyped-def]
        def record(mod: nn.Module, args: tuple[object, ...], out: object) -> None:
            if isinstance(mod, nn.ConvTranspose2d):
                shape = _dims(args[0])[2:] if args else ()
            elif isinstance(mod, nn.Linear):
                shape = _dims(out)[1:-1]
            else:
                shape = _dims(out)[2:]
            counts[name] = counts.get(name, 0) + math.prod(shape)  # a layer called twice counts twice
        return record

    for name, module in model.named_modules():
        if isinstance(module, DENSE_TYPES):
            hooks.append(module.register_forward_hook(hook(name)))
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = model.training
    try:
        model.eval()
        model(torch.zeros((1, *[int(d) for d in input_shape]), device=device, dtype=dtype))
    except Exception as e:
        raise RankSearchError(f"The model does not run on one input of shape {list(input_shape)} ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); give the input shape it takes (the space's "
                              "'input_shape').") from None
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return counts


def dense_macs(module: nn.Module, count: int) -> int:
    """MACs of a dense Linear / Conv / ConvTranspose layer over ``count`` positions: ``m * n`` each
    (a grouped conv's matrix is already ``out x (in / groups) * k``: each output sees its group)."""
    m, n = matrix_shape(module)
    return m * n * count


@dataclass(frozen=True)
class ModelCost:
    """MACs of a model's Linear / Conv layers per sample, dense and after factorization.

    Attributes:
        input_shape: The sample shape the positions were measured on (no batch dimension).
        positions: Layer name -> positions per sample (every Linear / Conv layer that ran).
        matrices: Layer name -> (m, n) of its weight matrix.
    """

    input_shape: tuple[int, ...]
    positions: dict[str, int]
    matrices: dict[str, tuple[int, int]]

    def dense(self, name: str) -> int:
        """MACs per sample of layer ``name``, dense."""
        m, n = self._matrix(name)
        return m * n * self.positions[name]

    def factorized(self, name: str, rank: int) -> int:
        """MACs per sample of layer ``name`` as a rank-``rank`` pair."""
        m, n = self._matrix(name)
        return rank * (m + n) * self.positions[name]

    @property
    def dense_total(self) -> int:
        """MACs per sample of the dense model's Linear / Conv layers."""
        return sum(self.dense(n) for n in self.positions)

    def total(self, ranks: Mapping[str, int]) -> int:
        """MACs per sample after factorizing the layers in ``ranks`` (the others dense; a layer that did
        not run on the input costs nothing either way)."""
        return self.dense_total - sum(self.dense(n) - self.factorized(n, r) for n, r in ranks.items() if n in self.positions)

    def _matrix(self, name: str) -> tuple[int, int]:
        if name not in self.positions:
            raise RankSearchError(f"Layer {name!r} did not run on an input of shape {list(self.input_shape)}; "
                                  "its MACs are unknown.")
        return self.matrices[name]


def model_cost(model: nn.Module, input_shape: Sequence[int]) -> ModelCost:
    """The :class:`ModelCost` of ``model`` for one sample of ``input_shape``."""
    counts = positions(model, input_shape)
    modules = dict(model.named_modules())
    return ModelCost(tuple(int(d) for d in input_shape), counts, {n: matrix_shape(modules[n]) for n in counts})
