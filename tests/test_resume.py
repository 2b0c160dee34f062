"""Resume is exact: however a search stops (Ctrl-C before the first trial, inside a trial, between two
trials), the resumed study finishes the same trials as an uninterrupted run: same methods, same ranks,
same count, nothing left RUNNING. (SIGKILL mid-trial: test_search.py and test_worker.py.)"""

from __future__ import annotations

import json
import os
import signal

import optuna
import pytest
from optuna.trial import TrialState

from ranksearch import Components, RunOptions, SearchSettings, load_space, search
from ranksearch.core._retrain import RetrainSettings
from ranksearch.core._retrain import evaluate as metric
from ranksearch.study._callables import task_callables

SETTINGS = SearchSettings(0.2, factors="plain", pruner="none", seed=0)
TRIALS = 7


class Interrupting(optuna.samplers.TPESampler):
    """TPE (as the search uses it) that sends this process SIGINT when trial ``at`` is created."""

    def __init__(self, at: int | None = None) -> None:
        super().__init__(seed=0, multivariate=True, n_startup_trials=5, constant_liar=True)
        self.at = at

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        super().before_trial(study, trial)
        if trial.number == self.at:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture(scope="module")
def setup():
    space = load_space("tiny-digits")
    task = space.build_task()
    model = space.build_model(task)
    retrain = task_callables(task, RetrainSettings(epochs=1, batch_size=32), model, 0).retrain

    calls = [0]

    def evaluate(m):
        calls[0] += 1
        return metric(m, task.val, "accuracy")

    full = search(model, SETTINGS, evaluate=evaluate, retrain=retrain, run=RunOptions(n_trials=TRIALS), given=Components(sampler=Interrupting()))
    return model, evaluate, retrain, _finished(full.study), calls


def _finished(study: optuna.Study) -> list[tuple[str, str]]:
    done = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    return sorted((t.user_attrs["method"], json.dumps(t.user_attrs["ranks"], sort_keys=True)) for t in done)


def _interrupting(fn, at: int, with_report: bool = False):
    calls = [0]

    def tick() -> None:
        calls[0] += 1
        if calls[0] == at:
            os.kill(os.getpid(), signal.SIGINT)

    def evaluate(m):
        tick()
        return fn(m)

    def retrain(m, report):
        tick()
        return fn(m, report)

    return retrain if with_report else evaluate


@pytest.mark.parametrize("moment", ["setup", "trial", "between"])
def test_interrupted_search_resumes_to_the_same_trials(setup, tmp_path, moment):
    model, evaluate, retrain, expected, calls = setup
    full_calls = calls[0]
    run = RunOptions(n_trials=TRIALS, out_dir=tmp_path)
    ev, re, sampler = evaluate, retrain, Interrupting()
    if moment == "setup":  # inside the sensitivity measurement, second layer: no trial has run
        ev = _interrupting(evaluate, 5)  # 1: dense, 2-3: layer 0's two probes (ranks 1, 2), 4-: layer 2's
    elif moment == "trial":  # inside the third trial's retrain
        re = _interrupting(retrain, 3, with_report=True)
    else:  # while Optuna creates trial 4, outside any objective
        sampler = Interrupting(at=4)
    with pytest.raises(KeyboardInterrupt):
        search(model, SETTINGS, evaluate=ev, retrain=re, run=run, given=Components(sampler=sampler))
    study = optuna.load_study(study_name="Sequential@0.2", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.journal"))))
    assert not study.get_trials(states=(TrialState.RUNNING,))
    if moment == "setup":
        assert not study.get_trials(states=(TrialState.COMPLETE,))
        assert [k for k in study.user_attrs if k.startswith("ranksearch:sensitivity_row:")] == ["ranksearch:sensitivity_row:0"]
    else:  # the interrupted trial failed, its allocation waits to run again
        failed = study.get_trials(states=(TrialState.FAIL,))
        assert len(failed) == 1 and (moment == "trial" or failed[0].number == 4)
        waiting = study.get_trials(states=(TrialState.WAITING,))
        assert [t.system_attrs.get("failed_trial") for t in waiting].count(failed[0].number) == 1
    before = calls[0]
    resumed = search(model, SETTINGS, evaluate=evaluate, retrain=retrain, run=run.replace(resume=True), given=Components(sampler=Interrupting()))
    assert not resumed.study.get_trials(states=(TrialState.RUNNING,))
    assert _finished(resumed.study) == expected
    if moment == "setup":  # neither the dense metric nor the first layer's row is measured again
        assert calls[0] - before == full_calls - 1 - 2
        cost = resumed.study.user_attrs["ranksearch:fixed_cost"]  # stored by the setup that finished, which says so
        assert cost["resumed"] is True and cost["sensitivity_evaluations"] == sum(map(len, resumed.sensitivity.values())) - 2
    else:
        assert "resumed" not in resumed.study.user_attrs["ranksearch:fixed_cost"]


@pytest.mark.slow
def test_ctrl_c_on_the_command_line_prints_one_line_and_exits_130(tmp_path):
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "ranksearch.cli", "search", "--space", "tiny-digits", "--ratio", "0.2", "--trials", "20",
           "--epochs", "20", "--out", str(out), "-q"]
    proc = subprocess.Popen(cmd, env=os.environ.copy(), stderr=subprocess.PIPE, text=True)
    journal, deadline = out / "study.journal", time.time() + 240
    try:
        while True:  # wait until a trial is inside its retrain
            assert proc.poll() is None and time.time() < deadline
            if journal.exists():
                try:
                    trials = optuna.load_study(study_name="tiny-digits@0.2", storage=optuna.storages.JournalStorage(
                        optuna.storages.journal.JournalFileBackend(str(journal)))).trials
                except KeyError:
                    trials = []
                if any(t.state == TrialState.RUNNING and "ratio" in t.user_attrs for t in trials):
                    break
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0] and "--resume" in lines[0] and "Traceback" not in err, err
    assert not (out / "rank_config.json").exists()
    import shlex

    from ranksearch.cli import main

    again = shlex.split(lines[0].split("resume with: ")[1])  # the printed command, as printed (fewer trials: quicker)
    assert again[0] == "ranksearch" and again[-1] == "--resume"
    again[again.index("--trials") + 1] = "3"
    assert main(again[1:]) == 0 and (out / "rank_config.json").exists()


