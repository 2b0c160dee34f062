"""What a study searches (:class:`SearchSettings`), how one process runs it (:class:`RunOptions`), and
the parts a caller may hand over ready-made (:class:`Components`).

Settings are frozen and versioned: the study stores them at creation, every process that joins reads
them back and refuses any difference, the exported rank config records them. Run options (storage,
output folder, trial cap, timeout, workers, ...) change how a study is run, not what it searches, and
are never stored as settings. Each field's default, help and allowed values are written once, with the
field (:func:`ranksearch._fields.option`); the CLI's flags are generated from them.

Example:
    >>> s = SearchSettings(target_ratio=0.25, sampler="random", seed=3)
    >>> SearchSettings.from_dict(s.to_dict()) == s
    True
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from enum import Enum
from typing import Any

from ranksearch._fields import document, option, validate
from ranksearch.core._retrain import RetrainSettings
from ranksearch.core._timing import Runtime
from ranksearch.errors import ConfigError, StudyError
from ranksearch.study._vocab import (
    CUSTOM,
    Axis,
    FactorKind,
    Factors,
    Granularity,
    Prior,
    Proposals,
    Pruner,
    Sampler,
    Sensitivity,
    SensitivityKind,
)

__all__ = ["FORMAT", "FORMAT_VERSION", "Components", "RunOptions", "SearchSettings"]

FORMAT = "ranksearch.search_settings"
FORMAT_VERSION = 12  #: 12 adds the bytes axis of a Pareto study; 11 qat; 10 bits_per_param; 9 byte working points (target_bytes); 8 Pareto studies (pareto, pareto_axis); 7 latency working points; 6 spells the factors ``data_aware`` (5 and before: ``data-aware``)
#: fields added since each version, with the values that reproduce a study of that version
_V4 = {"sensitivity_samples": 0}
_V3 = {"sensitivity": "measured", "sensitivity_budget": 48, **_V4}  # version 4 stores its sensitivity: measured was its default
_V2 = {"screen_samples": 0, **_V3}
_V1 = {"proposals": "weights", "step": 0.2, "screen": 0.0, "keep": 0.2, **_V2}
_ADDED: dict[int, dict[str, Any]] = {1: _V1, 2: _V2, 3: _V3, 4: _V4, 5: {}, 6: {}, 7: {}, 8: {}, 9: {}, 10: {}, 11: {}}
_OLD_FACTORS = {"data-aware": Factors.DATA_AWARE.value}  #: spellings of versions 1-5

SEARCH, SCREEN, SENS, GRID = "search", "screening (the gate pruner)", "sensitivity table and baselines", "working point"
QAT = 0.5  #: the share of a retrain trained quantization-aware by default at a byte working point (benchmarks/RESULTS.md)
FRONT_STEP = 1.25  #: a Pareto study's ratios: the given ones and geometric steps between them of at most this factor


def front_ratios(points: Sequence[float]) -> tuple[float, ...]:
    """The ratios a Pareto study's trials allocate for, largest first: the given ``points`` and, between each two
    neighbours, geometric steps of at most :data:`FRONT_STEP` (0.25 and 0.1 -> 0.25, 0.2081, 0.1733, 0.1443, 0.1201, 0.1).

    Example:
        >>> front_ratios((0.1, 0.25))
        (0.25, 0.2081, 0.1733, 0.1443, 0.1201, 0.1)
    """
    given = sorted({float(p) for p in points})
    out = {given[0]}
    for a, b in zip(given, given[1:]):
        k = math.ceil(math.log(b / a) / math.log(FRONT_STEP) - 1e-9)
        out.update(round(a * (b / a) ** (i / k), 4) for i in range(1, k))
        out.add(b)
    return tuple(sorted(out, reverse=True))


@dataclass(frozen=True)
class SearchSettings:
    target_ratio: float = option(..., "fraction of the whole model's parameters to keep, in (0, 1]; 1 only with target_latency "
                                 "or target_bytes (a latency or byte working point alone; with target_bytes, the largest "
                                 "ratio a trial may keep)", "float", low=0, high=1, open_low=True,
                                 hint="e.g. 0.25 keeps a quarter of the parameters")
    model: str = option("", "space name, model factory or class name of the dense model", "str")
    weights_digest: str = option("", "XXH3-128 digest of the dense model's state dict (search fills it in)", "str")
    space: str | None = option(None, "space name or .yaml path a worker rebuilds the model and task from (None: Python only)",
                               "str", optional=True)
    data: str | None = option(None, "the space's local data folder (--data), if any", "str", optional=True)
    proposals: Proposals = option(Proposals.INCUMBENT, "sampled trials step each layer's rank from the best trial so far "
                                  "(incumbent) or set log10 weights on the MSE bound around the prior's centre (weights)",
                                  "choice", choices=Proposals, rare=True, group=SEARCH)
    step: float = option(0.2, "standard deviation of the local sampler's log2 rank steps (incumbent proposals)", "float",
                         low=0, high=1, open_low=True, hint="log2 units: 0.2 moves a rank by about 15%", rare=True, group=SEARCH)
    screen: float = option(0.25, "fraction of the first retrain epoch after which the gate screens a sampled trial "
                           "(0: at epoch 1)", "float", low=0, high=1,
                           hint="a fraction of the first epoch; 0 turns screening off", rare=True, group=SCREEN)
    keep: float = option(0.2, "fraction of screened trials the gate lets go on (then the top half at each epoch)", "float",
                         low=0, high=1, open_low=True, hint="the fraction of screened trials that go on", rare=True, group=SCREEN)
    screen_samples: int = option(512, "validation samples (a fixed random subset) of the screen, of every epoch but the last "
                                 "and of a sampled trial's metric before retrain (0: all)", "int", low=0,
                                 hint="validation samples of the screen; 0: all", rare=True, group=SCREEN)
    sampler: Sampler | str = option(Sampler.LOCAL, "Optuna sampler (a custom Optuna object from Python is recorded as "
                                    "custom:<class>)", "choice", choices=Sampler, custom=CUSTOM, group=SEARCH)
    pruner: Pruner | str = option(Pruner.GATE, "Optuna pruner (custom:<class> for an object from Python)", "choice",
                                  choices=Pruner, custom=CUSTOM, group=SCREEN)
    granularity: Granularity = option(Granularity.LAYER, "one searched parameter per layer, or per group of similar layers",
                                      "choice", choices=Granularity, rare=True, group=SEARCH)
    prior: Prior = option(Prior.NONE, "centre of the searched weights: the seed rule (none) or the sensitivity-sum allocation",
                          "choice", choices=Prior, rare=True, group=SEARCH)
    spread: float = option(3.0, "searched layer weights range over 10**[-spread, spread] (weights proposals)", "float",
                           low=0, open_low=True, hint="log10 range of the searched weights", rare=True, group=SEARCH)
    factors: Factors = option(Factors.AUTO, "searched trials truncate on calibration activations (data_aware) or on the "
                              "weights alone (plain); auto: data_aware when inputs exist", "choice", choices=Factors,
                              group=SEARCH)
    rank_multiple: int | str = option("auto", "ranks are multiples of this; auto: 8 when the retrain runs on CUDA (bf16 "
                                      "tensor cores), else 1 (the space's on the command line), halved on a small model", "int",
                                      low=1, auto=True,
                                      group=GRID, metavar="N|auto")
    min_rank: int = option(1, "smallest rank allowed", "int", low=1,
                           rare=True, group=GRID)
    target_latency: float | None = option(None, "also keep the model's latency at most this fraction of the dense model's, "
                                          "on --runtime; every layer stays dense where its pair does not run faster",
                                          "float", low=0, high=1, open_low=True, optional=True, group=GRID, flag="--latency",
                                          hint="e.g. 1.0: never slower than dense; 0.8: a fifth faster", metavar="FRACTION")
    runtime: Runtime = option(Runtime.TORCH, "where latency is measured: torch (eager, on the search's device), "
                              "torch-compile or onnxruntime (CPU)", "choice", choices=Runtime, group=GRID)
    latency_batch: int = option(1, "batch size latency is measured at", "int", low=1, group=GRID,
                                hint="samples per timed batch")
    target_bytes: int | None = option(None, "a byte working point: the model's NNR bitstream (NNCodec, the factors, biases, "
                                      "normalization, the layers left dense and the headers) at most this many bytes; each "
                                      "trial chooses a parameter ratio and its ranks, and each weight's qp, and is scored on "
                                      "the decoded model", "int", low=1, optional=True, group=GRID, flag="--bytes",
                                      hint="e.g. a tenth of the dense model's stream at qp -38", metavar="N")
    bits_per_param: float | None = option(None, "a byte working point given per parameter of the dense model: target_bytes is "
                                          "this many bits times its parameters, over 8 (both recorded)", "float", low=0, high=32,
                                          open_low=True, optional=True, group=GRID, flag="--bits-per-param",
                                          hint="e.g. 1.6: a twentieth of float32", metavar="B")
    qat: float | None = option(None, "at a byte working point: the share of each trial's retrain, its last steps, trained "
                               "quantization-aware (each weight rounded to the step of the qp it would be coded at as they "
                               "begin, the gradient passed straight through); 0: a plain retrain; default: 0.5 at a byte "
                               "working point with the built-in retrain, else 0", "float", low=0, high=1, optional=True,
                               group=GRID, flag="--qat", hint="e.g. 0.5: the second half of each retrain; 0: plain", metavar="SHARE")
    pareto: tuple[float, ...] = option((), "one multi-objective study of the metric against pareto_axis over these working "
                                       "points (the largest is target_ratio, or target_latency on the latency axis; on the bytes "
                                       "axis, fractions of the dense model's NNR stream at qp -38): the front spans them, each gets "
                                       "the seed rule and the baselines", "floats", low=0, high=1,
                                       open_low=True, hint="two points or more, each in (0, 1]")
    pareto_axis: Axis = option(Axis.RATIO, "a Pareto study's second objective: the parameter ratio, the latency as a fraction "
                               "of the dense model's (predicted by the timing table), or the bytes of the NNR stream (measured by "
                               "NNCodec on each trial's decoded model)", "choice", choices=Axis)
    exclude: tuple[str, ...] = option((), "layer names or regular expressions kept dense", "strings",
                                      hint="layer names or regular expressions")
    baselines: bool = option(True, "enqueue uniform, AIMET-style greedy and sensitivity-sum allocations after the seed rule",
                             "bool", group=SENS)
    sensitivity: SensitivityKind = option(SensitivityKind.AUTO, "how the baselines' sensitivity table is made: measured (the "
                                          "metric with each layer at each probe rank), output (the same probes scored by how "
                                          "close the outputs stay to the dense model's), proxy (from the curves, cheap but "
                                          "less accurate), auto (measured when it fits --sensitivity-budget, else output on a "
                                          "subset that fits)", "choice", choices=SensitivityKind, group=SENS)
    sensitivity_budget: int = option(48, "under auto: most evaluations of the model (as passes over the whole validation "
                                     "split) the table may take", "int", low=0,
                                     hint="evaluations a measured sensitivity table may take", rare=True, group=SENS)
    sensitivity_samples: int = option(0, "validation samples (a fixed random subset) the sensitivity probes run on (0: all)",
                                      "int", low=0, hint="validation samples the sensitivity probes run on; 0: all", rare=True, group=SENS)
    retrain: RetrainSettings | None = dataclasses.field(default=None)  #: the built-in retrain's recipe (None: your own retrain)
    seed: int = option(0, "seeds the sampler (the k-th sampled trial draws from a seed derived from it and k, whichever "
                       "worker runs it) and every retrain", "int", low=0, high=2**32 - 1, group=SEARCH,
                       hint="numpy and torch take seeds below 2**32")

    def __post_init__(self) -> None:
        if isinstance(self.factors, str) and self.factors in _OLD_FACTORS:
            raise ConfigError(f"factors {self.factors!r} is spelled {_OLD_FACTORS[self.factors]!r} now.")
        validate(self)
        if self.target_ratio == 1 and self.target_latency is None and not self.codes:
            raise ConfigError("target_ratio 1 would keep every parameter; give a ratio below 1 (e.g. 0.25 keeps a quarter), or "
                              "target_latency or target_bytes for a latency or byte working point alone.")
        if self.bits_per_param is not None and (self.pareto or self.target_latency is not None):
            raise ConfigError(f"bits_per_param {self.bits_per_param:g} goes alone (with target_ratio as the largest ratio a trial may "
                              "keep); a front over bytes is pareto_axis 'bytes' (--pareto-bytes F,F), and a byte working point with a "
                              "latency bound is not built yet: run it as a separate study.")
        if self.target_bytes is not None and (self.pareto or self.target_latency is not None):
            raise ConfigError(f"target_bytes {self.target_bytes} goes alone (with target_ratio as the largest ratio a trial may keep); "
                              "a front over bytes is pareto_axis 'bytes' (--pareto-bytes F,F), and a byte working point with a "
                              "latency bound is not built yet: run it as a separate study.")
        if self.qat and not self.codes:
            raise ConfigError(f"qat {self.qat:g} rounds each weight to the step it is coded at, which only a byte working point "
                              "codes; give target_bytes (--bytes N), bits_per_param or a front over bytes (--pareto-bytes), or drop qat.")
        if self.pareto:
            self._check_pareto()
        elif self.pareto_axis is not Axis.RATIO:
            raise ConfigError(f"pareto_axis {self.pareto_axis.value!r} goes with pareto (the points of the front); give both.")
        if isinstance(self.retrain, dict):
            try:
                object.__setattr__(self, "retrain", RetrainSettings(**self.retrain))
            except TypeError as e:
                raise ConfigError(f"retrain: {e}") from None
        elif self.retrain is not None and not isinstance(self.retrain, RetrainSettings):
            raise ConfigError(f"retrain {self.retrain!r} must be a RetrainSettings (or None for your own retrain callable).")

    def _check_pareto(self) -> None:
        points = sorted(set(self.pareto), reverse=True)
        if len(points) != len(self.pareto):
            raise ConfigError(f"pareto {list(self.pareto)} repeats a ratio; give each once.")
        if len(points) < 2:
            raise ConfigError(f"pareto {list(self.pareto)} needs two working points or more (e.g. 0.25 and 0.1): the front spans them.")
        named = [float(f"{p:g}") for p in points]
        if self.pareto_axis is Axis.BYTES:
            if points[0] >= 1:
                raise ConfigError(f"pareto {named} on the bytes axis are fractions of the dense model's NNR stream at qp -38; 1 is "
                                  "that stream itself: give fractions below 1 (e.g. 0.1 and 0.05).")
            if self.target_latency is not None:
                raise ConfigError(f"target_latency {self.target_latency:g} with a front over bytes is not built yet; run the latency "
                                  "working point as a separate study.")
        elif self.pareto_axis is Axis.RATIO:
            if points[0] >= 1:
                raise ConfigError(f"pareto {named} keeps every parameter at 1; give ratios below 1 (e.g. 0.25 and 0.1).")
            if self.target_ratio != points[0]:
                raise ConfigError(f"target_ratio {self.target_ratio:g} of a Pareto study must be the largest of its points "
                                  f"{named}: {points[0]:g}.")
        elif self.target_latency != points[0]:
            raise ConfigError(f"target_latency {self.target_latency} of a Pareto study on the latency axis must be the largest of "
                              f"its points {named}: {points[0]:g}.")
        if self.sampler is Sampler.CMAES:
            raise ConfigError("sampler 'cmaes' optimizes one objective; a Pareto study needs one of local, tpe, gp, random, nsga2.")
        if self.pruner not in (Pruner.GATE, Pruner.NONE):
            raise ConfigError(f"pruner {str(self.pruner)!r}: Optuna prunes no multi-objective study; a Pareto study screens with "
                              "its own gate (gate) or not at all (none).")
        object.__setattr__(self, "pareto", tuple(points))

    @property
    def front(self) -> tuple[float, ...]:
        """The ratios (latency fractions on the latency axis) a Pareto study's trials allocate for (:func:`front_ratios`);
        empty for one working point."""
        return front_ratios(self.pareto) if self.pareto else ()

    @property
    def codes(self) -> bool:
        """Whether each trial's model is coded into an NNR stream within a byte budget (a byte working point, or a front over
        bytes)."""
        return self.target_bytes is not None or self.bits_per_param is not None or bool(self.pareto and self.pareto_axis is Axis.BYTES)

    @property
    def point(self) -> str:
        """The working point as a study names it: ``0.25``, ``0.25+latency0.9``, ``latency0.9`` (latency alone), ``bytes50000``
        (``bytes50000+0.5``: no trial keeps more than half the parameters) or
        ``pareto0.1-0.25`` (``pareto0.1-0.25+latency1`` with a latency bound on every trial; ``pareto-latency0.7-1`` on
        the latency axis, ``pareto-latency0.7-1+0.5`` with a parameter budget; ``pareto-bytes0.05-0.1`` on the bytes axis)."""
        if self.target_bytes is not None:
            return f"bytes{self.target_bytes}" + ("" if self.target_ratio == 1 else f"+{self.target_ratio:g}")
        if self.pareto and self.pareto_axis is not Axis.RATIO:
            bound = "" if self.target_ratio == 1 else f"+{self.target_ratio:g}"
            return f"pareto-{self.pareto_axis.value}{min(self.pareto):g}-{max(self.pareto):g}{bound}"
        if self.pareto:
            bound = "" if self.target_latency is None else f"+latency{self.target_latency:g}"
            return f"pareto{min(self.pareto):g}-{max(self.pareto):g}{bound}"
        if self.target_latency is None:
            return f"{self.target_ratio:g}"
        return f"latency{self.target_latency:g}" if self.target_ratio == 1 else f"{self.target_ratio:g}+latency{self.target_latency:g}"

    @property
    def factor_kind(self) -> FactorKind:
        """The kind of the searched trials' factors (``factors`` must be resolved: not ``auto``)."""
        if self.factors is Factors.AUTO:
            raise StudyError("factors='auto' is resolved by the search (data_aware with inputs, else plain); resolve it first.")
        return FactorKind(self.factors.value)

    def replace(self, **changes: Any) -> SearchSettings:
        """A copy with ``changes`` (settings are never mutated)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of plain values (the vocabularies as their strings), format keys first."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d = {k: v.value if isinstance(v, Enum) else v for k, v in d.items()}
        d["exclude"] = list(self.exclude)
        d["pareto"] = list(self.pareto)
        d["retrain"] = None if self.retrain is None else self.retrain.to_dict()
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **d}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any, origin: str = "search settings") -> SearchSettings:
        """Build from :meth:`to_dict`'s output of any version; errors name ``origin`` and the faulty field."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ConfigError(f"{origin} are not ranksearch search settings (their 'format' is not {FORMAT!r}).")
        version = data.get("format_version")
        if version not in (*_ADDED, FORMAT_VERSION):
            raise ConfigError(f"{origin} have format_version {version!r}; this ranksearch reads 1 to "
                              f"{FORMAT_VERSION}: use the ranksearch version that wrote them.")
        body: dict[str, Any] = {k: v for k, v in data.items() if k not in ("format", "format_version")}
        # version 1 searched log-weights without screening, version 2 screened on the whole validation split,
        # version 3 measured every sensitivity table in full, version 4 on the whole validation split,
        # version 5 spelled the factors data-aware
        if (added := _ADDED.get(version)) is not None:
            if unknown := sorted(set(added) & set(body)):
                raise ConfigError(f"{origin}: format_version {version} has no fields {unknown}.")
            body = {**body, **added}
            factors = body.get("factors", Factors.AUTO.value)
            body["factors"] = _OLD_FACTORS.get(factors, factors) if isinstance(factors, str) else factors
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


