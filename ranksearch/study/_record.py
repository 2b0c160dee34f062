"""The study's schema: every attribute ranksearch writes into a study or a trial, typed, in one place.

A :class:`TrialRecord` is a trial's user attributes, a :class:`StudyRecord` the study's (stored under the
``ranksearch:`` prefix). Both are frozen dataclasses with a field per key: ``from_attrs`` reads the raw
attributes (any version this ranksearch reads; unknown keys are ignored), ``to_attrs`` gives the raw
attributes of the fields that are set. A record with only some fields set is a *patch*: writing it
(``ranksearch.study._storage``) sets exactly those keys, so a trial's attributes are written as the
trial goes and read back typed by whoever needs them.

Example:
    >>> TrialRecord(method=Method.SEED_RULE, ratio=0.25).to_attrs()
    {'method': 'seed_rule', 'ratio': 0.25}
    >>> TrialRecord.from_attrs({"ranks": {"fc": 8}}).method  # absent: sampled
    <Method.SEARCHED: 'searched'>
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ranksearch.core._bytes import BytePoint
from ranksearch.core._timing import TimingTable
from ranksearch.study._settings import SearchSettings
from ranksearch.study._vocab import Coding, FactorKind, Method, Sensitivity, SensitivityKind

__all__ = ["ATTR", "TrialRecord", "StudyRecord", "fixed_cost_line", "metric_of", "sensitivity_of"]

ATTR = "ranksearch:"  #: prefix of every study user attribute ranksearch writes
_GATE_LATER = "gate:"  #: trial attrs ``gate:<step>``: the gate's decisions after the screen
_ROW = "sensitivity_row:"  #: study attrs ``sensitivity_row:<layer>``: rows an interrupted setup measured


def metric_of(trial: Any) -> float | None:
    """A finished trial's metric: its value, or in a Pareto study (values: metric, ratio) the first of its values."""
    values = trial.values
    return None if values is None else float(values[0])


def _set(record: Any) -> dict[str, Any]:
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record) if getattr(record, f.name) is not None}


def sensitivity_of(raw: Mapping[str, Any]) -> Sensitivity:
    """A stored table (``{layer: [[rank, value], ...]}``) as :data:`~ranksearch.study.Sensitivity`."""
    return {str(n): [(int(r), float(v)) for r, v in rows] for n, rows in raw.items()}


def _rows(table: Sensitivity) -> dict[str, list[list[float]]]:
    return {n: [[r, v] for r, v in rows] for n, rows in table.items()}


