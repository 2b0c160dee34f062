"""Batches of any structure: tensors, tuples, dicts and a user forward, through calibration, sensitivity,
the built-in retrain and apply; a Hugging Face BertModel built from a small config (nothing downloaded)."""

from __future__ import annotations

from collections import namedtuple

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from ranksearch import RankConfig, RunOptions, SearchSettings, Task, apply, search
from ranksearch.core._calibrate import input_moments
from ranksearch.core._inputs import batch_len, call, first_samples, tensors, to_device
from ranksearch.core._retrain import RetrainSettings, evaluate, fit
from ranksearch.errors import ConfigError, RankSearchError

Pair = namedtuple("Pair", "a b")


def test_to_device_moves_every_tensor_and_keeps_the_structure():
    batch = {"ids": torch.ones(2, 3), "pair": Pair(torch.zeros(2), [torch.ones(1), 7]), "name": "x"}
    moved = to_device(batch, "meta")
    assert isinstance(moved, dict) and isinstance(moved["pair"], Pair) and isinstance(moved["pair"].b, list)
    assert moved["ids"].device.type == "meta" and moved["pair"].a.device.type == "meta" and moved["pair"].b[0].device.type == "meta"
    assert moved["pair"].b[1] == 7 and moved["name"] == "x"
    assert batch["ids"].device.type == "cpu"  # the input is not changed


class TwoInputs(nn.Module):
    """y = head(relu(a(x1)) + b(x2)): a model called as model(x1, x2)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(12, 24), nn.Linear(6, 24), nn.Linear(24, 3)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.a(x1)) + self.b(x2))


class Keywords(TwoInputs):
    def forward(self, *, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(left, right)


def test_call_dispatches_on_the_batch_structure():
    torch.manual_seed(0)
    x1, x2 = torch.randn(4, 12), torch.randn(4, 6)
    tuple_model, kw_model = TwoInputs(), Keywords()
    kw_model.load_state_dict(tuple_model.state_dict())
    expected = tuple_model(x1, x2)
    assert torch.equal(call(tuple_model, (x1, x2)), expected)
    assert torch.equal(call(tuple_model, [x1, x2]), expected)
    assert torch.equal(call(kw_model, {"left": x1, "right": x2}), expected)
    assert torch.equal(call(tuple_model, {"x": (x1, x2)}, forward=lambda m, b: m(*b["x"])), expected)
    assert torch.equal(call(nn.Identity(), x1), x1)
    with pytest.raises(RankSearchError, match="forward=") as e:
        call(tuple_model, 3)
    assert "\n" not in str(e.value)
    assert batch_len((x1, x2)) == 4 and batch_len({"left": x1}) == 4 and batch_len(x1) == 4


def test_input_moments_of_a_tuple_input_model_are_those_of_each_layers_inputs():
    torch.manual_seed(0)
    model = TwoInputs()
    batches = [(torch.randn(8, 12), torch.randn(8, 6)) for _ in range(3)]
    layers = {"a": model.a, "b": model.b, "head": model.head}
    moments = input_moments(model, layers, batches)
    x1 = torch.cat([b[0] for b in batches]).double()
    x2 = torch.cat([b[1] for b in batches]).double()
    torch.testing.assert_close(moments["a"], x1.T @ x1 / len(x1))
    torch.testing.assert_close(moments["b"], x2.T @ x2 / len(x2))
    hidden = torch.cat([torch.relu(model.a(b[0])) + model.b(b[1]) for b in batches]).detach().double()
    torch.testing.assert_close(moments["head"], hidden.T @ hidden / len(hidden))
    kw = Keywords()
    kw.load_state_dict(model.state_dict())
    as_dicts = input_moments(kw, {"a": kw.a, "b": kw.b, "head": kw.head}, [{"left": a, "right": b} for a, b in batches])
    for name in moments:
        torch.testing.assert_close(as_dicts[name], moments[name])


class PairData(Dataset):
    """((x1, x2), label): a linear rule of both inputs, learnable by TwoInputs."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x1, self.x2 = torch.randn(n, 12, generator=g), torch.randn(n, 6, generator=g)
        w = torch.randn(18, 3, generator=torch.Generator().manual_seed(99))
        self.y = (torch.cat([self.x1, self.x2], 1) @ w).argmax(1)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return (self.x1[i], self.x2[i]), self.y[i]


