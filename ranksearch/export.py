"""Writing a search's results: rank configs, factorized weights (plain and NNR G/H form), summary.

Files in the output folder:

* ``rank_config.json``: the best allocation (:class:`~ranksearch.config.RankConfig`).
* ``rank_config_seed_rule.json``: the CE1 rule's allocation at the same ratio, for comparison.
* ``factorized.safetensors``: the retrained factorized model's ``state_dict`` (load with
  :func:`ranksearch.load_factorized`).
* ``factorized_nnr.safetensors``: the same weights in the NNR / NNCodec naming, where a low-rank layer
  is two tensors ``<layer>.weight_G`` (m x r) and ``<layer>.weight_H`` (r x n) and its bias stays
  ``<layer>.bias``; every other tensor keeps the dense model's name.
* ``summary.md``: the dense, seed-rule and searched metrics, ratio, trials and wall time.

:func:`collect` reads all of it from a study (any storage, any machine, also while workers run):
the best trial's allocation and its retrained weights (an Optuna artifact); :func:`export_study`
writes it. A search's own outputs are this export at its end.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.artifacts import download_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from ranksearch._io import atomic_write_text
from ranksearch._storage import StudyAttrs
from ranksearch.allocation import config_for
from ranksearch.cost import model_cost
from ranksearch.baselines import Sensitivity
from ranksearch.config import RankConfig
from ranksearch.decompose import Factors
from ranksearch.errors import StudyError
from ranksearch.layers import LowRank
from ranksearch.solver import Curve, Solution
from ranksearch.surgery import count_params, factorize
from ranksearch.weights import load_state_dict, save_state_dict

__all__ = ["BASELINES", "SearchResult", "collect", "export_study", "nnr_tensors", "summary_table", "trial_model",
           "working_points_table", "write_results"]

_log = logging.getLogger(__name__)
BASELINES = ("uniform", "sensitivity", "sensitivity_sum")  #: enqueued allocations reported beside the seed rule


@dataclass
class SearchResult:
    """What a study found.

    Attributes:
        config: Rank config of the best trial (metrics and the study's settings recorded in it).
        study: The Optuna study (all trials, their ranks and metrics in ``user_attrs``).
        model: The best factorized model, retrained.
        seed_rule: Rank config of the CE1 rule's trial with its metric (None if it has not run).
        summary: Figures of the run: dense, seed rule, baselines and best metrics, trials, wall time.
        sensitivity: The per-layer sensitivity table the study measured (None without baselines).
        curves: The layers' plain MSE curves.
    """

    config: RankConfig
    study: optuna.Study
    model: nn.Module
    seed_rule: RankConfig | None
    summary: dict[str, Any] = field(default_factory=dict)
    sensitivity: Sensitivity | None = None
    curves: Mapping[str, Curve] | None = None  #: the layers' plain curves (what ``report`` draws the errors from)


def _figures(t: FrozenTrial | None) -> dict[str, Any]:
    if t is None:
        return {}
    return {"trial": t.number, "val": t.value, "test": t.user_attrs.get("test"), "before_retrain": t.user_attrs.get("before_retrain"),
            "before_retrain_samples": t.user_attrs.get("before_retrain_samples"), "method": t.user_attrs.get("method")}


def _first(study: optuna.Study, method: str) -> FrozenTrial | None:
    return next((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.user_attrs.get("method") == method), None)


def _weights_of(study: optuna.Study, t: FrozenTrial) -> str | None:
    """Artifact id of a trial's retrained weights (a trial that reused a twin's value: the twin's)."""
    if "weights" in t.user_attrs:
        return str(t.user_attrs["weights"])
    twin = t.user_attrs.get("same_as")
    if twin is not None:
        return study.trials[int(twin)].user_attrs.get("weights")
    return None


def trial_model(study: optuna.Study, t: FrozenTrial, model: nn.Module, artifacts: Any,
                factors: Mapping[str, Factors] | None = None) -> nn.Module | None:
    """Trial ``t``'s retrained factorized model (eval mode) from the artifact store, or None when it
    uploaded no weights (it was not the best so far when it finished). ``factors`` only shape the layers
    (default: an SVD per layer); the weights are the trial's."""
    weights = _weights_of(study, t)
    if weights is None:
        return None
    small = factorize(model, t.user_attrs["ranks"], factors)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.safetensors"
        try:
            download_artifact(artifact_store=artifacts, file_path=str(path), artifact_id=weights)
        except ArtifactNotFound:
            raise StudyError(f"Trial {t.number}'s weights (artifact {weights}) are not in the artifact folder given; "
                             "pass --artifacts with the folder the workers wrote to.") from None
        small.load_state_dict(load_state_dict(path))
    return small.eval()


def _solution(t: FrozenTrial, curves: Mapping[str, Curve], total: int) -> Solution:
    return Solution({n: t.user_attrs["ranks"].get(n) for n in curves}, float("nan"), int(t.user_attrs["params"]), total)


def collect(study: optuna.Study, model: nn.Module, curves: Mapping[str, Curve], *, artifacts: Any = None,
            rebuild: Callable[[FrozenTrial], nn.Module] | None = None, source: dict[str, Any] | None = None,
            factors: Mapping[str, Factors] | None = None) -> SearchResult:
    """The best trial of ``study`` so far as a :class:`SearchResult`.

    Args:
        study: A ranksearch study (its settings, dense metric and trials are read from it).
        model: The dense model it was made with.
        curves: The plain curves of its layers (:func:`~ranksearch.spectra.spectra`): shapes and sizes.
        artifacts: The artifact store holding the trials' weights.
        rebuild: Makes the retrained model of a trial whose weights were not uploaded (the search
            retrains it again); without it the best trial that has weights is taken, with a warning.
        source: Where the dense model came from, recorded in the configs.
        factors: Decompositions already computed (the search's), to shape the factorized model
            without another SVD per layer; its weights are then the trial's.
    """
    attrs = StudyAttrs(study)
    settings = attrs.settings()
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete or settings is None:
        raise StudyError(f"No trial of study {study.study_name!r} has completed yet (timeout too short?); "
                         "raise --timeout or --trials, or export later.")
    best = max(complete, key=lambda t: (t.value, -t.number))  # of equal values the earliest (Optuna's tie-break differs)
    weights = _weights_of(study, best) if artifacts is not None else None
    if weights is None and rebuild is None:
        with_weights = [t for t in complete if _weights_of(study, t) is not None] if artifacts is not None else []
        if not with_weights:
            raise StudyError(f"No trial of study {study.study_name!r} has uploaded its weights (no artifact store, "
                             "or a wrong --artifacts folder); give the folder the workers wrote to.")
        chosen = max(with_weights, key=lambda t: (t.value, -t.number))
        _log.warning("the best trial %d has no weights; exporting trial %d (%.4f against %.4f)", best.number, chosen.number,
                     chosen.value, best.value)
        best, weights = chosen, _weights_of(study, chosen)
    best_model = trial_model(study, best, model, artifacts, factors) if weights is not None else rebuild(best)  # type: ignore[misc]
    seed_trial = _first(study, "seed_rule")
    metric: dict[str, Any] = {"name": attrs.get("metric") or "metric", "dense": attrs.get("dense") or {},
                              "seed_rule": _figures(seed_trial), "searched": _figures(best)}
    for method in BASELINES:  # a pruned baseline has no final figures; a killed one counts by its retry
        if (first := _first(study, method)) is not None:
            metric[method] = _figures(first)
    counts = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    created = attrs.get("created_at")
    ends = [t.datetime_complete.timestamp() for t in study.trials if t.datetime_complete is not None]
    wall = round(max(ends) - created, 1) if created and ends else None
    total = count_params(model)
    shape = attrs.get("input_shape")
    cost = model_cost(model, shape) if shape else None
    record = {"method": "optuna", "study_name": study.study_name, "settings": settings.to_dict(), "trials": counts,
              "best_trial": best.number, "wall_time_s": wall}

    def config_of(t: FrozenTrial) -> RankConfig:
        return config_for(model, curves, _solution(t, curves, total), settings.target_ratio, model_name=settings.model,
                          source=source if source is not None else attrs.get("source"), metric=metric,
                          search={**record, "factors": t.user_attrs.get("factors"), "trial_method": t.user_attrs.get("method"),
                                  "trial": t.number},
                          mse=t.user_attrs.get("mse"), cost=cost, rank_multiple=settings.rank_multiple,
                          min_rank=settings.min_rank, exclude=settings.exclude)

    cfg = config_of(best)
    if count_params(best_model) != cfg.compressed_params:
        raise StudyError(f"Trial {best.number}'s weights have {count_params(best_model)} parameters, its ranks {cfg.compressed_params}.")
    summary = {"target_ratio": settings.target_ratio, "achieved_ratio": best.user_attrs["ratio"], "trials": counts,
               "wall_time_s": wall, "seed_rule_ratio": seed_trial.user_attrs["ratio"] if seed_trial else None,
               "best_method": best.user_attrs.get("method"), "cost": cfg.cost, "fixed_cost": attrs.get("fixed_cost"), **metric}
    table = attrs.get("sensitivity")
    sensitivity = {n: [(int(r), float(v)) for r, v in rows] for n, rows in table.items()} if table else None
    return SearchResult(config=cfg, study=study, model=best_model, seed_rule=config_of(seed_trial) if seed_trial else None,
                        summary=summary, sensitivity=sensitivity, curves=curves)


def export_study(study: optuna.Study, model: nn.Module, curves: Mapping[str, Curve], out_dir: str | Path, *,
                 artifacts: Any = None, source: dict[str, Any] | None = None) -> SearchResult:
    """Write the best trial of ``study`` so far into ``out_dir`` (:func:`write_results`); from any
    machine that has the storage, the artifacts and the dense model, also while workers run."""
    result = collect(study, model, curves, artifacts=artifacts, source=source)
    write_results(out_dir, result.config, result.model, result.seed_rule, result.summary, result.study, curves)
    return result


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


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _method_label(summary: dict[str, Any]) -> str:
    method = summary.get("best_method") or summary["searched"].get("method") or "searched"
    return {"seed_rule": "the seed rule", "sensitivity": "AIMET-style sensitivity", "sensitivity_sum": "sensitivity sum",
            "searched": "sampled trial", "warm_start": "warm start"}.get(method, method)


def fixed_cost_line(cost: Mapping[str, Any]) -> str:
    """``12.3 s and 287 evaluations of the model (spectra 1.2 s, factors 0.4 s, dense 0.3 s, sensitivity 10.4 s)``,
    with the passes over the whole validation split they amount to when the probes ran on a subset."""
    parts = ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in cost.items() if k.endswith("_s") and k != "total_s")
    kind = f"; sensitivity table {cost['sensitivity_kind']}" if cost.get("sensitivity_kind") else ""
    samples, of = cost.get("sensitivity_samples"), cost.get("val_samples")
    if samples and of and samples < of:
        kind += f" on {samples:,} of {of:,} samples"
    kind += "; resumed: an interrupted setup's share is not counted" if cost.get("resumed") else ""
    passes = cost.get("split_evaluations")
    whole = f" ({passes:g} as passes over the whole split)" if passes is not None and passes != cost.get("evaluations") else ""
    return f"{cost.get('total_s', 0):.1f} s and {cost.get('evaluations', 0)} evaluations of the model{whole} ({parts}{kind})"


