"""Batches of any structure: moving them to a device and calling a model on them.

A model takes its inputs in one of a few ways, and a batch says which by its type:

* a tensor: ``model(batch)``;
* a tuple or list: ``model(*batch)`` (a model with several positional inputs);
* a mapping (a dict, a Hugging Face ``BatchEncoding``): ``model(**batch)``;
* a mapping or a tuple that the model's ``forward`` signature does not take spread out (a sentence-transformers
  model takes its feature dict as one argument, ``model(features)``): ``model(batch)``;
* anything else, or a model that wants something else again: a ``forward(model, batch)`` callable given
  by the user.

Tensors are moved to the model's device recursively, through tuples, lists and mappings.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ranksearch.errors import RankSearchError

__all__ = ["Forward", "batch_len", "call", "first_samples", "map_tensors", "tensors", "to_device"]

#: ``forward(model, batch) -> output``: how a model is called on one batch.
Forward = Callable[[nn.Module, Any], Any]


def map_tensors(batch: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``batch`` with ``fn`` applied to every tensor in it (tuples, lists and mappings keep their type
    where it can be rebuilt from its items; any other mapping becomes a dict; other leaves stay)."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, Mapping):
        items = {k: map_tensors(v, fn) for k, v in batch.items()}
        try:
            return type(batch)(items)  # type: ignore[call-arg]
        except TypeError:
            return items
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*(map_tensors(v, fn) for v in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(map_tensors(v, fn) for v in batch)
    return batch


def to_device(batch: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    """``batch`` with every tensor in it on ``device`` (the structure kept as :func:`map_tensors` does)."""
    return map_tensors(batch, lambda t: t.to(device, non_blocking=non_blocking))


def _binds(model: nn.Module | Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
    """Whether ``model(*args, **kwargs)`` fits the signature of its forward (True when it is not known)."""
    try:
        signature = inspect.signature(model.forward if isinstance(model, nn.Module) else model)
    except (TypeError, ValueError):
        return True
    try:
        signature.bind(*args, **kwargs)
    except TypeError:
        return False
    return True


def call(model: nn.Module | Callable[..., Any], batch: Any, forward: Forward | None = None) -> Any:
    """``model`` on one batch: ``forward(model, batch)`` when given, else by the batch's structure; a mapping
    or tuple that the model's forward does not take spread out (by its signature) is given whole."""
    if forward is not None:
        return forward(model, batch)  # type: ignore[arg-type]
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, Mapping):
        kind, spelled = "mapping", "model(**batch)"
        spread = all(isinstance(k, str) for k in batch) and _binds(model, **batch)
    elif isinstance(batch, (tuple, list)):
        kind, spelled = "sequence", "model(*batch)"
        spread = _binds(model, *batch)
    else:
        raise RankSearchError(f"A batch of type {type(batch).__name__} is neither a tensor, a tuple/list nor a mapping; "
                              "pass forward=(model, batch) -> output to say how the model takes it.")
    if spread:
        return model(**batch) if kind == "mapping" else model(*batch)
    if not _binds(model, batch):
        raise RankSearchError(f"{type(model).__name__}.forward takes the {kind} batches neither as {spelled} nor whole "
                              "(model(batch)); pass forward=lambda model, batch: ... to say how.")
    return model(batch)


def batch_len(batch: Any) -> int:
    """The number of samples in ``batch``: the first dimension of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (tuple, list)) else ()
    for v in values:
        n = batch_len(v)
        if n:
            return n
    return 0


def tensors(output: Any) -> list[torch.Tensor]:
    """The floating-point tensors in a model's output (a tensor, or nested tuples, lists and mappings,
    e.g. a Hugging Face ``ModelOutput``), in order."""
    if isinstance(output, torch.Tensor):
        return [output] if output.is_floating_point() else []
    values = output.values() if isinstance(output, Mapping) else output if isinstance(output, (tuple, list)) else ()
    return [t for v in values for t in tensors(v)]


def _first(k: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda t: t[:k] if t.dim() else t


def first_samples(batches: Iterable[Any], n: int) -> list[Any]:
    """The batches holding the first ``n`` samples of ``batches`` (the last one cut), all when ``n`` is 0."""
    out, left = [], n
    for b in batches:
        if n and left <= 0:
            break
        size = batch_len(b)
        out.append(map_tensors(b, _first(left)) if n and size > left else b)
        left -= size
    return out
