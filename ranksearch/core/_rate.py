"""Quantization steps under a byte budget: one step per coded tensor (pure numpy, no torch).

Each coded unit (a weight, or a low-rank pair's G and H, which share one step) can be coded at any step of
one grid, finest first; ``size[u, j]`` is the bytes unit u adds to the stream at step j and ``error[u, j]``
the distortion it leaves. :func:`fit_steps` gives every unit the same step, shifted by the unit's own
offset (0: NNCodec's uniform qp), the finest such that all fit; then spends what is left on finer steps, one
per unit before any unit takes two (so the offsets keep their meaning), where a byte buys most distortion. The
offsets are what a search varies; the fill lands the stream near the budget, whatever they are.

Example:
    >>> import numpy as np
    >>> size = np.array([[40, 20, 10], [40, 20, 10]])
    >>> error = np.array([[1.0, 4.0, 9.0], [10.0, 40.0, 90.0]])  # the second unit matters ten times more
    >>> fit_steps(size, error, budget=60).tolist()  # both at the middle step (40 bytes), then the second finer
    [1, 0]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ranksearch.errors import RankSearchError

__all__ = ["fit_steps"]


def fit_steps(size: np.ndarray, error: np.ndarray, budget: float, offsets: Sequence[int] | None = None) -> np.ndarray:
    """Per unit, the index of its step (0: the finest): the total ``size`` within ``budget``.

    Args:
        size: (units, steps) bytes at each step, finest first (non-increasing along a row).
        error: (units, steps) distortion at each step (any non-negative scale shared by all units).
        budget: Bytes the units may take together.
        offsets: Per unit, steps coarser (> 0) or finer (< 0) than the common one (default all 0).

    Raises:
        RankSearchError: for mismatched shapes, or a budget below every unit at its coarsest step.
    """
    size, error = np.asarray(size, dtype=np.float64), np.asarray(error, dtype=np.float64)
    if size.shape != error.shape or size.ndim != 2 or size.shape[1] == 0:
        raise RankSearchError(f"size {size.shape} and error {error.shape} must be the same (units, steps) shape.")
    units, steps = size.shape
    off = np.zeros(units, dtype=np.int64) if offsets is None else np.asarray(offsets, dtype=np.int64)
    if off.shape != (units,):
        raise RankSearchError(f"{len(off)} offsets for {units} units; give one per unit.")
    rows = np.arange(units)
    if float(size[:, -1].sum()) > budget:
        raise RankSearchError(f"a budget of {budget:,.0f} bytes is below the {int(size[:, -1].sum()):,} of every unit at its "
                              "coarsest step; give a larger budget.")
    idx = np.full(units, steps - 1, dtype=np.int64)
    for base in range(-int(off.min()), steps):  # the finest common step (shifted by the offsets) that fits
        cand = np.clip(base + off, 0, steps - 1)
        if float(size[rows, cand].sum()) <= budget:
            idx = cand
            break
    left = float(budget - size[rows, idx].sum())
    start, reach = idx.copy(), 1
    while True:  # spend the rest: one step finer per unit at most, then two, ...; most distortion per byte first
        finer = np.maximum(idx - 1, 0)
        more = size[rows, finer] - size[rows, idx]
        gain = error[rows, idx] - error[rows, finer]
        ok = (idx > 0) & (more <= left) & (gain > 0)
        if not ok.any():
            return idx
        if not (ok & (idx > start - reach)).any():
            reach += 1
            continue
        u = int(np.argmax(np.where(ok & (idx > start - reach), gain / np.maximum(more, 1e-9), -np.inf)))
        left -= float(more[u])
        idx[u] = finer[u]