def summary_table(summary: dict[str, Any]) -> str:
    """Markdown table: dense, seed rule and best searched metric at the achieved ratio."""
    name = summary.get("name", "metric")
    rows = [
        ("dense", summary["dense"], 1.0, "-"),
        ("seed rule (one MSE bound)", summary.get("seed_rule") or {}, summary.get("seed_rule_ratio"), _fmt(summary.get("seed_rule", {}).get("trial"))),
        (f"best ({_method_label(summary)})", summary["searched"], summary["achieved_ratio"], _fmt(summary["searched"].get("trial"))),
    ]
    lines = [f"| model | ratio | val {name} | test {name} | before retrain | trial |", "|---|---|---|---|---|---|"]
    for label, fig, ratio, trial in rows:
        before = _fmt(fig.get("before_retrain")) + (f" ({fig['before_retrain_samples']} val samples)" if fig.get("before_retrain_samples") else "")
        lines.append(f"| {label} | {_fmt(ratio)} | {_fmt(fig.get('val'))} | {_fmt(fig.get('test'))} | {before} | {trial} |")
    t = summary["trials"]
    lines.append("")
    lines.append(f"Target ratio {summary['target_ratio']}; trials: {t.get('complete', 0)} complete, {t.get('pruned', 0)} pruned, "
                 f"{t.get('fail', 0)} failed; wall time {summary['wall_time_s']} s.")
    if fixed := summary.get("fixed_cost"):
        lines.append("")
        lines.append(f"Fixed cost before the first trial (stored once in the study): {fixed_cost_line(fixed)}.")
    if cost := summary.get("cost"):
        lines.append("")
        lines.append(f"Cost of the best model: parameters {cost['params_ratio']:.4f} of the dense model's, multiply-adds "
                     f"{cost['macs_ratio']:.4f} ({cost['macs_after']:,} against {cost['macs_before']:,} MACs per input of "
                     f"shape {cost['input_shape']}, Linear/Conv layers).")
    return "\n".join(lines) + "\n"


