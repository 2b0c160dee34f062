"""Bad input through the CLI, table-driven: exit code 2, one stderr line, no traceback, nothing written.

Every case runs in-process in a folder holding a finished search (``done/``); afterwards no file in the
folder may be new or changed (the spectra and dense-weight caches live elsewhere).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from ranksearch import load_space
from ranksearch.cli import main
from ranksearch.core._weights import save_state_dict

BASE = ["search", "--space", "tiny-digits", "--trials", "1", "--epochs", "1"]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a finished search at 0.3 (done/), weights of another model, broken files."""
    root = tmp_path_factory.mktemp("errors")
    assert main([*BASE, "--ratio", "0.3", "--out", str(root / "done"), "-q"]) == 0
    save_state_dict(load_space("tiny-digits").with_weights(None).build_model().state_dict(), root / "tiny.safetensors")
    other = torch.nn.Sequential(torch.nn.Linear(4, 4))
    torch.save(other.state_dict(), root / "other.pt")
    (root / "text.pt").write_text("not a state dict\n")
    (root / "empty.pt").write_bytes(b"")
    (root / "renamed.pt").write_bytes((root / "tiny.safetensors").read_bytes())
    (root / "a_file").write_text("x\n")
    (root / "folder").mkdir()
    (root / "bad.yaml").write_text("format: ranksearch.space\nformat_version: 1\nname: [unclosed\n")
    space = load_space("tiny-digits").path.read_text()
    (root / "raises.yaml").write_text(space.replace("width: 8", "width: eight").replace("name: tiny-digits", "name: raises"))
    cfg = json.loads((root / "done" / "rank_config.json").read_text())
    (root / "list_ranks.json").write_text(json.dumps({**cfg, "ranks": list(cfg["ranks"].values())}))
    (root / "list_layers.json").write_text(json.dumps({**cfg, "layers": list(cfg["layers"].values())}))
    (root / "str_source.json").write_text(json.dumps({**cfg, "source": "tiny-digits"}))
    (root / "str_matrix.json").write_text(json.dumps({**cfg, "layers": {k: {**v, "matrix": "64x1024"} for k, v in cfg["layers"].items()}}))
    grow = {k: {**v, "rank": v["matrix"][0], "params_after": v["matrix"][0] * sum(v["matrix"])} for k, v in cfg["layers"].items()}
    after = cfg["original_params"] - sum(v["params_before"] - v["params_after"] for v in grow.values())
    (root / "grow.json").write_text(json.dumps({**cfg, "layers": grow, "ranks": {k: v["rank"] for k, v in grow.items()},
                                                "compressed_params": after, "achieved_ratio": after / cfg["original_params"],
                                                "target_ratio": min(1.0, after / cfg["original_params"])}))
    (root / "not_json.json").write_text("{ nope")
    _damaged_files(root, cfg)
    return root


