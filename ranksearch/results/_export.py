"""A study's results folder: the best trial's files and, when matplotlib is installed, its report."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial
from torch import nn

from ranksearch._extras import available, install_hint
from ranksearch.core._solver import Curve
from ranksearch.results._collect import SearchResult, collect
from ranksearch.results._files import write_results
from ranksearch.results._report import write_report

__all__ = ["export_study", "report_if_possible", "write_folder"]

_log = logging.getLogger(__name__)


def report_if_possible(folder: str | Path) -> Path | None:
    """Write ``report.html`` into ``folder``, or with matplotlib missing say how to get it (None)."""
    if not available("matplotlib"):
        _log.warning("report.html not written: the report's figures need matplotlib (%s; then: ranksearch report %s)",
                     install_hint("report"), folder)
        return None
    path = write_report(folder)
    _log.info("report: %s", path)
    return path


def write_folder(result: SearchResult, out_dir: str | Path, *, report: bool = True) -> None:
    """Write a search result's files into ``out_dir`` (and its report, where possible)."""
    write_results(out_dir, result.config, result.model, result.seed_rule, result.summary, result.study, result.curves, result.stream)
    if report:
        report_if_possible(out_dir)


def export_study(study: optuna.Study, model: nn.Module, curves: Mapping[str, Curve], out_dir: str | Path, *,
                 artifacts: Any = None, source: Mapping[str, Any] | None = None, trial: int | None = None,
                 rebuild: Callable[[FrozenTrial], nn.Module] | None = None) -> SearchResult:
    """Write the best trial of ``study`` so far (or trial number ``trial``) into ``out_dir``; from any machine that has
    the storage, the artifacts and the dense model, also while workers run. ``rebuild``: see :func:`collect`."""
    result = collect(study, model, curves, artifacts=artifacts, source=source, trial=trial, rebuild=rebuild)
    write_folder(result, out_dir)
    return result
