"""What a layer takes to run: per-layer timing tables and end-to-end latency, on a named runtime.

A latency working point needs, per eligible layer, the seconds of the dense layer and of its pair at each
rank. :func:`measure_layers` measures them once: each layer's own input is captured by one forward pass
of an example batch; then, per layer, the dense layer and its pair at a few ranks (geometric, on the rank
grid, up to the parameter break-even) run warm, interleaved round by round, and the table keeps the
median of each. Between measured ranks a pair's time is interpolated linearly and made non-decreasing.

Runtimes (:class:`Runtime`): ``torch`` (eager, on the device the model is on), ``torch-compile`` (each
module through ``torch.compile``) and ``onnxruntime`` (CPU; each layer as a one- or two-node ONNX graph:
Conv or Gemm/MatMul, as the exporter writes them). :func:`measure_models` times whole models side by
side the same way (onnxruntime: exported with ``torch.onnx``).

The solver never sees this module: :meth:`TimingTable.limits` (the largest rank whose pair runs faster
than the dense layer) and :meth:`TimingTable.latency` (seconds per rank, and the budget of a latency
fraction) hand it plain numbers.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any

import numpy as np
import torch
from torch import nn

from ranksearch._extras import require
from ranksearch.core._inputs import Forward, batch_len, call
from ranksearch.core._layers import build_low_rank, matrix_shape
from ranksearch.core._progress import bar
from ranksearch.core._solver import Curve, Latency
from ranksearch.errors import RankSearchError

__all__ = ["FASTER", "Runtime", "TimingTable", "calibrate", "measure_layers", "measure_models", "measure_table", "timing_ranks"]

#: a pair counts as faster than its dense layer when its median takes at most this share of the dense median
#: (the 5% left absorb the run-to-run spread of a warm median, about 1-3% here, and what a layer alone does not show)
FASTER = 0.95
_SAMPLE_S = 2e-4  #: each timed sample runs a module this long at least (repeated calls when it is faster)

Runner = Callable[[], object]


class Runtime(StrEnum):
    """Where latency is measured."""

    TORCH = "torch"  #: PyTorch eager, on the model's device
    TORCH_COMPILE = "torch-compile"  #: each module through torch.compile (inductor), on the model's device
    ONNXRUNTIME = "onnxruntime"  #: onnxruntime's CPU provider, as many intra-op threads as torch uses


@dataclass(frozen=True)
class TimingTable:
    """Median seconds per eligible layer: dense, and its pair at each measured rank; and the dense model's.

    Attributes:
        runtime, batch, device, threads: Where and how it was measured.
        model: Seconds of the whole dense model on one batch.
        dense: Layer -> seconds of the dense layer.
        ranks: Layer -> the measured ranks, ascending.
        pair: Layer -> seconds of the pair at each of ``ranks``.
        took_s: Seconds the measurement took.
        scale: What pairs save in the whole model, measured end to end, per second they save timed alone
            (:meth:`calibrated`; 1: not calibrated). Layers timed alone miss what the graph around them does
            (fusions, caches, per-call overhead); on a model of microseconds they save far less in place.
    """

    runtime: Runtime
    batch: int
    device: str
    threads: int
    model: float
    dense: dict[str, float]
    ranks: dict[str, list[int]]
    pair: dict[str, list[float]]
    took_s: float = 0.0
    scale: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TimingTable:
        try:
            table = cls(**{**d, "runtime": Runtime(str(d.get("runtime")))})
        except (TypeError, ValueError) as e:
            raise RankSearchError(f"A stored timing table does not read ({e}); measure it again.") from None
        if set(table.dense) != set(table.ranks) or set(table.ranks) != set(table.pair):
            raise RankSearchError("A stored timing table names different layers in its dense, ranks and pair entries.")
        return table

    def alone(self, name: str, full: int) -> np.ndarray:
        """Seconds of ``name``'s pair timed alone at each rank 0 .. ``full`` (linear between measured ranks, flat
        beyond, non-decreasing; 0 at rank 0)."""
        ranks, times = self.ranks[name], self.pair[name]
        if not ranks:
            return np.full(full + 1, float(self.dense[name]))
        r = np.arange(full + 1, dtype=np.float64)
        out = np.maximum.accumulate(np.interp(r, np.asarray(ranks, dtype=np.float64), np.asarray(times, dtype=np.float64)))
        out[0] = 0.0
        return out

    def seconds(self, name: str, full: int) -> np.ndarray:
        """Seconds ``name``'s pair is predicted to take in the model at each rank 0 .. ``full``: its dense
        seconds less ``scale`` times what it saves alone (0 at rank 0)."""
        dense = float(self.dense[name])
        out = dense - self.scale * (dense - self.alone(name, full))
        out[0] = 0.0
        return out

    def calibrated(self, ranks: Mapping[str, int | None], ratio: float) -> TimingTable:
        """The table whose predictions match a measurement: the model with ``ranks`` ran ``ratio`` of the dense
        model's time, side by side. ``scale`` becomes the measured saving over the saving timed alone
        (clipped to [0, 1.5]; unchanged when the pairs save under 1% of the model alone)."""
        alone = sum(self.dense[n] - float(self.alone(n, r)[r]) for n, r in ranks.items() if r is not None and n in self.dense)
        if alone < 0.01 * self.model:
            return self
        return replace(self, scale=float(np.clip((1.0 - ratio) * self.model / alone, 0.0, 1.5)))

    def limits(self, curves: Mapping[str, Curve], faster: float = FASTER) -> dict[str, int]:
        """Per layer, the largest rank whose pair takes at most ``faster`` of the dense layer's time (0: none)."""
        out = {}
        for name, c in curves.items():
            t = self.alone(name, min(c.shape))
            ok = np.flatnonzero(t[1:] <= faster * self.dense[name])
            out[name] = int(ok[-1]) + 1 if len(ok) else 0
        return out

    def fastest(self, curves: Mapping[str, Curve], multiple: int = 1, min_rank: int = 1) -> dict[str, int | None]:
        """Each layer at its smallest allowed rank within :meth:`limits` (None: no faster pair): the allocation
        that saves most timed alone, the largest signal to :meth:`calibrated` on against the timing noise."""
        limits = self.limits(curves)
        out: dict[str, int | None] = {}
        for n, c in curves.items():
            allowed = replace(c, limit=limits[n]).ranks(multiple, min_rank)
            out[n] = int(allowed[0]) if len(allowed) else None
        return out

    def latency(self, curves: Mapping[str, Curve], fraction: float) -> Latency:
        """The solver's latency budget for a model at ``fraction`` of the dense model's seconds: the model is
        predicted to take its dense seconds less what each pair saves on its dense layer, so the eligible
        layers may take their dense seconds less ``(1 - fraction)`` of the model's."""
        if unknown := sorted(set(curves) - set(self.dense)):
            raise RankSearchError(f"The timing table has no times for layers {unknown[:3]}; it was measured on another model.")
        dense = {n: self.dense[n] for n in curves}
        return Latency({n: self.seconds(n, min(c.shape)) for n, c in curves.items()}, dense,
                       sum(dense.values()) - (1.0 - fraction) * self.model)

    def predicted(self, ranks: Mapping[str, int | None]) -> float:
        """Seconds the model is predicted to take with ``ranks`` (dense where None or absent)."""
        saved = 0.0
        for name, r in ranks.items():
            if r is not None and name in self.dense:
                saved += self.dense[name] - float(self.seconds(name, r)[r])
        return self.model - saved


