"""Better allocations, or lucky retrains? The best allocations on test, retrained again with other seeds.

The headroom table of ``benchmarks/quality.py`` bounds what a search can gain by the sampled trial best
*on test* (the oracle). That bound is itself a winner: the best of many retrains, each moved by its
retrain's seed. This script reads a ``quality.py --raw`` file (whose trials carry their ranks) and, per
(space, working point):

* the *baseline*: the enqueued allocation best in median test metric over the studies' seeds (the
  enqueued allocations are the same ranks in every seed's study);
* the *winners*: the ``--top`` sampled allocations best on test over all seeds' trials retrained fully;

retrains each again, exactly as a trial does (same factors, recipe, distillation teacher, screen), with
``--repeats`` seeds no study used, and scores them on test. First it retrains the first winner with its own
study's seed and checks that this gives its recorded test figure (the retrain is deterministic on CPU).

Reported per winner, in standard errors of the test split: the difference to the baseline as selected (its
study figure minus the baseline's median), and as confirmed (its mean over the new seeds minus the
baseline's mean over the same seeds), with the standard error of that mean difference over seeds. A winner
whose advantage vanishes with new seeds was chosen for a lucky retrain, not for its ranks.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/confirm.py --raw benchmarks/raw/quality_wide-random.json
"""

from __future__ import annotations

import argparse
import copy
import datetime
import functools
import json
import logging
import math
import os
import platform
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from _report import publish  # benchmarks/_report.py (scripts run from the repository root)
from quality import _chosen, _load, _test_se  # benchmarks/quality.py

FIRST_SEED = 100  #: new retrain seeds are FIRST_SEED, FIRST_SEED + 1, ... (the studies use 0, 1, 2)


