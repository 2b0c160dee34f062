"""Several working points in one run: each gets its own study and folder, and hands the next its
sensitivity table and its best allocation (a warm start)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ranksearch._api import search
from ranksearch._io import atomic_write_text
from ranksearch.core._inputs import Forward
from ranksearch.core._task import Task
from ranksearch.errors import RankSearchError
from ranksearch.results._collect import SearchResult
from ranksearch.results._export import report_if_possible
from ranksearch.results._tables import working_points_table
from ranksearch.study._callables import Evaluate, Retrain
from ranksearch.study._settings import Components, RunOptions, SearchSettings

__all__ = ["check_points", "point_options", "search_points"]

_log = logging.getLogger(__name__)


def _tag(settings: SearchSettings) -> str:
    """What tells a working point from the others of a search: its ratio, or a byte working point's name (``bytesN``,
    ``bitsB`` per parameter)."""
    if settings.bits_per_param is not None and settings.target_bytes is None:  # its bytes are resolved on the model
        return f"bits{settings.bits_per_param:g}" + ("" if settings.target_ratio == 1 else f"+{settings.target_ratio:g}")
    return settings.point if settings.target_bytes is not None else f"{settings.target_ratio:g}"


def point_options(run: RunOptions, settings: SearchSettings, several: bool) -> RunOptions:
    """One working point's run options: with several points, its own folder (``ratio-R``; a byte working point's
    ``bytesN``), study name (``NAME@R``, ``NAME@bytesN``) and artifact folder under the given ones, and no report of
    its own."""
    if not several:
        return run
    tag = _tag(settings)
    folder = f"ratio-{tag}" if tag == f"{settings.target_ratio:g}" else tag
    return run.replace(out_dir=Path(run.out_dir) / folder if run.out_dir is not None else None,
                       study_name=f"{run.study_name}@{tag}" if run.study_name else None,
                       artifacts=Path(run.artifacts) / folder if isinstance(run.artifacts, (str, Path)) else run.artifacts,
                       report=False)


def check_points(ratios: Sequence[float]) -> None:
    """Working points are given, each once (0.1 and 0.100000001 would share a study and a folder)."""
    if not ratios:
        raise RankSearchError("search_points needs at least one working point.")
    if len({f"{r:g}" for r in ratios}) != len(ratios):
        raise RankSearchError(f"working points {list(ratios)} repeat a ratio; give each once.")


def search_points(
    model: nn.Module,
    points: Sequence[SearchSettings | float],
    *,
    task: Task | None = None,
    evaluate: Evaluate | None = None,
    retrain: Retrain | None = None,
    calibration: Iterable[Any] | None = None,
    forward: Forward | None = None,
    run: RunOptions | None = None,
    given: Components | None = None,
) -> list[SearchResult]:
    """:func:`~ranksearch.search` at each working point in turn (settings, or just target ratios), sharing
    the spectra, the sensitivity table and the best allocation found so far (enqueued as a warm start at
    the next point). With ``run.out_dir`` each point writes its results into ``ratio-R/`` and the folder
    gets one ``summary.md`` table and one report for all of them.
    """
    run = run or RunOptions()
    given = given or Components()
    settings = [p if isinstance(p, SearchSettings) else SearchSettings(target_ratio=p) for p in points]
    if not settings:
        raise RankSearchError("search_points needs at least one working point.")
    if len({_tag(s) for s in settings}) != len(settings):
        raise RankSearchError(f"working points {[_tag(s) for s in settings]} repeat one; give each once.")
    calibration = None if calibration is None else list(calibration)
    several = len(settings) > 1
    results: list[SearchResult] = []
    sensitivity, warm = given.sensitivity, list(given.warm_start)
    for s in settings:
        here = point_options(run, s, several)
        point = dataclasses.replace(given, sensitivity=sensitivity, warm_start=warm)
        result = search(model, s, task=task, evaluate=evaluate, retrain=retrain, calibration=calibration, forward=forward,
                        run=here, given=point)
        results.append(result)
        best = result.best_log10w  # none for the seed rule: enqueued anyway
        sensitivity, warm = result.sensitivity, [best] if best is not None else []
    if several and run.out_dir is not None:
        out = Path(run.out_dir)
        table = working_points_table([r.summary for r in results]).markdown()
        atomic_write_text(out / "summary.md", f"# ranksearch: {results[0].config.model}, {len(results)} working points\n\n{table}")
        if run.report:
            report_if_possible(out)
    return results
