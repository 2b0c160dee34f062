"""optuna-dashboard on a finished search's journal: the study and each trial's attributes read back over HTTP."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ranksearch.cli import main

pytest.importorskip("optuna_dashboard")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_the_dashboard_shows_a_search_and_its_trials_attributes(tmp_path):
    out = tmp_path / "run"
    assert main(["search", "--space", "tiny-digits", "--ratio", "0.2", "--trials", "5", "--epochs", "1", "--out", str(out),
                 "--no-progress"]) == 0
    command = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent)) or "optuna-dashboard"
    port = _free_port()
    server = subprocess.Popen([command, str(out / "study.journal"), "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):  # the server starts in a second or two
            try:
                studies = _get(f"{base}/api/studies")
                break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None, server.stderr.read().decode()  # type: ignore[union-attr]
                time.sleep(0.5)
        else:
            pytest.fail("optuna-dashboard did not answer within 60 s")
        names = {s["study_name"]: s["study_id"] for s in studies["study_summaries"]}  # type: ignore[index]
        assert "tiny-digits@0.2" in names
        detail = _get(f"{base}/api/studies/{names['tiny-digits@0.2']}")
        trials = detail["trials"]  # type: ignore[index]
        assert len(trials) == 5
        config = json.loads((out / "rank_config.json").read_text())
        for t in trials:
            attrs = {a["key"]: a["value"] for a in t["user_attrs"]}
            assert {"method", "ratio", "ranks", "before_retrain", "test"} <= set(attrs), sorted(attrs)
            assert 0 < float(attrs["ratio"]) <= 0.2
        best = next(t for t in trials if t["number"] == config["search"]["best_trial"])
        attrs = {a["key"]: a["value"] for a in best["user_attrs"]}
        assert json.loads(attrs["ranks"]) == config["ranks"]  # the dashboard shows a dict attribute as its JSON
        assert best["values"][0] == pytest.approx(config["metric"]["searched"]["val"])
    finally:
        server.terminate()
        server.wait(timeout=20)
