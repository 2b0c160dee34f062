"""What each command does: build the space's parts from the flags, call the library, print the result."""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ranksearch._api import check_results_folder
from ranksearch._fields import check_value, spec
from ranksearch._from_space import config_space, export_from_space, join_from_space, space_model
from ranksearch._io import atomic_write_text, check_writable
from ranksearch._points import check_points, point_options, search_points
from ranksearch.cli._flags import given, read_settings_file
from ranksearch.cli._parser import RUN_FIELDS
from ranksearch.core._allocation import load_factorized, solve
from ranksearch.core._config import RankConfig
from ranksearch.core._cost import rank_multiple_for
from ranksearch.core._decompose import FactorKind
from ranksearch.core._retrain import RetrainSettings, best_device
from ranksearch.core._spectra import spectra
from ranksearch.core._surgery import count_params
from ranksearch.core._timing import Runtime, TimingTable, calibrate, measure_table
from ranksearch.core._weights import save_state_dict
from ranksearch.errors import ConfigError, RankSearchError
from ranksearch.results._files import load_runs
from ranksearch.results._formats import FORMATS, check_packages, get_format, sample_input, shaped_input, write_model
from ranksearch.results._report import write_report
from ranksearch.results._tables import extra_tables, layer_table, summary_table, working_points_table
from ranksearch.spaces._space import Space, cache_root, load_space
from ranksearch.study._join import precheck
from ranksearch.study._latency import LatencyPlan
from ranksearch.study._plan import latency_plan
from ranksearch.study._settings import RunOptions, SearchSettings
from ranksearch.study._storage import check_storage

__all__ = ["COMMANDS"]

_log = logging.getLogger("ranksearch")
#: settings fields a run sets itself: a --settings file's values of these are not used
IDENTITY = ("format", "format_version", "model", "weights_digest", "space", "data")
RETRAIN_FLAGS = tuple(f.name for f in fields(RetrainSettings))
FLAG_FIELDS = tuple(f.name for f in fields(SearchSettings) if (s := spec(f)) is not None and s.group is not None)


def _cache() -> None:
    """The caches (spectra, dense weights trained here) must be writable: said before any model is built."""
    check_writable(cache_root(), folder=True, what="Cache folder (RANKSEARCH_CACHE)")


def _space(args: argparse.Namespace) -> Space:
    """The space of ``--space`` with the flags' weights, data, rank grid and retrain recipe."""
    _cache()
    space = load_space(args.space).with_weights(args.weights)
    space = space.with_data(args.data)
    changes: dict[str, Any] = {k: getattr(args, k) for k in ("rank_multiple", "min_rank") if getattr(args, k, "auto") != "auto"}
    if recipe := given(args, RETRAIN_FLAGS):
        changes["retrain"] = replace(space.retrain, **recipe)
    return replace(space, **changes)


def _source(space: Space) -> dict[str, object]:
    return {"space": space.name, "space_file": str(space.path), "factory": space.model_factory,
            "model_kwargs": space.model_kwargs, "weights": str(Path(space.weights).resolve()) if space.weights else None,
            "pretrained_cache": None if space.weights else str(space.pretrained_path())}


