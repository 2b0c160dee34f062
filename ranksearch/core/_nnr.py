"""The factorized model as an NNR bitstream (MPEG NNR, ISO/IEC 15938-17), encoded by NNCodec.

NNCodec (Fraunhofer HHI's implementation of the standard; :data:`INSTALL`) carries a
decomposed weight ``X`` as two tensors ``X_G`` (``[rows, rank]``) and ``X_H`` (``[rank, prod(X.shape) /
rows]``) with ``X`` itself absent, and signals the decomposition in the bitstream: the block's
compressed parameter types with the decomposition bit, ``decomposition_rank`` (read from G's shape),
``g_number_of_rows``, and ``X``'s original shape as its tensor dimensions. G and H of one layer are
quantized with the same step. Decoding recomposes ``G @ H`` and returns the dense ``X`` under its name.

The plain-dict entry point of NNCodec only describes the tensors it is given, so the model information
for each ``X`` (its original shape, index, type ``weight`` and block identifier, shared with its bias) is
filled in here before encoding. A block's bias must have the weight's first dimension as its length
(NNCodec reads it so); a ConvTranspose2d weight is ``(in, out, kh, kw)``, so where ``in != out`` its bias
is coded as a tensor of its own.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ranksearch._io import atomic_write_bytes
from ranksearch.core._fold import SCALING, fold_arrays, unfold
from ranksearch.core._layers import LowRank
from ranksearch.errors import RankSearchError

__all__ = ["DEFAULT_QP", "INSTALL", "QP_RANGE", "check_qp", "decode", "decoded_model", "encode", "encode_model", "encode_tensors", "nnr_parameters",
           "weight_names"]

_log = logging.getLogger(__name__)

DEFAULT_QP = -38  #: NNCodec's default quantization parameter for weights (step 2**(qp/4) at qp_density 2)
QP_RANGE = (-128, 127)  #: the qps NNCodec codes at qp_density 2 (it clips others without a word)
COARSE_QP = -16  #: above this the step (2**(qp/4) > 0.0625) is larger than most trained weights


def check_qp(qp: int, warn: bool = True) -> float:
    """The quantization step of ``qp`` (``2**(qp/4)``); a qp NNCodec would clip is refused in one line, and a
    step coarser than most weights is said in one line (the decoded model may lose most of its accuracy)."""
    if isinstance(qp, bool) or not isinstance(qp, int) or not QP_RANGE[0] <= qp <= QP_RANGE[1]:
        raise RankSearchError(f"qp {qp!r} is outside NNCodec's range [{QP_RANGE[0]}, {QP_RANGE[1]}]; the quantization step is "
                              f"2**(qp/4): the default {DEFAULT_QP} is {2 ** (DEFAULT_QP / 4):.2g}, lower is finer.")
    step = float(2 ** (qp / 4))
    if warn and qp > COARSE_QP:
        _log.warning("qp %d quantizes the weights with a step of %.3g, coarser than most trained weights: the decoded model may "
                     "lose most of its accuracy (check it with --verify; the default qp is %d)", qp, step, DEFAULT_QP)
    return step


def _nncodec() -> Any:
    """NNCodec's core (approximator, coder, model information): all this module uses. Its ``nnc`` front
    end also imports NNCodec's training framework (OpenCV, h5py, ...), which encoding does not need."""
    try:
        from nncodec import nnc_core
    except ImportError as e:
        raise RankSearchError(f"--format nnr needs NNCodec ({e}); install it with {INSTALL}.") from None
    return nnc_core


#: how to install NNCodec: it pins numpy<2 and a training stack it does not need to encode, so without
#: its dependencies (its coder runs on numpy 2; tested)
INSTALL = "pip install --no-deps 'nncodec==2.1.3'"