GATED = SearchSettings(0.2, factors="plain", pruner="gate", sampler="local", keep=0.5, seed=0)
GATED_TRIALS = 12


def _gated_retrain(retrain, kill_after: int | None = None):
    """``retrain`` (2 epochs, screened at half the first) that, with ``kill_after``, sends SIGINT once
    the ``kill_after``-th trial got past its screen (its report at the end of epoch 1 went through)."""
    passed = [0]

    def wrapped(m, report):
        def rep(step, value, last=False):
            report(step, value, last)
            if step == 1:
                passed[0] += 1
                if passed[0] == kill_after:
                    os.kill(os.getpid(), signal.SIGINT)

        return retrain(m, rep)

    return wrapped


def _decisions(study: optuna.Study) -> list[tuple[str, str, str, tuple]]:
    """Per finished trial: method, ranks, state and the gate's budget record (went on, of screened, promoted)."""
    done = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    gate = [(t.user_attrs["gate"]["went_on"], t.user_attrs["gate"]["screened"], t.user_attrs["gate"]["promoted"])
            if "gate" in t.user_attrs else () for t in done]
    return sorted((t.user_attrs["method"], json.dumps(t.user_attrs["ranks"], sort_keys=True), t.state.name, g)
                  for t, g in zip(done, gate))


def test_a_trial_interrupted_after_its_screen_does_not_spend_the_gates_budget(setup, tmp_path):
    """Ctrl-C in a sampled trial that went on past the gate: the resumed study screens its rerun against
    the same budget, so it prunes and retrains exactly the trials an uninterrupted study does."""
    model, evaluate, _, _, _ = setup
    space = load_space("tiny-digits")
    retrain = task_callables(space.build_task(), RetrainSettings(epochs=2, batch_size=32), model, 0, screen=0.5).retrain
    full = search(model, GATED, evaluate=evaluate, retrain=_gated_retrain(retrain), run=RunOptions(n_trials=GATED_TRIALS))
    expected = _decisions(full.study)
    went_on = [d for d in expected if d[0] == "searched" and d[3] and d[3][2]]
    assert went_on, "no sampled trial got past the screen: the test would not interrupt one"
    passes = 0  # reports at step 1 up to and with the first sampled trial's: where the interrupted run stops
    for t in sorted(full.study.trials, key=lambda t: t.number):
        passes += 1 in t.intermediate_values
        if 1 in t.intermediate_values and t.user_attrs.get("method") == "searched":
            break
    run = RunOptions(n_trials=GATED_TRIALS, out_dir=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        search(model, GATED, evaluate=evaluate, retrain=_gated_retrain(retrain, kill_after=passes), run=run)
    study = optuna.load_study(study_name="Sequential@0.2", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.journal"))))
    (failed,) = study.get_trials(states=(TrialState.FAIL,))
    assert failed.user_attrs["method"] == "searched" and failed.user_attrs["gate"]["promoted"] is True
    resumed = search(model, GATED, evaluate=evaluate, retrain=_gated_retrain(retrain), run=run.replace(resume=True))
    assert _decisions(resumed.study) == expected


def test_an_interrupted_pareto_study_resumes_to_the_same_trials(setup, tmp_path):
    """Each trial's ratio (a parameter of the sampler, and the target in its record) is run again exactly."""
    model, evaluate, retrain, _, _ = setup
    settings = SearchSettings(0.5, pareto=(0.5, 0.2), factors="plain", pruner="none", seed=0)

    def finished(study: optuna.Study) -> list[tuple[str, float, str]]:
        done = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
        return sorted((t.user_attrs["method"], t.user_attrs["target"], json.dumps(t.user_attrs["ranks"], sort_keys=True)) for t in done)

    expected = finished(search(model, settings, evaluate=evaluate, retrain=retrain, run=RunOptions(n_trials=11)).study)
    assert len({t for _, t, _ in expected}) >= 3  # sampled trials at ratios between the points too
    run = RunOptions(n_trials=11, out_dir=tmp_path, report=False)
    with pytest.raises(KeyboardInterrupt):  # inside the seventh retrain (twins of a finished trial retrain nothing)
        search(model, settings, evaluate=evaluate, retrain=_interrupting(retrain, 7, with_report=True), run=run)
    resumed = search(model, settings, evaluate=evaluate, retrain=retrain, run=run.replace(resume=True))
    assert len(resumed.study.get_trials(states=(TrialState.FAIL,))) == 1
    assert finished(resumed.study) == expected