def _grid(args: argparse.Namespace, space: Space, model: nn.Module, target: float, block: int | None = None) -> int:
    """The rank step: ``--rank-multiple N``, or for ``auto`` the space's (CPU) or 8 on CUDA (and for a latency
    working point timed on the CPU), halved on a small model (:func:`~ranksearch.core.rank_multiple_for`)."""
    if getattr(args, "rank_multiple", "auto") != "auto":
        return space.rank_multiple
    curves = spectra(model, cache_dir=cache_root() / "spectra", exclude=space.exclude) if best_device().type == "cuda" or block else None
    return rank_multiple_for(best_device(), space.rank_multiple, curves, target if target < 1 else None, count_params(model),
                             space.min_rank, block)


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
    target = None if args.mse_bound is not None else (args.ratio if args.ratio is not None else space.working_point(args.wp))
    latency = getattr(args, "target_latency", None)
    plan = None if latency is None else LatencyPlan(latency, Runtime(getattr(args, "runtime", "torch")), getattr(args, "latency_batch", 1))
    grid = _grid(args, space, model, target if target is not None else 1.0, plan.block if plan is not None else None)
    def solved(timing: TimingTable | None = None) -> RankConfig:
        return solve(model, target, mse_bound=args.mse_bound, exclude=space.exclude, rank_multiple=grid, min_rank=space.min_rank,
                     cache_dir=cache_root() / "spectra", model_name=space.name, source=_source(space), input_shape=space.input_shape,
                     timing=timing, latency=latency or 1.0)

    if plan is None:
        cfg = solved()
    else:  # each layer only at ranks whose pair runs faster, the model within the latency; the table calibrated in place
        example = plan.example(tuple(space.input_shape) if space.input_shape else None)
        here = copy.deepcopy(model).to(example.device).eval()
        curves = spectra(model, cache_dir=cache_root() / "spectra", exclude=space.exclude)
        timing = measure_table(here, curves, example, plan.runtime, multiple=grid, min_rank=space.min_rank, progress=args.progress)
        cfg = solved(calibrate(timing, here, timing.fastest(curves, grid, space.min_rank), example, plan.runtime))
    cfg.save(args.out)
    print(layer_table(cfg).markdown())
    return 0


def _targets(args: argparse.Namespace, space: Space, file: dict[str, Any]) -> list[float]:
    if args.ratio is not None:
        return list(args.ratio)
    if args.wp is not None:
        return list(space.working_points) if args.wp.lower() == "all" else [space.working_point(w.strip()) for w in args.wp.split(",")]
    if file.get("pareto"):  # a Pareto study's settings: its points
        pareto = next(f for f in fields(SearchSettings) if f.name == "pareto")
        return list(check_value("pareto", file["pareto"], spec(pareto)))  # type: ignore[arg-type]
    if "target_ratio" in file:
        return [file["target_ratio"]]
    if any(getattr(args, k, None) is not None or file.get(k) is not None for k in ("target_latency", "target_bytes", "bits_per_param")):
        return [1.0]  # a latency or byte working point alone: no parameter budget
    raise RankSearchError("search needs a working point: --ratio R, --wp WP (or all), --latency F, --bytes N, or target_ratio in the "
                          "--settings file.")


def _settings(args: argparse.Namespace, space: Space, target: float, file: dict[str, Any], **point: Any) -> SearchSettings:
    """The one settings object of a search: the dataclass defaults, the space's, the settings file's, the flags'; ``point``:
    a Pareto study's fields (its points, axis and latency), which _search resolves."""
    knobs = {k: v for k, v in file.items() if k not in IDENTITY and k not in ("target_ratio", "pareto", "pareto_axis")}
    recipe = knobs.pop("retrain", None) or {}
    if not isinstance(recipe, dict):
        raise ConfigError(f"Settings file {args.settings!r}: retrain must be a mapping of RetrainSettings fields.")
    if "format" in file:  # a stored settings dict of any version: read as the study would
        knobs = {k: v for k, v in SearchSettings.from_dict({**file, "target_ratio": target, "retrain": None},
                                                           origin=f"Settings file {args.settings!r}").to_dict().items()
                 if k in knobs}
    ref = args.space if not args.space.endswith((".yaml", ".yml")) and "/" not in args.space else str(Path(args.space).resolve())
    flags = given(args, FLAG_FIELDS)
    try:
        retrain = replace(space.retrain, **{**recipe, **given(args, RETRAIN_FLAGS)})
        values = {"rank_multiple": "auto", "min_rank": space.min_rank, "exclude": tuple(space.exclude), **knobs, **flags, **point}
        return SearchSettings(target_ratio=target, model=space.name, space=ref, data=str(Path(args.data).resolve()) if args.data else None,
                              retrain=retrain, **values)
    except TypeError as e:
        raise ConfigError(f"Settings file {args.settings!r}: {str(e).split('() ')[-1]}; give fields of SearchSettings.") from None


