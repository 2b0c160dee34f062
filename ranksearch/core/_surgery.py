"""Model-level surgery: find the eligible layers, count parameters, swap dense layers for pairs.

As in PEFT, names are collected first and each layer is then replaced with ``get_submodule`` and
``setattr``; the input model is never modified (a deep copy is factorized).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from torch import nn

from ranksearch.core._decompose import Factors
from ranksearch.core._decompose import factorize as decompose_matrix
from ranksearch.core._layers import DENSE_TYPES, build_low_rank, compute_device, ineligible_reason, weight_matrix
from ranksearch.errors import RankSearchError

__all__ = ["Layers", "count_params", "factorize", "find_layers", "layer_factors", "layer_groups"]


@dataclass(frozen=True)
class Layers:
    """The model's factorizable layers and the ones passed over, with the reason.

    Attributes:
        eligible: Module name -> dense module, in ``named_modules()`` order.
        skipped: Module name -> why it is not factorized (type ok but grouped, excluded, no saving).
    """

    eligible: dict[str, nn.Module]
    skipped: dict[str, str]


def _compile(patterns: Iterable[str]) -> list[re.Pattern[str]]:
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except re.error as e:
            raise RankSearchError(f"Exclude pattern {p!r} is not a valid regular expression: {e}.") from None
    return compiled


def find_layers(model: nn.Module, exclude: Iterable[str] | Mapping[str, str] = ()) -> Layers:
    """Eligible Linear/Conv/ConvTranspose layers of ``model`` and the skipped ones with reasons.

    Args:
        model: The dense model.
        exclude: Layer names or regular expressions (full match) never to factorize; a mapping gives
            each pattern the reason shown in reports.
    """
    reasons = dict(exclude) if isinstance(exclude, Mapping) else {p: "by request" for p in exclude}
    patterns = list(zip(_compile(reasons), reasons.values()))
    eligible: dict[str, nn.Module] = {}
    skipped: dict[str, str] = {}
    for name, module in model.named_modules():
        if not isinstance(module, DENSE_TYPES):
            continue
        why = next((f"excluded: {r}" for p, r in patterns if p.fullmatch(name)), None)
        why = why or ineligible_reason(module)
        if why is None:
            eligible[name] = module
        else:
            skipped[name] = why
    return Layers(eligible, skipped)


def layer_groups(layers: Mapping[str, nn.Module]) -> dict[str, str]:
    """Group of each layer: its path without block indices, and its type.

    ``layer3.1.conv2`` (Conv2d) -> ``layer3.conv2:Conv2d``, ``classifier.6`` (Linear) ->
    ``classifier:Linear``; in a flat ``nn.Sequential`` the convolutions form one group and the
    linear layers another. A search over groups has one weight per group instead of per layer.
    """
    out = {}
    for name, module in layers.items():
        path = ".".join(p for p in name.split(".") if not p.isdigit())
        out[name] = f"{path}:{type(module).__name__}" if path else type(module).__name__
    return out


def count_params(model: nn.Module) -> int:
    """Number of distinct parameters (shared tensors counted once); buffers are not parameters."""
    return sum(p.numel() for p in model.parameters())


def layer_factors(modules: Mapping[str, nn.Module], max_ranks: Mapping[str, int] | None = None) -> dict[str, Factors]:
    """Truncated decompositions of each module's weight matrix, to be sliced at any rank."""
    out = {}
    for name, module in modules.items():
        matrix = weight_matrix(module, compute_device())
        out[name] = decompose_matrix(matrix, None if max_ranks is None else max_ranks[name])
    return out


def factorize(
    model: nn.Module,
    ranks: Mapping[str, int],
    factors: Mapping[str, Factors] | None = None,
) -> nn.Module:
    """A copy of ``model`` in which every layer named in ``ranks`` is a low-rank pair of that rank.

    Args:
        model: The dense model (left unchanged).
        ranks: Module name (as in ``named_modules()``) -> rank.
        factors: Decompositions from :func:`layer_factors`, reused across calls so that a search
            does not repeat an SVD per trial; computed here when absent.

    Raises:
        ValueError: for a name that is not an eligible layer or a rank outside 1 .. min(m, n).
    """
    result = copy.deepcopy(model)
    for name, rank in ranks.items():
        try:
            dense = result.get_submodule(name)
        except AttributeError:
            raise RankSearchError(f"The model has no module named {name!r}; check the rank config's layer names.") from None
        reason = ineligible_reason(dense)
        if reason is not None:
            raise RankSearchError(f"Layer {name!r} cannot be factorized: {reason}.")
        matrix = weight_matrix(dense)
        if not (isinstance(rank, int) and 1 <= rank <= min(matrix.shape)):
            raise RankSearchError(f"Rank {rank!r} for layer {name!r} must be an int in 1..{min(matrix.shape)}.")
        f = factors[name] if factors is not None and name in factors else decompose_matrix(matrix, rank)
        g, h = f.pair(rank)
        pair = build_low_rank(dense, g.to(matrix.device, matrix.dtype), h.to(matrix.device, matrix.dtype))
        parent, _, attr = name.rpartition(".")
        setattr(result.get_submodule(parent) if parent else result, attr, pair)
    return result
