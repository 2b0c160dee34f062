"""The curves and decompositions a study allocates on, computed once per process.

:class:`Views` holds the searched trials' curves and factors (plain SVD, or activation-whitened when
data-aware) and the plain ones, which the CE1 rule (the seed rule) always uses.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from ranksearch.core._calibrate import calibration_batches, input_moments, whitened
from ranksearch.core._decompose import Factors
from ranksearch.core._inputs import Forward
from ranksearch.core._solver import Curve
from ranksearch.core._spectra import spectra
from ranksearch.core._surgery import find_layers, layer_factors
from ranksearch.core._task import Task
from ranksearch.errors import RankSearchError, StudyError
from ranksearch.study._vocab import FactorKind

__all__ = ["Views", "build_views", "views_for"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Views:
    """Curves and decompositions a trial allocates on: the searched trials' (``kind``) and the plain ones."""

    curves: Mapping[str, Curve]
    factors: Mapping[str, Factors]
    plain_curves: Mapping[str, Curve]
    plain_factors: Mapping[str, Factors]
    kind: FactorKind
    seconds: Mapping[str, float] = field(default_factory=dict)  #: what computing them took (spectra, calibration)

    def of(self, kind: FactorKind) -> tuple[Mapping[str, Curve], Mapping[str, Factors]]:
        """Curves and factors of a trial's ``factors``."""
        return (self.plain_curves, self.plain_factors) if FactorKind(kind) is FactorKind.PLAIN else (self.curves, self.factors)


def build_views(model: nn.Module, modules: Mapping[str, nn.Module], curves: Mapping[str, Curve], kind: FactorKind,
                calibration: Iterable[Any] | None, task: Task | None, forward: Forward | None = None) -> Views:
    """Plain factors and, when ``kind`` is data-aware, the activation-whitened ones, from the input
    moments over ``calibration`` (default: 512 samples of ``task.train``), each batch called with
    ``forward`` (default: the task's, else by the batch's structure)."""
    start = time.perf_counter()
    plain = layer_factors(modules, {n: max(1, c.max_rank) for n, c in curves.items()})
    if kind is FactorKind.PLAIN:
        return Views(curves, plain, curves, plain, kind, {"factors": time.perf_counter() - start})
    if calibration is None:
        if task is None:
            raise RankSearchError("data-aware factors need calibration batches (calibration=) or a task.")
        calibration = calibration_batches(task.train)
    forward = forward if forward is not None else task.forward if task is not None else None
    moments = input_moments(model, modules, calibration, device=next(model.parameters()).device, forward=forward)
    pairs = {n: whitened(m, moments[n], max(1, curves[n].max_rank)) for n, m in modules.items()}
    _log.info("data-aware factors from %d layers' input moments", len(pairs))
    return Views({n: c for n, (c, _) in pairs.items()}, {n: f for n, (_, f) in pairs.items()}, curves, plain, kind,
                 {"factors": time.perf_counter() - start})


def views_for(model: nn.Module, exclude: Sequence[str], kind: FactorKind, task: Task | None, calibration: Iterable[Any] | None,
              cache_dir: str | os.PathLike[str] | None, forward: Forward | None = None) -> Views:
    """The views of the model's eligible layers outside ``exclude``, with the seconds each part took."""
    start = time.perf_counter()
    curves = spectra(model, cache_dir=cache_dir, exclude=exclude)
    if not curves:
        raise StudyError(f"{type(model).__name__} has no eligible Linear/Conv layer to factorize; nothing to search.")
    took = time.perf_counter() - start
    layers = find_layers(model).eligible
    views = build_views(model, {n: layers[n] for n in curves}, curves, kind, calibration, task, forward)
    return replace(views, seconds={"spectra": took, **views.seconds})