def _search(args: argparse.Namespace) -> int:
    space = _space(args)
    file = read_settings_file(args.settings) if args.settings else {}
    from_file = bool(file.get("pareto")) and args.ratio is None and args.wp is None
    if args.pareto_latency and args.pareto_bytes:
        raise RankSearchError("--pareto-latency and --pareto-bytes each give a study its second objective; give one of them.")
    axis = "latency" if args.pareto_latency else "bytes" if args.pareto_bytes else file.get("pareto_axis") if from_file else None
    axis_points = args.pareto_latency or args.pareto_bytes or (_targets(args, space, file) if axis in ("latency", "bytes") else None)
    if not axis_points or args.ratio is not None or args.wp is not None:
        targets = _targets(args, space, file)
    else:  # a front over latency or byte fractions: the one ratio every trial keeps at most, from the settings file, or none
        targets = [float(file["target_ratio"])] if from_file and "target_ratio" in file else [1.0]
    check_writable(args.out, folder=True, what="--out")  # "" would be the current folder
    out = Path(args.out)
    run = RunOptions(**given(args, RUN_FIELDS), out_dir=out, cache_dir=cache_root() / "spectra", source=_source(space),
                     progress=args.progress)
    check_points(targets)
    if axis_points:  # one study over latency or byte fractions, every trial within the one ratio given (or none)
        check_points(axis_points)
        flag = f"--pareto-{axis}"
        if args.pareto or getattr(args, "target_latency", None) is not None or len(targets) > 1:
            raise RankSearchError(f"{flag} F,F gives a front over {axis} fractions, with at most one --ratio every trial "
                                  "keeps; leave --pareto and --latency out, and give one ratio or none.")
        if axis == "bytes" and (getattr(args, "target_bytes", None) is not None or getattr(args, "bits_per_param", None) is not None):
            raise RankSearchError(f"{flag} F,F gives the budgets of the front (fractions of the dense model's NNR stream at qp -38); "
                                  "leave --bytes and --bits-per-param out (they give one byte working point).")
        point = {"target_latency": max(axis_points)} if axis == "latency" else {}
        settings = [_settings(args, space, targets[0], file, pareto=tuple(axis_points), pareto_axis=axis, **point)]
    elif args.pareto or from_file:  # one study over all the points
        if len(targets) < 2:
            raise RankSearchError(f"--pareto spans two working points or more; give e.g. --ratio {targets[0]:g},{targets[0] / 2.5:g} "
                                  "or --wp all (one point is a plain search: leave --pareto out).")
        settings = [_settings(args, space, max(targets), file, pareto=tuple(targets))]
    else:
        settings = [_settings(args, space, t, file) for t in targets]  # every point's settings are valid before any work
    several = len(settings) > 1
    for s in settings:  # every path is checked before any training (nothing is created here)
        here = point_options(run, s, several)
        check_results_folder(Path(here.out_dir), here.name_for(space.name, s.point), run.resume)  # type: ignore[arg-type]
        check_storage(here.storage if isinstance(here.storage, str) else None, here.out_dir)
    if run.artifacts:
        check_writable(run.artifacts, folder=True, what="--artifacts")
    for s in settings:  # an existing study: joined only with --resume and the same settings, said before any training
        here = point_options(run, s, several)
        precheck(here.storage if isinstance(here.storage, str) else None, here.out_dir,
                 here.name_for(space.name, s.point), s, resume=run.resume, heartbeat=run.heartbeat, grace=run.grace)
    task = space.build_task()
    model = space.build_model(task, progress=args.progress)
    settings = [s.replace(rank_multiple=_grid(args, space, model, s.target_ratio, lp.block if (lp := latency_plan(s)) else None)) for s in settings]
    for s in settings:  # every working point must be reachable before any of them writes a file
        solve(model, s.target_ratio, exclude=s.exclude, rank_multiple=s.rank_multiple, min_rank=s.min_rank,  # type: ignore[arg-type]
              cache_dir=cache_root() / "spectra")
    results = search_points(model, settings, task=task, run=run)
    for r, s in zip(results, settings):
        print(summary_table(r.summary).markdown(), end="")
        print(extra_tables(r.summary), end="")
        print(layer_table(r.config).markdown())
        print(_where(point_options(run, s, several), r.config, space.name))
    if several:
        print(working_points_table([r.summary for r in results]).markdown(), end="")
    return 0


