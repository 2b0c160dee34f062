"""A model's NNR bitstream fitted to a byte budget: a quantization step per weight, measured by NNCodec.

NNR streams add up over tensors: a model's stream is the sum of its weights' streams coded alone, less one
constant header per extra stream (``benchmarks/nnr_bytes.py``: 90 bytes on mnist5k-cnn, 230 on dcase-audio,
whatever the qp). So a :class:`ByteTable`, each coded weight (a low-rank pair's G and H together) encoded
alone at each qp of a grid, predicts the stream of any choice of qps, and :func:`fit_bytes` picks them:

1. measure the table on the model to be coded (after its retrain: the bytes depend on the values);
2. choose the qps (:func:`~ranksearch.core._rate.fit_steps`): the finest qp common to every weight (shifted by
   each weight's offset, which a search may vary) that fits, then finer steps where a byte buys most: the
   distortion of a weight is its squared coding error, weighted by the loss's sensitivity to it (the diagonal
   Fisher information, :func:`fisher`) when that is given;
3. encode the whole model with those qps, the real encoder's size the only one that counts: while it is over
   the budget, coarsen the weight whose coarser step costs least distortion per byte saved.

The decoded model (:func:`~ranksearch.core._nnr.decoded_model` of the tensors the encoder reconstructs) is
what a byte working point scores.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ranksearch.core._inputs import call, to_device
from ranksearch.core._nnr import DEFAULT_QP, QP_RANGE, encode_tensors, nnr_parameters, weight_names
from ranksearch.core._rate import fit_steps
from ranksearch.core._task import Task
from ranksearch.errors import RankSearchError

__all__ = ["QP_GRID", "ByteTable", "BytePoint", "Coded", "fisher", "fit_bytes", "measure_bytes", "uniform_qp"]

_log = logging.getLogger(__name__)

QP_GRID: tuple[int, ...] = tuple(range(-56, -13, 2))  #: the qps a weight may take: steps 2**-14 (fine) to 2**-3.5 (coarse)


@dataclass(frozen=True)
class ByteTable:
    """What each coded weight adds to a model's NNR stream at each qp, and the error it leaves.

    Attributes:
        units: The coded weights (``<layer>.weight``; a pair's G and H as one).
        qps: The qps measured, ascending (finer first).
        size: (units, qps) bytes each weight's stream adds (its stream alone, less the header every stream has).
        error: (units, qps) the squared error of the decoded weight, summed over its elements (weighted by the
            Fisher information where it was given).
        fixed: Bytes of the stream of everything else (biases, normalization, at NNCodec's non-weight qp) and its header.
    """

    units: tuple[str, ...]
    qps: tuple[int, ...]
    size: np.ndarray = field(repr=False)
    error: np.ndarray = field(repr=False)
    fixed: int

    def predicted(self, qps: Mapping[str, int]) -> int:
        """The predicted bytes of the whole stream with each weight at its qp in ``qps``."""
        col = {q: j for j, q in enumerate(self.qps)}
        return self.fixed + int(sum(self.size[i, col[qps[u]]] for i, u in enumerate(self.units)))

    @property
    def smallest(self) -> int:
        """The predicted bytes with every weight at the coarsest qp of the grid."""
        return self.fixed + int(self.size[:, -1].sum())


@dataclass(frozen=True)
class Coded:
    """A model coded within a byte budget: its stream, each weight's qp, and the tensors the decoder reconstructs."""

    stream: bytes = field(repr=False)
    qps: dict[str, int]
    predicted: int  #: the table's prediction of the stream's bytes
    budget: int
    tensors: dict[str, np.ndarray] = field(repr=False)

    @property
    def bytes(self) -> int:
        return len(self.stream)


@dataclass(frozen=True)
class BytePoint:
    """A byte working point as a study measures it once, at its creation, and stores it.

    Attributes:
        budget: The bytes the model's stream may take.
        dense_bytes: The dense model's stream at NNCodec's default qp.
        base_ratio: The parameter ratio at which the seed rule's stream at the default qp meets the budget (the
            smallest ratio the rule reaches where even that one does not).
        ratios: The ratios the trials allocate for, largest first: from ``base_ratio`` up, in steps of at most 1.25x.
        dense: NNCodec on the dense model at the finest uniform qp within the budget: ``qp``, ``bytes``, and the
            decoded model's ``val`` and ``test`` metric; where no qp brings it within the budget, ``floor``: its stream at
            the coarsest qp.
        took_s: Seconds the measurement took.
    """

    budget: int
    dense_bytes: int
    base_ratio: float
    ratios: tuple[float, ...]
    dense: dict[str, float]
    took_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"budget": self.budget, "dense_bytes": self.dense_bytes, "base_ratio": self.base_ratio, "ratios": list(self.ratios),
                "dense": dict(self.dense), "took_s": self.took_s}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BytePoint:
        return cls(int(data["budget"]), int(data["dense_bytes"]), float(data["base_ratio"]), tuple(float(r) for r in data["ratios"]),
                   dict(data["dense"]), float(data.get("took_s", 0.0)))


def _units(params: Mapping[str, np.ndarray], decomposed: Mapping[str, tuple[int, ...]], unit: str) -> dict[str, np.ndarray]:
    return {k: params[k] for k in ((f"{unit}_G", f"{unit}_H") if unit in decomposed else (unit,))}


def _squared_error(coded: Mapping[str, np.ndarray], decoded: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray] | None) -> float:
    total = 0.0
    for key, value in coded.items():
        diff = (np.asarray(decoded[key], dtype=np.float64) - value.astype(np.float64)) ** 2
        total += float((diff * weights[key]).sum() if weights is not None else diff.sum())
    return total


