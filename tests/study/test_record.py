"""The study's schema: every key a search writes is a field of the typed records, which read and write
them losslessly; old spellings are read."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ranksearch import Method, RunOptions, SearchSettings, StudyRecord, TrialRecord, search
from ranksearch.core import TimingTable
from ranksearch.core._bytes import BytePoint
from ranksearch.study import Coding, FactorKind, SensitivityKind
from ranksearch.study._record import ATTR, fixed_cost_line
from ranksearch.study._settings import FORMAT_VERSION


def _every_field(cls, values):
    assert {f.name for f in dataclasses.fields(cls)} == set(values), "give every field a value"
    return cls(**values)


def test_a_trial_record_round_trips_every_field():
    record = _every_field(TrialRecord, {
        "method": Method.SENSITIVITY, "log10w": {"a": 0.5}, "log2r": {"a": 3.0}, "anchor": 2, "redraws": 1, "ranks": {"a": 8},
        "mse": {"a": 0.01}, "factors": FactorKind.DATA_AWARE, "params": 100, "ratio": 0.25, "worker": "h:1", "before_retrain": 0.5,
        "before_retrain_samples": 64, "test": 0.6, "same_as": 3, "weights": "id", "gate": {"promoted": True},
        "gate_later": {1: {"promoted": False}}, "error": "E", "traceback": "T", "interrupted": True, "target": 0.25, "latency": 0.8,
        "reports": {0: 0.4, 1: 0.55}, "coding": Coding.FITTED, "bytes": 4900, "qps": {"a.weight": -30}, "other_qps": {"a.bias": -46}, "folds": {"a": "bn"}, "predicted_bytes": 4910,
        "before_coding": 0.61, "qat": 0.5, "ratio_target": 0.3, "stream_share": 0.098})
    attrs = record.to_attrs()
    assert attrs["coding"] == "fitted"
    assert attrs["gate:1"] == {"promoted": False} and "gate_later" not in attrs  # the stored spelling of a later step
    assert attrs["method"] == "sensitivity" and attrs["factors"] == "data_aware"
    assert TrialRecord.from_attrs(attrs) == record
    assert TrialRecord.from_attrs(json.loads(json.dumps(attrs))) == record  # as a storage gives them back: the steps' keys are strings


def test_a_patch_writes_only_its_fields_and_a_missing_method_reads_as_sampled():
    assert TrialRecord(ratio=0.2).to_attrs() == {"ratio": 0.2}
    assert TrialRecord.from_attrs({}).method is Method.SEARCHED
    kept = TrialRecord(method=Method.WARM_START, log10w={"a": 1.0}, ranks={"a": 4}, worker="h:2", anchor=None).allocation()
    assert kept.to_attrs() == {"method": "warm_start", "log10w": {"a": 1.0}, "ranks": {"a": 4}}  # what a failed trial's rerun keeps


def test_a_study_record_round_trips_every_field():
    record = _every_field(StudyRecord, {
        "settings": SearchSettings(0.3, model="m"), "source": {"space": "s"}, "setup": {"state": "ready"}, "created_at": 1.5,
        "n_trials": 12, "artifacts": "/a", "input_shape": (1, 8, 8), "dense": {"val": 0.9}, "metric": "accuracy",
        "sensitivity": {"a": [(1, 0.5), (2, 0.7)]}, "sensitivity_rows": {"b": [(1, 0.4)]}, "sensitivity_kind": SensitivityKind.OUTPUT,
        "sensitivity_samples": (16, 400), "sensitivity_measured": [("a", 1)], "fixed_cost": {"total_s": 1.0}, "centre": {"a": 0.1},
        "timing": TimingTable("onnxruntime", 4, "cpu", 2, 1e-3, {"a": 2e-4}, {"a": [1, 2]}, {"a": [1e-4, 1.5e-4]}),
        "byte_point": BytePoint(5000, 49000, 0.075, (0.15, 0.12, 0.075), {"qp": -13, "bytes": 4748, "val": 0.8, "test": 0.78}, 1.5),
        "byte_front": (BytePoint(4900, 49000, 0.07, (0.15, 0.07), {"qp": -13, "bytes": 4748, "val": 0.8}, 1.5, 0.1),
                       BytePoint(2450, 49000, 0.03, (0.06, 0.03), {"floor": 3000.0}, 1.0, 0.05))})
    attrs = record.to_attrs()
    assert all(k.startswith(ATTR) for k in attrs)
    assert attrs[ATTR + "sensitivity_row:b"] == [[1, 0.4]] and attrs[ATTR + "settings"]["format_version"] == FORMAT_VERSION
    assert StudyRecord.from_attrs({**attrs, "someone-else": 1}) == record  # other tools' keys are left alone
    assert StudyRecord(setup={"state": "ready"}).ready and not StudyRecord().ready


def test_settings_stored_by_version_5_read_with_todays_spelling():
    v5 = {**SearchSettings(0.2, factors="data_aware").to_dict(), "format_version": 5, "factors": "data-aware"}
    assert StudyRecord.from_attrs({ATTR + "settings": v5}).settings.factors == "data_aware"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="'data-aware' is spelled 'data_aware'"):
        SearchSettings(0.2, factors="data-aware")  # a new study is written with one spelling


def test_every_key_a_search_writes_is_a_field(dense_and_task):
    """A real search: each trial's user attributes and the study's are exactly what the records know."""
    model, task = dense_and_task
    from ranksearch.core import RetrainSettings

    res = search(model, SearchSettings(0.3, retrain=RetrainSettings(epochs=1, batch_size=32), keep=0.5), task=task,
                 run=RunOptions(n_trials=8))
    trial_keys = {f.name for f in dataclasses.fields(TrialRecord)} - {"gate_later"}
    for t in res.study.trials:
        unknown = {k for k in t.user_attrs if k not in trial_keys and not k.startswith("gate:")}
        assert not unknown, (t.number, unknown)
        assert TrialRecord.from_attrs(t.user_attrs).to_attrs() == t.user_attrs  # lossless
    study_keys = {f.name for f in dataclasses.fields(StudyRecord)} - {"sensitivity_rows"}
    stored = {k[len(ATTR):] for k in res.study.user_attrs}
    assert {k for k in stored if k not in study_keys and not k.startswith("sensitivity_row:")} == set()
    record = StudyRecord.from_attrs(res.study.user_attrs)
    assert record.settings == SearchSettings.from_dict(res.config.search["settings"]) and record.dense and record.fixed_cost
    assert "evaluations of the model" in fixed_cost_line(record.fixed_cost)