def _pair_task() -> Task:
    return Task(train=PairData(512, 0), val=PairData(256, 1), test=PairData(256, 2), loss="cross_entropy", metric="accuracy")


def test_built_in_retrain_and_search_take_tuple_inputs(tmp_path):
    torch.manual_seed(0)
    task = _pair_task()
    model = fit(TwoInputs(), task, RetrainSettings(epochs=30, batch_size=64, lr_start=0.02, lr_end=0.002), device=torch.device("cpu"))
    dense = evaluate(model, task.val, "accuracy", device=torch.device("cpu"))
    assert dense > 0.8  # it learned from (x1, x2) pairs
    settings = SearchSettings(target_ratio=0.5, retrain=RetrainSettings(epochs=1, batch_size=64, lr_start=0.01, lr_end=0.001))
    res = search(model, settings, task=task, run=RunOptions(n_trials=5, out_dir=tmp_path))
    assert res.config.achieved_ratio <= 0.5 and res.config.search["factors"] in ("data_aware", "plain")
    assert res.config.search["settings"]["factors"] == "data_aware"  # calibration ran on the tuple batches
    assert res.summary.best.val > 0.5


class Wrapped(Dataset):
    """A dataset of dicts the model cannot take as keywords: a user forward says how."""

    def __init__(self, inner: PairData) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int):
        (x1, x2), y = self.inner[i]
        return {"features": {"x1": x1, "x2": x2}}, y


def test_a_task_forward_says_how_the_model_takes_its_batch():
    torch.manual_seed(0)
    plain = _pair_task()
    task = Task(train=Wrapped(plain.train), val=Wrapped(plain.val), test=Wrapped(plain.test), loss="cross_entropy", metric="accuracy",
                forward=lambda m, b: m(b["features"]["x1"], b["features"]["x2"]))
    model = TwoInputs()
    a = evaluate(model, task.val, "accuracy", device=torch.device("cpu"), forward=task.forward)
    b = evaluate(model, plain.val, "accuracy", device=torch.device("cpu"))
    assert a == b
    with pytest.raises(RankSearchError, match="pass forward="):  # neither model(**{"features": ...}) nor model(batch) fits
        evaluate(model, task.val, "accuracy", device=torch.device("cpu"))


transformers = pytest.importorskip("transformers")


def _bert() -> nn.Module:
    cfg = transformers.BertConfig(vocab_size=120, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=96, max_position_embeddings=32)
    torch.manual_seed(0)
    return transformers.BertModel(cfg).eval()


def _token_batches(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 120, (16, 12), generator=g), "attention_mask": torch.ones(16, 12, dtype=torch.long)}
            for _ in range(n)]


def test_bert_model_searches_with_dict_batches_and_apply_rebuilds_its_factors(tmp_path):
    """The README's "Your Hugging Face model": calibration batches are tokenized dicts (model(**batch)),
    the metric is the cosine similarity of the pooled output to the dense model's."""
    bert = _bert()
    calibration, held_out = _token_batches(4, 0), _token_batches(2, 1)
    with torch.no_grad():
        reference = [bert(**b).pooler_output for b in held_out]

    @torch.no_grad()
    def similarity(model: nn.Module) -> float:
        model.eval()
        outs = [model(**b).pooler_output for b in held_out]
        return float(torch.cat([nn.functional.cosine_similarity(o, r) for o, r in zip(outs, reference)]).mean())

    settings = SearchSettings(target_ratio=0.6, seed=0)
    res = search(bert, settings, evaluate=similarity, calibration=calibration, run=RunOptions(n_trials=6, out_dir=tmp_path))
    cfg = res.config
    assert cfg.achieved_ratio <= 0.6 and len(cfg.ranks) >= 6
    assert cfg.search["settings"]["factors"] == "data_aware"
    cfg.save(tmp_path / "cfg.json")
    loaded = RankConfig.load(tmp_path / "cfg.json")
    # apply with the same calibration rebuilds the factors the trial scored
    assert loaded.search["factors"] == "data_aware"  # without retraining, output-aware factors win
    rebuilt = apply(bert, loaded, calibration=calibration)
    assert similarity(rebuilt) == pytest.approx(res.study.best_value, abs=1e-6)
    with pytest.raises(ConfigError, match="calibration") as e:
        apply(bert, loaded)
    assert "\n" not in str(e.value)
    plain = apply(bert, loaded, factors="plain")
    assert sum(p.numel() for p in plain.parameters()) == loaded.compressed_params


