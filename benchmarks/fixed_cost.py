"""The fixed cost of a search: what it spends before its first sampled trial, per space.

For each space, a search of one trial at its most aggressive working point sets its study up (spectra,
factors with calibration, the dense model's metric, the sensitivity table), and the study's stored
``fixed_cost`` is reported: seconds per part and evaluations of the model. Writes its section to
benchmarks/LOG.md.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/fixed_cost.py --spaces vit-mnist,dcase-audio
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
from pathlib import Path

import torch
from _report import publish  # benchmarks/_report.py (scripts run from the repository root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spaces", default="vit-mnist,dcase-audio,mnist5k-cnn")
    ap.add_argument("--settings", default="{}", help="JSON of SearchSettings fields (default: ranksearch's defaults)")
    ap.add_argument("--label", default="defaults")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).with_name("LOG.md")))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    from ranksearch import RunOptions, SearchSettings, load_space, search
    from ranksearch.core import find_layers
    from ranksearch.study import read_study

    options = json.loads(args.settings)
    load_before = os.getloadavg()[0]
    rows = []
    for name in args.spaces.split(","):
        space = load_space(name)
        task = space.build_task()
        model = space.build_model(task)  # trained and cached before: not part of the search's cost
        wp = min(space.working_points)
        settings = SearchSettings(target_ratio=wp, model=space.name, retrain=space.retrain, seed=0, exclude=tuple(space.exclude),
                                  rank_multiple=space.rank_multiple, min_rank=space.min_rank, **options)
        res = search(model, settings, task=task, run=RunOptions(n_trials=1))
        cost = read_study(res.study).fixed_cost
        assert cost is not None, f"{name}: the study recorded no fixed cost"
        layers = len(find_layers(model, space.exclude).eligible)
        rows.append((name, wp, layers, len(task.val), cost))  # type: ignore[arg-type]
        print(name, cost, flush=True)
    load_after = os.getloadavg()[0]
    lines = [
        f"## Fixed cost ({', '.join(args.spaces.split(','))}; {args.label}): before the first sampled trial ({datetime.date.today()})",
        "",
        f"Command: `OMP_WAIT_POLICY=PASSIVE python benchmarks/fixed_cost.py --spaces {args.spaces}"
        + (f" --settings '{args.settings}' --label {args.label}" if options else "") + "`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {args.threads} threads, torch {torch.__version__}; "
        f"load average (1 min) before {load_before:.2f}, after {load_after:.2f}.  ",
        "Settings: " + (json.dumps(options) if options else "ranksearch's defaults") + "; one search of 1 trial at the space's "
        "most aggressive working point; the figures are the study's stored `fixed_cost`.",
        "",
        "| space @ WP | layers | val samples | evaluations (dense + sensitivity) | spectra s | factors s | dense s | sensitivity s | total s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, wp, layers, n_val, c in rows:
        lines.append(f"| {name} @ {wp} | {layers} | {n_val:,} | {c['evaluations']} ({c.get('dense_evaluations', 0)} + "
                     f"{c.get('sensitivity_evaluations', 0)}) | {c.get('spectra_s', 0):.1f} | {c.get('factors_s', 0):.1f} | "
                     f"{c.get('dense_s', 0):.1f} | {c.get('sensitivity_s', 0):.1f} | {c['total_s']:.1f} |")
    publish(lines, args.out)


if __name__ == "__main__":
    main()