@dataclass(frozen=True)
class TrialRecord:
    """What a trial allocated, who ran it and what it scored (its user attributes).

    Allocation (kept when a failed trial is run again, :meth:`allocation`): ``method``; ``log10w`` the
    per-layer log-weights it allocates with (exact for enqueued ones); ``log2r`` a sampled incumbent-space
    trial's per-layer log2 rank targets; ``anchor`` the trial its step started from and ``redraws`` how
    often its step was drawn again; ``target`` the ratio a Pareto study's trial allocated for (its latency fraction on
    the latency axis; on the bytes axis its budget, a fraction of the dense model's stream, and ``ratio_target`` the ratio). Result: ``ranks``, ``mse``, ``factors``, ``params``, ``ratio``, ``latency`` (on a Pareto study's latency axis: the
    predicted latency, a fraction of dense);
    ``worker`` (``host:pid``); ``before_retrain`` (on ``before_retrain_samples`` validation samples
    when not the whole split); ``test``; ``same_as`` (a finished trial with the same ranks whose value
    it reused); ``weights`` (the artifact id of its retrained weights); ``gate`` and ``gate_later`` (the
    gate pruner's decisions at the screen and by later step); ``reports`` (a Pareto study's trial: the values its
    retrain reported, by step, which Optuna keeps only for one objective); ``error``, ``traceback``, ``interrupted``.
    At a byte working point: ``coding`` (how its retrained model is coded; enqueued references: uniform), ``bytes`` (its
    stream, measured by NNCodec), ``qps`` (each weight's), ``other_qps`` (each other tensor's, fitted coding), ``folds``
    (the batch norms folded into the layers before them), ``predicted_bytes`` (the byte table's estimate, fitted coding)
    and ``before_coding`` (the validation metric of the retrained model before coding; the trial's value is the
    decoded model's); ``stream_share`` (on a Pareto study's bytes axis: its stream's bytes, a fraction of the dense model's
    at qp -38, the front's cost); ``qat`` (the share of its retrain, the last steps, trained quantization-aware; absent: plain).
    """

    method: Method | None = None
    log10w: dict[str, float] | None = None
    log2r: dict[str, float] | None = None
    anchor: int | None = None
    redraws: int | None = None
    target: float | None = None
    ratio_target: float | None = None
    ranks: dict[str, int] | None = None
    mse: dict[str, float] | None = None
    factors: FactorKind | None = None
    params: int | None = None
    ratio: float | None = None
    latency: float | None = None
    coding: Coding | None = None
    bytes: int | None = None
    qps: dict[str, int] | None = None
    other_qps: dict[str, int] | None = None
    folds: dict[str, str] | None = None
    predicted_bytes: int | None = None
    before_coding: float | None = None
    stream_share: float | None = None
    qat: float | None = None
    worker: str | None = None
    before_retrain: float | None = None
    before_retrain_samples: int | None = None
    test: float | None = None
    same_as: int | None = None
    weights: str | None = None
    gate: dict[str, Any] | None = None
    gate_later: dict[int, dict[str, Any]] | None = None
    reports: dict[int, float] | None = None
    error: str | None = None
    traceback: str | None = None
    interrupted: bool | None = None

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> TrialRecord:
        """A trial's record from its user attributes (``method`` absent: a sampled trial)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"gate_later"}
        values: dict[str, Any] = {k: v for k, v in attrs.items() if k in names}
        values["method"] = Method(attrs.get("method", Method.SEARCHED))
        if "factors" in values:
            values["factors"] = FactorKind(values["factors"])
        if "coding" in values:
            values["coding"] = Coding(values["coding"])
        if "reports" in values:  # JSON keys are strings
            values["reports"] = {int(k): float(v) for k, v in values["reports"].items()}
        later = {int(k[len(_GATE_LATER):]): v for k, v in attrs.items() if k.startswith(_GATE_LATER)}
        return cls(**values, gate_later=later or None)

    @classmethod
    def of(cls, trial: Any) -> TrialRecord:
        """The record of an Optuna trial (frozen or running)."""
        return cls.from_attrs(trial.user_attrs)

    def to_attrs(self) -> dict[str, Any]:
        """The user attributes of the fields that are set."""
        out = _set(self)
        for step, decision in (out.pop("gate_later", None) or {}).items():
            out[f"{_GATE_LATER}{step}"] = decision
        return out

    def allocation(self) -> TrialRecord:
        """Only what says what to allocate, exactly (its ranks, when it had chosen them): what a failed trial's
        rerun keeps."""
        return TrialRecord(method=self.method, log10w=self.log10w, log2r=self.log2r, anchor=self.anchor, redraws=self.redraws,
                           target=self.target, ratio_target=self.ratio_target, ranks=self.ranks, coding=self.coding)

    @property
    def kept_ranks(self) -> dict[str, int]:
        """``ranks`` (empty before the trial allocated)."""
        return dict(self.ranks or {})


@dataclass(frozen=True)
class StudyRecord:
    """What defines a study and what its setup measured once (its user attributes under ``ranksearch:``).

    ``settings`` and ``source`` (where the dense model came from) are written at creation with ``setup``
    (``state`` running or ready, ``owner``, ``at``, ``generation``); ``created_at``, ``n_trials`` (the
    creator's trial cap, the default of workers that join) and ``artifacts`` (the shared weights folder)
    too. The setup writes ``input_shape``, ``dense`` (the dense model's ``val`` and ``test`` metric),
    ``metric`` (its name), the sensitivity table (``sensitivity``; while it is measured, one row per
    layer in ``sensitivity_rows``), how it was made (``sensitivity_kind``, ``sensitivity_samples`` as
    ``[samples, of]``, ``sensitivity_measured`` for the proxy's measured points), ``fixed_cost`` and
    ``centre`` (the prior's per-layer log-weights); at a latency working point, ``timing`` (the per-layer
    timing table every process allocates with); at a byte working point, ``byte_point`` (the budget, the ratios trials
    allocate for and the dense model coded within it); in a Pareto study on the bytes axis, ``byte_front`` (one such point
    per budget of its front, largest first).
    """

    settings: SearchSettings | None = None
    source: dict[str, Any] | None = None
    setup: dict[str, Any] | None = None
    created_at: float | None = None
    n_trials: int | None = None
    artifacts: str | None = None
    input_shape: tuple[int, ...] | None = None
    dense: dict[str, float] | None = None
    metric: str | None = None
    sensitivity: Sensitivity | None = None
    sensitivity_rows: Sensitivity | None = None
    sensitivity_kind: SensitivityKind | None = None
    sensitivity_samples: tuple[int, int] | None = None
    sensitivity_measured: list[tuple[str, int]] | None = None
    fixed_cost: dict[str, Any] | None = None
    centre: dict[str, float] | None = None
    timing: TimingTable | None = None
    byte_point: BytePoint | None = None
    byte_front: tuple[BytePoint, ...] | None = None

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], origin: str = "the study") -> StudyRecord:
        """The record from a study's user attributes (other keys than ranksearch's are ignored)."""
        raw = {k[len(ATTR):]: v for k, v in attrs.items() if k.startswith(ATTR)}
        names = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {k: v for k, v in raw.items() if k in names}
        if "settings" in values:
            values["settings"] = SearchSettings.from_dict(values["settings"], origin=f"the settings stored in {origin}")
        if "input_shape" in values:
            values["input_shape"] = tuple(int(d) for d in values["input_shape"])
        if "sensitivity" in values:
            values["sensitivity"] = sensitivity_of(values["sensitivity"])
        if "sensitivity_kind" in values:
            values["sensitivity_kind"] = SensitivityKind(values["sensitivity_kind"])
        if "sensitivity_samples" in values:
            values["sensitivity_samples"] = tuple(int(v) for v in values["sensitivity_samples"])
        if "sensitivity_measured" in values:
            values["sensitivity_measured"] = [(str(n), int(r)) for n, r in values["sensitivity_measured"]]
        if "timing" in values:
            values["timing"] = TimingTable.from_dict(values["timing"])
        if "byte_point" in values:
            values["byte_point"] = BytePoint.from_dict(values["byte_point"])
        if "byte_front" in values:
            values["byte_front"] = tuple(BytePoint.from_dict(p) for p in values["byte_front"])
        rows = {k[len(_ROW):]: v for k, v in raw.items() if k.startswith(_ROW)}
        return cls(**values, sensitivity_rows=sensitivity_of(rows) if rows else None)

    def to_attrs(self) -> dict[str, Any]:
        """The study attributes (with their ``ranksearch:`` prefix) of the fields that are set."""
        out = _set(self)
        if "settings" in out:
            out["settings"] = out["settings"].to_dict()
        if "input_shape" in out:
            out["input_shape"] = list(out["input_shape"])
        if "sensitivity" in out:
            out["sensitivity"] = _rows(out["sensitivity"])
        if "sensitivity_samples" in out:
            out["sensitivity_samples"] = list(out["sensitivity_samples"])
        if "sensitivity_measured" in out:
            out["sensitivity_measured"] = [list(p) for p in out["sensitivity_measured"]]
        if "timing" in out:
            out["timing"] = out["timing"].to_dict()
        if "byte_point" in out:
            out["byte_point"] = out["byte_point"].to_dict()
        if "byte_front" in out:
            out["byte_front"] = [p.to_dict() for p in out["byte_front"]]
        rows = out.pop("sensitivity_rows", None) or {}
        flat = {ATTR + k: v for k, v in out.items()}
        flat.update({f"{ATTR}{_ROW}{n}": [[r, v] for r, v in row] for n, row in rows.items()})
        return flat

    def point_of(self, target: float | None) -> BytePoint | None:
        """The byte working point a trial was coded within: the study's, or on the bytes axis its ``target``'s (None: none)."""
        if self.byte_front is None or target is None:
            return self.byte_point
        return next((p for p in self.byte_front if p.share == target), None)

    @property
    def ready(self) -> bool:
        """Whether the study's setup has finished."""
        return (self.setup or {}).get("state") == "ready"


def fixed_cost_line(cost: Mapping[str, Any]) -> str:
    """``12.3 s and 287 evaluations of the model (spectra 1.2 s, factors 0.4 s, dense 0.3 s, sensitivity 10.4 s)``,
    with the passes over the whole validation split they amount to when the probes ran on a subset."""
    parts = ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in cost.items() if k.endswith("_s") and k != "total_s")
    kind = f"; sensitivity table {cost['sensitivity_kind']}" if cost.get("sensitivity_kind") else ""
    samples, of = cost.get("sensitivity_samples"), cost.get("val_samples")
    if samples and of and samples < of:
        kind += f" on {samples:,} of {of:,} samples"
    kind += "; resumed: an interrupted setup's share is not counted" if cost.get("resumed") else ""
    passes = cost.get("split_evaluations")
    whole = f" ({passes:g} as passes over the whole split)" if passes is not None and passes != cost.get("evaluations") else ""
    return f"{cost.get('total_s', 0):.1f} s and {cost.get('evaluations', 0)} evaluations of the model{whole} ({parts}{kind})"