def timing_ranks(curve: Curve, multiple: int = 1, min_rank: int = 1, points: int = 8) -> list[int]:
    """The ranks a layer is timed at: up to ``points`` allowed ranks, geometric from the smallest to the
    break-even (the largest whose pair has fewer weights than the dense layer)."""
    allowed = curve.ranks(multiple, min_rank)
    if len(allowed) <= points:
        return [int(r) for r in allowed]
    picks = np.unique(np.round(np.geomspace(1, len(allowed), points)).astype(int) - 1)
    return [int(allowed[i]) for i in picks]


def _median_seconds(runners: Sequence[Runner], repeats: int, sync: Callable[[], None]) -> list[float]:
    """Median seconds of one call of each runner: warm, calls repeated to last ``_SAMPLE_S``, the
    runners interleaved round by round so a change in the machine's load hits them alike."""
    numbers = []
    for run in runners:  # warm up, and how many calls make one sample
        run()
        sync()
        start = time.perf_counter()
        run()
        sync()
        numbers.append(max(1, math.ceil(_SAMPLE_S / max(time.perf_counter() - start, 1e-9))))
    samples: list[list[float]] = [[] for _ in runners]
    for _ in range(repeats):
        for i, (run, number) in enumerate(zip(runners, numbers)):
            start = time.perf_counter()
            for _ in range(number):
                run()
            sync()
            samples[i].append((time.perf_counter() - start) / number)
    return [statistics.median(s) for s in samples]


