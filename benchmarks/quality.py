"""Do the sampled trials earn their keep? The best enqueued allocation vs the search's pick, at 12 and 48 trials.

For each space, working point and seed, two studies run side by side (one process each, one thread
each, ``--jobs`` at a time), with the space's short retrain for every trial:

* ``today``: the search as it was before issue 12 (log10 weights on the MSE bound around the seed
  rule, multivariate TPE, median pruner, no screening), 12 trials: its wall time is the budget;
* ``new``: the settings named by ``--new`` (default: ranksearch's defaults), 48 trials. A sequential
  study is deterministic, so its first 12 trials are exactly a 12-trial study of the same settings:
  the 12-trial figures are read from that prefix (its wall time: until the 12th trial finished).

Both start with the same enqueued allocations (seed rule, uniform, AIMET-style greedy, sensitivity
sum), which are never pruned. Reported per (space, working point), medians over the seeds: the test
metric of the best enqueued allocation (best on validation among them: what the search returns when
no sampled trial wins), of the best sampled trial, of the search's pick and which kind it was, the
difference pick - best enqueued in standard errors of the test split, the same difference paired (both
models scored on the same test samples, divided by the standard error of the per-sample differences: the
statistic for "is the pick better on this test split"; both trials' retrained weights are kept for it in
a temporary artifact store), trials retrained fully, and wall time. Writes its section to benchmarks/LOG.md; with ``--raw`` also a headroom section (the
pick, the sampled trial best on *test*, an oracle, and the dense model, against the best enqueued
allocation), which ``--from-raw FILE`` makes again from a kept raw file (benchmarks/raw/) without
running anything.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/quality.py --spaces mnist5k-cnn,image-compression --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import logging
import math
import os
import platform
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from _report import publish  # benchmarks/_report.py (scripts run from the repository root)

TODAY = dict(proposals="weights", sampler="tpe", pruner="median", screen=0.0, screen_samples=0)  #: the search before issue 12
AGGRESSIVE = 2  #: working points per space: the most aggressive ones


def _settings(space: Any, wp: float, seed: int, options: dict[str, Any]) -> Any:
    from ranksearch import SearchSettings

    base = dict(target_ratio=wp, model=space.name, retrain=space.retrain, seed=seed, exclude=tuple(space.exclude),
                rank_multiple=space.rank_multiple, min_rank=space.min_rank)
    return SearchSettings(**{**base, **options})


def _grid(options: dict[str, Any], model: Any, space: Any, wp: float) -> dict[str, Any]:
    """``rank_multiple: "cuda"`` in the options: the grid ``auto`` takes on CUDA for this model and point
    (8, halved until the point is reachable), so that its accuracy effect is measured on this CPU."""
    if options.get("rank_multiple") != "cuda":
        return options
    from ranksearch.core import count_params, rank_multiple_for, spectra

    curves = spectra(model, exclude=space.exclude)
    return {**options, "rank_multiple": rank_multiple_for(torch.device("cuda"), 1, curves, wp, count_params(model), space.min_rank)}


def _load(name: str) -> tuple[Any, Any, Any]:
    from ranksearch import load_space

    space = load_space(name)
    task = space.build_task()
    return space, task, space.build_model(task)


def _job(name: str, wp: float, seed: int, variant: str, options: dict[str, Any], trials: int, sensitivity: Any) -> dict[str, Any]:
    """One study in its own process (one thread); returns its trials' figures."""
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    from ranksearch import Components, RunOptions, search

    space, task, model = _load(name)
    with tempfile.TemporaryDirectory() as arts:  # the trials' weights (best so far), for the paired figures
        t0 = time.time()
        res = search(model, _settings(space, wp, seed, _grid(options, model, space, wp)), task=task,
                     run=RunOptions(n_trials=trials, artifacts=arts), given=Components(sensitivity=sensitivity))
        wall = time.time() - t0
        rows = [_row(t, t0) for t in res.study.trials]
        paired = {str(first): _paired(res.study, model, task, arts, rows, first) for first in (12, None)}
    return {"space": name, "wp": wp, "seed": seed, "variant": variant, "wall": wall, "trials": rows,
            "settings": json.loads(json.dumps(res.config.search["settings"])), "paired": paired}  # plain JSON values


