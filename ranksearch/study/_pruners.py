"""Pruners by name: the registry (:data:`PRUNERS`), whose keys are the names a study may use."""

from __future__ import annotations

from collections.abc import Callable

import optuna

from ranksearch.errors import StudyError
from ranksearch.study._gate import GatePruner
from ranksearch.study._vocab import Pruner

__all__ = ["PRUNERS", "make_pruner"]

#: pruner name -> factory(keep): ``keep`` is the gate's fraction of screened trials that go on
PRUNERS: dict[Pruner, Callable[[float], optuna.pruners.BasePruner]] = {
    Pruner.GATE: lambda keep: GatePruner(keep=keep, later=0.5),
    Pruner.MEDIAN: lambda keep: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
    Pruner.HYPERBAND: lambda keep: optuna.pruners.HyperbandPruner(min_resource=1),
    Pruner.NONE: lambda keep: optuna.pruners.NopPruner(),
}


def make_pruner(name: Pruner | str, keep: float) -> optuna.pruners.BasePruner:
    """The study's pruner from the registry."""
    if not isinstance(name, Pruner):
        raise StudyError(f"Study uses the custom pruner {name!r}; join it from Python with the same pruner object "
                         "(Components(pruner=...)).")
    return PRUNERS[name](keep)
