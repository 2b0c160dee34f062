"""What a search found, typed: each allocation's figures and the run's counts, costs and times.

A :class:`Summary` is built from a study (:func:`ranksearch.results.collect`) or read back from a results
folder's rank config and trials file (the report), and rendered by :mod:`ranksearch.results._tables`.
Its figures are stored in a rank config's ``metric`` (:meth:`Summary.metric_record`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ranksearch.core._config import RankConfig
from ranksearch.study._vocab import BASELINES, Axis, Method

__all__ = ["Figures", "Summary", "TrialCounts", "front_of"]


def _number(v: Any) -> float | None:
    return None if v is None else float(v)


@dataclass(frozen=True)
class Figures:
    """One allocation's figures: its trial, validation and test metric, the metric before its retrain
    (on ``before_retrain_samples`` validation samples when not the whole split), its method and the
    ratio it achieved."""

    trial: int | None = None
    val: float | None = None
    test: float | None = None
    before_retrain: float | None = None
    before_retrain_samples: int | None = None
    method: Method | None = None
    ratio: float | None = None
    latency: float | None = None  #: on a Pareto study's latency axis: the predicted latency, a fraction of dense
    bytes: int | None = None  #: at a byte working point: its NNR stream's bytes (its metrics: the decoded model's)
    before_coding: float | None = None  #: at a byte working point: the validation metric before coding
    stream_share: float | None = None  #: on a Pareto study's bytes axis: its stream, a fraction of the dense model's at qp -38

    def cost(self, axis: Axis) -> float | None:
        """The value on a Pareto study's axis: the ratio, the predicted latency, or the stream's share."""
        return {Axis.RATIO: self.ratio, Axis.LATENCY: self.latency, Axis.BYTES: self.stream_share}[axis]

    def to_dict(self) -> dict[str, Any]:
        """The figures as a rank config's ``metric`` stores them (without the ratio, which the config has)."""
        d = dataclasses.asdict(self)
        d.pop("ratio")
        for key in ("latency", "bytes", "before_coding", "stream_share"):
            if d[key] is None:
                d.pop(key)
        if d["method"] is not None:
            d["method"] = str(d["method"])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, ratio: float | None = None) -> Figures:
        d = d or {}
        method = d.get("method")
        trial, samples = d.get("trial"), d.get("before_retrain_samples")
        return cls(trial=None if trial is None else int(trial), val=_number(d.get("val")), test=_number(d.get("test")),
                   before_retrain=_number(d.get("before_retrain")), before_retrain_samples=None if samples is None else int(samples),
                   method=None if method is None else Method(method), ratio=ratio, latency=_number(d.get("latency")),
                   bytes=None if d.get("bytes") is None else int(d["bytes"]), before_coding=_number(d.get("before_coding")),
                   stream_share=_number(d.get("stream_share")))


