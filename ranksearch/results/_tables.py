"""One table model, rendered as Markdown (``summary.md`` and the terminal) and HTML (``report.html``).

The builders here make every table ranksearch shows: a working point's summary (:func:`summary_table`),
the seed's per-layer table (:func:`layer_table`) and several working points side by side
(:func:`working_points_table`); the CLI, ``summary.md`` and the report all render these.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ranksearch.core._bytes import LAND
from ranksearch.core._config import RankConfig
from ranksearch.results._summary import Figures, Summary
from ranksearch.study._record import fixed_cost_line
from ranksearch.study._vocab import BASELINES, Axis, Method

__all__ = ["Row", "Table", "bytes_table", "extra_tables", "extras", "front_table", "layer_table", "points_table", "summary_table",
           "working_points_table"]


@dataclass(frozen=True)
class Row:
    """A row of cells; ``span``: the cells after the first are one text spanning the other columns;
    ``total``: a totals row (bold)."""

    cells: tuple[str, ...]
    span: bool = False
    total: bool = False


@dataclass(frozen=True)
class Table:
    """Columns, rows and the notes that follow the table (one paragraph each)."""

    columns: tuple[str, ...]
    rows: tuple[Row, ...]
    title: str = ""
    notes: tuple[str, ...] = field(default=())

    def markdown(self) -> str:
        lines = [self.title] if self.title else []
        lines += ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        for row in self.rows:
            cells = list(row.cells)
            if row.span:
                cells = [cells[0], *([cells[1]] if len(cells) > 1 else []), *(["-"] * (len(self.columns) - 2))]
            if row.total:
                cells = [f"**{c}**" if c else c for c in cells]
            lines.append("| " + " | ".join(cells) + " |")
        for note in self.notes:
            lines += ["", note]
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = []
        for row in self.rows:
            tag = "th" if row.total else "td"
            if row.span:
                rest = html.escape(" ".join(row.cells[1:]))
                body.append(f"<tr><td>{html.escape(row.cells[0])}</td><td colspan='{len(self.columns) - 1}' "
                            f"style='text-align:left'>{rest}</td></tr>")
            else:
                body.append("<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in row.cells) + "</tr>")
        notes = "".join(f"<p>{html.escape(n)}</p>" for n in self.notes)
        title = f"<h3>{html.escape(self.title)}</h3>" if self.title else ""
        return f"{title}<table><tr>{head}</tr>{''.join(body)}</table>{notes}"


def fmt(value: Any, digits: int = 4) -> str:
    """A cell: ``-`` for nothing, floats to ``digits`` places, ints with thousands separators."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _figures_row(label: str, f: Figures) -> Row:
    before = fmt(f.before_retrain) + (f" ({f.before_retrain_samples} val samples)" if f.before_retrain_samples else "")
    return Row((label, fmt(f.ratio), fmt(f.val), fmt(f.test), before, fmt(f.trial)))


def summary_table(s: Summary) -> Table:
    """Dense, seed rule, baselines and the best trial: ratio, validation and test metric, metric before retrain."""
    rows = [_figures_row("dense", s.dense), _figures_row("seed rule (one MSE bound)", s.seed_rule or Figures())]
    rows += [_figures_row(m.label, f) for m, f in s.baselines.items()]
    rows.append(_figures_row(f"best ({s.best_method.label})", s.best))
    t = s.trials
    notes = [f"Target ratio {s.target_ratio}; trials: {t.complete} complete, {t.pruned} pruned, {t.fail} failed; "
             f"wall time {s.wall_time_s} s."]
    if s.fixed_cost:
        notes.append(f"Fixed cost before the first trial (stored once in the study): {fixed_cost_line(s.fixed_cost)}.")
    if (cost := s.cost) and cost.get("macs_before"):
        notes.append(f"Cost of the best model: parameters {cost['params_ratio']:.4f} of the dense model's, multiply-adds "
                     f"{cost['macs_ratio']:.4f} ({cost['macs_after']:,} against {cost['macs_before']:,} MACs per input of "
                     f"shape {cost['input_shape']}, Linear/Conv layers).")
    if (lat := s.latency) is not None:
        notes.append(f"Latency of the best model on {lat['runtime']} ({lat['device']}, batch {lat['batch']}): {lat['ratio']:.3f}x of "
                     f"the dense model's ({lat['factorized_s'] * 1e3:.3g} against {lat['dense_s'] * 1e3:.3g} ms, medians side by side; "
                     f"target {lat['target']:g}x{', missed' if lat['ratio'] > lat['target'] else ''}, the timing table predicted "
                     f"{lat['predicted_ratio']:.3f}x).")
    name = s.metric
    return Table(("model", "ratio", f"val {name}", f"test {name}", "before retrain", "trial"), tuple(rows), notes=tuple(notes))


