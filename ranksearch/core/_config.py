"""The rank config: which rank each layer keeps, saved as a versioned JSON file.

Like PEFT's ``rank_pattern``, ``ranks`` is a plain ``{module name: rank}`` mapping over the dense
model's ``named_modules()``. Everything else records where the figures came from, so that later
commands (apply, export, report) can work from the config and its folder alone.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ranksearch._io import atomic_write_text, read_json
from ranksearch.errors import ConfigError

__all__ = ["FORMAT", "FORMAT_VERSION", "LayerRank", "RankConfig"]

FORMAT = "ranksearch.rank_config"
FORMAT_VERSION = 2  #: 2 adds the layers kept dense (``dense``), the cost model (``cost``) and per-layer MACs


@dataclass(frozen=True)
class LayerRank:
    """Per-layer details of a factorized layer (the CE1 tables' "Param Reduction" column); multiply-adds
    per sample for the model's input shape when it was known (:mod:`ranksearch.core._cost`)."""

    type: str
    weight_shape: list[int]
    matrix: list[int]
    rank: int
    mse: float
    params_before: int
    params_after: int
    macs_before: int | None = None
    macs_after: int | None = None

    def __post_init__(self) -> None:
        def ints(v: object, n: int | None = None) -> bool:
            return (isinstance(v, list) and (n is None or len(v) == n) and v != []
                    and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v))

        if not isinstance(self.type, str) or not ints(self.weight_shape) or not ints(self.matrix, 2):
            raise ConfigError(f"layer entry needs a type string, weight_shape and matrix [m, n] of positive ints; got "
                              f"{self.type!r}, {self.weight_shape!r}, {self.matrix!r}.")
        if not ints([self.rank, self.params_before, self.params_after]):
            raise ConfigError(f"layer rank and parameter counts must be positive ints; got {self.rank!r}, "
                              f"{self.params_before!r}, {self.params_after!r}.")
        if isinstance(self.mse, bool) or not isinstance(self.mse, (int, float)):
            raise ConfigError(f"layer mse must be a number; got {self.mse!r}.")
        if (self.macs_before is None) != (self.macs_after is None) or (self.macs_before is not None and not ints([self.macs_before, self.macs_after])):
            raise ConfigError(f"layer macs_before and macs_after must both be positive ints or both absent; got "
                              f"{self.macs_before!r}, {self.macs_after!r}.")


