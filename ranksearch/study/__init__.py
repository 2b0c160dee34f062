"""The Optuna study: settings and run options, the study's typed record, storages, samplers and pruners
by name, the baselines and the sensitivity table, and the parts a study runs on (the plan)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ranksearch._lazy import exports

_NAMES = {
    "SearchSettings": "_settings", "RunOptions": "_settings", "Components": "_settings",
    "Axis": "_vocab", "Coding": "_vocab", "BASELINES": "_vocab", "FactorKind": "_vocab", "Factors": "_vocab", "Granularity": "_vocab", "Method": "_vocab",
    "Prior": "_vocab", "Proposals": "_vocab", "Pruner": "_vocab", "Sampler": "_vocab", "SensitivityKind": "_vocab",
    "Sensitivity": "_vocab",
    "StudyRecord": "_record", "TrialRecord": "_record",
    "artifact_store": "_storage", "open_storage": "_storage", "read_study": "_storage", "release": "_storage",
    "SAMPLERS": "_samplers", "LocalSampler": "_samplers", "trial_seed": "_samplers", "PRUNERS": "_pruners", "GatePruner": "_gate",
    "FrontGate": "_gate",
    "additive_ranks": "_baselines", "greedy_ranks": "_baselines", "log_weights_for": "_baselines", "measure_sensitivity": "_baselines",
    "output_fidelity": "_baselines", "probe_ranks": "_baselines", "proxy_sensitivity": "_baselines", "table_size": "_baselines",
    "uniform_ranks": "_baselines",
    "Views": "_views", "views_for": "_views", "Callables": "_callables", "task_callables": "_callables", "subset_of": "_callables",
    "Plan": "_plan", "Workload": "_plan", "make_plan": "_plan", "resolve": "_plan", "TrialsFailing": "_loop",
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = exports(__name__, _NAMES)

if TYPE_CHECKING:
    from ranksearch.study._baselines import (
        additive_ranks,
        greedy_ranks,
        log_weights_for,
        measure_sensitivity,
        output_fidelity,
        probe_ranks,
        proxy_sensitivity,
        table_size,
        uniform_ranks,
    )
    from ranksearch.study._callables import Callables, subset_of, task_callables
    from ranksearch.study._gate import FrontGate, GatePruner
    from ranksearch.study._loop import TrialsFailing
    from ranksearch.study._plan import Plan, Workload, make_plan, resolve
    from ranksearch.study._pruners import PRUNERS
    from ranksearch.study._record import StudyRecord, TrialRecord
    from ranksearch.study._samplers import SAMPLERS, LocalSampler, trial_seed
    from ranksearch.study._settings import Components, RunOptions, SearchSettings
    from ranksearch.study._storage import artifact_store, open_storage, read_study, release
    from ranksearch.study._views import Views, views_for
    from ranksearch.study._vocab import (
        BASELINES,
        Axis,
        Coding,
        FactorKind,
        Factors,
        Granularity,
        Method,
        Prior,
        Proposals,
        Pruner,
        Sampler,
        Sensitivity,
        SensitivityKind,
    )
