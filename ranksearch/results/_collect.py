"""A study's best trial so far, as a :class:`SearchResult`: from any storage, any machine, also while
workers run. :func:`collect` reads it (the best trial's allocation and its retrained weights, an Optuna
artifact); :func:`export_study` also writes its results folder."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import download_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from ranksearch.core._allocation import config_for
from ranksearch.core._bytes import LAND
from ranksearch.core._config import RankConfig
from ranksearch.core._cost import model_cost
from ranksearch.core._decompose import Factors
from ranksearch.core._nnr import DEFAULT_QP, decoded_model, encode_model
from ranksearch.core._solver import Curve, Solution
from ranksearch.core._surgery import count_params, factorize
from ranksearch.core._weights import load_state_dict
from ranksearch.errors import StudyError
from ranksearch.results._summary import Figures, Summary, TrialCounts, front_of
from ranksearch.study._record import StudyRecord, TrialRecord, metric_of
from ranksearch.study._storage import read_study
from ranksearch.study._vocab import BASELINES, Axis, Method, Sensitivity

__all__ = ["SearchResult", "collect", "trial_model"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchResult:
    """What a study found.

    Attributes:
        config: Rank config of the best trial (metrics and the study's settings recorded in it).
        study: The Optuna study (every trial's record: ``TrialRecord.of(trial)``).
        model: The best factorized model, retrained.
        seed_rule: Rank config of the CE1 rule's trial with its metric (None if it has not run).
        summary: The run's figures: dense, seed rule, baselines and best metrics, trials, wall time.
        sensitivity: The per-layer sensitivity table the study measured (None without baselines).
        curves: The layers' plain MSE curves (what the report draws the errors from).
        stream: At a byte working point, the best trial's NNR bitstream (``model`` is then what it decodes to).
    """

    config: RankConfig
    study: optuna.Study
    model: nn.Module
    seed_rule: RankConfig | None
    summary: Summary
    sensitivity: Sensitivity | None = None
    curves: Mapping[str, Curve] | None = None
    stream: bytes | None = None

    @property
    def best_log10w(self) -> dict[str, float] | None:
        """The best trial's per-layer log-weights: a warm start for another working point (None for the seed rule)."""
        return TrialRecord.of(self.study.trials[self.config.search["trial"]]).log10w


def _figures(t: FrozenTrial | None) -> Figures | None:
    if t is None:
        return None
    r = TrialRecord.of(t)
    return Figures(t.number, metric_of(t), r.test, r.before_retrain, r.before_retrain_samples, r.method, r.ratio, r.latency, r.bytes,
                   r.before_coding, r.stream_share)


def _first(study: optuna.Study, method: Method, target: float | None = None) -> FrozenTrial | None:
    """The first complete trial of ``method`` (in a Pareto study: enqueued at the working point ``target``)."""
    return next((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if (r := TrialRecord.of(t)).method is method and (target is None or r.target == target)), None)


def _weights_of(study: optuna.Study, t: FrozenTrial) -> str | None:
    """Artifact id of a trial's retrained weights (a trial that reused a twin's value: the twin's)."""
    r = TrialRecord.of(t)
    if r.weights is not None:
        return r.weights
    return None if r.same_as is None else TrialRecord.of(study.trials[r.same_as]).weights


def trial_model(study: optuna.Study, t: FrozenTrial, model: nn.Module, artifacts: Any,
                factors: Mapping[str, Factors] | None = None) -> nn.Module | None:
    """Trial ``t``'s retrained factorized model (eval mode) from the artifact store, or None when it
    uploaded no weights (it was not the best so far when it finished). ``factors`` only shape the layers
    (default: an SVD per layer); the weights are the trial's."""
    weights = _weights_of(study, t)
    if weights is None:
        return None
    small = factorize(model, TrialRecord.of(t).kept_ranks, factors)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.safetensors"
        try:
            download_artifact(artifact_store=artifacts, file_path=str(path), artifact_id=weights)
        except ArtifactNotFound:
            raise StudyError(f"Trial {t.number}'s weights (artifact {weights}) are not in the artifact folder given; "
                             "pass --artifacts with the folder the workers wrote to.") from None
        try:
            small.load_state_dict(load_state_dict(path))
        except RuntimeError as e:  # tensors of another model, or other ranks
            detail = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e)[:160])
            raise StudyError(f"Trial {t.number}'s weights (artifact {weights}) do not fit its ranks on this model ({detail[:160]}); "
                             "the artifact folder holds another study's weights: pass --artifacts with this study's.") from None
    return small.eval()