def nnr_parameters(model: nn.Module, folds: Mapping[str, str] | None = None) -> tuple[dict[str, np.ndarray], dict[str, tuple[int, ...]]]:
    """The tensors NNCodec encodes for ``model``: every state-dict entry as float32 (int32 for integer
    buffers), each low-rank pair as ``<layer>.weight_G`` / ``<layer>.weight_H``; and, for each pair, the
    original shape of the weight ``<layer>.weight`` they replace. ``folds`` (layer -> the batch norm after it,
    :func:`~ranksearch.core._fold.foldable`): each such layer carries ``<layer>.weight_scaling`` and its folded bias
    ``<layer>.bias`` instead of the normalization's tensors (NNR's batch-norm folding)."""
    folds = dict(folds or {})
    pairs = {n: m for n, m in model.named_modules() if isinstance(m, LowRank)}
    gone = {f"{norm}.{leaf}" for norm in folds.values() for leaf in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    gone |= {f"{layer}.bias" for layer in folds}
    params: dict[str, np.ndarray] = {}
    decomposed: dict[str, tuple[int, ...]] = {}
    for key, value in model.state_dict().items():
        owner = next((n for n in pairs if key.startswith(f"{n}.")), None)
        if owner is None and key not in gone:
            params[key] = _array(value)
    for name, pair in pairs.items():
        g, h = pair.matrices()
        params[f"{name}.weight_G"] = _array(g)
        params[f"{name}.weight_H"] = _array(h)
        if pair.bias is not None and name not in folds:
            params[f"{name}.bias"] = _array(pair.bias)
        decomposed[f"{name}.weight"] = tuple(int(d) for d in pair.weight_shape)
    for layer, arrays in fold_arrays(model, folds).items():
        params[f"{layer}.weight{SCALING}"] = arrays["scaling"]
        params[f"{layer}.bias"] = arrays["bias"]
    return params, decomposed


def _array(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.is_floating_point():
        return np.ascontiguousarray(t.float().numpy())
    return np.ascontiguousarray(t.to(torch.int32).numpy())


def _model_info(nnc_core: Any, params: Mapping[str, np.ndarray], decomposed: Mapping[str, tuple[int, ...]]) -> Any:
    """An NNCodec model whose information describes each decomposed weight ``X`` (absent from ``params``)."""
    model = nnc_core.nnr_model.NNRModel(dict(params))
    info = model.model_info
    order = []
    for key in params:  # the state dict's order, with each pair standing where its weight would
        if key.endswith(("_G", "_H")) and key[:-2] in decomposed:
            if key.endswith("_G"):
                order.append(key[:-2])
            continue
        order.append(key)
    for key in list(info["parameter_index"]):
        if key.endswith(("_G", "_H")) and key[:-2] in decomposed:
            del info["parameter_index"][key]
            info["parameter_type"].pop(key, None)
    info["parameter_index"] = {k: i for i, k in enumerate(order)}
    info["block_identifier"] = {}
    for key in params:  # a folded layer: its weight, scaling and bias as one NNR block (coded alone: each a tensor of its own)
        weight = key[: -len(SCALING)]
        if key.endswith(f".weight{SCALING}"):
            info["parameter_type"][key] = "weight.ls"
        if key.endswith(f".weight{SCALING}") and (weight in params or f"{weight}_G" in params):
            block = key[: -len(f".weight{SCALING}")]
            info["parameter_type"][f"{block}.bias"] = "bias"
            for k in (key, f"{block}.bias", *(() if weight in decomposed else (weight,))):
                info["block_identifier"][k] = block
    for x, shape in decomposed.items():
        info["parameter_dimensions"][x] = shape
        info["parameter_type"][x] = "weight"
        block = x[: -len(".weight")]
        info["block_identifier"][x] = block
        bias = params.get(f"{block}.bias")
        if bias is not None and bias.shape == (shape[0],):  # NNCodec sizes a block's bias by the weight's first
            info["parameter_type"][f"{block}.bias"] = "bias"  # dimension: a ConvTranspose's (in, out, ...) weight
            info["block_identifier"][f"{block}.bias"] = block  # with in != out keeps its bias outside the block
    return model


def encode(model: nn.Module, path: str | Path | None = None, *, qp: int = DEFAULT_QP, qps: Mapping[str, int] | None = None,
           folds: Mapping[str, str] | None = None) -> bytes:
    """Encode ``model`` (factorized or dense) into an NNR bitstream; written atomically to ``path`` when given.

    The steps and settings of NNCodec's ``nnc.compress`` with its defaults (uniform quantization with
    dependent quantization, qp density 2, parameter optimization, non-weight qp -75, general profile 1),
    called on its core so that the training framework ``nnc`` imports is not needed. ``qps`` gives weights
    their own qp (``<layer>.weight`` -> qp; a pair's G and H share it; any other tensor by its name), signalled per
    tensor in the stream. ``folds``: batch norms folded into the layers before them (:func:`nnr_parameters`).
    """
    check_qp(qp, warn=False)
    for q in (qps or {}).values():
        check_qp(q, warn=False)
    data, _ = encode_model(model, qp, qps, folds)
    if path is not None:
        atomic_write_bytes(path, data)
    return data


def encode_model(model: nn.Module, qp: int = DEFAULT_QP, qps: Mapping[str, int] | None = None,
                 folds: Mapping[str, str] | None = None) -> tuple[bytes, dict[str, np.ndarray]]:
    """:func:`encode` without the file: the bitstream, and the tensors as the decoder reconstructs them (dequantized, G and H
    apart, a folded layer's scaling apart; :func:`decoded_model` puts them into a model)."""
    params, decomposed = nnr_parameters(model, folds)
    return encode_tensors(params, decomposed, qp, qps)


def encode_tensors(params: Mapping[str, np.ndarray], decomposed: Mapping[str, tuple[int, ...]], qp: int,
                   qps: Mapping[str, int] | None = None) -> tuple[bytes, dict[str, np.ndarray]]:
    """:func:`encode` of tensors as :func:`nnr_parameters` gives them (any subset: a stream of some layers alone);
    returns the stream and the tensors as the decoder reconstructs them."""
    nnc_core = _nncodec()
    info = _model_info(nnc_core, params, decomposed).model_info
    unknown = sorted(set(qps or {}) - set(params) - set(decomposed))
    if unknown:
        raise RankSearchError(f"qps name tensors {unknown[:3]} that the model has not; give its weights' names (<layer>.weight).")
    per_tensor = {}
    for name, q in (qps or {}).items():
        for key in ((f"{name}_G", f"{name}_H") if name in decomposed else (name,)):
            per_tensor[key] = np.int32(q)
    with contextlib.redirect_stdout(io.StringIO()) as said:  # NNCodec prints its progress
        try:
            approx_data = nnc_core.approximator.init_approx_data(dict(params), info, qp_density=2, scan_order=0)
            approx_info = nnc_core.approximator.ApproxInfo(approx_data, info, "uniform", 0, qp, False, False, 10, 0, nonweight_qp=-75,
                                                           qp_per_tensor=per_tensor or None, int_quant_bw=False).approx_info
            enc_info = {"cabac_unary_length_minus1": 10, "param_opt_flag": True, "partial_data_counter": 0, "general_profile_idc": 1,
                        "node_id_present_flag": 1, "device_id": 0, "mps_parent_signalling_enabled_flag": 0,
                        "parent_node_id_present_flag": 0, "temporal_context_modeling_flag": 0, "row_skip_enabled_flag": 0,
                        "pre_signalling": 0}
            approx_enc = nnc_core.approximator.approx(approx_info, info, approx_data, enc_info)
            rebuilt = copy.deepcopy(approx_enc)  # before encoding, which may consume it
            stream, _ = nnc_core.coder.encode(enc_info=enc_info, model_info=info, approx_data=approx_enc, approx_param_base=None,
                                              update_base_param=False, tool_if=None)
        except (SystemExit, Exception) as e:
            raise RankSearchError(f"NNCodec could not encode the model ({type(e).__name__}: {e}); "
                                  f"{said.getvalue().strip()[-200:]}") from None
        nnc_core.approximator.rec(rebuilt)
    return bytes(stream), dict(rebuilt["parameters"])


def weight_names(model: nn.Module) -> dict[str, int]:
    """The tensors NNCodec codes as weights (each at its qp: ``<layer>.weight``, a pair's G and H as one), and their
    element counts (of the tensors coded: a pair's G and H together)."""
    params, decomposed = nnr_parameters(model)
    info = _model_info(_nncodec(), params, decomposed).model_info
    kinds = _nncodec().nnr_model.W_TYPES
    out = {}
    for key, kind in info["parameter_type"].items():
        if kind not in kinds:
            continue
        out[key] = int(params[f"{key}_G"].size + params[f"{key}_H"].size) if key in decomposed else int(params[key].size)
    return out


def decoded_model(model: nn.Module, tensors: Mapping[str, np.ndarray], folds: Mapping[str, str] | None = None) -> nn.Module:
    """A copy of ``model`` holding ``tensors`` as the decoder reconstructs them (:func:`nnr_parameters`' names: each pair as
    ``<layer>.weight_G`` / ``_H``), so it computes what the decoded bitstream computes; ``folds`` as they were encoded (each
    folded layer's rows times its ``<layer>.weight_scaling``, its normalization the identity)."""
    out = copy.deepcopy(model)
    pairs = {n: m for n, m in out.named_modules() if isinstance(m, LowRank)}
    state = out.state_dict()
    with torch.no_grad():
        for name, pair in pairs.items():
            g, h = (torch.from_numpy(np.asarray(tensors[f"{name}.weight_{k}"], dtype=np.float32)) for k in "GH")
            pair.load_matrices(g, h)
            if pair.bias is not None and f"{name}.bias" in tensors:
                pair.bias.copy_(torch.from_numpy(np.asarray(tensors[f"{name}.bias"])).reshape(pair.bias.shape))
        for key, value in state.items():
            if key in tensors and not any(key.startswith(f"{n}.") for n in pairs):
                value.copy_(torch.from_numpy(np.asarray(tensors[key])).to(value.dtype).reshape(value.shape))
    if folds:
        missing = sorted(layer for layer in folds if f"{layer}.weight{SCALING}" not in tensors)
        if missing:
            raise RankSearchError(f"the tensors have no scaling for the folded layers {missing[:3]}; decode a stream encoded with these folds.")
        unfold(out, folds, {k: tensors[f"{k}.weight{SCALING}"] for k in folds}, {k: tensors[f"{k}.bias"] for k in folds})
    return out


def decode(data: bytes | str | Path, *, recompose: bool = True) -> dict[str, np.ndarray]:
    """The tensors of an NNR bitstream (bytes or a file): each decomposed weight recomposed (``G @ H``,
    reshaped to its original shape, both as signalled in the bitstream) under its own name, or with
    ``recompose=False`` as its two decoded tensors ``X_G`` and ``X_H``.

    NNCodec 2.1.3's ``decompress`` decodes a decomposed block and then fails in ``recompose_params``
    (it looks up ``parameter_index[X_G]``, which its own decoder never sets: KeyError), so the
    decoding and dequantization are NNCodec's and only that last recomposition step is done here.
    """
    nnc_core = _nncodec()
    raw = bytearray(Path(data).read_bytes() if isinstance(data, (str, Path)) else data)
    info: dict[str, Any] = {"parameter_type": {}, "parameter_dimensions": {}, "parameter_index": {}, "block_identifier": {},
                            "topology_storage_format": None, "topology_compression_format": None,
                            "performance_maps": {"mps": {}, "lps": {}},
                            "performance_map_flags": {f"{w}_{f}_flag": {} for w in ("mps", "lps")
                                                      for f in ("sparsification", "pruning", "unification", "decomposition_performance_map")}}
    with contextlib.redirect_stdout(io.StringIO()) as said:
        try:
            approx = nnc_core.coder.decode(raw, info, hls_stats={}, oob_dict={})
            nnc_core.approximator.rec(approx)
        except (SystemExit, Exception) as e:  # a corrupt stream fails anywhere in the decoder
            raise RankSearchError(f"The NNR bitstream cannot be decoded ({type(e).__name__}: {e}); "
                                  f"give a file written by ranksearch export --format nnr. {said.getvalue().strip()[-200:]}") from None
    params = dict(approx["parameters"])
    if not recompose:
        return params
    for g_name in [k for k in params if k.endswith("_G")]:
        x = g_name[:-2]
        g, h = params.pop(g_name), params.pop(f"{x}_H")
        shape = tuple(int(d) for d in info["parameter_dimensions"][x])
        params[x] = (g.astype(np.float32) @ h.astype(np.float32)).reshape(shape)
    for key in [k for k in params if k.endswith(SCALING)]:  # NNR's local scaling: one factor per output row
        weight, scale = params[key[: -len(SCALING)]], params.pop(key).astype(np.float32)
        params[key[: -len(SCALING)]] = weight * scale.reshape(-1, *([1] * (weight.ndim - 1)))
    return params
