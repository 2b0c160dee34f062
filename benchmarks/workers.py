"""Throughput of one study run by 1, 2 and 4 worker processes (``ranksearch search --workers K``).

Each run is a fresh study of the same space and ratio with the same seed; its setup (dense metric,
sensitivity table) runs in the leading process first and is not counted. Measured from the study's
own timestamps: retrained trials (not the ones that reused a twin's value) per minute over the span
from the first trial's start to the last trial's end; the wall time of the whole command is shown
beside it. Pruning is off so that every trial is a full retrain. On a GPU machine pass ``--gpus 0``:
all workers share the one GPU.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/workers.py --spaces mnist5k-cnn,dcase-audio --workers 1,2,4
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch
from _report import publish  # benchmarks/_report.py (scripts run from the repository root)
from optuna.trial import TrialState

from ranksearch import TrialRecord
from ranksearch.study import open_storage


def run(space: str, ratio: float, workers: int, trials: int, gpus: str | None, folder: Path) -> dict:
    out = folder / f"{space}-{workers}"
    cmd = [sys.executable, "-m", "ranksearch.cli", "search", "--space", space, "--ratio", str(ratio), "--trials", str(trials),
           "--workers", str(workers), "--pruner", "none", "--seed", "0", "--out", str(out), "-q"]
    cmd += ["--gpus", gpus] if gpus else []
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    wall = time.perf_counter() - t0
    study = optuna.load_study(study_name=f"{space}@{ratio:g}", storage=open_storage(str(out / "study.journal")))
    done = [t for t in study.get_trials(states=(TrialState.COMPLETE,))]
    retrained = [t for t in done if TrialRecord.of(t).same_as is None]
    span = max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)
    per_trial = statistics.median((t.datetime_complete - t.datetime_start).total_seconds() for t in retrained)
    return {"space": space, "workers": workers, "finished": len(done), "retrained": len(retrained),
            "span_s": span.total_seconds(), "rate": len(retrained) / span.total_seconds() * 60, "wall_s": wall,
            "trial_s": per_trial, "workers_seen": len({TrialRecord.of(t).worker for t in done})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spaces", default="mnist5k-cnn,dcase-audio")
    ap.add_argument("--ratios", default="0.1,0.15", help="one ratio per space")
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--gpus", help="e.g. 0: place every worker on GPU 0")
    ap.add_argument("--out", default=str(Path(__file__).with_name("LOG.md")))
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for space, ratio in zip(args.spaces.split(","), [float(r) for r in args.ratios.split(",")]):
            for k in [int(w) for w in args.workers.split(",")]:
                rows.append(run(space, ratio, k, args.trials, args.gpus, Path(tmp)))
                print(rows[-1], flush=True)
    load_after = os.getloadavg()
    device = torch.cuda.get_device_name(0) if args.gpus and torch.cuda.is_available() else f"{os.cpu_count()} CPU cores"
    cmd = " ".join(["python benchmarks/workers.py", f"--spaces {args.spaces}", f"--ratios {args.ratios}", f"--workers {args.workers}",
                    f"--trials {args.trials}"] + ([f"--gpus {args.gpus}"] if args.gpus else []))
    publish(section(rows, cmd, device, load_before[0], load_after[0], args.spaces), args.out)


def section(rows: list[dict], cmd: str, device: str, load_before: float, load_after: float, spaces: str) -> list[str]:
    """The log section of one run (rows as :func:`run` returns them)."""
    lines = [
        f"## Workers on one study ({', '.join(spaces.split(','))}; {device}): trials per minute ({datetime.date.today()})",
        "",
        f"Command: `OMP_WAIT_POLICY=PASSIVE {cmd}`  ",
        f"Machine: {platform.machine()}, {device}, torch {torch.__version__}; load average before "
        f"{load_before:.2f}, after {load_after:.2f} (1 min).  ",
        "Over the trials' own span (first start to last end; setup excluded; pruning off): finished trials per",
        "minute, and retrained ones (not counting trials that reused the value of a twin with the same ranks);",
        "speed-up against 1 worker of the same space in the same run; median seconds of one retrained trial.",
        "",
        "| space | workers | finished | retrained | median trial s | span s | finished / min | retrained / min | speed-up (finished) | speed-up (retrained) | command wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = next((b for b in rows if b["space"] == r["space"] and b["workers"] == 1), r)
        fin, fin0 = r["finished"] / r["span_s"] * 60, base["finished"] / base["span_s"] * 60
        lines.append(f"| {r['space']} | {r['workers']} | {r['finished']} | {r['retrained']} | {r['trial_s']:.2f} | {r['span_s']:.1f} | "
                     f"{fin:.1f} | {r['rate']:.1f} | {fin / fin0:.2f}x | {r['rate'] / base['rate']:.2f}x | {r['wall_s']:.0f} |")
    return lines


if __name__ == "__main__":
    main()
