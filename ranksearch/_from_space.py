"""A study made on a space, known only by its storage: join it as a worker, or export its best trial.

The study records its space and where its dense weights came from, so a process with the storage URL
rebuilds the model (and task) from them: what ``ranksearch worker`` / ``export`` and the worker
processes of ``search(workers=K)`` (:func:`main`, :mod:`ranksearch._workers`) do.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from ranksearch._api import run_worker
from ranksearch._process import exit_interrupted, interrupt, log_to_stderr, one_line
from ranksearch._workers import Job
from ranksearch.core._allocation import apply, factor_kind
from ranksearch.core._calibrate import calibration_batches
from ranksearch.core._config import RankConfig
from ranksearch.core._spectra import spectra
from ranksearch.core._task import Task
from ranksearch.errors import RankSearchError
from ranksearch.results._collect import SearchResult
from ranksearch.results._export import export_study
from ranksearch.spaces._space import Space, cache_root, list_spaces, load_space
from ranksearch.study._join import create_or_join, join_study, stored_settings
from ranksearch.study._loop import TrialsFailing
from ranksearch.study._plan import Workload, check_model, make_plan
from ranksearch.study._record import TrialRecord
from ranksearch.study._settings import RunOptions
from ranksearch.study._storage import artifact_store, open_storage, read_study, release
from ranksearch.study._vocab import FactorKind

__all__ = ["config_space", "export_from_space", "join_from_space", "main", "space_model", "study_space"]

_log = logging.getLogger(__name__)


def study_space(study: optuna.Study, weights: str | os.PathLike[str] | None = None, data: str | None = None) -> Space:
    """The space a study was made on, with local weights and data (the ones given, else what the study names)."""
    settings = stored_settings(study)
    if settings.space is None:
        raise RankSearchError("The study was made from Python without a space; join it from Python with ranksearch.run_worker().")
    source = read_study(study).source or {}
    space = load_space(settings.space).with_weights(str(weights) if weights else source.get("weights"))
    data = data or settings.data
    return space.with_data(data)


def join_from_space(run: RunOptions, *, weights: str | None = None, data: str | None = None) -> int:
    """Join the study ``run.study_name`` in ``run.storage`` with the model and task rebuilt from its space
    and run its trials (:func:`~ranksearch.run_worker`); returns how many ran here."""
    if run.storage is None or run.study_name is None:
        raise RankSearchError("joining a study needs its storage and its name (--storage, --study-name).")
    store, study = join_study(run.storage, run.study_name, wait=run.wait, heartbeat=run.heartbeat, grace=run.grace)
    try:
        space = study_space(study, weights, data)
        task = space.build_task()
        model = space.build_model(task, progress=run.progress)
        cache = run.cache_dir if run.cache_dir is not None else cache_root() / "spectra"
        return run_worker(model, run.replace(storage=store, cache_dir=cache), task=task)
    finally:
        release(store)


def export_from_space(storage: str, study_name: str, out_dir: str | Path, *, weights: str | None = None,
                      artifacts: str | None = None, trial: int | None = None) -> tuple[SearchResult, Space]:
    """Write the best trial so far of a space's study (or its trial number ``trial``: one that uploaded no weights
    is retrained again, with the study's seed) into ``out_dir`` (also while workers run)."""
    store = open_storage(storage, existing=True)
    try:
        study, _ = create_or_join(store, study_name, None, resume=True)
        settings = stored_settings(study)
        record = read_study(study)
        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):  # before the model is built
            raise RankSearchError(f"No trial of study {study_name!r} has completed yet; export it once one has (its workers may "
                                  "still be running).")
        where: Any = artifacts or record.artifacts
        if where is None:
            raise RankSearchError(f"Study {study_name!r} records no artifact folder; pass --artifacts with the folder its workers wrote to.")
        arts = artifact_store(where, existing=True)
        space = study_space(study, weights)
        model = space.build_model()
        check_model(settings, model, study_name)
        curves = spectra(model, cache_dir=cache_root() / "spectra", exclude=settings.exclude)
        def rebuild(t: FrozenTrial) -> nn.Module:  # only an asked-for trial without weights: its retrain again
            plan = make_plan(model, settings, Workload(task=space.build_task()), cache_dir=cache_root() / "spectra")
            return plan.with_stored(record).retrained(model, TrialRecord.of(t))

        result = export_study(study, model, curves, out_dir, artifacts=arts, source=record.source, trial=trial,
                              rebuild=rebuild if trial is not None else None)
        return result, space
    finally:
        release(store)


