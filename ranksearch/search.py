"""The Optuna rank search: trials share the budget between layers, the solver makes it exact.

The CE1 rule (one global MSE bound) is enqueued as the first trial, then the baselines (uniform,
AIMET-style greedy, sensitivity sum). Each sampled trial steps every layer's rank by a factor ``2**u``
from the best trial so far (:mod:`ranksearch.proposals`; or, with ``proposals="weights"``, sets a
``log10`` weight per layer on the MSE bound); the solver turns the proposal into ranks that hit the
target ratio of the whole model, so no trial is wasted on an infeasible allocation. The trial
factorizes the model (slicing decompositions computed once), retrains it briefly, reports the
validation metric after a quarter of the first epoch (the ``gate`` pruner lets only the study's best
screens retrain fully: :mod:`ranksearch.gate`) and after each epoch, and returns the final validation
metric.

:func:`search` creates the study (or joins it: several processes and machines may share one study,
see :mod:`ranksearch.worker`), sets it up once, runs trials in this process or in ``workers``
processes, and returns the best trial (:func:`ranksearch.export.collect`). The study lives in any
Optuna storage; by default a journal file in the output folder, so a killed search resumes
(``resume=True``) without losing a finished trial; an interrupted trial is run again.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial
from torch import nn

from ranksearch._storage import (GRACE_S, HEARTBEAT_S, StudyAttrs, artifact_store, create_or_join, open_storage, release,
                                 storage_url, wait_until_ready)
from ranksearch.baselines import Sensitivity
from ranksearch.errors import StudyError
from ranksearch.export import SearchResult, collect
from ranksearch.inputs import Forward
from ranksearch.cost import rank_multiple_for
from ranksearch.retrain import RetrainSettings, best_device
from ranksearch.settings import CUSTOM, GRANULARITIES, PRUNERS, SAMPLERS, SearchSettings
from ranksearch.solver import solve_ratio
from ranksearch.spectra import spectra
from ranksearch.surgery import count_params, factorize
from ranksearch.task import Task
from ranksearch.trial import Evaluate, Retrain
from ranksearch.weights import state_digest
from ranksearch.worker import (WorkersFailed, callables_for, make_pruner, make_sampler, objective_for, run_trials, set_up, views_for)

__all__ = ["GRANULARITIES", "PRUNERS", "SAMPLERS", "SearchResult", "open_storage", "resolve_settings", "search"]

_log = logging.getLogger(__name__)


def resolve_settings(model: nn.Module, settings: SearchSettings | float, *, task: Task | None = None,
                     calibration: Iterable[Any] | None = None, sampler: optuna.samplers.BaseSampler | None = None,
                     pruner: optuna.pruners.BasePruner | None = None,
                     cache_dir: str | os.PathLike[str] | None = None) -> SearchSettings:
    """The settings a study stores: ``factors="auto"`` and ``rank_multiple="auto"`` resolved, the
    model's name and weights digest filled in, the retrain recipe of a task defaulted, custom sampler/pruner objects named.
    ``cache_dir``: the spectra cache the search reads its curves from (the CUDA grid needs them too)."""
    s = settings if isinstance(settings, SearchSettings) else SearchSettings(target_ratio=settings)
    digest = state_digest(model.state_dict())
    if s.weights_digest and s.weights_digest != digest:
        raise StudyError(f"settings.weights_digest {s.weights_digest[:13]} is not this model's ({digest[:13]}); "
                         "leave it empty (search fills it in) or pass the model the settings were made for.")
    changes: dict[str, Any] = {"weights_digest": digest, "model": s.model or type(model).__name__}
    if s.factors == "auto":
        changes["factors"] = "data-aware" if (calibration is not None or task is not None) else "plain"
    elif s.factors == "data-aware" and calibration is None and task is None:
        raise StudyError("factors='data-aware' needs calibration inputs: pass calibration= (input batches) or task=, or use factors='plain'.")
    if s.rank_multiple == "auto":
        curves = spectra(model, cache_dir=cache_dir, exclude=s.exclude) if best_device().type == "cuda" else None
        changes["rank_multiple"] = rank_multiple_for(best_device(), 1, curves, s.target_ratio, count_params(model), s.min_rank)
    if task is not None and s.retrain is None:
        changes["retrain"] = RetrainSettings()
    if task is None and s.retrain is not None:
        raise StudyError("settings.retrain is the built-in retrain's recipe (used with task=); with your own "
                         "retrain callable leave it None.")
    if sampler is not None:
        changes["sampler"] = CUSTOM + type(sampler).__name__
    if pruner is not None:
        changes["pruner"] = CUSTOM + type(pruner).__name__
    return s.replace(**changes)


def search(
    model: nn.Module,
    settings: SearchSettings | float,
    *,
    task: Task | None = None,
    evaluate: Evaluate | None = None,
    retrain: Retrain | None = None,
    calibration: Iterable[Any] | None = None,
    forward: Forward | None = None,
    n_trials: int | None = 20,
    timeout: float | None = None,
    storage: str | BaseStorage | None = None,
    study_name: str | None = None,
    resume: bool = False,
    out_dir: str | os.PathLike[str] | None = None,
    artifacts: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    source: dict[str, Any] | None = None,
    sensitivity: Sensitivity | None = None,
    warm_start: Iterable[Mapping[str, float]] = (),
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    workers: int = 1,
    gpus: Sequence[str] = (),
    heartbeat: int = HEARTBEAT_S,
    grace: int = GRACE_S,
    progress: bool = False,
    input_shape: Sequence[int] | None = None,
) -> SearchResult:
    """Search the rank allocation of ``model`` that scores best after a short retrain.

    Either give a ``task`` (data, loss and metric: the built-in retrain runs ``settings.retrain`` and
    scores the validation split, the test split is reported) or your own ``evaluate(model) -> float``
    (higher is better) and optionally ``retrain(model)`` (which may accept ``report=fn(step, value)``
    to let the pruner stop bad trials, and may return the retrained model's ``evaluate`` value to save
    evaluating it again).

    Args:
        model: The dense model (left unchanged).
        settings: What the study searches (:class:`~ranksearch.settings.SearchSettings`), or just the
            target ratio with every other setting at its default.
        calibration: Input batches for data-aware factors (default: 512 samples of ``task.train``): tensors,
            tuples (``model(*batch)``) or dicts (``model(**batch)``), moved to the model's device.
        forward: ``forward(model, batch)`` for calibration batches of another structure (default: the
            task's ``forward``; see :mod:`ranksearch.inputs`).
        n_trials: Finished trials (complete or pruned) the study should hold, all workers and resumed
            runs counted; with K workers up to K-1 more may finish (they were running).
        timeout: Wall-clock limit in seconds for this call's trials.
        storage: Optuna storage URL, journal file or storage object (default: ``study.journal`` in
            ``out_dir``; in memory without either).
        study_name: Default ``MODEL@RATIO``.
        resume: Continue (or join) an existing study; its stored settings must equal ``settings``.
        out_dir: Folder of the default journal file and artifact store.
        artifacts: Folder of the artifact store for the trials' weights (default ``out_dir/artifacts``);
            several machines need a shared one.
        source: Where the dense model came from (space, weights file), recorded in the study and configs.
        sensitivity: A table measured before (``result.sensitivity`` of another working point).
        warm_start: Per-layer ``log10`` weights to enqueue after the baselines (e.g. the best trial's
            ``user_attrs["log10w"]`` at another working point).
        sampler, pruner: Optuna objects instead of ``settings.sampler``/``settings.pruner``.
        workers: Processes running trials on this machine (> 1 needs ``settings.space``: each worker
            rebuilds the model and task from it, as ``ranksearch worker`` does).
        gpus: CUDA device ids the workers are placed on, round-robin (several may share one).
        heartbeat, grace: Heartbeat interval and grace period (seconds) of a database storage.
        progress: Show progress bars (sensitivity, trials with counter and ETA) on stderr. Log lines
            go to the ``ranksearch`` logger either way (one per trial, with its method).
        input_shape: One input sample's shape (no batch dimension) for the configs' multiply-adds
            (default: the task's first validation input; without a task and this, no MACs are recorded).
    """
    calibration = None if calibration is None else list(calibration)  # read by the factors and the output probes
    settings = resolve_settings(model, settings, task=task, calibration=calibration, sampler=sampler, pruner=pruner,
                                cache_dir=cache_dir)
    if n_trials is not None and n_trials < 1:
        raise StudyError(f"n_trials {n_trials} must be >= 1 (or None with a timeout).")
    if n_trials is None and timeout is None:
        raise StudyError("Give n_trials, timeout or both, or the search never ends.")
    if timeout is not None and not (0 < timeout < float("inf")):
        raise StudyError(f"timeout {timeout!r} must be a finite number of seconds > 0.")
    if workers < 1:
        raise StudyError(f"workers {workers} must be >= 1.")
    if workers > 1 and (settings.space is None or isinstance(storage, BaseStorage) or (storage is None and out_dir is None)
                        or sampler is not None or pruner is not None):
        raise StudyError("workers > 1 needs a space (settings.space), a storage URL or journal file (or out_dir) and "
                         "named sampler/pruner; from Python, start run_worker() in your own processes instead.")
    views = views_for(model, settings, task, calibration, cache_dir, forward)
    total = count_params(model)
    solve_ratio(views.plain_curves, settings.target_ratio, total, None, settings.rank_multiple, settings.min_rank)  # unreachable?
    warm = [dict(w) for w in warm_start]
    for w in warm:  # before any study is written
        if unknown := sorted(set(w) - set(views.curves)):
            raise StudyError(f"warm_start names layers {unknown[:3]} that {type(model).__name__} has no eligible layer for; "
                             "give per-layer log10 weights of this model (a trial's user_attrs['log10w']).")
    calls = callables_for(model, settings, task, evaluate, retrain, calibration, forward)
    if input_shape is not None:
        calls = dataclasses.replace(calls, input_shape=tuple(int(d) for d in input_shape))
    store = open_storage(storage, out_dir, heartbeat=heartbeat, grace=grace)
    try:  # however the search ends, a database storage's pooled connections are closed
        name = study_name or f"{settings.model}@{settings.target_ratio:g}"
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study, created = create_or_join(store, name, settings, resume=resume, sampler=sampler or make_sampler(settings),
                                        pruner=pruner or make_pruner(settings), source=source)
        attrs = StudyAttrs(study)
        where = artifacts
        if created:
            where = where if where is not None else (Path(out_dir) / "artifacts" if out_dir is not None else None)
            attrs.set("created_at", time.time())
            attrs.set("n_trials", n_trials)  # the default cap of workers that join
            if where is not None:
                attrs.set("artifacts", str(Path(where).resolve()))
        elif where is None:  # a joining process uploads where the study's other workers do
            where = attrs.get("artifacts")
        table: list[Sensitivity | None] = [sensitivity]

        def setup() -> None:
            table[0] = set_up(study, model, views, settings, calls, sensitivity=sensitivity, warm_start=warm, progress=progress)

        if created:
            setup()
        else:
            wait_until_ready(study, on_orphan=setup)
        arts = artifact_store(where) if where is not None else None
        if workers > 1:
            url = storage_url(storage if isinstance(storage, str) else None, out_dir)
            _spawn(url, name, n_trials, timeout, where, workers, gpus, heartbeat, grace, source)  # type: ignore[arg-type]
        else:
            objective = objective_for(study, model, views, settings, calls, arts, n_trials)
            run_trials(study, objective, n_trials=n_trials, timeout=timeout, grace=grace, progress=progress)

        def rebuild(t: FrozenTrial) -> nn.Module:  # the weights were not uploaded: retrain again, same seed
            _, factors = views.of(t.user_attrs.get("factors", views.kind))
            best = factorize(model, t.user_attrs["ranks"], factors)
            if calls.retrain is not None:
                objective_for(study, model, views, settings, calls, None, None).retrain_again(best)
            return best.eval()

        result = collect(study, model, views.plain_curves, artifacts=arts, rebuild=rebuild, source=source, factors=views.plain_factors)
        if result.sensitivity is None:
            result.sensitivity = table[0]
        return result
    finally:
        release(store)


def worker_commands(url: str, name: str, n_trials: int | None, timeout: float | None, artifacts: Any, workers: int,
                    gpus: Sequence[str], heartbeat: int, grace: int, source: dict[str, Any] | None
                    ) -> list[tuple[list[str], dict[str, str]]]:
    """Command line and environment of each of ``workers`` worker processes: worker k gets an equal
    share of the cores and GPU ``gpus[(k - 1) % len(gpus)]``."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    out = []
    for i in range(workers):
        cmd = [sys.executable, "-m", "ranksearch.cli", "worker", "--storage", url, "--study-name", name,
               "--threads", str(threads), "--heartbeat", str(heartbeat), "--grace", str(grace)]
        cmd += ["--trials", str(n_trials)] if n_trials is not None else []
        cmd += ["--timeout", str(timeout)] if timeout is not None else []
        cmd += ["--artifacts", str(artifacts)] if artifacts is not None else []
        if source and source.get("weights"):
            cmd += ["--weights", str(source["weights"])]
        cmd += ["--no-progress"]  # K bars on one terminal would overwrite each other; log lines stay
        if not logging.getLogger("ranksearch").isEnabledFor(logging.INFO):
            cmd += ["-q"]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(gpus[i % len(gpus)])
        out.append((cmd, env))
    return out


def _spawn(url: str, name: str, n_trials: int | None, timeout: float | None, artifacts: Any,
           workers: int, gpus: Sequence[str], heartbeat: int, grace: int, source: dict[str, Any] | None) -> None:
    """Run ``workers`` ``ranksearch worker`` processes on the study and wait for them (Ctrl-C and
    SIGTERM are passed on; each worker then re-enqueues its interrupted trial)."""
    procs = [subprocess.Popen(cmd, env=env) for cmd, env in worker_commands(url, name, n_trials, timeout, artifacts, workers, gpus,
                                                                            heartbeat, grace, source)]
    _log.info("%d workers started on study %s%s", workers, name, f" over GPUs {list(gpus)}" if gpus else "")
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:  # the workers got it too (same process group) unless only this process was signalled
        end = time.monotonic() + 10
        for p in procs:
            try:
                p.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
        raise
    if bad := [(i + 1, c) for i, c in enumerate(codes) if c != 0]:
        raise WorkersFailed(f"workers {[i for i, _ in bad]} exited with codes {[c for _, c in bad]}; see their lines above.")
