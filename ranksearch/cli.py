"""Command line: ``ranksearch spectra | solve | search | worker | export | apply``.

``export`` writes a study's best trial as a results folder, or, with ``--config``, a rank config's
factorized model as one file in ``--format`` (see :mod:`ranksearch.formats`).

``main(argv)`` returns the exit code, so tests call it in-process. Errors in the user's input
(:class:`~ranksearch.errors.RankSearchError` and file-system errors) print one line on stderr and exit 2 (the
traceback with ``--debug``); failing trials or workers exit 1; Ctrl-C and SIGTERM exit 130 with the command
that resumes. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn
from tqdm.contrib.logging import logging_redirect_tqdm

from ranksearch._io import atomic_write_text, check_writable
from ranksearch._storage import (GRACE_S, HEARTBEAT_S, StudyAttrs, artifact_store, check_storage, create_or_join,
                                 open_storage)
from ranksearch.allocation import apply, load_factorized, solve
from ranksearch.baselines import PROXY_EVALUATIONS
from ranksearch.calibrate import calibration_batches
from ranksearch.config import RankConfig
from ranksearch.cost import rank_multiple_for
from ranksearch.errors import RankSearchError
from ranksearch.export import export_study, summary_table, working_points_table, write_results
from ranksearch.report import write_report
from ranksearch.formats import FORMATS, check_packages, get_format, sample_input, shaped_input, write_model
from ranksearch.retrain import best_device, evaluate
from ranksearch.search import search
from ranksearch.settings import FACTORS, GRANULARITIES, PRIORS, PROPOSALS, PRUNERS, SAMPLERS, SENSITIVITIES, SearchSettings
from ranksearch.spaces import Space, cache_root, load_space
from ranksearch.spectra import spectra
from ranksearch.surgery import count_params, find_layers
from ranksearch.task import Task
from ranksearch.weights import save_state_dict
from ranksearch.worker import TrialsFailing, WorkersFailed, check_model, run_worker

__all__ = ["main"]

_log = logging.getLogger("ranksearch")


def _multiple(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"rank multiple {text!r} is not an int; give e.g. 8, or auto") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"rank multiple {value} must be >= 1 (1: any rank), or auto")
    return value


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"ratio {text!r} is not a number; give e.g. 0.25") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"ratio {value} must be in (0, 1), e.g. 0.25 keeps a quarter (1 would keep everything)")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump): ``ranksearch CMD: error: ...``, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _space_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", required=True, help="space name in search_spaces/ or a .yaml file")
    p.add_argument("--weights", help="local file with the dense model's weights (.safetensors or .pt)")
    p.add_argument("--data", help="local data folder for spaces that read one (ImageNet-style, DCASE-style)")


def _ratios(text: str) -> list[float]:
    return [_ratio(t) for t in text.split(",")]


def _target_args(p: argparse.ArgumentParser, mse_bound: bool = False, several: bool = False) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    if several:
        g.add_argument("--ratio", type=_ratios, help="fraction(s) of parameters to keep, e.g. 0.25 or 0.25,0.1")
        g.add_argument("--wp", help="working point(s) of the space: WP1..WP4, a comma list, or 'all'")
    else:
        g.add_argument("--ratio", type=_ratio, help="fraction of parameters to keep, e.g. 0.25")
        g.add_argument("--wp", help="working point of the space: WP1..WP4")
    if mse_bound:
        g.add_argument("--mse-bound", type=float, help="instead of a ratio: one MSE bound for every layer")
    p.add_argument("--rank-multiple", type=_multiple, default="auto",
                   help="round ranks to multiples of this; auto (default): 8 with CUDA (bf16 tensor cores), else the space's")
    p.add_argument("--min-rank", type=int, help="smallest rank allowed (default: the space's)")


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")
    common.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")
    parser = _Parser(prog="ranksearch", description="Low-rank factorization with searched ranks.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("spectra", parents=[common], help="per-layer singular values and MSE-to-rank curves")
    _space_args(p)
    p.add_argument("--out", help="write the curves as JSON here (default: a table on stdout)")

    p = sub.add_parser("solve", parents=[common], help="ranks at a working point from one MSE bound (no training)")
    _space_args(p)
    _target_args(p, mse_bound=True)
    p.add_argument("--out", required=True, help="rank_config.json to write")

    p = sub.add_parser("search", parents=[common], help="Optuna search of the rank allocation with a short retrain per trial")
    _space_args(p)
    _target_args(p, several=True)
    p.add_argument("--factors", choices=FACTORS[1:], default="data-aware",
                   help="searched trials truncate on calibration activations (data-aware, default) or the weights alone")
    p.add_argument("--prior", choices=PRIORS, default=PRIORS[0], help="centre of the searched weights")
    p.add_argument("--no-baselines", action="store_true", help="enqueue only the seed rule (no uniform / sensitivity)")
    p.add_argument("--proposals", choices=PROPOSALS, default=PROPOSALS[0],
                   help="sampled trials step each layer's rank from the best trial so far (incumbent, default) or set "
                        "log10 weights on the MSE bound around the prior's centre (weights)")
    p.add_argument("--step", type=float, default=0.2, help="std of the local sampler's log2 rank steps (default 0.2)")
    p.add_argument("--screen", type=float, default=0.25,
                   help="fraction of the first retrain epoch after which the gate screens a sampled trial (default 0.25; 0: at epoch 1)")
    p.add_argument("--keep", type=float, default=0.2, help="fraction of screened trials the gate lets go on (default 0.2; then the top half at each epoch)")
    p.add_argument("--screen-samples", type=int, default=512,
                   help="validation samples (a fixed random subset) of the screen and of every epoch but the last (default 512; 0: all)")
    p.add_argument("--sensitivity", choices=SENSITIVITIES, default=SENSITIVITIES[0],
                   help="the baselines' sensitivity table: auto (the default): measured when it fits --sensitivity-budget, "
                        "else output on a validation subset that fits; measured: the metric with each layer at each probe rank; "
                        "output: the same probes scored by how close the outputs stay to the dense model's (no labels); "
                        f"proxy: from the curves, calibrated on {PROXY_EVALUATIONS} evaluations (cheap, but its allocations "
                        "lose accuracy: see benchmarks/RESULTS.md)")
    p.add_argument("--sensitivity-budget", type=int, default=48,
                   help="under auto: most evaluations of the model (as passes over the whole validation split) the table may take (default 48)")
    p.add_argument("--sensitivity-samples", type=int, default=0,
                   help="validation samples (a fixed random subset) the sensitivity probes run on (default 0: all)")
    p.add_argument("--sampler", choices=SAMPLERS, default=SAMPLERS[0], help=f"Optuna sampler (default {SAMPLERS[0]})")
    p.add_argument("--granularity", choices=GRANULARITIES, default=GRANULARITIES[0],
                   help="one searched weight per layer (default) or per group of similar layers")
    p.add_argument("--pruner", choices=PRUNERS, default=PRUNERS[0], help=f"Optuna pruner (default {PRUNERS[0]})")
    p.add_argument("--spread", type=float, default=3.0, help="searched layer weights range over 10**[-spread, spread] (default 3)")
    p.add_argument("--epochs", type=int, help="retrain epochs per trial (default: the space's)")
    p.add_argument("--distill", type=float, help="weight in [0, 1] of distillation from the dense model")
    p.add_argument("--compile", action="store_true",
                   help="retrain through torch.compile (inductor); compiling costs time per trial, worth it for long retrains")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--resume", action="store_true", help="continue the study found in the storage (or join it)")
    p.add_argument("--study-name", help="study name in the storage (default: SPACE@RATIO)")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine sharing the study (default 1)")
    p.add_argument("--gpus", help="CUDA devices for the workers, round-robin, e.g. 0,1 (several workers may share one)")
    _run_args(p)

    p = sub.add_parser("worker", parents=[common], help="join a study: run its trials (settings, space and weights digest come from it)")
    p.add_argument("--storage", required=True, help="the study's storage: database URL or journal file")
    p.add_argument("--study-name", required=True, help="the study to join")
    p.add_argument("--weights", help="local dense weights (default: the file the study names, or the space's cache)")
    p.add_argument("--data", help="local data folder (default: the study's)")
    p.add_argument("--threads", type=int, help="torch threads of this worker (default: all cores)")
    _run_args(p, storage=False)

    p = sub.add_parser("export", parents=[common],
                       help="write the best trial of a study so far (also while workers run), or a rank config's model as --format onnx")
    p.add_argument("--storage", help="a study's storage: database URL or journal file (with --study-name)")
    p.add_argument("--study-name", help="the study to export (its results folder is written to --out)")
    p.add_argument("--config", help="instead of a study: a rank_config.json, whose model is written to --out in --format")
    p.add_argument("--format", choices=sorted(FORMATS), help="with --config: the file format to write (onnx, nnr)")
    p.add_argument("--space", help="with --config: the space (default: the one the config names)")
    p.add_argument("--data", help="with --config: local data folder of the space (the export traces one test batch)")
    p.add_argument("--weights", help="a study: local dense weights (default: the file the study names, or the space's cache); "
                                     "--config: the factorized model's weights (factorized.safetensors of a search; "
                                     "default: the config's ranks applied to the dense model, untrained)")
    p.add_argument("--artifacts", help="a study: the artifact folder the workers wrote to (default: the study's)")
    p.add_argument("--allow-growth", action="store_true", help="with --config: accept ranks at which a layer's pair is not smaller than it")
    p.add_argument("--qp", type=int, help="with --format nnr: NNCodec's quantization parameter (default -38; lower is finer)")
    p.add_argument("--verify", action="store_true",
                   help="with --format nnr: decode the bitstream, evaluate the decoded model on the space's test split and "
                        "print its size against the dense model's bitstream at the same qp")
    _factors_arg(p)
    p.add_argument("--out", required=True, help="a study: output folder; --config: the file to write (e.g. model.onnx, model.nnr)")

    p = sub.add_parser("apply", parents=[common], help="rebuild the factorized model from a rank config and save it")
    _space_args(p)
    p.add_argument("--config", required=True, help="rank_config.json")
    p.add_argument("--allow-growth", action="store_true", help="accept ranks at which a layer's pair is not smaller than it")
    _factors_arg(p)
    p.add_argument("--out", required=True, help=".safetensors file to write")
    p = sub.add_parser("report", parents=[common], help="write report.html and PNG figures into a search's output folder")
    p.add_argument("folder", help="the --out folder of a search (one working point, or several as ratio-*/)")
    return parser


def _factors_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--factors", choices=("config", "plain"), default="config",
                   help="initial factors: the config trial's (default; data-aware ones are rebuilt from the space's calibration "
                        "data), or plain SVD")


def _applied(space: Space, cfg: RankConfig, args: argparse.Namespace, task: Task | None = None) -> nn.Module:
    """The config's ranks applied to the space's dense model, with the factors its trial started from."""
    data_aware = args.factors == "config" and cfg.search.get("factors") == "data_aware"
    if data_aware and space.task_factory is None:
        raise RankSearchError(f"The config's trial used data-aware factors, which need space {space.name!r}'s calibration data, but "
                              "the space has no task; pass --factors plain for plain SVD factors.")
    task = task if task is not None or not data_aware else space.build_task()
    model = space.build_model(task, allow_random=True, progress=args.progress)
    calibration = calibration_batches(task.train) if data_aware and task is not None else None
    return apply(model, cfg, calibration=calibration, forward=task.forward if task is not None else None,
                 factors=None if args.factors == "config" else "plain", allow_growth=args.allow_growth)


def _run_args(p: argparse.ArgumentParser, storage: bool = True) -> None:
    """Run options: how a study is run, not what it searches (not stored in its settings)."""
    p.add_argument("--trials", type=int, default=None if not storage else 20,
                   help="finished trials the study should hold, all workers counted (default " + ("20)" if storage else "the study's)"))
    p.add_argument("--timeout", type=float, help="wall-clock limit in seconds")
    if storage:
        p.add_argument("--storage", help="Optuna storage URL or journal file (default: OUT/study.journal)")
    p.add_argument("--artifacts", help="folder for the trials' weights (default: OUT/artifacts; shared for several machines)")
    p.add_argument("--heartbeat", type=int, default=HEARTBEAT_S, help=f"database heartbeat interval, s (default {HEARTBEAT_S})")
    p.add_argument("--grace", type=int, default=GRACE_S, help=f"database grace period before a silent trial is failed, s (default {GRACE_S})")


def _space(args: argparse.Namespace) -> Space:
    space = load_space(args.space).with_weights(args.weights)
    solver = {k: getattr(args, k) for k in ("rank_multiple", "min_rank") if getattr(args, k, None) not in (None, "auto")}
    if args.data is not None:
        solver["task_kwargs"] = {**space.task_kwargs, "data_dir": args.data}
    recipe = {k: getattr(args, k) for k in ("epochs", "distill") if getattr(args, k, None) is not None}
    if getattr(args, "compile", False):
        recipe["compile"] = True
    if recipe:
        solver["retrain"] = replace(space.retrain, **recipe)
    return replace(space, **solver)


def _target(args: argparse.Namespace, space: Space) -> float:
    return args.ratio if args.ratio is not None else space.working_point(args.wp)


def _source(space: Space) -> dict[str, object]:
    return {"space": space.name, "space_file": str(space.path), "factory": space.model_factory,
            "model_kwargs": space.model_kwargs, "weights": str(Path(space.weights).resolve()) if space.weights else None,
            "pretrained_cache": None if space.weights else str(space.pretrained_path())}


def _spectra(args: argparse.Namespace) -> int:
    space = _space(args)
    model = space.build_model(allow_random=True)
    curves = spectra(model, cache_dir=cache_root() / "spectra", exclude=space.exclude)
    if args.out:
        data = {n: {"shape": list(c.shape), "singular_values": c.singular_values.tolist(), "mse": c.mse.tolist()} for n, c in curves.items()}
        atomic_write_text(args.out, json.dumps(data) + "\n")
    print("| layer | matrix | s_max | s_min | max useful rank | MSE(1) |\n|---|---|---|---|---|---|")
    for n, c in curves.items():
        s = c.singular_values
        print(f"| {n} | {c.shape[0]}x{c.shape[1]} | {s[0]:.4g} | {s[-1]:.4g} | {c.max_rank} | {c.mse[1]:.3g} |")
    return 0


def _solve(args: argparse.Namespace) -> int:
    space = _space(args)
    model = space.build_model(allow_random=True)
    if args.mse_bound is not None and not (0 <= args.mse_bound < math.inf):
        raise RankSearchError(f"--mse-bound {args.mse_bound} must be a finite number >= 0 (an MSE per weight element).")
    check_writable(args.out, folder=False, what="--out")
    target = None if args.mse_bound is not None else _target(args, space)
    grid = _grid(args, space, model, target if target is not None else 1.0)
    cfg = solve(model, target, mse_bound=args.mse_bound, exclude=space.exclude, rank_multiple=grid,
                min_rank=space.min_rank, cache_dir=cache_root() / "spectra", model_name=space.name, source=_source(space),
                input_shape=space.input_shape)
    cfg.save(args.out)
    print(_layer_report(cfg, find_layers(model, space.exclude).skipped))
    return 0


def _layer_report(cfg: RankConfig, skipped: dict[str, str]) -> str:
    """The seed's per-layer table: rank, parameters and (when the input shape is known) multiply-adds
    before and after, by layer name; then the layers kept dense, with the reason."""
    macs = bool(cfg.cost)
    head = f"{cfg.model}: ratio {cfg.achieved_ratio:.4f} (target {cfg.target_ratio}), {cfg.compressed_params:,} of {cfg.original_params:,} parameters"
    if macs:
        head += (f"; multiply-adds {cfg.cost['macs_ratio']:.4f} ({cfg.cost['macs_after']:,} of {cfg.cost['macs_before']:,} per input "
                 f"of shape {cfg.cost['input_shape']})")
    lines = [head, "Param reduction:",
             "| layer | type | matrix | rank | params before | params after |" + (" MACs before | MACs after |" if macs else ""),
             "|---|---|---|---|---|---|" + ("---|---|" if macs else "")]
    for n, lr in cfg.layers.items():
        row = f"| {n} | {lr.type} | {lr.matrix[0]}x{lr.matrix[1]} | {lr.rank} | {lr.params_before:,} | {lr.params_after:,} |"
        if macs:
            row += f" {lr.macs_before:,} | {lr.macs_after:,} |" if lr.macs_before is not None else " - | - |"
        lines.append(row)
    dense = {**skipped, **cfg.dense}
    lines += [f"| {n} | - | - | dense | - | - ({why}) |" + (" - | - |" if macs else "") for n, why in dense.items()]
    return "\n".join(lines)


def _where(out: Path, cfg: RankConfig, storage: str | None) -> str:
    """Where each result file is and what to do next."""
    trial, method = cfg.search.get("trial"), cfg.search.get("trial_method")
    study = cfg.search.get("study_name")
    store = storage or str(out / "study.journal")
    return "\n".join([
        f"Results in {out}/:",
        f"  rank_config.json            the best allocation (trial {trial}, {method}), its settings and metrics",
        f"  factorized.safetensors      its retrained weights: ranksearch.load_factorized(model, "
        f"ranksearch.RankConfig.load('{out}/rank_config.json'), '{out}/factorized.safetensors')",
        "  factorized_nnr.safetensors  the same weights with each pair as NNR <layer>.weight_G / weight_H",
        "  rank_config_seed_rule.json  the CE1 rule (one MSE bound) at the same ratio, for comparison",
        "  summary.md                  the table above",
        "  report.html                 the result as a page: figures (also as PNGs) and the per-layer table",
        "  trials.json, curves.json    every trial's figures and the layers' error curves, which the report draws",
        f"Watch it live: optuna-dashboard {store}",
        f"Next: more trials with --resume; more workers with: ranksearch worker --storage {store} --study-name {study}",
        "(ranksearch apply --config rank_config.json rebuilds the model untrained, with the factors its trial started from.)",
    ])


def _grid(args: argparse.Namespace, space: Space, model: nn.Module, target: float) -> int:
    """The rank step: ``--rank-multiple N``, or for ``auto`` the space's (CPU) or 8 on CUDA, halved on
    a small model (:func:`~ranksearch.cost.rank_multiple_for`)."""
    if getattr(args, "rank_multiple", "auto") != "auto":
        return space.rank_multiple
    curves = spectra(model, cache_dir=cache_root() / "spectra", exclude=space.exclude) if best_device().type == "cuda" else None
    return rank_multiple_for(best_device(), space.rank_multiple, curves, target, count_params(model), space.min_rank)


def _settings(args: argparse.Namespace, space: Space, target: float) -> SearchSettings:
    """The one settings object of a search, built from the space and the flags."""
    ref = args.space if not args.space.endswith((".yaml", ".yml")) and "/" not in args.space else str(Path(args.space).resolve())
    return SearchSettings(
        target_ratio=target, model=space.name, space=ref, data=str(Path(args.data).resolve()) if args.data else None, sampler=args.sampler, pruner=args.pruner,
        granularity=args.granularity, prior=args.prior, spread=args.spread, factors=args.factors,
        proposals=args.proposals, step=args.step, screen=args.screen, keep=args.keep, screen_samples=args.screen_samples,
        sensitivity=args.sensitivity, sensitivity_budget=args.sensitivity_budget, sensitivity_samples=args.sensitivity_samples,
        rank_multiple="auto" if args.rank_multiple == "auto" else space.rank_multiple, min_rank=space.min_rank,
        exclude=tuple(space.exclude),
        baselines=not args.no_baselines, retrain=space.retrain, seed=args.seed)


def _check_run(args: argparse.Namespace) -> None:
    if args.trials is not None and args.trials < 1:
        raise RankSearchError(f"--trials {args.trials} must be >= 1.")
    if args.timeout is not None and not (0 < args.timeout < math.inf):
        raise RankSearchError(f"--timeout {args.timeout} must be a finite number of seconds > 0.")


def _search(args: argparse.Namespace) -> int:
    space = _space(args)
    if args.ratio is not None:
        targets = args.ratio
    elif args.wp.lower() == "all":
        targets = list(space.working_points)
    else:
        targets = [space.working_point(w.strip()) for w in args.wp.split(",")]
    if len({f"{t:g}" for t in targets}) != len(targets):  # 0.1 and 0.100000001 would share a study and a folder
        raise RankSearchError(f"working points {targets} repeat a ratio; give each once.")
    check_writable(args.out, folder=True, what="--out")  # "" would be the current folder
    out = Path(args.out)
    several = len(targets) > 1
    outs = [out / f"ratio-{t:g}" if several else out for t in targets]
    for o in outs:
        if (o / "rank_config.json").exists() and not args.resume:
            raise RankSearchError(f"{str(o)!r} already holds a finished search; pass --resume or choose another --out.")
    _check_run(args)
    if args.workers < 1:
        raise RankSearchError(f"--workers {args.workers} must be >= 1.")
    for o, t in zip(outs, targets):  # every path is checked before any training (nothing is created here)
        check_writable(o, folder=True, what="--out")
        check_storage(args.storage, o)
        _check_same_study(o, args.study_name and (f"{args.study_name}@{t:g}" if several else args.study_name) or f"{space.name}@{t:g}")
    if args.artifacts:
        check_writable(args.artifacts, folder=True, what="--artifacts")
    check_writable(cache_root(), folder=True, what="Cache folder (RANKSEARCH_CACHE)")
    settings = [_settings(args, space, t) for t in targets]  # every point's settings are valid before any work
    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus else []
    task = space.build_task()
    model = space.build_model(task, progress=args.progress)
    settings = [s.replace(rank_multiple=_grid(args, space, model, s.target_ratio)) for s in settings]
    for s in settings:  # every working point must be reachable before any of them writes a file
        solve(model, s.target_ratio, exclude=space.exclude, rank_multiple=s.rank_multiple, min_rank=space.min_rank,
              cache_dir=cache_root() / "spectra")
    sensitivity, warm, rows = None, [], []
    for s, o in zip(settings, outs):
        _log.info("searching %s at ratio %s on %s (%d trials%s%s)", space.name, s.target_ratio, best_device(), args.trials,
                  f", timeout {args.timeout:g} s" if args.timeout else "", f", {args.workers} workers" if args.workers > 1 else "")
        result = search(model, s, task=task, n_trials=args.trials, timeout=args.timeout, storage=args.storage,
                        study_name=args.study_name and (f"{args.study_name}@{s.target_ratio:g}" if several else args.study_name),
                        resume=args.resume, out_dir=o, artifacts=args.artifacts and (Path(args.artifacts) / o.name if several else args.artifacts),
                        cache_dir=cache_root() / "spectra", source=_source(space), sensitivity=sensitivity, warm_start=warm,
                        workers=args.workers, gpus=gpus, heartbeat=args.heartbeat, grace=args.grace, progress=args.progress)
        write_results(o, result.config, result.model, result.seed_rule, result.summary, result.study, result.curves)
        if not several:
            _log.info("report: %s", write_report(o))
        best = result.study.trials[result.config.search["trial"]].user_attrs.get("log10w")  # none for the seed rule: enqueued anyway
        sensitivity, warm = result.sensitivity, [best] if best is not None else []
        rows.append(result.summary)
        print(summary_table(result.summary), end="")
        print(_layer_report(result.config, find_layers(model, space.exclude).skipped))
        print(_where(o, result.config, args.storage))
    if several:
        text = f"# ranksearch: {space.name}, {len(targets)} working points\n\n" + working_points_table(rows)
        atomic_write_text(out / "summary.md", text)
        print(text, end="")
        _log.info("report: %s", write_report(out))
    return 0


def _check_same_study(out: Path, name: str) -> None:
    """Results in ``out`` are written only by a run of the study that wrote them."""
    path = out / "rank_config.json"
    if path.exists():
        previous = RankConfig.load(path).search.get("study_name")
        if previous is not None and previous != name:
            raise RankSearchError(f"{str(out)!r} holds the results of study {previous!r}, not {name!r}; choose another --out "
                                  "(or the same --ratio / --study-name to resume that study).")


def _study_space(settings: SearchSettings, source: dict[str, Any], weights: str | None, data: str | None) -> Space:
    """The space a study was made on, with local weights and data (the flags, else what the study names)."""
    if settings.space is None:
        raise RankSearchError("The study was made from Python without a space; join it from Python with ranksearch.run_worker().")
    space = load_space(settings.space).with_weights(weights or source.get("weights"))
    data = data or settings.data
    return replace(space, task_kwargs={**space.task_kwargs, "data_dir": data}) if data else space


def _worker(args: argparse.Namespace) -> int:
    _check_run(args)
    if args.threads is not None:
        if args.threads < 1:
            raise RankSearchError(f"--threads {args.threads} must be >= 1.")
        import torch

        torch.set_num_threads(args.threads)
    store = open_storage(args.storage, heartbeat=args.heartbeat, grace=args.grace, existing=True)
    study, _ = create_or_join(store, args.study_name, None, resume=True, sampler=None, pruner=None)  # type: ignore[arg-type]
    attrs = StudyAttrs(study)
    settings = attrs.settings()
    space = _study_space(settings, attrs.get("source") or {}, args.weights, args.data)  # type: ignore[arg-type]
    task = space.build_task()
    model = space.build_model(task, progress=args.progress)
    ran = run_worker(model, store, args.study_name, task=task, n_trials=args.trials, timeout=args.timeout,
                     artifacts=args.artifacts, cache_dir=cache_root() / "spectra",
                     heartbeat=args.heartbeat, grace=args.grace, progress=args.progress)
    _log.info("worker done: %d trials run here", ran)
    return 0


def _export(args: argparse.Namespace) -> int:
    if args.config is not None:
        return _export_config(args)
    if args.storage is None or args.study_name is None:
        raise RankSearchError("export needs --storage and --study-name (a study's best trial) or --config (a rank config's model).")
    given = [f"--{k.replace('_', '-')}" for k in ("format", "space", "data") if getattr(args, k) is not None]
    given += ["--allow-growth"] if args.allow_growth else []
    if given:
        raise RankSearchError(f"{', '.join(given)} only go with --config; a study's export writes its results folder to --out.")
    check_writable(args.out, folder=True, what="--out")
    store = open_storage(args.storage, existing=True)
    study, _ = create_or_join(store, args.study_name, None, resume=True, sampler=None, pruner=None)  # type: ignore[arg-type]
    attrs = StudyAttrs(study)
    settings = attrs.settings()
    source = attrs.get("source") or {}
    space = _study_space(settings, source, args.weights, None)  # type: ignore[arg-type]
    model = space.build_model()
    check_model(study, settings, model)  # type: ignore[arg-type]
    curves = spectra(model, cache_dir=cache_root() / "spectra", exclude=settings.exclude)  # type: ignore[union-attr]
    artifacts = args.artifacts or attrs.get("artifacts")
    if artifacts is None:
        raise RankSearchError(f"Study {args.study_name!r} records no artifact folder; pass --artifacts with the folder its workers wrote to.")
    result = export_study(study, model, curves, args.out, artifacts=artifact_store(artifacts, existing=True), source=source)
    write_report(args.out)
    print(summary_table(result.summary), end="")
    print(_layer_report(result.config, find_layers(model, space.exclude).skipped))
    print(_where(Path(args.out), result.config, args.storage))
    return 0


def _export_config(args: argparse.Namespace) -> int:
    """``export --config``: the config's factorized model (its retrained weights when given) as one file."""
    given = [f"--{k.replace('_', '-')}" for k in ("storage", "study_name", "artifacts") if getattr(args, k) is not None]
    if given:
        raise RankSearchError(f"--config exports a rank config; {', '.join(given)} belong to a study's export: give one or the other.")
    if args.format is None:
        raise RankSearchError(f"--config needs --format, the file format to write: one of {sorted(FORMATS)}.")
    fmt = get_format(args.format)
    if fmt.name != "nnr" and (args.qp is not None or args.verify):
        raise RankSearchError(f"--qp and --verify go with --format nnr, not --format {fmt.name}.")
    cfg = RankConfig.load(args.config)
    check_writable(args.out, folder=False, what="--out")
    check_packages(fmt)
    space = _config_space(cfg, args.config, args.space)
    if args.data is not None:
        space = replace(space, task_kwargs={**space.task_kwargs, "data_dir": args.data})
    shape = space.input_shape or cfg.cost.get("input_shape")  # without a task, an export traces on inputs of this shape
    if fmt.needs_sample and space.task_factory is None and not shape:
        raise RankSearchError(f"--format {fmt.name} traces the model on a test batch of the space's data, but space {space.name!r} "
                              "has no task and no input_shape; add either to its file, or call ranksearch.formats.write_model "
                              "with a sample from Python.")
    if args.verify and space.task_factory is None:
        raise RankSearchError(f"--verify evaluates the decoded model on the space's test split, but space {space.name!r} has no task; "
                              "add one to its file, or leave --verify out.")
    needs_task = (fmt.needs_sample and space.task_factory is not None) or args.verify
    task = space.build_task() if needs_task else None  # before the model: a missing --data fails first
    if args.weights is not None:
        model = load_factorized(space.build_architecture(), cfg, args.weights, allow_growth=args.allow_growth)
    else:
        dense = cfg.source.get("weights")
        if space.weights is None and isinstance(dense, str) and Path(dense).is_file():
            space = space.with_weights(dense)  # the dense weights the config was made from
        _log.info("no --weights: exporting the config's ranks applied to the dense model (its trial's initial factors, not retrained)")
        model = _applied(space, cfg, args, task)
    if fmt.name == "nnr":
        print(write_model(model, args.out, "nnr", qp=args.qp))
        if args.verify:
            assert task is not None
            print(_verify_nnr(Path(args.out), model, space, task, args.qp))
        return 0
    sample = None
    if fmt.needs_sample:
        sample = sample_input(task) if task is not None else shaped_input(shape)  # type: ignore[arg-type]
    print(write_model(model, args.out, fmt.name, sample))
    return 0


