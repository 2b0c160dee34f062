"""Creating or joining a study, and setting it up exactly once.

The process whose ``create_new_study`` succeeds (atomic in every storage) owns the setup; a process that
joins waits until the study says ``ready``. Should the setting-up process die, one joiner takes over,
chosen by the same atomic study creation (a lock study).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import DuplicatedStudyError
from optuna.storages import BaseStorage

from ranksearch.errors import NoSuchStudy, StudyError
from ranksearch.study._record import StudyRecord
from ranksearch.study._settings import GRACE_S, HEARTBEAT_S, SearchSettings
from ranksearch.study._storage import (
    create_lock_study,
    open_storage,
    read_study,
    release,
    storage_url,
    worker_alive,
    worker_id,
    write_study,
)

__all__ = ["claim_setup", "create_or_join", "join_study", "precheck", "stored_settings", "wait_until_ready"]

_log = logging.getLogger(__name__)


def create_or_join(storage: BaseStorage, name: str, settings: SearchSettings | None, *, resume: bool,
                   sampler: optuna.samplers.BaseSampler | None = None, pruner: optuna.pruners.BasePruner | None = None,
                   source: Mapping[str, Any] | None = None, wait_s: float = 60.0) -> tuple[optuna.Study, bool]:
    """The study ``name``: created with ``settings`` (this process sets it up: returns True), or
    joined (False). A joined study must hold settings equal to ``settings`` (None: take the stored
    ones); one line names the first field that differs."""
    created = False
    names = {s.study_name for s in storage.get_all_studies()}
    if name in names and not resume:
        raise _exists(name)
    if name not in names:
        if settings is None:
            raise NoSuchStudy(f"Study {name!r} is not in this storage; studies there: {sorted(n for n in names if ':setup-lock:' not in n)[:10]}.")
        try:  # atomic: of several processes starting at once exactly one creates it
            directions = [optuna.study.StudyDirection.MAXIMIZE]
            if settings.pareto:  # a Pareto study: the metric up, the ratio down
                directions.append(optuna.study.StudyDirection.MINIMIZE)
            storage.create_new_study(directions, name)
            created = True
        except DuplicatedStudyError:
            if not resume:
                raise _exists(name) from None
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    if created:  # the setup's owner first: a joiner waits for the settings, then sees the setup taken
        write_study(study, StudyRecord(setup={"state": "running", "owner": worker_id(), "at": time.time()}))
        write_study(study, StudyRecord(source=dict(source or {})))
        write_study(study, StudyRecord(settings=settings))  # last: a joiner that sees the settings sees the rest
        return study, True
    stored = stored_settings(study, wait_s)
    if settings is not None:
        _refuse_differences(name, settings.differences(stored))
    return study, False


def _exists(name: str) -> StudyError:
    return StudyError(f"Study {name!r} already exists in this storage; pass --resume (resume=True) to continue or join it, "
                      "or choose another --out / --study-name.")


def _refuse_differences(name: str, diff: list[tuple[str, Any, Any]]) -> None:
    if diff:
        field, mine, theirs = diff[0]
        raise StudyError(f"Study {name!r} was created with {field}={theirs!r}, this process has {field}={mine!r}"
                         f"{f' (and {len(diff) - 1} more differences)' if len(diff) > 1 else ''}; use the study's "
                         "settings or another study (--study-name / --out).")


def precheck(storage: str | None, out_dir: str | os.PathLike[str] | None, name: str, settings: SearchSettings, *, resume: bool,
             heartbeat: int = HEARTBEAT_S, grace: int = GRACE_S) -> None:
    """Before any model is built or trained: a study already in the storage is joined only with ``resume``
    and the same settings (those the model decides, :func:`_decided_later`, are compared once it is built)."""
    url = storage_url(storage, out_dir)
    if url is None or ("://" not in url and not Path(url).is_file()):
        return
    store = open_storage(url, heartbeat=heartbeat, grace=grace)
    try:
        if name not in {s.study_name for s in store.get_all_studies()}:
            return
        if not resume:
            raise _exists(name)
        study = optuna.load_study(study_name=name, storage=store)
        stored = read_study(study).settings
        if stored is not None:
            _refuse_differences(name, [d for d in settings.differences(stored) if not _decided_later(d[0], d[1])])
    finally:
        release(store)


def _decided_later(field: str, mine: Any) -> bool:
    """Whether a setting is resolved once the model and the workload are known (and compared then): the weights digest,
    an ``auto`` rank grid or factor kind, a default ``qat``."""
    return field == "weights_digest" or mine == "auto" or (field == "qat" and mine is None)


def join_study(storage: str | BaseStorage, name: str, *, wait: float = 0.0, heartbeat: int = HEARTBEAT_S, grace: int = GRACE_S,
               poll_s: float = 1.0) -> tuple[BaseStorage, optuna.Study]:
    """Open ``storage`` and join the study ``name`` in it, waiting up to ``wait`` seconds for the study (and
    its journal file) to appear: a worker a batch scheduler starts with the search that creates the study."""
    deadline, said = time.monotonic() + wait, False
    while True:
        store = None
        try:
            store = open_storage(storage, heartbeat=heartbeat, grace=grace, existing=True)
            study, _ = create_or_join(store, name, None, resume=True)
            return store, study
        except NoSuchStudy:
            if store is not None:
                release(store)
            if time.monotonic() >= deadline:
                raise
            if not said:
                _log.info("study %s is not in %s yet: waiting up to %.0f s for it", name, storage, wait)
                said = True
            time.sleep(poll_s)


def stored_settings(study: optuna.Study, wait_s: float = 60.0) -> SearchSettings:
    """The settings a study holds (its creator writes them right after creating it: waited for)."""
    deadline = time.monotonic() + wait_s
    while (stored := read_study(study).settings) is None:
        if time.monotonic() > deadline:
            raise StudyError(f"Study {study.study_name!r} holds no ranksearch settings (made by an older ranksearch or by "
                             "another tool); start a new study (another --out or --study-name).")
        time.sleep(0.2)
    return stored


def claim_setup(study: optuna.Study) -> bool:
    """Take over an unfinished setup whose owner died; True when this process now owns it. Exactly
    one of several processes that try at once succeeds (atomic study creation of a lock study)."""
    setup = read_study(study).setup or {}
    if setup.get("state") == "ready":
        return False
    mine = setup.get("owner") == worker_id()  # an earlier call in this process was interrupted
    if not mine and setup.get("owner") and _owner_alive(setup):
        return False
    generation = int(setup.get("generation", 0)) + 1
    if not create_lock_study(study, f"{study.study_name}:setup-lock:{generation}"):
        return False
    write_study(study, StudyRecord(setup={"state": "running", "owner": worker_id(), "at": time.time(), "generation": generation}))
    # the lock study stays: deleted, it could be created again by a process that read the old generation
    _log.info("study %s: the process that set it up is gone; this one takes the setup over", study.study_name)
    return True


def _owner_alive(setup: dict[str, Any], stale_s: float = 600.0) -> bool:
    """A same-host owner by its pid; another host's owner by the age of its last setup heartbeat."""
    owner = str(setup.get("owner"))
    if owner.rpartition(":")[0] == socket.gethostname():
        return worker_alive(owner)
    return time.time() - float(setup.get("at", 0)) < stale_s


def wait_until_ready(study: optuna.Study, on_orphan: Callable[[], None], poll_s: float = 0.5) -> None:
    """Block until the study's setup is done; if its owner dies meanwhile and this process wins the
    takeover, run ``on_orphan`` (which sets it up) and return."""
    said = False
    while not (record := read_study(study)).ready:
        if claim_setup(study):
            on_orphan()
            return
        if not said:
            _log.info("study %s: waiting for its setup by %s (sensitivity, enqueued allocations)", study.study_name,
                      (record.setup or {}).get("owner"))
            said = True
        time.sleep(poll_s)
