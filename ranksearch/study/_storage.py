"""Where a study lives: Optuna storages, artifacts, and what ranksearch writes into a study.

The one module that knows Optuna storage details. A study is the source of truth of a search: its
settings, the dense model's metric, the sensitivity table and the prior's centre are study user
attributes (keys under ``ranksearch:``), the enqueued allocations are its waiting trials, and the best
weights are Optuna artifacts. Any process with the storage URL can join, continue or export it.

* Storages: a journal file (one machine; the default, ``OUT/study.journal``) or a database URL
  (``postgresql://`` for several machines, with heartbeats: a dead worker's trial is failed after the
  grace period and run again by another worker through Optuna's retry callback). On a journal file the
  same is done by checking the process id of a trial's worker on this host.
* Setup exactly once: the process whose ``create_new_study`` succeeds (atomic in every storage) sets
  the study up; a process that joins waits until the study says ``ready``. Should the setting-up process
  die, one joiner takes over, chosen by the same atomic study creation (a lock study).
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.exceptions import DuplicatedStudyError, UpdateFinishedTrialError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from ranksearch.errors import NoSuchStudy, StorageError
from ranksearch.study._journal import check_journal
from ranksearch.study._record import StudyRecord, TrialRecord
from ranksearch.study._settings import GRACE_S, HEARTBEAT_S

__all__ = ["all_trials", "artifact_store", "check_storage", "create_lock_study", "fail_dead_trials", "fail_running", "open_storage",
           "read_study", "release", "retry_trial", "settle", "storage_url", "trial_by_number", "worker_alive", "worker_id",
           "write_frozen_trial", "write_study", "write_trial"]

_log = logging.getLogger(__name__)


def worker_id() -> str:
    """``host:pid`` of this process, recorded on the trials it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_alive(worker: str | None) -> bool:
    """Whether the process ``host:pid`` is alive. Workers on other hosts are presumed alive (a database
    storage's heartbeat fails their trials if they die)."""
    if not worker:
        return False
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return not _zombie(int(pid))


