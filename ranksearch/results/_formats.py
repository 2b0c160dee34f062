"""Model file formats: a factorized (or dense) model written as a file that other runtimes load.

``FORMATS`` maps a format's name to a :class:`Format`; :func:`write_model` writes one atomically (a
temporary file beside the target, renamed into place only once it is complete and checked, so an error
leaves no half-written file) and returns a one-line report. A format's optional packages are checked
by :func:`check_packages` before any work, with the ``pip install`` line that brings them.

``nnr``: an MPEG NNR bitstream encoded by NNCodec (:mod:`ranksearch.results._nnr`), each low-rank pair as the
standard's decomposed G/H tensors with the rank signalled; option ``qp`` (quantization parameter), or ``size`` (bytes:
each weight at its own qp, :func:`~ranksearch.core._bytes.fit_bytes`).

``onnx``: ``torch.onnx.export`` (the ``torch.export``-based exporter, which needs onnxscript) traces the
model on a sample batch, with a dynamic batch dimension. Each low-rank pair stays two nodes (two
``Conv``, two ``Gemm``, or a 1x1 ``Conv`` and a ``ConvTranspose``), never a recomposed dense weight, so
the file holds the factorized model's parameters and runs at its cost. The written file is run in
onnxruntime on the sample and refused when its output differs from PyTorch's by more than
:data:`ONNX_TOLERANCE` (relative to the output's largest magnitude, at least 1).

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 4))
    >>> write_model(net, "net.onnx", "onnx", torch.randn(2, 8))  # doctest: +SKIP
    'net.onnx: ONNX opset 18, 1 nodes (1 Gemm), batch dynamic, 36 parameters; onnxruntime = PyTorch to 6e-08 on 2 samples'
"""

from __future__ import annotations

import collections
import importlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ranksearch._io import atomic_path
from ranksearch.core._surgery import count_params
from ranksearch.core._task import Task
from ranksearch.errors import RankSearchError

__all__ = ["FORMATS", "LAYER_OPS", "ONNX_TOLERANCE", "Format", "check_packages", "get_format", "onnx_op_counts",
           "sample_input", "shaped_input", "write_model"]

_log = logging.getLogger(__name__)

ONNX_TOLERANCE = 1e-4
"""Largest accepted |onnxruntime - PyTorch| on the sample, relative to max(1, max |PyTorch output|)."""

LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
"""ONNX operators a Linear / Conv / ConvTranspose layer (or either half of a low-rank pair) becomes."""


@dataclass(frozen=True)
class Format:
    """A file format a model can be written in.

    Attributes:
        name: The ``--format`` value.
        suffix: The usual file name suffix.
        packages: (module, distribution) pairs the writer imports; all are checked before any work.
        extra: The ``pip install`` line that brings them.
        needs_sample: Whether the writer traces the model on a sample input batch.
        write: Writes ``(model, sample, path, **options)`` (model in eval mode) to ``path`` and returns a
            one-line description of what was written (without the path).
    """

    name: str
    suffix: str
    packages: tuple[tuple[str, str], ...]
    extra: str
    needs_sample: bool
    write: Callable[..., str]


def get_format(name: str) -> Format:
    """The registered format called ``name``."""
    if name not in FORMATS:
        raise RankSearchError(f"Unknown format {name!r}; use one of {sorted(FORMATS)}.")
    return FORMATS[name]


def check_packages(fmt: Format) -> None:
    """Fail in one line, naming the extra to install, when a package the format needs is missing."""
    missing = []
    for module, dist in fmt.packages:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(dist)
    if missing:
        raise RankSearchError(f"Writing --format {fmt.name} needs {', '.join(missing)}, which "
                              f"{'is' if len(missing) == 1 else 'are'} not installed: {fmt.extra}.")


def sample_input(task: Task, n: int = 2) -> torch.Tensor:
    """A batch of the first ``n`` inputs of the task's test split: real data to trace an export on.

    Two samples by default, so that the exporter keeps the batch dimension dynamic (a batch of one is
    specialized); a test split of one sample is repeated.
    """
    items = [task.test[i][0] for i in range(min(n, len(task.test)))]  # type: ignore[arg-type]
    if not all(isinstance(x, torch.Tensor) for x in items):
        raise RankSearchError(f"The task's test inputs are {type(items[0]).__name__}, not tensors; cannot trace an export on them.")
    if len({tuple(x.shape) for x in items}) > 1:
        items = items[:1]  # inputs of different sizes (e.g. clips of different lengths): one of them
    batch = torch.stack(items)
    return batch if len(batch) >= n else batch.repeat(n, *([1] * (batch.dim() - 1)))[:n]


