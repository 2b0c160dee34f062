"""Several workers share one study through PostgreSQL (.ci/run starts a server and sets the URL)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import optuna
import pytest
from optuna.trial import TrialState

URL = os.environ.get("RANKSEARCH_TEST_POSTGRES")
pytestmark = pytest.mark.skipif(not URL, reason="RANKSEARCH_TEST_POSTGRES is not set (.ci/run starts PostgreSQL)")


def test_two_workers_share_one_postgres_study(tmp_path):
    name = f"tiny-{uuid.uuid4().hex[:8]}"
    procs = [
        subprocess.Popen([sys.executable, "-m", "ranksearch.cli", "search", "--space", "tiny-digits", "--ratio", "0.2",
                          "--trials", "6", "--epochs", "1", "--storage", URL, "--study-name", name, "--resume",
                          "--out", str(tmp_path / f"worker{i}"), "-q"], env=os.environ.copy())
        for i in range(2)
    ]
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    study = optuna.load_study(study_name=name, storage=URL)
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert 6 <= len(finished) <= 7  # MaxTrialsCallback stops both; one may finish a last trial in flight
    workers = {t.user_attrs["worker"] for t in finished}
    assert len(workers) == 2, workers  # both machines' workers contributed trials
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert {t.user_attrs.get("method") for t in finished} >= {"seed_rule", "searched"}
    for i in range(2):
        assert (tmp_path / f"worker{i}" / "rank_config.json").is_file()
