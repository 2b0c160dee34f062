"""Data-aware (activation-whitened) vs plain SVD factors at equal ranks, before any retrain.

For each space and working point, the ranks are the CE1 rule's (plain curves, one MSE bound); the same
ranks are then built from plain SVD factors and from data-aware factors (512 training samples), and the
test metric is measured without retraining. Writes its section to benchmarks/LOG.md.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/data_aware.py --spaces mnist5k-cnn,dcase-audio,image-compression
"""

from __future__ import annotations

import argparse
import datetime
import platform
from pathlib import Path

import torch
from _report import publish  # benchmarks/_report.py (scripts run from the repository root)

from ranksearch import load_space
from ranksearch.core import (
    calibration_batches,
    count_params,
    evaluate,
    factorize,
    find_layers,
    input_moments,
    layer_factors,
    solve_ratio,
    spectra,
    whitened,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spaces", default="mnist5k-cnn,dcase-audio,image-compression")
    ap.add_argument("--out", default=str(Path(__file__).with_name("LOG.md")))
    args = ap.parse_args()
    rows = []
    for name in args.spaces.split(","):
        space = load_space(name)
        task = space.build_task()
        model = space.build_model(task)
        curves = spectra(model, exclude=space.exclude)
        layers = {n: m for n, m in find_layers(model, space.exclude).eligible.items() if n in curves}
        plain = layer_factors(layers)
        moments = input_moments(model, layers, calibration_batches(task.train, 512))
        aware = {n: whitened(m, moments[n])[1] for n, m in layers.items()}
        dense = evaluate(model, task.test, task.metric)
        for wp in space.working_points:
            sol = solve_ratio(curves, wp, count_params(model))
            ranks = {n: r for n, r in sol.ranks.items() if r is not None}
            a = evaluate(factorize(model, ranks, plain), task.test, task.metric)
            b = evaluate(factorize(model, ranks, aware), task.test, task.metric)
            rows.append((name, wp, task.metric, dense, a, b))
            print(rows[-1], flush=True)
    publish([
        f"## Data-aware vs plain SVD factors ({', '.join(args.spaces.split(','))}): before retrain ({datetime.date.today()})",
        "",
        f"Command: `OMP_WAIT_POLICY=PASSIVE python benchmarks/data_aware.py --spaces {args.spaces}`  ",
        f"Machine: {platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}. Ranks: the CE1 rule at each "
        "working point; same ranks for both columns; test split; no retrain; 512 calibration samples from the training split.",
        "",
        "| space | WP | metric | dense | plain SVD | data-aware | data-aware - plain |",
        "|---|---|---|---|---|---|---|",
        *[f"| {n} | {wp} | {m} | {d:.4f} | {a:.4f} | {b:.4f} | {b - a:+.4f} |" for n, wp, m, d, a, b in rows],
    ], args.out)


if __name__ == "__main__":
    main()
