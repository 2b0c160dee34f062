"""Command line: ``ranksearch spectra | solve | search | apply``.

``main(argv)`` returns the exit code, so tests call it in-process. Errors in the user's input
(``ValueError``/``TypeError``) print one line on stderr and exit 2; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

from ranksearch.allocation import apply, solve
from ranksearch._io import atomic_write_text
from ranksearch.config import RankConfig
from ranksearch.export import summary_table, working_points_table, write_results
from ranksearch.retrain import best_device
from ranksearch.search import GRANULARITIES, PRUNERS, SAMPLERS, search
from ranksearch.spaces import Space, cache_root, load_space
from ranksearch.spectra import spectra
from ranksearch.surgery import count_params, find_layers
from ranksearch.weights import save_state_dict

__all__ = ["main"]

_log = logging.getLogger("ranksearch")


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"ratio {text!r} is not a number; give e.g. 0.25") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"ratio {value} must be in (0, 1], e.g. 0.25 keeps a quarter")
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
    p.add_argument("--rank-multiple", type=int, help="round ranks to multiples of this (default: the space's)")
    p.add_argument("--min-rank", type=int, help="smallest rank allowed (default: the space's)")


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
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
    p.add_argument("--factors", choices=("data-aware", "plain"), default="data-aware",
                   help="searched trials truncate on calibration activations (data-aware, default) or the weights alone")
    p.add_argument("--prior", choices=("none", "sensitivity"), default="none", help="centre of the searched weights")
    p.add_argument("--no-baselines", action="store_true", help="enqueue only the seed rule (no uniform / sensitivity)")
    p.add_argument("--sampler", choices=SAMPLERS, default=SAMPLERS[0], help=f"Optuna sampler (default {SAMPLERS[0]})")
    p.add_argument("--granularity", choices=GRANULARITIES, default=GRANULARITIES[0],
                   help="one searched weight per layer (default) or per group of similar layers")
    p.add_argument("--pruner", choices=PRUNERS, default=PRUNERS[0], help=f"Optuna pruner (default {PRUNERS[0]})")
    p.add_argument("--trials", type=int, default=20, help="trials to finish, resumed ones included (default 20)")
    p.add_argument("--timeout", type=float, help="wall-clock limit in seconds")
    p.add_argument("--epochs", type=int, help="retrain epochs per trial (default: the space's)")
    p.add_argument("--distill", type=float, help="weight in [0, 1] of distillation from the dense model")
    p.add_argument("--storage", help="Optuna storage URL or journal file (default: OUT/study.journal)")
    p.add_argument("--resume", action="store_true", help="continue the study found in the storage (or join it)")
    p.add_argument("--study-name", help="study name in the storage (default: SPACE@RATIO)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")

    p = sub.add_parser("apply", parents=[common], help="rebuild the factorized model from a rank config and save it")
    _space_args(p)
    p.add_argument("--config", required=True, help="rank_config.json")
    p.add_argument("--out", required=True, help=".safetensors file to write")
    return parser


def _space(args: argparse.Namespace) -> Space:
    space = load_space(args.space).with_weights(args.weights)
    solver = {k: getattr(args, k) for k in ("rank_multiple", "min_rank") if getattr(args, k, None) is not None}
    if args.data is not None:
        solver["task_kwargs"] = {**space.task_kwargs, "data_dir": args.data}
    if getattr(args, "epochs", None) is not None or getattr(args, "distill", None) is not None:
        recipe = {k: getattr(args, k) for k in ("epochs", "distill") if getattr(args, k) is not None}
        solver["retrain"] = replace(space.retrain, **recipe)
    return replace(space, **solver)


def _target(args: argparse.Namespace, space: Space) -> float:
    return args.ratio if args.ratio is not None else space.working_point(args.wp)


def _source(space: Space) -> dict[str, object]:
    return {"space": space.name, "space_file": str(space.path), "factory": space.model_factory,
            "model_kwargs": space.model_kwargs, "weights": space.weights,
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
    target = None if args.mse_bound is not None else _target(args, space)
    cfg = solve(model, target, mse_bound=args.mse_bound, exclude=space.exclude, rank_multiple=space.rank_multiple,
                min_rank=space.min_rank, cache_dir=cache_root() / "spectra", model_name=space.name, source=_source(space))
    cfg.save(args.out)
    print(_layer_report(cfg, find_layers(model, space.exclude).skipped))
    return 0


def _layer_report(cfg: RankConfig, skipped: dict[str, str]) -> str:
    lines = [f"{cfg.model}: ratio {cfg.achieved_ratio:.4f} (target {cfg.target_ratio}), "
             f"{cfg.compressed_params:,} of {cfg.original_params:,} parameters",
             "Param reduction: " + ", ".join(f"{n}:{r}" for n, r in cfg.ranks.items())]
    lines += [f"  skipped {n}: {why}" for n, why in skipped.items()]
    return "\n".join(lines)


def _search(args: argparse.Namespace) -> int:
    space = _space(args)
    if args.ratio is not None:
        targets = args.ratio
    elif args.wp.lower() == "all":
        targets = list(space.working_points)
    else:
        targets = [space.working_point(w.strip()) for w in args.wp.split(",")]
    out = Path(args.out)
    several = len(targets) > 1
    outs = [out / f"ratio-{t:g}" if several else out for t in targets]
    for o in outs:
        if (o / "rank_config.json").exists() and not args.resume:
            raise ValueError(f"{str(o)!r} already holds a finished search; pass --resume or choose another --out.")
    if args.trials < 1:
        raise ValueError(f"--trials {args.trials} must be >= 1.")
    if args.timeout is not None and args.timeout <= 0:
        raise ValueError(f"--timeout {args.timeout} must be > 0 seconds.")
    task = space.build_task()
    model = space.build_model(task)
    for target in targets:  # every working point must be reachable before any of them writes a file
        solve(model, target, exclude=space.exclude, rank_multiple=space.rank_multiple, min_rank=space.min_rank,
              cache_dir=cache_root() / "spectra")
    sensitivity, warm, rows = None, [], []
    for target, o in zip(targets, outs):
        _log.info("searching %s at ratio %s on %s (%d trials%s)", space.name, target, best_device(), args.trials,
                  f", timeout {args.timeout:g} s" if args.timeout else "")
        result = search(model, target, task=task, retrain_settings=space.retrain, n_trials=args.trials,
                        timeout=args.timeout, storage=args.storage,
                        study_name=args.study_name and (f"{args.study_name}@{target:g}" if several else args.study_name),
                        resume=args.resume, out_dir=o, seed=args.seed, exclude=space.exclude,
                        rank_multiple=space.rank_multiple, min_rank=space.min_rank, cache_dir=cache_root() / "spectra",
                        model_name=space.name, source=_source(space), data_aware=args.factors == "data-aware", prior=args.prior,
                        baselines=not args.no_baselines, sensitivity=sensitivity, warm_start=warm,
                        sampler=args.sampler, pruner=args.pruner, granularity=args.granularity)
        write_results(o, result.config, result.model, result.seed_rule, result.summary)
        best = result.study.best_trial.user_attrs.get("log10w")  # none when the seed rule won: enqueued anyway
        sensitivity, warm = result.sensitivity, [best] if best is not None else []
        rows.append(result.summary)
        print(summary_table(result.summary), end="")
        print(_layer_report(result.config, find_layers(model, space.exclude).skipped))
    if several:
        text = f"# ranksearch: {space.name}, {len(targets)} working points\n\n" + working_points_table(rows)
        atomic_write_text(out / "summary.md", text)
        print(text, end="")
    return 0


def _apply(args: argparse.Namespace) -> int:
    space = _space(args)
    cfg = RankConfig.load(args.config)
    if cfg.source.get("space") not in (None, space.name):
        raise ValueError(f"Config {args.config!r} was made for space {cfg.source['space']!r}, not {space.name!r}.")
    model = space.build_model(allow_random=True)
    factorized = apply(model, cfg)
    save_state_dict(factorized.state_dict(), args.out, {"format": "ranksearch.factorized", "ranks": json.dumps(cfg.ranks)})
    print(f"{args.out}: {count_params(factorized):,} parameters (ratio {cfg.achieved_ratio:.4f})")
    return 0


_COMMANDS = {"spectra": _spectra, "solve": _solve, "search": _search, "apply": _apply}


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
    try:
        code = _COMMANDS[args.command](args)
    except (ValueError, TypeError) as e:
        print(f"ranksearch {args.command}: error: {e}", file=sys.stderr)
        return 2
    _log.info("%s done in %.1f s", args.command, time.perf_counter() - start)
    return code


if __name__ == "__main__":
    sys.exit(main())


def main_entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
