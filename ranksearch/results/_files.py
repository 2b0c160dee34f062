"""A results folder: what a search writes (:func:`write_results`) and what the report reads back (:func:`load_runs`).

Files in the folder:

* ``rank_config.json``: the best allocation (:class:`~ranksearch.core.RankConfig`); written last, so its
  presence means the rest is there.
* ``rank_config_seed_rule.json``: the CE1 rule's allocation at the same ratio, for comparison.
* ``factorized.safetensors``: the retrained factorized model's ``state_dict`` (:func:`ranksearch.load_factorized`).
* ``factorized_nnr.safetensors``: the same weights in the NNR / NNCodec naming, where a low-rank layer
  is two tensors ``<layer>.weight_G`` (m x r) and ``<layer>.weight_H`` (r x n) and its bias stays
  ``<layer>.bias``; every other tensor keeps the dense model's name.
* ``summary.md``: the summary table (:func:`~ranksearch.results._tables.summary_table`).
* ``trials.json``, ``curves.json``: every trial's figures and the layers' error curves, which the report draws.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

from ranksearch._io import atomic_write_bytes, atomic_write_text, read_json
from ranksearch.core._config import RankConfig
from ranksearch.core._layers import LowRank
from ranksearch.core._solver import Curve
from ranksearch.core._weights import save_state_dict
from ranksearch.errors import RankSearchError
from ranksearch.results._summary import Summary
from ranksearch.results._tables import extra_tables, summary_table
from ranksearch.study._record import TrialRecord, metric_of

__all__ = ["CURVES_FILE", "TRIALS_FILE", "Run", "curves_record", "load_runs", "nnr_tensors", "trials_record", "write_results"]

TRIALS_FILE = "trials.json"
CURVES_FILE = "curves.json"
_CURVE_POINTS = 200  #: ranks kept per layer in curves.json (log-spaced; the chosen ranks' errors are in the configs)


def nnr_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict of a factorized model with each low-rank pair as ``weight_G`` / ``weight_H``."""
    out: dict[str, torch.Tensor] = {}
    pairs = {n: m for n, m in model.named_modules() if isinstance(m, LowRank)}
    for key, value in model.state_dict().items():
        if not any(key.startswith(f"{n}.") for n in pairs):
            out[key] = value
    for name, pair in pairs.items():
        g, h = pair.matrices()
        out[f"{name}.weight_G"] = g.detach().contiguous()
        out[f"{name}.weight_H"] = h.detach().contiguous()
        if pair.bias is not None:
            out[f"{name}.bias"] = pair.bias.detach()
    return out