def _solution(t: FrozenTrial, curves: Mapping[str, Curve], total: int) -> Solution:
    r = TrialRecord.of(t)
    return Solution({n: r.kept_ranks.get(n) for n in curves}, float("nan"), int(r.params or 0), total)


def _rank(t: FrozenTrial) -> tuple[float, float, int]:
    """Best first: the higher metric, then (a Pareto study) the smaller ratio, then the earlier trial."""
    values = t.values or [float("-inf")]
    return values[0], -values[1] if len(values) > 1 else 0.0, -t.number


def _landed(record: StudyRecord, complete: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials a study's best is picked from: at a byte working point those whose stream lands within 2% of the budget
    (:data:`~ranksearch.core._bytes.LAND`; a reference coded at one uniform qp may fall short), if any; else all."""
    point = record.byte_point
    if point is None:
        return complete
    landed = [t for t in complete if (b := TrialRecord.of(t).bytes) is not None and b >= LAND * point.budget]
    if not landed:
        _log.warning("no stream of study %s lands within 2%% of its %s bytes: its best is picked from all", record.settings and
                     record.settings.model, f"{point.budget:,}")
    return landed or complete


def _pick(study: optuna.Study, complete: list[FrozenTrial], artifacts: Any, can_rebuild: bool) -> FrozenTrial:
    """The best trial (of equal values the earliest; Optuna's tie-break differs), or without a way to
    rebuild its weights the best one that uploaded them."""
    best = max(complete, key=_rank)
    if can_rebuild or (artifacts is not None and _weights_of(study, best) is not None):
        return best
    with_weights = [t for t in complete if _weights_of(study, t) is not None] if artifacts is not None else []
    if not with_weights:
        raise StudyError(f"No trial of study {study.study_name!r} has uploaded its weights (no artifact store, "
                         "or a wrong --artifacts folder); give the folder the workers wrote to.")
    chosen = max(with_weights, key=_rank)
    _log.warning("the best trial %d has no weights; exporting trial %d (%.4f against %.4f)", best.number, chosen.number,
                 metric_of(chosen), metric_of(best))
    return chosen


def _chosen(study: optuna.Study, complete: list[FrozenTrial], number: int, artifacts: Any, can_rebuild: bool) -> FrozenTrial:
    """Trial ``number``, which must be complete and have its weights (or a way to rebuild them)."""
    t = next((t for t in complete if t.number == number), None)
    if t is None:
        figures = [f for c in complete if (f := _figures(c)) is not None]
        settings = read_study(study).settings
        front = [f.trial for f in front_of(figures, settings.pareto_axis if settings else Axis.RATIO)]
        state = next((x.state.name.lower() for x in study.get_trials(deepcopy=False) if x.number == number), None)
        raise StudyError(f"Trial {number} of study {study.study_name!r} is {state or 'not in it'}; export a complete trial, "
                         f"e.g. one of the front: {front[:12]}.")
    if not can_rebuild and (artifacts is None or _weights_of(study, t) is None):
        raise StudyError(f"Trial {number} uploaded no weights (a trial uploads them when it is the best so far; in a Pareto study, "
                         "on the front or the best made for its ratio); export it where its space's data is, so that it is "
                         "retrained again, or export another trial.")
    return t


def _summary(study: optuna.Study, record: StudyRecord, best: FrozenTrial, seed: FrozenTrial | None) -> Summary:
    counts = TrialCounts(*(len(study.get_trials(deepcopy=False, states=(s,))) for s in (TrialState.COMPLETE, TrialState.PRUNED,
                                                                                            TrialState.FAIL)))
    ends = [t.datetime_complete.timestamp() for t in study.trials if t.datetime_complete is not None]
    wall = round(max(ends) - record.created_at, 1) if record.created_at and ends else None
    baselines = {m: f for m in BASELINES if (f := _figures(_first(study, m))) is not None}  # a pruned baseline has no figures
    dense = record.dense or {}
    assert record.settings is not None
    summary = Summary(metric=record.metric or "metric", target_ratio=_target_ratio(TrialRecord.of(best), record.settings.pareto_axis,
                                                                                         record.settings.target_ratio),
                      achieved_ratio=float(TrialRecord.of(best).ratio or 0.0),
                      dense=Figures(val=dense.get("val"), test=dense.get("test"), ratio=1.0), seed_rule=_figures(seed),
                      best=_figures(best) or Figures(), baselines=baselines, trials=counts, wall_time_s=wall, fixed_cost=record.fixed_cost)
    if (coding := _coding(record, best)) is not None:
        summary = dataclasses.replace(summary, coding=coding)
    if not record.settings.pareto:
        return summary
    done = [f for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if (f := _figures(t)) is not None]
    axis = record.settings.pareto_axis
    front = front_of(done, axis)
    points = []
    for point in record.settings.pareto:  # the best no larger than each point, against what was enqueued there
        best_here = next((f for f in front if (c := f.cost(axis)) is not None and c <= point * (1 + 1e-9)), Figures())
        baselines = {m: f for m in BASELINES if (f := _figures(_first(study, m, point))) is not None}
        here = None if best_here.trial is None else study.trials[best_here.trial]
        points.append(dataclasses.replace(summary, target_ratio=point, achieved_ratio=float(best_here.ratio or 0.0),
                                          seed_rule=_figures(_first(study, Method.SEED_RULE, point)), best=best_here,
                                          baselines=baselines, fixed_cost=None, axis=axis,
                                          coding=_coding(record, here, point) if axis is Axis.BYTES else None))
    return dataclasses.replace(summary, front=front, points=tuple(points), axis=axis)


def _target_ratio(r: TrialRecord, axis: Axis, study_ratio: float) -> float:
    """The parameter ratio a trial allocated for: its drawn one (a Pareto study's or a byte working point's), else the
    study's (on the latency axis a trial's target is its latency fraction, on the bytes axis its budget)."""
    drawn = {Axis.RATIO: r.target, Axis.LATENCY: None, Axis.BYTES: r.ratio_target}[axis]
    return drawn if drawn is not None else study_ratio


def _coding(record: StudyRecord, trial: FrozenTrial | None, share: float | None = None) -> dict[str, Any] | None:
    """The byte working point a coded trial met (on the bytes axis: the point ``share``, else the trial's budget), with how
    the trial was coded (None: no byte working point)."""
    r = TrialRecord.of(trial) if trial is not None else TrialRecord()
    point = record.point_of(share if share is not None else r.target)
    if point is None:
        return None
    coding = {**point.to_dict(), "qps": r.qps, "other_qps": r.other_qps, "folds": r.folds, "coding": r.coding,
              "predicted_bytes": r.predicted_bytes, "qat": r.qat}
    coding.pop("took_s")
    return coding


def collect(study: optuna.Study, model: nn.Module, curves: Mapping[str, Curve], *, artifacts: Any = None,
            rebuild: Callable[[FrozenTrial], nn.Module] | None = None, source: Mapping[str, Any] | None = None,
            factors: Mapping[str, Factors] | None = None, trial: int | None = None) -> SearchResult:
    """The best trial of ``study`` so far (or trial number ``trial``) as a :class:`SearchResult`.

    Args:
        study: A ranksearch study (its settings, dense metric and trials are read from it).
        model: The dense model it was made with.
        curves: The plain curves of its layers (:func:`~ranksearch.core.spectra`): shapes and sizes.
        artifacts: The artifact store holding the trials' weights.
        rebuild: Makes the retrained model of a trial whose weights were not uploaded (the search
            retrains it again); without it the best trial that has weights is taken, with a warning.
        source: Where the dense model came from, recorded in the configs (default: the study's record).
        factors: Decompositions already computed (the search's), to shape the factorized model
            without another SVD per layer; its weights are then the trial's.
        trial: Export this complete trial instead of the best (e.g. any point of a Pareto study's front).
    """
    record = read_study(study)
    settings = record.settings
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete or settings is None:
        raise StudyError(f"No trial of study {study.study_name!r} has completed yet (timeout too short?); "
                         "raise --timeout or --trials, or export later.")
    best = (_pick(study, _landed(record, complete), artifacts, rebuild is not None) if trial is None
            else _chosen(study, complete, trial, artifacts, rebuild is not None))
    weights = _weights_of(study, best) if artifacts is not None else None
    best_model = trial_model(study, best, model, artifacts, factors) if weights is not None else None
    if best_model is None:
        assert rebuild is not None, "_pick returns a trial with weights when there is no rebuild"
        best_model = rebuild(best)
    stream = None
    if qps := (r := TrialRecord.of(best)).qps:  # a coded trial: the stream it was scored on (the coder is deterministic)
        stream, tensors = encode_model(best_model, DEFAULT_QP, {**qps, **(r.other_qps or {})}, r.folds)
        best_model = decoded_model(best_model, tensors, r.folds).eval()
    seed_trial = _first(study, Method.SEED_RULE)
    total = count_params(model)
    cost = model_cost(model, record.input_shape) if record.input_shape else None
    base = {"method": "optuna", "study_name": study.study_name, "settings": settings.to_dict(), "best_trial": best.number}

    def config_of(t: FrozenTrial, metric: dict[str, Any], extra: dict[str, Any]) -> RankConfig:
        r = TrialRecord.of(t)
        return config_for(model, curves, _solution(t, curves, total), _target_ratio(r, settings.pareto_axis, settings.target_ratio), model_name=settings.model,
                          source=dict(source if source is not None else record.source or {}), metric=metric,
                          search={**base, **extra, "factors": r.factors, "trial_method": r.method, "trial": t.number},
                          mse=r.mse, cost=cost, rank_multiple=settings.rank_multiple,  # type: ignore[arg-type]
                          min_rank=settings.min_rank, exclude=settings.exclude)

    summary = _summary(study, record, best, seed_trial)
    extra: dict[str, Any] = {"trials": summary.trials.to_dict(), "wall_time_s": summary.wall_time_s}
    if summary.coding is not None:
        extra["bytes"] = {**summary.coding, "bytes": len(stream) if stream is not None else None}
    if summary.front:
        extra.update(front=[{**f.to_dict(), "ratio": f.ratio} for f in summary.front], points=[p.point_record() for p in summary.points],
                     axis=summary.axis.value)
    metric = summary.metric_record()
    cfg = config_of(best, metric, extra)
    summary = dataclasses.replace(summary, cost=dict(cfg.cost))
    if count_params(best_model) != cfg.compressed_params:
        raise StudyError(f"Trial {best.number}'s weights have {count_params(best_model)} parameters, its ranks {cfg.compressed_params}.")
    return SearchResult(config=cfg, study=study, model=best_model, seed_rule=config_of(seed_trial, metric, extra) if seed_trial else None,
                        summary=summary, sensitivity=record.sensitivity, curves=curves, stream=stream)