def working_points_table(summaries: list[dict[str, Any]]) -> str:
    """Markdown table over several working points: the best model's parameter and MACs ratios, and the
    test metric of every method (val in brackets)."""
    name = summaries[0].get("name", "metric") if summaries else "metric"
    methods = [m for m in ("seed_rule", "uniform", "sensitivity", "sensitivity_sum", "searched") if any(m in s for s in summaries)]
    lines = [f"| target | ratio | MACs ratio | dense | {' | '.join(methods)} | trials | wall s |",
             "|---" * (len(methods) + 6) + "|"]
    for s in summaries:
        cells = [f"{_fmt(s.get(m, {}).get('test'))} ({_fmt(s.get(m, {}).get('val'))})" for m in methods]
        t = s["trials"]
        macs = _fmt((s.get("cost") or {}).get("macs_ratio"))
        lines.append(f"| {s['target_ratio']} | {_fmt(s['achieved_ratio'])} | {macs} | {_fmt(s['dense'].get('test'))} | "
                     f"{' | '.join(cells)} | {t.get('complete', 0)}+{t.get('pruned', 0)} pruned | {s['wall_time_s']} |")
    return f"Test {name} (val {name} in brackets) after the same short retrain.\n\n" + "\n".join(lines) + "\n"


def write_results(out_dir: str | Path, config: RankConfig, model: nn.Module, seed_rule: RankConfig | None,
                  summary: dict[str, Any], study: optuna.Study | None = None, curves: Mapping[str, Curve] | None = None) -> list[Path]:
    """Write every output file of a search into ``out_dir`` (each one atomically); with the ``study``
    and the layers' plain ``curves``, also what ``ranksearch report`` draws from (``trials.json``,
    ``curves.json``)."""
    from ranksearch.report import CURVES_FILE, TRIALS_FILE, curves_record, trials_record

    out = Path(out_dir)
    meta = {"format": "ranksearch.factorized", "ranks": json.dumps(config.ranks), "model": config.model}
    written = [
        save_state_dict(model.state_dict(), out / "factorized.safetensors", meta),
        save_state_dict(nnr_tensors(model), out / "factorized_nnr.safetensors", meta),
    ]
    if study is not None:
        written.append(atomic_write_text(out / TRIALS_FILE, json.dumps(trials_record(study, summary.get("fixed_cost")), indent=1)))
    if curves is not None:
        written.append(atomic_write_text(out / CURVES_FILE, json.dumps(curves_record(curves))))
    if seed_rule is not None:
        written.append(seed_rule.save(out / "rank_config_seed_rule.json"))
    written.append(atomic_write_text(out / "summary.md", f"# ranksearch: {config.model}\n\n" + summary_table(summary)))
    written.append(config.save(out / "rank_config.json"))  # last: its presence means the rest is there
    return written
