"""Everything that defines a search: one frozen, versioned settings object.

The CLI builds a :class:`SearchSettings` once from its flags, the Python API takes one, the study
stores it at creation (every process that joins reads it back and refuses any difference), and the
exported rank config records it. Run options (storage, output folder, timeout, trial cap, workers,
device) are not part of it: they change how a study is run, not what it searches.

Example:
    >>> s = SearchSettings(target_ratio=0.25, sampler="random", seed=3)
    >>> SearchSettings.from_dict(s.to_dict()) == s
    True
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ranksearch.errors import ConfigError
from ranksearch.retrain import RetrainSettings

__all__ = ["FACTORS", "FORMAT", "FORMAT_VERSION", "GRANULARITIES", "PRIORS", "PROPOSALS", "PRUNERS", "SAMPLERS", "SENSITIVITIES",
           "SearchSettings"]

FORMAT = "ranksearch.search_settings"
FORMAT_VERSION = 5
#: fields added since each version, with the values that reproduce a study of that version
_V4 = {"sensitivity_samples": 0}
_V3 = {"sensitivity": "measured", "sensitivity_budget": 48, **_V4}  # version 4 stores its sensitivity: measured was its default
_V2 = {"screen_samples": 0, **_V3}
_V1 = {"proposals": "weights", "step": 0.2, "screen": 0.0, "keep": 0.2, **_V2}
SAMPLERS = ("local", "tpe", "gp", "random", "cmaes")  #: sampler names, the default first
PRUNERS = ("gate", "median", "hyperband", "none")  #: pruner names, the default first
#: what a sampled trial's parameters are: per-layer log2 rank steps from the incumbent (the best trial so
#: far), or per-layer log10 weights on the MSE bound around the prior's centre (version 1's only kind)
PROPOSALS = ("incumbent", "weights")
GRANULARITIES = ("layer", "group")  #: one searched weight per layer, or per group of similar layers
PRIORS = ("none", "sensitivity")  #: centre of the searched weights: the seed rule, or the sensitivity-sum allocation
FACTORS = ("auto", "data-aware", "plain")  #: auto: data-aware when calibration inputs exist
#: how the sensitivity table is made: measured (the metric with each layer at each probe rank),
#: output (the same probes scored by how close the model's outputs stay to the dense model's: no labels, no
#: metric), proxy (from the curves, calibrated on a few evaluations), auto (measured when it fits
#: sensitivity_budget, else output on a subset that fits it; the default)
SENSITIVITIES = ("auto", "measured", "output", "proxy")
CUSTOM = "custom:"  #: prefix of a sampler/pruner given as an Optuna object from Python (``custom:TPESampler``)


@dataclass(frozen=True)
class SearchSettings:
    """What a study searches, and how; equal settings mean trials that may be mixed in one study.

    Attributes:
        target_ratio: Fraction of the whole model's parameters to keep, in (0, 1).
        model: Space name, model factory (``module:function``) or class name of the dense model.
        weights_digest: XXH3-128 digest of the dense model's state dict (filled in by ``search``).
        space: Space name or ``.yaml`` path a worker rebuilds the model and task from (None: Python only).
        data: The space's local data folder (``--data``), if any.
        proposals: One of :data:`PROPOSALS`. ``incumbent``: a sampled trial moves each layer's rank by
            ``2**step`` from the best trial so far (CMA-ES: from the best enqueued allocation, its mean
            moves by itself), then all ranks are scaled together onto the budget.
        step: Standard deviation (``log2`` units) of the local sampler's steps in the ``incumbent`` space
            (searched steps range over ``[-1, 1]``: half to twice the rank); CMA-ES starts with Optuna's
            own initial step there, a sixth of the range (1/3).
        screen: Fraction of the first retrain epoch after which the built-in retrain reports the validation
            metric as step 0 (0: no screening report); the ``gate`` pruner screens sampled trials there.
        keep: Fraction of the screened trials the ``gate`` pruner lets go on (the best ones, and never
            more than this fraction of the sampled trials so far unless one screens best of all; after
            that, the top half at each epoch but the last).
        screen_samples: Validation samples (a fixed random subset) the built-in retrain scores the screen
            and every epoch but the last on, and a sampled trial's metric before retrain (0: the whole
            split). The last epoch, which is the trial's value, is always scored on the whole split.
        sampler: One of :data:`SAMPLERS` (or ``custom:<class>`` for an Optuna object given in Python).
        pruner: One of :data:`PRUNERS` (or ``custom:<class>``).
        granularity: One of :data:`GRANULARITIES`.
        prior: One of :data:`PRIORS`.
        spread: Searched per-layer weights on the MSE bound range over ``10**[-spread, spread]``.
        factors: One of :data:`FACTORS`; ``search`` resolves ``auto`` before the study stores it.
        rank_multiple: Ranks are multiples of this; ``"auto"`` (the default): 8 when the retrain runs on
            CUDA (bf16 tensor cores), else 1 (``search`` resolves it before the study stores it).
        min_rank: Smallest rank allowed.
        exclude: Layer names or regular expressions kept dense.
        baselines: Enqueue uniform, AIMET-style greedy and sensitivity-sum allocations after the seed rule.
        sensitivity: One of :data:`SENSITIVITIES`: how the table behind those baselines is made.
        sensitivity_budget: Under ``auto``: most evaluations of the model (counted in whole validation
            splits) the table may take; a measured table that needs more is scored by ``output`` on a
            subset of the validation inputs small enough to fit.
        sensitivity_samples: Validation samples (a fixed random subset) the sensitivity probes run on
            (0: the whole split; with your own ``evaluate``, the ``output`` kind runs on the first ones
            of the calibration inputs).
        retrain: The built-in retrain's recipe (None: the user's own ``retrain`` callable).
        seed: Seeds the sampler (the k-th sampled trial draws from a seed derived from it and k, whichever worker runs it) and every retrain.
    """

    target_ratio: float
    model: str = ""
    weights_digest: str = ""
    space: str | None = None
    data: str | None = None
    proposals: str = PROPOSALS[0]
    step: float = 0.2
    screen: float = 0.25
    keep: float = 0.2
    screen_samples: int = 512
    sampler: str = SAMPLERS[0]
    pruner: str = PRUNERS[0]
    granularity: str = GRANULARITIES[0]
    prior: str = PRIORS[0]
    spread: float = 3.0
    factors: str = FACTORS[0]
    rank_multiple: int | str = "auto"
    min_rank: int = 1
    exclude: tuple[str, ...] = ()
    baselines: bool = True
    sensitivity: str = SENSITIVITIES[0]
    sensitivity_budget: int = 48
    sensitivity_samples: int = 0
    retrain: RetrainSettings | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        r = self.target_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not (0 < r < 1):
            raise ConfigError(f"target_ratio {r!r} must be a number in (0, 1), e.g. 0.25 keeps a quarter of the parameters.")
        object.__setattr__(self, "target_ratio", float(r))
        for name, allowed in (("sampler", SAMPLERS), ("pruner", PRUNERS)):
            value = getattr(self, name)
            if value not in allowed and not (isinstance(value, str) and value.startswith(CUSTOM)):
                raise ConfigError(f"{name} {value!r} is not supported; use one of {list(allowed)}.")
        for name, allowed in (("granularity", GRANULARITIES), ("prior", PRIORS), ("factors", FACTORS), ("proposals", PROPOSALS),
                              ("sensitivity", SENSITIVITIES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} {getattr(self, name)!r} is not supported; use one of {list(allowed)}.")
        if isinstance(self.spread, bool) or not isinstance(self.spread, (int, float)) or not (0 < self.spread < math.inf):
            raise ConfigError(f"spread {self.spread!r} must be a finite number > 0 (log10 range of the searched weights).")
        object.__setattr__(self, "spread", float(self.spread))
        for name, low, high, hint in (("step", 0.0, 1.0, "log2 units: 0.2 moves a rank by about 15%"),
                                      ("screen", 0.0, 1.0, "a fraction of the first epoch; 0 turns screening off"),
                                      ("keep", 0.0, 1.0, "the fraction of screened trials that go on")):
            v = getattr(self, name)
            ok = not isinstance(v, bool) and isinstance(v, (int, float)) and (low <= v <= high if name == "screen" else low < v <= high)
            if not ok:
                raise ConfigError(f"{name} {v!r} must be a number in {'[' if name == 'screen' else '('}{low:g}, {high:g}] ({hint}).")
            object.__setattr__(self, name, float(v))
        for name in ("rank_multiple", "min_rank"):
            v = getattr(self, name)
            if (isinstance(v, bool) or not isinstance(v, int) or v < 1) and not (name == "rank_multiple" and v == "auto"):
                raise ConfigError(f"{name} {v!r} must be an int >= 1{' or auto' if name == 'rank_multiple' else ''}.")
        v = self.screen_samples
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"screen_samples {v!r} must be an int >= 0 (validation samples of the screen; 0: all).")
        v = self.sensitivity_budget
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"sensitivity_budget {v!r} must be an int >= 0 (evaluations a measured sensitivity table may take).")
        v = self.sensitivity_samples
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"sensitivity_samples {v!r} must be an int >= 0 (validation samples the sensitivity probes run on; 0: all).")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed {self.seed!r} must be an int >= 0.")
        if isinstance(self.exclude, str) or not all(isinstance(e, str) for e in self.exclude):
            raise ConfigError(f"exclude {self.exclude!r} must be a list of layer names or regular expressions.")
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if not isinstance(self.baselines, bool):
            raise ConfigError(f"baselines {self.baselines!r} must be true or false.")
        if isinstance(self.retrain, dict):
            object.__setattr__(self, "retrain", RetrainSettings(**self.retrain))
        elif self.retrain is not None and not isinstance(self.retrain, RetrainSettings):
            raise ConfigError(f"retrain {self.retrain!r} must be a RetrainSettings (or None for your own retrain callable).")
        for name in ("model", "weights_digest"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name} {getattr(self, name)!r} must be a string.")

    @property
    def data_aware(self) -> bool:
        """Whether searched trials use activation-whitened factors (``factors`` must be resolved)."""
        return self.factors == "data-aware"

    def replace(self, **changes: Any) -> SearchSettings:
        """A copy with ``changes`` (settings are never mutated)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, format keys first."""
        d = asdict(self)
        d["exclude"] = list(self.exclude)
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **d}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any, origin: str = "search settings") -> SearchSettings:
        """Build from :meth:`to_dict`'s output; errors name ``origin`` and the faulty field."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ConfigError(f"{origin} are not ranksearch search settings (their 'format' is not {FORMAT!r}).")
        version = data.get("format_version")
        if version not in (1, 2, 3, 4, FORMAT_VERSION):
            raise ConfigError(f"{origin} have format_version {version!r}; this ranksearch reads 1 to "
                             f"{FORMAT_VERSION}: use the ranksearch version that wrote them.")
        body = {k: v for k, v in data.items() if k not in ("format", "format_version")}
        # version 1 searched log-weights without screening, version 2 screened on the whole validation split,
        # version 3 measured every sensitivity table in full, version 4 on the whole validation split
        if (added := {1: _V1, 2: _V2, 3: _V3, 4: _V4}.get(version)) is not None:
            if unknown := sorted(set(added) & set(body)):
                raise ConfigError(f"{origin}: format_version {version} has no fields {unknown}.")
            body = {**body, **added}
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(body) - known):
            raise ConfigError(f"{origin}: unknown fields {unknown}.")
        if "target_ratio" not in body:
            raise ConfigError(f"{origin}: missing field 'target_ratio'.")
        try:
            return cls(**body)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{origin}: {e}") from None

    def differences(self, other: SearchSettings) -> list[tuple[str, Any, Any]]:
        """``(field, self's value, other's value)`` for every field that differs."""
        a, b = self.to_dict(), other.to_dict()
        return [(k, a[k], b[k]) for k in a if a[k] != b[k]]
