"""A model's NNR stream fitted to a byte budget: the step allocation, the byte table against the real encoder, per-tensor
qps in the stream, the decoded model, the Fisher weights, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ranksearch.core._rate import fit_steps
from ranksearch.errors import RankSearchError

nnc_core = pytest.importorskip("nncodec.nnc_core")

from ranksearch.core._bytes import NONWEIGHT_SHIFT, ByteTable, fisher, fit_bytes, measure_bytes, uniform_qp  # noqa: E402
from ranksearch.core._nnr import decode, decoded_model, encode, nnr_parameters, weight_names  # noqa: E402
from ranksearch.core._surgery import factorize  # noqa: E402


def _tables(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    size = np.sort(rng.integers(5, 200, size=(4, 5)), axis=1)[:, ::-1].copy()  # finest first: sizes fall
    error = np.sort(rng.random((4, 5)) * rng.integers(1, 50, size=(4, 1)), axis=1)  # errors rise
    return size, error


@pytest.mark.parametrize("seed", range(6))
def test_steps_fit_the_budget_from_the_finest_common_step_and_leave_no_finer_step_that_fits(seed):
    size, error = _tables(seed)
    rows = np.arange(4)
    for budget in (size[:, -1].sum(), size[:, 2].sum() + 7, size[:, 0].sum() - 1, size[:, 0].sum() * 2):
        idx = fit_steps(size, error, budget)
        assert size[rows, idx].sum() <= budget
        common = next(j for j in range(5) if size[:, j].sum() <= budget)  # the finest uniform step that fits
        assert np.all(idx <= common)  # the fill only refines
        assert idx.max() - idx.min() <= 1 or (idx < common).all()  # one step per unit before any takes two
        left = budget - size[rows, idx].sum()
        assert all(idx[u] == 0 or size[u, idx[u] - 1] - size[u, idx[u]] > left
                   or error[u, idx[u] - 1] >= error[u, idx[u]] for u in rows)  # no finer step still fits


def test_offsets_shift_a_unit_coarser_or_finer_than_the_others():
    size = np.tile(np.array([100, 60, 30, 10]), (3, 1))
    error = np.tile(np.array([1.0, 2.0, 4.0, 8.0]), (3, 1))
    assert fit_steps(size, error, 180).tolist() == [1, 1, 1]
    assert fit_steps(size, error, 150).tolist() == [1, 1, 2]  # 90 bytes at the common step 2, then two units one finer
    assert fit_steps(size, error, 150, offsets=[1, 0, -1]).tolist() == [2, 1, 1]  # 100 at [3, 2, 1], then the two that fit


def test_fit_steps_refuses_in_one_line():
    size, error = _tables(0)
    with pytest.raises(RankSearchError, match="below the .* coarsest step") as e:
        fit_steps(size, error, size[:, -1].sum() - 1)
    assert "\n" not in str(e.value)
    with pytest.raises(RankSearchError, match="one per unit"):
        fit_steps(size, error, 10**6, offsets=[0, 1])
    with pytest.raises(RankSearchError, match="same"):
        fit_steps(size, error[:, :3], 10**6)


def _net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
                               torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, 32, 3, padding=1),
                               torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(32 * 4 * 4, 160), torch.nn.ReLU(),
                               torch.nn.Linear(160, 160), torch.nn.ReLU(), torch.nn.Linear(160, 10)).eval()


@pytest.fixture(scope="module")
def models():
    """A dense model whose weights are spread as trained ones are (Laplace, scale 0.05; an init's are mostly below the
    coarse steps), and its factorization."""
    torch.manual_seed(0)
    dense = _net()
    with torch.no_grad():
        for p in dense.parameters():
            if p.dim() > 1:
                p.copy_(torch.distributions.Laplace(0.0, 0.05).sample(p.shape))
    return dense, factorize(dense, {"3": 12, "5": 12, "8": 48, "10": 48}).eval()


def test_the_table_predicts_the_whole_stream_at_any_qps(models):
    """Streams add up over weights less one header each: the table's prediction against NNCodec on the whole model."""
    for model in models:
        table = measure_bytes(model, qps=(-44, -36, -28, -20))
        weights = set(weight_names(model))
        assert set(table.units[: len(weights)]) == weights
        others = [k for k, v in nnr_parameters(model)[0].items() if k.removesuffix("_G").removesuffix("_H") not in weights and v.dtype.kind == "f"]
        assert others and set(table.units[len(weights):]) == {k.rpartition(".")[0] for k in others}  # biases, normalization
        assert table.shift == (0,) * len(weights) + (NONWEIGHT_SHIFT,) * (len(table.units) - len(weights))
        assert np.all(np.diff(table.size, axis=1) <= 0) and np.all(np.diff(table.error, axis=1) >= 0)  # coarser: smaller, worse
        assert np.all(np.diff(table.size[: len(weights)], axis=1) < 0) and np.all(np.diff(table.error[: len(weights)], axis=1) > 0)
        rng = np.random.default_rng(0)
        for pick in rng.choice(table.qps, size=(12, len(table.units))):
            qps = dict(zip(table.units, pick.tolist()))
            w, others = table.tensor_qps(qps)
            assert set(w) == weights and set(others) == set(table.members[-1]).union(*table.members[len(weights):])
            actual = len(encode(model, qps={**w, **others}))
            assert abs(table.predicted(qps) - actual) <= 0.01 * actual, (qps, table.predicted(qps), actual)


