"""A search's result as one page a person can read: ``report.html`` and its PNG figures.

:func:`write_report` reads a search's output folder (``rank_config.json``, ``rank_config_seed_rule.json``,
``trials.json``, ``curves.json``), or a folder of several working points (``ratio-*/`` subfolders), and
writes next to them:

* ``errors.png``: each layer's relative reconstruction error against rank (its plain spectrum), with the
  seed rule's rank and the best trial's marked;
* ``kept.png``: the fraction of each layer's parameters kept, seed rule against best trial;
* ``history.png``: the metric of every trial in order, with the seed rule and the baselines as lines;
* ``tradeoff.png``: the metric against the achieved ratio, every trial of every working point;
* ``report.html``: the figures (embedded, so the page stands alone), the summary and the per-layer
  table of the seed's CE1 tables (layer, rank, parameters and multiply-adds before and after).

Matplotlib draws headless (the Agg backend); nothing here needs the model or a GPU.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ranksearch._io import atomic_write_bytes, atomic_write_text
from ranksearch.config import RankConfig
from ranksearch.errors import RankSearchError

__all__ = ["Run", "curves_record", "load_runs", "trials_record", "write_report"]

TRIALS_FILE = "trials.json"
CURVES_FILE = "curves.json"
_CURVE_POINTS = 200  #: ranks kept per layer in curves.json (log-spaced; the chosen ranks' errors are in the configs)
BASELINES = ("uniform", "sensitivity", "sensitivity_sum")


@dataclass(frozen=True)
class Run:
    """One working point's results, as read from its output folder."""

    folder: Path
    config: RankConfig
    seed_rule: RankConfig | None
    trials: list[dict[str, Any]]
    curves: dict[str, dict[str, list[float]]]
    fixed_cost: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        return f"{self.config.target_ratio:g}"


def trials_record(study: Any, fixed_cost: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every trial of an Optuna study, as the report reads them (``trials.json``): number, state,
    method, value (or the last reported value of a pruned trial), achieved ratio, test metric, metric
    before retrain; with the study's fixed cost."""
    return {"format": "ranksearch.trials", "format_version": 1, "study_name": study.study_name, "fixed_cost": fixed_cost,
            "trials": _trials(study)}


def _trials(study: Any) -> list[dict[str, Any]]:
    out = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        out.append({"number": t.number, "state": t.state.name.lower(), "method": a.get("method", "searched"),
                    "value": t.value, "last_reported": last, "ratio": a.get("ratio"), "test": a.get("test"),
                    "before_retrain": a.get("before_retrain")})
    return out


def curves_record(curves: Any) -> dict[str, dict[str, list[float]]]:
    """Each layer's relative error against rank (``mse[r] / mse[0]``) at up to 200 log-spaced ranks."""
    out = {}
    for name, c in curves.items():
        top = len(c.mse) - 1
        ranks = sorted({0, top, *(round(math.exp(i * math.log(max(top, 1)) / (_CURVE_POINTS - 1))) for i in range(_CURVE_POINTS))})
        base = float(c.mse[0]) or 1.0
        out[name] = {"rank": [int(r) for r in ranks], "relative_mse": [float(f"{float(c.mse[r]) / base:.4g}") for r in ranks]}
    return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RankSearchError(f"{str(path)!r} cannot be read as JSON ({e}); run the search again or restore the file.") from None


def _load_run(folder: Path) -> Run:
    config = RankConfig.load(folder / "rank_config.json")
    seed = folder / "rank_config_seed_rule.json"
    trials = folder / TRIALS_FILE
    curves = folder / CURVES_FILE
    record = _read_json(trials) if trials.exists() else {}
    if not isinstance(record, dict) or not isinstance(record.get("trials", []), list):
        raise RankSearchError(f"{str(trials)!r} is not a ranksearch trials file; run the search (or `ranksearch export`) again.")
    return Run(folder, config, RankConfig.load(seed) if seed.exists() else None, record.get("trials", []),
               _read_json(curves) if curves.exists() else {}, record.get("fixed_cost"))


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


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _errors_figure(run: Run, path: Path) -> Path | None:
    if not run.curves:
        return None
    plt = _pyplot()
    names = list(run.curves)
    cols = min(6, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.1 * rows), squeeze=False)
    seed = run.seed_rule.ranks if run.seed_rule else {}
    for ax, name in zip(axes.flat, names):
        c = run.curves[name]
        ax.semilogy([max(r, 1) for r in c["rank"]], [max(v, 1e-9) for v in c["relative_mse"]], color="0.3", lw=1)
        ax.set_xscale("log")
        for ranks, colour, label in ((seed, "tab:blue", "seed rule"), (run.config.ranks, "tab:red", "best trial")):
            r = ranks.get(name)
            ax.axvline(r if r is not None else max(c["rank"]), color=colour, ls="--" if r is not None else ":", lw=1,
                       label=f"{label} r={r}" if r is not None else f"{label}: dense")
        ax.set_ylim(1e-3, 1.5)
        ax.set_title(name, fontsize=7)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=5, loc="lower left")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(f"relative reconstruction error (MSE / MSE at rank 0) against rank, ratio {run.label}; dashed: the chosen "
                 "ranks, dotted: kept dense", fontsize=9, y=1.0 + 0.12 / rows)
    return _save(fig, path)


