"""Fuzzed loaders: no input makes the rank-config, settings or space loaders raise anything but
ranksearch's own error (hypothesis: arbitrary JSON, and valid files with one field replaced)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ranksearch.core._config import RankConfig
from ranksearch.errors import RankSearchError
from ranksearch.spaces._space import load_space, parse_space
from ranksearch.study._settings import SearchSettings

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

CONFIG = {
    "format": "ranksearch.rank_config", "format_version": 1, "model": "m", "target_ratio": 0.5, "achieved_ratio": 0.5,
    "original_params": 100, "compressed_params": 50, "ranks": {"fc": 2},
    "layers": {"fc": {"type": "Linear", "weight_shape": [10, 10], "matrix": [10, 10], "rank": 2, "mse": 0.1,
                      "params_before": 100, "params_after": 40}},
    "source": {}, "metric": {}, "search": {},
}


def test_the_valid_config_loads():
    assert RankConfig.from_dict(CONFIG).ranks == {"fc": 2}


def _only_own_errors(fn, *args) -> None:
    try:
        fn(*args)
    except RankSearchError:
        pass


@FUZZ
@given(JSON)
def test_config_loader_on_any_json(data):
    _only_own_errors(RankConfig.from_dict, data)


@FUZZ
@given(st.sampled_from(sorted(CONFIG)), JSON)
def test_config_loader_with_one_field_replaced(key, value):
    _only_own_errors(RankConfig.from_dict, {**CONFIG, key: value})


@FUZZ
@given(st.sampled_from(sorted(CONFIG["layers"]["fc"])), JSON)
def test_config_loader_with_one_layer_field_replaced(key, value):
    layer = {**CONFIG["layers"]["fc"], key: value}
    _only_own_errors(RankConfig.from_dict, {**CONFIG, "layers": {"fc": layer}})


@FUZZ
@given(st.binary(max_size=200))
def test_config_file_of_any_bytes(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("cfg") / "rank_config.json"
    path.write_bytes(raw)
    _only_own_errors(RankConfig.load, path)


@FUZZ
@given(st.sampled_from(sorted(SearchSettings(0.2).to_dict())), JSON)
def test_settings_loader_with_one_field_replaced(key, value):
    _only_own_errors(SearchSettings.from_dict, {**SearchSettings(0.2).to_dict(), key: value})


@pytest.fixture(scope="module")
def space_data() -> dict:
    return yaml.safe_load(load_space("tiny-digits").path.read_text())


@FUZZ
@given(data=JSON)
def test_space_loader_on_any_data(data):
    _only_own_errors(parse_space, data, Path("fuzz.yaml"))


@FUZZ
@given(key=st.sampled_from(["name", "model", "task", "working_points", "layers", "pretrain", "retrain", "solver", "metric",
                            "description", "format_version"]), value=JSON)
def test_space_loader_with_one_field_replaced(space_data, key, value):
    _only_own_errors(parse_space, {**space_data, key: value}, Path("fuzz.yaml"))


@FUZZ
@given(raw=st.text(max_size=200))
def test_space_file_of_any_text(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("space") / "fuzz.yaml"
    path.write_text(raw)
    _only_own_errors(load_space, path)