document(SearchSettings, """What a study searches, and how; equal settings mean trials that may be mixed in one study.

``retrain`` is the built-in retrain's recipe (:class:`~ranksearch.core.RetrainSettings`; None with your own
retrain callable). ``factors="auto"`` and ``rank_multiple="auto"`` are resolved by the search before the
study stores them.""")

HEARTBEAT_S, GRACE_S = 5, 20  #: default heartbeat interval and grace period of database storages (seconds)
RUN = "run"


@dataclass(frozen=True)
class RunOptions:
    n_trials: int | None = option(20, "finished trials (complete or pruned) the study should hold, all workers and resumed runs "
                                  "counted (with K workers up to K-1 more finish: they were running); None: no cap for a "
                                  "search (give a timeout), the study's own cap for run_worker", "int", low=1,
                                  optional=True, group=RUN, flag="--trials")
    timeout: float | None = option(None, "wall-clock limit in seconds for this process's trials", "float", low=0, open_low=True,
                                   optional=True, hint="a finite number of seconds", group=RUN)
    storage: Any = option(None, "Optuna storage URL, journal file or storage object (None: study.journal in out_dir, or in "
                          "memory without out_dir)", "str", optional=True, group=RUN, metavar="URL|FILE")
    study_name: str | None = option(None, "the study's name in the storage (None: MODEL@RATIO)", "str", optional=True, group=RUN, metavar="NAME")
    resume: bool = option(False, "continue (or join) an existing study; its stored settings must equal these", "bool", group=RUN)
    out_dir: str | os.PathLike[str] | None = dataclasses.field(default=None)  #: the results folder (journal, artifacts, files)
    artifacts: Any = option(None, "folder (or store) for the trials' weights (None: out_dir/artifacts; several machines need a "
                            "shared one)", "str", optional=True, group=RUN, metavar="DIR")
    cache_dir: str | os.PathLike[str] | None = dataclasses.field(default=None)  #: the spectra cache folder
    workers: int = option(1, "worker processes on this machine sharing the study (> 1 needs a space)", "int", low=1, group=RUN)
    gpus: tuple[str, ...] = option((), "CUDA devices the workers are placed on, round-robin (several may share one)", "strings",
                                   group=RUN)
    heartbeat: int = option(HEARTBEAT_S, "database heartbeat interval, s", "int", low=1, rare=True, group=RUN)
    grace: int = option(GRACE_S, "database grace period before a silent trial is failed, s", "int", low=1, rare=True, group=RUN)
    wait: float = option(0.0, "seconds a joining worker waits for the study to appear (a worker started with the search that "
                         "creates it)", "float", low=0, group=RUN, metavar="S")
    progress: bool = option(False, "progress bars on stderr (log lines go to the ranksearch logger either way)", "bool")
    report: bool = option(True, "write report.html into out_dir (needs matplotlib: the report extra)", "bool")
    source: Mapping[str, Any] | None = dataclasses.field(default=None)  #: where the dense model came from (recorded)

    def __post_init__(self) -> None:
        validate(self, skip=("storage", "artifacts"))
        for name in ("out_dir", "artifacts", "storage"):
            value = getattr(self, name)
            if isinstance(value, (str, os.PathLike)) and str(value).strip() == "":
                raise StudyError(f"{name} is empty; give a path, e.g. runs/wp (or leave it None).")
        if self.grace <= self.heartbeat:
            raise StudyError(f"heartbeat {self.heartbeat} s and grace period {self.grace} s: give grace > heartbeat.")

    def replace(self, **changes: Any) -> RunOptions:
        return replace(self, **changes)

    def name_for(self, model: str, point: str) -> str:
        """The study's name: ``study_name``, else ``MODEL@POINT`` (:attr:`SearchSettings.point`: ``MODEL@0.25``,
        ``MODEL@0.25+latency0.9``, ``MODEL@pareto0.1-0.25``)."""
        return self.study_name or f"{model}@{point}"