def config_space(cfg: RankConfig, path: str | os.PathLike[str], name: str | None = None, *, trust: bool = False) -> Space:
    """The space of a rank config: ``name`` when given (it must be the config's), else the installed space it
    names. A space file is code (its factories are imported and called), so the file a config records is
    loaded only with ``trust`` (``--trust-space``): a config alone never runs code the user did not name."""
    recorded = cfg.source.get("space")
    if name is not None:
        space = load_space(name)
        if recorded not in (None, space.name):
            raise RankSearchError(f"Config {str(path)!r} was made for space {recorded!r}, not {space.name!r}.")
        return space
    if isinstance(recorded, str) and recorded in list_spaces():
        return load_space(recorded)
    file = cfg.source.get("space_file")
    if isinstance(file, str) and Path(file).is_file():
        if not trust:
            raise RankSearchError(f"Config {str(path)!r} was made from the space file {file!r}, which is code ranksearch would run; "
                                  "name it yourself with --space FILE (or pass --trust-space).")
        space = load_space(file)
        if recorded in (None, space.name):
            return space
    raise RankSearchError(f"Config {str(path)!r} names no installed space{f' ({recorded!r})' if recorded else ''}; "
                          "pass --space NAME or a .yaml file.")


def space_model(space: Space, cfg: RankConfig, *, factors: FactorKind | None = None, allow_growth: bool = False,
                task: Task | None = None, progress: bool = False) -> nn.Module:
    """The config's ranks applied to the space's dense model, with the factors its trial started from
    (data-aware ones rebuilt from the space's calibration data) or ``factors``."""
    kind = factor_kind(cfg, factors)
    data_aware = kind is FactorKind.DATA_AWARE
    if data_aware and space.task_factory is None:
        raise RankSearchError(f"The config's trial used data-aware factors, which need space {space.name!r}'s calibration data, but "
                              "the space has no task; pass --factors plain for plain SVD factors.")
    task = task if task is not None or not data_aware else space.build_task()
    model = space.build_model(task, allow_random=True, progress=progress)
    calibration = calibration_batches(task.train) if data_aware and task is not None else None
    return apply(model, cfg, calibration=calibration, forward=task.forward if task is not None else None, factors=kind,
                 allow_growth=allow_growth)

def main(argv: list[str] | None = None) -> int:
    """A worker process: join the study of the :class:`Job` given as JSON and run its trials."""
    job = Job(**json.loads((argv if argv is not None else sys.argv[1:])[0]))
    log_to_stderr(job.quiet)
    signal.signal(signal.SIGTERM, interrupt)
    torch.set_num_threads(job.threads)
    run = RunOptions(n_trials=job.n_trials, timeout=job.timeout, storage=job.storage, study_name=job.study_name,
                     artifacts=job.artifacts, heartbeat=job.heartbeat, grace=job.grace)
    try:
        ran = join_from_space(run, weights=job.weights)
    except (RankSearchError, OSError) as e:
        print(f"ranksearch worker: error: {one_line(e)}", file=sys.stderr)
        return 2
    except TrialsFailing as e:
        print(f"ranksearch worker: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ranksearch worker: interrupted; finished trials are kept", file=sys.stderr)
        return 130
    _log.info("worker done: %d trials run here", ran)
    return 0


if __name__ == "__main__":
    code = main()
    if code == 130:
        exit_interrupted()
    sys.exit(code)