def _row(t: Any, t0: float) -> dict[str, Any]:
    """A trial's figures as the raw file keeps them (plain JSON values)."""
    from ranksearch import TrialRecord

    r = TrialRecord.of(t)
    return {"number": t.number, "method": str(r.method), "state": t.state.name, "val": t.value, "test": r.test,
            "end": t.datetime_complete.timestamp() - t0 if t.datetime_complete else None,
            "full": t.state.name == "COMPLETE" and r.same_as is None,
            "ranks": r.ranks, "factors": None if r.factors is None else str(r.factors)}


def _paired(study: Any, model: Any, task: Any, arts: str, rows: list[dict[str, Any]], first: int | None) -> dict[str, Any] | None:
    """The pick minus the best enqueued allocation on the same test samples (among the first ``first``
    finished trials): mean difference and its standard error, stdev(differences) / sqrt(n). Both trials
    were the best so far when they finished, so their retrained weights are in the artifact store."""
    from ranksearch import TrialRecord
    from ranksearch.core import sample_scores
    from ranksearch.results import trial_model
    from ranksearch.study import artifact_store

    enq, pick = _chosen(rows, first)
    if enq is None:
        return None
    scores = {}
    for number in {enq["number"], pick["number"]}:
        t = study.trials[number]
        small = trial_model(study, t, model, artifact_store(arts))
        if small is None:  # not the best so far when it finished (with several workers): no figure
            return None
        scores[number] = sample_scores(small, task.test, task.metric, forward=task.forward).numpy()
        test = TrialRecord.of(t).test
        if test is None or abs(scores[number].mean() - test) > 1e-4 * max(1.0, abs(test)):
            raise AssertionError(f"trial {number}: per-sample mean {scores[number].mean()} is not its test {test}")
    d = scores[pick["number"]] - scores[enq["number"]]
    return {"enqueued": enq["number"], "pick": pick["number"], "mean": float(d.mean()),
            "se": float(d.std(ddof=1) / math.sqrt(len(d))), "n": len(d)}


def _finished(trials: list[dict[str, Any]], first: int | None) -> list[dict[str, Any]]:
    """The first ``first`` trials that finished (complete or pruned), in order; all of them for None."""
    finished = sorted((t for t in trials if t["state"] in ("COMPLETE", "PRUNED")), key=lambda t: t["number"])
    return finished if first is None else finished[:first]


def _best(ts: list[dict[str, Any]]) -> dict[str, Any] | None:
    return max(ts, key=lambda t: (t["val"], -t["number"]), default=None)


