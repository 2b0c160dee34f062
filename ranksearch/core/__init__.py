"""The maths and the surgery, without Optuna: spectra and the MSE-to-rank solver, decompositions,
low-rank layers, factorizing a model, the cost model, the short retrain and the rank config.

``from ranksearch.core import solve_ratio`` (the pure-numpy solver) loads neither torch nor optuna:
every name is imported from its module on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ranksearch._lazy import exports

_NAMES = {
    # the pure-numpy solver
    "BAND": "_solver", "Curve": "_solver", "Latency": "_solver", "Solution": "_solver", "log2_ranks": "_solver", "project_ranks": "_solver",
    "ranks_for_bound": "_solver", "reachable_ratio": "_solver", "solve_ratio": "_solver",
    # decompositions, low-rank layers, surgery
    "FactorKind": "_decompose", "Factors": "_decompose", "singular_values": "_decompose", "decompose": "_decompose:factorize",
    "LowRank": "_layers", "LowRankConv": "_layers", "LowRankConvTranspose2d": "_layers", "LowRankLinear": "_layers",
    "build_low_rank": "_layers", "count_params": "_surgery", "factorize": "_surgery", "find_layers": "_surgery",
    "layer_factors": "_surgery", "layer_groups": "_surgery", "spectra": "_spectra", "curve_of": "_spectra",
    "calibration_batches": "_calibrate", "input_moments": "_calibrate", "whitened": "_calibrate",
    # inputs of any structure
    "call": "_inputs", "to_device": "_inputs", "batch_len": "_inputs",
    # cost, retrain, task
    "ModelCost": "_cost", "model_cost": "_cost", "rank_multiple_for": "_cost", "TENSOR_CORE_MULTIPLE": "_cost", "CPU_BLOCK": "_cost",
    "Optimizer": "_retrain", "RetrainSettings": "_retrain", "best_device": "_retrain", "compile_for_training": "_retrain",
    "evaluate": "_retrain", "fit": "_retrain", "sample_scores": "_retrain", "Task": "_task",
    # latency: per-layer timing tables and end-to-end medians
    "FASTER": "_timing", "Runtime": "_timing", "calibrate": "_timing", "TimingTable": "_timing", "measure_layers": "_timing", "measure_models": "_timing", "measure_table": "_timing",
    "timing_ranks": "_timing",
    # the NNR bitstream (NNCodec) and byte working points
    "DEFAULT_QP": "_nnr", "encode_nnr": "_nnr:encode", "decode_nnr": "_nnr:decode", "decoded_model": "_nnr",
    "QP_GRID": "_bytes", "ByteTable": "_bytes", "BytePoint": "_bytes", "Coded": "_bytes", "fisher": "_bytes", "fit_bytes": "_bytes",
    "measure_bytes": "_bytes", "uniform_qp": "_bytes", "fit_steps": "_rate", "NONWEIGHT_SHIFT": "_bytes", "foldable": "_fold",
    "task_folds": "_fold", "QuantAware": "_qat", "quantization_aware": "_qat", "step_of": "_qat",
    # the rank config and weights files
    "LayerRank": "_config", "RankConfig": "_config", "apply": "_allocation", "config_for": "_allocation",
    "dense_reasons": "_allocation", "load_factorized": "_allocation", "solve": "_allocation",
    "load_state_dict": "_weights", "save_state_dict": "_weights", "state_digest": "_weights",
}
__all__ = sorted(_NAMES)
__getattr__, __dir__ = exports(__name__, _NAMES)

if TYPE_CHECKING:
    from ranksearch.core._allocation import apply, config_for, dense_reasons, load_factorized, solve
    from ranksearch.core._bytes import NONWEIGHT_SHIFT, QP_GRID, BytePoint, ByteTable, Coded, fisher, fit_bytes, measure_bytes, uniform_qp
    from ranksearch.core._calibrate import calibration_batches, input_moments, whitened
    from ranksearch.core._config import LayerRank, RankConfig
    from ranksearch.core._cost import CPU_BLOCK, TENSOR_CORE_MULTIPLE, ModelCost, model_cost, rank_multiple_for
    from ranksearch.core._decompose import FactorKind, Factors, singular_values
    from ranksearch.core._decompose import factorize as decompose
    from ranksearch.core._fold import foldable, task_folds
    from ranksearch.core._inputs import batch_len, call, to_device
    from ranksearch.core._layers import LowRank, LowRankConv, LowRankConvTranspose2d, LowRankLinear, build_low_rank
    from ranksearch.core._nnr import DEFAULT_QP, decoded_model
    from ranksearch.core._nnr import decode as decode_nnr
    from ranksearch.core._nnr import encode as encode_nnr
    from ranksearch.core._qat import QuantAware, quantization_aware, step_of
    from ranksearch.core._rate import fit_steps
    from ranksearch.core._retrain import Optimizer, RetrainSettings, best_device, compile_for_training, evaluate, fit, sample_scores
    from ranksearch.core._solver import (
        BAND,
        Curve,
        Latency,
        Solution,
        log2_ranks,
        project_ranks,
        ranks_for_bound,
        reachable_ratio,
        solve_ratio,
    )
    from ranksearch.core._spectra import curve_of, spectra
    from ranksearch.core._surgery import count_params, factorize, find_layers, layer_factors, layer_groups
    from ranksearch.core._task import Task
    from ranksearch.core._timing import FASTER, Runtime, TimingTable, calibrate, measure_layers, measure_models, measure_table, timing_ranks
    from ranksearch.core._weights import load_state_dict, save_state_dict, state_digest
