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
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ranksearch._io import atomic_write_text
from ranksearch.config import RankConfig
from ranksearch.layers import LowRank
from ranksearch.weights import save_state_dict

__all__ = ["nnr_tensors", "summary_table", "working_points_table", "write_results"]


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


def summary_table(summary: dict[str, Any]) -> str:
    """Markdown table: dense, seed rule and best searched metric at the achieved ratio."""
    name = summary.get("name", "metric")
    rows = [
        ("dense", summary["dense"], 1.0, "-"),
        ("seed rule (one MSE bound)", summary.get("seed_rule") or {}, summary.get("seed_rule_ratio"), _fmt(summary.get("seed_rule", {}).get("trial"))),
        ("best searched", summary["searched"], summary["achieved_ratio"], _fmt(summary["searched"].get("trial"))),
    ]
    lines = [f"| model | ratio | val {name} | test {name} | before retrain | trial |", "|---|---|---|---|---|---|"]
    for label, fig, ratio, trial in rows:
        lines.append(f"| {label} | {_fmt(ratio)} | {_fmt(fig.get('val'))} | {_fmt(fig.get('test'))} | {_fmt(fig.get('before_retrain'))} | {trial} |")
    t = summary["trials"]
    lines.append("")
    lines.append(f"Target ratio {summary['target_ratio']}; trials: {t.get('complete', 0)} complete, {t.get('pruned', 0)} pruned, "
                 f"{t.get('fail', 0)} failed; wall time {summary['wall_time_s']} s.")
    return "\n".join(lines) + "\n"


def working_points_table(summaries: list[dict[str, Any]]) -> str:
    """Markdown table over several working points: test metric of every method (val in brackets)."""
    name = summaries[0].get("name", "metric") if summaries else "metric"
    methods = [m for m in ("seed_rule", "uniform", "sensitivity", "sensitivity_sum", "searched") if any(m in s for s in summaries)]
    lines = [f"| target | ratio | dense | {' | '.join(methods)} | trials | wall s |",
             "|---" * (len(methods) + 5) + "|"]
    for s in summaries:
        cells = [f"{_fmt(s.get(m, {}).get('test'))} ({_fmt(s.get(m, {}).get('val'))})" for m in methods]
        t = s["trials"]
        lines.append(f"| {s['target_ratio']} | {_fmt(s['achieved_ratio'])} | {_fmt(s['dense'].get('test'))} | "
                     f"{' | '.join(cells)} | {t.get('complete', 0)}+{t.get('pruned', 0)} pruned | {s['wall_time_s']} |")
    return f"Test {name} (val {name} in brackets) after the same short retrain.\n\n" + "\n".join(lines) + "\n"


def write_results(out_dir: str | Path, config: RankConfig, model: nn.Module, seed_rule: RankConfig | None,
                  summary: dict[str, Any]) -> list[Path]:
    """Write every output file of a search into ``out_dir`` (each one atomically)."""
    out = Path(out_dir)
    meta = {"format": "ranksearch.factorized", "ranks": json.dumps(config.ranks), "model": config.model}
    written = [
        save_state_dict(model.state_dict(), out / "factorized.safetensors", meta),
        save_state_dict(nnr_tensors(model), out / "factorized_nnr.safetensors", meta),
    ]
    if seed_rule is not None:
        written.append(seed_rule.save(out / "rank_config_seed_rule.json"))
    written.append(atomic_write_text(out / "summary.md", f"# ranksearch: {config.model}\n\n" + summary_table(summary)))
    written.append(config.save(out / "rank_config.json"))  # last: its presence means the rest is there
    return written
