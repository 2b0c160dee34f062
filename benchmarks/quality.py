"""Quality at equal retrain budget: uniform, the CE1 MSE rule, AIMET-style greedy sensitivity, search.

For each space and working point and seed, one study runs: the seed rule, uniform and sensitivity
allocations are its first trials, then the search proposes more (same retrain recipe for every trial).
Every final model thus gets the same short retrain; the search picks its best on the validation split
and the table reports the *test* split, median over seeds. Appends a section to benchmarks/RESULTS.md.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/quality.py --spaces mnist5k-cnn --seeds 0,1,2 --trials 8
"""

from __future__ import annotations

import argparse
import datetime
import logging
import platform
import statistics
import time
from pathlib import Path

import torch

from ranksearch import SearchSettings, load_space, search

from _report import publish  # benchmarks/_report.py (scripts run from the repository root)

METHODS = ("uniform", "seed_rule", "sensitivity", "sensitivity_sum", "searched")


def run_space(name: str, seeds: list[int], trials: int, options: dict, wps: list[float] | None) -> list[dict]:
    space = load_space(name)
    task = space.build_task()
    model = space.build_model(task)
    rows = []
    sens = None  # the sensitivity table depends on neither the seed nor the working point: measured once
    for wp in wps or space.working_points:
        per_seed = []
        for seed in seeds:
            t0 = time.perf_counter()
            settings = SearchSettings(target_ratio=wp, model=space.name, retrain=space.retrain, seed=seed, exclude=tuple(space.exclude),
                                      rank_multiple=space.rank_multiple, min_rank=space.min_rank, **options)
            res = search(model, settings, task=task, n_trials=trials, sensitivity=sens)
            sens = res.sensitivity
            s = res.summary
            per_seed.append({m: s.get(m, {}).get("test") for m in METHODS} | {"wall": time.perf_counter() - t0, "dense": s["dense"]["test"],
                            "settings": {k: res.config.search["settings"][k] for k in ("sampler", "pruner", "prior", "granularity", "factors")}})
            print(name, wp, seed, {m: per_seed[-1][m] for m in METHODS}, flush=True)
        med = {m: statistics.median([r[m] for r in per_seed if r[m] is not None] or [float("nan")]) for m in METHODS}
        rows.append({"space": name, "wp": wp, "metric": task.metric, "dense": per_seed[0]["dense"], **med,
                     "wall": statistics.median(r["wall"] for r in per_seed), "runs": per_seed})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spaces", default="mnist5k-cnn")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--wps", help="comma list of ratios (default: the space's working points)")
    ap.add_argument("--factors", choices=("plain", "data-aware"), help="factors of the searched trials (default: search's)")
    ap.add_argument("--prior", choices=("none", "sensitivity"), help="default: search's")
    ap.add_argument("--sampler", help="default: search's")
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    seeds = [int(s) for s in args.seeds.split(",")]
    wps = [float(w) for w in args.wps.split(",")] if args.wps else None
    options = {k: v for k, v in (("prior", args.prior), ("sampler", args.sampler)) if v is not None}
    if args.factors is not None:
        options["factors"] = args.factors
    rows = [r for name in args.spaces.split(",") for r in run_space(name, seeds, args.trials, options, wps)]
    cmd = " ".join(["python benchmarks/quality.py", f"--spaces {args.spaces}", f"--seeds {args.seeds}", f"--trials {args.trials}"]
                   + ([f"--wps {args.wps}"] if args.wps else []) + [f"--{k} {getattr(args, k)}" for k in ("factors", "prior", "sampler")
                                                                     if getattr(args, k) is not None])
    used = rows[0]["runs"][0]["settings"] if rows else {}
    lines = [
        f"## Quality at equal retrain budget ({datetime.date.today()})",
        "",
        f"Command: `OMP_WAIT_POLICY=PASSIVE {cmd}`  ",
        f"Machine: {platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}.  ",
        f"Each cell: test metric after the space's short retrain (`retrain:` in its YAML), median over seeds {args.seeds}. "
        f"One study per working point and seed: trials 0-3 are the seed rule (plain SVD, one MSE bound), uniform, "
        f"sensitivity (AIMET-style greedy), then ranksearch's sensitivity-sum allocation (a '-' in its column: pruned after its first epoch); ranksearch's search = best of "
        f"{args.trials} trials on the validation split (search settings: {used}). Per-seed values (seeds {args.seeds}) in brackets.",
        "",
        "| space | WP | metric | dense | uniform | seed rule (MSE) | AIMET-style greedy | sensitivity sum (no search) | ranksearch search | search - seed rule | search - best baseline | median wall s / study |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(r: dict, m: str) -> str:
        per = "/".join("-" if x[m] is None else f"{x[m]:.4g}" for x in r["runs"])
        return f"{r[m]:.4f} ({per})"

    for r in rows:
        best_base = max(r[m] for m in ("uniform", "seed_rule", "sensitivity"))
        lines.append(f"| {r['space']} | {r['wp']} | {r['metric']} | {r['dense']:.4f} | " + " | ".join(cell(r, m) for m in METHODS)
                     + f" | {r['searched'] - r['seed_rule']:+.4f} | {r['searched'] - best_base:+.4f} | {r['wall']:.0f} |")
    publish(lines, args.out)


if __name__ == "__main__":
    main()
