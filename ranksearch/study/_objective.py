"""One search trial: a proposal -> exact ranks -> factorize -> short retrain -> metric.

:class:`Objective` is what Optuna calls per trial. Every trial records (:class:`~ranksearch.study._record.TrialRecord`)
what it allocated, who ran it, what it scored and, when it was the best so far, the artifact id of its
retrained weights. A trial that raises is failed with ``error`` and ``traceback``; one interrupted by
Ctrl-C is marked ``interrupted``.

In a Pareto study (the allocator has a front) a trial returns two values, its metric and its cost on the study's
axis (its achieved ratio, its predicted latency, or its stream's bytes as a fraction of the dense model's);
its reports go to the :class:`~ranksearch.study._gate.FrontGate` (``screen``), since Optuna prunes no
multi-objective study.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.artifacts import upload_artifact
from optuna.trial import TrialState
from torch import nn

from ranksearch.core._bytes import LAND
from ranksearch.core._surgery import factorize
from ranksearch.core._weights import save_state_dict
from ranksearch.errors import RankSearchError
from ranksearch.study._allocator import Allocator
from ranksearch.study._bytes import Coder, spread
from ranksearch.study._callables import Callables
from ranksearch.study._gate import FrontGate
from ranksearch.study._record import TrialRecord, metric_of
from ranksearch.study._storage import worker_id, write_trial
from ranksearch.study._vocab import Axis, Coding, Method

__all__ = ["Objective"]

_log = logging.getLogger(__name__)


class Objective:
    """One trial: proposal -> exact ranks -> factorize -> short retrain -> metric.

    Args:
        model: The dense model (left unchanged).
        allocator: Proposals to ranks (with the study's centre).
        calls: The metric, the retrain, the test metric; ``calls.quick`` scores a sampled trial before
            its retrain on a validation subset (the pruner may stop it after a fraction of an epoch, so
            the whole split would cost it more than its screen).
        artifacts: Where a trial that beats the best so far uploads its retrained weights (None: nowhere).
        n_trials: The trial cap, for the log lines.
        screen: A Pareto study's gate (None: every report goes on).
        coder: A byte working point's: codes the retrained model within the budget; the trial's value is then the
            decoded model's metric (its trials draw their ratio as a Pareto study's do, with one objective).
    """

    def __init__(self, model: nn.Module, allocator: Allocator, calls: Callables, *, artifacts: Any = None,
                 n_trials: int | None = None, screen: FrontGate | None = None, coder: Coder | None = None) -> None:
        self.model, self.allocator, self.calls = model, allocator, calls
        self.artifacts, self.n_trials, self.screen, self.coder = artifacts, n_trials, screen, coder
        self.current: int | None = None  #: number of the trial running now (for Ctrl-C)
        self.gate: Any = None  #: :class:`~ranksearch.study._signals.InterruptGate`: signals interrupt only inside a trial

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        self.current = trial.number
        with self.gate.open() if self.gate is not None else contextlib.nullcontext():
            write_trial(trial, TrialRecord(worker=worker_id()))
            return self._guarded(trial)

    def _guarded(self, trial: optuna.Trial) -> float | tuple[float, float]:
        try:
            return self._run(trial)
        except optuna.TrialPruned as e:
            _log.info("trial %d [%s] pruned: %s", trial.number, TrialRecord.of(trial).method, e)
            raise
        except KeyboardInterrupt:
            write_trial(trial, TrialRecord(interrupted=True))
            raise
        except Exception as e:
            write_trial(trial, TrialRecord(error=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}",
                                           traceback=traceback.format_exc()[-8000:]))
            if isinstance(e, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            raise

    def _run(self, trial: optuna.Trial) -> float | tuple[float, float]:
        start = time.perf_counter()
        method = TrialRecord.of(trial).method  # enqueued trials carry theirs (seed_rule, ...), sampled ones get "searched"
        write_trial(trial, TrialRecord(method=method))
        sol, kind = self.allocator.propose(trial)
        drawn = bool(self.allocator.front)  # the trial drew the point it allocates for
        bytes_axis = drawn and self.allocator.axis is Axis.BYTES  # its point: a budget, its cost: its stream (once coded)
        front = drawn and (self.coder is None or bytes_axis)  # a Pareto study: two objectives
        target = TrialRecord.of(trial).target if drawn else self.allocator.target
        coding = None if self.coder is None else TrialRecord.of(trial).coding or Coding.FITTED
        coder = self.coder.at(target) if bytes_axis and self.coder is not None and target is not None else self.coder

        # a Pareto study's second objective: ratio or latency (the bytes axis: its stream's share, set once it is coded)
        cost = self.allocator.cost(sol) if front and not bytes_axis else sol.ratio

        def values(metric: float) -> float | tuple[float, float]:  # a Pareto study's trial: (metric, cost)
            return (metric, cost) if front else metric

        ranks = {n: r for n, r in sol.ranks.items() if r is not None}
        curves, factors = self.allocator.views.of(kind)
        assert target is not None
        latency_axis = front and self.allocator.axis is Axis.LATENCY  # target: a latency fraction, within the study's ratio
        # the drawn point is the constraint, except on the latency axis and at a byte working point (the bytes are; the ratio a knob)
        bound = self.allocator.target if latency_axis or self.coder is not None else target
        trial.set_constraint("ratio_over_target", sol.ratio - bound)
        write_trial(trial, TrialRecord(ranks=ranks, mse={n: float(curves[n].mse[r]) for n, r in ranks.items()}, factors=kind,
                                       params=sol.params, ratio=sol.ratio,
                                       latency=cost if latency_axis else None, coding=coding))
        twin = next((t for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                     if (r := TrialRecord.of(t)).ranks == ranks and r.factors == kind and r.coding == coding
                     and (not bytes_axis or r.target == target)), None)
        if twin is not None:  # same ranks (and coding, budget) as a finished trial: the retrain and the coding are deterministic, reuse them
            r = TrialRecord.of(twin)
            write_trial(trial, TrialRecord(same_as=twin.number, before_retrain=r.before_retrain,
                                           before_retrain_samples=r.before_retrain_samples, test=r.test, bytes=r.bytes, qps=r.qps,
                                           other_qps=r.other_qps, folds=r.folds,
                                           predicted_bytes=r.predicted_bytes, before_coding=r.before_coding, stream_share=r.stream_share,
                                           qat=r.qat))
            if bytes_axis:
                assert r.stream_share is not None
                cost = r.stream_share
            value = metric_of(twin)
            assert value is not None
            _log.info("trial %d [%s] has the ranks of trial %d: value %.4f reused", trial.number, method, twin.number, value)
            return values(value)
        model = factorize(self.model, ranks, factors)
        calls = self.calls
        if calls.quick is not None and method is Method.SEARCHED:
            before = float(calls.quick[0](model))
            write_trial(trial, TrialRecord(before_retrain=before, before_retrain_samples=calls.quick[1]))
        else:
            before = float(calls.evaluate(model))
            write_trial(trial, TrialRecord(before_retrain=before))
        scored = None
        quantize = None if coder is None or coding is None else coder.quantize(coding)
        if calls.retrain is not None and method is not Method.DENSE:  # the dense model is scored as it was given
            if quantize is not None:
                write_trial(trial, TrialRecord(qat=quantize.fraction))
            reports: dict[int, float] = {}

            def report(step: int, value: float | None, last: bool = False) -> None:
                if value is None:
                    return
                if front:  # Optuna keeps no intermediate values of a multi-objective trial: its record does
                    if self.screen is not None:
                        self.screen(trial, reports, step, value, last)
                    else:
                        reports[int(step)] = float(value)
                        write_trial(trial, TrialRecord(reports=dict(reports)))
                    return
                _report(trial, step, value, last)

            scored = calls.retrain_with(model, report, quantize)
        # a retrain that returns a number has scored the model on the validation split already
        value = float(scored) if isinstance(scored, (int, float)) and not isinstance(scored, bool) else float(calls.evaluate(model))
        if not math.isfinite(value):
            raise RankSearchError(f"evaluate returned {value!r}; it must return a finite number (higher is better).")
        final, coded = model, ""  # the model the value and the test metric are of
        if coder is not None:  # a byte working point: the value is what the stream delivers
            assert coding is not None
            try:
                final, info = coder(model, coding)
            except RankSearchError as e:  # its retrained weights code over the budget even at the coarsest qps: no value
                raise optuna.TrialPruned(f"not coded within the budget: {e}") from None
            uncoded = value
            if bytes_axis:  # the front's cost: the stream, a share of the dense model's at the default qp
                cost = info["bytes"] / coder.dense_bytes
                info["stream_share"] = cost
            write_trial(trial, TrialRecord(before_coding=uncoded, **info))
            value = float(calls.evaluate(final))
            qat = "" if quantize is None or method is Method.DENSE else f", after {quantize.fraction:.0%} quantization-aware"
            coded = f", {info['bytes']:,} bytes at qp {spread(info['qps'])} ({coding.value}: {value - uncoded:+.4f} by coding{qat})"
        if calls.test is not None:
            write_trial(trial, TrialRecord(test=float(calls.test(final))))
        # at a byte working point, the best is picked among the streams that land within 2% of the budget: the best of those uploads
        landing = None if coder is None or front else (int(info["bytes"]) >= LAND * coder.budget, LAND * coder.budget)
        if self.artifacts is not None and _best_so_far(trial, value, cost if front else None, target if front else None, landing):
            self._upload(trial, model)
        _log.info("trial %d%s [%s] ratio %.4f%s%s -> %.4f (before retrain %.4f) in %.1f s",
                  trial.number, f"/{self.n_trials}" if self.n_trials else "", method, sol.ratio,
                  f" (budget {target:g} of the dense stream)" if bytes_axis else f" (for {target:g})" if front else "",
                  coded, value, before, time.perf_counter() - start)
        return values(value)

    def _upload(self, trial: optuna.Trial, model: nn.Module) -> None:
        """Upload the retrained weights as an artifact of the trial; the ``weights`` attr, set only
        once the upload is complete, names it."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"trial_{trial.number}.safetensors"
            save_state_dict(model.state_dict(), path, {"format": "ranksearch.factorized", "trial": str(trial.number)})
            artifact = upload_artifact(artifact_store=self.artifacts, file_path=str(path), study_or_trial=trial)
        write_trial(trial, TrialRecord(weights=artifact))


