"""From a model to a rank config and back: ``solve`` (no training) and ``apply``.

``solve`` runs the solver on the model's curves (one global MSE bound, the CE1 rule, unless layer
weights are given); ``config_for`` records a solution as a :class:`RankConfig`; ``apply`` rebuilds the
factorized model from a dense model and a config, refusing configs made for another model.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import nn

from ranksearch.core._calibrate import input_moments, whitened
from ranksearch.core._config import LayerRank, RankConfig
from ranksearch.core._cost import ModelCost, model_cost
from ranksearch.core._decompose import FactorKind
from ranksearch.core._inputs import Forward
from ranksearch.core._layers import matrix_shape
from ranksearch.core._solver import Curve, Solution, ranks_for_bound, solve_ratio
from ranksearch.core._spectra import spectra
from ranksearch.core._surgery import count_params, factorize, find_layers
from ranksearch.core._timing import TimingTable
from ranksearch.core._weights import load_state_dict
from ranksearch.errors import ConfigError

__all__ = ["apply", "config_for", "dense_reasons", "factor_kind", "load_factorized", "solve"]


def config_for(
    model: nn.Module,
    curves: Mapping[str, Curve],
    solution: Solution,
    target_ratio: float,
    *,
    model_name: str | None = None,
    source: dict[str, Any] | None = None,
    metric: dict[str, Any] | None = None,
    search: dict[str, Any] | None = None,
    mse: Mapping[str, float] | None = None,
    cost: ModelCost | None = None,
    rank_multiple: int = 1,
    min_rank: int = 1,
    exclude: Iterable[str] | Mapping[str, str] = (),
) -> RankConfig:
    """The :class:`RankConfig` of a solver solution for ``model`` (``mse``: per-layer errors to record
    instead of the curves', e.g. a data-aware trial's output errors; ``cost``: the model's MACs per
    sample, recorded per layer and in total; ``rank_multiple``, ``min_rank`` and ``exclude``: the
    grid and the exclusions, to say why a layer stays dense)."""
    modules = dict(model.named_modules())
    ranks = {n: r for n, r in solution.ranks.items() if r is not None}
    layers = {}
    for name, rank in ranks.items():
        c = curves[name]
        macs = {} if cost is None or name not in cost.positions else {"macs_before": cost.dense(name), "macs_after": cost.factorized(name, rank)}
        layers[name] = LayerRank(
            type=type(modules[name]).__name__,
            weight_shape=list(modules[name].weight.shape),
            matrix=list(c.shape),
            rank=rank,
            mse=float(mse[name]) if mse is not None and name in mse else float(c.mse[rank]),
            params_before=c.dense_params,
            params_after=c.params(rank),
            **macs,
        )
    summary = {}
    if cost is not None:
        after = cost.total(ranks)
        summary = {"input_shape": list(cost.input_shape), "macs_before": cost.dense_total, "macs_after": after,
                   "macs_ratio": after / cost.dense_total if cost.dense_total else 1.0,
                   "params_ratio": solution.params / solution.original_params}
    return RankConfig(
        model=model_name or type(model).__name__,
        target_ratio=float(target_ratio),
        achieved_ratio=solution.params / solution.original_params,
        original_params=solution.original_params,
        compressed_params=solution.params,
        ranks=ranks,
        layers=layers,
        source=dict(source or {}),
        metric=dict(metric or {}),
        search=dict(search or {}),
        dense=dense_reasons(model, curves, solution, rank_multiple, min_rank, exclude),
        cost=summary,
    )


def dense_reasons(model: nn.Module, curves: Mapping[str, Curve], solution: Solution, rank_multiple: int = 1,
                  min_rank: int = 1, exclude: Iterable[str] | Mapping[str, str] = ()) -> dict[str, str]:
    """Why each Linear / Conv layer of ``model`` that ``solution`` does not factorize stays dense."""
    found = find_layers(model, exclude)
    out = dict(found.skipped)
    for name in found.eligible:
        if name not in curves:
            out[name] = "excluded"
    for name, rank in solution.ranks.items():
        if rank is not None:
            continue
        c = curves[name]
        if c.limit == 0:
            out[name] = "no pair runs faster than the dense layer (the latency working point's timing table)"
        elif len(c.ranks(rank_multiple, min_rank)) == 0:
            out[name] = (f"no rank on the grid (multiples of {rank_multiple}, at least {min_rank}) gives the {c.shape[0]}x"
                         f"{c.shape[1]} weight a pair with fewer parameters and multiply-adds (at most rank {c.max_rank} does)")
        else:
            top = int(c.ranks(rank_multiple, min_rank)[-1])
            out[name] = (f"kept dense by the allocation: its largest saving rank on the grid, {top} of {min(c.shape)}, leaves an MSE of "
                         f"{c.mse[top]:.3g} per weight; the allocation asked this layer for less error, which no rank that saves "
                         "parameters and multiply-adds gives")
    return out


def solve(
    model: nn.Module,
    target_ratio: float | None = None,
    *,
    mse_bound: float | Mapping[str, float] | None = None,
    exclude: Iterable[str] | Mapping[str, str] = (),
    rank_multiple: int = 1,
    min_rank: int = 1,
    weights: Mapping[str, float] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    model_name: str | None = None,
    source: dict[str, Any] | None = None,
    input_shape: Sequence[int] | None = None,
    timing: TimingTable | None = None,
    latency: float = 1.0,
) -> RankConfig:
    """Ranks for ``model`` without training: at a target ratio, or from an MSE bound.

    Args:
        model: The dense model.
        target_ratio: Fraction of the whole model's parameters to keep (e.g. 0.25).
        mse_bound: Instead of a ratio: one MSE bound, or a bound per layer name.
        exclude: Layer names or regular expressions to keep dense.
        rank_multiple: Round ranks to multiples of this.
        min_rank: Smallest rank allowed.
        weights: Per-layer multipliers of the bound (the search's proposals); default the CE1 rule.
        cache_dir: Spectra cache folder.
        model_name: Recorded in the config (default: the model's class name).
        source: Where the dense model came from, recorded in the config.
        input_shape: One input sample's shape (no batch dimension): the config then records the
            multiply-adds per layer and in total (:mod:`ranksearch.core._cost`).
        timing: A timing table of the model (:func:`~ranksearch.core.measure_table`): each layer then takes
            only ranks whose pair runs faster than its dense layer, and the model at most ``latency`` of the
            dense model's time (the table's prediction, recorded in the config's ``search.latency``).

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
        >>> solve(net, 0.5).achieved_ratio <= 0.5
        True
    """
    if (target_ratio is None) == (mse_bound is None):
        raise ConfigError("Give exactly one of target_ratio and mse_bound.")
    curves = spectra(model, cache_dir=cache_dir, exclude=exclude)
    if not curves:
        raise ConfigError(f"{type(model).__name__} has no eligible Linear/Conv layer to factorize; nothing to solve.")
    total = count_params(model)
    budget = None
    if timing is not None:
        limits = timing.limits(curves)
        curves = {n: dataclasses.replace(c, limit=limits[n]) for n, c in curves.items()}
        budget = timing.latency(curves, latency)
    if target_ratio is not None:
        solution = solve_ratio(curves, target_ratio, total, weights, rank_multiple, min_rank, latency=budget)
    else:
        solution = ranks_for_bound(curves, mse_bound, total, rank_multiple, min_rank)  # type: ignore[arg-type]
    settings: dict[str, Any] = {"method": "mse_rule" if weights is None else "weighted_mse", "bound": solution.bound,
                                "rank_multiple": rank_multiple, "min_rank": min_rank, "exclude": _exclude_list(exclude)}
    if timing is not None:
        settings["latency"] = {"runtime": timing.runtime, "batch": timing.batch, "device": timing.device, "target": latency,
                               "predicted_ratio": timing.predicted(solution.ranks) / timing.model}
    ratio = target_ratio if target_ratio is not None else solution.ratio
    cost = model_cost(model, input_shape) if input_shape is not None else None
    return config_for(model, curves, solution, ratio, model_name=model_name, source=source, search=settings, cost=cost,
                      rank_multiple=rank_multiple, min_rank=min_rank, exclude=exclude)


def _exclude_list(exclude: Iterable[str] | Mapping[str, str]) -> list[str]:
    return list(exclude.keys() if isinstance(exclude, Mapping) else exclude)


def _check_matches(model: nn.Module, config: RankConfig) -> None:
    total = count_params(model)
    if total != config.original_params:
        raise ConfigError(
            f"The config was made for a model with {config.original_params} parameters, this one has {total}; "
            f"use the config of this model ({config.model!r} in the config)."
        )
    modules = dict(model.named_modules())
    eligible = find_layers(model).eligible
    for name, layer in config.layers.items():
        if name not in modules:
            raise ConfigError(f"The config names layer {name!r}, which this model does not have; it was made for {config.model!r}.")
        if name not in eligible:
            raise ConfigError(f"Layer {name!r} of the config is not factorizable in this model.")
        shape = list(modules[name].weight.shape)
        if shape != layer.weight_shape:
            raise ConfigError(f"Layer {name!r} has weight shape {shape} but the config expects {layer.weight_shape}; it was made for {config.model!r}.")
        matrix = list(matrix_shape(modules[name]))
        if layer.matrix != matrix:
            raise ConfigError(f"Layer {name!r} is a {matrix[0]}x{matrix[1]} matrix but the config says {layer.matrix}; the config is "
                              "damaged or made for another model.")
        if layer.rank > min(matrix):
            raise ConfigError(f"Rank {layer.rank} of layer {name!r} exceeds its {matrix[0]}x{matrix[1]} weight's largest rank "
                              f"{min(matrix)}; the config is damaged.")


def factor_kind(config: RankConfig, factors: FactorKind | str | None = None) -> FactorKind:
    """The factors a config's trial started from (``config.search["factors"]``, plain when absent), or ``factors``."""
    raw = factors if factors is not None else config.search.get("factors") or FactorKind.PLAIN
    if not isinstance(raw, str) or raw not in {k.value for k in FactorKind}:
        raise ConfigError(f"factors {raw!r} is not one of {[k.value for k in FactorKind]} (the config's search.factors, or "
                          "--factors); re-export the config, or pass --factors plain.")
    return FactorKind(raw)


def apply(model: nn.Module, config: RankConfig, *, calibration: Iterable[Any] | None = None, forward: Forward | None = None,
          factors: FactorKind | str | None = None, allow_growth: bool = False) -> nn.Module:
    """A factorized copy of the dense ``model`` with the config's ranks, initialized as the config's trial
    was: the truncated SVD of each weight, or for a data-aware config (``config.search["factors"]``) the
    activation-whitened one from the input moments over ``calibration``, which then must be the batches
    the search calibrated on (a space's: 512 samples of its training split, see
    :func:`ranksearch.core._calibrate.calibration_batches`).

    Args:
        calibration: Input batches (tensors, tuples or dicts, see :mod:`ranksearch.core._inputs`) for the
            data-aware factors.
        forward: ``forward(model, batch)`` for batches of another structure.
        factors: A :class:`~ranksearch.core.FactorKind` (``"plain"`` or ``"data_aware"``) instead of the config's.
        allow_growth: Accept a rank at which a layer's pair has at least as many weights as the layer.

    Raises:
        ConfigError: when the config's layers, shapes or parameter count do not match the model, a rank
            would grow its layer (unless ``allow_growth``), or data-aware factors lack calibration.
    """
    _check_matches(model, config)
    grows = {n: r for n, r in config.ranks.items()
             if r * sum(config.layers[n].matrix) >= config.layers[n].matrix[0] * config.layers[n].matrix[1]}
    if grows and not allow_growth:
        n, r = next(iter(grows.items()))
        m = config.layers[n].matrix
        raise ConfigError(f"Rank {r} of layer {n!r} ({m[0]}x{m[1]}) gives a pair of {r * (m[0] + m[1])} weights, not fewer than "
                          f"its {m[0] * m[1]} ({len(grows)} such layers); lower it, or pass --allow-growth (allow_growth=True).")
    kind = factor_kind(config, factors)
    made = None
    if kind is FactorKind.DATA_AWARE:
        if calibration is None:
            raise ConfigError("The config's trial used data-aware factors, which need the calibration inputs it was searched with: "
                              "pass calibration= (ranksearch apply: the space's data), or factors='plain' (--factors plain) for plain SVD.")
        layers = {n: model.get_submodule(n) for n in config.ranks}
        moments = input_moments(model, layers, calibration, device=next(model.parameters()).device, forward=forward)
        made = {n: whitened(layers[n], moments[n], r)[1] for n, r in config.ranks.items()}
    result = factorize(model, config.ranks, made)
    got = count_params(result)
    if got != config.compressed_params:
        raise ConfigError(f"The factorized model has {got} parameters, the config says {config.compressed_params}; the config is inconsistent.")
    return result


def load_factorized(model: nn.Module, config: RankConfig, weights: str | os.PathLike[str], *, allow_growth: bool = False) -> nn.Module:
    """The factorized model with retrained weights saved by a search (``factorized.safetensors``)."""
    result = apply(model, config, factors=FactorKind.PLAIN, allow_growth=allow_growth)  # its weights are replaced next
    state = load_state_dict(weights)
    expected = result.state_dict()
    mismatch = _mismatch(state, expected)
    if mismatch:
        raise ConfigError(f"Weights {str(weights)!r} do not fit the factorized model of this config ({mismatch}); "
                          "use the weights saved beside it.")
    result.load_state_dict(state)
    return result


def _mismatch(state: Mapping[str, Any], expected: Mapping[str, Any]) -> str:
    """The first difference between a state dict and the one a model expects ('' when none)."""
    if missing := [k for k in expected if k not in state]:
        return f"{len(missing)} tensors missing, e.g. {missing[0]!r}"
    if extra := [k for k in state if k not in expected]:
        return f"{len(extra)} unexpected tensors, e.g. {extra[0]!r}"
    if shapes := [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]:
        k = shapes[0]
        return f"{k!r} has shape {list(state[k].shape)}, the model {list(expected[k].shape)}"
    return ""
