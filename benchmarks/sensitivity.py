"""Ways to make the sensitivity table, side by side: do their allocations score the same, at what cost?

For each space and working point, searches of 4 trials (the seed rule, uniform, AIMET-style greedy and
sensitivity sum, each retrained with the space's recipe) differ only in how the sensitivity table behind
the last two is made: a variant is ``kind`` or ``kind:samples`` (measured: the metric; output: the output
fidelity; proxy: the curves calibrated on 24 evaluations; samples: the validation subset the probes run
on). Reported: evaluations spent on the table (and as passes over the whole validation split), seconds,
and the test metric of the two table-based allocations. Writes its section to benchmarks/LOG.md.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/sensitivity.py --spaces vit-mnist --variants measured,output:64,measured:64
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
from pathlib import Path

import torch
from _report import publish  # benchmarks/_report.py (scripts run from the repository root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spaces", default="vit-mnist,mnist5k-cnn")
    ap.add_argument("--variants", default="measured,output:64,measured:64", help="kind or kind:samples, comma-separated")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).with_name("LOG.md")))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    from ranksearch import Method, RunOptions, SearchSettings, TrialRecord, load_space, search
    from ranksearch.study import read_study

    variants = args.variants.split(",")
    load_before = os.getloadavg()[0]
    rows = []
    for name in args.spaces.split(","):
        space = load_space(name)
        task = space.build_task()
        model = space.build_model(task)
        for wp in sorted(space.working_points)[:2]:
            cells = {}
            for v in variants:
                kind, _, samples = v.partition(":")
                settings = SearchSettings(target_ratio=wp, model=space.name, retrain=space.retrain, seed=0, exclude=tuple(space.exclude),
                                          rank_multiple=space.rank_multiple, min_rank=space.min_rank, sensitivity=kind,
                                          sensitivity_samples=int(samples or 0))
                res = search(model, settings, task=task, run=RunOptions(n_trials=4))
                by = {r.method: r for r in map(TrialRecord.of, res.study.trials)}
                cost = read_study(res.study).fixed_cost
                assert cost is not None, f"{name} @ {wp}, {v}: the study recorded no fixed cost"
                cells[v] = (cost["sensitivity_evaluations"], cost["split_evaluations"] - cost.get("dense_evaluations", 0), cost["sensitivity_s"],
                            {str(m): by[m].test for m in (Method.SENSITIVITY, Method.SENSITIVITY_SUM) if m in by})
                print(name, wp, v, cells[v], flush=True)
            rows.append((name, wp, len(task.test), cells))  # type: ignore[arg-type]
    load_after = os.getloadavg()[0]

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    lines = [
        f"## Sensitivity table ({', '.join(args.spaces.split(','))}): {', '.join(variants)} ({datetime.date.today()})",
        "",
        f"Command: `OMP_WAIT_POLICY=PASSIVE python benchmarks/sensitivity.py --spaces {args.spaces} --variants {args.variants}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {args.threads} threads, torch {torch.__version__}; "
        f"load average (1 min) before {load_before:.2f}, after {load_after:.2f}.  ",
        "Each cell: test metric after the space's retrain (seed 0) of the allocation made from that table; the table's "
        "evaluations (as passes over the whole validation split) and seconds. A variant is kind:validation samples.",
        "",
        "| space @ WP | test samples | variant | table: evals (whole-split passes), s | AIMET-style | sensitivity sum |",
        "|---|---|---|---|---|---|",
    ]
    for name, wp, n_test, c in rows:
        for v in variants:
            n, passes, secs, test = c[v]
            lines.append(f"| {name} @ {wp} | {n_test:,} | {v} | {n} ({passes:g}), {secs:.1f} s | "
                         f"{f(test.get('sensitivity'))} | {f(test.get('sensitivity_sum'))} |")
    publish(lines, args.out)


if __name__ == "__main__":
    main()
