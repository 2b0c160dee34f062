"""Batch-norm folding for the NNR bitstream: a normalization that directly follows a layer travels as that layer's scale.

In eval mode ``BN(W x + b) = s * (W x) + d`` per output channel, with ``s = gamma / sqrt(var + eps)`` and
``d = (b - mean) * s + beta``. NNR codes exactly this as a block: the weight, its local scaling ``s`` (``<weight>_scaling``,
type ``weight.ls``) and a bias ``d``, so the normalization's four tensors become two (on dcase-audio's six
normalizations: a stream of 1,538 bytes instead of 4,788 with every weight at the coarsest qp). The decoder multiplies
each row of the weight (of G, for a low-rank pair) by ``s``; the normalization then computes the identity.

A fold is only right where the normalization's input *is* the layer's output and nothing else reads it. The module
order proposes the candidates (:func:`candidates`); :func:`foldable` keeps them only if the folded model computes what the
model computes on real inputs.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ranksearch.core._layers import LowRank
from ranksearch.errors import RankSearchError

__all__ = ["SCALING", "candidates", "dense_state", "fold_arrays", "foldable", "task_folds", "unfold"]

_log = logging.getLogger(__name__)

SCALING = "_scaling"  #: NNCodec's name for a weight's local scaling: ``<layer>.weight_scaling``
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, LowRank)  # output channels first in the weight (not ConvTranspose)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _out_features(layer: nn.Module) -> int:
    if isinstance(layer, LowRank):
        return int(layer.weight_shape[0])
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    return int(weight.shape[0])


def candidates(model: nn.Module) -> dict[str, str]:
    """Layer -> the normalization right after it in the module order, where its channels are the layer's outputs (a guess,
    as NNCodec's own front end makes it; :func:`foldable` checks it)."""
    out: dict[str, str] = {}
    last: tuple[str, nn.Module] | None = None
    pairs: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(f"{p}.") for p in pairs):
            continue  # a low-rank pair's own two layers
        if isinstance(module, LowRank):
            pairs.append(name)
        if isinstance(module, _LAYERS):
            last = (name, module)
        elif isinstance(module, _NORMS):
            if (last is not None and module.affine and module.track_running_stats and module.running_var is not None
                    and module.num_features == _out_features(last[1])):
                out[last[0]] = name
            last = None
        elif isinstance(module, nn.modules.conv._ConvNd) or isinstance(module, nn.modules.batchnorm._NormBase):
            last = None  # a transposed convolution or another normalization in between
    return out


def fold_arrays(model: nn.Module, folds: Mapping[str, str]) -> dict[str, dict[str, np.ndarray]]:
    """Per folded layer, its scaling ``s`` and bias ``d`` (float32, the normalization's own eps)."""
    modules = dict(model.named_modules())
    out = {}
    for layer, norm in folds.items():
        bn = modules[norm]
        with torch.no_grad():
            s = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
            bias = getattr(modules[layer], "bias", None)
            b = bias.double() if bias is not None else torch.zeros_like(s)
            d = (b - bn.running_mean.double()) * s + bn.bias.double()
        out[layer] = {"scaling": s.float().cpu().numpy(), "bias": d.float().cpu().numpy()}
    return out