def measure_bytes(model: nn.Module, qps: Sequence[int] = QP_GRID, sensitivity: Mapping[str, np.ndarray] | None = None) -> ByteTable:
    """The byte table of ``model``: each weight coded alone at each of ``qps`` (``sensitivity``: per NNR tensor, the
    weight of each element's squared error, as :func:`fisher` gives it)."""
    qps = tuple(sorted(int(q) for q in qps))
    if not qps or qps[0] < QP_RANGE[0] or qps[-1] > QP_RANGE[1]:
        raise RankSearchError(f"qps {qps} must be within NNCodec's range {QP_RANGE}.")
    params, decomposed = nnr_parameters(model)
    units = tuple(weight_names(model))
    if not units:
        raise RankSearchError(f"{type(model).__name__} has no weight NNCodec codes at a qp of its own; nothing to fit to bytes.")
    coded = {u: _units(params, decomposed, u) for u in units}
    rest = {k: v for k, v in params.items() if not any(k in c for c in coded.values())}

    def stream(tensors: Mapping[str, np.ndarray], qp: int) -> tuple[int, dict[str, np.ndarray]]:
        data, decoded = encode_tensors(tensors, {x: s for x, s in decomposed.items() if f"{x}_G" in tensors}, qp)
        return len(data), decoded

    first = coded[units[0]]
    if rest:  # one header: the first weight alone plus the rest alone, against the two together
        fixed = stream(rest, DEFAULT_QP)[0]
        header = stream(first, DEFAULT_QP)[0] + fixed - stream({**rest, **first}, DEFAULT_QP)[0]
    elif len(units) > 1:
        second = coded[units[1]]
        header = stream(first, DEFAULT_QP)[0] + stream(second, DEFAULT_QP)[0] - stream({**first, **second}, DEFAULT_QP)[0]
        fixed = header
    else:
        header = fixed = 0
    size = np.zeros((len(units), len(qps)), dtype=np.int64)
    error = np.zeros((len(units), len(qps)), dtype=np.float64)
    for i, u in enumerate(units):
        for j, q in enumerate(qps):
            n, decoded = stream(coded[u], q)
            size[i, j] = n - header
            error[i, j] = _squared_error(coded[u], decoded, sensitivity)
    return ByteTable(units, qps, size, error, int(fixed))


