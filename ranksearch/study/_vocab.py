"""The closed vocabularies of a study: one spelling for each name ranksearch stores or takes.

Every value is a :class:`~enum.StrEnum`, so it is its own string in JSON, in a study's attributes and on
the command line (``Method.SEED_RULE == "seed_rule"``). Registries (samplers, pruners) are dicts keyed by
these members. Old spellings (``"data-aware"`` of settings version 5 and before) are read by the
versioned loaders, never written.
"""

from __future__ import annotations

from enum import StrEnum

from ranksearch.core._decompose import FactorKind

__all__ = ["BASELINES", "CUSTOM", "Axis", "Coding", "FactorKind", "Factors", "Granularity", "Method", "Prior", "Proposals", "Pruner",
           "Sampler", "SensitivityKind", "Sensitivity"]


class Method(StrEnum):
    """How a trial's allocation was made."""

    SEED_RULE = "seed_rule"  #: the CE1 rule: one MSE bound for every layer (plain factors)
    UNIFORM = "uniform"  #: every layer keeps the same fraction of its useful rank range
    SENSITIVITY = "sensitivity"  #: AIMET-style greedy allocation from the sensitivity table
    SENSITIVITY_SUM = "sensitivity_sum"  #: the ranks that maximize the sum of the layers' sensitivity scores
    WARM_START = "warm_start"  #: an allocation given from outside (another working point's best)
    DENSE = "dense"  #: no layer factorized, not retrained (a byte working point's candidates: the dense model as given, coded)
    SEARCHED = "searched"  #: drawn by the sampler

    @property
    def enqueued(self) -> bool:
        """Whether trials of this method are enqueued (never pruned) rather than sampled."""
        return self is not Method.SEARCHED

    @property
    def label(self) -> str:
        """How tables name it."""
        return _LABELS[self]


_LABELS = {Method.SEED_RULE: "the seed rule", Method.UNIFORM: "uniform", Method.SENSITIVITY: "AIMET-style sensitivity",
           Method.SENSITIVITY_SUM: "sensitivity sum", Method.WARM_START: "warm start", Method.DENSE: "dense", Method.SEARCHED: "sampled trial"}

#: the enqueued allocations reported beside the seed rule
BASELINES = (Method.UNIFORM, Method.SENSITIVITY, Method.SENSITIVITY_SUM)


class Factors(StrEnum):
    """The ``factors`` setting: a :class:`FactorKind`, or ``auto`` (data-aware when inputs exist)."""

    AUTO = "auto"
    DATA_AWARE = "data_aware"
    PLAIN = "plain"


class SensitivityKind(StrEnum):
    """How the sensitivity table behind the baselines is made."""

    AUTO = "auto"  #: measured when it fits the budget, else output probes on a subset that fits
    MEASURED = "measured"  #: the metric with each layer alone at each probe rank
    OUTPUT = "output"  #: the same probes scored by how close the outputs stay to the dense model's
    PROXY = "proxy"  #: from the curves, calibrated on a few evaluations


class Sampler(StrEnum):
    """Named samplers (:data:`ranksearch.study.SAMPLERS` builds them)."""

    LOCAL = "local"
    TPE = "tpe"
    GP = "gp"
    RANDOM = "random"
    CMAES = "cmaes"
    NSGA2 = "nsga2"


class Pruner(StrEnum):
    """Named pruners (:data:`ranksearch.study.PRUNERS` builds them)."""

    GATE = "gate"
    MEDIAN = "median"
    HYPERBAND = "hyperband"
    NONE = "none"


class Axis(StrEnum):
    """What a Pareto study's second objective is (the first: the metric)."""

    RATIO = "ratio"  #: the fraction of the model's parameters kept
    LATENCY = "latency"  #: the fraction of the dense model's latency, as the timing table predicts it
    BYTES = "bytes"  #: the NNR stream's bytes, measured by NNCodec (its points: fractions of the dense model's stream at qp -38)

    @property
    def label(self) -> str:
        """How tables and figures name it."""
        return {Axis.RATIO: "ratio", Axis.LATENCY: "latency (predicted, of dense)", Axis.BYTES: "bytes (NNR stream)"}[self]


class Coding(StrEnum):
    """How a trial of a byte working point codes its retrained model into the NNR stream."""

    UNIFORM = "uniform"  #: NNCodec's own way to meet a size: every weight at the finest single qp whose stream fits
    FITTED = "fitted"  #: each weight at its own qp (the byte table's fill: finer where a byte removes most error)


class Proposals(StrEnum):
    """What a sampled trial's parameters are."""

    INCUMBENT = "incumbent"  #: per-layer log2 rank steps from the best trial so far
    WEIGHTS = "weights"  #: per-layer log10 weights on the MSE bound around the prior's centre


class Granularity(StrEnum):
    """One searched parameter per layer, or per group of similar layers."""

    LAYER = "layer"
    GROUP = "group"


class Prior(StrEnum):
    """The centre of the searched weights (``weights`` proposals)."""

    NONE = "none"  #: the seed rule
    SENSITIVITY = "sensitivity"  #: the sensitivity-sum allocation


CUSTOM = "custom:"  #: prefix of a sampler or pruner given as an Optuna object from Python (``custom:QMCSampler``)

#: layer name -> list of (probe rank, score with only that layer truncated to that rank)
Sensitivity = dict[str, list[tuple[int, float]]]