def _kept_figure(run: Run, path: Path) -> Path:
    plt = _pyplot()
    names = [n for n in run.curves if n in run.config.layers or n in run.config.dense] or list(run.config.layers)
    best = [run.config.layers[n].params_after / run.config.layers[n].params_before if n in run.config.layers else 1.0 for n in names]
    seed = ([run.seed_rule.layers[n].params_after / run.seed_rule.layers[n].params_before if n in run.seed_rule.layers else 1.0
             for n in names] if run.seed_rule else None)
    fig, ax = plt.subplots(figsize=(max(6, 0.28 * len(names)), 3.2))
    x = range(len(names))
    w = 0.4 if seed is not None else 0.8
    if seed is not None:
        ax.bar([i - w / 2 for i in x], seed, w, label="seed rule", color="tab:blue")
    ax.bar([i + (w / 2 if seed is not None else 0) for i in x], best, w, label="best trial", color="tab:red")
    ax.set_xticks(list(x), names, rotation=90, fontsize=6)
    ax.set_ylabel("parameters kept")
    ax.axhline(run.config.target_ratio, color="0.4", ls=":", lw=1, label=f"target {run.label}")
    ax.legend(fontsize=7)
    ax.set_title(f"kept fraction per layer at ratio {run.label}", fontsize=9)
    return _save(fig, path)


def _value(t: dict[str, Any]) -> float | None:
    return t["value"] if t.get("value") is not None else t.get("last_reported")


def _history_figure(run: Run, path: Path, metric: str) -> Path | None:
    done = [t for t in run.trials if _value(t) is not None]
    if not done:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    complete = [t for t in done if t["state"] == "complete"]
    pruned = [t for t in done if t["state"] != "complete"]
    ax.scatter([t["number"] for t in complete], [t["value"] for t in complete], s=14, color="tab:red", label="trial (val)")
    if pruned:
        ax.scatter([t["number"] for t in pruned], [_value(t) for t in pruned], s=14, marker="x", color="0.6", label="pruned (last report)")
    best, line = -math.inf, []
    for t in sorted(complete, key=lambda t: t["number"]):
        best = max(best, t["value"])
        line.append((t["number"], best))
    if line:
        ax.step([n for n, _ in line], [v for _, v in line], where="post", color="tab:red", lw=1, label="best so far")
    colours = {"seed_rule": "tab:blue", "uniform": "tab:green", "sensitivity": "tab:orange", "sensitivity_sum": "tab:purple"}
    for method, colour in colours.items():
        first = next((t for t in complete if t["method"] == method), None)
        if first is not None:
            ax.axhline(first["value"], color=colour, ls="--", lw=1, label=method.replace("_", " "))
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"val {metric}")
    ax.legend(fontsize=6, ncol=2)
    ax.set_title(f"optimization history at ratio {run.label}", fontsize=9)
    return _save(fig, path)


def _tradeoff_figure(runs: list[Run], path: Path, metric: str) -> Path | None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    drawn = False
    for run in runs:
        pts = [(t["ratio"], t["value"]) for t in run.trials if t["state"] == "complete" and t.get("ratio") is not None]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=12, label=f"trials at {run.label}")
            drawn = True
        seed = next((t for t in run.trials if t["method"] == "seed_rule" and t["state"] == "complete"), None)
        if seed is not None and seed.get("ratio") is not None:
            ax.scatter([seed["ratio"]], [seed["value"]], marker="s", s=30, facecolors="none", edgecolors="k")
        best = run.config.metric.get("searched", {}).get("val")
        if best is not None:
            ax.scatter([run.config.achieved_ratio], [best], marker="*", s=80, color="k")
    if not drawn:
        _pyplot().close(fig)
        return None
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%.4f"))
    ax.set_xlabel("achieved ratio (parameters kept)")
    ax.set_ylabel(f"val {metric}")
    ax.set_title("metric against ratio (square: seed rule, star: best)", fontsize=9)
    ax.legend(fontsize=6)
    return _save(fig, path)


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return html.escape(str(v))


def _summary_rows(run: Run) -> str:
    m = run.config.metric
    rows = [("dense", m.get("dense", {}), 1.0), ("seed rule (one MSE bound)", m.get("seed_rule", {}), run.seed_rule.achieved_ratio if run.seed_rule else None)]
    ratios = {}
    for t in run.trials:  # each method's first trial: the enqueued baselines' achieved ratios
        ratios.setdefault(t["method"], t.get("ratio"))
    rows += [(b.replace("_", " "), m[b], ratios.get(b)) for b in BASELINES if b in m]
    rows.append((f"best ({m.get('searched', {}).get('method') or 'searched'})", m.get("searched", {}), run.config.achieved_ratio))
    body = "".join(f"<tr><td>{html.escape(label)}</td><td>{_fmt(ratio)}</td><td>{_fmt(f.get('val'))}</td><td>{_fmt(f.get('test'))}</td>"
                   f"<td>{_fmt(f.get('before_retrain'))}</td><td>{_fmt(f.get('trial'))}</td></tr>" for label, f, ratio in rows)
    name = html.escape(str(m.get("name", "metric")))
    return (f"<table><tr><th>model</th><th>ratio</th><th>val {name}</th><th>test {name}</th><th>before retrain</th><th>trial</th></tr>"
            f"{body}</table>")


