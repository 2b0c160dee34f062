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

from ranksearch.core._fold import SCALING, task_folds
from ranksearch.core._inputs import call, to_device
from ranksearch.core._nnr import DEFAULT_QP, QP_RANGE, encode_tensors, nnr_parameters, weight_names
from ranksearch.core._rate import fit_steps
from ranksearch.core._task import Task
from ranksearch.errors import RankSearchError

__all__ = ["LAND", "NONWEIGHT_SHIFT", "QP_GRID", "ByteTable", "BytePoint", "Coded", "fisher", "fit_bytes", "measure_bytes", "uniform_qp"]

_log = logging.getLogger(__name__)

QP_GRID: tuple[int, ...] = tuple(range(-56, -13, 2))  #: the qps a weight may take: steps 2**-14 (fine) to 2**-3.5 (coarse)
LAND = 0.98  #: a stream lands on its budget when it takes at least this share of it (within 2%)
NONWEIGHT_SHIFT = -16  #: the other tensors code 16 qps finer (a step 16 times smaller): -72 (NNCodec's own is -75) to -30


@dataclass(frozen=True)
class ByteTable:
    """What each coded unit adds to a model's NNR stream at each qp, and the error it leaves.

    Attributes:
        units: The coded units: each weight (``<layer>.weight``; a pair's G and H as one), then each module's other
            tensors (biases, normalization, a folded layer's scaling and bias) as one unit named by the module.
        qps: The weights' qps measured, ascending (finer first); a unit codes at ``qps[j] + shift[unit]``.
        size: (units, qps) bytes each unit's stream adds (its stream alone, less the header every stream has).
        error: (units, qps) the squared error of the decoded unit, summed over its elements (weighted by the
            Fisher information where it was given).
        fixed: Bytes of the stream of everything else (integer buffers) and its header.
        members: Per unit, the tensors it codes (a weight: its own name).
        shift: Per unit, its qps' offset from the weights' (0 for a weight, :data:`NONWEIGHT_SHIFT` for the others).
    """

    units: tuple[str, ...]
    qps: tuple[int, ...]
    size: np.ndarray = field(repr=False)
    error: np.ndarray = field(repr=False)
    fixed: int
    members: tuple[tuple[str, ...], ...] = ()
    shift: tuple[int, ...] = ()

    def predicted(self, qps: Mapping[str, int]) -> int:
        """The predicted bytes of the whole stream with each unit at its column's qp in ``qps`` (a weight's qp, by unit)."""
        col = {q: j for j, q in enumerate(self.qps)}
        return self.fixed + int(sum(self.size[i, col[qps[u]]] for i, u in enumerate(self.units)))

    @property
    def smallest(self) -> int:
        """The predicted bytes with every unit at the coarsest qp of the grid."""
        return self.fixed + int(self.size[:, -1].sum())

    def tensor_qps(self, column: Mapping[str, int]) -> tuple[dict[str, int], dict[str, int]]:
        """The qps to encode with, from each unit's column qp (its weight-grid qp): the weights', and every other tensor's."""
        weights: dict[str, int] = {}
        others: dict[str, int] = {}
        for u, members, shift in zip(self.units, self.members or [(u,) for u in self.units], self.shift or [0] * len(self.units)):
            for m in members:
                (weights if shift == 0 else others)[m] = int(column[u] + shift)
        return weights, others


