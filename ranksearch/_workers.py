"""Worker processes on this machine: ``search(..., run=RunOptions(workers=K))`` starts K Python processes
of the library (``python -m ranksearch._from_space JOB``), each joining the study with an equal share of
the cores and, on CUDA, a GPU of ``run.gpus`` (round-robin); the caller waits for them.

A worker process takes one JSON argument (:class:`Job`). Its exit code says how it ended: 0 done, 1 its
trials kept failing, 2 bad input, 130 interrupted (its running trial was enqueued again).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ranksearch.study._settings import RunOptions


__all__ = ["Job", "WorkersFailed", "spawn", "worker_commands"]

_log = logging.getLogger(__name__)


class WorkersFailed(RuntimeError):
    """A worker process started by ``search(workers=K)`` exited with an error."""


@dataclass(frozen=True)
class Job:
    """What one worker process runs: the study, its trial cap and timeout, where its weights go, and
    how it logs."""

    storage: str
    study_name: str
    n_trials: int | None
    timeout: float | None
    artifacts: str | None
    heartbeat: int
    grace: int
    threads: int
    weights: str | None = None
    quiet: bool = False


def worker_commands(run: RunOptions, study_name: str, artifacts: object) -> list[tuple[list[str], dict[str, str]]]:
    """Command line and environment of each of ``run.workers`` worker processes: worker k gets an equal
    share of the cores and GPU ``run.gpus[k % len(run.gpus)]``."""
    from ranksearch.study._storage import storage_url

    url = storage_url(run.storage if isinstance(run.storage, str) else None, run.out_dir)
    assert url is not None, "search() checks that several workers have a storage URL or out_dir"
    threads = max(1, (os.cpu_count() or 1) // run.workers)
    source = run.source or {}
    job = Job(url, study_name, run.n_trials, run.timeout, str(artifacts) if artifacts is not None else None, run.heartbeat, run.grace,
              threads, str(source["weights"]) if source.get("weights") else None,
              quiet=not logging.getLogger("ranksearch").isEnabledFor(logging.INFO))
    out = []
    for i in range(run.workers):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
        if run.gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(run.gpus[i % len(run.gpus)])
        out.append(([sys.executable, "-m", "ranksearch._from_space", json.dumps(dataclasses.asdict(job))], env))
    return out


def spawn(run: RunOptions, study_name: str, artifacts: object) -> None:
    """Run ``run.workers`` worker processes on the study and wait for them (Ctrl-C and SIGTERM are passed
    on; each worker then re-enqueues its interrupted trial)."""
    procs = [subprocess.Popen(cmd, env=env) for cmd, env in worker_commands(run, study_name, artifacts)]
    _log.info("%d workers started on study %s%s", run.workers, study_name, f" over GPUs {list(run.gpus)}" if run.gpus else "")
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