def _verify_nnr(path: Path, model: nn.Module, space: Space, task: Any, qp: int | None) -> str:
    """Decode the bitstream into the dense architecture and compare: bytes against the dense model's
    bitstream at the same qp, and the test metric before coding and after decoding."""
    from ranksearch.nnr import DEFAULT_QP, decode, encode

    qp = DEFAULT_QP if qp is None else qp
    decoded = space.build_architecture()
    reference = decoded.state_dict()
    tensors = decode(path)
    if set(tensors) != set(reference):
        raise RankSearchError(f"{str(path)!r} decodes to tensors {sorted(set(tensors) ^ set(reference))[:4]} that "
                              f"{space.name}'s model has not or misses; give the bitstream of this space's config.")
    decoded.load_state_dict({k: torch.from_numpy(tensors[k]).to(v.dtype).reshape(v.shape) for k, v in reference.items()})
    dense_bytes = len(encode(space.build_model(task), qp=qp))
    size = path.stat().st_size
    before = evaluate(model, task.test, task.metric, forward=task.forward)
    after = evaluate(decoded, task.test, task.metric, forward=task.forward)
    return (f"verified: {size:,} bytes, the dense model's bitstream at qp {qp} {dense_bytes:,} bytes ({size / dense_bytes:.3f}x); "
            f"test {task.metric} {before:.4f} before coding, {after:.4f} after decoding ({after - before:+.4f}, "
            f"{len(task.test):,} samples)")


