"""Byte working points: the searched stream against NNCodec on the dense model and the seed rule, at the same bytes.

For each space, each budget (a fraction of the dense model's NNCodec stream at the default qp -38) and each seed:
one study ``ranksearch search --bytes N`` of ``--trials`` trials. Its decoded best model is compared, on the same
test samples (paired: the per-sample differences' mean over their standard error), with

* *dense*: NNCodec on the dense model at the finest uniform qp whose stream is within the budget (no retrain), its
  batch norms folded into their layers (NNR's batch-norm folding, as the study codes), and with NNCodec's defaults
  (nothing folded, the other tensors at qp -75); the best is compared with the better of the two;
* *rule*: the seed rule at the ratio whose stream at qp -38 meets the budget (the study's base ratio), retrained as
  every trial is, coded at the finest uniform qp within the budget (the study's first trial).

Every stream is measured by NNCodec; the table gives each one's bytes against the budget. The spread of the best's
test metric over the seeds says how much another retrain seed moves the figure. Writes its section to LOG.md.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bytes.py --spaces mnist5k-cnn --fractions 0.1,0.05 --seeds 0,1 --trials 20
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

    return sample_scores(model.eval(), task.test, task.metric, forward=task.forward).double().numpy()


def _paired(a: Any, b: Any) -> float:
    """(mean of a - b) / its standard error, over the test samples."""
    d = a - b
    se = float(d.std(ddof=1) / math.sqrt(len(d)))
    return float(d.mean()) / se if se > 0 else 0.0


def _run(space_name: str, fraction: float, seed: int, trials: int, qat: float) -> dict[str, Any]:
    from ranksearch import Method, RunOptions, SearchSettings, TrialRecord, search
    from ranksearch.core._bytes import uniform_qp
    from ranksearch.core._nnr import DEFAULT_QP, decoded_model, encode, encode_model
    from ranksearch.errors import RankSearchError
    from ranksearch.results import trial_model
    from ranksearch.spaces import load_space
    from ranksearch.study import artifact_store
    from ranksearch.study._bytes import Coder
    from ranksearch.study._plan import Workload, make_plan
    from ranksearch.study._storage import read_study

    space = load_space(space_name)
    task = space.build_task()
    model = space.build_model(task).eval()
    dense_bytes = len(encode(model, qp=DEFAULT_QP))
    budget = int(fraction * dense_bytes)
    settings = SearchSettings(1.0, target_bytes=budget, model=space.name, min_rank=space.min_rank, exclude=tuple(space.exclude),
                              retrain=space.retrain, seed=seed, rank_multiple=space.rank_multiple, qat=qat)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        try:
            result = search(model, settings, task=task, run=RunOptions(n_trials=trials, out_dir=Path(tmp), report=False))
        except RankSearchError as e:  # a budget no model of this space codes within (refused before the study is written)
            return {"space": space_name, "fraction": fraction, "seed": seed, "qat": qat, "budget": budget, "refused": str(e)}
        wall = time.perf_counter() - start
        study = result.study
        point = read_study(study).byte_point
        assert point is not None and result.stream is not None
        best = TrialRecord.of(study.trials[result.config.search["trial"]])
        folds = Coder(budget, task).folds(model)
        dense: dict[str, Any] = {}
        for name, fold in (("nnc", {}), ("bnf", folds)):  # NNCodec's defaults; and with batch norms folded, as the study codes
            try:
                qp, stream, tensors = uniform_qp(model, budget, fold)
                dense[name] = (qp, len(stream), _scores(decoded_model(model, tensors, fold), task))
            except RankSearchError:  # NNCodec cannot code the dense model this small at any qp
                dense[name] = (None, 0, None)
        rule_trial = next(t for t in study.trials if TrialRecord.of(t).method is Method.SEED_RULE)  # at the base ratio, uniform
        rule = TrialRecord.of(rule_trial)
        small = trial_model(study, rule_trial, model, artifact_store(Path(tmp) / "artifacts"))
        if small is None:  # its weights were not uploaded (it was never the best so far): retrain it again, as the study did
            resolved = SearchSettings.from_dict(result.config.search["settings"])
            small = make_plan(model, resolved, Workload(task=task)).retrained(model, rule)
        assert rule.qps is not None
        rule_stream, rule_tensors = encode_model(small, DEFAULT_QP, {**rule.qps, **(rule.other_qps or {})}, rule.folds)
        rule_scores = _scores(decoded_model(small, rule_tensors, rule.folds), task)
        best_scores = _scores(result.model, task)
        vs = [_paired(best_scores, d[2]) for d in dense.values() if d[2] is not None]
        return {"space": space_name, "fraction": fraction, "seed": seed, "qat": qat, "scores": best_scores,
                "budget": budget, "dense_bytes": dense_bytes, "wall_s": wall,
                "trials": result.summary.trials.to_dict(), "base_ratio": point.base_ratio, "ratios": len(point.ratios),
                "top_ratio": point.ratios[0], "metric": task.metric,
                "dense": {"qp": dense["bnf"][0], "bytes": dense["bnf"][1], "test": None if dense["bnf"][2] is None else float(dense["bnf"][2].mean()),
                          "floor": point.dense.get("floor"), "nnc_qp": dense["nnc"][0], "nnc_bytes": dense["nnc"][1],
                          "nnc_test": None if dense["nnc"][2] is None else float(dense["nnc"][2].mean())},
                "folds": len(folds),
                "rule": {"qp": sorted(set(rule.qps.values())), "bytes": len(rule_stream), "ratio": rule.ratio, "test": float(rule_scores.mean()),
                         "uncoded_val": rule.before_coding},
                "best": {"trial": result.config.search["trial"], "method": str(best.method), "coding": str(best.coding),
                         "ratio": best.ratio, "bytes": len(result.stream), "qps": [min(best.qps.values()), max(best.qps.values())],
                         "test": float(best_scores.mean()), "val": study.trials[result.config.search["trial"]].value,
                         "uncoded_val": best.before_coding, "predicted": best.predicted_bytes},
                "vs_dense": min(vs) if vs else None, "vs_rule": _paired(best_scores, rule_scores)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spaces", default="mnist5k-cnn")
    ap.add_argument("--fractions", default="0.1,0.05")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--qat", default="0", help="the shares of each retrain trained quantization-aware, one study each (0: plain)")
    ap.add_argument("--log", default="benchmarks/LOG.md")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    load = os.getloadavg()
    runs = []
    for space in args.spaces.split(","):
        for fraction in (float(f) for f in args.fractions.split(",")):
            for seed in (int(s) for s in args.seeds.split(",")):
                for qat in (float(q) for q in args.qat.split(",")):
                    runs.append(_run(space, fraction, seed, args.trials, qat))
                    print({k: v for k, v in runs[-1].items() if k != "scores"}, flush=True)
    after = os.getloadavg()
    publish(_lines(args, runs, load[0], after[0]), args.log)


def _lines(args: argparse.Namespace, runs: list[dict[str, Any]], load: float, after: float) -> list[str]:
    lines = [f"## Byte working points ({args.spaces}; {args.fractions} of the dense stream; seeds {args.seeds}; batch norms folded, "
             f"dense candidates{'' if args.qat == '0' else f'; quantization-aware shares {args.qat}'}; the best among the streams "
             f"within 2%) ({datetime.date.today()}, {platform.node()}, "
             f"{torch.get_num_threads()} threads)", "",
             f"`OMP_WAIT_POLICY=PASSIVE python benchmarks/bytes.py --spaces {args.spaces} --fractions {args.fractions} --seeds {args.seeds} "
             f"--trials {args.trials}{'' if args.qat == '0' else f' --qat {args.qat}'}` (load average {load:.2f} before, {after:.2f} after).", "",
             "Budget: the fraction of the dense model's NNCodec stream at qp -38. *Dense*: NNCodec on the dense model at the finest "
             "uniform qp within the budget, its batch norms folded (NNR's BNF, as the study codes); then with NNCodec's defaults "
             "(nothing folded); d/SE vs dense is against the better of the two. *Rule*: the seed rule at the study's base ratio (its stream at qp -38 meets the budget), "
             "retrained, coded at the finest uniform qp within the budget. *Best*: the study's best trial (by the decoded model's "
             "validation metric, among the streams that take at least 98% of the budget), its stream as written. Every size measured by NNCodec; test metrics of the decoded models; d/SE "
             "paired on the same test samples. *Retrain*: plain (the search's short retrain, then coding), or its last share "
             "quantization-aware (`--qat`: every trial's, the rule's too, each weight rounded to the step of the qp it would be "
             "coded at as that share begins); *d/SE vs plain*: the best's decoded model against the plain study's best of the same "
             "case and seed.", "",
             "| space | budget (B) | seed | retrain | dense: qp, bytes, test | rule: ratio, qp, bytes, test | best: ratio, allocation, qps, bytes "
             "(of budget), test | d/SE vs dense | d/SE vs rule | d/SE vs plain | trials | wall s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    refused = [r for r in runs if "refused" in r]
    runs = [r for r in runs if "refused" not in r]
    for r in runs:
        d, u, b = r["dense"], r["rule"], r["best"]
        dense = (f"{d['qp']}, {d['bytes']:,}, {d['test']:.4f}" if d["qp"] is not None else "no qp fits")
        dense += (f"; NNCodec's defaults: {d['nnc_qp']}, {d['nnc_bytes']:,}, {d['nnc_test']:.4f}" if d["nnc_qp"] is not None
                  else "; NNCodec's defaults: no qp fits")
        vs_dense = "unreachable" if r["vs_dense"] is None else f"{r['vs_dense']:+.2f}"
        plain = next((p for p in runs if p["qat"] == 0 and (p["space"], p["fraction"], p["seed"]) == (r["space"], r["fraction"], r["seed"])), None)
        vs_plain = "" if r["qat"] == 0 or plain is None else f"{_paired(r['scores'], plain['scores']):+.2f}"
        retrain = "plain" if r["qat"] == 0 else f"last {r['qat']:.0%} qat"
        lines.append(f"| {r['space']} | {r['budget']:,} ({r['fraction']:g}x) | {r['seed']} | {retrain} | {dense} | "
                     f"{u['ratio']:.4f}, {','.join(map(str, u['qp']))}, {u['bytes']:,}, {u['test']:.4f} | {b['ratio']:.4f}, {b['method']} "
                     f"{b['coding']}, {b['qps'][0]}..{b['qps'][1]}, {b['bytes']:,} ({b['bytes'] / r['budget']:.4f}), {b['test']:.4f} | "
                     f"{vs_dense} | {r['vs_rule']:+.2f} | {vs_plain} | {r['trials']['complete']}+{r['trials']['pruned']}p | {r['wall_s']:.0f} |")
    for r in refused:
        lines.append(f"| {r['space']} | {r['budget']:,} ({r['fraction']:g}x) | {r['seed']} | {r['qat']:g} | refused: {r['refused']} | | | | | | | |")
    for qat in sorted({r["qat"] for r in runs}):
        lines += _count([r for r in runs if r["qat"] == qat], "plain" if qat == 0 else f"last {qat:.0%} quantization-aware")
        pairs = [(r, p) for r in runs for p in runs if r["qat"] == qat and qat > 0 and p["qat"] == 0
                 and (p["space"], p["fraction"], p["seed"]) == (r["space"], r["fraction"], r["seed"])]
        if pairs:
            ds = [_paired(r["scores"], p["scores"]) for r, p in pairs]
            lines.append(f"Against the plain retrain's best, same case and seed: better by more than one SE in {sum(d > 1 for d in ds)} of "
                         f"{len(ds)}, worse by more than one in {sum(d < -1 for d in ds)}.")
    return lines


def _count(runs: list[dict[str, Any]], retrain: str) -> list[str]:
    lines = [f"\nRetrain {retrain}:"]
    cases = {(r["space"], r["fraction"]) for r in runs}
    def above(r: dict[str, Any]) -> bool:  # a dense model NNCodec cannot code within the budget is beaten by any stream that fits
        return (r["vs_dense"] is None or r["vs_dense"] > 1) and r["vs_rule"] > 1

    beat = sum(all(above(r) for r in runs if (r["space"], r["fraction"]) == c) for c in cases)
    worse = sum(any((r["vs_dense"] or 0) < -1 or r["vs_rule"] < -1 for r in runs if (r["space"], r["fraction"]) == c) for c in cases)
    lines.append(f"Beats both by more than one SE (every seed; where no qp codes the dense model within the budget, the rule "
                 f"alone): {beat} of {len(cases)} cases; worse than either by more than one SE (any seed): {worse}.")
    for c in sorted(cases):
        tests = [r["best"]["test"] for r in runs if (r["space"], r["fraction"]) == c]
        if len(tests) > 1:
            lines.append(f"Retrain seed noise, {c[0]} at {c[1]:g}x: the best's test metric over the seeds ranges {min(tests):.4f}-"
                         f"{max(tests):.4f} (stdev {statistics.stdev(tests):.4f}).")
    fitted = [r for r in runs if r["best"]["coding"] == "fitted"]
    landed = [r["best"]["bytes"] / r["budget"] for r in runs] or [math.nan]
    lines.append(f"The best streams ({len(fitted)} of {len(runs)} coded per tensor, the others at one uniform qp) take "
                 f"{min(landed):.4f}-{max(landed):.4f} of their budgets (NNCodec); the byte table "
                 "predicted them within " + f"{max(abs(r['best']['predicted'] - r['best']['bytes']) / r['best']['bytes'] for r in runs if r['best']['predicted']):.2%}."
                 if any(r["best"]["predicted"] for r in runs) else "")
    return lines


if __name__ == "__main__":
    main()
