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

from ranksearch.errors import StorageError, StudyError
from ranksearch.settings import SearchSettings

__all__ = ["ATTR", "KEEP_ON_RETRY", "StudyAttrs", "artifact_store", "check_storage", "claim_setup", "create_or_join", "fail_dead_trials",
           "open_storage", "retry_trial", "settle", "storage_url", "wait_until_ready", "worker_alive", "worker_id"]

_log = logging.getLogger(__name__)
ATTR = "ranksearch:"  #: prefix of every study user attribute ranksearch writes
KEEP_ON_RETRY = ("method", "log10w", "log2r", "anchor", "redraws")  #: user attrs a retried trial keeps: what it allocates, exactly
HEARTBEAT_S, GRACE_S = 5, 20  #: default heartbeat interval and grace period of database storages (seconds)


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
        clean.user_attrs = {k: v for k, v in trial.user_attrs.items() if k in KEEP_ON_RETRY}
        clean.system_attrs = {k: v for k, v in trial.system_attrs.items() if k in ("failed_trial", "retry_history")}
        super().__call__(study, clean)
        _log.info("trial %d %s; its allocation will run again", trial.number,
                  "was interrupted" if trial.user_attrs.get("interrupted") else "lost its worker")


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
        raise StorageError(f"Storage {url!r} does not exist; give the journal file of the study (OUT/study.journal) or its database URL.")
    if path.is_dir():
        raise StorageError(f"Storage {url!r} is a folder; give a journal file path (e.g. {str(path / 'study.journal')!r}) or a database URL.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    except OSError as e:
        raise StorageError(f"Storage {url!r} cannot be opened ({e.strerror or e}); give a writable journal file path.") from None


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
    else:
        check_writable(url, folder=False, what="Storage")


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


class StudyAttrs:
    """The ranksearch user attributes of one study (read and written through its storage)."""

    def __init__(self, study: optuna.Study) -> None:
        self.study = study

    def get(self, key: str, default: Any = None) -> Any:
        return self.study._storage.get_study_user_attrs(self.study._study_id).get(ATTR + key, default)

    def prefixed(self, prefix: str) -> dict[str, Any]:
        """Every attr whose key starts with ``prefix``, by the rest of the key."""
        attrs = self.study._storage.get_study_user_attrs(self.study._study_id)
        return {k[len(ATTR + prefix):]: v for k, v in attrs.items() if k.startswith(ATTR + prefix)}

    def set(self, key: str, value: Any) -> None:
        self.study.set_user_attr(ATTR + key, value)

    def settings(self) -> SearchSettings | None:
        raw = self.get("settings")
        return None if raw is None else SearchSettings.from_dict(raw, origin=f"the settings stored in study {self.study.study_name!r}")


def create_or_join(storage: BaseStorage, name: str, settings: SearchSettings | None, *, resume: bool,
                   sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner,
                   source: dict[str, Any] | None = None, wait_s: float = 60.0) -> tuple[optuna.Study, bool]:
    """The study ``name``: created with ``settings`` (this process sets it up: returns True), or
    joined (False). A joined study must hold settings equal to ``settings`` (None: take the stored
    ones); one line names the first field that differs."""
    created = False
    names = {s.study_name for s in storage.get_all_studies()}
    exists_msg = (f"Study {name!r} already exists in this storage; pass --resume (resume=True) to continue or join it, "
                  "or choose another --out / --study-name.")
    if name in names and not resume:
        raise StudyError(exists_msg)
    if name not in names:
        if settings is None:
            raise StudyError(f"Study {name!r} is not in this storage; studies there: {sorted(n for n in names if ':setup-lock:' not in n)[:10]}.")
        try:  # atomic: of several processes starting at once exactly one creates it
            storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], name)
            created = True
        except DuplicatedStudyError:
            if not resume:
                raise StudyError(exists_msg) from None
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    attrs = StudyAttrs(study)
    if created:  # the setup's owner first: a joiner waits for the settings, then sees the setup taken
        attrs.set("setup", {"state": "running", "owner": worker_id(), "at": time.time()})
        attrs.set("source", source or {})
        attrs.set("settings", settings.to_dict())  # type: ignore[union-attr]
        return study, True
    deadline = time.monotonic() + wait_s
    while (stored := attrs.settings()) is None:  # its creator writes them right after creating it
        if time.monotonic() > deadline:
            raise StudyError(f"Study {name!r} holds no ranksearch settings (made by an older ranksearch or by "
                             "another tool); start a new study (another --out or --study-name).")
        time.sleep(0.2)
    if settings is not None and (diff := settings.differences(stored)):
        field, mine, theirs = diff[0]
        raise StudyError(f"Study {name!r} was created with {field}={theirs!r}, this process has {field}={mine!r}"
                         f"{f' (and {len(diff) - 1} more differences)' if len(diff) > 1 else ''}; use the study's "
                         "settings or another study (--study-name / --out).")
    return study, False


def claim_setup(study: optuna.Study) -> bool:
    """Take over an unfinished setup whose owner died; True when this process now owns it. Exactly
    one of several processes that try at once succeeds (atomic study creation of a lock study)."""
    attrs = StudyAttrs(study)
    setup = attrs.get("setup") or {}
    if setup.get("state") == "ready":
        return False
    mine = setup.get("owner") == worker_id()  # an earlier call in this process was interrupted
    if not mine and setup.get("owner") and _owner_alive(setup):
        return False
    generation = int(setup.get("generation", 0)) + 1
    lock = f"{study.study_name}:setup-lock:{generation}"
    try:
        study._storage.create_new_study([optuna.study.StudyDirection.MAXIMIZE], lock)
    except DuplicatedStudyError:
        return False
    attrs.set("setup", {"state": "running", "owner": worker_id(), "at": time.time(), "generation": generation})
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
    attrs, said = StudyAttrs(study), False
    while (setup := attrs.get("setup") or {}).get("state") != "ready":
        if claim_setup(study):
            on_orphan()
            return
        if not said:
            _log.info("study %s: waiting for its setup by %s (sensitivity, enqueued allocations)", study.study_name, setup.get("owner"))
            said = True
        time.sleep(poll_s)


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
        worker = t.user_attrs.get("worker")
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

