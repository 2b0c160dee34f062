"""Solver speed: one proposal (per-layer weights) -> exact ranks, on ResNet50's eligible layers.

Baseline in the same run: the plain CE1 rule (weights all 1). Also times the allocations read from a
sensitivity table (AIMET-style greedy bisection, ranksearch's sensitivity-sum knapsack) on a table of
the real size (every layer at its :func:`~ranksearch.study.probe_ranks`) with synthetic scores
(the timing depends on the table's shape, not on how the scores were measured).
Writes a section to benchmarks/LOG.md.

    python benchmarks/solver.py --model resnet50 --repeats 200
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from _report import publish  # benchmarks/_report.py (scripts run from the repository root)

from ranksearch.core import count_params, solve_ratio, spectra
from ranksearch.study import additive_ranks, greedy_ranks, probe_ranks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--ratio", type=float, default=0.25)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--out", default=str(Path(__file__).with_name("LOG.md")))
    args = ap.parse_args()
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(weights=None)
    curves = spectra(model)
    total = count_params(model)
    rng = np.random.default_rng(0)
    rows = []
    for label, make in (("CE1 rule (weights 1)", lambda: None),
                        ("search proposal (random weights 10^U(-3,3))", lambda: {n: 10 ** rng.uniform(-3, 3) for n in curves})):
        times = []
        for _ in range(args.repeats):
            w = make()
            t0 = time.perf_counter()
            sol = solve_ratio(curves, args.ratio, total, w)
            times.append(time.perf_counter() - t0)
            assert sol.params <= args.ratio * total
        rows.append((label, statistics.median(times) * 1e3, max(times) * 1e3))
    table = {n: [(r, 0.76 - 0.5 * np.exp(-r / (c.max_rank * rng.uniform(0.01, 0.3)))) for r in probe_ranks(c.max_rank)]
             for n, c in curves.items()}
    budget = int(args.ratio * total) - (total - sum(c.dense_params for c in curves.values()))
    for label, fn in (("AIMET-style greedy from the sensitivity table", greedy_ranks),
                      ("sensitivity sum (exact knapsack) from the table", additive_ranks)):
        times = []
        for _ in range(max(1, args.repeats // 10)):
            t0 = time.perf_counter()
            alloc = fn(curves, table, budget)
            times.append(time.perf_counter() - t0)
        assert sum(curves[n].params(r) for n, r in alloc.items()) <= budget
        rows.append((label, statistics.median(times) * 1e3, max(times) * 1e3))
    ranks = sum(c.max_rank for c in curves.values())
    lines = [
        f"## Solver: {args.model}, ratio {args.ratio} ({datetime.date.today()})",
        "",
        f"Command: `python benchmarks/solver.py --model {args.model} --ratio {args.ratio} --repeats {args.repeats}`  ",
        f"Machine: {platform.machine()} {platform.processor() or ''}, {torch.get_num_threads()} threads, numpy {np.__version__}, CPU.  ",
        f"{len(curves)} eligible layers, {ranks} candidate ranks in all; {args.repeats} solves each "
        f"({max(1, args.repeats // 10)} for the table-based allocations, {sum(map(len, table.values()))} measured (layer, rank) cells).",
        "",
        "| proposal | median ms | max ms |",
        "|---|---|---|",
        *[f"| {label} | {med:.2f} | {mx:.2f} |" for label, med, mx in rows],
        "",
    ]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