def trials_record(study: optuna.Study, fixed_cost: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every trial of a study, as the report reads them (``trials.json``): number, state, method, value (or
    the last reported value of a pruned trial), achieved ratio, the ratio a Pareto study's trial allocated for
    (``target``), test metric, metric before retrain; with the study's fixed cost."""
    trials = []
    for t in study.get_trials(deepcopy=False):
        r = TrialRecord.of(t)
        reports = t.intermediate_values or r.reports or {}  # a Pareto study's trials keep their reports in their record
        last = reports[max(reports)] if reports else None
        trials.append({"number": t.number, "state": t.state.name.lower(), "method": str(r.method), "value": metric_of(t),
                       "last_reported": last, "ratio": r.ratio, "latency": r.latency, "target": r.target, "test": r.test,
                       "before_retrain": r.before_retrain, "bytes": r.bytes, "before_coding": r.before_coding,
                       "coding": None if r.coding is None else r.coding.value, "stream_share": r.stream_share})
    return {"format": "ranksearch.trials", "format_version": 1, "study_name": study.study_name,
            "fixed_cost": dict(fixed_cost) if fixed_cost else None, "trials": trials}


def curves_record(curves: Mapping[str, Curve]) -> dict[str, dict[str, list[Any]]]:
    """Each layer's relative error against rank (``mse[r] / mse[0]``) at up to 200 log-spaced ranks."""
    out: dict[str, dict[str, list[Any]]] = {}
    for name, c in curves.items():
        top = len(c.mse) - 1
        ranks = sorted({0, top, *(round(math.exp(i * math.log(max(top, 1)) / (_CURVE_POINTS - 1))) for i in range(_CURVE_POINTS))})
        base = float(c.mse[0]) or 1.0
        out[name] = {"rank": [int(r) for r in ranks], "relative_mse": [float(f"{float(c.mse[r]) / base:.4g}") for r in ranks]}
    return out


def write_results(out_dir: str | Path, config: RankConfig, model: nn.Module, seed_rule: RankConfig | None, summary: Summary,
                  study: optuna.Study | None = None, curves: Mapping[str, Curve] | None = None, stream: bytes | None = None) -> list[Path]:
    """Write every file of a results folder into ``out_dir`` (each one atomically); with the ``study`` and
    the layers' plain ``curves``, also what the report draws from (``trials.json``, ``curves.json``); with a byte working
    point's ``stream``, the bitstream itself (``model.nnr``; ``model`` is then what it decodes to)."""
    out = Path(out_dir)
    meta = {"format": "ranksearch.factorized", "ranks": json.dumps(config.ranks), "model": config.model}
    written = [
        save_state_dict(model.state_dict(), out / "factorized.safetensors", meta),
        save_state_dict(nnr_tensors(model), out / "factorized_nnr.safetensors", meta),
    ]
    if stream is not None:
        written.append(atomic_write_bytes(out / "model.nnr", stream))
    if study is not None:
        written.append(atomic_write_text(out / TRIALS_FILE, json.dumps(trials_record(study, summary.fixed_cost), indent=1)))
    if curves is not None:
        written.append(atomic_write_text(out / CURVES_FILE, json.dumps(curves_record(curves))))
    if seed_rule is not None:
        written.append(seed_rule.save(out / "rank_config_seed_rule.json"))
    written.append(atomic_write_text(out / "summary.md", f"# ranksearch: {config.model}\n\n" + summary_table(summary).markdown()
                                     + extra_tables(summary)))
    written.append(config.save(out / "rank_config.json"))  # last: its presence means the rest is there
    return written


@dataclass(frozen=True)
class Run:
    """One working point's results, as read from its folder."""

    folder: Path
    config: RankConfig
    seed_rule: RankConfig | None
    trials: list[dict[str, Any]]
    curves: dict[str, dict[str, list[float]]]
    fixed_cost: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        return f"{self.config.target_ratio:g}"

    @property
    def summary(self) -> Summary:
        return Summary.from_config(self.config, self.seed_rule, self.trials, self.fixed_cost)


#: what to do about a damaged results file
_FIX = "run the search (or `ranksearch export`) again, or restore the file"


def _read_json(path: Path) -> Any:
    return read_json(path, "Results file", _FIX)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _checked_trials(path: Path, record: object) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The trials and the fixed cost of a trials file, or one line saying what is wrong with it."""
    if not isinstance(record, dict) or not isinstance(record.get("trials", []), list):
        raise RankSearchError(f"{str(path)!r} is not a ranksearch trials file; {_FIX}.")
    for i, t in enumerate(record.get("trials", [])):
        ok = (isinstance(t, dict) and isinstance(t.get("number"), int) and isinstance(t.get("state"), str)
              and isinstance(t.get("method", ""), str)
              and all(t.get(k) is None or _is_number(t.get(k)) for k in ("value", "last_reported", "ratio", "latency", "target", "test",
                                                                           "before_retrain")))
        if not ok:
            raise RankSearchError(f"{str(path)!r}: trial entry {i} is damaged ({str(t)[:60]}); {_FIX}.")
    cost = record.get("fixed_cost")
    if cost is not None and not isinstance(cost, dict):
        raise RankSearchError(f"{str(path)!r}: fixed_cost is not a mapping; {_FIX}.")
    return record.get("trials", []), cost


def _checked_curves(path: Path, curves: object) -> dict[str, dict[str, list[float]]]:
    """A curves file's curves, or one line saying which layer's entry is damaged."""
    if not isinstance(curves, dict):
        raise RankSearchError(f"{str(path)!r} is not a ranksearch curves file; {_FIX}.")
    for name, c in curves.items():
        ranks = c.get("rank") if isinstance(c, dict) else None
        errors = c.get("relative_mse") if isinstance(c, dict) else None
        if (not isinstance(ranks, list) or not isinstance(errors, list) or len(ranks) != len(errors) or not ranks
                or not all(isinstance(r, int) for r in ranks) or not all(_is_number(e) for e in errors)):
            raise RankSearchError(f"{str(path)!r}: the curve of layer {name!r} is damaged (rank and relative_mse must be "
                                  f"lists of numbers of one length); {_FIX}.")
    return curves


def _load_run(folder: Path) -> Run:
    config = RankConfig.load(folder / "rank_config.json")
    seed = folder / "rank_config_seed_rule.json"
    trials_path, curves_path = folder / TRIALS_FILE, folder / CURVES_FILE
    trials, cost = _checked_trials(trials_path, _read_json(trials_path)) if trials_path.exists() else ([], None)
    curves = _checked_curves(curves_path, _read_json(curves_path)) if curves_path.exists() else {}
    return Run(folder, config, RankConfig.load(seed) if seed.exists() else None, trials, curves, cost)


def load_runs(folder: str | Path) -> list[Run]:
    """The working points in ``folder``: itself when it holds ``rank_config.json``, else its ``ratio-*``
    subfolders that do, by ratio."""
    root = Path(folder)
    if (root / "rank_config.json").is_file():
        return [_load_run(root)]
    subs = sorted((p for p in root.glob("ratio-*") if (p / "rank_config.json").is_file()),
                  key=lambda p: float(p.name.removeprefix("ratio-")))
    if not subs:
        raise RankSearchError(f"{str(root)!r} holds no search result (no rank_config.json, no ratio-*/ folder with one); "
                              "give the --out folder of a finished `ranksearch search`.")
    return [_load_run(p) for p in subs]