@dataclass(frozen=True)
class RankConfig:
    """A rank allocation for one model at one working point.

    Attributes:
        model: Space name or model factory (``module:function``) of the dense model.
        target_ratio: The requested working point (parameters kept / original parameters).
        achieved_ratio: ``compressed_params / original_params``.
        original_params: Parameters of the dense model.
        compressed_params: Parameters of the factorized model.
        ranks: Module name -> rank, factorized layers only.
        layers: Module name -> :class:`LayerRank`, same keys as ``ranks``.
        source: Where the dense model came from (``space``, ``space_file``, ``factory``, ``weights``).
        metric: Metric name and values (``dense``, ``seed_rule``, ``after_retrain``, ...), if measured.
        search: The settings that produced the config (method, trials, seed, retrain recipe, ...).
        dense: Module name -> why it stays dense, for every Linear / Conv layer not in ``ranks``
            (excluded, grouped, or no rank on the grid that saves parameters and multiply-adds).
        cost: The cost model, when the input shape was known: ``input_shape`` (one sample),
            ``macs_before`` and ``macs_after`` (multiply-adds per sample of the Linear / Conv layers),
            ``macs_ratio`` and ``params_ratio``.
    """

    model: str
    target_ratio: float
    achieved_ratio: float
    original_params: int
    compressed_params: int
    ranks: dict[str, int]
    layers: dict[str, LayerRank]
    source: dict[str, Any] = field(default_factory=dict)
    metric: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Any] = field(default_factory=dict)
    dense: dict[str, str] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.format != FORMAT or self.format_version not in (1, FORMAT_VERSION):
            raise ConfigError(
                f"Rank config format {self.format!r} v{self.format_version} is not supported; "
                f"expected {FORMAT!r} v1 or v{FORMAT_VERSION} (a newer ranksearch wrote it: upgrade)."
            )
        object.__setattr__(self, "format_version", FORMAT_VERSION)  # a v1 config is a v2 one without dense or cost
        for name, kind in (("model", str), ("ranks", dict), ("layers", dict), ("source", dict), ("metric", dict), ("search", dict),
                           ("dense", dict), ("cost", dict)):
            if not isinstance(getattr(self, name), kind):
                raise ConfigError(f"field {name!r} must be a {'JSON object' if kind is dict else 'string'}, "
                                  f"got {type(getattr(self, name)).__name__}.")
        for name in ("target_ratio", "achieved_ratio"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"field {name!r} must be a number, got {v!r}.")
        if not isinstance(self.compressed_params, int) or isinstance(self.compressed_params, bool):
            raise ConfigError(f"compressed_params {self.compressed_params!r} must be an int.")
        if not (0 < self.target_ratio <= 1):
            raise ConfigError(f"target_ratio {self.target_ratio!r} must be in (0, 1].")
        if not (isinstance(self.original_params, int) and self.original_params > 0):
            raise ConfigError(f"original_params {self.original_params!r} must be a positive int.")
        if not math.isclose(self.achieved_ratio, self.compressed_params / self.original_params, rel_tol=1e-9):
            raise ConfigError(
                f"achieved_ratio {self.achieved_ratio} != compressed_params / original_params "
                f"({self.compressed_params} / {self.original_params})."
            )
        bad = {k: r for k, r in self.ranks.items() if not (isinstance(r, int) and r >= 1)}
        if bad:
            raise ConfigError(f"Ranks must be positive ints, got {bad}.")
        if set(self.layers) != set(self.ranks):
            raise ConfigError(f"layers and ranks name different modules: {sorted(set(self.layers) ^ set(self.ranks))}.")
        if odd := [k for k, v in self.layers.items() if not isinstance(v, (LayerRank, dict))]:
            raise ConfigError(f"layers[{odd[0]!r}] must be a JSON object (type, weight_shape, matrix, rank, ...).")
        layers = {k: v if isinstance(v, LayerRank) else LayerRank(**v) for k, v in self.layers.items()}
        object.__setattr__(self, "layers", layers)
        mismatch = [k for k, v in layers.items() if v.rank != self.ranks[k]]
        if mismatch:
            raise ConfigError(f"layers[...].rank disagrees with ranks for {mismatch}.")
        if both := sorted(set(self.dense) & set(self.ranks)):
            raise ConfigError(f"layers {both} are both factorized (ranks) and kept dense (dense).")
        _check_cost(self.cost)
        if not all(isinstance(v, str) for v in self.dense.values()):
            raise ConfigError("field 'dense' must map layer names to the reason each stays dense (strings).")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, format keys first."""
        d = asdict(self)
        return {"format": d.pop("format"), "format_version": d.pop("format_version"), **d}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the config as JSON (atomically: a crash leaves the old file or none)."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "config") -> RankConfig:
        """Build from a dict, with errors that name ``origin`` and the faulty field."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ConfigError(f"{origin} is not a ranksearch rank config (its 'format' is not {FORMAT!r}).")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        missing = sorted(f.name for f in fields(cls) if f.name not in data and f.name in _REQUIRED)
        if unknown or missing:
            raise ConfigError(f"{origin}: unknown fields {unknown} / missing fields {missing}.")
        try:
            return cls(**data)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{origin}: {e}") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RankConfig:
        """Read a config written by :meth:`save`."""
        data = read_json(path, "Rank config", "pass the path of a rank_config.json a search or solve wrote (or re-export it)")
        return cls.from_dict(data, origin=f"Rank config {str(path)!r}")  # type: ignore[arg-type]


_COST_INTS = ("macs_before", "macs_after")
_COST_RATIOS = ("macs_ratio", "params_ratio")


def _check_cost(cost: dict[str, Any]) -> None:
    """A cost block is empty (no input shape was known) or complete and typed."""
    if not cost:
        return
    missing = sorted({"input_shape", *_COST_INTS, *_COST_RATIOS} - set(cost))
    shape = cost.get("input_shape")
    ok = (not missing and isinstance(shape, list) and shape != []
          and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
          and all(isinstance(cost[k], int) and not isinstance(cost[k], bool) and cost[k] >= 0 for k in _COST_INTS)
          and all(isinstance(cost[k], (int, float)) and not isinstance(cost[k], bool) and math.isfinite(cost[k]) for k in _COST_RATIOS))
    if not ok:
        raise ConfigError(f"field 'cost' must be empty or hold input_shape (positive ints), macs_before and macs_after (ints) and "
                          f"macs_ratio and params_ratio (numbers){f'; it lacks {missing}' if missing else ''}.")


_REQUIRED = {"model", "target_ratio", "achieved_ratio", "original_params", "compressed_params", "ranks", "layers"}
