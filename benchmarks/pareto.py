"""One Pareto study against one study per working point: the front's points against the single studies' bests.

For each seed, on one space, the same process runs, one after the other:

* ``points``: the working points as ``ranksearch search --ratio A,B`` runs them today (one study each, in turn, the
  second given the first's sensitivity table and best allocation), ``--trials`` trials each;
* ``pareto``: ``ranksearch search --ratio A,B --pareto``: one multi-objective study over the same points,
  ``--pareto-trials`` trials in all.

Reported per working point, for each seed: the test metric of each single study's best, of the Pareto front's best
no larger than the point, their paired difference on the same test samples in standard errors of the per-sample
differences (both models scored on every test sample), and the wall time of each run (search call, setup included).
The spread of the single study's test metric over the seeds says how much another retrain seed moves the figure.
With ``--axis bytes`` the points are byte budgets, fractions of the dense model's NNR stream at qp -38 (``--ratios``
then gives the fractions): one byte working point study each (``--bytes N``) against one study on the bytes axis
(``--pareto-bytes A,B``); every model is scored decoded from its stream.
Writes its section to benchmarks/LOG.md.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/pareto.py --space mnist5k-cnn --ratios 0.25,0.1 --seeds 0,1 --trials 20 --pareto-trials 28
    OMP_WAIT_POLICY=PASSIVE python benchmarks/pareto.py --space mnist5k-cnn --axis bytes --ratios 0.1,0.05 --seeds 0,1 --trials 20 --pareto-trials 28
"""

from __future__ import annotations

import argparse
import datetime
import logging
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _report import publish  # benchmarks/_report.py (scripts run from the repository root)


def _scores(model: Any, task: Any) -> Any:
    from ranksearch.core import sample_scores

    return sample_scores(model, task.test, task.metric, forward=task.forward).numpy()


def _paired(a: Any, b: Any) -> tuple[float, float]:
    """Mean of a - b over the test samples and its standard error."""
    d = a - b
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))