document(RunOptions, """How one process runs a study: none of it is stored as the study's settings.

``out_dir`` receives the default journal file, the artifact store and the results files; ``artifacts``
is the trials' weights store (several machines need a shared folder); ``cache_dir`` the spectra cache;
``source`` where the dense model came from, recorded in the study and the configs.""")


@dataclass(frozen=True)
class Components:
    """Parts of a study handed over ready-made instead of built from its settings.

    Attributes:
        sampler: An Optuna sampler object instead of ``settings.sampler`` (recorded as ``custom:<class>``;
            processes joining the study must pass the same).
        pruner: An Optuna pruner object instead of ``settings.pruner``.
        sensitivity: A sensitivity table measured before (``result.sensitivity`` of another working point).
        warm_start: Per-layer ``log10`` weights to enqueue after the baselines (e.g. the best trial's
            ``log10w`` at another working point).
        input_shape: One input sample's shape (no batch dimension) for the configs' multiply-adds
            (default: the task's first validation input, or the first calibration batch's).
    """

    sampler: Any = None
    pruner: Any = None
    sensitivity: Sensitivity | None = None
    warm_start: Sequence[Mapping[str, float]] = ()
    input_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "warm_start", tuple(dict(w) for w in self.warm_start))
        if self.input_shape is not None:
            object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
