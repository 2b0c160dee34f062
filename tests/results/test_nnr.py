"""The NNR bitstream (NNCodec): decomposed layers as G/H with the rank signalled, decoded back exactly to what
the encoder quantized; ``ranksearch export --format nnr --verify``; clear errors."""

from __future__ import annotations

import contextlib
import io
import re
import sys

import numpy as np
import pytest
import torch

from ranksearch import RankConfig, load_factorized, load_space
from ranksearch.cli import main
from ranksearch.core._layers import LowRank
from ranksearch.errors import RankSearchError

nnc_core = pytest.importorskip("nncodec.nnc_core")

from ranksearch.core._nnr import _model_info, decode, encode, encode_model, nnr_parameters  # noqa: E402


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    out = tmp_path_factory.mktemp("nnr") / "run"
    assert main(["search", "--space", "tiny-digits", "--ratio", "0.3", "--trials", "3", "--epochs", "1", "--out", str(out),
                 "--no-progress"]) == 0
    space = load_space("tiny-digits")
    model = load_factorized(space.build_architecture(), RankConfig.load(out / "rank_config.json"), out / "factorized.safetensors")
    return out, model.eval()


def test_pairs_are_coded_as_g_and_h_with_their_rank_and_decode_exactly(searched):
    _, model = searched
    pairs = {n: m for n, m in model.named_modules() if isinstance(m, LowRank)}
    assert pairs
    data, quantized = encode_model(model, qp=-38)
    coded = decode(data, recompose=False)
    assert set(coded) == set(quantized)
    for key, value in quantized.items():  # the decoder gives back exactly what the encoder quantized
        assert np.array_equal(coded[key], value), key
    for name, pair in pairs.items():
        g, h = coded[f"{name}.weight_G"], coded[f"{name}.weight_H"]
        assert g.shape == (pair.weight_shape[0], pair.rank) and h.shape == (pair.rank, int(np.prod(pair.weight_shape)) // pair.weight_shape[0])
        assert f"{name}.weight" not in coded  # X itself is not in the stream, only its pair
    dense = decode(data)
    for name, pair in pairs.items():
        x = dense[f"{name}.weight"]
        g, h = coded[f"{name}.weight_G"], coded[f"{name}.weight_H"]
        assert x.shape == pair.weight_shape and np.array_equal(x, (g @ h).reshape(pair.weight_shape))
        w = pair.weight.detach().numpy()
        assert np.abs(x - w).max() <= 0.05 * np.abs(w).max()  # qp -38: within a few quantization steps of the float weight
    assert dense.keys() == set(model.state_dict()) - {k for n in pairs for k in model.state_dict() if k.startswith(f"{n}.")} \
        | {f"{n}.weight" for n in pairs} | {f"{n}.bias" for n, p in pairs.items() if p.bias is not None}


def test_the_stream_is_nncodecs_own_compress_output(searched):
    """encode() runs NNCodec's core with the settings of its nnc.compress defaults: byte-identical streams."""
    nnc = pytest.importorskip("nncodec.nnc", reason="NNCodec's front end needs OpenCV and h5py")
    _, model = searched
    params, decomposed = nnr_parameters(model)
    with contextlib.redirect_stdout(io.StringIO()):
        ref = nnc.compress(dict(params), bitstream_path=None, qp=-30, model=_model_info(nnc_core, params, decomposed),
                           return_bitstream=True)
    assert encode(model, qp=-30) == bytes(ref)


def test_finer_qp_costs_more_bytes_and_less_error(searched):
    _, model = searched
    pair_name = next(n for n, m in model.named_modules() if isinstance(m, LowRank))
    w = dict(model.named_modules())[pair_name].weight.detach().numpy()
    sizes, errors = [], []
    for qp in (-26, -38, -50):
        data = encode(model, qp=qp)
        sizes.append(len(data))
        errors.append(float(np.abs(decode(data)[f"{pair_name}.weight"] - w).max()))
    assert sizes[0] < sizes[1] < sizes[2] and errors[0] > errors[1] > errors[2]


def test_export_nnr_verify_prints_bytes_and_the_metric(searched, tmp_path, capsys):
    out, model = searched
    path = tmp_path / "model.nnr"
    assert main(["export", "--config", str(out / "rank_config.json"), "--weights", str(out / "factorized.safetensors"),
                 "--format", "nnr", "--out", str(path), "--verify"]) == 0
    text = capsys.readouterr().out
    size = path.stat().st_size
    assert f"{size:,} bytes at qp -38" in text
    m = re.search(r"verified: ([\d,]+) bytes, the dense model's bitstream at qp -38 ([\d,]+) bytes \(([\d.]+)x\); "
                  r"test accuracy ([\d.]+) before coding, ([\d.]+) after decoding", text)
    assert m, text
    dense_bytes = int(m.group(2).replace(",", ""))
    assert int(m.group(1).replace(",", "")) == size < dense_bytes
    assert abs(float(m.group(4)) - float(m.group(5))) <= 0.005  # the coding costs at most half a point
    space = load_space("tiny-digits")
    from ranksearch.core._retrain import evaluate

    task = space.build_task()
    assert float(m.group(4)) == pytest.approx(evaluate(model, task.test, task.metric), abs=5e-5)
    assert dense_bytes == len(encode(space.build_model(task)))


def test_bad_nnr_input_fails_in_one_line(searched, tmp_path, capsys, monkeypatch):
    out, _ = searched
    bad = tmp_path / "bad.nnr"
    bad.write_bytes(b"\x00\x01not a bitstream" * 10)
    with pytest.raises(RankSearchError, match="cannot be decoded"):
        decode(bad)
    assert main(["export", "--config", str(out / "rank_config.json"), "--format", "onnx", "--qp", "-30",
                 "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--qp, --bytes and --verify go with --format nnr" in err[0]
    monkeypatch.setitem(sys.modules, "nncodec.nnc_core", None)  # as if NNCodec were not installed
    target = tmp_path / "none.nnr"
    assert main(["export", "--config", str(out / "rank_config.json"), "--format", "nnr", "--out", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install --no-deps 'nncodec==2.1.3'" in err[0] and not target.exists()


def test_every_layer_type_round_trips_through_the_stream():
    """Linear, Conv1d, Conv2d and a ConvTranspose2d whose bias is longer than its weight's first dimension
    (NNCodec sizes a block's bias by it): each decodes to its recomposed weight and its own bias."""
    from ranksearch.core._surgery import factorize

    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"lin": torch.nn.Linear(24, 16), "c1": torch.nn.Conv1d(6, 12, 3), "c2": torch.nn.Conv2d(8, 16, 3),
                                 "up": torch.nn.ConvTranspose2d(6, 10, 3), "plain": torch.nn.Conv2d(4, 4, 1, bias=False)})
    small = factorize(model, {"lin": 4, "c1": 3, "c2": 5, "up": 2})
    data, quantized = encode_model(small, qp=-42)
    out = decode(data)
    assert set(out) == set(model.state_dict())
    for name in ("lin", "c1", "c2", "up"):
        pair = dict(small.named_modules())[name]
        g, h = quantized[f"{name}.weight_G"], quantized[f"{name}.weight_H"]
        assert np.array_equal(out[f"{name}.weight"], (g @ h).reshape(pair.weight_shape))
        assert np.array_equal(out[f"{name}.bias"], quantized[f"{name}.bias"]) and out[f"{name}.bias"].shape == pair.bias.shape
    assert np.array_equal(out["plain.weight"], quantized["plain.weight"])


def test_a_coarse_qp_is_said_and_one_out_of_range_refused(searched, tmp_path, capsys):
    """qp 0 quantizes with a step of 1, coarser than the weights: written, but said in one line; a qp NNCodec
    would clip is refused before any work (from Python too)."""
    out, model = searched
    path = tmp_path / "coarse.nnr"
    assert main(["export", "--config", str(out / "rank_config.json"), "--weights", str(out / "factorized.safetensors"),
                 "--format", "nnr", "--qp", "0", "--out", str(path)]) == 0
    captured = capsys.readouterr()
    assert "at qp 0 (step 1)" in captured.out and path.is_file()
    assert sum("coarser than most trained weights" in line for line in captured.err.splitlines()) == 1
    with pytest.raises(RankSearchError, match=r"qp 1000 is outside NNCodec's range \[-128, 127\]"):
        encode(model, qp=1000)


def test_export_nnr_to_a_byte_budget_verifies_against_the_dense_model_at_a_uniform_qp(searched, tmp_path, capsys):
    """``--bytes N``: each weight at its own qp, the stream within N and within 2% of it; ``--verify`` decodes it and
    scores the dense model coded by NNCodec at the finest uniform qp within the same bytes."""
    out, model = searched
    budget = len(encode(model)) // 3
    path = tmp_path / "model.nnr"
    assert main(["export", "--config", str(out / "rank_config.json"), "--weights", str(out / "factorized.safetensors"),
                 "--format", "nnr", "--bytes", str(budget), "--out", str(path), "--verify"]) == 0
    text = capsys.readouterr().out
    size = path.stat().st_size
    assert 0.98 * budget <= size <= budget
    assert f"{size:,} bytes of the {budget:,} allowed" in text and "weights each at its own qp" in text
    m = re.search(r"verified: ([\d,]+) bytes of the ([\d,]+) allowed; test accuracy ([\d.]+) before coding, ([\d.]+) after decoding "
                  r"\([-+\d.]+\); the dense model at the finest uniform qp within them \(qp (-?\d+), ([\d,]+) bytes\) ([\d.]+)", text)
    assert m, text
    space = load_space("tiny-digits")
    dense = space.build_model(space.build_task())
    qp, dense_bytes = int(m.group(5)), int(m.group(6).replace(",", ""))
    assert dense_bytes == len(encode(dense, qp=qp)) <= budget < len(encode(dense, qp=qp - 1))
    tensors = decode(path, recompose=False)
    levels = {round(float(np.abs(v[v != 0]).min()) * 1e6) for k, v in tensors.items() if k.endswith("_G") and (v != 0).any()}
    assert levels  # the decoded factors exist; their qps are each weight's own (tests/core/test_bytes.py checks the grid)


@pytest.mark.parametrize(("extra", "message"), [
    (["--bytes", "5000", "--qp", "-30"], "--bytes 5000 chooses each weight's qp; leave --qp -30 out"),
    (["--bytes", "0"], "--bytes 0 must be a positive number of bytes"),
    (["--bytes", "50"], "--bytes 50 is unreachable for this model"),
])
def test_bad_byte_budgets_fail_in_one_line(searched, tmp_path, capsys, extra, message):
    out, _ = searched
    target = tmp_path / "m.nnr"
    assert main(["export", "--config", str(out / "rank_config.json"), "--format", "nnr", "--out", str(target), *extra]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "no --weights" not in line]  # the info line of an export
    assert len(err) == 1 and message in err[0], err
    assert not target.exists()


def test_a_stream_with_batch_norms_folded_verifies_in_the_dense_architecture(tmp_path):
    """The writer folds each batch norm that follows its layer (checked on the task's data) and fits the budget; the verifier
    decodes the stream into the plain dense architecture, normalizations the identity, and scores it."""
    from torch.utils.data import TensorDataset

    from ranksearch.core._surgery import factorize
    from ranksearch.core._task import Task
    from ranksearch.results import write_model
    from ranksearch.results._nnr import verify

    def net() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                   torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(), torch.nn.Flatten(),
                                   torch.nn.Linear(16 * 64, 10)).eval()

    dense = net()
    with torch.no_grad():
        for bn in (dense[1], dense[4]):
            bn.running_var.uniform_(0.5, 2.0), bn.running_mean.normal_(0, 0.3), bn.weight.uniform_(0.5, 1.5), bn.bias.normal_(0, 0.2)
    data = TensorDataset(torch.randn(96, 1, 8, 8), torch.randint(0, 10, (96,)))
    task = Task(data, data, data, "cross_entropy", "accuracy")
    model = factorize(dense, {"3": 4}).eval()
    size = len(encode(model)) // 3
    line = write_model(model, tmp_path / "m.nnr", "nnr", size=size, task=task)
    assert "2 batch norms folded" in line
    stream = (tmp_path / "m.nnr").read_bytes()
    assert len(stream) <= size and {"0.weight_scaling", "3.weight_scaling"} <= set(decode(stream, recompose=False))
    said = verify(tmp_path / "m.nnr", model, net(), dense, task, None, size)
    assert said.startswith(f"verified: {len(stream):,} bytes of the {size:,} allowed") and "\n" not in said
    with pytest.raises(RankSearchError, match="no batch norm after"):  # a stream for another architecture
        verify(tmp_path / "m.nnr", model, torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1, bias=False), torch.nn.ReLU(),
                                                               torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.Linear(16 * 64, 10)),
               dense, task, None, size)