def layer_table(config: RankConfig, seed_rule: RankConfig | None = None) -> Table:
    """The seed's per-layer table: type, matrix, rank (and the seed rule's), parameters and (when the input
    shape is known) multiply-adds before and after; then the layers kept dense, with the reason."""
    macs = any(layer.macs_before is not None for layer in config.layers.values())
    seed = seed_rule.layers if seed_rule is not None else None
    columns = ["layer", "type", "matrix", *(["seed rule rank"] if seed is not None else []), "rank", "params before",
               "params after", "kept", *(["MACs before", "MACs after"] if macs else [])]
    rows = []
    for name, lr in config.layers.items():
        cells = [name, lr.type, f"{lr.matrix[0]}x{lr.matrix[1]}", *([fmt(seed[name].rank) if name in seed else "dense"]
                                                                    if seed is not None else []),
                 fmt(lr.rank), fmt(lr.params_before), fmt(lr.params_after), f"{lr.params_after / lr.params_before:.3f}"]
        if macs:
            cells += [fmt(lr.macs_before), fmt(lr.macs_after)]
        rows.append(Row(tuple(cells)))
    rows += [Row((n, f"dense: {why}"), span=True) for n, why in config.dense.items()]
    before = sum(lr.params_before for lr in config.layers.values())
    after = sum(lr.params_after for lr in config.layers.values())
    total = [f"factorized layers ({len(config.layers)})", "", "", *([""] if seed is not None else []), "", fmt(before), fmt(after),
             f"{after / max(before, 1):.3f}"]
    if macs:
        total += [fmt(sum(lr.macs_before or 0 for lr in config.layers.values())), fmt(sum(lr.macs_after or 0 for lr in config.layers.values()))]
    rows.append(Row(tuple(total), total=True))
    head = (f"{config.model}: ratio {config.achieved_ratio:.4f} (target {config.target_ratio}), {config.compressed_params:,} of "
            f"{config.original_params:,} parameters")
    if (cost := config.cost) and cost.get("macs_before"):
        head += (f"; multiply-adds {cost['macs_ratio']:.4f} ({cost['macs_after']:,} of {cost['macs_before']:,} per input of shape "
                 f"{cost['input_shape']})")
    return Table(tuple(columns), tuple(rows), title=head + "\nParam reduction:")


def working_points_table(summaries: Sequence[Summary]) -> Table:
    """Several working points: the best model's parameter and MACs ratios, and the test metric of every
    method (val in brackets)."""
    name = summaries[0].metric if summaries else "metric"
    methods = [Method.SEED_RULE, *(m for m in BASELINES if any(m in s.baselines for s in summaries)), Method.SEARCHED]
    rows = []
    for s in summaries:
        figures = {Method.SEED_RULE: s.seed_rule or Figures(), Method.SEARCHED: s.best, **s.baselines}
        cells = [f"{fmt(figures.get(m, Figures()).test)} ({fmt(figures.get(m, Figures()).val)})" for m in methods]
        rows.append(Row((str(s.target_ratio), fmt(s.achieved_ratio), fmt(s.cost.get("macs_ratio")), fmt(s.dense.test), *cells,
                         f"{s.trials.complete}+{s.trials.pruned} pruned", str(s.wall_time_s))))
    columns = ("target", "ratio", "MACs ratio", "dense", *(str(m) for m in methods), "trials", "wall s")
    return Table(columns, tuple(rows), title=f"Test {name} (val {name} in brackets) after the same short retrain.\n")


def front_table(s: Summary) -> Table:
    """A Pareto study's front: every non-dominated trial, largest cost first (on the latency axis, with its latency; on the
    bytes axis, with its stream's bytes and their share of the dense model's)."""
    latency, coded = s.axis is Axis.LATENCY, s.axis is Axis.BYTES

    def cost(f: Figures) -> tuple[str, ...]:
        return (fmt(f.latency, 3),) if latency else (fmt(f.bytes), fmt(f.stream_share)) if coded else ()

    rows = tuple(Row((*cost(f), fmt(f.ratio), fmt(f.val), fmt(f.test), fmt(f.trial), f.method.label if f.method else "-")) for f in s.front)
    costs = (s.axis.label,) if latency else ("bytes", "of dense stream") if coded else ()
    return Table((*costs, "ratio", f"val {s.metric}", f"test {s.metric}", "trial", "allocation"), rows,
                 title=f"The front: the {len(s.front)} trials no other beats at a smaller or equal {s.axis.value} "
                       "(export any with `ranksearch export --trial N`).\n")


