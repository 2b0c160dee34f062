"""SearchSettings: validation, versioned JSON, and one set of fields shared by CLI, API, study and config."""

from __future__ import annotations

import dataclasses
import json

import optuna
import pytest

from ranksearch import RankConfig, RetrainSettings, SearchSettings, load_space
from ranksearch.cli import main
from ranksearch.study._plan import Workload, resolve
from ranksearch.study._settings import FORMAT, FORMAT_VERSION
from ranksearch.study._storage import open_storage


def test_round_trip_through_json():
    s = SearchSettings(0.1, model="m", sampler="random", exclude=("fc",), retrain=RetrainSettings(epochs=3), seed=4)
    data = json.loads(json.dumps(s.to_dict()))
    assert data["format"] == FORMAT and data["format_version"] == FORMAT_VERSION
    assert SearchSettings.from_dict(data) == s
    assert s.replace(spread=1.0).differences(s) == [("spread", 1.0, 3.0)]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.spread = 2.0  # type: ignore[misc]


@pytest.mark.parametrize("bad, words", [
    ({"target_ratio": 1.0}, "target_ratio 1 would keep every parameter"),
    ({"target_ratio": 1.5, "target_latency": 0.9}, "target_ratio 1.5"),
    ({"target_ratio": 0}, "target_ratio 0"),
    ({"target_ratio": "0.2"}, "target_ratio '0.2'"),
    ({"sampler": "tpe2"}, "sampler 'tpe2'"),
    ({"pruner": "sometimes"}, "pruner"),
    ({"granularity": "block"}, "granularity"),
    ({"prior": "flat"}, "prior"),
    ({"factors": "whitened"}, "factors"),
    ({"spread": float("nan")}, "spread"),
    ({"spread": 0}, "spread"),
    ({"rank_multiple": 0}, "rank_multiple"),
    ({"min_rank": 1.5}, "min_rank"),
    ({"seed": -1}, "seed"),
    ({"exclude": "fc"}, "exclude"),
    ({"baselines": "yes"}, "baselines"),
    ({"retrain": {"epochs": -1}}, "epochs"),
    ({"proposals": "around"}, "proposals 'around'"),
    ({"step": 0}, "step 0"),
    ({"step": 2.0}, "step 2.0"),
    ({"screen": -0.1}, "screen -0.1"),
    ({"screen": 1.5}, "screen 1.5"),
    ({"keep": 0}, "keep 0"),
    ({"keep": True}, "keep True"),
    ({"sensitivity": "guess"}, "sensitivity 'guess'"),
    ({"sensitivity_budget": -1}, "sensitivity_budget -1"),
])
def test_bad_settings_are_refused_by_name(bad, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        SearchSettings(**{"target_ratio": 0.2, **bad})


def test_version_1_settings_keep_their_search():
    """A study stored by version 1 searched log-weights without screening: it still does when read."""
    v1 = {k: v for k, v in SearchSettings(0.2, sampler="tpe", pruner="median").to_dict().items()
          if k not in ("proposals", "step", "screen", "keep", "screen_samples", "sensitivity", "sensitivity_budget",
                    "sensitivity_samples")}
    v1["format_version"] = 1
    s = SearchSettings.from_dict(v1)
    assert (s.proposals, s.screen, s.screen_samples, s.sampler, s.pruner) == ("weights", 0.0, 0, "tpe", "median")
    assert s.to_dict()["format_version"] == FORMAT_VERSION == 12
    with pytest.raises(ValueError, match=r"format_version 1 has no fields \['screen'\]"):
        SearchSettings.from_dict({**v1, "screen": 0.5})
    new = SearchSettings(0.2)
    assert (new.proposals, new.sampler, new.pruner, new.screen_samples) == ("incumbent", "local", "gate", 512)


def test_version_2_settings_screen_on_the_whole_split():
    """A version-2 study scored its screens on the whole validation split: read back, it still does."""
    v2 = {k: v for k, v in SearchSettings(0.2, keep=0.3).to_dict().items()
          if k not in ("screen_samples", "sensitivity", "sensitivity_budget", "sensitivity_samples")}
    v2["format_version"] = 2
    s = SearchSettings.from_dict(v2)
    assert (s.screen_samples, s.keep, s.screen) == (0, 0.3, 0.25)
    with pytest.raises(ValueError, match=r"format_version 2 has no fields \['screen_samples'\]"):
        SearchSettings.from_dict({**v2, "screen_samples": 64})
    with pytest.raises(ValueError, match="screen_samples -1 must be an int >= 0"):
        SearchSettings(0.2, screen_samples=-1)


def test_from_dict_names_origin_and_field():
    good = SearchSettings(0.2).to_dict()
    with pytest.raises(ValueError, match="not ranksearch search settings"):
        SearchSettings.from_dict({"target_ratio": 0.2})
    with pytest.raises(ValueError, match="format_version 99"):
        SearchSettings.from_dict({**good, "format_version": 99})
    with pytest.raises(ValueError, match=r"unknown fields \['sprad'\]"):
        SearchSettings.from_dict({**good, "sprad": 1})
    with pytest.raises(ValueError, match="study 'x'.*spread"):
        SearchSettings.from_dict({**good, "spread": -1}, origin="study 'x'")


def test_resolve_fills_model_identity_and_factors():
    import torch

    net = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    own = Workload(evaluate=lambda m: 0.0)
    s = resolve(net, 0.5, own)
    assert s.model == "Sequential" and s.factors == "plain" and len(s.weights_digest) == 33
    assert resolve(net, 0.5, Workload(evaluate=lambda m: 0.0, calibration=[torch.randn(4, 16)])).factors == "data_aware"
    with pytest.raises(ValueError, match="needs calibration"):
        resolve(net, SearchSettings(0.5, factors="data_aware"), own)
    with pytest.raises(ValueError, match="not this model's"):
        resolve(net, SearchSettings(0.5, weights_digest="x" * 33), own)
    with torch.no_grad():
        net[0].weight.add_(1)
    assert resolve(net, 0.5, own).weights_digest != s.weights_digest


def test_cli_api_study_and_config_share_the_same_fields(tmp_path):
    """The settings the CLI builds are the ones the study stores and the exported config records, and a
    Python caller builds the very same object from the same choices."""
    out = tmp_path / "run"
    assert main(["search", "--space", "tiny-digits", "--ratio", "0.2", "--trials", "2", "--epochs", "1", "--spread", "2",
                 "--sampler", "random", "--seed", "3", "--proposals", "weights", "--step", "0.3", "--screen", "0.5", "--keep", "0.5",
                 "--screen-samples", "40", "--pruner", "median", "--out", str(out), "-q"]) == 0
    study = optuna.load_study(study_name="tiny-digits@0.2", storage=open_storage(str(out / "study.journal")))
    stored = study.user_attrs["ranksearch:settings"]
    config = RankConfig.load(out / "rank_config.json").search["settings"]
    seed_rule = RankConfig.load(out / "rank_config_seed_rule.json").search["settings"]
    assert stored == config == seed_rule
    assert set(stored) == {f.name for f in dataclasses.fields(SearchSettings)} | {"format", "format_version"}
    space = load_space("tiny-digits")
    from_python = SearchSettings(target_ratio=0.2, model="tiny-digits", space="tiny-digits", sampler="random", spread=2.0,
                                 proposals="weights", step=0.3, screen=0.5, keep=0.5, screen_samples=40, pruner="median",
                                 factors="data_aware", exclude=tuple(space.exclude), retrain=dataclasses.replace(space.retrain, epochs=1),
                                 seed=3)
    model = space.build_model()
    assert resolve(model, from_python, Workload(task=space.build_task())).to_dict() == stored


def test_version_3_settings_measure_the_whole_sensitivity_table():
    v3 = {k: v for k, v in SearchSettings(0.2).to_dict().items() if k not in ("sensitivity", "sensitivity_budget", "sensitivity_samples")}
    v3["format_version"] = 3
    s = SearchSettings.from_dict(v3)
    assert (s.sensitivity, s.screen_samples) == ("measured", 512)
    with pytest.raises(ValueError, match=r"format_version 3 has no fields \['sensitivity'\]"):
        SearchSettings.from_dict({**v3, "sensitivity": "proxy"})
    assert SearchSettings(0.2).sensitivity == "auto"  # measured within the budget, else output probes on a subset


def test_version_4_settings_probe_on_the_whole_split():
    v4 = {k: v for k, v in SearchSettings(0.2, sensitivity="proxy").to_dict().items() if k != "sensitivity_samples"}
    v4["format_version"] = 4
    s = SearchSettings.from_dict(v4)
    assert (s.sensitivity, s.sensitivity_samples) == ("proxy", 0)
    with pytest.raises(ValueError, match=r"format_version 4 has no fields \['sensitivity_samples'\]"):
        SearchSettings.from_dict({**v4, "sensitivity_samples": 64})
    with pytest.raises(ValueError, match="sensitivity_samples -3 must be an int >= 0"):
        SearchSettings(0.2, sensitivity_samples=-3)
