"""What a study found, and its files: the result and its summary, the tables, the results folder, the
report, and the model written in other formats (ONNX, an MPEG NNR bitstream)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ranksearch._lazy import exports

_NAMES = {
    "SearchResult": "_collect", "collect": "_collect", "trial_model": "_collect",
    "Figures": "_summary", "Summary": "_summary", "TrialCounts": "_summary",
    "Table": "_tables", "layer_table": "_tables", "summary_table": "_tables", "working_points_table": "_tables",
    "Run": "_files", "load_runs": "_files", "nnr_tensors": "_files", "write_results": "_files",
    "export_study": "_export", "write_folder": "_export", "write_report": "_report",
    "FORMATS": "_formats", "LAYER_OPS": "_formats", "onnx_op_counts": "_formats", "write_model": "_formats", "sample_input": "_formats", "shaped_input": "_formats",
    "DEFAULT_QP": "_nnr", "encode_nnr": "_nnr:encode", "decode_nnr": "_nnr:decode", "verify_nnr": "_nnr:verify",
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = exports(__name__, _NAMES)

if TYPE_CHECKING:
    from ranksearch.results._collect import SearchResult, collect, trial_model
    from ranksearch.results._export import export_study, write_folder
    from ranksearch.results._files import Run, load_runs, nnr_tensors, write_results
    from ranksearch.results._formats import FORMATS, LAYER_OPS, onnx_op_counts, sample_input, shaped_input, write_model
    from ranksearch.results._nnr import DEFAULT_QP
    from ranksearch.results._nnr import decode as decode_nnr
    from ranksearch.results._nnr import encode as encode_nnr
    from ranksearch.results._nnr import verify as verify_nnr
    from ranksearch.results._report import write_report
    from ranksearch.results._summary import Figures, Summary, TrialCounts
    from ranksearch.results._tables import Table, layer_table, summary_table, working_points_table
