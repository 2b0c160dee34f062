"""The command line's parser. The settings' flags are generated from their fields (:mod:`ranksearch.cli._flags`);
``--help`` lists the common ones, ``--help-all`` the rarely used ones too."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from ranksearch.cli._flags import Parser, add_fields, rare_flags
from ranksearch.core._decompose import FactorKind
from ranksearch.core._retrain import RetrainSettings
from ranksearch.results._formats import FORMATS
from ranksearch.study._settings import RunOptions, SearchSettings

__all__ = ["RUN_FIELDS", "parser"]

#: the run options the search command takes as flags (out_dir is --out; progress follows the terminal)
RUN_FIELDS = ("n_trials", "timeout", "storage", "study_name", "resume", "artifacts", "workers", "gpus", "heartbeat", "grace")
SPACE_DEFAULTS = {"min_rank": "the space's", "rank_multiple": "auto",
                  "epochs": "the space's", "distill": "the space's", "compile": "the space's"}


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"ratio {text!r} is not a number; give e.g. 0.25") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"ratio {value} must be in (0, 1), e.g. 0.25 keeps a quarter (1 would keep everything)")
    return value


def _ratios(text: str) -> list[float]:
    return [_ratio(t) for t in text.split(",")]


def _fractions_of(kind: str, example: str, one: bool, why: str) -> Callable[[str], list[float]]:
    """A parser of comma-separated ``kind`` fractions, each in (0, 1] (``one``) or (0, 1)."""
    interval = "(0, 1]" if one else "(0, 1)"

    def parse(text: str) -> list[float]:
        out = []
        for t in text.split(","):
            try:
                value = float(t)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{kind} fraction {t!r} is not a number; give e.g. {example}") from None
            if not (0 < value <= 1 if one else 0 < value < 1):
                raise argparse.ArgumentTypeError(f"{kind} fraction {value} must be in {interval}: {why}")
            out.append(value)
        return out

    return parse


_fractions = _fractions_of("latency", "1.0,0.7", True, "1.0 is never slower than dense")  #: latency fractions of the dense model's
_shares = _fractions_of("byte", "0.1,0.05", False, "a share of the dense model's stream, e.g. 0.1 for a tenth")  #: byte budgets


def _space_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--space", required=required, help="space name in search_spaces/ or a .yaml file")
    p.add_argument("--weights", help="local file with the dense model's weights (.safetensors or .pt)")
    p.add_argument("--data", help="local data folder for spaces that read one (ImageNet-style, DCASE-style)")


def _target_args(p: argparse.ArgumentParser | argparse._ArgumentGroup, *, mse_bound: bool = False, several: bool = False) -> None:
    g = p.add_mutually_exclusive_group(required=not several)
    g.add_argument("--ratio", type=_ratios if several else _ratio,
                   help="fraction(s) of parameters to keep, e.g. 0.25" + (" or 0.25,0.1" if several else ""))
    g.add_argument("--wp", help="working point(s) of the space: WP1..WP4" + (", a comma list, or 'all'" if several else ""))
    if mse_bound:
        g.add_argument("--mse-bound", type=float, help="instead of a ratio: one MSE bound for every layer")


def _factors_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--factors", choices=[k.value for k in FactorKind],
                   help="initial factors (default: the config trial's; data-aware ones are rebuilt from the space's calibration data)")


def _search(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser, show_rare: bool) -> None:
    rare = rare_flags(SearchSettings) + rare_flags(RunOptions)
    epilog = (None if show_rare else f"Rarely used settings ({', '.join(rare)}) are flags too: --help-all describes them. "
              "--settings FILE takes any SearchSettings field (as SearchSettings.to_dict writes them); flags win over it.")
    p = sub.add_parser("search", parents=[common], help="Optuna search of the rank allocation with a short retrain per trial",
                       epilog=epilog)
    _space_args(p)
    groups: dict[str, argparse._ArgumentGroup] = {"working point": p.add_argument_group("working point")}
    _target_args(groups["working point"], several=True)
    groups["working point"].add_argument("--pareto", action="store_true",
                                         help="one multi-objective study over the given ratios (two or more, e.g. --ratio 0.25,0.1 "
                                              "or --wp all) instead of one study each: the front of the metric against the "
                                              "parameters between them; the seed rule and the baselines run at each")
    groups["working point"].add_argument("--pareto-latency", type=_fractions, metavar="F,F",
                                         help="one multi-objective study of the metric against the latency (fractions of the "
                                              "dense model's on --runtime, e.g. 1.0,0.7), each trial within one --ratio if given")
    groups["working point"].add_argument("--pareto-bytes", type=_shares, metavar="F,F",
                                         help="one multi-objective study of the metric against the bytes of the NNR stream "
                                              "(budgets as fractions of the dense model's stream at qp -38, e.g. 0.1,0.05), each "
                                              "trial coded within one of them and within one --ratio if given")
    groups["search"] = p.add_argument_group("search")
    groups["search"].add_argument("--settings", metavar="FILE", help="YAML or JSON file of SearchSettings fields (a flag given here wins)")
    add_fields(p, SearchSettings, groups, show_rare=show_rare, defaults=SPACE_DEFAULTS)
    add_fields(p, RetrainSettings, groups, show_rare=show_rare, defaults=SPACE_DEFAULTS)
    add_fields(p, RunOptions, groups, show_rare=show_rare, only=RUN_FIELDS,
               defaults={"storage": "OUT/study.journal", "study_name": "SPACE@RATIO", "artifacts": "OUT/artifacts", "n_trials": "20"})
    groups["run"].add_argument("--out", required=True, help="output folder")


def parser(show_rare: bool = False) -> argparse.ArgumentParser:
    """The parser of every command (``show_rare``: the help lists the rarely used flags too)."""
    common = Parser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")
    common.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")
    top = Parser(prog="ranksearch", description="Low-rank factorization with searched ranks.")
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("spectra", parents=[common], help="per-layer singular values and MSE-to-rank curves")
    _space_args(p)
    p.add_argument("--out", help="write the curves as JSON here (default: a table on stdout)")

    p = sub.add_parser("solve", parents=[common], help="ranks at a working point from one MSE bound (no training)")
    _space_args(p)
    _target_args(p, mse_bound=True)
    add_fields(p, SearchSettings, {}, show_rare=True, only=("rank_multiple", "min_rank", "target_latency", "runtime", "latency_batch"),
               defaults=SPACE_DEFAULTS)
    p.add_argument("--out", required=True, help="rank_config.json to write")

    _search(sub, common, show_rare)

    p = sub.add_parser("worker", parents=[common], help="join a study: run its trials (settings, space and weights digest come from it)")
    p.add_argument("--storage", required=True, help="the study's storage: database URL or journal file")
    p.add_argument("--study-name", required=True, help="the study to join")
    p.add_argument("--weights", help="local dense weights (default: the file the study names, or the space's cache)")
    p.add_argument("--data", help="local data folder (default: the study's)")
    p.add_argument("--threads", type=int, help="torch threads of this worker (default: all cores)")
    add_fields(p, RunOptions, {}, show_rare=True, only=("n_trials", "timeout", "artifacts", "heartbeat", "grace", "wait"),
               defaults={"n_trials": "the study's", "artifacts": "the study's"})

    p = sub.add_parser("export", parents=[common],
                       help="write the best trial of a study so far (also while workers run), or a rank config's model as --format onnx|nnr")
    p.add_argument("--storage", help="a study's storage: database URL or journal file (with --study-name)")
    p.add_argument("--study-name", help="the study to export (its results folder is written to --out)")
    p.add_argument("--config", help="instead of a study: a rank_config.json, whose model is written to --out in --format")
    p.add_argument("--format", choices=sorted(FORMATS), help="with --config: the file format to write")
    p.add_argument("--space", help="with --config: the space (default: the installed space the config names)")
    p.add_argument("--trust-space", action="store_true",
                   help="with --config and no --space: load the space file the config records (space files are code)")
    p.add_argument("--data", help="with --config: local data folder of the space (the export traces one test batch)")
    p.add_argument("--weights", help="a study: local dense weights (default: the file the study names, or the space's cache); "
                                     "--config: the factorized model's weights (factorized.safetensors of a search; "
                                     "default: the config's ranks applied to the dense model, untrained)")
    p.add_argument("--artifacts", help="a study: the artifact folder the workers wrote to (default: the study's)")
    p.add_argument("--trial", type=int, metavar="N", help="a study: export its trial N instead of the best (e.g. any point of a "
                                                          "Pareto study's front; one without uploaded weights is retrained again)")
    p.add_argument("--allow-growth", action="store_true", help="with --config: accept ranks at which a layer's pair is not smaller than it")
    p.add_argument("--qp", type=int, help="with --format nnr: NNCodec's quantization parameter in [-128, 127]: the weights' step is "
                                           "2**(qp/4), so the default -38 is 0.0014; lower is finer, above -16 most weights are lost")
    p.add_argument("--bytes", type=int, metavar="N", help="with --format nnr: a stream of at most N bytes, each weight at its own qp "
                                                         "(each weight's bytes measured by NNCodec at each qp; instead of --qp)")
    p.add_argument("--verify", action="store_true",
                   help="with --format nnr: decode the bitstream, evaluate the decoded model on the space's test split and "
                        "print its size against the dense model's bitstream at the same qp (with --bytes: against the dense "
                        "model at the finest uniform qp within the bytes, and its test metric)")
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
    return top