def _damaged_files(root: Path, cfg: dict) -> None:
    """Journals, configs, results files and spaces as a crash, a bad copy or a hand edit leaves them."""
    journal = (root / "done" / "study.journal").read_bytes()
    lines = journal.split(b"\n")
    (root / "garbage.journal").write_bytes(b"\n".join([*lines[:3], b"xx{not json", *lines[3:]]))
    (root / "binary.journal").write_bytes(bytes(range(256)) * 4)
    (root / "badop.journal").write_bytes(journal + b'{"op_code": 99, "worker_id": "x"}\n')
    (root / "middle.journal").write_bytes(journal[: len(journal) // 2] + b"\n" + journal[len(journal) // 2 + 40:])
    (root / "text.journal").write_text("a journal? no: notes\n")
    layers = cfg["layers"]
    name = next(iter(layers))
    (root / "other_matrix.json").write_text(json.dumps({**cfg, "layers": {**layers, name: {**layers[name], "matrix": [
        layers[name]["matrix"][0] + 1, layers[name]["matrix"][1]]}}}))
    (root / "rank_too_big.json").write_text(json.dumps({**cfg, "layers": {**layers, name: {**layers[name], "rank": 9999}},
                                                        "ranks": {**cfg["ranks"], name: 9999}}))
    (root / "bad_factors.json").write_text(json.dumps({**cfg, "search": {**cfg["search"], "factors": "whitened"}}))
    (root / "list_factors.json").write_text(json.dumps({**cfg, "search": {**cfg["search"], "factors": ["plain"]}}))
    (root / "bad_cost.json").write_text(json.dumps({**cfg, "cost": {"input_shape": "1x8x8"}}))
    (root / "str_dense.json").write_text(json.dumps({**cfg, "dense": {"0": 7}}))
    (root / "deep.json").write_text("[" * 5000 + "]" * 5000)
    (root / "nested.json").write_text(json.dumps({**cfg, "search": {"a": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}}))
    (root / "binary.yaml").write_bytes(bytes(range(256)))
    (root / "custom.yaml").write_text(load_space("tiny-digits").path.read_text().replace("name: tiny-digits", "name: custom-x"))
    (root / "from_file.json").write_text(json.dumps({**cfg, "source": {**cfg["source"], "space": "custom-x",
                                                                       "space_file": str(root / "custom.yaml")}}))
    for folder, file, text in (("bad_curves", "curves.json", '{"0": 5}'), ("bad_trials", "trials.json", '{"trials": [{"number": "x"}]}'),
                               ("deep_trials", "trials.json", "[" * 5000 + "]" * 5000)):
        (root / folder).mkdir()
        for f in ("rank_config.json", "rank_config_seed_rule.json", "trials.json", "curves.json"):
            (root / folder / f).write_bytes((root / "done" / f).read_bytes())
        (root / folder / file).write_text(text)
    (root / "settings_bad.yaml").write_text("sprad: 2\n")
    (root / "settings_pareto_text.yaml").write_text("pareto: '0.3,0.1'\n")
    _empty_study(root)
    import shutil  # a copy of the study whose artifact folder holds another model's weights

    shutil.copytree(root / "done" / "artifacts", root / "other_artifacts")
    for f in (root / "other_artifacts").iterdir():
        f.write_bytes((root / "tiny.safetensors").read_bytes())


def _empty_study(root: Path) -> None:
    """A study created from the space with no trial finished yet."""
    from ranksearch import SearchSettings
    from ranksearch.study._join import create_or_join
    from ranksearch.study._storage import open_storage, release

    store = open_storage(str(root / "empty.journal"))
    try:
        create_or_join(store, "tiny-digits@0.3", SearchSettings(0.3, model="tiny-digits", space="tiny-digits"), resume=False,
                       source={"space": "tiny-digits"})
    finally:
        release(store)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


R = "{root}"


def _apply(case: str, config: str, words: list[str]) -> tuple[str, list[str], list[str]]:
    """A case of ``apply`` on the config file ``config`` (in the work folder)."""
    return f"apply-{case}", ["apply", "--space", "tiny-digits", "--config", f"{R}/{config}", "--out", f"{R}/o.st"], words


def _onnx(case: str, config: str, words: list[str], *extra: str) -> tuple[str, list[str], list[str]]:
    """A case of ``export --config CONFIG --format onnx`` with ``extra`` flags."""
    return f"export-config-{case}", ["export", "--config", f"{R}/{config}", *extra, "--format", "onnx", "--out", f"{R}/m.onnx"], words


CASES = [  # (id, argv with {root}, words the one line must hold)
    ("ratio-above-one", [*BASE, "--ratio", "1.5", "--out", f"{R}/o"], ["1.5", "(0, 1)"]),
    ("ratio-one", [*BASE, "--ratio", "1.0", "--out", f"{R}/o"], ["1.0", "keep everything"]),
    ("ratio-zero", [*BASE, "--ratio", "0", "--out", f"{R}/o"], ["ratio 0"]),
    ("ratio-text", [*BASE, "--ratio", "abc", "--out", f"{R}/o"], ["'abc'"]),
    ("ratio-unreachable", [*BASE, "--ratio", "0.001", "--out", f"{R}/o"], ["unreachable", "0.001"]),
    ("ratio-twice", [*BASE, "--ratio", "0.3,0.3", "--out", f"{R}/o"], ["repeat"]),
    ("ratio-nearly-twice", [*BASE, "--ratio", "0.1,0.100000001", "--out", f"{R}/o"], ["repeat"]),
    ("wp-unknown", [*BASE, "--wp", "WP9", "--out", f"{R}/o"], ["WP9", "WP1"]),
    ("trials-zero", [*BASE[:-4], "--trials", "0", "--ratio", "0.2", "--out", f"{R}/o"], ["--trials 0"]),
    ("timeout-nan", [*BASE, "--ratio", "0.2", "--timeout", "nan", "--out", f"{R}/o"], ["--timeout nan"]),
    ("timeout-negative", [*BASE, "--ratio", "0.2", "--timeout", "-5", "--out", f"{R}/o"], ["--timeout -5"]),
    ("timeout-inf", [*BASE, "--ratio", "0.2", "--timeout", "inf", "--out", f"{R}/o"], ["--timeout inf"]),
    ("workers-zero", [*BASE, "--ratio", "0.2", "--workers", "0", "--out", f"{R}/o"], ["--workers 0"]),
    ("spread-zero", [*BASE, "--ratio", "0.2", "--spread", "0", "--out", f"{R}/o"], ["spread 0"]),
    ("spread-nan", [*BASE, "--ratio", "0.2", "--spread", "nan", "--out", f"{R}/o"], ["spread nan"]),
    ("step-too-long", [*BASE, "--ratio", "0.2", "--step", "2", "--out", f"{R}/o"], ["step 2.0", "log2"]),
    ("screen-past-epoch", [*BASE, "--ratio", "0.2", "--screen", "1.5", "--out", f"{R}/o"], ["screen 1.5"]),
    ("keep-zero", [*BASE, "--ratio", "0.2", "--keep", "0", "--out", f"{R}/o"], ["keep 0.0"]),
    ("screen-samples-negative", [*BASE, "--ratio", "0.2", "--screen-samples", "-5", "--out", f"{R}/o"], ["--screen-samples -5"]),
    ("seed-negative", [*BASE, "--ratio", "0.2", "--seed", "-1", "--out", f"{R}/o"], ["seed -1"]),
    ("epochs-negative", [*BASE[:-2], "--epochs", "-1", "--ratio", "0.2", "--out", f"{R}/o"], ["--epochs -1"]),
    ("distill-two", [*BASE, "--ratio", "0.2", "--distill", "2", "--out", f"{R}/o"], ["distill", "[0, 1]"]),
    ("rank-multiple-zero", [*BASE, "--ratio", "0.2", "--rank-multiple", "0", "--out", f"{R}/o"], ["--rank-multiple 0"]),
    ("out-empty", [*BASE, "--ratio", "0.2", "--out", ""], ["--out is empty"]),
    ("out-is-file", [*BASE, "--ratio", "0.2", "--out", f"{R}/a_file"], ["is a file"]),
    ("out-under-file", [*BASE, "--ratio", "0.2", "--out", f"{R}/a_file/sub"], ["under the file"]),
    ("out-finished", [*BASE, "--ratio", "0.3", "--out", f"{R}/done"], ["already holds", "--resume"]),
    ("out-other-study", [*BASE, "--ratio", "0.2", "--out", f"{R}/done", "--resume"], ["tiny-digits@0.3", "tiny-digits@0.2"]),
    ("resume-other-settings", [*BASE, "--ratio", "0.3", "--spread", "1", "--out", f"{R}/done", "--resume"], ["spread=3.0"]),
    ("storage-folder", [*BASE, "--ratio", "0.2", "--storage", f"{R}/folder", "--out", f"{R}/o"], ["is a folder"]),
    ("storage-under-file", [*BASE, "--ratio", "0.2", "--storage", f"{R}/a_file/s.journal", "--out", f"{R}/o"], ["under the file"]),
    ("storage-scheme", [*BASE, "--ratio", "0.2", "--storage", "nosuchdb://x/y", "--out", f"{R}/o"], ["nosuchdb"]),
    ("storage-driver", [*BASE, "--ratio", "0.2", "--storage", "mysql://u@127.0.0.1/db", "--out", f"{R}/o"], ["driver", "pip install"]),
    ("storage-refused", [*BASE, "--ratio", "0.2", "--storage", "postgresql://u@127.0.0.1:1/db", "--out", f"{R}/o"],
     ["cannot be reached", "database server"]),
    ("artifacts-is-file", [*BASE, "--ratio", "0.2", "--artifacts", f"{R}/a_file", "--out", f"{R}/o"], ["--artifacts", "is a file"]),
    ("space-unknown", ["search", "--space", "no-such-space", *BASE[3:], "--ratio", "0.2", "--out", f"{R}/o"], ["no-such-space", "mnist5k-cnn"]),
    ("space-bad-yaml", ["solve", "--space", f"{R}/bad.yaml", "--ratio", "0.2", "--out", f"{R}/o.json"], ["not valid YAML"]),
    ("factory-raises", ["solve", "--space", f"{R}/raises.yaml", "--ratio", "0.2", "--out", f"{R}/o.json"], ["tinyspace:build_model", "raised"]),
    ("weights-other-model", [*BASE, "--ratio", "0.2", "--weights", f"{R}/other.pt", "--out", f"{R}/o"], ["does not fit", "tiny-digits"]),
    ("weights-text", [*BASE, "--ratio", "0.2", "--weights", f"{R}/text.pt", "--out", f"{R}/o"], ["corrupt"]),
    ("weights-empty", [*BASE, "--ratio", "0.2", "--weights", f"{R}/empty.pt", "--out", f"{R}/o"], ["corrupt"]),
    ("weights-renamed", [*BASE, "--ratio", "0.2", "--weights", f"{R}/renamed.pt", "--out", f"{R}/o"], ["corrupt"]),
    ("weights-missing", [*BASE, "--ratio", "0.2", "--weights", f"{R}/none.pt", "--out", f"{R}/o"], ["does not exist"]),
    ("solve-negative-bound", ["solve", "--space", "tiny-digits", "--mse-bound", "-1", "--out", f"{R}/o.json"], ["--mse-bound -1"]),
    ("solve-nan-bound", ["solve", "--space", "tiny-digits", "--mse-bound", "nan", "--out", f"{R}/o.json"], ["--mse-bound nan"]),
    ("solve-out-folder", ["solve", "--space", "tiny-digits", "--ratio", "0.2", "--out", f"{R}/folder"], ["is a folder"]),
    _apply("list-ranks", "list_ranks.json", ["'ranks'"]),
    _apply("list-layers", "list_layers.json", ["'layers'"]),
    _apply("str-source", "str_source.json", ["'source'"]),
    _apply("str-matrix", "str_matrix.json", ["matrix"]),
    _apply("not-json", "not_json.json", ["not valid JSON"]),
    _apply("missing", "none.json", ["does not exist"]),
    _apply("growth", "grow.json", ["--allow-growth"]),
    ("worker-no-storage", ["worker", "--storage", f"{R}/none.journal", "--study-name", "x"], ["does not exist"]),
    ("worker-unknown-study", ["worker", "--storage", f"{R}/done/study.journal", "--study-name", "x"], ["'x' is not in this storage"]),
    ("export-unknown-study", ["export", "--storage", f"{R}/done/study.journal", "--study-name", "x", "--out", f"{R}/o"],
     ["'x' is not in this storage"]),
    ("export-artifacts-missing", ["export", "--storage", f"{R}/done/study.journal", "--study-name", "tiny-digits@0.3", "--out",
                                  f"{R}/o", "--artifacts", f"{R}/nope"], ["--artifacts", "does not exist"]),
    ("export-artifacts-wrong", ["export", "--storage", f"{R}/done/study.journal", "--study-name", "tiny-digits@0.3", "--out",
                                f"{R}/o", "--artifacts", f"{R}/folder"], ["not in the artifact folder", "--artifacts"]),
    ("export-out-is-file", ["export", "--storage", f"{R}/done/study.journal", "--study-name", "tiny-digits@0.3", "--out", f"{R}/a_file"],
     ["is a file"]),
    ("export-neither", ["export", "--out", f"{R}/o"], ["--storage and --study-name", "--config"]),
    ("export-format-with-study", ["export", "--storage", f"{R}/done/study.journal", "--study-name", "tiny-digits@0.3", "--format", "onnx",
                                  "--out", f"{R}/o"], ["--format", "only go with --config"]),
    ("export-config-and-study", ["export", "--config", f"{R}/done/rank_config.json", "--storage", f"{R}/done/study.journal",
                                 "--format", "onnx", "--out", f"{R}/m.onnx"], ["--storage", "one or the other"]),
    ("export-config-no-format", ["export", "--config", f"{R}/done/rank_config.json", "--out", f"{R}/m.onnx"], ["needs --format", "onnx"]),
    ("export-unknown-format", ["export", "--config", f"{R}/done/rank_config.json", "--format", "tflite", "--out", f"{R}/m.tflite"],
     ["--format", "'tflite'", "onnx"]),
    _onnx("not-json", "not_json.json", ["not valid JSON"]),
    _onnx("missing", "none.json", ["does not exist"]),
    _onnx("list-ranks", "list_ranks.json", ["'ranks'"]),
    ("export-config-out-folder", ["export", "--config", f"{R}/done/rank_config.json", "--format", "onnx", "--out", f"{R}/folder"],
     ["is a folder"]),
    _onnx("other-space", "done/rank_config.json", ["tiny-digits", "mnist5k-cnn"], "--space", "mnist5k-cnn"),
    _onnx("dense-weights", "done/rank_config.json", ["do not fit", "missing", "saved beside it"], "--weights", f"{R}/tiny.safetensors"),
    _onnx("other-weights", "done/rank_config.json", ["do not fit"], "--weights", f"{R}/other.pt"),
    _onnx("corrupt-weights", "done/rank_config.json", ["corrupt"], "--weights", f"{R}/renamed.pt"),
    _onnx("growth", "grow.json", ["--allow-growth"]),
    # damaged journals: refused before anything is read into a study or written
    *[(f"{cmd}-journal-{kind}", argv, words) for kind, words in (("garbage", ["damaged at record 4", "not JSON"]),
                                                                 ("binary", ["damaged at record 1"]),
                                                                 ("badop", ["cannot be read", "badop.journal"]),
                                                                 ("middle", ["damaged at record"]),
                                                                 ("text", ["damaged at record 1", "not JSON"]))
      for cmd, argv in (("worker", ["worker", "--storage", f"{R}/{kind}.journal", "--study-name", "tiny-digits@0.3"]),
                        ("export", ["export", "--storage", f"{R}/{kind}.journal", "--study-name", "tiny-digits@0.3", "--out", f"{R}/o"]),
                        ("resume", [*BASE, "--ratio", "0.3", "--storage", f"{R}/{kind}.journal", "--out", f"{R}/o", "--resume"]))],
    # configs that do not fit the model, or are not configs
    _apply("other-matrix", "other_matrix.json", ["matrix but the config says"]),
    _apply("rank-too-big", "rank_too_big.json", ["9999"]),
    _apply("bad-factors", "bad_factors.json", ["'whitened'"]),
    _apply("list-factors", "list_factors.json", ["['plain']"]),
    _apply("bad-cost", "bad_cost.json", ["'cost'"]),
    _apply("str-dense", "str_dense.json", ["'dense'"]),
    _apply("deep-json", "deep.json", ["nests deeper"]),
    _apply("nested-json", "nested.json", ["levels deep"]),
    _onnx("deep", "deep.json", ["nests deeper"]),
    _onnx("space-file", "from_file.json", ["custom.yaml", "--trust-space", "--space"]),
    ("export-qp-range", ["export", "--config", f"{R}/done/rank_config.json", "--format", "nnr", "--qp", "1000", "--out", f"{R}/m.nnr"],
     ["qp 1000", "[-128, 127]"]),
    # results files and spaces
    ("report-bad-curves", ["report", f"{R}/bad_curves"], ["curves.json", "layer '0'"]),
    ("report-bad-trials", ["report", f"{R}/bad_trials"], ["trials.json", "trial entry 0"]),
    ("report-deep-trials", ["report", f"{R}/deep_trials"], ["trials.json", "nests deeper"]),
    ("report-nothing", ["report", f"{R}/folder"], ["holds no search result"]),
    ("space-binary", ["solve", "--space", f"{R}/binary.yaml", "--ratio", "0.2", "--out", f"{R}/o.json"], ["not text"]),
    ("data-for-shipped-data", ["solve", "--space", "mnist5k-cnn", "--data", f"{R}/folder", "--ratio", "0.2", "--out", f"{R}/o.json"],
     ["--data", "ships with it"]),
    ("weights-folder", [*BASE, "--ratio", "0.2", "--weights", f"{R}/folder", "--out", f"{R}/o"], ["is a folder"]),
    # flags that mean nothing here
    ("solve-latency-zero", ["solve", "--space", "tiny-digits", "--ratio", "0.5", "--latency", "0", "--out", f"{R}/rc.json"], ["--latency 0"]),
    ("latency-zero", [*BASE, "--ratio", "0.2", "--latency", "0", "--out", f"{R}/o"], ["--latency 0", "(0, 1]"]),
    ("latency-above-one", [*BASE, "--ratio", "0.2", "--latency", "1.5", "--out", f"{R}/o"], ["--latency 1.5"]),
    ("runtime-unknown", [*BASE, "--ratio", "0.2", "--latency", "1", "--runtime", "tflite", "--out", f"{R}/o"], ["tflite", "onnxruntime"]),
    ("latency-batch-zero", [*BASE, "--ratio", "0.2", "--latency", "1", "--latency-batch", "0", "--out", f"{R}/o"], ["--latency-batch 0"]),
    ("pareto-one-point", [*BASE, "--ratio", "0.2", "--pareto", "--out", f"{R}/o"], ["--pareto spans two working points"]),
    ("pareto-cmaes", [*BASE, "--ratio", "0.3,0.1", "--pareto", "--sampler", "cmaes", "--out", f"{R}/o"], ["optimizes one objective"]),
    ("pareto-median", [*BASE, "--ratio", "0.3,0.1", "--pareto", "--pruner", "median", "--out", f"{R}/o"],
     ["Optuna prunes no multi-objective"]),
    ("pareto-latency-and-pareto", [*BASE, "--ratio", "0.3,0.1", "--pareto", "--pareto-latency", "1,0.8", "--out", f"{R}/o"],
     ["--pareto-latency", "leave --pareto"]),
    ("pareto-latency-two-ratios", [*BASE, "--ratio", "0.3,0.1", "--pareto-latency", "1,0.8", "--out", f"{R}/o"], ["one ratio or none"]),
    ("pareto-latency-above-one", [*BASE, "--pareto-latency", "1.5,0.8", "--out", f"{R}/o"], ["latency fraction 1.5", "(0, 1]"]),
    ("pareto-latency-one-point", [*BASE, "--pareto-latency", "0.9", "--out", f"{R}/o"], ["two working points or more"]),
    ("export-trial-missing", ["export", "--storage", f"{R}/done/study.journal", "--study-name", "tiny-digits@0.3", "--trial", "99",
                              "--out", f"{R}/o"], ["Trial 99", "not in it", "one of the front"]),
    ("export-trial-with-config", ["export", "--config", f"{R}/done/rank_config.json", "--format", "onnx", "--trial", "0",
                                  "--out", f"{R}/o.onnx"], ["--trial", "belong to a study's export"]),
    ("gpus-without-cuda", [*BASE, "--ratio", "0.2", "--workers", "2", "--gpus", "0", "--out", f"{R}/o"], ["no CUDA device"]),
    ("seed-too-big", [*BASE, "--ratio", "0.2", "--seed", str(2**70), "--out", f"{R}/o"], ["--seed", "2**32"]),
    ("grace-below-heartbeat", [*BASE, "--ratio", "0.2", "--heartbeat", "9", "--grace", "5", "--out", f"{R}/o"], ["grace"]),
    ("settings-pareto-text", [*BASE, "--settings", f"{R}/settings_pareto_text.yaml", "--out", f"{R}/o"], ["pareto", "list of numbers"]),
    ("settings-unknown-field", [*BASE, "--ratio", "0.2", "--settings", f"{R}/settings_bad.yaml", "--out", f"{R}/o"], ["sprad"]),
    ("settings-missing", [*BASE, "--ratio", "0.2", "--settings", f"{R}/none.yaml", "--out", f"{R}/o"], ["does not exist"]),
    ("export-before-any-trial", ["export", "--storage", f"{R}/empty.journal", "--study-name", "tiny-digits@0.3", "--out", f"{R}/o"],
     ["No trial", "completed yet"]),
    ("export-artifacts-of-another-model", ["export", "--storage", f"{R}/done/study.journal", "--study-name", "tiny-digits@0.3",
                                           "--artifacts", f"{R}/other_artifacts", "--out", f"{R}/o"], ["do not fit", "another study"]),
    ("heartbeat-negative-journal", [*BASE, "--ratio", "0.2", "--heartbeat", "-1", "--out", f"{R}/o"], ["--heartbeat -1"]),
    ("worker-heartbeat-zero", ["worker", "--storage", f"{R}/done/study.journal", "--study-name", "tiny-digits@0.3", "--heartbeat", "0"],
     ["--heartbeat 0"]),
]


@pytest.mark.parametrize("argv, words", [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(work, capsys, monkeypatch, argv, words):
    monkeypatch.chdir(work)  # a relative or empty path would land here, where the snapshot sees it
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answers on a GPU host
    monkeypatch.setitem(sys.modules, "MySQLdb", None)  # ... and on one with the mysql driver installed
    before = _snapshot(work)
    args = [a.replace(R, str(work)) for a in argv]
    try:
        code = main(args)
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and lines[-1] == errors[0] and errors[0].startswith("ranksearch"), lines
    for w in words:
        assert w in errors[0], errors[0]
    assert _snapshot(work) == before  # nothing new, nothing overwritten


def test_cache_folder_that_is_a_file_fails_before_any_training(work, capsys, monkeypatch):
    monkeypatch.setenv("RANKSEARCH_CACHE", str(work / "a_file"))
    before = _snapshot(work)
    assert main([*BASE, "--ratio", "0.2", "--out", str(work / "o")]) == 2
    err = capsys.readouterr().err
    assert "RANKSEARCH_CACHE" in err and "Traceback" not in err and "epoch" not in err
    assert _snapshot(work) == before


def test_debug_shows_the_traceback(work):
    with pytest.raises(Exception, match="does not fit"):
        main([*BASE, "--ratio", "0.2", "--weights", str(work / "other.pt"), "--out", str(work / "o"), "--debug"])


def test_at_least_eighty_cases():
    assert len(CASES) >= 80 and len({c[0] for c in CASES}) == len(CASES)


def test_apply_allows_growth_when_asked(work):
    out = work.parent / "grown.safetensors"
    assert main(["apply", "--space", "tiny-digits", "--config", str(work / "grow.json"), "--out", str(out), "--allow-growth"]) == 0
    assert out.is_file()
    os.remove(out)