def _sync(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def _torch_runner(module: nn.Module, x: Any, compiled: bool, forward: Forward | None = None) -> Runner:
    module = module.eval()
    fn: Any = torch.compile(module) if compiled else module

    def run() -> object:
        with torch.inference_mode():
            return call(fn, x, forward)

    return run


def _session(model_bytes: bytes) -> Any:
    onnxruntime = require("onnxruntime", "onnx", "runtime onnxruntime")

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    # no spinning after a run: sessions timed in turn would otherwise take each other's cores
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def _ort_runner(model_bytes: bytes, x: torch.Tensor) -> Runner:
    session = _session(model_bytes)
    feed = {session.get_inputs()[0].name: x.detach().cpu().numpy()}
    return lambda: session.run(None, feed)


def _layer_graph(dense: nn.Module, x: torch.Tensor, rank: int | None) -> bytes:
    """One layer (``rank`` None) or its pair as an ONNX graph of the nodes the exporter writes for it."""
    require("onnx", "onnx", "runtime onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    m, n = matrix_shape(dense)
    layer: Any = dense
    weight = layer.weight.detach().cpu().float()
    bias = None if layer.bias is None else layer.bias.detach().cpu().float().numpy()
    nodes, inits = [], []

    def init(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value, dtype=np.float32), name))
        return name

    if isinstance(dense, nn.Linear):
        ws = [weight.numpy()] if rank is None else [np.random.randn(rank, n), np.random.randn(m, rank)]
        last = "x"
        for i, w in enumerate(ws):
            out = "y" if i == len(ws) - 1 else f"t{i}"
            b = bias if i == len(ws) - 1 else None
            if x.dim() == 2:
                nodes.append(helper.make_node("Gemm", [last, init(f"w{i}", w), *([init(f"b{i}", b)] if b is not None else [])], [out],
                                              transB=1))
            else:
                mm = f"m{i}" if b is not None else out
                nodes.append(helper.make_node("MatMul", [last, init(f"w{i}", np.asarray(w).T)], [mm]))
                if b is not None:
                    nodes.append(helper.make_node("Add", [mm, init(f"b{i}", b)], [out]))
            last = out
    else:
        conv: Any = dense
        k = list(conv.kernel_size)
        attrs = {"strides": list(conv.stride), "dilations": list(conv.dilation), "pads": list(conv.padding) * 2}
        convs: list[tuple[np.ndarray, dict[str, Any]]] = [(weight.numpy(), attrs)] if rank is None else [
            (np.random.randn(rank, n // int(np.prod(k)), *k), attrs), (np.random.randn(m, rank, *([1] * len(k))), {})]
        last = "x"
        for i, (w, a) in enumerate(convs):
            out = "y" if i == len(convs) - 1 else f"t{i}"
            b = bias if i == len(convs) - 1 else None
            nodes.append(helper.make_node("Conv", [last, init(f"w{i}", w), *([init(f"b{i}", b)] if b is not None else [])], [out], **a))
            last = out
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return bytes(proto.SerializeToString())


def _onnx_graph_fits(module: nn.Module) -> bool:
    """Whether :func:`_layer_graph` writes this layer (Linear, and zero-padded Conv1d/Conv2d)."""
    if isinstance(module, nn.Linear):
        return True
    return (isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.padding_mode == "zeros" and not isinstance(module.padding, str)
            and module.groups == 1)


def _pair(dense: nn.Module, rank: int) -> nn.Module:
    """A pair of ``dense`` at ``rank`` with random factors (a time does not depend on the values)."""
    m, n = matrix_shape(dense)
    p: torch.Tensor = dense.weight  # type: ignore[assignment]
    g = torch.randn(m, rank, device=p.device, dtype=p.dtype)
    h = torch.randn(rank, n, device=p.device, dtype=p.dtype)
    return build_low_rank(dense, g, h)


def _inputs(model: nn.Module, modules: Mapping[str, nn.Module], example: Any, forward: Forward | None) -> dict[str, torch.Tensor]:
    """Each module's input on ``example`` (one forward pass)."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: seen.setdefault(name, args[0].detach()))
             for name, m in modules.items()]
    try:
        with torch.inference_mode():
            call(model.eval(), example, forward)
    finally:
        for h in hooks:
            h.remove()
    if missing := sorted(set(modules) - set(seen)):
        raise RankSearchError(f"Layers {missing[:3]} did not run on the example batch; a timing table needs every eligible layer to run.")
    return seen


def measure_layers(model: nn.Module, modules: Mapping[str, nn.Module], ranks: Mapping[str, Sequence[int]], example: Any,
                   runtime: Runtime | str = Runtime.TORCH, *, repeats: int = 15, forward: Forward | None = None,
                   progress: bool = False) -> TimingTable:
    """The timing table of ``modules`` (eligible layers of ``model``) at ``ranks``, each on its input from
    ``example`` (a batch), and of the whole dense model, on ``runtime``."""
    runtime = Runtime(runtime)
    device = next(model.parameters()).device
    if runtime is Runtime.ONNXRUNTIME and device.type != "cpu":
        raise RankSearchError(f"runtime onnxruntime times on the CPU; the model is on {device}: move it to the CPU or use runtime torch.")
    start = time.perf_counter()
    inputs = _inputs(model, modules, example, forward)
    sync = _sync(device)
    dense, pair = {}, {}
    shown = bar(len(modules), "timing layers", progress, unit="layer")
    with shown:
        for name, module in modules.items():
            x, rs = inputs[name], list(ranks[name])
            if runtime is Runtime.ONNXRUNTIME and _onnx_graph_fits(module) and isinstance(x, torch.Tensor):
                runners = [_ort_runner(_layer_graph(module, x, r), x) for r in [None, *rs]]
            else:
                variants = [copy.deepcopy(module)] + [_pair(module, r) for r in rs]
                runners = [_ort_runner(_export(v, x), x) if runtime is Runtime.ONNXRUNTIME
                           else _torch_runner(v, x, runtime is Runtime.TORCH_COMPILE) for v in variants]
            times = _median_seconds(runners, repeats, sync)
            dense[name], pair[name] = times[0], times[1:]
            shown.update(1)
    (model_s,) = measure_models([model], example, runtime, repeats=repeats, forward=forward)
    return TimingTable(runtime, batch_len(example), str(device), torch.get_num_threads(), model_s, dense,
                       {n: [int(r) for r in ranks[n]] for n in modules}, pair, time.perf_counter() - start)


def measure_table(model: nn.Module, curves: Mapping[str, Curve], example: Any, runtime: Runtime | str = Runtime.TORCH, *,
                  multiple: int = 1, min_rank: int = 1, progress: bool = False) -> TimingTable:
    """The timing table of ``model``'s layers named in ``curves``, each at the ranks :func:`timing_ranks`
    samples on the grid (``multiple``, ``min_rank``), on ``example`` (a batch on the model's device)."""
    from ranksearch.core._surgery import find_layers

    layers = find_layers(model).eligible
    ranks = {n: timing_ranks(c, multiple, min_rank) for n, c in curves.items()}
    return measure_layers(model, {n: layers[n] for n in curves}, ranks, example, runtime, progress=progress)


def calibrate(table: TimingTable, model: nn.Module, ranks: Mapping[str, int | None], example: Any,
              runtime: Runtime | str = Runtime.TORCH, factors: Mapping[str, Any] | None = None) -> TimingTable:
    """``table`` calibrated on ``model`` factorized at ``ranks`` (with ``factors``, else a fresh SVD), timed
    against ``model`` side by side on ``example`` (:meth:`TimingTable.calibrated`); unchanged without a pair."""
    from ranksearch.core._surgery import factorize

    kept = {n: r for n, r in ranks.items() if r is not None}
    if not kept:
        return table
    device = next(model.parameters()).device
    small = factorize(model, kept, factors).to(device).eval()
    dense_s, small_s = measure_models([model.eval(), small], example, runtime)
    return table.calibrated(ranks, small_s / dense_s)


def _export(model: nn.Module, x: torch.Tensor) -> bytes:
    """``model`` as ONNX bytes, traced on ``x`` by the torch.export-based exporter."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(model.eval(), (x,), dynamo=True, verbose=False, optimize=True)
        except Exception as e:
            raise RankSearchError(f"torch.onnx cannot export {type(model).__name__} for timing in onnxruntime: "
                                  f"{type(e).__name__}: {str(e).splitlines()[0][:160]}; use runtime torch.") from e
    return bytes(program.model_proto.SerializeToString())  # type: ignore[union-attr]


def measure_models(models: Sequence[nn.Module], example: Any, runtime: Runtime | str = Runtime.TORCH, *, repeats: int = 15,
                   forward: Forward | None = None) -> list[float]:
    """Median seconds of each whole model on ``example``, side by side (interleaved, round by round)."""
    runtime = Runtime(runtime)
    if runtime is Runtime.ONNXRUNTIME:
        if not isinstance(example, torch.Tensor):
            raise RankSearchError("runtime onnxruntime times models that take one tensor; use runtime torch for structured inputs.")
        runners = [_ort_runner(_export(m, example), example) for m in models]
    else:
        runners = [_torch_runner(m, example, runtime is Runtime.TORCH_COMPILE, forward) for m in models]
    return _median_seconds(runners, repeats, _sync(next(models[0].parameters()).device))