def _layer_rows(run: Run) -> str:
    seed = run.seed_rule.layers if run.seed_rule else {}
    macs = any(layer.macs_before is not None for layer in run.config.layers.values())
    head = ("<tr><th>layer</th><th>type</th><th>weight</th><th>seed rule rank</th><th>rank</th><th>params before</th>"
            "<th>params after</th><th>kept</th>" + ("<th>MACs before</th><th>MACs after</th>" if macs else "") + "</tr>")
    body = []
    for name, layer in run.config.layers.items():
        cells = [html.escape(name), html.escape(layer.type), "x".join(map(str, layer.weight_shape)),
                 _fmt(seed[name].rank) if name in seed else "dense", _fmt(layer.rank), _fmt(layer.params_before),
                 _fmt(layer.params_after), f"{layer.params_after / layer.params_before:.3f}"]
        if macs:
            cells += [_fmt(layer.macs_before), _fmt(layer.macs_after)]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    for name, reason in run.config.dense.items():
        body.append(f"<tr><td>{html.escape(name)}</td><td colspan='{9 if macs else 7}' style='text-align:left'>dense: "
                    f"{html.escape(str(reason))}</td></tr>")
    before = sum(layer.params_before for layer in run.config.layers.values())
    after = sum(layer.params_after for layer in run.config.layers.values())
    cost = run.config.cost or {}
    total = [f"factorized layers ({len(run.config.layers)})", "", "", "", "", _fmt(before), _fmt(after), f"{after / max(before, 1):.3f}"]
    if macs:
        total += [_fmt(sum(layer.macs_before or 0 for layer in run.config.layers.values())),
                  _fmt(sum(layer.macs_after or 0 for layer in run.config.layers.values()))]
    body.append("<tr>" + "".join(f"<th>{c}</th>" for c in total) + "</tr>")
    note = (f"<p>Whole model: {run.config.compressed_params:,} of {run.config.original_params:,} parameters "
            f"({run.config.achieved_ratio:.4f})" + (f"; multiply-adds per sample {cost['macs_after']:,} of {cost['macs_before']:,} "
                                                      f"({cost['macs_ratio']:.4f}) for input {cost.get('input_shape')}" if cost.get("macs_before") else "")
            + ".</p>")
    return f"<table>{head}{''.join(body)}</table>{note}"


def _img(path: Path | None, alt: str) -> str:
    if path is None:
        return f"<p><em>{html.escape(alt)}: no data in this folder.</em></p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(path.name)}</figcaption></figure>'


_STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}table{border-collapse:collapse;margin:1em 0;"
          "font-size:13px}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
          "img{max-width:100%}figure{margin:1em 0}figcaption{font-size:11px;color:#666}")


def write_report(folder: str | Path) -> Path:
    """Write ``report.html`` and the PNG figures into ``folder`` (a search's ``--out``); returns the page's path."""
    root = Path(folder)
    runs = load_runs(root)
    metric = str(runs[0].config.metric.get("name", "metric"))
    parts = [f"<h1>ranksearch: {html.escape(runs[0].config.model)}</h1>",
             f"<p>{len(runs)} working point{'s' if len(runs) > 1 else ''}: "
             + ", ".join(f"{r.label} (achieved {r.config.achieved_ratio:.4f}, {r.config.compressed_params:,} of "
                         f"{r.config.original_params:,} parameters)" for r in runs) + ".</p>"]
    parts.append(_img(_tradeoff_figure(runs, root / "tradeoff.png", metric), "metric against ratio"))
    for run in runs:
        here = run.folder
        parts.append(f"<h2>ratio {run.label}</h2>")
        parts.append(_summary_rows(run))
        if run.fixed_cost:
            from ranksearch.export import fixed_cost_line

            parts.append(f"<p>Fixed cost before the first trial: {html.escape(fixed_cost_line(run.fixed_cost))}.</p>")
        counts = {s: sum(t["state"] == s for t in run.trials) for s in ("complete", "pruned", "fail")}
        if run.trials:
            parts.append(f"<p>Trials: {counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed.</p>")
        parts.append(_img(_history_figure(run, here / "history.png", metric), "optimization history"))
        parts.append(_img(_kept_figure(run, here / "kept.png"), "kept fraction per layer"))
        parts.append(_img(_errors_figure(run, here / "errors.png"), "error against rank"))
        parts.append("<h3>layers</h3>" + _layer_rows(run))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>ranksearch report: {html.escape(runs[0].config.model)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>")
    return atomic_write_text(root / "report.html", page)