def _where(run: RunOptions, cfg: RankConfig, space: str) -> str:
    """Where each result file is and what to do next."""
    out = Path(run.out_dir)  # type: ignore[arg-type]
    store = run.storage or str(out / "study.journal")
    return "\n".join([
        f"Results in {out}/:",
        f"  rank_config.json            the best allocation (trial {cfg.search.get('trial')}, {cfg.search.get('trial_method')}), "
        "its settings and metrics",
        *([f"  model.nnr                   its NNR bitstream, {cfg.search['bytes'].get('bytes') or 0:,} bytes of the "
           f"{cfg.search['bytes']['budget']:,} allowed (ranksearch.results.decode_nnr reads it)"] if cfg.search.get("bytes") else []),
        f"  factorized.safetensors      its {'decoded' if cfg.search.get('bytes') else 'retrained'} weights: ranksearch.load_factorized(model, "
        f"ranksearch.RankConfig.load('{out}/rank_config.json'), '{out}/factorized.safetensors')",
        "  factorized_nnr.safetensors  the same weights with each pair as NNR <layer>.weight_G / weight_H",
        "  rank_config_seed_rule.json  the CE1 rule (one MSE bound) at the same ratio, for comparison",
        "  summary.md                  the table above",
        "  report.html                 the result as a page: figures (also as PNGs) and the per-layer table",
        "  trials.json, curves.json    every trial's figures and the layers' error curves, which the report draws",
        *([f"Any point of the front: ranksearch export --storage {store} --study-name {cfg.search.get('study_name')} --trial N "
           "--out DIR"] if cfg.search.get("front") else []),
        f"Watch it live: optuna-dashboard {store}",
        f"Next: more trials with --resume; more workers with: ranksearch worker --storage {store} --study-name {cfg.search.get('study_name')}",
        f"The model untrained, with the factors its trial started from: ranksearch apply --space {space} --config "
        f"{out}/rank_config.json --out small.safetensors",
    ])


def _worker(args: argparse.Namespace) -> int:
    _cache()
    if args.threads is not None:
        if args.threads < 1:
            raise RankSearchError(f"--threads {args.threads} must be >= 1.")
        torch.set_num_threads(args.threads)
    run = RunOptions(**{"n_trials": None, **given(args, ("n_trials", "timeout", "artifacts", "heartbeat", "grace", "wait"))},
                     storage=args.storage, study_name=args.study_name, cache_dir=cache_root() / "spectra", progress=args.progress)
    ran = join_from_space(run, weights=args.weights, data=args.data)
    _log.info("worker done: %d trials run here", ran)
    return 0


def _export(args: argparse.Namespace) -> int:
    if args.config is not None:
        return _export_config(args)
    if args.storage is None or args.study_name is None:
        raise RankSearchError("export needs --storage and --study-name (a study's best trial) or --config (a rank config's model).")
    only = [f"--{k.replace('_', '-')}" for k in ("format", "space", "data", "factors", "qp", "bytes") if getattr(args, k) is not None]
    only += ["--allow-growth"] if args.allow_growth else []
    if only:
        raise RankSearchError(f"{', '.join(only)} only go with --config; a study's export writes its results folder to --out.")
    check_writable(args.out, folder=True, what="--out")
    _cache()
    result, _ = export_from_space(args.storage, args.study_name, args.out, weights=args.weights, artifacts=args.artifacts,
                                  trial=args.trial)
    print(summary_table(result.summary).markdown(), end="")
    print(extra_tables(result.summary), end="")
    print(layer_table(result.config).markdown())
    print(_where(RunOptions(storage=args.storage, out_dir=args.out), result.config, str(result.config.source.get("space"))))
    return 0


