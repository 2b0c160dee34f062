"""Hostile and damaged input from Python, table-driven: a one-line RankSearchError, nothing written; and a real
journal corrupted at random places: it is read up to its last complete record, or refused in one line."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import torch

import ranksearch
from ranksearch import Components, RankConfig, RunOptions, SearchSettings, Task, apply, load_factorized, run_worker, search, search_points
from ranksearch.core import call
from ranksearch.errors import RankSearchError
from ranksearch.results import write_model
from ranksearch.spaces import load_space
from ranksearch.study import open_storage


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))


def _ev(m: torch.nn.Module) -> float:
    return 0.5


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished search on a small network, and damaged files."""
    root = tmp_path_factory.mktemp("hostile")
    search(_net(), SearchSettings(0.5, sampler="random"), evaluate=_ev, run=RunOptions(n_trials=3, out_dir=root / "done"))
    (root / "a_file").write_text("x\n")
    (root / "folder").mkdir()
    (root / "deep.json").write_text("[" * 5000 + "]" * 5000)
    (root / "garbage.journal").write_bytes(b"{not json\n" + (root / "done" / "study.journal").read_bytes())
    (root / "binary.yaml").write_bytes(bytes(range(256)))
    other = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    (root / "other.json").write_text(json.dumps(ranksearch.solve(other, 0.6).to_dict()))
    return root


def _cuda(available: bool, make: Callable[[], object]) -> object:
    """Run make as on a host with or without CUDA, so a case reads the same on every machine."""
    real = torch.cuda.is_available
    torch.cuda.is_available = lambda: available  # type: ignore[assignment]
    try:
        return make()
    finally:
        torch.cuda.is_available = real  # type: ignore[assignment]


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


CASES: list[tuple[str, Callable[[Path], object], str]] = [  # (id, call on the folder, words of the one line)
    ("model-is-a-string", lambda r: search("a string", 0.5, evaluate=_ev), "torch.nn.Module"),  # type: ignore[arg-type]
    ("worker-model-is-none", lambda r: run_worker(None, RunOptions(storage=str(r / "done" / "study.journal"), study_name="x")),  # type: ignore[arg-type]
     "torch.nn.Module"),
    ("out-under-a-file", lambda r: search(_net(), 0.5, evaluate=_ev, run=RunOptions(out_dir=r / "a_file" / "sub")), "under the file"),
    ("out-is-a-file", lambda r: search(_net(), 0.5, evaluate=_ev, run=RunOptions(out_dir=r / "a_file")), "is a file"),
    ("out-empty", lambda r: RunOptions(out_dir=""), "empty"),
    ("task-and-evaluate", lambda r: search(_net(), 0.5, evaluate=_ev, task=object()), "either task"),  # type: ignore[arg-type]
    ("neither", lambda r: search(_net(), 0.5), "either task"),
    ("gpus-without-cuda", lambda r: _cuda(False, lambda: search(_net(), 0.5, evaluate=_ev, run=RunOptions(workers=2, gpus=("0",)))),
     "no CUDA"),
    ("gpus-one-process", lambda r: _cuda(True, lambda: search(_net(), 0.5, evaluate=_ev, run=RunOptions(gpus=("0",)))), "workers"),
    ("no-cap-no-timeout", lambda r: search(_net(), 0.5, evaluate=_ev, run=RunOptions(n_trials=None)), "never ends"),
    ("points-repeat", lambda r: search_points(_net(), [0.5, 0.500000001], evaluate=_ev), "repeat"),
    ("points-none", lambda r: search_points(_net(), [], evaluate=_ev), "at least one"),
    ("warm-start-other-layers", lambda r: search(_net(), 0.5, evaluate=_ev, given=Components(warm_start=[{"9": 1.0}])), "warm_start"),
    ("unreachable", lambda r: search(_net(), 0.0001, evaluate=_ev), "unreachable"),
    ("seed-too-big", lambda r: SearchSettings(0.5, seed=2**40), "seed"),
    ("old-spelling", lambda r: SearchSettings(0.5, factors="data-aware"), "data_aware"),
    ("grace-below-heartbeat", lambda r: RunOptions(heartbeat=9, grace=3), "grace"),
    ("settings-not-settings", lambda r: SearchSettings.from_dict({"format": "x"}), "not ranksearch search settings"),
    ("worker-without-storage", lambda r: run_worker(_net(), RunOptions()), "storage"),
    ("worker-unknown-study", lambda r: run_worker(_net(), RunOptions(storage=str(r / "done" / "study.journal"), study_name="x"),
                                                  evaluate=_ev), "not in this storage"),
    ("config-deep", lambda r: RankConfig.load(r / "deep.json"), "nests deeper"),
    ("config-folder", lambda r: RankConfig.load(r / "folder"), "is a folder"),
    ("config-other-model", lambda r: apply(_net(), RankConfig.load(r / "other.json")), "parameters"),
    ("weights-folder", lambda r: load_factorized(_net(), RankConfig.load(r / "done" / "rank_config.json"), r / "folder"), "is a folder"),
    ("journal-garbage", lambda r: open_storage(str(r / "garbage.journal")), "damaged at record 1"),
    ("space-binary", lambda r: load_space(r / "binary.yaml"), "not text"),
    ("task-bad-loss", lambda r: Task([1], [1], [1], loss="hinge", metric="accuracy"), "hinge"),  # type: ignore[arg-type]
    ("call-neither-way", lambda r: call(torch.nn.Bilinear(2, 2, 2), {"z": torch.zeros(1, 2)}), "forward="),
    ("format-unknown", lambda r: write_model(_net(), r / "m.tflite", "tflite"), "tflite"),
]