def _zombie(pid: int) -> bool:
    """A killed process its parent has not reaped yet (Linux; elsewhere: no)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


class _Retry(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a stale trial, keeping only the user attrs that say what to allocate (a
    stale ``worker`` attr would make the new trial look dead before it starts)."""

    def __init__(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        clean = copy.deepcopy(trial)
        record = TrialRecord.of(trial)
        clean.user_attrs = record.allocation().to_attrs()
        clean.system_attrs = {k: v for k, v in trial.system_attrs.items() if k in ("failed_trial", "retry_history")}
        super().__call__(study, clean)
        _log.info("trial %d %s; its allocation will run again", trial.number,
                  "was interrupted" if record.interrupted else "lost its worker")


def retry_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Enqueue ``trial``'s allocation again (it failed without a result: killed, interrupted)."""
    _Retry()(study, trial)


def storage_url(storage: str | None, out_dir: str | os.PathLike[str] | None) -> str | None:
    """The storage a search uses: ``storage`` as given, or the journal file in ``out_dir``."""
    if storage is not None:
        return storage if "://" in storage else str(Path(storage).resolve())
    return None if out_dir is None else str((Path(out_dir) / "study.journal").resolve())


def open_storage(storage: str | BaseStorage | None, out_dir: str | os.PathLike[str] | None = None, *,
                 heartbeat: int = HEARTBEAT_S, grace: int = GRACE_S, existing: bool = False) -> BaseStorage:
    """An Optuna storage: a database URL (with heartbeats and retry of a dead worker's trial), a
    journal file path, by default ``study.journal`` in ``out_dir``, or in memory without either.
    ``existing``: a journal file must exist already (joining or exporting a study)."""
    if isinstance(storage, BaseStorage):
        return storage
    url = storage_url(storage, out_dir)
    if url is None:
        return optuna.storages.InMemoryStorage()
    if "://" in url:
        return _rdb(url, heartbeat, grace)
    path = Path(url)
    if existing and not path.is_file():
        raise NoSuchStudy(f"Storage {url!r} does not exist; give the journal file of the study (OUT/study.journal) or its database URL.")
    if path.is_dir():
        raise StorageError(f"Storage {url!r} is a folder; give a journal file path (e.g. {str(path / 'study.journal')!r}) or a database URL.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            check_journal(path)
        backend = JournalFileBackend(str(path))
    except OSError as e:
        raise StorageError(f"Storage {url!r} cannot be opened ({e.strerror or e}); give a writable journal file path.") from None
    try:
        return JournalStorage(backend)  # reads the whole journal
    except Exception as e:  # records that are JSON but not operations Optuna can replay
        raise StorageError(f"Journal {url!r} cannot be read ({type(e).__name__}: {str(e)[:120]}); restore it from a copy, or start "
                           "a new study (another --out or --storage).") from None


_DRIVERS = {"postgresql": ("psycopg", "pip install 'ranksearch[postgres]'"),
            "postgresql+psycopg": ("psycopg", "pip install 'ranksearch[postgres]'"),
            "postgresql+psycopg2": ("psycopg2", "pip install psycopg2-binary"),
            "mysql": ("MySQLdb", "pip install mysqlclient"), "mysql+pymysql": ("pymysql", "pip install pymysql")}


def check_storage(storage: str | None, out_dir: str | os.PathLike[str] | None) -> None:
    """Fail fast, before any work and without writing: a journal file that can be written, or a
    database URL whose driver is installed."""
    from ranksearch._io import check_writable

    url = storage_url(storage, out_dir)
    if url is None:
        return
    if "://" in url:
        _check_driver(url)
        _check_reachable(url)
    else:
        check_writable(url, folder=False, what="Storage")


def _check_reachable(url: str) -> None:
    """Connect once (and let go): a database that is down or a URL it refuses fails here, not after training."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url)
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError, ImportError) as e:
        raise StorageError(f"Storage URL {_redact(url)!r} is not usable ({str(e).splitlines()[0][:160]}); e.g. "
                           "postgresql://user@host/db or a journal file path.") from None
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.SQLAlchemyError as e:
        raise StorageError(f"Storage {_redact(url)!r} cannot be reached ({str(e).splitlines()[0][:160]}); "
                           "check that the database server runs and the URL is right.") from None
    finally:
        engine.dispose()


def _check_driver(url: str) -> None:
    scheme = url.split("://", 1)[0]
    if scheme in _DRIVERS:
        module, hint = _DRIVERS[scheme]
        try:
            __import__(module)
        except ImportError:
            raise StorageError(f"Storage {_redact(url)!r} needs the {module} driver, which is not installed: {hint}.") from None


def release(storage: BaseStorage) -> None:
    """Close a database storage's pooled connections (its engine reconnects when used again): a process
    that runs many searches would otherwise keep each one's idle connections until the server refuses
    new clients. Other storages hold none."""
    if isinstance(storage, RDBStorage):
        storage.engine.dispose()


def _rdb(url: str, heartbeat: int, grace: int, tries: int = 5) -> RDBStorage:
    """An RDB storage with heartbeats; workers that start together may race to create the schema
    (one gets an integrity error), so creation is retried."""
    import sqlalchemy

    _check_driver(url)
    if heartbeat < 1 or grace <= heartbeat:
        raise StorageError(f"heartbeat {heartbeat} s and grace period {grace} s: give heartbeat >= 1 and grace > heartbeat.")
    for attempt in range(tries):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna, and what a shared study needs
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, heartbeat_interval=heartbeat, grace_period=grace, heartbeat_stale_trial_callback=_Retry(),
                                  engine_kwargs={"pool_pre_ping": True})
        except sqlalchemy.exc.ArgumentError as e:
            raise StorageError(f"Storage URL {_redact(url)!r} is not usable ({e}); e.g. postgresql://user@host/db or a journal file path.") from None
        except (sqlalchemy.exc.NoSuchModuleError, ImportError) as e:
            raise StorageError(f"Storage URL {_redact(url)!r} names an unknown database or driver ({e}).") from None
        except sqlalchemy.exc.SQLAlchemyError as e:
            if attempt == tries - 1:
                raise StorageError(f"Storage {_redact(url)!r} cannot be reached ({str(e).splitlines()[0][:160]}); "
                                 "check that the database server runs and the URL is right.") from None
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def _redact(url: str) -> str:
    """The URL without its password."""
    head, sep, rest = url.partition("://")
    if "@" in rest:
        cred, _, host = rest.rpartition("@")
        user = cred.split(":", 1)[0]
        return f"{head}{sep}{user}:***@{host}" if ":" in cred else url
    return url


def artifact_store(path: str | os.PathLike[str] | Any, *, existing: bool = False) -> Any:
    """A file-system artifact store (any shared path for several machines); an artifact store object
    is returned as it is. ``existing``: the folder must exist (exporting what workers wrote)."""
    if not isinstance(path, (str, os.PathLike)):
        return path
    p = Path(path)
    if existing and not p.is_dir():
        raise StorageError(f"Artifact folder {str(p)!r} does not exist; pass --artifacts with the folder the workers wrote to.")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"Artifact folder {str(p)!r} cannot be created ({e.strerror or e}); give a writable folder.") from None
    return FileSystemArtifactStore(p)


def read_study(study: optuna.Study) -> StudyRecord:
    """The study's :class:`~ranksearch.study._record.StudyRecord`, read from its storage now."""
    return StudyRecord.from_attrs(study._storage.get_study_user_attrs(study._study_id), origin=f"study {study.study_name!r}")


def write_study(study: optuna.Study, patch: StudyRecord) -> None:
    """Set the study attributes of the fields ``patch`` holds."""
    for key, value in patch.to_attrs().items():
        study.set_user_attr(key, value)


def write_trial(trial: optuna.Trial, patch: TrialRecord) -> None:
    """Set the user attributes of the fields ``patch`` holds on a running trial."""
    for key, value in patch.to_attrs().items():
        trial.set_user_attr(key, value)


def write_frozen_trial(study: optuna.Study, trial: FrozenTrial, patch: TrialRecord) -> None:
    """:func:`write_trial` for a trial known by its frozen copy (a pruner's view of it)."""
    for key, value in patch.to_attrs().items():
        study._storage.set_trial_user_attr(trial._trial_id, key, value)


def all_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Every trial of the study, read from its storage (also when the study object filters them, as
    Optuna's Hyperband pruner does for the sampler)."""
    return study._storage.get_all_trials(study._study_id, deepcopy=False)


def trial_by_number(study: optuna.Study, number: int) -> FrozenTrial:
    storage = study._storage
    return storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study._study_id, number))


def fail_running(study: optuna.Study, trial: FrozenTrial, patch: TrialRecord) -> FrozenTrial:
    """Fail a trial left RUNNING (interrupted outside its objective) with ``patch`` set; the trial as it is now."""
    write_frozen_trial(study, trial, patch)
    study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    return study._storage.get_trial(trial._trial_id)


def create_lock_study(study: optuna.Study, name: str) -> bool:
    """Create the empty study ``name`` beside ``study`` (atomic in every storage); False if it exists."""
    try:
        study._storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], name)
    except DuplicatedStudyError:
        return False
    return True


