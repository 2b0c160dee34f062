"""Low-rank layer pairs that replace a dense Linear / Conv / ConvTranspose layer.

A dense weight W, reshaped to a matrix of m rows and n columns, is replaced by G (m x r) times
H (r x n). For ``nn.Linear`` and ``nn.Conv1d``/``nn.Conv2d`` (``m = out``, ``n = in * prod(kernel)``)
the pair is a layer ``h`` with r outputs and the original kernel, stride, padding, dilation and
padding mode, followed by a 1x1 layer ``g`` back to the outputs that carries the bias.
For ``nn.ConvTranspose2d`` (weight ``(in, out, kh, kw)``, so ``m = in``, ``n = out * kh * kw``) the
order is reversed: a 1x1 conv ``g`` from the inputs to r channels, then a transposed conv ``h`` with
the original kernel, stride, padding, output padding and dilation, carrying the bias.

Either way the pair costs ``r * (m + n)`` weights instead of ``m * n``, and at full rank it computes
the dense layer's output.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ranksearch.errors import RankSearchError

__all__ = [
    "DENSE_TYPES",
    "LowRank",
    "LowRankConv",
    "LowRankConvTranspose2d",
    "LowRankLinear",
    "build_low_rank",
    "compute_device",
    "ineligible_reason",
    "matrix_shape",
    "weight_matrix",
]

DENSE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d)


def ineligible_reason(module: nn.Module) -> str | None:
    """Why ``module`` cannot be factorized, or None when it can."""
    if not isinstance(module, DENSE_TYPES):
        return f"type {type(module).__name__} is not factorizable"
    if isinstance(module, nn.modules.linear.NonDynamicallyQuantizableLinear):
        return "out_proj of nn.MultiheadAttention (attention reads its weight directly)"
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d)) and module.groups != 1:
        kind = "depthwise" if module.groups == module.in_channels else "grouped"
        return f"{kind} convolution (groups={module.groups})"
    m, n = matrix_shape(module)
    if m + n >= m * n:
        return f"even rank 1 saves nothing on a {m}x{n} weight"
    return None


def matrix_shape(module: nn.Module) -> tuple[int, int]:
    """(m, n) of the dense layer's weight seen as the matrix G @ H approximates."""
    # Linear/Conv: (out, in * k); ConvTranspose2d stores (in, out, kh, kw): (in, out * k).
    w: torch.Tensor = module.weight  # type: ignore[assignment]
    return int(w.shape[0]), int(w[0].numel())


def weight_matrix(module: nn.Module, device: torch.device | None = None) -> torch.Tensor:
    """The dense layer's weight reshaped to its (m, n) matrix (a view, no copy, unless moved to
    ``device``: decompositions run on the GPU when there is one, see :func:`compute_device`)."""
    m, n = matrix_shape(module)
    w = module.get_parameter("weight").detach().reshape(m, n)
    return w if device is None else w.to(device)


def compute_device() -> torch.device:
    """Where decompositions run: CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class LowRank(nn.Module):
    """Common interface of the low-rank pairs: ``rank``, ``shape`` and the (G, H) matrices."""

    rank: int
    shape: tuple[int, int]

    weight_shape: tuple[int, ...]

    def matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(G, H) with G (m x r) and H (r x n): their product approximates the dense matrix."""
        raise NotImplementedError

    def load_matrices(self, g: torch.Tensor, h: torch.Tensor) -> None:
        """Set the pair's weights from G (m x r) and H (r x n), the inverse of :meth:`matrices`."""
        raise NotImplementedError

    @property
    def weight(self) -> torch.Tensor:
        """The equivalent dense weight G @ H, computed on access (differentiable), for code that reads
        ``.weight`` instead of calling the layer (e.g. PyTorch's transformer fast path)."""
        g, h = self.matrices()
        return (g @ h).reshape(self.weight_shape)

    @property
    def bias(self) -> torch.Tensor | None:
        """The dense layer's bias, carried by whichever of the pair adds it."""
        g, h = self.get_submodule("g"), self.get_submodule("h")
        bias: torch.Tensor | None = g.bias if g.bias is not None else h.bias  # type: ignore[assignment]
        return bias

    def extra_repr(self) -> str:
        m, n = self.shape
        return f"rank={self.rank}, matrix={m}x{n}"