@dataclass(frozen=True)
class Coded:
    """A model coded within a byte budget: its stream, each tensor's qp, and the tensors the decoder reconstructs."""

    stream: bytes = field(repr=False)
    qps: dict[str, int]  #: each weight's
    predicted: int  #: the table's prediction of the stream's bytes
    budget: int
    tensors: dict[str, np.ndarray] = field(repr=False)
    other_qps: dict[str, int] = field(default_factory=dict)  #: every other tensor's (biases, normalization, scalings)
    folds: dict[str, str] = field(default_factory=dict)  #: the batch norms folded into the layers before them

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
        share: On a Pareto study's bytes axis, the fraction of ``dense_bytes`` the budget was asked as (None: a budget in
            bytes).
    """

    budget: int
    dense_bytes: int
    base_ratio: float
    ratios: tuple[float, ...]
    dense: dict[str, float]
    took_s: float = 0.0
    share: float | None = None

    def to_dict(self) -> dict[str, Any]:
        share = {} if self.share is None else {"share": self.share}
        return {"budget": self.budget, "dense_bytes": self.dense_bytes, "base_ratio": self.base_ratio, "ratios": list(self.ratios),
                "dense": dict(self.dense), "took_s": self.took_s, **share}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BytePoint:
        share = data.get("share")
        return cls(int(data["budget"]), int(data["dense_bytes"]), float(data["base_ratio"]), tuple(float(r) for r in data["ratios"]),
                   dict(data["dense"]), float(data.get("took_s", 0.0)), None if share is None else float(share))


def _units(params: Mapping[str, np.ndarray], decomposed: Mapping[str, tuple[int, ...]], unit: str) -> dict[str, np.ndarray]:
    return {k: params[k] for k in ((f"{unit}_G", f"{unit}_H") if unit in decomposed else (unit,))}


def _squared_error(coded: Mapping[str, np.ndarray], decoded: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray] | None) -> float:
    total = 0.0
    for key, value in coded.items():
        diff = (np.asarray(decoded[key], dtype=np.float64) - value.astype(np.float64)) ** 2
        total += float((diff * weights[key]).sum() if weights is not None else diff.sum())
    return total


def _owner(key: str) -> str:
    return key[: -len(f".weight{SCALING}")] if key.endswith(f".weight{SCALING}") else key.rpartition(".")[0]


def measure_bytes(model: nn.Module, qps: Sequence[int] = QP_GRID, sensitivity: Mapping[str, np.ndarray] | None = None,
                  folds: Mapping[str, str] | None = None) -> ByteTable:
    """The byte table of ``model``: each weight coded alone at each of ``qps``, each module's other float tensors together at
    each of ``qps`` shifted by :data:`NONWEIGHT_SHIFT` (``sensitivity``: per NNR tensor, the weight of each element's squared
    error, as :func:`fisher` gives it; ``folds``: batch norms folded, :func:`~ranksearch.core._nnr.nnr_parameters`)."""
    qps = tuple(sorted(int(q) for q in qps))
    if not qps or qps[0] + NONWEIGHT_SHIFT < QP_RANGE[0] or qps[-1] > QP_RANGE[1]:
        raise RankSearchError(f"qps {qps} must be within NNCodec's range {QP_RANGE} (the other tensors code {-NONWEIGHT_SHIFT} finer).")
    params, decomposed = nnr_parameters(model, folds)
    weights = tuple(weight_names(model))
    if not weights:
        raise RankSearchError(f"{type(model).__name__} has no weight NNCodec codes at a qp of its own; nothing to fit to bytes.")
    coded = {u: _units(params, decomposed, u) for u in weights}
    taken = {k for c in coded.values() for k in c}
    groups: dict[str, dict[str, np.ndarray]] = {}
    for key, value in params.items():
        if key not in taken and value.dtype.kind == "f":
            groups.setdefault(_owner(key), {})[key] = value
    units = weights + tuple(groups)
    coded.update(groups)
    shift = (0,) * len(weights) + (NONWEIGHT_SHIFT,) * len(groups)
    rest = {k: v for k, v in params.items() if not any(k in c for c in coded.values())}

    def stream(tensors: Mapping[str, np.ndarray], qp: int, by: int = 0) -> tuple[int, dict[str, np.ndarray]]:
        each = {k: qp + by for k in tensors if not k.endswith(("_G", "_H"))} if by else None
        data, decoded = encode_tensors(tensors, {x: s for x, s in decomposed.items() if f"{x}_G" in tensors}, qp, each)
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
            n, decoded = stream(coded[u], q, shift[i])
            size[i, j] = n - header
            error[i, j] = _squared_error(coded[u], decoded, sensitivity)
    members = tuple((u,) if i < len(weights) else tuple(coded[u]) for i, u in enumerate(units))
    return ByteTable(units, qps, size, error, int(fixed), members, shift)


def fisher(model: nn.Module, task: Task, samples: int = 256, batch_size: int = 16, device: torch.device | None = None,
           folds: Mapping[str, str] | None = None) -> dict[str, np.ndarray]:
    """The diagonal of the empirical Fisher information of ``task``'s training loss, per NNR tensor (:func:`nnr_parameters`'
    names, with ``folds`` as they are coded): mean squared gradients over batches of the first ``samples`` training samples.
    How much the loss feels an error in each element: the second-order weight of a coding error.

    A batch norm's running statistics have no gradient; their weights follow from its affine ones, exactly per channel
    (``y = gamma (x - mean) / s + beta``, ``s = sqrt(var + eps)``): ``mean`` as ``beta`` times ``(gamma / s)**2``, ``var`` as
    ``gamma`` times ``(gamma / (2 s**2))**2``. A folded layer's bias is the normalization's beta; its scaling ``gamma / s``
    moves the output as ``gamma`` does, times ``s``: weight ``s**2`` times ``gamma``'s."""
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
    net = net.cpu()
    norms = {n: m for n, m in net.named_modules() if isinstance(m, nn.modules.batchnorm._NormBase)}
    with torch.no_grad():  # the squares in the parameters' places, so the NNR names come out as the weights' do
        stats = {n: (m.weight.detach().clone(), torch.sqrt(m.running_var + m.eps)) for n, m in norms.items()
                 if m.affine and m.running_var is not None}
        for s, p in zip(squares, params):
            p.copy_(s.cpu() / max(1, batches))
        for n, (gamma, sd) in stats.items():  # the running statistics' weights, from the affine ones
            bn = norms[n]
            assert bn.running_mean is not None and bn.running_var is not None
            bn.running_mean.copy_(bn.bias * (gamma / sd) ** 2)
            bn.running_var.copy_(bn.weight * (gamma / (2 * sd**2)) ** 2)
    out = nnr_parameters(net)[0]
    modules = dict(net.named_modules())
    for layer, norm in (folds or {}).items():  # named as they are coded: nnr_parameters(model, folds)
        gamma, sd = stats[norm]
        for leaf in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            out.pop(f"{norm}.{leaf}", None)
        out[f"{layer}.weight{SCALING}"] = (modules[norm].weight.detach() * sd**2).numpy().astype(np.float32)
        out[f"{layer}.bias"] = modules[norm].bias.detach().numpy().astype(np.float32)
    return out


