"""Many workers, one study: processes that start together, a worker killed mid-trial, export from elsewhere.

The PostgreSQL cases run when ``RANKSEARCH_TEST_POSTGRES`` is set (``.ci/run`` starts a server).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import torch
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from ranksearch import RankConfig, RunOptions, SearchSettings, count_params, load_factorized, load_space, search
from ranksearch.cli import main
from ranksearch.core._retrain import RetrainSettings
from ranksearch.errors import StudyError
from ranksearch.study import _join, _storage
from ranksearch.study._join import claim_setup, create_or_join
from ranksearch.study._loop import TrialsFailing
from ranksearch.study._samplers import trial_seed
from ranksearch.study._storage import open_storage, release

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
POSTGRES = os.environ.get("RANKSEARCH_TEST_POSTGRES")
STORAGES = ["journal", pytest.param("postgres", marks=pytest.mark.skipif(not POSTGRES, reason="RANKSEARCH_TEST_POSTGRES is not set"))]
ENQUEUED = ("seed_rule", "uniform", "sensitivity", "sensitivity_sum")
CAP = 10


def _storage_url(kind: str, tmp_path: Path) -> str:
    return str(tmp_path / "shared" / "study.journal") if kind == "journal" else POSTGRES  # type: ignore[return-value]


def _load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url))


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    storage = open_storage(url)  # polled in loops: its connections are closed at once, not when collected
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials()
    except KeyError:  # not created yet
        return []
    finally:
        release(storage)


def _owner(t: optuna.trial.FrozenTrial) -> str:
    return str(t.user_attrs.get("worker", "")).rpartition(":")[2]  # the worker's pid


def _kill_inside_a_trial(url: str, name: str, procs: list[subprocess.Popen], deadline: float) -> tuple[subprocess.Popen, int]:
    """SIGKILL the worker that is retraining a trial with many epochs left, once it has finished a trial;
    returns the worker and the trial it read as running."""
    pids = {str(p.pid): p for p in procs}
    while True:
        assert time.time() < deadline, "no trial ran in time"
        assert all(p.poll() is None for p in procs), "a worker ended before the kill"
        trials = _trials(url, name)
        finished = {_owner(t) for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
        for t in trials:
            retraining = "before_retrain" in t.user_attrs and "same_as" not in t.user_attrs  # not a twin: seconds left
            early = 2 <= len(t.intermediate_values) < 16  # past the gate, many epochs left
            if t.state == TrialState.RUNNING and _owner(t) in pids and _owner(t) in finished and retraining and early:
                pids[_owner(t)].send_signal(signal.SIGKILL)
                return pids[_owner(t)], t.number
        time.sleep(0.05)


def test_a_process_joining_while_the_study_is_created_waits_for_its_setup(monkeypatch):
    """Two processes start one study at once: wherever the joiner looks in between the creator's
    writes, it waits (for the settings, or for the live creator's setup) and never takes the setup
    over; else both would enqueue the seed rule and the baselines, which then run twice."""
    storage, me = optuna.storages.InMemoryStorage(), _storage.worker_id()
    who = {"id": me}
    monkeypatch.setattr(_join, "worker_id", lambda: who["id"])
    real_write, looks = _join.write_study, []
    samplers = dict(sampler=optuna.samplers.RandomSampler(), pruner=optuna.pruners.NopPruner())

    def set_then_the_joiner_looks(study, patch):
        real_write(study, patch)
        key = next(iter(patch.to_attrs()))
        if who["id"] != me:  # the joiner's own writes
            return
        who["id"] = f"{socket.gethostname()}:joiner"
        try:
            study, created = create_or_join(storage, "s", None, resume=True, wait_s=0, **samplers)
            looks.append((key, created, claim_setup(study)))
        except StudyError as e:
            assert "holds no ranksearch settings" in str(e)
            looks.append((key, False, "waits for the settings"))
        finally:
            who["id"] = me

    monkeypatch.setattr(_join, "write_study", set_then_the_joiner_looks)
    _, created = create_or_join(storage, "s", SearchSettings(0.2), resume=True, **samplers)
    assert created and len(looks) == 3, looks
    assert all(claimed in (False, "waits for the settings") for _, _, claimed in looks), looks
    assert looks[-1][2] is False  # once the settings are there, the setup is the creator's
    assert _storage.read_study(optuna.load_study(study_name="s", storage=storage)).setup["owner"] == me


@pytest.mark.parametrize("kind", ["sqlite", *STORAGES[1:]])
def test_release_closes_pooled_connections_and_the_study_stays_usable(kind, tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}" if kind == "sqlite" else POSTGRES)
    study = optuna.create_study(storage=storage, study_name=f"r-{uuid.uuid4().hex[:8]}")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert storage.engine.pool.checkedin() >= 1  # idle connections kept by the pool
    release(storage)
    assert storage.engine.pool.checkedin() == 0
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)  # reconnects
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    release(storage)
    release(open_storage(str(tmp_path / "j.journal")))  # a journal file holds no connection: nothing to do


@pytest.mark.slow
@pytest.mark.parametrize("kind", STORAGES)
def test_two_workers_one_killed_mid_trial(kind, tmp_path):
    """Two processes start one study at the same moment; one is SIGKILLed inside a trial; the other
    fails that trial, runs its allocation again and finishes the study; a third folder exports it."""
    url, name = _storage_url(kind, tmp_path), f"tiny-{uuid.uuid4().hex[:8]}"
    artifacts = tmp_path / "shared" / "artifacts"
    args = ["search", "--space", "tiny-digits", "--ratio", "0.2", "--trials", str(CAP), "--epochs", "24", "--storage", url,
            "--study-name", name, "--artifacts", str(artifacts), "--resume", "--heartbeat", "1", "--grace", "3", "-q"]

    def start(i: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "ranksearch.cli", *args, "--out", str(tmp_path / f"w{i}")],
                                env=os.environ.copy(), stderr=subprocess.PIPE, text=True)

    procs, killed_trial, deadline = [start(0), start(1)], None, time.time() + 300
    try:
        for attempt in range(4):
            victim, _ = _kill_inside_a_trial(url, name, procs, deadline)
            victim.wait()
            # The trial read as running may have finished between the read and the signal; the trial the
            # kill interrupted is the victim's one left unfinished, if any (a worker runs one at a time).
            unfinished = [t.number for t in _trials(url, name) if _owner(t) == str(victim.pid)
                          and t.state in (TrialState.RUNNING, TrialState.FAIL)]
            assert len(unfinished) <= 1, unfinished
            if unfinished:
                killed_trial = unfinished[0]
                break
            procs[procs.index(victim)] = start(2 + attempt)  # it fell between two trials: a fresh worker, again
        assert killed_trial is not None, "four kills all fell between trials"
        survivor = next(p for p in procs if p is not victim)
        _, err = survivor.communicate(timeout=600)
        assert survivor.returncode == 0, err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()

    study = _load(url, name)
    trials = study.get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert CAP <= len(finished) <= CAP + 1
    assert not study.get_trials(states=(TrialState.RUNNING,))
    killed = trials[killed_trial]
    assert killed.state == TrialState.FAIL
    again = [t for t in trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed_trial]
    assert len(again) == 1 and again[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert again[0].user_attrs["method"] == killed.user_attrs["method"]
    assert again[0].user_attrs["ranks"] == killed.user_attrs["ranks"]  # the same allocation, run again
    methods = [t.user_attrs["method"] for t in finished]
    assert all(methods.count(m) == 1 for m in ENQUEUED), methods  # each enqueued allocation ran once
    assert len({t.user_attrs["worker"] for t in finished}) >= 2  # both processes ran trials
    sampled = [t for t in finished if t.user_attrs["method"] == "searched" and RetryHeartbeatStaleTrialCallback.retried_trial_number(t) is None]
    proposals = [json.dumps(t.params, sort_keys=True) for t in sampled]
    assert len(set(proposals)) == len(proposals)  # no proposal twice (each sampled trial draws from its own seed)

    third = tmp_path / "third"
    third.mkdir()
    cwd = os.getcwd()
    try:
        os.chdir(third)
        assert main(["export", "--storage", url, "--study-name", name, "--out", "exported"]) == 0
        cfg = RankConfig.load("exported/rank_config.json")
        best = study.trials[cfg.search["best_trial"]]  # the earliest of the trials with the best value
        assert best.value == study.best_value and cfg.metric["searched"]["val"] == study.best_value
        assert not [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if t.value == best.value and t.number < best.number]
        assert cfg.search["settings"] == study.user_attrs["ranksearch:settings"]
        dense = load_space("tiny-digits").build_model()
        small = load_factorized(dense, cfg, "exported/factorized.safetensors")
        assert count_params(small) == cfg.compressed_params
        assert main(["apply", "--space", "tiny-digits", "--config", "exported/rank_config.json", "--out", "small.safetensors"]) == 0
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("change", [["--spread", "1.0"], ["--ratio", "0.1"], ["--factors", "plain"]])
def test_joining_with_other_settings_is_refused(tmp_path, capsys, change):
    out = tmp_path / "run"
    base = {"--space": "tiny-digits", "--ratio": "0.2", "--trials": "1", "--epochs": "1", "--study-name": "one", "--out": str(out)}
    assert main(["search", *[x for kv in base.items() for x in kv]]) == 0
    journal = out / "study.journal"
    size, before = journal.stat().st_size, len(_load(str(journal), "one").trials)
    other = {**base, "--trials": "3", change[0]: change[1]}
    capsys.readouterr()
    assert main(["search", *[x for kv in other.items() for x in kv], "--resume"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1 and change[0].lstrip("-").replace("ratio", "target_ratio") in err[0] and "study 'one'" in err[0].lower()
    assert journal.stat().st_size == size  # nothing written to the study
    assert len(_load(str(journal), "one").trials) == before


def test_worker_joins_a_study_from_its_storage_alone(tmp_path):
    out = tmp_path / "run"
    assert main(["search", "--space", "tiny-digits", "--ratio", "0.2", "--trials", "2", "--epochs", "1", "--out", str(out), "-q"]) == 0
    journal = str(out / "study.journal")
    worker = subprocess.run([sys.executable, "-m", "ranksearch.cli", "worker", "--storage", journal, "--study-name", "tiny-digits@0.2",
                             "--trials", "5", "-q"], env=os.environ.copy(), capture_output=True, text=True, timeout=300)
    assert worker.returncode == 0, worker.stderr
    study = _load(journal, "tiny-digits@0.2")
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 5
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2


def test_worker_with_other_weights_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["search", "--space", "tiny-digits", "--ratio", "0.2", "--trials", "1", "--epochs", "1", "--out", str(out), "-q"]) == 0
    model = load_space("tiny-digits").build_model()
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    from ranksearch.core._weights import save_state_dict

    other = save_state_dict(model.state_dict(), tmp_path / "other.safetensors")
    capsys.readouterr()
    assert main(["worker", "--storage", str(out / "study.journal"), "--study-name", "tiny-digits@0.2", "--trials", "3",
                 "--weights", str(other)]) == 2
    err = capsys.readouterr().err
    assert "digest" in err and "--weights" in err and "Traceback" not in err
    assert len(_load(str(out / "study.journal"), "tiny-digits@0.2").get_trials(states=(TrialState.COMPLETE,))) == 1


def test_unknown_study_and_missing_driver(tmp_path, capsys):
    assert main(["worker", "--storage", str(tmp_path / "none.journal"), "--study-name", "nope"]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "none.journal").exists()
    assert main(["search", "--space", "tiny-digits", "--ratio", "0.2", "--trials", "1", "--epochs", "1", "--out", str(tmp_path), "-q"]) == 0
    capsys.readouterr()
    assert main(["export", "--storage", str(tmp_path / "study.journal"), "--study-name", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "'nope' is not in this storage" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["worker", "--storage", "mysql://u@127.0.0.1/db", "--study-name", "x"]) == 2
    assert "driver" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny():
    space = load_space("tiny-digits")
    task = space.build_task()
    return space.build_model(task), task


def test_a_failing_trial_is_recorded_and_the_study_goes_on(tiny, tmp_path):
    model, task = tiny
    calls: list[int] = []
    from ranksearch.core._retrain import evaluate as metric

    def retrain(m: torch.nn.Module) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory (simulated)")

    res = search(model, SearchSettings(0.2, factors="plain", baselines=False), evaluate=lambda m: metric(m, task.val, "accuracy"), retrain=retrain, run=RunOptions(n_trials=6, out_dir=tmp_path))
    assert len(calls) >= 3  # the failing retrain was not the last one: the study went on after it
    failed = res.study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 1 and failed[0].user_attrs["error"] == "RuntimeError: CUDA out of memory (simulated)"
    assert "raise RuntimeError" in failed[0].user_attrs["traceback"]
    assert len(res.study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 6

    def broken(m: torch.nn.Module) -> None:
        raise ValueError("bad batch")

    with pytest.raises(TrialsFailing, match="3 trials in a row failed.*bad batch"):
        search(model, SearchSettings(0.3, factors="plain", baselines=False), evaluate=lambda m: 0.5, retrain=broken, run=RunOptions(n_trials=5))


def test_ctrl_c_requeues_the_running_trial_and_resume_matches_an_uninterrupted_run(tiny, tmp_path):
    model, task = tiny
    settings = SearchSettings(0.2, factors="plain", retrain=RetrainSettings(epochs=1, batch_size=32), pruner="none")
    full = search(model, settings, task=task, run=RunOptions(n_trials=6))
    from ranksearch.study._callables import task_callables

    plain_retrain = task_callables(task, settings.retrain, model, settings.seed).retrain  # type: ignore[arg-type]
    count: list[int] = []

    def evaluate(m: torch.nn.Module) -> float:
        from ranksearch.core._retrain import evaluate as metric

        return metric(m, task.val, "accuracy")

    def retrain(m: torch.nn.Module, report) -> float | None:  # Ctrl-C in the third trial's retrain
        count.append(1)
        if len(count) == 3:
            raise KeyboardInterrupt
        return plain_retrain(m, report)

    with pytest.raises(KeyboardInterrupt):
        search(model, settings.replace(retrain=None), evaluate=evaluate, retrain=retrain, run=RunOptions(n_trials=6, out_dir=tmp_path))
    study = _load(str(tmp_path / "study.journal"), f"{settings.model or 'Sequential'}@0.2")
    interrupted = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(interrupted) == 1 and interrupted[0].user_attrs["interrupted"] is True
    assert study.trials[-1].state == TrialState.WAITING  # its allocation, queued again
    assert not study.get_trials(states=(TrialState.RUNNING,))
    resumed = search(model, settings.replace(retrain=None), evaluate=evaluate, retrain=retrain, run=RunOptions(n_trials=6, out_dir=tmp_path,
                     resume=True))

    def runs(res):
        done = res.study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
        return sorted((t.user_attrs["method"], json.dumps(t.user_attrs["ranks"], sort_keys=True)) for t in done[:4])

    assert runs(resumed) == runs(full)  # the enqueued allocations, each once, the same ranks
    assert len(resumed.study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 6


def test_worker_commands_share_cores_and_place_gpus_round_robin(monkeypatch, tmp_path):
    from ranksearch._workers import worker_commands

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    run = RunOptions(n_trials=48, storage=str(tmp_path / "s.journal"), workers=8, gpus=("0", "1", "2"), source={"weights": "/w.pt"})
    cmds = worker_commands(run, "n@0.1", "/shared/a")
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in cmds] == ["0", "1", "2", "0", "1", "2", "0", "1"]
    assert all(env["OMP_NUM_THREADS"] == "2" for _, env in cmds)
    for cmd, _ in cmds:
        assert cmd[1:3] == ["-m", "ranksearch._from_space"]  # a Python process of the library, not the CLI
        job = json.loads(cmd[3])
        assert job["threads"] == 2 and job["n_trials"] == 48 and job["study_name"] == "n@0.1"
        assert job["weights"] == "/w.pt" and job["artifacts"] == "/shared/a" and job["storage"] == str(tmp_path / "s.journal")
    assert len({trial_seed(0, n) for n in range(1000)}) == 1000  # every sampled trial draws from its own seed
    assert trial_seed(0, 7) == trial_seed(0, 7) != trial_seed(1, 7)  # whichever process runs it


def test_a_search_that_joins_uploads_where_the_study_does(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    base = ["search", "--space", "tiny-digits", "--ratio", "0.2", "--epochs", "1", "--storage", str(first / "study.journal"), "-q"]
    assert main([*base, "--trials", "1", "--out", str(first)]) == 0
    uploaded = set((first / "artifacts").iterdir())
    assert main([*base, "--trials", "6", "--out", str(second), "--resume"]) == 0
    study = _load(str(first / "study.journal"), "tiny-digits@0.2")
    ids = {t.user_attrs["weights"] for t in study.trials if "weights" in t.user_attrs}
    assert {p.name for p in (first / "artifacts").iterdir()} == ids and len(ids) >= len(uploaded)
    assert not (second / "artifacts").exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind", STORAGES)
def test_a_worker_started_before_its_study_waits_and_joins_it(kind, tmp_path):
    """A batch scheduler starts the worker and the search that creates the study at once, worker first:
    with --wait the worker waits for the study (and its journal file) and then runs trials of it."""
    url, name = _storage_url(kind, tmp_path), f"tiny-{uuid.uuid4().hex[:8]}"
    worker = subprocess.Popen([sys.executable, "-m", "ranksearch.cli", "worker", "--storage", url, "--study-name", name,
                               "--wait", "120"], env=os.environ.copy(), stderr=subprocess.PIPE, text=True)
    try:
        assert worker.stderr is not None
        first = ""
        while "waiting up to 120 s" not in first:  # the worker says it waits (no study, no journal file yet) before the search starts
            line = worker.stderr.readline()
            assert line, first  # it ended before waiting
            first += line
        assert worker.poll() is None
        assert main(["search", "--space", "tiny-digits", "--ratio", "0.2", "--trials", "8", "--epochs", "20", "--storage", url,
                     "--study-name", name, "--out", str(tmp_path / "out"), "--artifacts", str(tmp_path / "artifacts"), "-q"]) == 0
        _, err = worker.communicate(timeout=300)
        err = first + err
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.wait()
    assert worker.returncode == 0, err
    assert "waiting up to 120 s" in err and "joined study" in err
    ran_here = [t for t in _trials(url, name) if _owner(t) == str(worker.pid)]
    assert ran_here, "the worker joined but ran no trial"


@pytest.mark.slow
def test_workers_and_one_process_enqueue_the_same_allocations(tmp_path):
    """The enqueued allocations are solved once, by the process that sets the study up, and carried as ranks:
    K worker processes (each with its share of the cores, so curves that differ in their last bits) run
    exactly the allocations one process runs."""
    base = ["search", "--space", "tiny-digits", "--ratio", "0.15", "--trials", "6", "--epochs", "1", "-q"]

    def enqueued(out: Path) -> dict[str, dict[str, int]]:
        study = _load(str(out / "study.journal"), "tiny-digits@0.15")
        return {t.user_attrs["method"]: t.user_attrs["ranks"] for t in study.trials if t.user_attrs.get("method") in ENQUEUED}

    assert main([*base, "--out", str(tmp_path / "one")]) == 0
    assert main([*base, "--workers", "2", "--out", str(tmp_path / "two")]) == 0
    one, two = enqueued(tmp_path / "one"), enqueued(tmp_path / "two")
    assert set(one) == set(ENQUEUED) and one == two
