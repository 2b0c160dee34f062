"""The command line, in-process: every command, its outputs, and one-line errors for bad input."""

from __future__ import annotations

import json

import optuna
import pytest

from ranksearch import RankConfig, count_params, load_factorized, load_space, solve
from ranksearch.cli import main
from ranksearch.core._weights import load_state_dict
from ranksearch.study._storage import open_storage

CONFIG_KEYS = {"format", "format_version", "model", "target_ratio", "achieved_ratio", "original_params",
               "compressed_params", "ranks", "layers", "metric", "search", "source"}


def _one_line_error(capsys: pytest.CaptureFixture[str], *words: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()  # progress lines may come before it
    errors = [line for line in err if "error:" in line]
    assert len(errors) == 1 and err[-1] == errors[0] and errors[0].startswith("ranksearch "), err
    for w in words:
        assert w in errors[0], errors[0]


@pytest.mark.parametrize("command", ["spectra", "solve", "search", "apply"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0 and "--space" in capsys.readouterr().out


def test_solve_then_apply(tmp_path, capsys):
    cfg_path = tmp_path / "rc.json"
    assert main(["solve", "--space", "tiny-digits", "--wp", "WP2", "--out", str(cfg_path)]) == 0
    assert "Param reduction:" in capsys.readouterr().out
    cfg = RankConfig.load(cfg_path)
    step = (64 + 1024) / cfg.original_params  # one rank of the only factorized layer, the FC
    assert 0.3 - step < cfg.achieved_ratio <= 0.3 and "0" not in cfg.ranks  # layer 0 is excluded
    out = tmp_path / "small.safetensors"
    assert main(["apply", "--space", "tiny-digits", "--config", str(cfg_path), "--out", str(out)]) == 0
    assert sum(t.numel() for t in load_state_dict(out).values()) == cfg.compressed_params


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_solve_at_a_latency_keeps_to_the_faster_ranks(tmp_path, capsys, runtime):
    """solve --latency: the CE1 rule within a timing table measured here; the config records the prediction."""
    cfg_path = tmp_path / "rc.json"
    assert main(["solve", "--space", "tiny-digits", "--ratio", "0.9", "--latency", "1.0", "--runtime", runtime, "--latency-batch", "4",
                 "--out", str(cfg_path)]) == 0
    cfg = RankConfig.load(cfg_path)
    lat = cfg.search["latency"]
    assert lat["runtime"] == runtime and lat["batch"] == 4 and lat["target"] == 1.0 and lat["predicted_ratio"] <= 1.0 + 1e-9
    assert cfg.achieved_ratio <= 0.9
    reasons = " ".join(cfg.dense.values())
    assert all(n in cfg.layers or n in cfg.dense for n in ("2", "5", "7"))  # each layer factorized, or dense with its reason
    assert "no pair runs faster" in reasons or len(cfg.layers) == 3


def test_spectra_writes_curves(tmp_path, capsys):
    out = tmp_path / "curves.json"
    assert main(["spectra", "--space", "tiny-digits", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data) == {"2", "5", "7"}
    s = data["5"]["singular_values"]
    assert len(s) == 64 and s == sorted(s, reverse=True)
    assert "| 5 | 64x1024 |" in capsys.readouterr().out


def test_search_writes_every_output(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["search", "--space", "tiny-digits", "--ratio", "0.2", "--trials", "3", "--epochs", "1", "--out", str(out)]) == 0
    assert "| best (" in capsys.readouterr().out
    data = json.loads((out / "rank_config.json").read_text())
    assert CONFIG_KEYS <= set(data)
    assert data["achieved_ratio"] == data["compressed_params"] / data["original_params"] <= 0.2
    assert {"dense", "seed_rule", "searched"} <= set(data["metric"])
    assert data["source"]["space"] == "tiny-digits"
    for f in ("factorized.safetensors", "factorized_nnr.safetensors", "rank_config_seed_rule.json", "summary.md"):
        assert (out / f).is_file()
    space = load_space("tiny-digits")
    model = load_factorized(space.build_model(), RankConfig.load(out / "rank_config.json"), out / "factorized.safetensors")
    assert count_params(model) == data["compressed_params"]
    with pytest.raises(SystemExit):  # argparse: bad ratio
        main(["search", "--space", "tiny-digits", "--ratio", "1.5", "--trials", "1", "--out", str(out)])
    _one_line_error(capsys, "1.5", "(0, 1)")
    assert main(["search", "--space", "tiny-digits", "--ratio", "0.2", "--trials", "1", "--out", str(out)]) == 2
    _one_line_error(capsys, "--resume")


def test_unreachable_ratio_writes_nothing(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["search", "--space", "tiny-digits", "--ratio", "0.001", "--trials", "1", "--out", str(out)]) == 2
    _one_line_error(capsys, "unreachable", "0.001")
    assert not out.exists()
    assert main(["solve", "--space", "tiny-digits", "--ratio", "0.001", "--out", str(tmp_path / "rc.json")]) == 2
    _one_line_error(capsys, "unreachable")
    assert not (tmp_path / "rc.json").exists()


def test_config_for_another_model_is_refused(tmp_path, capsys):
    cfg_path = tmp_path / "rc.json"
    assert main(["solve", "--space", "tiny-digits", "--ratio", "0.3", "--out", str(cfg_path)]) == 0
    data = json.loads(cfg_path.read_text())
    other = tmp_path / "other.yaml"
    other.write_text(load_space("tiny-digits").path.read_text().replace("width: 8", "width: 6").replace("name: tiny-digits", "name: tiny6"))
    out = tmp_path / "x.safetensors"
    assert main(["apply", "--space", str(other), "--config", str(cfg_path), "--out", str(out)]) == 2
    _one_line_error(capsys, "tiny-digits")
    data["source"]["space"] = "tiny6"
    cfg_path.write_text(json.dumps(data))
    assert main(["apply", "--space", str(other), "--config", str(cfg_path), "--out", str(out)]) == 2
    _one_line_error(capsys, "parameters")
    cfg_path.write_text("{ not json")
    assert main(["apply", "--space", "tiny-digits", "--config", str(cfg_path), "--out", str(out)]) == 2
    _one_line_error(capsys, "not valid JSON")
    assert not out.exists()


def test_unknown_space_and_bad_weights(tmp_path, capsys):
    assert main(["solve", "--space", "no-such-space", "--ratio", "0.3", "--out", str(tmp_path / "a.json")]) == 2
    _one_line_error(capsys, "no-such-space", "mnist5k-cnn")
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"\x00garbage")
    assert main(["solve", "--space", "tiny-digits", "--weights", str(bad), "--ratio", "0.3", "--out", str(tmp_path / "a.json")]) == 2
    _one_line_error(capsys, "corrupt")


@pytest.mark.slow
def test_default_space_search_at_quarter(tmp_path):
    """The README's main job: mnist5k-cnn at 0.25 with 8 trials (trains the dense model once, minutes):
    the four enqueued allocations, then sampled ones."""
    out = tmp_path / "mnist"
    assert main(["search", "--space", "mnist5k-cnn", "--ratio", "0.25", "--trials", "8", "--out", str(out)]) == 0
    study = optuna.load_study(study_name="mnist5k-cnn@0.25", storage=open_storage(str(out / "study.journal")))
    assert [t.user_attrs["method"] for t in study.trials[:4]] == ["seed_rule", "uniform", "sensitivity", "sensitivity_sum"]
    assert any(t.user_attrs["method"] == "searched" for t in study.trials)
    data = json.loads((out / "rank_config.json").read_text())
    assert CONFIG_KEYS <= set(data)
    assert 0.245 <= data["achieved_ratio"] <= 0.25
    assert data["achieved_ratio"] == data["compressed_params"] / data["original_params"]
    assert data["metric"]["seed_rule"]["trial"] == 0  # the CE1 rule ran first, at exactly solve()'s ranks
    rule = RankConfig.load(out / "rank_config_seed_rule.json")
    assert rule.ranks == solve(load_space("mnist5k-cnn").build_model(), 0.25).ranks
    small = out / "small.safetensors"
    assert main(["apply", "--space", "mnist5k-cnn", "--config", str(out / "rank_config.json"), "--out", str(small)]) == 0
    assert sum(t.numel() for t in load_state_dict(small).values()) == data["compressed_params"]


def test_several_working_points_in_one_run(tmp_path, capsys):
    out = tmp_path / "all"
    assert main(["search", "--space", "tiny-digits", "--wp", "WP3,WP4", "--trials", "4", "--epochs", "1",
                 "--factors", "plain", "--prior", "sensitivity", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for ratio in (0.2, 0.1):
        cfg = RankConfig.load(out / f"ratio-{ratio:g}" / "rank_config.json")
        assert cfg.target_ratio == ratio and cfg.achieved_ratio <= ratio
        assert {"seed_rule", "uniform", "sensitivity", "searched"} <= set(cfg.metric)
        assert cfg.search["settings"]["factors"] == "plain" and cfg.search["settings"]["prior"] == "sensitivity"
        assert cfg.search["settings"]["target_ratio"] == ratio
    table = (out / "summary.md").read_text()
    assert "| 0.2 |" in table and "| 0.1 |" in table and "sensitivity" in table
    assert table.splitlines()[-1] in printed


def test_one_unreachable_working_point_writes_nothing(tmp_path, capsys):
    out = tmp_path / "multi"
    assert main(["search", "--space", "tiny-digits", "--ratio", "0.3,0.001", "--trials", "1", "--out", str(out)]) == 2
    _one_line_error(capsys, "unreachable", "0.001")
    assert not out.exists()
    with pytest.raises(SystemExit) as e:  # argparse checks the flag as the field does
        main(["search", "--space", "tiny-digits", "--ratio", "0.3", "--trials", "1", "--timeout", "-5", "--out", str(out)])
    assert e.value.code == 2
    _one_line_error(capsys, "--timeout", "timeout -5.0 must be a finite number > 0")
    assert not out.exists()


def test_apply_rebuilds_the_factors_the_trial_scored(tmp_path, capsys):
    """Without retraining a trial's value is its factorized model's metric, so ``ranksearch apply``
    (calibrating on the space's data, as the search did) must give a model with exactly that value;
    ``--factors plain`` gives the plain-SVD one."""
    import torch

    from ranksearch.core._retrain import evaluate

    out = tmp_path / "run"
    assert main(["search", "--space", "tiny-digits", "--ratio", "0.15", "--trials", "4", "--epochs", "0", "--out", str(out), "-q"]) == 0
    cfg = RankConfig.load(out / "rank_config.json")
    assert cfg.search["factors"] == "data_aware"  # without retraining, the output-aware factors win at 0.15
    space = load_space("tiny-digits")
    task = space.build_task()
    for factors, name in (([], "same.safetensors"), (["--factors", "plain"], "plain.safetensors")):  # default: the config's
        assert main(["apply", "--space", "tiny-digits", "--config", str(out / "rank_config.json"), *factors,
                     "--out", str(tmp_path / name), "-q"]) == 0
    dense = space.build_model()
    same = load_factorized(dense, cfg, tmp_path / "same.safetensors")
    plain = load_factorized(dense, cfg, tmp_path / "plain.safetensors")
    assert evaluate(same, task.val, task.metric) == cfg.metric["searched"]["val"] != evaluate(plain, task.val, task.metric)
    assert not all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), plain.state_dict().values()))
