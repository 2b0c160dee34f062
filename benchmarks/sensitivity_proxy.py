"""The proxy sensitivity table against the measured one: do their allocations score the same?

For each space and working point, two searches of 4 trials (the seed rule, uniform, AIMET-style greedy and
sensitivity sum, each retrained with the space's recipe) differ only in how the sensitivity table behind
the last two is made: measured (each layer at each probe rank) or the proxy (curves calibrated on 24
evaluations). Reported: evaluations spent on the table, and the test metric of the two table-based
allocations. Appends a section to benchmarks/RESULTS.md.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/sensitivity_proxy.py --spaces vit-mnist,mnist5k-cnn
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
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    from ranksearch import SearchSettings, load_space, search

    load_before = os.getloadavg()[0]
    rows = []
    for name in args.spaces.split(","):
        space = load_space(name)
        task = space.build_task()
        model = space.build_model(task)
        for wp in sorted(space.working_points)[:2]:
            cells = {}
            for kind in ("measured", "proxy"):
                settings = SearchSettings(target_ratio=wp, model=space.name, retrain=space.retrain, seed=0, exclude=tuple(space.exclude),
                                          rank_multiple=space.rank_multiple, min_rank=space.min_rank, sensitivity=kind)
                res = search(model, settings, task=task, n_trials=4)
                by = {t.user_attrs["method"]: t for t in res.study.trials}
                cost = res.study.user_attrs["ranksearch:fixed_cost"]
                cells[kind] = (cost["sensitivity_evaluations"], cost["sensitivity_s"],
                               {m: by[m].user_attrs.get("test") for m in ("sensitivity", "sensitivity_sum") if m in by})
                print(name, wp, kind, cells[kind], flush=True)
            rows.append((name, wp, len(task.test), cells))  # type: ignore[arg-type]
    load_after = os.getloadavg()[0]

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    lines = [
        f"## Sensitivity table: measured vs proxy ({datetime.date.today()})",
        "",
        f"Command: `OMP_WAIT_POLICY=PASSIVE python benchmarks/sensitivity_proxy.py --spaces {args.spaces}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {args.threads} threads, torch {torch.__version__}; "
        f"load average (1 min) before {load_before:.2f}, after {load_after:.2f}.  ",
        "Each cell: test metric after the space's retrain (seed 0) of the allocation made from that table; evaluations and "
        "seconds spent on the table.",
        "",
        "| space @ WP | test samples | measured: evals (s) | proxy: evals (s) | AIMET-style, measured / proxy | sensitivity sum, measured / proxy |",
        "|---|---|---|---|---|---|",
    ]
    for name, wp, n_test, c in rows:
        m, p = c["measured"], c["proxy"]
        lines.append(f"| {name} @ {wp} | {n_test:,} | {m[0]} ({m[1]:.1f}) | {p[0]} ({p[1]:.1f}) | "
                     f"{f(m[2].get('sensitivity'))} / {f(p[2].get('sensitivity'))} | "
                     f"{f(m[2].get('sensitivity_sum'))} / {f(p[2].get('sensitivity_sum'))} |")
    publish(lines, args.out)


if __name__ == "__main__":
    main()
