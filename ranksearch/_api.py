"""The Optuna rank search: :func:`search` creates a study (or joins it), sets it up once, runs trials, and
returns the best; :func:`run_worker` joins a study knowing only where it is.

The CE1 rule (one global MSE bound) is enqueued as the first trial, then the baselines (uniform,
AIMET-style greedy, sensitivity sum). Each sampled trial steps every layer's rank by a factor ``2**u``
from the best trial so far (or, with ``proposals="weights"``, sets a ``log10`` weight per layer on the
MSE bound); the solver turns the proposal into ranks that hit the target ratio of the whole model. The
trial factorizes the model, retrains it briefly, reports the validation metric after a quarter of the
first epoch (the ``gate`` pruner lets only the study's best screens retrain fully) and after each epoch,
and returns the final validation metric.

Several processes and machines may share one study. It lives in any Optuna storage; by default a
journal file in the output folder, so a killed search resumes (``resume=True``) without losing a
finished trial; an interrupted trial is run again.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial
from torch import nn

from ranksearch._io import check_writable
from ranksearch.core._config import RankConfig
from ranksearch.core._inputs import Forward
from ranksearch.core._retrain import best_device
from ranksearch.core._task import Task
from ranksearch.errors import RankSearchError, StudyError
from ranksearch.results._collect import SearchResult, collect
from ranksearch.results._export import write_folder
from ranksearch.study._callables import Evaluate, Retrain
from ranksearch.study._join import create_or_join, join_study, stored_settings, wait_until_ready
from ranksearch.study._latency import end_to_end, measure_timing
from ranksearch.study._loop import FINISHED, run_trials
from ranksearch.study._objective import Objective
from ranksearch.study._plan import Plan, Workload, check_model, make_plan, resolve
from ranksearch.study._record import StudyRecord, TrialRecord
from ranksearch.study._settings import Components, RunOptions, SearchSettings
from ranksearch.study._setup import set_up
from ranksearch.study._storage import artifact_store, check_storage, open_storage, read_study, release, worker_id, write_study
from ranksearch.study._vocab import Axis, Method, Sensitivity

__all__ = ["run_worker", "search"]

_log = logging.getLogger(__name__)


def search(
    model: nn.Module,
    settings: SearchSettings | float,
    *,
    task: Task | None = None,
    evaluate: Evaluate | None = None,
    retrain: Retrain | None = None,
    calibration: Iterable[Any] | None = None,
    forward: Forward | None = None,
    run: RunOptions | None = None,
    given: Components | None = None,
) -> SearchResult:
    """Search the rank allocation of ``model`` that scores best after a short retrain.

    Either give a ``task`` (data, loss and metric: the built-in retrain runs ``settings.retrain`` and
    scores the validation split, the test split is reported) or your own ``evaluate(model) -> float``
    (higher is better) and optionally ``retrain(model)`` (which may accept ``report=fn(step, value)``
    to let the pruner stop bad trials, and may return the retrained model's ``evaluate`` value to save
    evaluating it again).

    Args:
        model: The dense model (left unchanged).
        settings: What the study searches (:class:`~ranksearch.SearchSettings`), or just the target ratio.
        calibration: Input batches for data-aware factors (default: 512 samples of ``task.train``): tensors,
            tuples (``model(*batch)``) or dicts (``model(**batch)``), moved to the model's device.
        forward: ``forward(model, batch)`` for batches of another structure (default: the task's).
        run: How this process runs the study (:class:`~ranksearch.RunOptions`: trial cap, timeout, storage,
            output folder, workers, ...). With ``out_dir`` the results folder is written there.
        given: Parts handed over ready-made (:class:`~ranksearch.Components`: Optuna sampler or pruner
            objects, a sensitivity table measured before, warm starts, the input shape).

    Example:
        >>> result = ranksearch.search(model, 0.25, evaluate=my_eval, run=ranksearch.RunOptions(n_trials=20))  # doctest: +SKIP
    """
    _check_model(model)
    run = run or RunOptions()
    given = given or Components()
    work = Workload(task, evaluate, retrain, None if calibration is None else list(calibration), forward)
    if run.gpus and not torch.cuda.is_available():
        raise StudyError(f"gpus {list(run.gpus)} were given but this machine has no CUDA device; leave --gpus out (workers share "
                         "the CPU cores).")
    if run.gpus and run.workers < 2:
        raise StudyError("gpus place worker processes (workers > 1); one process uses the first CUDA device it sees "
                         "(CUDA_VISIBLE_DEVICES chooses it).")
    if run.n_trials is None and run.timeout is None:
        raise StudyError("Give n_trials, timeout or both, or the search never ends.")
    out = Path(run.out_dir) if run.out_dir is not None else None
    settings = resolve(model, settings, work, given, run.cache_dir)
    name = run.name_for(settings.model, settings.point)
    if out is not None:
        check_results_folder(out, name, run.resume)
    if isinstance(run.storage, str) or run.storage is None:
        check_storage(run.storage, run.out_dir)
    if run.workers > 1 and (settings.space is None or isinstance(run.storage, BaseStorage) or (run.storage is None and out is None)
                            or given.sampler is not None or given.pruner is not None):
        raise StudyError("workers > 1 needs a space (settings.space), a storage URL or journal file (or out_dir) and "
                         "named sampler/pruner; from Python, start run_worker() in your own processes instead.")
    plan = make_plan(model, settings, work, given, run.cache_dir)
    timing = None
    if plan.latency is not None and not run.resume:  # before any study is written (a resumed one has its own)
        timing = measure_timing(model, plan.allocator, plan.latency, plan.calls.input_shape, run.progress)
        plan = plan.with_timing(timing)
    byte_point, byte_front = None, None
    if (coder := plan.coder) is not None and not run.resume:  # before any study is written (a resumed one has its own)
        from ranksearch.study._bytes import measure_front, measure_point

        if settings.pareto:  # a front over bytes: one point per budget
            byte_front = measure_front(model, plan.allocator, plan.allocator.front, plan.calls, coder.folds(model))
            plan = plan.with_byte_front(byte_front)
        else:
            byte_point = measure_point(model, plan.allocator, coder.budget, plan.calls, coder.folds(model))
            plan = plan.with_bytes(byte_point)
    _check_reachable(plan)
    for w in given.warm_start:  # before any study is written
        if unknown := sorted(set(w) - set(plan.views.curves)):
            raise StudyError(f"warm_start names layers {unknown[:3]} that {type(model).__name__} has no eligible layer for; "
                             "give per-layer log10 weights of this model (a trial's log10w).")
    point = f"ratio {settings.target_ratio:g}" if settings.target_ratio < 1 else ""
    if settings.target_latency is not None:
        point += f"{' and ' if point else ''}latency {settings.target_latency:g} of dense on {settings.runtime.value}"
    if settings.target_bytes is not None:
        point = f"{settings.target_bytes:,} bytes" + (f" (ratios up to {settings.target_ratio:g})" if point else "")
    if settings.pareto:
        point = f"the front over {settings.pareto_axis.value} {', '.join(f'{p:g}' for p in settings.pareto)}" + (
            f" ({point})" if point and settings.pareto_axis is not Axis.RATIO else "")
    _log.info("searching %s at %s on %s (%s trials%s%s)", settings.model, point, best_device(),
              run.n_trials if run.n_trials is not None else "no cap on", f", timeout {run.timeout:g} s" if run.timeout else "",
              f", {run.workers} workers" if run.workers > 1 else "")
    store = open_storage(run.storage, run.out_dir, heartbeat=run.heartbeat, grace=run.grace)
    try:  # however the search ends, a database storage's pooled connections are closed
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study, created = create_or_join(store, name, settings, resume=run.resume, sampler=plan.sampler, pruner=plan.pruner,
                                        source=run.source)
        where = _artifacts_where(study, created, run)
        table: list[Sensitivity | None] = [given.sensitivity]

        def setup() -> None:
            table[0] = set_up(study, model, plan, sensitivity=given.sensitivity, timing=timing, warm_start=given.warm_start,
                              progress=run.progress, byte_point=byte_point, byte_front=byte_front)

        if created:
            setup()
        else:
            wait_until_ready(study, on_orphan=setup)
        plan = plan.with_stored(read_study(study))  # the study's timing table or byte points, whoever measured them
        arts = artifact_store(where) if where is not None else None
        if run.workers > 1:
            from ranksearch._workers import spawn

            spawn(run, name, where)
        else:
            run_trials(study, _objective(study, model, plan, arts, run.n_trials), n_trials=run.n_trials, timeout=run.timeout,
                       grace=run.grace, progress=run.progress)

        def rebuild(t: FrozenTrial) -> nn.Module:  # the weights were not uploaded: retrain again, same seed
            return plan.retrained(model, TrialRecord.of(t))

        result = collect(study, model, plan.views.plain_curves, artifacts=arts, rebuild=rebuild, source=run.source,
                         factors=plan.views.plain_factors)
        if result.sensitivity is None and table[0] is not None:
            result = dataclasses.replace(result, sensitivity=table[0])
        if plan.latency is not None:
            result = _with_latency(result, study, model, plan)
        if out is not None:
            write_folder(result, out, report=run.report)
        return result
    finally:
        release(store)


def _check_model(model: object) -> None:
    if not isinstance(model, nn.Module):
        raise RankSearchError(f"model must be a torch.nn.Module (the dense model), not {type(model).__name__}.")


def _check_reachable(plan: Plan) -> None:
    """The solver raises, in one line, for a target the model cannot reach (before any study is written); a Pareto
    study's smallest point too."""
    a = plan.allocator
    a.solution(Method.SEED_RULE, None)
    for target in a.front[-1:]:
        if a.axis is not Axis.BYTES:  # a byte point's smallest ratio is reachable: measured so
            a.at(target).solution(Method.SEED_RULE, None)


def _with_latency(result: SearchResult, study: optuna.Study, model: nn.Module, plan: Plan) -> SearchResult:
    """``result`` with its best model's end-to-end latency against the dense model's in its config."""
    record = read_study(study)
    assert plan.latency is not None and record.timing is not None
    measured = end_to_end(model, result.model, record.timing, plan.latency, plan.calls.input_shape or record.input_shape,
                          result.config.ranks)
    config = dataclasses.replace(result.config, search={**result.config.search, "latency": measured})
    return dataclasses.replace(result, config=config, summary=dataclasses.replace(result.summary, latency=measured))


def _artifacts_where(study: optuna.Study, created: bool, run: RunOptions) -> Any:
    """Where the trials' weights go: the given folder, else ``out_dir/artifacts`` for a new study, else
    the folder the study's other workers upload to (recorded at its creation)."""
    where = run.artifacts
    if created:
        where = where if where is not None else (Path(run.out_dir) / "artifacts" if run.out_dir is not None else None)
        write_study(study, StudyRecord(created_at=time.time(), n_trials=run.n_trials,
                                       artifacts=str(Path(where).resolve()) if isinstance(where, (str, Path)) else None))
        return where
    return where if where is not None else read_study(study).artifacts


def _objective(study: optuna.Study, model: nn.Module, plan: Plan, artifacts: Any, n_trials: int | None) -> Objective:
    """The trial function of a set-up study (the prior's centre read from the study)."""
    record = read_study(study)
    plan = plan.with_stored(record)
    return Objective(model, plan.allocator.with_centre(record.centre or {}), plan.calls, artifacts=artifacts, n_trials=n_trials,
                     screen=plan.screen, coder=plan.coder)


def check_results_folder(out: Path, name: str, resume: bool) -> None:
    """A results folder is written only by a run of the study that wrote it, and only resumed on purpose."""
    check_writable(out, folder=True, what="--out")
    path = out / "rank_config.json"
    if not path.exists():
        return
    if not resume:
        raise RankSearchError(f"{str(out)!r} already holds a finished search; pass --resume (resume=True) or choose another --out.")
    previous = RankConfig.load(path).search.get("study_name")
    if previous is not None and previous != name:
        raise RankSearchError(f"{str(out)!r} holds the results of study {previous!r}, not {name!r}; choose another --out "
                              "(or the same --ratio / --study-name to resume that study).")


def run_worker(
    model: nn.Module,
    run: RunOptions,
    *,
    task: Task | None = None,
    evaluate: Evaluate | None = None,
    retrain: Retrain | None = None,
    calibration: Iterable[Any] | None = None,
    forward: Forward | None = None,
    given: Components | None = None,
) -> int:
    """Join the study ``run.study_name`` in ``run.storage`` (URL, journal file or Optuna storage) and run its
    trials until it holds ``run.n_trials`` finished ones (None: the cap its creator gave) or
    ``run.timeout`` seconds pass; returns how many ran here.

    Everything that defines the study comes from it (its :class:`SearchSettings`); ``model`` must be the
    dense model it was made with (checked by digest), with ``task`` or ``evaluate``/``retrain`` as when it
    was made. ``run.artifacts`` (default: the folder the study records) receives the weights of trials
    that beat the best so far.
    """
    _check_model(model)
    given = given or Components()
    if run.storage is None or run.study_name is None:
        raise StudyError("run_worker needs run.storage and run.study_name: the study to join.")
    work = Workload(task, evaluate, retrain, None if calibration is None else list(calibration), forward)
    store, study = join_study(run.storage, run.study_name, wait=run.wait, heartbeat=run.heartbeat, grace=run.grace)
    try:  # however the worker ends, a database storage's pooled connections are closed
        settings = stored_settings(study)
        record = read_study(study)
        n_trials = run.n_trials if run.n_trials is not None else record.n_trials  # default: the creator's cap
        if n_trials is None and run.timeout is None:
            raise StudyError(f"Study {run.study_name!r} records no trial cap; give n_trials (--trials) or timeout (--timeout).")
        check_model(settings, model, run.study_name)
        plan = make_plan(model, settings, work, given, run.cache_dir)
        study.sampler, study.pruner = plan.sampler, plan.pruner
        def setup() -> None:
            set_up(study, model, plan, progress=run.progress)

        wait_until_ready(study, on_orphan=setup)
        where = run.artifacts if run.artifacts is not None else read_study(study).artifacts
        objective = _objective(study, model, plan, artifact_store(where) if where is not None else None, n_trials)
        _log.info("worker %s joined study %s", worker_id(), run.study_name)
        ran = run_trials(study, objective, n_trials=n_trials, timeout=run.timeout, grace=run.grace, progress=run.progress)
        finished = len(study.get_trials(deepcopy=False, states=FINISHED))
        if ran == 0 and n_trials is not None and finished >= n_trials:
            _log.info("study %s already holds %d finished trials, its cap of %d: nothing left to run here (give more trials, "
                      "e.g. --trials %d, to run more)", run.study_name, finished, n_trials, n_trials + 8)
        return ran
    finally:
        release(store)