@pytest.mark.parametrize("make, words", [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_bad_python_input_is_one_line_and_writes_nothing(root, make, words):
    before = _snapshot(root)
    with pytest.raises(RankSearchError) as e:
        make(root)
    assert "\n" not in str(e.value) and words in str(e.value), str(e.value)
    assert _snapshot(root) == before


def _trials(path: Path) -> list[tuple[int, str, float | None]]:
    study = optuna.load_study(study_name="Sequential@0.5", storage=open_storage(str(path)))
    return [(t.number, t.state.name, t.value) for t in study.trials]


@pytest.mark.parametrize("seed", range(60))
def test_a_journal_damaged_anywhere_is_read_to_its_last_complete_record_or_refused(root, tmp_path, seed):
    """A crash cuts the journal anywhere (read to its last complete record, the file as it was kept beside
    it); a flipped or inserted byte is read (when the record is still one) or refused in one line."""
    original = (root / "done" / "study.journal").read_bytes()
    done = {n: (s, v) for n, s, v in _trials(root / "done" / "study.journal")}
    rng = random.Random(seed)
    at = rng.randrange(1, len(original))
    kind = ("cut", "flip", "insert")[seed % 3]
    data = {"cut": original[:at],
            "flip": original[:at] + bytes([original[at] ^ (1 << rng.randrange(8))]) + original[at + 1:],
            "insert": original[:at] + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9))) + original[at:]}[kind]
    path = tmp_path / "study.journal"
    path.write_bytes(data)
    try:
        trials = _trials(path)
    except RankSearchError as e:
        assert kind != "cut" or at < len(original) and b"\n" in original[at:], "a cut is always read"
        assert "\n" not in str(e) and str(path) in str(e)
        return
    except KeyError:  # the cut fell before the study's own record: there is no study in it yet
        assert kind == "cut"
        return
    assert {n for n, _, _ in trials} <= set(done), "a damaged journal never reads as trials the study did not have"
    if kind == "cut":  # the complete records before the cut, exactly (a last record that only lost its newline: kept)
        complete = original[: original[:at].rfind(b"\n") + 1]
        assert path.read_bytes() in (complete, data, data + b"\n") and (data == complete or list(tmp_path.glob("study.journal.torn-*")))
        for number, state, value in trials:
            if state in ("COMPLETE", "PRUNED"):
                assert done[number] == (state, value)
    else:  # a flipped or inserted byte that left the records parseable: what was finished reads back finished
        finished = [n for n, s, _ in trials if s in ("COMPLETE", "PRUNED")]
        assert all(done[n][0] in ("COMPLETE", "PRUNED") for n in finished)