def _config_space(cfg: RankConfig, path: str, name: str | None) -> Space:
    """The space of a rank config: ``--space``, else the file it was made from, else its name."""
    recorded = cfg.source.get("space")
    if name is not None:
        space = load_space(name)
        if recorded not in (None, space.name):
            raise RankSearchError(f"Config {path!r} was made for space {recorded!r}, not {space.name!r}.")
        return space
    file = cfg.source.get("space_file")
    if isinstance(file, str) and Path(file).is_file():
        space = load_space(file)
        if recorded in (None, space.name):
            return space
    if isinstance(recorded, str):
        return load_space(recorded)
    raise RankSearchError(f"Config {path!r} names no space (made from Python?); pass --space NAME or a .yaml file.")


def _apply(args: argparse.Namespace) -> int:
    space = _space(args)
    cfg = RankConfig.load(args.config)
    if cfg.source.get("space") not in (None, space.name):
        raise RankSearchError(f"Config {args.config!r} was made for space {cfg.source['space']!r}, not {space.name!r}.")
    check_writable(args.out, folder=False, what="--out")
    factorized = _applied(space, cfg, args)
    save_state_dict(factorized.state_dict(), args.out, {"format": "ranksearch.factorized", "ranks": json.dumps(cfg.ranks)})
    print(f"{args.out}: {count_params(factorized):,} parameters (ratio {cfg.achieved_ratio:.4f})")
    return 0