def unfold(model: nn.Module, folds: Mapping[str, str], scaling: Mapping[str, np.ndarray], bias: Mapping[str, np.ndarray]) -> None:
    """In place: each folded layer's weight rows times its scaling, its bias ``d`` (in the normalization's beta where the layer
    has none), and the normalization the identity (as the NNR decoder leaves it)."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for layer, norm in folds.items():
            module, bn = modules[layer], modules[norm]
            s = torch.from_numpy(np.asarray(scaling[layer], dtype=np.float32))
            if isinstance(module, LowRank):
                g, h = module.matrices()
                module.load_matrices(g * s.to(g)[:, None], h)
            else:
                module.weight.mul_(s.to(module.weight).reshape(-1, *([1] * (module.weight.ndim - 1))))
            d = torch.from_numpy(np.asarray(bias[layer], dtype=np.float32))
            own = getattr(module, "bias", None)
            if own is not None:
                own.copy_(d.to(own))
                bn.bias.zero_()
            else:
                bn.bias.copy_(d.to(bn.bias))
            bn.weight.fill_(1.0)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)  # (x - 0) / sqrt(1 - eps + eps) = x


def foldable(model: nn.Module, run: Callable[[nn.Module], Any], rtol: float = 1e-4) -> dict[str, str]:
    """The :func:`candidates` whose fold leaves ``run(model)`` (the model on a batch of real inputs) unchanged: all of them if
    folding them together does, else each one that does alone."""
    found = candidates(model)
    if not found:
        return {}
    model = model.eval()
    with torch.no_grad():
        reference = _flat(run(model))

    def same(folds: Mapping[str, str]) -> bool:
        arrays = fold_arrays(model, folds)
        folded = copy.deepcopy(model)
        unfold(folded, folds, {k: v["scaling"] for k, v in arrays.items()}, {k: v["bias"] for k, v in arrays.items()})
        with torch.no_grad():
            got = _flat(run(folded.eval()))
        return len(got) == len(reference) and all(
            a.shape == b.shape and bool(torch.allclose(a.float(), b.float(), rtol=rtol, atol=rtol * float(b.float().abs().max()) + 1e-6))
            for a, b in zip(got, reference))

    if same(found):
        return found
    kept = {layer: norm for layer, norm in found.items() if same({layer: norm})}
    _log.info("batch-norm folding: %d of %d candidates compute what the model does (the others are not folded: %s)", len(kept),
              len(found), ", ".join(sorted(set(found) - set(kept)))[:200])
    return kept


def _flat(out: Any) -> list[torch.Tensor]:
    leaves, _ = torch.utils._pytree.tree_flatten(out)
    return [t.detach() for t in leaves if isinstance(t, torch.Tensor) and t.is_floating_point()]


def task_folds(model: nn.Module, task: Any) -> dict[str, str]:
    """:func:`foldable` checked on the first validation batch of ``task`` (32 samples)."""
    from ranksearch.core._inputs import call, to_device

    x, _ = next(iter(torch.utils.data.DataLoader(task.val, batch_size=32)))
    device = next(model.parameters()).device
    return foldable(model, lambda net: call(net, to_device(x, device), task.forward))


def dense_state(tensors: Mapping[str, np.ndarray], architecture: nn.Module, folded: Iterable[str]) -> dict[str, np.ndarray]:
    """A decoded stream's recomposed tensors (:func:`~ranksearch.core._nnr.decode`, each folded weight already scaled) as the
    dense ``architecture``'s state dict: the normalization after each ``folded`` layer (those the stream carries a scaling
    for) the identity, the fold's bias in the layer's bias or, where it has none, in the normalization's beta; the
    integer counters NNR leaves out, the architecture's own."""
    out = dict(tensors)
    norms = candidates(architecture)
    modules = dict(architecture.named_modules())
    for layer in sorted(folded):
        if layer not in norms:
            raise RankSearchError(f"the stream folds a batch norm into layer {layer!r}, which {type(architecture).__name__} has no "
                                  "batch norm after; give the bitstream of this model's config.")
        norm, bn = norms[layer], modules[norms[layer]]
        d = np.asarray(out[f"{layer}.bias"], dtype=np.float32)
        beta = np.zeros_like(d)
        if getattr(modules[layer], "bias", None) is None:
            beta = out.pop(f"{layer}.bias")
        n = int(bn.num_features)
        out.update({f"{norm}.weight": np.ones(n, np.float32), f"{norm}.bias": np.asarray(beta, np.float32),
                    f"{norm}.running_mean": np.zeros(n, np.float32), f"{norm}.running_var": np.full(n, 1.0 - bn.eps, np.float32)})
    for key, value in architecture.state_dict().items():
        if key not in out and not value.is_floating_point():
            out[key] = value.numpy()
    return out