def fit_bytes(model: nn.Module, budget: int, *, qps: Sequence[int] = QP_GRID, offsets: Mapping[str, int] | None = None,
              sensitivity: Mapping[str, np.ndarray] | None = None, table: ByteTable | None = None,
              folds: Mapping[str, str] | None = None, task: Task | None = None) -> Coded:
    """``model``'s NNR stream at most ``budget`` bytes: each weight at a common qp plus its ``offsets`` (in steps of the
    grid, > 0 coarser; default 0), the finest that fits, then finer steps where a byte removes most (weighted) error; the
    other tensors alike, :data:`NONWEIGHT_SHIFT` finer. ``folds``: batch norms folded into their layers
    (:func:`~ranksearch.core._fold.foldable`). ``task``: its data decides, where they are not given, the folds (each
    checked on a validation batch, :func:`~ranksearch.core._fold.task_folds`) and the errors' weights (:func:`fisher`).

    The table's sum is checked against the encoder: a stream that lands off it (blocks share a header) is fitted again
    to the budget less the difference, then coarsened, a step at a time, while it is over.

    Raises:
        RankSearchError: when even the coarsest qp of the grid in every weight is over the budget (the message names
            the smallest stream).
    """
    if task is not None and folds is None:
        folds = task_folds(model, task)
    if task is not None and sensitivity is None and table is None:
        sensitivity = fisher(model, task, folds=folds)
    table = table or measure_bytes(model, qps, sensitivity, folds)
    if table.smallest > budget:
        raise RankSearchError(f"--bytes {budget:,} is unreachable for this model: with every weight at qp {table.qps[-1]} "
                              f"(step {2 ** (table.qps[-1] / 4):.2g}) its stream takes about {table.smallest:,} bytes; ask for more bytes, "
                              "or keep fewer parameters (a smaller --ratio).")
    unknown = sorted(set(offsets or {}) - set(table.units))
    if unknown:
        raise RankSearchError(f"qp offsets name {unknown[:3]}, which are not weights of this model; name its <layer>.weight.")
    params, decomposed = nnr_parameters(model, folds)
    shifts = [int((offsets or {}).get(u, 0)) for u in table.units]
    best: Coded | None = None
    picked: dict[str, int] = {}
    aim, tried = float(budget - table.fixed), []
    for _ in range(3):  # fit, encode, and fit again to what the encoder says
        idx = fit_steps(table.size, table.error, max(aim, float(table.size[:, -1].sum())), shifts)
        choice = {u: table.qps[j] for u, j in zip(table.units, idx)}
        if choice in tried:
            break
        tried.append(choice)
        weights, others = table.tensor_qps(choice)
        data, decoded = encode_tensors(params, decomposed, DEFAULT_QP, {**weights, **others})
        predicted = table.predicted(choice)
        if len(data) <= budget and (best is None or len(data) > best.bytes):
            best, picked = Coded(data, weights, predicted, int(budget), decoded, others, dict(folds or {})), dict(choice)
        if len(data) <= budget and len(data) >= 0.995 * budget:
            break
        aim -= len(data) - predicted
    if best is not None:
        return _refined(best, picked, table, params, decomposed, budget)
    for _ in range(table.size.size + 1):  # still over: coarsen where a byte saved costs least error
        at = [table.qps.index(choice[u]) for u in table.units]
        cost = [(table.error[i, j + 1] - table.error[i, j]) / max(1, table.size[i, j] - table.size[i, j + 1])
                if j + 1 < len(table.qps) else np.inf for i, j in enumerate(at)]
        i = int(np.argmin(cost))
        if not np.isfinite(cost[i]):
            break
        choice[table.units[i]] = table.qps[at[i] + 1]
        weights, others = table.tensor_qps(choice)
        data, decoded = encode_tensors(params, decomposed, DEFAULT_QP, {**weights, **others})
        if len(data) <= budget:
            return Coded(data, weights, table.predicted(choice), int(budget), decoded, others, dict(folds or {}))
    raise RankSearchError(f"--bytes {budget:,} is unreachable for this model: at the coarsest qps the stream takes "
                          f"{len(data):,} bytes; ask for more bytes, or keep fewer parameters (a smaller --ratio).")


