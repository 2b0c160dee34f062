"""Data-aware factors: truncate where the layer's *output* error on real activations is smallest.

For a layer y = W x, with the second moment of its (unfolded) inputs ``C = E[x x^T] = S S^T``, the
rank-r matrix minimising ``E ||(W - W_r) x||^2`` is ``W_r = (W S)_r S^-1`` (activation-whitened SVD,
as ASVD and SVD-LLM do for language models). Its curve is the spectrum of ``W S``: ``mse[r]`` is then
the output error per weight element, and the solver and search work on it unchanged. For a transposed
conv the inputs meet the rows of its (in, out * k) matrix, so the whitening is on the left.

Calibration batches come from the task's training split (or any iterable of input batches: tensors,
tuples, dicts, see :mod:`ranksearch.core._inputs`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ranksearch.core._decompose import Factors, singular_values
from ranksearch.core._decompose import factorize as decompose_matrix
from ranksearch.core._inputs import Forward, call, to_device
from ranksearch.core._layers import matrix_shape, weight_matrix
from ranksearch.core._solver import Curve
from ranksearch.errors import RankSearchError

__all__ = ["calibration_batches", "input_moments", "whitened"]


def calibration_batches(data: Dataset, n_samples: int = 512, batch_size: int = 128, seed: int = 0) -> list[Any]:
    """The inputs of ``n_samples`` random samples of ``data`` (``(input, target)`` pairs), in batches
    (an input of any structure is collated as PyTorch's ``DataLoader`` does)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(data), generator=g)[:n_samples].tolist()  # type: ignore[arg-type]
    loader = DataLoader(torch.utils.data.Subset(data, idx), batch_size=batch_size)
    return [x for x, _ in loader]


def _columns(module: Any, x: torch.Tensor) -> torch.Tensor:
    """The layer's inputs as rows of the side its weight matrix multiplies: (samples, n) or (samples, m)."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(module, nn.ConvTranspose2d):
        return x.movedim(1, -1).reshape(-1, x.shape[1])
    kernel: Any
    stride: Any
    dilation: Any
    padding: Any
    if isinstance(module, nn.Conv1d):
        x, kernel, stride, dilation, padding = x.unsqueeze(2), (1, *module.kernel_size), (1, *module.stride), (1, *module.dilation), module.padding
    else:
        kernel, stride, dilation, padding = module.kernel_size, module.stride, module.dilation, module.padding
    if isinstance(padding, str) or module.padding_mode != "zeros":
        x = F.pad(x, module._reversed_padding_repeated_twice, mode="constant" if module.padding_mode == "zeros" else module.padding_mode)
        padding = 0
    elif isinstance(module, nn.Conv1d):
        padding = (0, *padding)
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # (B, n, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


@torch.no_grad()
def input_moments(model: nn.Module, layers: Mapping[str, nn.Module], batches: Iterable[Any],
                  device: torch.device | None = None, forward: Forward | None = None) -> dict[str, torch.Tensor]:
    """``E[x x^T]`` (float64) of each named layer's unfolded inputs over the calibration batches
    (each called as :func:`ranksearch.core._inputs.call` does: ``forward(model, batch)`` when given)."""
    device = device or next(model.parameters()).device
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str, module: nn.Module) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def fn(_: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            cols = _columns(module, args[0].detach()).double()
            gram = cols.T @ cols
            sums[name] = sums[name] + gram if name in sums else gram
            counts[name] = counts.get(name, 0) + cols.shape[0]
        return fn

    handles = [m.register_forward_pre_hook(hook(n, m)) for n, m in layers.items()]
    was_training = model.training
    try:
        model.eval()
        for batch in batches:
            call(model, to_device(batch, device), forward)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    missing = sorted(set(layers) - set(sums))
    if missing:
        raise RankSearchError(f"Layers {missing} saw no input during calibration; are they used in forward()?")
    return {n: sums[n] / counts[n] for n in layers}


def _whitener(moment: torch.Tensor, damping: float) -> tuple[torch.Tensor, torch.Tensor]:
    """S with S S^T = moment + damping * mean(diag) * I, and S^-1."""
    eye = torch.eye(moment.shape[0], dtype=moment.dtype, device=moment.device)
    reg = moment + damping * max(float(moment.diagonal().mean()), 1e-12) * eye
    s = torch.linalg.cholesky(reg)
    return s, torch.linalg.solve_triangular(s, eye, upper=False)


def whitened(module: nn.Module, moment: torch.Tensor, max_rank: int | None = None,
             damping: float = 1e-3) -> tuple[Curve, Factors]:
    """Curve and factors of ``module`` that minimise the output error under input moment ``moment``.

    Args:
        module: An eligible dense layer.
        moment: ``E[x x^T]`` of its unfolded inputs (from :func:`input_moments`).
        max_rank: Largest rank the factors keep (None: all).
        damping: Added to the moment's diagonal, relative to its mean, so that few samples still give
            an invertible whitening.
    """
    w = weight_matrix(module).double()
    s, s_inv = _whitener(moment.to(w.device, torch.float64), damping)
    left = isinstance(module, nn.ConvTranspose2d)
    a = s.T @ w if left else w @ s
    curve = Curve(matrix_shape(module), singular_values(a))
    f = decompose_matrix(a, max_rank)
    if left:  # W_r = S^-T (S^T W)_r: fold S^-T into the left factor
        f = Factors(u=(s_inv.T @ f.u.double()).float(), s=f.s, vh=f.vh)
    else:  # W_r = (W S)_r S^-1: fold S^-1 into the right factor
        f = Factors(u=f.u, s=f.s, vh=(f.vh.double() @ s_inv).float())
    return curve, f