def _run(space_name: str, ratios: list[float], seed: int, trials: int, pareto_trials: int, axis: str = "ratio") -> dict[str, Any]:
    from optuna.trial import TrialState

    from ranksearch import RunOptions, TrialRecord, search, search_points
    from ranksearch.core._nnr import encode
    from ranksearch.results import collect, trial_model
    from ranksearch.spaces import load_space
    from ranksearch.study import artifact_store

    space = load_space(space_name)
    task = space.build_task()
    model = space.build_model(task)
    base = dict(model=space.name, min_rank=space.min_rank, exclude=tuple(space.exclude), retrain=space.retrain, seed=seed,
                rank_multiple=space.rank_multiple)
    from ranksearch import SearchSettings

    out: dict[str, Any] = {"seed": seed, "points": {}}
    coded = axis == "bytes"
    if coded:  # the single studies' budgets: the same fractions of the dense model's stream
        dense_bytes = len(encode(model.eval()))
        points = [SearchSettings(1.0, target_bytes=max(1, math.floor(r * dense_bytes)), **base) for r in ratios]
        pareto = SearchSettings(1.0, pareto=tuple(ratios), pareto_axis="bytes", **base)
    else:
        points = [SearchSettings(r, **base) for r in ratios]
        pareto = SearchSettings(max(ratios), pareto=tuple(ratios), **base)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        singles = search_points(model, points, task=task, run=RunOptions(n_trials=trials, out_dir=Path(tmp) / "points", report=False))
        out["points_s"] = time.perf_counter() - start
        start = time.perf_counter()
        front = search(model, pareto, task=task, run=RunOptions(n_trials=pareto_trials, out_dir=Path(tmp) / "pareto", report=False))
        out["pareto_s"] = time.perf_counter() - start
        out["pareto_trials"] = front.summary.trials.to_dict()
        store = artifact_store(Path(tmp) / "pareto" / "artifacts")
        for single, point in zip(singles, front.summary.points):
            assert coded or abs(point.target_ratio - single.summary.target_ratio) < 1e-12
            b = _scores(single.model, task)  # at a byte working point: the model its stream decodes to
            row: dict[str, Any] = {"single_test": float(b.mean()), "single_trial": single.summary.best.trial,
                                   "single_ratio": single.summary.achieved_ratio, "single_trials": single.summary.trials.to_dict(),
                                   "seed_rule_test": point.seed_rule.test if point.seed_rule else None}
            made = [t for t in front.study.get_trials(states=(TrialState.COMPLETE,)) if TrialRecord.of(t).target == point.target_ratio]
            at = max(made, key=lambda t: (t.values[0], -t.number))  # the best made for this point, as its own study picks
            for key, t in (("front", front.study.trials[point.best.trial]), ("at", at)):  # type: ignore[index]
                small = (collect(front.study, model, front.curves or {}, artifacts=store, trial=t.number).model if coded  # decoded
                         else trial_model(front.study, t, model, store))
                assert small is not None, f"trial {t.number} has no weights"
                a = _scores(small, task)
                mean, se = _paired(a, b)
                if coded:
                    row[f"{key}_bytes"] = TrialRecord.of(t).bytes
                    row["single_bytes"] = single.summary.best.bytes
                row.update({f"{key}_test": float(a.mean()), f"{key}_trial": t.number, f"{key}_ratio": TrialRecord.of(t).ratio,
                            f"{key}_method": str(TrialRecord.of(t).method), f"{key}_d": mean, f"{key}_se": se})
            out["points"][f"{point.target_ratio:g}"] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="mnist5k-cnn")
    ap.add_argument("--ratios", default="0.25,0.1")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--trials", type=int, default=20, help="trials of each single-point study")
    ap.add_argument("--pareto-trials", type=int, default=28, help="trials of the Pareto study")
    ap.add_argument("--axis", choices=("ratio", "bytes"), default="ratio",
                    help="bytes: --ratios are byte budgets, fractions of the dense model's stream at qp -38")
    ap.add_argument("--log", default="benchmarks/LOG.md")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    ratios = [float(r) for r in args.ratios.split(",")]
    load = os.getloadavg()
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        runs.append(_run(args.space, ratios, seed, args.trials, args.pareto_trials, args.axis))
        print(runs[-1], flush=True)
    after = os.getloadavg()
    coded = args.axis == "bytes"
    what = (f"byte budgets, fractions of the dense model's NNR stream at qp -38 (one `--bytes N` study each, and one "
            f"`--pareto-bytes {args.ratios}` study); every model is scored decoded from its stream, and the parentheses give its "
            "stream's bytes, not its ratio" if coded else f"`--ratio {args.ratios}`, and one `--ratio {args.ratios} --pareto` study")
    lines = [f"## Pareto study{' over bytes' if coded else ''} against one study per working point ({args.space}, {args.ratios}) "
             f"({datetime.date.today()}, {platform.node()}, {torch.get_num_threads()} threads)", "",
             f"`OMP_WAIT_POLICY=PASSIVE python benchmarks/pareto.py --space {args.space}{' --axis bytes' if coded else ''} --ratios "
             f"{args.ratios} --seeds {args.seeds} --trials {args.trials} --pareto-trials {args.pareto_trials}` (load average "
             f"{load[0]:.2f} before, {after[0]:.2f} after).",
             "", f"Points: {what}. One study per point: {args.trials} trials each, the second given the first's sensitivity table "
             f"and best allocation. Pareto: one study of {args.pareto_trials} trials. Each Pareto figure is paired with the single study's best on the same test samples: d is the "
             "difference of the test metric, d/SE in standard errors of the per-sample differences. *Front*: the front's best "
             "no larger than the point (by validation metric, as the summary reports it); *made for it*: the Pareto study's "
             "best trial made for that ratio (as a study of that point alone picks).", "",
             "| seed | point | single: test (trial, ratio) | front: test (trial, ratio, allocation) | d/SE | made for it: test (trial, "
             "allocation) | d/SE | seed rule test |", "|---|---|---|---|---|---|---|---|"]

    def z(p: dict[str, Any], key: str) -> str:
        return f"{p[f'{key}_d'] / p[f'{key}_se'] if p[f'{key}_se'] else 0.0:+.2f}"

    def size(p: dict[str, Any], key: str) -> str:
        return f"{p[f'{key}_bytes']:,} bytes" if coded else f"{p[f'{key}_ratio']:.4f}"

    for run in runs:
        for point, p in run["points"].items():
            lines.append(f"| {run['seed']} | {point} | {p['single_test']:.4f} ({p['single_trial']}, {size(p, 'single')}) | "
                         f"{p['front_test']:.4f} ({p['front_trial']}, {size(p, 'front')}, {p['front_method']}) | {z(p, 'front')} | "
                         f"{p['at_test']:.4f} ({p['at_trial']}, {p['at_method']}) | {z(p, 'at')} | {p['seed_rule_test']} |")
    for key, label in (("front", "front"), ("at", "made for it")):
        within = sum(p[f"{key}_d"] >= -p[f"{key}_se"] for r in runs for p in r["points"].values())
        total = sum(len(r["points"]) for r in runs)
        lines.append(f"\n{label}: not worse than the single study by more than one SE in {within} of {total} cases.")
    lines += ["", "| seed | one study per point, s | Pareto study, s | ratio | Pareto trials (complete, pruned) |", "|---|---|---|---|---|"]
    for run in runs:
        t = run["pareto_trials"]
        lines.append(f"| {run['seed']} | {run['points_s']:.0f} | {run['pareto_s']:.0f} | {run['pareto_s'] / run['points_s']:.2f}x | "
                     f"{t['complete']}, {t['pruned']} |")
    for point in runs[0]["points"]:
        singles = [r["points"][point]["single_test"] for r in runs]
        if len(singles) > 1:
            lines.append(f"\nRetrain seed noise at {point}: the single study's best test metric over the seeds ranges "
                         f"{min(singles):.4f}-{max(singles):.4f} (stdev {statistics.stdev(singles):.4f}).")
    publish(lines, args.log)


if __name__ == "__main__":
    main()
