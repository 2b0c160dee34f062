"""Check an NNR bitstream written by ``ranksearch export --format nnr``: decode it into the dense architecture
and compare its bytes and test metric (the coder itself is :mod:`ranksearch.core._nnr`)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ranksearch.core._fold import SCALING, dense_state, task_folds
from ranksearch.core._nnr import DEFAULT_QP, decode, encode
from ranksearch.core._task import Task
from ranksearch.errors import RankSearchError

__all__ = ["DEFAULT_QP", "decode", "encode", "verify"]  # the coder's names stay public here too


def verify(path: str | Path, model: nn.Module, architecture: nn.Module, dense: nn.Module, task: Task, qp: int | None = None,
           size: int | None = None) -> str:
    """Decode the bitstream at ``path`` into ``architecture`` (the dense model's shape) and compare, in one
    line: its bytes against the ``dense`` model's bitstream at the same qp (``size``: against the budget, and the dense
    model coded by NNCodec at the finest uniform qp within it, its batch norms folded, with that decoded model's test metric), and the test
    metric of ``model`` (before coding) and of the decoded model."""
    from ranksearch.core._bytes import uniform_qp
    from ranksearch.core._nnr import decoded_model
    from ranksearch.core._retrain import evaluate

    qp = DEFAULT_QP if qp is None else qp
    reference = architecture.state_dict()
    folded = [k[: -len(f".weight{SCALING}")] for k in decode(path, recompose=False) if k.endswith(f".weight{SCALING}")]
    tensors = dense_state(decode(path), architecture, folded)
    if set(tensors) != set(reference):
        raise RankSearchError(f"{str(path)!r} decodes to tensors {sorted(set(tensors) ^ set(reference))[:4]} that "
                              f"{type(architecture).__name__} has not or misses; give the bitstream of this model's config.")
    architecture.load_state_dict({k: torch.from_numpy(tensors[k]).to(v.dtype).reshape(v.shape) for k, v in reference.items()})
    size_on_disk = Path(path).stat().st_size
    before = evaluate(model, task.test, task.metric, forward=task.forward)
    after = evaluate(architecture, task.test, task.metric, forward=task.forward)
    samples = f"{len(task.test):,} samples"  # type: ignore[arg-type]
    coded = f"test {task.metric} {before:.4f} before coding, {after:.4f} after decoding ({after - before:+.4f}"
    if size is None:
        dense_bytes = len(encode(dense, qp=qp))
        return (f"verified: {size_on_disk:,} bytes, the dense model's bitstream at qp {qp} {dense_bytes:,} bytes "
                f"({size_on_disk / dense_bytes:.3f}x); {coded}, {samples})")
    folds = task_folds(dense, task)  # NNR's batch-norm folding, as the stream may use it
    uniform, data, decoded = uniform_qp(dense, size, folds)
    baseline = evaluate(decoded_model(dense, decoded, folds), task.test, task.metric, forward=task.forward)
    return (f"verified: {size_on_disk:,} bytes of the {size:,} allowed; {coded}); the dense model at the finest uniform qp within "
            f"them (qp {uniform}, {len(data):,} bytes) {baseline:.4f} ({after - baseline:+.4f}), {samples}")