class LowRankLinear(LowRank):
    """``nn.Linear`` as ``h: Linear(in, r, bias=False)`` then ``g: Linear(r, out)``."""

    def __init__(self, dense: nn.Linear, g: torch.Tensor, h: torch.Tensor) -> None:
        super().__init__()
        self.rank, self.shape = int(h.shape[0]), matrix_shape(dense)
        self.weight_shape = tuple(dense.weight.shape)
        kw = {"device": dense.weight.device, "dtype": dense.weight.dtype}
        self.h = nn.Linear(dense.in_features, self.rank, bias=False, **kw)
        self.g = nn.Linear(self.rank, dense.out_features, bias=dense.bias is not None, **kw)
        self.load_matrices(g, h)
        if dense.bias is not None:
            with torch.no_grad():
                self.g.bias.copy_(dense.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.g(self.h(x))

    def matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.g.weight, self.h.weight

    def load_matrices(self, g: torch.Tensor, h: torch.Tensor) -> None:
        with torch.no_grad():
            self.h.weight.copy_(h)
            self.g.weight.copy_(g)


class LowRankConv(LowRank):
    """``nn.Conv1d``/``nn.Conv2d`` as ``h``: conv with r filters and the original geometry, then
    ``g``: 1x1 conv back to the output channels, with the bias."""

    def __init__(self, dense: nn.Conv1d | nn.Conv2d, g: torch.Tensor, h: torch.Tensor) -> None:
        super().__init__()
        self.rank, self.shape = int(h.shape[0]), matrix_shape(dense)
        self.weight_shape = tuple(dense.weight.shape)
        conv: Any = type(dense)
        kw: dict[str, Any] = {"device": dense.weight.device, "dtype": dense.weight.dtype}
        self.h = conv(
            dense.in_channels,
            self.rank,
            kernel_size=dense.kernel_size,
            stride=dense.stride,
            padding=dense.padding,
            dilation=dense.dilation,
            bias=False,
            padding_mode=dense.padding_mode,
            **kw,
        )
        self.g = conv(self.rank, dense.out_channels, kernel_size=1, bias=dense.bias is not None, **kw)
        self.load_matrices(g, h)
        if dense.bias is not None:
            with torch.no_grad():
                self.g.bias.copy_(dense.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.g(self.h(x))

    def matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.g.weight.reshape(self.shape[0], self.rank), self.h.weight.reshape(self.rank, -1)

    def load_matrices(self, g: torch.Tensor, h: torch.Tensor) -> None:
        with torch.no_grad():
            self.h.weight.copy_(h.reshape(self.h.weight.shape))
            self.g.weight.copy_(g.reshape(self.g.weight.shape))


class LowRankConvTranspose2d(LowRank):
    """``nn.ConvTranspose2d`` as ``g``: 1x1 conv from the inputs to r channels, then ``h``: a
    transposed conv with the original geometry from r channels to the outputs, with the bias."""

    def __init__(self, dense: nn.ConvTranspose2d, g: torch.Tensor, h: torch.Tensor) -> None:
        super().__init__()
        self.rank, self.shape = int(h.shape[0]), matrix_shape(dense)
        self.weight_shape = tuple(dense.weight.shape)
        kw: dict[str, Any] = {"device": dense.weight.device, "dtype": dense.weight.dtype}
        geometry: dict[str, Any] = {"kernel_size": dense.kernel_size, "stride": dense.stride, "padding": dense.padding,
                                    "output_padding": dense.output_padding, "dilation": dense.dilation}
        self.g = nn.Conv2d(dense.in_channels, self.rank, kernel_size=1, bias=False, **kw)
        self.h = nn.ConvTranspose2d(
            self.rank,
            dense.out_channels,
            **geometry,
            bias=dense.bias is not None,
            padding_mode=dense.padding_mode,
            **kw,
        )
        self.load_matrices(g, h)
        if dense.bias is not None and self.h.bias is not None:
            with torch.no_grad():
                self.h.bias.copy_(dense.bias)

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        return self.h(self.g(x), output_size=output_size)

    def matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.g.weight.reshape(self.rank, self.shape[0]).t(), self.h.weight.reshape(self.rank, -1)

    def load_matrices(self, g: torch.Tensor, h: torch.Tensor) -> None:
        with torch.no_grad():  # W[i, o, k] = sum_r G[i, r] H[r, o, k]: the 1x1 conv's weight is G transposed
            self.g.weight.copy_(g.t().reshape(self.g.weight.shape))
            self.h.weight.copy_(h.reshape(self.h.weight.shape))


_BUILDERS: dict[type[nn.Module], Callable[[Any, torch.Tensor, torch.Tensor], LowRank]] = {
    nn.Linear: LowRankLinear,
    nn.Conv1d: LowRankConv,
    nn.Conv2d: LowRankConv,
    nn.ConvTranspose2d: LowRankConvTranspose2d,
}


def build_low_rank(dense: nn.Module, g: torch.Tensor, h: torch.Tensor) -> LowRank:
    """The low-rank pair for ``dense`` with factors ``g`` (m x r) and ``h`` (r x n).

    Raises:
        ValueError: if the layer is not eligible or the factor shapes do not match it.
    """
    reason = ineligible_reason(dense)
    if reason is not None:
        raise RankSearchError(f"Cannot factorize {type(dense).__name__}: {reason}.")
    m, n = matrix_shape(dense)
    r = int(h.shape[0])
    if g.shape != (m, r) or h.shape != (r, n) or r < 1:
        raise RankSearchError(
            f"Factors of shapes {tuple(g.shape)} and {tuple(h.shape)} do not fit a {m}x{n} weight; "
            f"expected ({m}, r) and (r, {n}) with r >= 1."
        )
    builder = next(b for t, b in _BUILDERS.items() if isinstance(dense, t))
    return builder(dense, g, h)