def _chosen(trials: list[dict[str, Any]], first: int | None) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(best enqueued allocation, the search's pick) on validation among the first ``first`` finished trials."""
    done = [t for t in _finished(trials, first) if t["state"] == "COMPLETE"]
    return _best([t for t in done if t["method"] != "searched"]), _best(done)  # type: ignore[return-value]


def _figures(run: dict[str, Any], first: int | None = None) -> dict[str, Any]:
    """Best enqueued / best sampled / pick among the first ``first`` finished trials of a study."""
    finished = _finished(run["trials"], first)
    done = [t for t in finished if t["state"] == "COMPLETE"]
    enq, pick = _chosen(run["trials"], first)
    smp = _best([t for t in done if t["method"] == "searched"])
    oracle = max((t["test"] for t in done if t["method"] == "searched" and t["full"] and t["test"] is not None), default=math.nan)
    wall = max(t["end"] for t in finished) if first is not None else run["wall"]
    return {"enqueued": enq["test"] if enq else math.nan, "sampled": smp["test"] if smp else math.nan,
            "pick": pick["test"], "picked": "sampled" if pick["method"] == "searched" else pick["method"],
            "oracle": oracle, "trials": len(finished), "full": sum(t["full"] for t in finished), "wall": wall}


def _paired_z(run: dict[str, Any], first: int | None) -> float:
    """The paired difference of a study in its standard errors (0 for the same trial; nan if not recorded)."""
    p = run.get("paired", {}).get(str(first))
    if not p:
        return math.nan
    return 0.0 if p["pick"] == p["enqueued"] or p["se"] == 0 else p["mean"] / p["se"]


def _headroom(runs: list[dict[str, Any]], meta: dict[str, Any], order: list[str], label: str, source: str) -> list[str]:
    """Where the bar's headroom is: per case, the new search's full-length studies, medians over seeds of
    the best enqueued allocation (on validation), the pick, the sampled trial best *on test* among those
    retrained fully (an oracle: no search can pick by test) and the dense model, each in test SE from the
    best enqueued one. A pick can only beat the enqueued allocation by what the oracle shows."""
    from ranksearch.core import evaluate

    lines = [f"## Quality headroom ({label}; from {source}): pick, best sampled on test and dense vs the best enqueued allocation",
             "",
             f"Command: `python benchmarks/quality.py --spaces {','.join(order)} --from-raw {source} --label {label}` (the raw "
             "file is the run's own: every trial's validation and test figures). Cells: test metric, median over the seeds; "
             "d/SE: minus the best enqueued allocation, in the test split's standard errors. *oracle*: of the sampled trials "
             "retrained fully, the best on test (a bound on what picking by validation can gain from these trials); "
             "*oracle, all seeds*: the same over every seed's trials, and how many of them were retrained fully; "
             "*retrain noise*: the standard deviation over seeds of one enqueued allocation's test metric (the one "
             "best in median), in test SE: what retraining the same ranks with another seed moves; "
             "*dense*: the uncompressed model.",
             "",
             "| space | WP | trials | seeds | enqueued | pick (d/SE) | oracle (d/SE) | oracle, all seeds (d/SE; of n) | "
             "retrain noise | dense (d/SE) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["space"], r["wp"]) for r in runs if r["variant"] == "new"}, key=lambda k: (order.index(k[0]), -k[1]))
    for name, wp in keys:
        space, task, model = meta[name]
        cases = [r for r in runs if (r["space"], r["wp"], r["variant"]) == (name, wp, "new")]
        per = [_figures(r) for r in cases]
        m = {k: statistics.median([f[k] for f in per if not math.isnan(f[k])] or [math.nan]) for k in ("enqueued", "pick", "oracle")}
        dense = float(evaluate(model, task.test, task.metric))
        se = _test_se(task, model, task.metric, m["enqueued"])
        full = [t["test"] for r in cases for t in r["trials"]
                if t["method"] == "searched" and t["full"] and t["test"] is not None]
        noise = _retrain_noise(cases)
        d = functools.partial(_versus, base=m["enqueued"], se=se)
        lines.append(f"| {name} | {wp} | {per[0]['trials']} | {len(per)} | {m['enqueued']:.4f} | {d(m['pick'])} | "
                     f"{d(m['oracle'])} | {d(max(full, default=math.nan))}; of {len(full)} | {noise / se:.2f} | {d(dense)} |")
    return lines


def _versus(x: float, base: float, se: float) -> str:
    """``x`` and its difference to ``base`` in standard errors ``se``."""
    return f"{x:.4f} ({(x - base) / se:+.2f})"


def _medians(m: dict[str, float], per: list[dict[str, Any]], key: str) -> str:
    """The median ``m[key]`` and each seed's figure."""
    return f"{m[key]:.4f} ({'/'.join(f'{f[key]:.4f}' for f in per)})"


def _retrain_noise(cases: list[dict[str, Any]]) -> float:
    """Standard deviation over seeds of the test metric of the enqueued allocation best in median (the
    enqueued allocations are the same ranks in every seed's study: only the retrain's seed differs)."""
    by: dict[str, list[float]] = {}
    for r in cases:
        for t in r["trials"]:
            if t["method"] != "searched" and t["state"] == "COMPLETE" and t["test"] is not None:
                by.setdefault(t["method"], []).append(t["test"])
    by = {k: v for k, v in by.items() if len(v) > 1}
    if not by:
        return math.nan
    return statistics.stdev(max(by.values(), key=statistics.median))


def _test_se(task: Any, model: Any, metric: str, p: float) -> float:
    """Standard error of the metric on the test split: binomial for accuracies (at ``p``), else the
    spread of the dense model's per-sample values over sqrt(n)."""
    from ranksearch.core import sample_scores

    n = len(task.test)
    if metric in ("accuracy", "top5"):
        return math.sqrt(max(p * (1 - p), 1e-12) / n)
    return statistics.stdev(sample_scores(model, task.test, metric).tolist()) / math.sqrt(n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spaces", default="mnist5k-cnn,dcase-audio,image-compression,vit-mnist")
    ap.add_argument("--wps", help="comma list of ratios (default: each space's two most aggressive working points)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--trials", type=int, default=48, help="trials of the new search (its first 12 give the 12-trial figures)")
    ap.add_argument("--new", default="{}", help="JSON of SearchSettings fields for the new search (default: ranksearch's defaults)")
    ap.add_argument("--label", default="defaults", help="name of the new search's settings in the table")
    ap.add_argument("--no-today", action="store_true", help="skip the 12-trial study of the search before issue 12")
    ap.add_argument("--jobs", type=int, default=2, help="studies run at once, one thread each")
    ap.add_argument("--raw", help="also write every trial's figures to this JSON file")
    ap.add_argument("--from-raw", help="only make the table, from a --raw file of an earlier run")
    ap.add_argument("--out", default=str(Path(__file__).with_name("LOG.md")))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    new = json.loads(args.new)
    load_before = os.getloadavg()[0]
    jobs, meta = [], {}
    t0 = time.time()
    for name in args.spaces.split(","):
        space, task, model = _load(name)
        meta[name] = (space, task, model)
        if args.from_raw:
            continue
        wps = [float(w) for w in args.wps.split(",")] if args.wps else sorted(space.working_points)[:AGGRESSIVE]
        from ranksearch import RunOptions, search  # the sensitivity table depends on the dense model and the factors only: once per space

        probe = search(model, _settings(space, wps[0], 0, {**TODAY, "baselines": True}), task=task, run=RunOptions(n_trials=1))
        for wp in wps:
            for seed in seeds:
                jobs.append((name, wp, seed, "new", new, args.trials, probe.sensitivity))
                if not args.no_today:
                    jobs.append((name, wp, seed, "today", TODAY, 12, probe.sensitivity))
    if args.from_raw:
        runs = json.loads(Path(args.from_raw).read_text())
    else:
        # in the order made: each case's new study beside its today study, so that both see the same machine
        # (all new studies first, then all today ones, charged a drift of the machine's speed, seen: up to 1.5x
        # within an hour, to one of them)
        runs = []
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            for run in pool.map(_job, *zip(*jobs)):
                runs.append(run)
                print(f"[{len(runs)}/{len(jobs)} at {time.time() - t0:.0f} s] {run['space']} {run['wp']} seed {run['seed']} "
                      f"{run['variant']}: {run['wall']:.0f} s", flush=True)
                if args.raw:  # so far, in case the run is stopped
                    Path(args.raw).write_text(json.dumps(runs, indent=1))
    order = args.spaces.split(",")
    if args.from_raw:  # the main table's machine and load figures belong to the run that wrote the file: only the headroom
        publish(_headroom(runs, meta, order, args.label, args.from_raw), args.out)
        return
    load_after = os.getloadavg()[0]
    for r in runs:
        print(r["space"], r["wp"], r["seed"], r["variant"], _figures(r, 12 if r["variant"] == "new" else None),
              _figures(r) if r["variant"] == "new" else "", flush=True)
    if args.raw:
        Path(args.raw).write_text(json.dumps(runs, indent=1))

    def med(xs: list[float]) -> float:
        xs = [x for x in xs if not math.isnan(x)]
        return statistics.median(xs) if xs else math.nan

    cmd = (f"python benchmarks/quality.py --spaces {args.spaces} --seeds {args.seeds} --trials {args.trials}"
           + (f" --wps {args.wps}" if args.wps else "") + (f" --new '{args.new}'" if new else "")
           + (f" --label {args.label}" if args.label != "defaults" else "") + (" --no-today" if args.no_today else "")
           + (f" --raw {args.raw}" if args.raw else ""))
    used = next((r["settings"] for r in runs if r["variant"] == "new"), {})
    shown = {k: used.get(k) for k in ("proposals", "sampler", "pruner", "step", "screen", "keep", "screen_samples", "prior",
                                    "factors", "rank_multiple")}
    lines = [
        f"## Quality ({', '.join(args.spaces.split(','))}{' at ' + args.wps if args.wps else ''}; {args.label}): best enqueued "
        f"allocation vs the search's pick, 12 and {args.trials} trials ({datetime.date.today()})",
        "",
        f"Command: `OMP_WAIT_POLICY=PASSIVE {cmd}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {args.jobs} studies at once with 1 thread each, torch "
        f"{torch.__version__}; load average (1 min) before {load_before:.2f}, after {load_after:.2f}; "
        f"{time.time() - t0:.0f} s in all.  ",
        f"New search ({args.label}): {shown}. Today: {TODAY} (12 trials). Cells: test metric, median over seeds {args.seeds} "
        "(per seed in brackets). *enqueued*: the enqueued allocation best on validation; *sampled*: the sampled trial best on "
        "validation; *pick*: the search's result (best on validation of all); *picked*: its kind per seed; *d/SE*: "
        "(median pick - median enqueued) / the test split's standard error; *full*: trials retrained fully (median); "
        "*wall*: median seconds per study (12 trials of the new search: until its 12th trial finished), and its ratio to "
        "today's 12 trials; *paired*: per seed, the pick minus the best enqueued allocation on the same test samples, "
        "divided by the standard error of that difference (stdev of the per-sample differences / sqrt(n)), median (per "
        "seed in brackets; 0 where the pick is the enqueued allocation).",
        "",
        "| space | WP | metric | test SE | trials | search | enqueued | sampled | pick | picked | d/SE | paired d/SE | full | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["space"], r["wp"]) for r in runs}, key=lambda k: (args.spaces.split(",").index(k[0]), -k[1]))
    for name, wp in keys:
        space, task, model = meta[name]
        today = [r["wall"] for r in runs if (r["space"], r["wp"], r["variant"]) == (name, wp, "today")]
        for label, variant, first in (("today", "today", None), (args.label, "new", 12), (args.label, "new", None)):
            cases = [r for r in runs if (r["space"], r["wp"], r["variant"]) == (name, wp, variant)]
            per = [_figures(r, first) for r in cases]
            if not per:
                continue
            z = [_paired_z(r, first) for r in cases]
            paired = f"{med(z):+.2f} ({'/'.join(f'{v:+.1f}' for v in z)})" if variant == "new" else "-"
            m = {k: med([f[k] for f in per]) for k in ("enqueued", "sampled", "pick", "full", "wall")}
            se = _test_se(task, model, task.metric, m["enqueued"])
            ratio = f" ({m['wall'] / med(today):.2f}x)" if today else ""
            cell = functools.partial(_medians, m, per)
            lines.append(f"| {name} | {wp} | {task.metric} | {se:.4f} | {per[0]['trials']} | {label} | {cell('enqueued')} | "
                         f"{cell('sampled')} | {cell('pick')} | {'/'.join(f['picked'] for f in per)} | "
                         f"{(m['pick'] - m['enqueued']) / se:+.2f} | {paired} | {m['full']:.0f} | {m['wall']:.0f}{ratio} |")
    publish(lines, args.out)
    if args.raw:
        publish(_headroom(runs, meta, order, args.label, args.raw), args.out)


if __name__ == "__main__":
    main()