def _refined(best: Coded, choice: dict[str, int], table: ByteTable, params: Mapping[str, np.ndarray],
             decomposed: Mapping[str, tuple[int, ...]], budget: int) -> Coded:
    """``best`` made finer, a unit one step at a time (most error removed per byte first), each step kept only where the
    encoder's stream still fits: what closes the gap the refits leave (the stream lands within 2% of the budget)."""
    skip: set[str] = set()
    while best.bytes < LAND * budget:
        at = {u: table.qps.index(choice[u]) for u in table.units}
        gains = [((table.error[i, at[u]] - table.error[i, at[u] - 1]) / max(1, table.size[i, at[u] - 1] - table.size[i, at[u]]), u)
                 for i, u in enumerate(table.units) if at[u] > 0 and u not in skip and table.error[i, at[u] - 1] < table.error[i, at[u]]]
        if not gains:
            return best
        _, u = max(gains)
        trial = {**choice, u: table.qps[at[u] - 1]}
        weights, others = table.tensor_qps(trial)
        data, decoded = encode_tensors(params, decomposed, DEFAULT_QP, {**weights, **others})
        if len(data) > budget:
            skip.add(u)
            continue
        choice = trial
        best = Coded(data, weights, table.predicted(trial), int(budget), decoded, others, best.folds)
    return best


def uniform_qp(model: nn.Module, budget: int, folds: Mapping[str, str] | None = None) -> tuple[int, bytes, dict[str, np.ndarray]]:
    """The finest single qp whose stream of ``model`` is at most ``budget`` bytes (NNCodec's own way to meet a
    size; the other tensors at its non-weight qp, ``folds`` folded), with that stream and the tensors the decoder
    reconstructs."""
    params, decomposed = nnr_parameters(model, folds)
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