def test_tensors_and_first_samples_read_any_structure():
    out = {"logits": torch.ones(4, 3), "aux": (torch.zeros(4), torch.arange(4)), "name": "x"}
    found = tensors(out)
    assert [t.shape for t in found] == [(4, 3), (4,)]  # the integer tensor and the string are not outputs to compare
    batches = [{"ids": torch.arange(10).reshape(5, 2), "mask": torch.ones(5, 2)}, {"ids": torch.zeros(5, 2), "mask": torch.ones(5, 2)}]
    head = first_samples(batches, 7)
    assert [batch_len(b) for b in head] == [5, 2] and torch.equal(head[1]["ids"], torch.zeros(2, 2))
    assert first_samples(batches, 0) == batches and [batch_len(b) for b in first_samples([(torch.ones(3, 1), torch.ones(3))], 2)] == [2]


class FeatureDict(torch.nn.Module):
    """As a sentence-transformers model: its tokenized features come as one dict argument, ``model(features)``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = torch.nn.Linear(16, 32), torch.nn.Linear(16, 32), torch.nn.Linear(32, 4)

    def forward(self, features: dict) -> torch.Tensor:
        return self.head(torch.relu(self.a(features["left"]) + self.b(features["right"])))


def test_a_model_that_takes_its_dict_whole_is_searched_without_forward(tmp_path):
    """``model(**batch)`` does not bind: the batch is given whole, once found, and the search runs."""
    torch.manual_seed(0)
    model = FeatureDict()
    batches = [{"left": torch.randn(32, 16), "right": torch.randn(32, 16)} for _ in range(4)]
    with torch.no_grad():
        reference = [model(b) for b in batches]

    def agreement(m: torch.nn.Module) -> float:
        with torch.no_grad():
            return float(torch.cat([(m(b).argmax(1) == r.argmax(1)).float() for b, r in zip(batches, reference)]).mean())

    res = search(model, SearchSettings(0.5, sampler="random"), evaluate=agreement, calibration=batches, run=RunOptions(n_trials=3))
    assert res.config.search["settings"]["factors"] == "data_aware" and res.config.achieved_ratio <= 0.5


def test_a_model_that_takes_neither_is_told_about_forward():
    from ranksearch.core import call

    class Three(torch.nn.Module):
        def forward(self, a, b, c):
            return a

    with pytest.raises(RankSearchError, match=r"neither as model\(\*\*batch\).*pass forward="):
        call(Three(), {"z": torch.zeros(1)})


def test_a_type_error_inside_forward_is_the_model_s_own_and_forward_runs_once():
    """The calling convention is read from the signature, not guessed from a TypeError: one raised inside
    forward reaches the caller unchanged, after forward ran once."""
    from ranksearch.core import call

    class Buggy(torch.nn.Module):
        calls = 0

        def forward(self, left, right):
            Buggy.calls += 1
            return self.helper(left, right)

        def helper(self, x):
            return x

    with pytest.raises(TypeError, match="helper"):
        call(Buggy(), {"left": torch.zeros(1), "right": torch.zeros(1)})
    assert Buggy.calls == 1
    with pytest.raises(TypeError, match="helper"):
        call(Buggy(), (torch.zeros(1), torch.zeros(1)))
    assert Buggy.calls == 2