def fail_dead_trials(study: optuna.Study, min_age_s: float = 30.0) -> list[int]:
    """Fail the RUNNING trials of workers that died on this host and enqueue their allocations again.

    Database storages do this by heartbeat inside Optuna; this covers the journal file. A trial too
    young to carry its worker attr yet is left alone for ``min_age_s``. Several workers may race: only
    the one whose state change lands retries the trial.
    """
    if isinstance(study._storage, RDBStorage):
        optuna.storages.fail_stale_trials(study)  # heartbeat: also runs the retry callback
        return []
    failed = []
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = TrialRecord.of(t).worker
        started = t.datetime_start.timestamp() if t.datetime_start else now
        if worker_alive(worker) or (worker is None and now - started < min_age_s):
            continue
        try:
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:
            continue
        retry_trial(study, study._storage.get_trial(t._trial_id))
        failed.append(t.number)
    return failed


def settle(study: optuna.Study, grace: float, sleep: Callable[[float], None] = time.sleep) -> None:
    """When a worker is done: fail trials left RUNNING by dead workers (their allocations are queued
    again), waiting up to ``grace`` seconds for their heartbeats to go stale; trials of live workers
    are left to them."""
    deadline = time.monotonic() + (grace if isinstance(study._storage, RDBStorage) else 0)
    while True:
        fail_dead_trials(study)
        if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) or time.monotonic() >= deadline:
            return
        sleep(min(1.0, max(0.0, deadline - time.monotonic())))