def points_table(s: Summary) -> Table:
    """A Pareto study's working points: the front's best no larger than each, against what was enqueued there."""
    points = working_points_table(s.points)
    names = {str(Method.SEARCHED): "front's best",
             "target": {Axis.RATIO: "target", Axis.LATENCY: "latency target", Axis.BYTES: "bytes target (of dense stream)"}[s.axis]}
    columns = tuple(names.get(c, c) for c in points.columns)
    return Table(columns, points.rows, title=f"Working points of the Pareto study: the front's best no larger than each; "
                 f"test {s.metric} (val in brackets); trials and wall time are the whole study's.\n")


def bytes_table(s: Summary, title: str = "The byte working point:") -> Table:
    """A byte working point: NNCodec on the dense model, the references (coded at one uniform qp) and the best trial, each
    with its stream's bytes and the decoded model's metrics (a point of a front over bytes: its best within the budget)."""
    c = s.coding or {}
    dense = c.get("dense") or {}
    budget, dense_bytes = c.get("budget"), c.get("dense_bytes")

    def row(label: str, f: Figures | None) -> Row:
        f = f or Figures()
        return Row((label, fmt(f.ratio), fmt(f.bytes), fmt(f.val), fmt(f.test), fmt(f.before_coding), fmt(f.trial)))

    label = f"dense, NNCodec at qp {dense['qp']:g}" if dense.get("qp") is not None else (
        f"dense, NNCodec: no qp fits (at least {dense.get('floor', 0):,.0f} bytes)")
    rows = [Row((label, "1.0000", fmt(dense.get("bytes")), fmt(dense.get("val")), fmt(dense.get("test")), fmt(s.dense.val), "-")),
            row("seed rule, one qp", s.seed_rule), *(row(f"{m.label}, one qp", f) for m, f in s.baselines.items()),
            row(f"best ({s.best_method.label}, {c.get('coding', 'fitted')})", s.best)]
    qps = sorted((c.get("qps") or {}).values())
    notes = (f"Budget {fmt(budget)} bytes, {budget / dense_bytes:.4f} of the dense model's stream at qp -38 ({fmt(dense_bytes)} bytes); "
             f"NNR streams measured by NNCodec, metrics of the decoded models. The references allocate at the base ratio "
             f"{c.get('base_ratio')} (where the seed rule's stream at qp -38 meets the budget) and are coded at the finest uniform qp "
             f"within it; the trials drew their ratio from {len(c.get('ratios') or [])} between {min(c.get('ratios') or [0]):g} and "
             f"{max(c.get('ratios') or [0]):g}." + (f" The best trial's qps: {qps[0]} to {qps[-1]}"
                                                   + (f"; the byte table predicted {fmt(c.get('predicted_bytes'))} bytes." if
                                                      c.get("predicted_bytes") else ".") if qps else "")
             + (f" Its retrain trained its last {c['qat']:.0%} quantization-aware." if c.get("qat") else
                " Its retrain was plain (no quantization-aware steps).")
             + ("" if s.axis is Axis.BYTES else " The best is the highest validation metric among the streams that take at least "
                f"{LAND:.0%} of the budget (a reference at one qp may take less)."),) if budget and dense_bytes else ()
    name = s.metric
    return Table(("model", "ratio", "bytes", f"val {name}", f"test {name}", "val before coding", "trial"), tuple(rows),
                 title=title, notes=notes)


def extra_tables(s: Summary) -> str:
    """A Pareto study's :func:`points_table` and :func:`front_table`, or a byte working point's :func:`bytes_table`, as
    Markdown; empty for a study of one parameter ratio."""
    return "".join("\n" + t.markdown() for t in extras(s))


def extras(s: Summary) -> list[Table]:
    """The tables beyond the summary: a Pareto study's :func:`points_table` and :func:`front_table`, and a byte working
    point's :func:`bytes_table` (on the bytes axis, one per point of the front, against its references)."""
    out = [points_table(s), front_table(s)] if s.points else []
    if s.points and s.axis is Axis.BYTES:
        return out + [bytes_table(p, f"Byte working point {p.target_ratio:g} of the front (its best within the budget):")
                      for p in s.points if p.coding]
    return out + ([bytes_table(s)] if s.coding else [])