def fisher(model: nn.Module, task: Task, samples: int = 256, batch_size: int = 16, device: torch.device | None = None) -> dict[str, np.ndarray]:
    """The diagonal of the empirical Fisher information of ``task``'s training loss, per NNR tensor (:func:`nnr_parameters`'
    names): mean squared gradients over batches of the first ``samples`` training samples. How much the loss feels an
    error in each weight element: the second-order weight of a coding error."""
    from ranksearch.core._retrain import _task_loss, best_device

    device = device or best_device()
    net = copy.deepcopy(model).to(device).eval()
    params = [p for p in net.parameters() if p.requires_grad]
    squares = [torch.zeros_like(p) for p in params]
    n = min(samples, len(task.train))  # type: ignore[arg-type]
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(task.train, range(n)), batch_size=batch_size)
    batches = 0
    for x, y in loader:
        net.zero_grad(set_to_none=True)
        out = call(net, to_device(x, device), task.forward)
        _task_loss(task.loss, out.float(), y.to(device)).backward()
        for s, p in zip(squares, params):
            if p.grad is not None:
                s += p.grad.detach() ** 2
        batches += 1
    with torch.no_grad():  # the squares in the parameters' places, so the NNR names come out as the weights' do
        for s, p in zip(squares, params):
            p.copy_(s / max(1, batches))
    return nnr_parameters(net.cpu())[0]


def fit_bytes(model: nn.Module, budget: int, *, qps: Sequence[int] = QP_GRID, offsets: Mapping[str, int] | None = None,
              sensitivity: Mapping[str, np.ndarray] | None = None, table: ByteTable | None = None) -> Coded:
    """``model``'s NNR stream at most ``budget`` bytes: each weight at a common qp plus its ``offsets`` (in steps of the
    grid, > 0 coarser; default 0), the finest that fits, then finer steps where a byte removes most (weighted) error.

    Raises:
        RankSearchError: when even the coarsest qp of the grid in every weight is over the budget (the message names
            the smallest stream).
    """
    table = table or measure_bytes(model, qps, sensitivity)
    if table.smallest > budget:
        raise RankSearchError(f"--bytes {budget:,} is unreachable for this model: with every weight at qp {table.qps[-1]} "
                              f"(step {2 ** (table.qps[-1] / 4):.2g}) its stream takes about {table.smallest:,} bytes; ask for more bytes, "
                              "or keep fewer parameters (a smaller --ratio).")
    unknown = sorted(set(offsets or {}) - set(table.units))
    if unknown:
        raise RankSearchError(f"qp offsets name {unknown[:3]}, which are not weights of this model; name its <layer>.weight.")
    idx = fit_steps(table.size, table.error, budget - table.fixed, [int((offsets or {}).get(u, 0)) for u in table.units])
    choice = {u: table.qps[j] for u, j in zip(table.units, idx)}
    params, decomposed = nnr_parameters(model)
    predicted = table.predicted(choice)
    for _ in range(table.size.size + 1):
        data, decoded = encode_tensors(params, decomposed, DEFAULT_QP, choice)
        if len(data) <= budget:
            return Coded(data, choice, predicted, int(budget), decoded)
        at = [table.qps.index(choice[u]) for u in table.units]  # coarsen where a byte saved costs least error
        cost = [(table.error[i, j + 1] - table.error[i, j]) / max(1, table.size[i, j] - table.size[i, j + 1])
                if j + 1 < len(table.qps) else np.inf for i, j in enumerate(at)]
        i = int(np.argmin(cost))
        if not np.isfinite(cost[i]):
            break
        choice[table.units[i]] = table.qps[at[i] + 1]
    raise RankSearchError(f"--bytes {budget:,} is unreachable for this model: at the coarsest qps the stream takes "
                          f"{len(data):,} bytes; ask for more bytes, or keep fewer parameters (a smaller --ratio).")


def uniform_qp(model: nn.Module, budget: int) -> tuple[int, bytes, dict[str, np.ndarray]]:
    """The finest single qp whose stream of ``model`` is at most ``budget`` bytes (NNCodec's own way to meet a
    size), with that stream and the tensors the decoder reconstructs."""
    params, decomposed = nnr_parameters(model)
    lo, hi = -96, QP_RANGE[1]  # bytes fall as the qp rises: bisect for the smallest that fits (finer than -96 no budget here needs)
    data, decoded = encode_tensors(params, decomposed, hi)
    if len(data) > budget:
        raise RankSearchError(f"--bytes {budget:,} is unreachable for this model at any qp: at qp {hi} its stream takes "
                              f"{len(data):,} bytes; ask for more bytes.")
    best = (hi, data, decoded)
    while lo < hi:
        mid = (lo + hi) // 2
        data, decoded = encode_tensors(params, decomposed, mid)
        if len(data) <= budget:
            hi, best = mid, (mid, data, decoded)
        else:
            lo = mid + 1
    return best