def shaped_input(input_shape: Sequence[int], n: int = 2, seed: int = 0) -> torch.Tensor:
    """A batch of ``n`` standard-normal inputs of one sample's ``input_shape`` (no batch dimension), from
    a fixed seed: what an export traces on when the model comes without data (a space with no task but
    an ``input_shape``, or a config's recorded cost model). Tracing needs the shape only; the parity
    check then compares the two runtimes on these inputs."""
    shape = [int(d) for d in input_shape]
    if not shape or any(d < 1 for d in shape):
        raise RankSearchError(f"input_shape {list(input_shape)} must list positive ints (one sample, no batch dimension).")
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))


def write_model(model: nn.Module, path: str | os.PathLike[str], fmt: str, sample: torch.Tensor | None = None, **options: Any) -> str:
    """Write ``model`` (in eval mode; its mode is restored) to ``path`` in format ``fmt``, atomically.

    Args:
        model: The model, e.g. a factorized one (:func:`ranksearch.apply`, :func:`ranksearch.load_factorized`).
        path: The file to write; replaced only once the new file is complete and checked.
        fmt: A name in :data:`FORMATS`.
        sample: An input batch to trace on (:func:`sample_input`), for formats that need one.
        options: The format's own (``nnr``: ``qp``, or ``size``: at most this many bytes, each weight at its own qp).

    Returns:
        One line: the path and what was written.

    Raises:
        RankSearchError: unknown format, a missing package, no sample, or a model the format cannot
            represent faithfully; ``path`` is then left as it was.
    """
    f = get_format(fmt)
    check_packages(f)
    if f.needs_sample and not isinstance(sample, torch.Tensor):
        raise RankSearchError(f"--format {f.name} traces the model on a sample input batch; pass one (see sample_input).")
    training = model.training
    model.eval()
    try:
        with atomic_path(path) as tmp:
            report = f.write(model, sample, tmp, **options)
    finally:
        model.train(training)
    return f"{path}: {report}"


def onnx_op_counts(path: str | os.PathLike[str]) -> dict[str, int]:
    """Number of nodes of each operator type in the main graph of an ONNX file."""
    import onnx

    return dict(collections.Counter(node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node))


def _outputs(value: object) -> list[torch.Tensor]:
    """A model's output as a flat list of tensors (a tensor, or a tuple/list of them)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)) and all(isinstance(v, torch.Tensor) for v in value):
        return list(value)
    raise RankSearchError(f"The model returns {type(value).__name__}; an export needs a tensor or a tuple of tensors.")


def _first_line(e: BaseException) -> str:
    return next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)[:200]


def _export_onnx(model: nn.Module, sample: torch.Tensor, dynamic: bool) -> object:
    """The ONNXProgram of ``model`` traced on ``sample`` (batch dimension dynamic or fixed)."""
    import warnings

    import torch.export
    import torch.onnx

    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    with warnings.catch_warnings():  # the exporter's deprecation and tracing notes are not the user's concern
        warnings.simplefilter("ignore")
        return torch.onnx.export(model, (sample,), dynamo=True, input_names=["input"], output_names=["output"], dynamic_shapes=shapes,
                                 verbose=False, optimize=True)


def _max_difference(path: Path, model: nn.Module, sample: torch.Tensor) -> float:
    """Largest |onnxruntime - PyTorch| over the outputs on ``sample``, relative to max(1, max |PyTorch|)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = _outputs(model(sample))
    got = session.run(None, {session.get_inputs()[0].name: sample.detach().cpu().numpy()})
    if len(got) != len(expected):
        raise RankSearchError(f"The ONNX model has {len(got)} outputs, the PyTorch model {len(expected)}.")
    worst = 0.0
    for ref, out in zip(expected, got):
        ref = ref.detach().cpu().to(torch.float64)
        if tuple(out.shape) != tuple(ref.shape):
            raise RankSearchError(f"The ONNX model's output has shape {list(out.shape)}, PyTorch's {list(ref.shape)}.")
        scale = max(1.0, float(ref.abs().max())) if ref.numel() else 1.0
        worst = max(worst, float((torch.from_numpy(out).to(torch.float64) - ref).abs().max()) / scale if ref.numel() else 0.0)
    return worst


