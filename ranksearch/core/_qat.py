"""Quantization-aware retraining at the steps a byte working point codes with.

NNCodec quantizes a weight coded at qp ``q`` to integer multiples of one step (its ``get_stepsize_from_qp`` at qp
density 2: ``(4 + q mod 4) * 2**(floor(q / 4) - 2)``, within 6% of ``2**(q/4)``; dependent quantization picks among
those multiples). A quantization-aware retrain trains through that rounding: the forward pass sees each coded weight
rounded to its step, the backward pass passes the gradient straight through to the float weight (the straight-through
estimator), so the weights learn to sit where the coder will put them.

:func:`quantization_aware` rounds a model's weights (a low-rank pair's G and H each, at the pair's qp) while it is
entered; :class:`QuantAware` is what :func:`~ranksearch.core._retrain.fit` takes: the fraction of its last steps to train
that way, and where the qps come from (measured on the model as it is when that phase begins).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from ranksearch.core._layers import LowRank
from ranksearch.errors import RankSearchError

__all__ = ["QuantAware", "quantization_aware", "step_of"]


def step_of(qp: int) -> float:
    """NNCodec's quantization step of ``qp`` at qp density 2 (its ``get_stepsize_from_qp``)."""
    qp = int(qp)
    return (4 + (qp & 3)) * 2.0 ** ((qp >> 2) - 2)


class _Rounded(nn.Module):
    """A parametrization: the weight rounded to multiples of ``step`` going forward, the identity going back."""

    def __init__(self, step: float) -> None:
        super().__init__()
        self.step = float(step)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + (torch.round(w / self.step) * self.step - w).detach()

    def extra_repr(self) -> str:
        return f"step={self.step:.3g}"


def _coded(model: nn.Module, name: str) -> list[tuple[nn.Module, str]]:
    """The parameters (module, attribute) that code as NNR weight ``name`` (``<layer>.weight``, or another coded weight such
    as a GDN's ``<layer>.gamma``; a pair's G and H for its ``weight``)."""
    layer, _, attr = name.rpartition(".")
    try:
        module = model.get_submodule(layer)
    except AttributeError:
        module = None
    if isinstance(module, LowRank) and attr == "weight":
        return [(module.get_submodule("g"), "weight"), (module.get_submodule("h"), "weight")]
    if module is None or not isinstance(module._parameters.get(attr), nn.Parameter):
        raise RankSearchError(f"qps name {name!r}, which is not a weight of this model; name its <layer>.weight.")
    return [(module, attr)]


@contextlib.contextmanager
def quantization_aware(model: nn.Module, qps: Mapping[str, int]) -> Iterator[nn.Module]:
    """While entered, ``model`` computes with each weight of ``qps`` (``<layer>.weight`` -> qp) rounded to NNCodec's step of
    its qp, and trains the float weights beneath (straight through). The parameters stay the same objects, so an
    optimizer made before goes on updating them; on exit each holds its rounded value, what the model learned to compute
    with (coded again at its qp, it decodes to the same multiples up to dependent quantization's choices)."""
    coded = [(parts, qp) for name, qp in qps.items() for parts in [_coded(model, name)]]  # every name checked before any is touched
    done: list[tuple[nn.Module, str, list[str]]] = []
    try:
        for parts, qp in coded:
            for module, attr in parts:
                order = list(module._parameters)
                parametrize.register_parametrization(module, attr, _Rounded(step_of(qp)))
                done.append((module, attr, order))
        yield model
    finally:
        for module, attr, order in done:
            parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
            params = dict(module._parameters)  # in their order again (the state dict's, the NNR stream's)
            module._parameters.clear()
            module._parameters.update({k: params[k] for k in order})


@dataclass(frozen=True)
class QuantAware:
    """The quantization-aware part of a retrain: its last ``fraction`` of steps train through the rounding of each weight
    at the qp ``qps(model)`` gives it (called once, on the model as that part begins, in eval mode)."""

    fraction: float
    qps: Callable[[nn.Module], Mapping[str, int]]

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise RankSearchError(f"the quantization-aware fraction {self.fraction!r} must be in (0, 1]: the share of the retrain's "
                                  "last steps trained through the rounding.")

    def start(self, total: int) -> int:
        """The step (from 0) at which the quantization-aware part of ``total`` steps begins."""
        return min(total - 1, max(0, round(total * (1 - self.fraction))))