@pytest.mark.parametrize("fraction", [0.5, 0.25])
def test_the_fitted_stream_is_within_the_budget_and_2_percent_of_it(models, fraction):
    for model in models:
        table = measure_bytes(model)
        budget = int(fraction * len(encode(model)))
        coded = fit_bytes(model, budget, table=table)
        assert coded.bytes == len(coded.stream) <= budget
        assert coded.bytes >= 0.98 * budget, (coded.bytes, budget, coded.qps)
        assert abs(coded.predicted - coded.bytes) <= 0.005 * budget
        uniform = min(q for q in table.qps if table.predicted(dict.fromkeys(table.units, q)) <= budget)
        assert max(coded.qps.values()) <= uniform  # no weight coarser than the finest uniform qp of the grid that fits


def test_each_weight_is_coded_at_its_own_qp_and_the_decoder_gets_what_the_model_scores(models):
    _, model = models
    qps = {"0.weight": -48, "3.weight": -20, "5.weight": -48, "8.weight": -32, "10.weight": -48, "12.weight": -24}
    table = ByteTable(tuple(qps), (-48, -32, -24, -20), np.zeros((6, 4), dtype=np.int64), np.zeros((6, 4)), 0)
    coded = fit_bytes(model, 10**9, table=table, offsets={"3.weight": 3, "8.weight": 1, "12.weight": 2})
    assert coded.qps == qps
    tensors = decode(coded.stream, recompose=False)
    for name, qp in qps.items():  # each decoded tensor lies on its own qp's grid of steps
        keys = [f"{name}_G", f"{name}_H"] if f"{name}_G" in tensors else [name]
        for key in keys:
            levels = tensors[key] / 2 ** (qp / 4)
            assert np.allclose(levels, np.round(levels), atol=1e-3), key
            assert np.array_equal(tensors[key], coded.tensors[key])
    x = torch.randn(4, 3, 4, 4)
    decoded = decoded_model(model, coded.tensors)
    dense_shaped = decode(coded.stream)
    recomposed = _net()
    recomposed.load_state_dict({k: torch.from_numpy(v) for k, v in dense_shaped.items()})
    with torch.no_grad():
        assert torch.allclose(decoded(x), recomposed(x), atol=1e-4)
        assert not torch.allclose(decoded(x), model(x), atol=1e-4)  # coding at qp -20 changed it


def test_the_uniform_qp_is_the_finest_that_fits(models):
    dense, _ = models
    budget = len(encode(dense)) // 6
    qp, data, _ = uniform_qp(dense, budget)
    assert len(data) == len(encode(dense, qp=qp)) <= budget < len(encode(dense, qp=qp - 1))