def _best_so_far(trial: optuna.Trial, value: float, ratio: float | None, target: float | None,
                 landing: tuple[bool, float] | None = None) -> bool:
    """Whether a trial uploads its weights: it scored at least as high as every complete trial (a tie uploads too: with
    several workers a later-numbered twin of this value may have finished first, and the best trial, the earliest of
    the best value, must have its weights). In a Pareto study (``ratio``: its cost on the study's axis, ``target``),
    as every complete trial of no larger cost, or every one made for the same point: each point of the final front, and the best made for each ratio,
    has its weights. At a byte working point (``landing``: whether its stream lands, and the bytes that do), also a
    landing trial that scored as high as every landing one."""
    done = [(m, t) for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if (m := metric_of(t)) is not None]
    if ratio is None:
        if landing is not None and landing[0]:
            landed = [m for m, t in done if (b := TrialRecord.of(t).bytes) is not None and b >= landing[1]]
            if all(value >= m for m in landed):
                return True
        return all(value >= m for m, _ in done)
    size = ratio * (1 + 1e-9)
    return (all(value >= m for m, t in done if float(t.values[1]) <= size)
            or all(value >= m for m, t in done if TrialRecord.of(t).target == target))


def _report(trial: optuna.Trial, step: int, value: float | None, last: bool = False) -> None:
    """Report an intermediate value; the pruner may stop the trial, except after its ``last`` step."""
    if value is None:
        return
    trial.report(float(value), step)
    if not last and trial.should_prune():
        raise optuna.TrialPruned(f"pruned at step {step} with {value:.4f}")
