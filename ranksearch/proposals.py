"""Where sampled trials look: around the incumbent, in steps of relative rank.

In the ``incumbent`` space (:data:`~ranksearch.settings.PROPOSALS`) a sampled trial takes the best
allocation found so far (the *anchor*), moves each layer's rank by a factor ``2**u`` (``u`` in
``[-1, 1]``, one searched parameter per layer or group) and scales all ranks together back onto the
budget (:func:`~ranksearch.solver.project_ranks`). A step of 0.3 thus changes any layer's rank, and
so its parameters, by about 23%, whether the layer is a 9x9 stem or a 4096-wide classifier; in the
``weights`` space the same step in one layer's MSE weight may move nothing or everything.

The anchor is the best completed trial (ties: the earliest); with CMA-ES, whose own mean moves, it is
the best completed *enqueued* allocation (seed rule, baselines, warm starts), so its coordinates stay
put; before any trial completed it is the prior's centre. :class:`LocalSampler` draws each step from
a normal distribution of standard deviation ``settings.step``: a local search around the incumbent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

__all__ = ["STEP_BOUND", "LocalSampler", "anchor_trial"]

STEP_BOUND = 1.0  #: searched steps range over [-STEP_BOUND, STEP_BOUND] (log2 of the rank factor)


def anchor_trial(study: optuna.Study, *, enqueued_only: bool = False) -> FrozenTrial | None:
    """The completed trial sampled proposals start from: the best by value (the earliest of equals);
    ``enqueued_only``: among the enqueued allocations. None before any qualifying trial completed."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if "ranks" in t.user_attrs and not (enqueued_only and t.user_attrs.get("method") == "searched")]
    return max(done, key=lambda t: (t.value, -t.number), default=None)


class LocalSampler(optuna.samplers.BaseSampler):
    """Independent normal steps of standard deviation ``sigma`` around 0, clipped to each parameter's
    range: with the ``incumbent`` space, a local search around the best allocation so far.

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
