"""Which search should be the default? Samplers, pruners, search spaces and distillation, side by side.

Every variant runs the same study per space, working point and seed: the seed rule, uniform and the
sensitivity (AIMET-style) allocations are enqueued first, then the variant's sampler proposes the rest,
all with the space's short retrain. The sensitivity table is measured once per space and shared, so
the variants differ only in what they search and how. Reported per variant: median over seeds of the
best trial's validation metric (what the search optimizes), of its test metric, the worst seed's test
metric, and the median wall time. Writes its section to benchmarks/LOG.md.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/search_variants.py --spaces mnist5k-cnn --wps 0.03 --trials 12
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import platform
import statistics
import time
from pathlib import Path

import torch
from _report import publish  # benchmarks/_report.py (scripts run from the repository root)

from ranksearch import Components, RunOptions, SearchSettings, load_space, search

#: name -> SearchSettings fields (plus "distill": the retrain's distillation weight)
VARIANTS: dict[str, dict] = {
    # issue 12's comparison (48 trials, gate pruner): the default, CMA-ES from the best baseline, the old space, TPE with the sensitivity prior
    "incumbent-local": dict(proposals="incumbent", sampler="local", pruner="gate", factors="data_aware"),
    "incumbent-cmaes": dict(proposals="incumbent", sampler="cmaes", pruner="gate", factors="data_aware"),
    "weights-tpe": dict(proposals="weights", sampler="tpe", pruner="gate", factors="data_aware"),
    "weights-tpe-sensitivity": dict(proposals="weights", sampler="tpe", pruner="gate", prior="sensitivity", factors="data_aware"),
    # issue 5's comparison (12 trials, weights space)
    "tpe": dict(proposals="weights", sampler="tpe", pruner="median", prior="sensitivity", factors="data_aware", screen=0.0),
    "gp": dict(proposals="weights", sampler="gp", pruner="median", prior="sensitivity", factors="data_aware", screen=0.0),
    "cmaes": dict(proposals="weights", sampler="cmaes", pruner="median", prior="sensitivity", factors="data_aware", screen=0.0),
    "random": dict(proposals="weights", sampler="random", pruner="median", prior="sensitivity", factors="data_aware", screen=0.0),
    "tpe-hyperband": dict(proposals="weights", sampler="tpe", pruner="hyperband", prior="sensitivity", factors="data_aware", screen=0.0),
    "tpe-nopruner": dict(proposals="weights", sampler="tpe", pruner="none", prior="sensitivity", factors="data_aware", screen=0.0),
    "tpe-prior-none": dict(proposals="weights", sampler="tpe", pruner="median", prior="none", factors="data_aware", screen=0.0),
    "tpe-group": dict(proposals="weights", sampler="tpe", pruner="median", prior="sensitivity", factors="data_aware", granularity="group",
                      screen=0.0),
    "tpe-plain": dict(proposals="weights", sampler="tpe", pruner="median", prior="sensitivity", factors="plain", screen=0.0),
    "tpe-distill": dict(proposals="weights", sampler="tpe", pruner="median", prior="sensitivity", factors="data_aware", distill=0.5,
                        screen=0.0),
}


def run(space_name: str, wps: list[float], seeds: list[int], trials: int, variants: list[str]) -> list[dict]:
    space = load_space(space_name)
    task = space.build_task()
    model = space.build_model(task)
    rows = []
    sens = {}  # factors -> the table the first study measured; it depends on the factors only
    for wp in wps:
        for name in variants:
            kw = dict(VARIANTS[name])
            distill = kw.pop("distill", 0.0)
            recipe = dataclasses.replace(space.retrain, distill=distill)
            runs = []
            for seed in seeds:
                t0 = time.perf_counter()
                settings = SearchSettings(target_ratio=wp, model=space.name, retrain=recipe, seed=seed, exclude=tuple(space.exclude),
                                          rank_multiple=space.rank_multiple, min_rank=space.min_rank, **kw)
                res = search(model, settings, task=task, run=RunOptions(n_trials=trials),
                             given=Components(sensitivity=sens.get(kw["factors"])))
                sens[kw["factors"]] = res.sensitivity
                s = res.summary
                runs.append({"val": s.best.val, "test": s.best.test, "method": str(s.best_method),
                             "wall": time.perf_counter() - t0, "pruned": s.trials.pruned})
                print(space_name, wp, name, seed, runs[-1], flush=True)
            rows.append({"space": space_name, "wp": wp, "variant": name, "metric": task.metric, "runs": runs,
                         "val": statistics.median(r["val"] for r in runs), "test": statistics.median(r["test"] for r in runs),
                         "worst": min(r["test"] for r in runs), "wall": statistics.median(r["wall"] for r in runs)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spaces", default="mnist5k-cnn")
    ap.add_argument("--wps", default="0.03")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--variants", default=",".join(list(VARIANTS)[:4]))
    ap.add_argument("--out", default=str(Path(__file__).with_name("LOG.md")))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    seeds = [int(s) for s in args.seeds.split(",")]
    wps = [float(w) for w in args.wps.split(",")]
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    rows = [r for sp in args.spaces.split(",") for r in run(sp, wps, seeds, args.trials, variants)]
    cmd = (f"python benchmarks/search_variants.py --spaces {args.spaces} --wps {args.wps} --seeds {args.seeds} "
           f"--trials {args.trials} --variants {args.variants}")
    lines = [
        f"## Search variants ({', '.join(args.spaces.split(','))} at {args.wps}): {', '.join(variants)} at equal budget "
        f"({datetime.date.today()})",
        "",
        f"Command: `OMP_WAIT_POLICY=PASSIVE {cmd}`  ",
        f"Machine: {platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}.  ",
        f"{args.trials} trials per study (the first four are the enqueued seed rule, uniform, AIMET-style and "
        f"sensitivity-sum allocations), the space's retrain for every trial; one sensitivity table per space, shared. "
        f"Cells: median over seeds {args.seeds} of the best trial's validation metric and test metric; worst = "
        f"the lowest test metric over the seeds; picked = which kind of trial won per seed.",
        "",
        "| space | WP | variant | val (median) | test (median) | test (worst seed) | picked | pruned | median wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        picked = "/".join(x["method"] for x in r["runs"])
        pruned = "/".join(str(x["pruned"]) for x in r["runs"])
        lines.append(f"| {r['space']} | {r['wp']} | {r['variant']} | {r['val']:.4f} | {r['test']:.4f} | {r['worst']:.4f} | "
                     f"{picked} | {pruned} | {r['wall']:.0f} |")
    publish(lines, args.out)


if __name__ == "__main__":
    main()
