"""What a search space trains and measures: datasets, the training loss and the metric.

A model factory builds the network; a *task* factory returns a :class:`Task` holding the data
(``train`` for the short retrain, ``val`` for the search's objective, ``test`` for the reported
figures), which loss trains it and which metric scores it. Every dataset yields ``(input, target)``
pairs; for an auto-encoder the target is the input itself. The target is a tensor; the input may be a
tensor, a tuple (``model(*input)``), a dict (``model(**input)``) or anything a ``forward(model, batch)``
says how to take (:mod:`ranksearch.core._inputs`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import Dataset

from ranksearch.core._inputs import Forward
from ranksearch.errors import RankSearchError

LOSSES = ("cross_entropy", "mse")
METRICS = ("accuracy", "top5", "psnr")


@dataclass(frozen=True)
class Task:
    """Data, loss and metric of one search space.

    Attributes:
        train: Dataset for the (short) retrain.
        val: Held-out dataset scoring search trials.
        test: Held-out dataset for the reported figures (never used to choose anything).
        loss: ``"cross_entropy"`` (classification logits) or ``"mse"`` (reconstruction).
        metric: ``"accuracy"``, ``"top5"`` or ``"psnr"`` (higher is better for all three).
        synthetic: True when the data is generated procedurally rather than real recordings.
        description: One line naming the data, shown in reports.
        forward: ``forward(model, batch) -> output`` for inputs the model takes otherwise than by their
            structure (default: :func:`ranksearch.core._inputs.call`'s rule); used by the built-in retrain,
            metric and calibration.
    """

    train: Dataset
    val: Dataset
    test: Dataset
    loss: str
    metric: str
    synthetic: bool = False
    description: str = ""
    forward: Forward | None = None

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise RankSearchError(f"Task loss {self.loss!r} is not supported; use one of {LOSSES}.")
        if self.metric not in METRICS:
            raise RankSearchError(f"Task metric {self.metric!r} is not supported; use one of {METRICS}.")
        for split in ("train", "val", "test"):
            if len(getattr(self, split)) == 0:
                raise RankSearchError(f"Task split {split!r} is empty; give it at least one sample.")