def _allocations(runs: list[dict[str, Any]], top: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(baseline, winners) of one case's studies: trials with their ranks, kind, study seed and test figure."""
    enqueued: dict[str, list[dict[str, Any]]] = {}
    sampled = []
    for r in runs:
        for t in r["trials"]:
            if t["state"] != "COMPLETE" or t.get("ranks") is None or t["test"] is None:
                continue
            row = {**t, "seed": r["seed"], "settings": r["settings"]}
            if t["method"] != "searched":
                enqueued.setdefault(t["method"], []).append(row)
            elif t["full"]:
                sampled.append(row)
    if not enqueued:
        raise SystemExit("the raw file's trials carry no ranks: make it again with this quality.py (--raw)")
    method = max(enqueued, key=lambda m: statistics.median(t["test"] for t in enqueued[m]))
    rows = enqueued[method]
    if any(t["ranks"] != rows[0]["ranks"] for t in rows):  # its figures over seeds are one allocation's only if so
        raise SystemExit(f"the enqueued allocation {method!r} has other ranks in some seeds' studies: no common baseline")
    base = {**rows[0], "test": statistics.median(t["test"] for t in rows)}
    return base, sorted(sampled, key=lambda t: -t["test"])[:top]


@functools.lru_cache(maxsize=4)
def _study_views(name: str, settings_json: str) -> tuple[Any, Any, Any]:
    """(task, dense model, views) of a study, once per process: a pool worker retrains many allocations of it."""
    from ranksearch import SearchSettings
    from ranksearch.study import views_for

    _, task, model = _load(name)
    settings = SearchSettings.from_dict(json.loads(settings_json))
    return task, model, views_for(model, settings.exclude, settings.factor_kind, task, None, None)


def _retrain(name: str, alloc: dict[str, Any], seeds: list[int]) -> list[tuple[float, float]]:
    """(validation, test) metric of ``alloc``'s ranks retrained once per seed, as a trial of its study retrains."""
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    from ranksearch import FactorKind, RetrainSettings, SearchSettings, factorize
    from ranksearch.study import task_callables

    task, model, views = _study_views(name, json.dumps(alloc["settings"], sort_keys=True))
    settings = SearchSettings.from_dict(alloc["settings"])
    _, factors = views.of(FactorKind(alloc["factors"]))
    out = []
    for seed in seeds:
        calls = task_callables(task, settings.retrain or RetrainSettings(), copy.deepcopy(model), seed,
                               settings.screen, settings.screen_samples)
        assert calls.retrain is not None and calls.test is not None  # a task's callables have both
        small = factorize(model, {n: int(r) for n, r in alloc["ranks"].items()}, factors)
        val = calls.retrain(small, report=lambda step, value, last=False: None)
        out.append((float(val), float(calls.test(small))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raw", required=True, help="a quality.py --raw file whose trials carry their ranks")
    ap.add_argument("--top", type=int, default=3, help="sampled allocations best on test to retrain again, per case (0: no confirm section)")
    ap.add_argument("--repeats", type=int, default=4, help="new retrain seeds per allocation")
    ap.add_argument("--jobs", type=int, default=2, help="retrains at once, one thread each")
    ap.add_argument("--select", type=int, default=0,
                    help="also the pick under noise: per study, this many trials best on validation retrained with "
                         "--repeats new seeds, chosen by their mean validation (0: not)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("LOG.md")))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    try:
        runs = [r for r in json.loads(Path(args.raw).read_text()) if r["variant"] == "new"]
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise SystemExit(f"--raw {args.raw}: not a quality.py --raw file ({type(e).__name__}: {e}); give one that run wrote") from None
    order = list(dict.fromkeys(r["space"] for r in runs))
    keys = sorted({(r["space"], r["wp"]) for r in runs}, key=lambda k: (order.index(k[0]), -k[1]))
    if args.top > 0:
        _confirm(runs, keys, args)
    if args.select:
        publish(_select(runs, keys, args), args.out)


def _confirm(runs: list[dict[str, Any]], keys: list[tuple[str, float]], args: argparse.Namespace) -> None:
    """The baseline and the winners of each case retrained with new seeds: the confirm section."""
    seeds = list(range(FIRST_SEED, FIRST_SEED + args.repeats))
    load_before = os.getloadavg()[0]
    t0 = time.time()
    cases, jobs = {}, []
    for key in keys:
        base, winners = _allocations([r for r in runs if (r["space"], r["wp"]) == key], args.top)
        cases[key] = (base, winners)
        if winners:  # the reproduction check: the first winner with its own study's seed
            jobs.append((key[0], winners[0], [winners[0]["seed"]]))
        jobs += [(key[0], a, seeds) for a in (base, *winners)]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = [[t for _, t in r] for r in pool.map(_retrain, *zip(*jobs))]
    done = iter(results)
    lines = [f"## Confirm (from {args.raw}): the best allocations on test, retrained with {args.repeats} new seeds "
             f"({datetime.date.today()})", "",
             f"Command: `OMP_WAIT_POLICY=PASSIVE python benchmarks/confirm.py --raw {args.raw} --top {args.top} "
             f"--repeats {args.repeats}`  ",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {args.jobs} retrains at once with 1 thread each, "
             f"torch {torch.__version__}; load average (1 min) before {load_before:.2f}, after {os.getloadavg()[0]:.2f}; "
             f"{time.time() - t0:.0f} s in all.  ",
             "Per case: the *baseline* is the enqueued allocation best in median test metric over the studies' seeds; the "
             f"*winners* are the {args.top} sampled allocations best on test among all seeds' trials retrained fully (what "
             "the headroom table's oracle picks). Each is retrained again as its study's trials are, with seeds "
             f"{seeds[0]}..{seeds[-1]}. Cells in standard errors of the test split: *as selected*: its study's test "
             "figure minus the baseline's median; *confirmed*: its mean over the new seeds minus the baseline's mean over "
             "the same seeds, +- the standard error of that mean difference over seeds; *reproduced*: the first winner "
             "retrained with its own study's seed gives its recorded test figure.",
             "",
             "| space | WP | test SE | allocation | study seed, trial | as selected | new seeds: test (mean) | confirmed d/SE | reproduced |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key in keys:
        name, wp = key
        base, winners = cases[key]
        space, task, model = _load(name)
        se = _test_se(task, model, task.metric, base["test"])
        check = next(done) if winners else None
        b = next(done)
        lines.append(f"| {name} | {wp} | {se:.4f} | baseline ({base['method']}) | all | 0 | "
                     f"{'/'.join(f'{v:.4f}' for v in b)} ({statistics.mean(b):.4f}) | 0 | - |")
        for i, w in enumerate(winners):
            v = next(done)
            diffs = [x - y for x, y in zip(v, b)]
            sd = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
            rep = "-"
            if i == 0 and check is not None:
                ok = abs(check[0] - w["test"]) <= 1e-4 * max(1.0, abs(w["test"]))
                rep = f"{'yes' if ok else 'NO'} ({check[0]:.4f})"
            lines.append(f"| {name} | {wp} | {se:.4f} | winner {i + 1} | {w['seed']}, {w['number']} | "
                         f"{(w['test'] - base['test']) / se:+.2f} | {'/'.join(f'{x:.4f}' for x in v)} ({statistics.mean(v):.4f}) | "
                         f"{statistics.mean(diffs) / se:+.2f} +- {sd / se:.2f} | {rep} |")
    publish(lines, args.out)


def _select(runs: list[dict[str, Any]], keys: list[tuple[str, float]], args: argparse.Namespace) -> list[str]:
    """The pick under noise: per study, its ``--select`` trials best on validation retrained with
    ``--repeats`` new seeds each, and the one with the best mean validation over all its retrains (the
    study's and the new ones) picked; its test figure is its study's retrain (the weights a search exports)."""
    seeds = list(range(FIRST_SEED, FIRST_SEED + args.repeats))
    jobs, tops, order = [], {}, []
    for r in runs:
        done = [t for t in r["trials"] if t["state"] == "COMPLETE" and t["full"] and t.get("ranks") is not None]
        top = sorted(done, key=lambda t: (-t["val"], t["number"]))[:args.select]
        tops[(r["space"], r["wp"], r["seed"])] = top
        jobs += [(r["space"], {**t, "settings": r["settings"]}, seeds) for t in top]
        order += [(r["space"], r["wp"], r["seed"])] * len(top)
    t0, load_before = time.time(), os.getloadavg()[0]
    retrained: dict[tuple[Any, ...], list[list[tuple[float, float]]]] = {}
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for study, res in zip(order, pool.map(_retrain, *zip(*jobs))):
            retrained.setdefault(study, []).append(res)
    lines = [f"## Pick under noise (from {args.raw}): the top {args.select} on validation retrained with "
             f"{args.repeats} new seeds, chosen by their mean validation ({datetime.date.today()})", "",
             f"Command: `OMP_WAIT_POLICY=PASSIVE python benchmarks/confirm.py --raw {args.raw} --top {args.top} "
             f"--repeats {args.repeats} --select {args.select}`  ",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {args.jobs} retrains at once with 1 thread each, "
             f"torch {torch.__version__}; load average (1 min) before {load_before:.2f}, after {os.getloadavg()[0]:.2f}; "
             f"{time.time() - t0:.0f} s.  ",
             "Per study (seed) of each case, at its last trial: *pick*: the trial best on validation (the search's result); "
             f"*under noise*: of the {args.select} trials best on validation, the one whose mean validation over its "
             f"study's retrain and {args.repeats} new ones (seeds {seeds[0]}..{seeds[-1]}) is best; its test figure is its "
             "study's retrain, the weights a search would export. Cells: test metric, median over seeds (per seed); d/SE "
             "against the best enqueued allocation (on validation) in the test split's standard errors; *cost*: the "
             "extra retrains per study.",
             "",
             "| space | WP | test SE | enqueued | pick (d/SE) | under noise (d/SE) | chosen trials | cost |",
             "|---|---|---|---|---|---|---|---|"]
    for key in keys:
        cases = [r for r in runs if (r["space"], r["wp"]) == key]
        enq, pick, noisy, chosen = [], [], [], []
        for r in cases:
            best_enqueued, chosen_pick = _chosen(r["trials"], None)
            enq.append(best_enqueued["test"])
            pick.append(chosen_pick["test"])
            study = (r["space"], r["wp"], r["seed"])
            top = tops[study]
            means = [statistics.mean([t["val"], *(v for v, _ in again)]) for t, again in zip(top, retrained[study])]
            best = top[max(range(len(top)), key=lambda i: (means[i], -top[i]["number"]))]
            noisy.append(best["test"])
            chosen.append(f"{chosen_pick['number']}->{best['number']}")
        space, task, model = _load(key[0])
        m = {k: statistics.median(v) for k, v in (("enq", enq), ("pick", pick), ("noisy", noisy))}
        se = _test_se(task, model, task.metric, m["enq"])
        cell = functools.partial(_cell, m, se)
        lines.append(f"| {key[0]} | {key[1]} | {se:.4f} | {m['enq']:.4f} | {cell('pick', pick)} | {cell('noisy', noisy)} | "
                     f"{', '.join(chosen)} | {args.select * args.repeats} |")
    return lines


def _cell(m: dict[str, float], se: float, k: str, v: list[float]) -> str:
    """The median ``m[k]``, each seed's figure ``v`` and the median's difference to the enqueued one in ``se``."""
    return f"{m[k]:.4f} ({'/'.join(f'{x:.4f}' for x in v)}) ({(m[k] - m['enq']) / se:+.2f})"


if __name__ == "__main__":
    main()
