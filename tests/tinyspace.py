"""A tiny model on sklearn's 8x8 digits: a user-defined space for fast end-to-end tests."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

from ranksearch.core._task import Task


def build_model(width: int = 8) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * width * 64, 64), nn.ReLU(),
        nn.Linear(64, 10),
    )


def task(seed: int = 0, n_train: int = 600) -> Task:
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(x))
    images = torch.tensor(x[order] / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    labels = torch.tensor(y[order], dtype=torch.int64)
    tr, va, te = slice(0, n_train), slice(n_train, n_train + 400), slice(n_train + 400, n_train + 800)
    return Task(TensorDataset(images[tr], labels[tr]), TensorDataset(images[va], labels[va]),
                TensorDataset(images[te], labels[te]), loss="cross_entropy", metric="accuracy",
                description="sklearn 8x8 digits")