def _write_onnx(model: nn.Module, sample: torch.Tensor | None, path: Path) -> str:  # no options
    import onnx

    assert sample is not None  # write_model checks it
    dynamic = True
    try:
        program = _export_onnx(model, sample, dynamic=True)
    except Exception as e:  # a dynamic batch the model does not allow (e.g. a fixed reshape): try it fixed
        _log.warning("ONNX export with a dynamic batch failed (%s); exporting with the batch fixed at %d", _first_line(e), len(sample))
        dynamic = False
        try:
            program = _export_onnx(model, sample, dynamic=False)
        except Exception as e2:
            raise RankSearchError(f"torch.onnx cannot export {type(model).__name__}: {type(e2).__name__}: {_first_line(e2)} "
                                  "(--debug shows the traceback).") from e2
    try:
        program.save(str(path), external_data=False)  # type: ignore[attr-defined]
    except Exception as e:  # e.g. over protobuf's 2 GB limit
        raise RankSearchError(f"Cannot write the ONNX model of {type(model).__name__}: {type(e).__name__}: {_first_line(e)}.") from e
    checks = [sample, sample[:1]] if dynamic else [sample]  # batch 1 too: the dynamic batch really is
    diff = max(_max_difference(path, model, x) for x in checks)
    if not diff <= ONNX_TOLERANCE:
        raise RankSearchError(f"The ONNX model's output differs from PyTorch's by {diff:.3g} (relative; tolerance {ONNX_TOLERANCE:g}) "
                              f"on the sample; {type(model).__name__} has an operator torch.onnx does not translate faithfully.")
    proto = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    counts = collections.Counter(node.op_type for node in proto.graph.node)
    layers = ", ".join(f"{counts[op]} {op}" for op in LAYER_OPS if counts[op])
    return (f"ONNX opset {opset}, {len(proto.graph.node)} nodes ({layers or 'no Conv/Gemm/MatMul'}), "
            f"batch {'dynamic' if dynamic else f'fixed at {len(sample)}'}, {count_params(model):,} parameters; "
            f"onnxruntime = PyTorch to {diff:.2g} on {len(sample)} samples")


def _write_nnr(model: nn.Module, sample: torch.Tensor | None, path: Path, qp: int | None = None, size: int | None = None,
               task: Task | None = None) -> str:
    from ranksearch.core._layers import LowRank
    from ranksearch.core._nnr import DEFAULT_QP, check_qp, encode

    pairs = sum(isinstance(m, LowRank) for m in model.modules())
    what = f"{pairs} decomposed layers as G/H with their rank signalled, {count_params(model):,} parameters"
    if size is not None:
        from ranksearch.core._bytes import fit_bytes

        if qp is not None:
            raise RankSearchError("--bytes chooses each weight's qp; leave --qp out.")
        coded = fit_bytes(model, size, task=task)  # with the space's data: batch norms folded, Fisher-weighted
        path.write_bytes(coded.stream)
        qps = sorted(coded.qps.values())
        return (f"NNR bitstream (NNCodec), {coded.bytes:,} bytes of the {size:,} allowed ({coded.bytes / size:.3f}; the byte table "
                f"predicted {coded.predicted:,}); {len(qps)} weights each at its own qp, {qps[0]} to {qps[-1]}, "
                f"{len(coded.folds)} batch norms folded; {what}")
    qp = DEFAULT_QP if qp is None else qp
    step = check_qp(qp, warn=False)
    data = encode(model, qp=qp)
    path.write_bytes(data)  # path is write_model's temporary file, renamed into place once this returns
    return f"NNR bitstream (NNCodec), {len(data):,} bytes at qp {qp} (step {step:.2g}); {what}"


FORMATS: dict[str, Format] = {
    "onnx": Format(name="onnx", suffix=".onnx",
                   packages=(("onnx", "onnx"), ("onnxscript", "onnxscript"), ("onnxruntime", "onnxruntime")),
                   extra="pip install 'ranksearch[onnx]'", needs_sample=True, write=_write_onnx),
    "nnr": Format(name="nnr", suffix=".nnr", packages=(("nncodec.nnc_core", "nncodec"),),
                  extra="pip install --no-deps 'nncodec==2.1.3'", needs_sample=False, write=_write_nnr),
}
"""Format name -> :class:`Format` (``--format`` of ``ranksearch export --config``)."""
