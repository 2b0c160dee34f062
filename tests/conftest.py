"""Shared fixtures: a private cache folder and the test spaces (tests/data) for the whole session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))  # the test space's factories live in tests/tinyspace.py

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="module")
def dense_and_task():
    """The tiny digits model (tests/tinyspace.py) trained briefly, and its task: for search tests."""
    import tinyspace

    from ranksearch import RetrainSettings
    from ranksearch.core._retrain import fit

    torch.manual_seed(0)
    task = tinyspace.task()
    model = tinyspace.build_model()
    fit(model, task, RetrainSettings(epochs=4, batch_size=32, lr_start=0.05, lr_end=0.001), device=torch.device("cpu"))
    return model, task


@pytest.fixture(scope="session", autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Caches under a temporary folder; tests/data added to the space search path."""
    cache = tmp_path_factory.mktemp("cache")
    old = {k: os.environ.get(k) for k in ("RANKSEARCH_CACHE", "RANKSEARCH_SPACES", "PYTHONPATH")}
    os.environ["RANKSEARCH_CACHE"] = str(cache)
    os.environ["RANKSEARCH_SPACES"] = str(TESTS / "data")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), old["PYTHONPATH"]) if p)
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
