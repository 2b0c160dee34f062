"""Which trial a study's result is: at a byte working point, the best of the streams that land within 2% of the budget."""

from __future__ import annotations

import logging

import optuna
from optuna.trial import TrialState, create_trial

from ranksearch.core._bytes import BytePoint
from ranksearch.results._collect import _landed
from ranksearch.study import Coding
from ranksearch.study._objective import _best_so_far
from ranksearch.study._record import StudyRecord, TrialRecord

POINT = BytePoint(10_000, 100_000, 0.05, (0.1, 0.05), {"qp": -20, "bytes": 9_900, "val": 0.5})


def _trials(*rows: tuple[float, int, Coding]) -> list[optuna.trial.FrozenTrial]:
    return [create_trial(state=TrialState.COMPLETE, value=v, user_attrs=TrialRecord(bytes=b, coding=c, ranks={}).to_attrs())
            for v, b, c in rows]


def test_the_best_at_a_byte_point_is_picked_among_the_streams_that_land_within_two_percent(caplog):
    trials = _trials((0.95, 9_500, Coding.UNIFORM), (0.93, 9_850, Coding.FITTED), (0.94, 9_799, Coding.FITTED),
                     (0.90, 10_000, Coding.UNIFORM))
    picked = _landed(StudyRecord(byte_point=POINT), trials)
    assert [t.value for t in picked] == [0.93, 0.90]  # 9,500 and 9,799 bytes take less than 98% of 10,000
    assert _landed(StudyRecord(), trials) == trials  # no byte working point: every trial
    with caplog.at_level(logging.WARNING):
        assert _landed(StudyRecord(byte_point=POINT), trials[:1]) == trials[:1]  # none lands: all, said
    assert "lands within 2%" in caplog.text


def test_a_landing_trial_uploads_its_weights_when_it_is_the_best_of_the_landing_ones():
    study = optuna.create_study(direction="maximize")
    for t in _trials((0.95, 9_500, Coding.UNIFORM), (0.90, 9_900, Coding.FITTED)):
        study.add_trial(t)
    trial = study.ask()
    budget = 0.98 * POINT.budget
    assert _best_so_far(trial, 0.92, None, None, (True, budget))  # below the reference at one qp, above every landing stream
    assert not _best_so_far(trial, 0.92, None, None, (False, budget))  # it does not land: only the best of all uploads
    assert not _best_so_far(trial, 0.89, None, None, (True, budget))
    assert _best_so_far(trial, 0.96, None, None, None)
