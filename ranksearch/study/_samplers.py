"""Samplers by name: the registry (:data:`SAMPLERS`), the local sampler, and the per-trial seeding.

:data:`SAMPLERS` maps each :class:`~ranksearch.study.Sampler` to a factory ``(seed, step) -> sampler``;
its keys are the names a study may use. :class:`TrialSeeded` wraps the named sampler so that the k-th
sampled proposal of a study draws from a seed that depends only on the study's seed and k.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import optuna
import xxhash
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from ranksearch.errors import StudyError
from ranksearch.study._storage import all_trials
from ranksearch.study._vocab import Sampler

__all__ = ["SAMPLERS", "LocalSampler", "TrialSeeded", "make_sampler", "trial_seed"]


class LocalSampler(optuna.samplers.BaseSampler):
    """Independent normal steps of standard deviation ``sigma`` around 0, clipped to each parameter's
    range: with the ``incumbent`` proposals, a local search around the best allocation so far.

    Example:
        >>> import optuna
        >>> study = optuna.create_study(sampler=LocalSampler(0.3, seed=0), direction="maximize")
        >>> study.optimize(lambda t: -abs(t.suggest_float("u", -1, 1)), n_trials=3)
        >>> all(-1 <= t.params["u"] <= 1 for t in study.trials)
        True
    """

    def __init__(self, sigma: float, seed: int | None = None) -> None:
        self._sigma = float(sigma)
        self._rng = np.random.default_rng(seed)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: Mapping[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution) -> Any:
        if not isinstance(param_distribution, FloatDistribution) or param_distribution.log:
            return optuna.samplers.RandomSampler(seed=int(self._rng.integers(2**31))).sample_independent(
                study, trial, param_name, param_distribution)
        d = param_distribution
        centre = min(d.high, max(d.low, 0.0))
        return float(np.clip(centre + self._rng.normal(0.0, self._sigma), d.low, d.high))

    def reseed_rng(self) -> None:
        self._rng = np.random.default_rng()


SamplerFactory = Callable[[int, float], optuna.samplers.BaseSampler]

#: sampler name -> factory(seed, step): the names a study may use
SAMPLERS: dict[Sampler, SamplerFactory] = {
    Sampler.LOCAL: lambda seed, step: LocalSampler(step, seed=seed),
    Sampler.TPE: lambda seed, step: optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=5, constant_liar=True),
    Sampler.GP: lambda seed, step: optuna.samplers.GPSampler(seed=seed, n_startup_trials=5),
    Sampler.RANDOM: lambda seed, step: optuna.samplers.RandomSampler(seed=seed),
    # in the incumbent space CMA-ES starts at the origin (the best enqueued allocation) with a step of a
    # sixth of the range, 1/3 in log2 (Optuna's default; its x0 and sigma0 arguments are deprecated)
    Sampler.CMAES: lambda seed, step: optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False),
    Sampler.NSGA2: lambda seed, step: optuna.samplers.NSGAIISampler(seed=seed),  # a genetic search, made for Pareto studies
}

#: the extra a sampler needs beyond the core install, and the module that tells
NEEDS = {Sampler.CMAES: ("cmaes", "samplers"), Sampler.GP: ("scipy", "samplers")}


def trial_seed(seed: int, ordinal: int) -> int:
    """The seed of the ``ordinal``-th sampled proposal of a study seeded with ``seed``."""
    return xxhash.xxh32_intdigest(f"{seed}:{ordinal}".encode()) % (2**31)


def _sampled_before(study: optuna.Study, number: int) -> int:
    """How many trials numbered below ``number`` were sampled (not enqueued: no ``fixed_params``; not
    the rerun of a failed trial: no ``failed_trial``). Set when each trial is created, so the count is
    the same in every process and for every later reader."""
    return sum(1 for t in all_trials(study) if t.number < number and not {"fixed_params", "failed_trial"} & t.system_attrs.keys())


class TrialSeeded(optuna.samplers.BaseSampler):
    """A named sampler drawing the k-th sampled proposal of the study from a seed that depends only on the
    study's seed and k (it is rebuilt, so seeded, before each trial); enqueued allocations and reruns of
    killed trials do not count.

    So a one-process search is deterministic, a study resumed after Ctrl-C or a kill proposes what an
    uninterrupted one would have, and two workers never draw the same random point, whatever process
    runs which trial. The samplers keep no other state between trials (CMA-ES keeps its optimizer in
    the trials' system attrs).
    """

    def __init__(self, name: Sampler, seed: int, step: float) -> None:
        self._factory, self._seed, self._step = SAMPLERS[name], seed, step
        self._inner = self._factory(seed, step)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._inner = self._factory(trial_seed(self._seed, _sampled_before(study, trial.number)), self._step)
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: Any) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def make_sampler(name: Sampler | str, seed: int, step: float) -> optuna.samplers.BaseSampler:
    """The study's sampler: a registered one, seeded per trial (:class:`TrialSeeded`)."""
    if not isinstance(name, Sampler):
        raise StudyError(f"Study uses the custom sampler {name!r}; join it from Python with the same sampler object "
                         "(Components(sampler=...)).")
    if name in NEEDS:
        from ranksearch._extras import require

        module, extra = NEEDS[name]
        require(module, extra, f"the {name.value} sampler")
    return TrialSeeded(name, seed, step)