@dataclass(frozen=True)
class TrialCounts:
    complete: int = 0
    pruned: int = 0
    fail: int = 0

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Summary:
    """A working point's result: the dense model, the seed rule, the baselines and the best trial.

    Attributes:
        metric: The metric's name.
        target_ratio, achieved_ratio: The working point and the best allocation's ratio.
        dense, seed_rule, best: Figures of the dense model, the CE1 rule's trial and the best trial.
        baselines: Figures of the first trial of each enqueued baseline that finished.
        trials: Trials complete, pruned and failed.
        wall_time_s: From the study's creation to its last finished trial.
        cost: The best model's cost model (MACs and parameter ratios; empty without an input shape).
        fixed_cost: What the study's setup took before its first trial.
        latency: At a latency working point, the best model's and the dense model's seconds, measured side by side.
        front: A Pareto study's non-dominated trials (no other trial has a smaller cost on the study's axis, ratio or
            latency, and a metric as high, or a higher metric at no larger cost), largest cost first.
        points: A Pareto study's working points, each as a summary: the best trial no larger than the point, the seed
            rule and the baselines enqueued at it.
        coding: At a byte working point: its ``budget``, ``dense_bytes`` (the dense model's stream at the default qp),
            ``base_ratio``, ``ratios``, ``dense`` (NNCodec on the dense model at the finest uniform qp within the budget:
            ``qp``, ``bytes``, ``val``, ``test``), and the best trial's ``qps``, ``coding``, ``predicted_bytes`` and ``qat`` (the share of
            its retrain trained quantization-aware; None: plain). In a Pareto study on the bytes axis, that of the best
            trial's budget; each of its ``points`` has its own (the front's best within it).
    """

    metric: str
    target_ratio: float
    achieved_ratio: float
    dense: Figures
    seed_rule: Figures | None
    best: Figures
    baselines: dict[Method, Figures] = field(default_factory=dict)
    trials: TrialCounts = TrialCounts()
    wall_time_s: float | None = None
    cost: dict[str, Any] = field(default_factory=dict)
    fixed_cost: dict[str, Any] | None = None
    latency: dict[str, Any] | None = None
    front: tuple[Figures, ...] = ()
    points: tuple[Summary, ...] = ()
    axis: Axis = Axis.RATIO
    coding: dict[str, Any] | None = None

    @property
    def best_method(self) -> Method:
        return self.best.method or Method.SEARCHED

    def metric_record(self) -> dict[str, Any]:
        """The ``metric`` a rank config records: the name and every allocation's figures."""
        out: dict[str, Any] = {"name": self.metric, "dense": {k: v for k, v in (("val", self.dense.val), ("test", self.dense.test))
                                                              if v is not None},
                               Method.SEED_RULE: self.seed_rule.to_dict() if self.seed_rule else {}, Method.SEARCHED: self.best.to_dict()}
        out.update({str(m): f.to_dict() for m, f in self.baselines.items()})
        return out

    @classmethod
    def from_config(cls, config: RankConfig, seed_rule: RankConfig | None, trials: list[dict[str, Any]],
                    fixed_cost: dict[str, Any] | None = None) -> Summary:
        """The summary a results folder holds: the figures its rank config records, the baselines' achieved
        ratios from its trials file."""
        m = config.metric
        ratios: dict[str, Any] = {}
        for t in trials:  # each method's first trial: the enqueued baselines' achieved ratios
            ratios.setdefault(t.get("method", Method.SEARCHED), t.get("ratio"))
        counts = TrialCounts(**{s: sum(t.get("state") == s for t in trials) for s in ("complete", "pruned", "fail")})
        front = tuple(Figures.from_dict(f, _number(f.get("ratio"))) for f in config.search.get("front") or ())
        wall = config.search.get("wall_time_s")
        axis = Axis(config.search.get("axis", Axis.RATIO))
        points = tuple(dataclasses.replace(cls.from_point(p), trials=counts, wall_time_s=wall, axis=axis)
                       for p in config.search.get("points") or ())
        return cls(metric=str(m.get("name", "metric")), target_ratio=config.target_ratio, achieved_ratio=config.achieved_ratio,
                   dense=Figures.from_dict(m.get("dense"), 1.0),
                   seed_rule=(Figures.from_dict(m.get(Method.SEED_RULE), seed_rule.achieved_ratio if seed_rule else None)
                              if m.get(Method.SEED_RULE) else None),
                   best=Figures.from_dict(m.get(Method.SEARCHED), config.achieved_ratio),
                   baselines={b: Figures.from_dict(m[b], ratios.get(b)) for b in BASELINES if m.get(b)},
                   trials=counts, wall_time_s=wall, cost=dict(config.cost), fixed_cost=fixed_cost,
                   latency=config.search.get("latency"), front=front, points=points, axis=axis, coding=config.search.get("bytes"))

    def point_record(self) -> dict[str, Any]:
        """A Pareto study's working point as its rank config records it (``search.points``)."""
        ratios = {str(m): f.ratio for m, f in self.baselines.items()}
        coding = {} if self.coding is None else {"bytes": self.coding}
        return {"target_ratio": self.target_ratio, "achieved_ratio": self.achieved_ratio, "metric": self.metric_record(),
                "ratios": {**ratios, Method.SEED_RULE: self.seed_rule.ratio if self.seed_rule else None}, **coding}

    @classmethod
    def from_point(cls, d: Mapping[str, Any]) -> Summary:
        """A working point of a Pareto study from :meth:`point_record`."""
        m, ratios = d.get("metric") or {}, d.get("ratios") or {}
        return cls(metric=str(m.get("name", "metric")), target_ratio=float(d["target_ratio"]), achieved_ratio=float(d["achieved_ratio"]),
                   dense=Figures.from_dict(m.get("dense"), 1.0),
                   seed_rule=Figures.from_dict(m[Method.SEED_RULE], _number(ratios.get(Method.SEED_RULE))) if m.get(Method.SEED_RULE) else None,
                   best=Figures.from_dict(m.get(Method.SEARCHED), float(d["achieved_ratio"])),
                   baselines={b: Figures.from_dict(m[b], _number(ratios.get(b))) for b in BASELINES if m.get(b)}, coding=d.get("bytes"))


def front_of(figures: Sequence[Figures], axis: Axis = Axis.RATIO) -> tuple[Figures, ...]:
    """The non-dominated ones of ``figures`` (by validation metric up and their cost on ``axis`` down), largest cost
    first; of equal figures the earliest trial."""
    out: list[Figures] = []
    best = -math.inf
    for f in sorted((f for f in figures if f.val is not None and f.cost(axis) is not None),
                    key=lambda f: (f.cost(axis), -f.val, f.trial if f.trial is not None else 0)):  # type: ignore[operator]
        assert f.val is not None
        if f.val > best:
            out.append(f)
            best = f.val
    return tuple(reversed(out))
