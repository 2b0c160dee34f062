"""Progress bars for long work (dense training, sensitivity, trials): tqdm on stderr, or nothing.

Callers pass ``enabled``; the CLI enables bars on a terminal unless ``--quiet``, the Python API with
``progress=True``. A disabled bar is a no-op object, so the calling code has no branches.
"""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

__all__ = ["bar"]


def bar(total: int | None, desc: str, enabled: bool, *, initial: int = 0, unit: str = "it") -> Any:
    """A tqdm bar (with counter, elapsed time and ETA) or, when not ``enabled``, a silent one."""
    return tqdm(total=total, desc=desc, initial=initial, unit=unit, disable=not enabled, dynamic_ncols=True,
                leave=True, smoothing=0.1)