def _report(args: argparse.Namespace) -> int:
    print(write_report(args.folder))
    return 0


_COMMANDS = {"spectra": _spectra, "solve": _solve, "search": _search, "worker": _worker, "export": _export, "apply": _apply,
             "report": _report}


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 bad input)."""
    args = _parser().parse_args(argv)
    level = logging.WARNING if args.quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("ranksearch")
    root.handlers[:] = [handler]
    root.setLevel(level)
    start = time.perf_counter()
    args.progress = not (args.quiet or args.no_progress) and sys.stderr.isatty()  # bars on a terminal; log lines go above them
    previous = signal.signal(signal.SIGTERM, _interrupt) if args.command in ("search", "worker") else None
    try:
        with logging_redirect_tqdm(loggers=[root]) if args.progress else contextlib.nullcontext():
            code = _COMMANDS[args.command](args)
    except (RankSearchError, OSError) as e:
        if args.debug:
            raise
        print(f"ranksearch {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except (TrialsFailing, WorkersFailed) as e:
        if args.debug:
            raise
        print(f"ranksearch {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        hint = " --resume" if args.command == "search" and not args.resume else ""
        again = " ".join(["ranksearch", *(argv if argv is not None else sys.argv[1:])]) + hint
        print(f"ranksearch {args.command}: interrupted; finished trials are kept, resume with: {again}", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    _log.info("%s done in %.1f s", args.command, time.perf_counter() - start)
    return code


def _one_line(e: BaseException) -> str:
    """The error as one line; a file-system error names its path and the fix."""
    if isinstance(e, OSError) and not isinstance(e, RankSearchError):
        where = f" {e.filename!r}" if e.filename else ""
        return f"cannot use{where}: {e.strerror or e} (check the path and its permissions; --debug shows the traceback)"
    return " ".join(str(e).split())


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM stops a search or worker as Ctrl-C does (the running trial is run again on resume)."""
    raise KeyboardInterrupt


def main_entry() -> None:
    """Console-script entry point."""
    code = main()
    if code == 130:  # interrupted and handled: a late Ctrl-C must not kill the exit (and its code) halfway
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(code)


if __name__ == "__main__":
    main_entry()