def test_fisher_weights_each_coded_tensor_by_the_loss(models):
    from torch.utils.data import TensorDataset

    from ranksearch.core._task import Task

    _, model = models
    data = TensorDataset(torch.randn(64, 3, 4, 4), torch.randint(0, 10, (64,)))
    f = fisher(model, Task(data, data, data, "cross_entropy", "accuracy"), samples=64, device=torch.device("cpu"))
    params, _ = nnr_parameters(model)
    assert set(f) == set(params) and all(f[k].shape == params[k].shape for k in f)
    assert all(np.all(f[k] >= 0) and f[k].sum() > 0 for k in ("0.weight", "3.weight_G", "3.weight_H", "12.weight"))
    weighted = measure_bytes(model, qps=(-40, -24), sensitivity=f)
    plain = measure_bytes(model, qps=(-40, -24))
    assert np.array_equal(weighted.size, plain.size) and not np.allclose(weighted.error, plain.error)


def test_bytes_refused_in_one_line(models):
    dense, model = models
    with pytest.raises(RankSearchError, match=r"--bytes 100 is unreachable .* at qp -14") as e:
        fit_bytes(model, 100)
    assert "\n" not in str(e.value)
    with pytest.raises(RankSearchError, match="--bytes 10 is unreachable for this model at any qp"):
        uniform_qp(dense, 10)
    with pytest.raises(RankSearchError, match="not weights of this model"):
        fit_bytes(model, 10**6, offsets={"nope.weight": 1})
    with pytest.raises(RankSearchError, match="no weight"):
        measure_bytes(torch.nn.BatchNorm1d(4))


@pytest.mark.parametrize("kind", ["linear", "conv", "convtranspose"])
def test_load_matrices_inverts_matrices(kind):
    from ranksearch.core._layers import build_low_rank

    dense = {"linear": torch.nn.Linear(12, 8), "conv": torch.nn.Conv2d(4, 6, 3),
             "convtranspose": torch.nn.ConvTranspose2d(5, 7, 3)}[kind]
    m, n = (8, 12) if kind == "linear" else (6, 36) if kind == "conv" else (5, 63)
    pair = build_low_rank(dense, torch.randn(m, 3), torch.randn(3, n))
    g, h = torch.randn(m, 3), torch.randn(3, n)
    pair.load_matrices(g, h)
    got_g, got_h = pair.matrices()
    assert torch.equal(got_g, g) and torch.equal(got_h, h)


def test_a_table_that_misses_the_encoder_still_lands_the_stream_within_2_percent(models):
    """The refits and then one step at a time against the encoder: even a table that over-counts every unit by 40%
    (and so aims far too low) ends within 2% of the budget, and never over it."""
    import dataclasses

    for model in models:
        table = measure_bytes(model)
        off = dataclasses.replace(table, size=(table.size * 1.4).astype(np.int64))
        budget = int(0.3 * len(encode(model)))
        coded = fit_bytes(model, budget, table=off)
        assert 0.98 * budget <= coded.bytes == len(coded.stream) <= budget
        assert len(encode(model, qps={**coded.qps, **coded.other_qps})) == coded.bytes


def test_a_task_decides_the_folds_and_the_weights_of_the_fit(models):
    """``fit_bytes(task=...)``: the batch norms that fold on the task's data are folded, and errors weighted by its Fisher
    information, exactly as when both are given."""
    from torch.utils.data import TensorDataset

    from ranksearch.core._fold import task_folds
    from ranksearch.core._task import Task

    dense, _ = models
    data = TensorDataset(torch.randn(64, 3, 4, 4), torch.randint(0, 10, (64,)))
    task = Task(data, data, data, "cross_entropy", "accuracy")
    budget = len(encode(dense)) // 3
    folds = task_folds(dense, task)
    assert folds == {"0": "1"}
    given = fit_bytes(dense, budget, folds=folds, sensitivity=fisher(dense, task, folds=folds))
    owned = fit_bytes(dense, budget, task=task)
    assert owned.stream == given.stream and owned.folds == folds and owned.qps == given.qps
    assert fit_bytes(dense, budget).folds == {}  # without a task nothing is folded
