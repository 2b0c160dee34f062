"""Tests of ranksearch.core._config: the rank config JSON file."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

import ranksearch._io as rio
from ranksearch.core._config import FORMAT, FORMAT_VERSION, LayerRank, RankConfig

KEYS = {"format", "format_version", "model", "target_ratio", "achieved_ratio", "original_params",
        "compressed_params", "ranks", "layers", "metric", "search", "source", "dense", "cost"}


def _data() -> dict:
    """A consistent config: fc (64 x 128 at rank 8) and conv (32 x 144 at rank 4) of a 20000-weight model."""
    fc = dict(type="Linear", weight_shape=[64, 128], matrix=[64, 128], rank=8, mse=0.01,
              params_before=64 * 128, params_after=8 * (64 + 128), macs_before=64 * 128, macs_after=8 * (64 + 128))
    conv = dict(type="Conv2d", weight_shape=[32, 16, 3, 3], matrix=[32, 144], rank=4, mse=0.02,
                params_before=32 * 144, params_after=4 * (32 + 144), macs_before=32 * 144 * 49, macs_after=4 * (32 + 144) * 49)
    original = 20000
    compressed = original - (64 * 128 - 8 * 192) - (32 * 144 - 4 * 176)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": "tiny-digits",
        "target_ratio": 0.5,
        "achieved_ratio": compressed / original,
        "original_params": original,
        "compressed_params": compressed,
        "ranks": {"fc": 8, "features.conv": 4},
        "layers": {"fc": fc, "features.conv": conv},
        "metric": {"name": "accuracy", "dense": 0.9, "after_retrain": 0.85},
        "search": {"method": "tpe", "trials": 3, "seed": 0},
        "source": {"space": "tiny-digits"},
        "dense": {"stem": "depthwise convolution (groups=16)"},
        "cost": {"input_shape": [16, 7, 7], "macs_before": 64 * 128 + 32 * 144 * 49 + 1000,
                 "macs_after": 8 * 192 + 4 * 176 * 49 + 1000, "macs_ratio": 0.2, "params_ratio": compressed / original},
    }


def _config() -> RankConfig:
    return RankConfig.from_dict(_data())


def test_round_trip(tmp_path: Path) -> None:
    config = _config()
    assert isinstance(config.layers["fc"], LayerRank)
    path = config.save(tmp_path / "sub" / "rank_config.json")
    assert path == tmp_path / "sub" / "rank_config.json"
    loaded = RankConfig.load(path)
    assert loaded == config
    assert loaded.layers["features.conv"].weight_shape == [32, 16, 3, 3]
    assert loaded.ranks == {"fc": 8, "features.conv": 4}
    # saving again gives the same bytes
    again = loaded.save(tmp_path / "again.json")
    assert again.read_text() == path.read_text()


def test_json_has_documented_keys(tmp_path: Path) -> None:
    path = _config().save(tmp_path / "c.json")
    data = json.loads(path.read_text())
    assert set(data) == KEYS
    assert list(data)[:2] == ["format", "format_version"]
    assert data["format"] == "ranksearch.rank_config" and data["format_version"] == 2
    assert data == _data()
    assert set(data["layers"]["fc"]) == {"type", "weight_shape", "matrix", "rank", "mse", "params_before", "params_after",
                                         "macs_before", "macs_after"}


def test_version_1_config_reads_without_dense_and_cost(tmp_path: Path) -> None:
    """A config written before the cost model (version 1) still loads; saved again it is version 2."""
    v1 = _data()
    v1["format_version"] = 1
    for k in ("dense", "cost"):
        v1.pop(k)
    for layer in v1["layers"].values():
        layer.pop("macs_before"), layer.pop("macs_after")
    config = RankConfig.load(_write(tmp_path, v1))
    assert config.dense == {} and config.cost == {} and config.layers["fc"].macs_before is None
    assert config.to_dict()["format_version"] == FORMAT_VERSION == 2


def test_direct_construction_defaults() -> None:
    d = _data()
    for k in ("format", "format_version", "metric", "search", "source", "dense", "cost"):
        d.pop(k)
    config = RankConfig(**d)
    assert config.metric == {} and config.search == {} and config.source == {} and config.dense == {} and config.cost == {}
    assert config.to_dict()["format"] == FORMAT


def _write(tmp_path: Path, data) -> Path:
    path = tmp_path / "rank_config.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def _mutate(**changes):
    def f(d: dict) -> dict:
        d = copy.deepcopy(d)
        for key, value in changes.items():
            if value is _DROP:
                d.pop(key)
            else:
                d[key] = value
        return d
    return f


_DROP = object()


def _bad_rank(value):
    def f(d: dict) -> dict:
        d = copy.deepcopy(d)
        d["ranks"]["fc"] = value
        d["layers"]["fc"]["rank"] = value
        return d
    return f


def _layer_field(key, value):
    def f(d: dict) -> dict:
        d = copy.deepcopy(d)
        d["layers"]["fc"][key] = value
        return d
    return f


@pytest.mark.parametrize(
    "mutate, words",
    [
        (_mutate(format="something.else"), ["format"]),
        (_mutate(format=_DROP), ["format"]),
        (_mutate(format_version=3), ["v3", "upgrade"]),
        (_mutate(dense={"fc": "kept"}), ["fc", "both"]),
        (_layer_field("macs_after", None), ["macs_before", "both"]),
        (_layer_field("macs_after", 0), ["macs_before", "positive"]),
        (_mutate(extra_field=1), ["extra_field"]),
        (_mutate(model=_DROP), ["model"]),
        (_mutate(ranks=_DROP), ["ranks"]),
        (_mutate(achieved_ratio=0.3), ["achieved_ratio"]),
        (_mutate(compressed_params=12345), ["achieved_ratio", "12345"]),
        (_mutate(original_params=0), ["original_params"]),
        (_mutate(original_params=-5), ["original_params"]),
        (_mutate(target_ratio=0.0), ["target_ratio"]),
        (_mutate(target_ratio=1.5), ["target_ratio"]),
        (_bad_rank(0), ["fc", "positive"]),
        (_bad_rank(-3), ["fc", "positive"]),
        (_bad_rank(2.5), ["fc", "positive"]),
        (_bad_rank("4"), ["fc", "positive"]),
        (_layer_field("rank", 9), ["fc", "disagrees"]),
        (_layer_field("colour", "red"), ["colour"]),
        (_mutate(ranks={"fc": 8}), ["features.conv"]),
    ],
)
def test_invalid_content_raises_naming_path_and_field(tmp_path: Path, mutate, words: list[str]) -> None:
    path = _write(tmp_path, mutate(_data()))
    with pytest.raises(ValueError) as info:
        RankConfig.load(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message
    # from_dict without a file names its origin too
    with pytest.raises(ValueError, match="my-origin"):
        RankConfig.from_dict(mutate(_data()), origin="my-origin")


@pytest.mark.parametrize("text", ["", "{", "not json", '{"format": ', "\udcff"], ids=["empty", "brace", "words", "cut", "bad-utf8"])
def test_invalid_json(tmp_path: Path, text: str) -> None:
    path = tmp_path / "rank_config.json"
    if text == "\udcff":
        path.write_bytes(b"\xff\xfe\x00garbage")
    else:
        path.write_text(text)
    with pytest.raises(ValueError, match="JSON") as info:
        RankConfig.load(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("payload", ["[1, 2]", "42", "null", '"text"'])
def test_json_that_is_not_an_object(tmp_path: Path, payload: str) -> None:
    path = _write(tmp_path, payload)
    with pytest.raises(ValueError, match="not a ranksearch rank config") as info:
        RankConfig.load(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "rank_config.json"
    with pytest.raises(ValueError, match="does not exist") as info:
        RankConfig.load(path)
    assert str(path) in str(info.value)


def test_failed_save_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config()
    target = tmp_path / "rank_config.json"

    def broken_write_text(self: Path, text: str, *args, **kwargs) -> int:
        with open(self, "w") as f:
            f.write(text[: len(text) // 2])  # half of it, then the disk "fails"
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", broken_write_text)
    with pytest.raises(OSError, match="disk full"):
        config.save(target)
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary file
    monkeypatch.undo()

    # an existing file survives a failed overwrite intact
    config.save(target)
    before = target.read_text()
    monkeypatch.setattr(Path, "write_text", broken_write_text)
    other = RankConfig.from_dict({**_data(), "model": "other"})
    with pytest.raises(OSError):
        other.save(target)
    monkeypatch.undo()
    assert target.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["rank_config.json"]
    assert RankConfig.load(target) == config


def test_unserializable_content_leaves_no_file(tmp_path: Path) -> None:
    config = RankConfig.from_dict({**_data(), "metric": {"x": object()}})
    with pytest.raises(TypeError):
        config.save(tmp_path / "c.json")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_text_replaces(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b.txt"
    rio.atomic_write_text(path, "one")
    rio.atomic_write_text(path, "two")
    assert path.read_text() == "two"
    assert [p.name for p in path.parent.iterdir()] == ["b.txt"]