def _export_config(args: argparse.Namespace) -> int:
    """``export --config``: the config's factorized model (its retrained weights when given) as one file."""
    only = [f"--{k.replace('_', '-')}" for k in ("storage", "study_name", "artifacts", "trial") if getattr(args, k) is not None]
    if only:
        raise RankSearchError(f"--config exports a rank config; {', '.join(only)} belong to a study's export: give one or the other.")
    if args.format is None:
        raise RankSearchError(f"--config needs --format, the file format to write: one of {sorted(FORMATS)}.")
    fmt = get_format(args.format)
    if fmt.name != "nnr" and (args.qp is not None or args.verify or args.bytes is not None):
        raise RankSearchError(f"--qp, --bytes and --verify go with --format nnr, not --format {fmt.name}.")
    if args.bytes is not None and args.qp is not None:
        raise RankSearchError(f"--bytes {args.bytes} chooses each weight's qp; leave --qp {args.qp} out.")
    if args.bytes is not None and args.bytes < 1:
        raise RankSearchError(f"--bytes {args.bytes} must be a positive number of bytes, e.g. 50000.")
    if args.qp is not None:
        from ranksearch.core._nnr import check_qp

        check_qp(args.qp)  # before any work: a qp NNCodec would clip, or one that quantizes the weights away
    cfg = RankConfig.load(args.config)
    check_writable(args.out, folder=False, what="--out")
    _cache()
    check_packages(fmt)
    space = config_space(cfg, args.config, args.space, trust=args.trust_space)
    if args.data is not None:
        space = space.with_data(args.data)
    shape = space.input_shape or cfg.cost.get("input_shape")  # without a task, an export traces on inputs of this shape
    if fmt.needs_sample and space.task_factory is None and not shape:
        raise RankSearchError(f"--format {fmt.name} traces the model on a test batch of the space's data, but space {space.name!r} "
                              "has no task and no input_shape; add either to its file, or call ranksearch.write_model with a "
                              "sample from Python.")
    if args.verify and space.task_factory is None:
        raise RankSearchError(f"--verify evaluates the decoded model on the space's test split, but space {space.name!r} has no task; "
                              "add one to its file, or leave --verify out.")
    needs_task = (fmt.needs_sample or args.bytes is not None) and space.task_factory is not None or args.verify
    task = space.build_task() if needs_task else None  # before the model: a missing --data fails first
    if args.weights is not None:
        model = load_factorized(space.build_architecture(), cfg, args.weights, allow_growth=args.allow_growth)
    else:
        dense = cfg.source.get("weights")
        if space.weights is None and isinstance(dense, str) and Path(dense).is_file():
            space = space.with_weights(dense)  # the dense weights the config was made from
        _log.info("no --weights: exporting the config's ranks applied to the dense model (its trial's initial factors, not retrained)")
        model = space_model(space, cfg, factors=FactorKind(args.factors) if args.factors else None, allow_growth=args.allow_growth,
                            task=task, progress=args.progress)
    if fmt.name == "nnr":
        from ranksearch.results._nnr import verify

        print(write_model(model, args.out, "nnr", qp=args.qp, size=args.bytes, task=task))
        if args.verify:
            assert task is not None
            print(verify(args.out, model, space.build_architecture(), space.build_model(task), task, args.qp, args.bytes))
        return 0
    sample = None
    if fmt.needs_sample:
        sample = sample_input(task) if task is not None else shaped_input(shape or ())
    print(write_model(model, args.out, fmt.name, sample))
    return 0


def _apply(args: argparse.Namespace) -> int:
    space = _space(args)
    cfg = RankConfig.load(args.config)
    if cfg.source.get("space") not in (None, space.name):
        raise RankSearchError(f"Config {args.config!r} was made for space {cfg.source['space']!r}, not {space.name!r}.")
    check_writable(args.out, folder=False, what="--out")
    factorized = space_model(space, cfg, factors=FactorKind(args.factors) if args.factors else None, allow_growth=args.allow_growth,
                             progress=args.progress)
    save_state_dict(factorized.state_dict(), args.out, {"format": "ranksearch.factorized", "ranks": json.dumps(cfg.ranks)})
    print(f"{args.out}: {count_params(factorized):,} parameters (ratio {cfg.achieved_ratio:.4f})")
    return 0


def _report(args: argparse.Namespace) -> int:
    load_runs(args.folder)  # a folder without results says so before matplotlib is needed
    print(write_report(args.folder))
    return 0


COMMANDS = {"spectra": _spectra, "solve": _solve, "search": _search, "worker": _worker, "export": _export, "apply": _apply,
            "report": _report}
