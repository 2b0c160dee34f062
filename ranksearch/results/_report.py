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
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from ranksearch._extras import require
from ranksearch._io import atomic_write_bytes, atomic_write_text
from ranksearch.results._files import Run, load_runs
from ranksearch.results._tables import extras, layer_table, summary_table
from ranksearch.study._vocab import Axis, Method

__all__ = ["write_report"]


def _pyplot() -> Any:
    matplotlib = require("matplotlib", "report", "The report's figures")

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
    colours = {Method.SEED_RULE: "tab:blue", Method.UNIFORM: "tab:green", Method.SENSITIVITY: "tab:orange",
               Method.SENSITIVITY_SUM: "tab:purple"}
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
    # a Pareto study on the latency axis: x is its latency; on the bytes axis, its stream's share of the dense model's
    axis = next((run.summary.axis for run in runs if run.summary.axis is not Axis.RATIO), Axis.RATIO)
    latency = axis is Axis.LATENCY
    x = {Axis.RATIO: "ratio", Axis.LATENCY: "latency", Axis.BYTES: "stream_share"}[axis]
    for run in runs:
        pts = [(t[x], t["value"]) for t in run.trials if t["state"] == "complete" and t.get(x) is not None]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=12,
                       label="trials" if run.summary.points else f"trials at {run.label}")
            drawn = True
        seeds = [t for t in run.trials if t["method"] == Method.SEED_RULE and t["state"] == "complete" and t.get(x) is not None]
        if seeds:  # a Pareto study has one at each working point
            ax.scatter([t[x] for t in seeds], [t["value"] for t in seeds], marker="s", s=30, facecolors="none", edgecolors="k")
        front, own = run.summary.front, run.summary.axis
        if front:
            up = front[::-1]  # the best no larger than each point: a step up at each point of the front, flat to the last point
            right = max([up[-1].cost(own) or 0.0, *(p.target_ratio for p in run.summary.points)])
            ax.step([f.cost(own) for f in up] + [right], [f.val for f in up] + [up[-1].val], where="post", color="k", lw=1,
                    label="front")
            for point in run.summary.points:
                ax.axvline(point.target_ratio, color="0.5", ls=":", lw=1)
            refs = [(d["bytes"] / c["dense_bytes"], d["val"]) for p in run.summary.points if (c := p.coding)
                    and (d := c.get("dense") or {}).get("bytes") and d.get("val") is not None]
            if refs:  # the bytes axis: NNCodec's own answer at each point, the dense model at one qp
                ax.scatter([r[0] for r in refs], [r[1] for r in refs], marker="D", s=24, facecolors="none", edgecolors="tab:red",
                           label="dense, NNCodec at one qp")
        best = run.config.metric.get(Method.SEARCHED, {})
        where = best.get("latency") if latency else best.get("stream_share") if axis is Axis.BYTES else run.config.achieved_ratio
        if best.get("val") is not None and where is not None:
            ax.scatter([where], [best["val"]], marker="*", s=80, color="k")
    if not drawn:
        _pyplot().close(fig)
        return None
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%.4f"))
    ax.set_xlabel({Axis.RATIO: "achieved ratio (parameters kept)", Axis.LATENCY: "predicted latency, a fraction of the dense model's",
                   Axis.BYTES: "NNR stream, a fraction of the dense model's at qp -38"}[axis])
    ax.set_ylabel(f"val {metric}")
    ax.set_title(f"metric against {'bytes' if axis is Axis.BYTES else x} (square: seed rule, star: best; dotted: a Pareto study's "
                 "working points)", fontsize=9)
    ax.legend(fontsize=6)
    return _save(fig, path)


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
        parts.append(summary_table(run.summary).html())
        parts.extend(t.html() for t in extras(run.summary))
        parts.append(_img(_history_figure(run, here / "history.png", metric), "optimization history"))
        parts.append(_img(_kept_figure(run, here / "kept.png"), "kept fraction per layer"))
        parts.append(_img(_errors_figure(run, here / "errors.png"), "error against rank"))
        parts.append("<h3>layers</h3>" + replace(layer_table(run.config, run.seed_rule), title="").html())
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>ranksearch report: {html.escape(runs[0].config.model)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>")
    return atomic_write_text(root / "report.html", page)
