"""Every space file in search_spaces/ loads, validates, builds and solves at each working point."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ranksearch import count_params, load_space, solve
from ranksearch.spaces._space import list_spaces

SPACE_FILES = sorted((Path(__file__).resolve().parents[2] / "search_spaces").glob("*.yaml"))


def test_spaces_are_found():
    assert {p.stem for p in SPACE_FILES} <= set(list_spaces())
    assert "mnist5k-cnn" in {p.stem for p in SPACE_FILES}


@pytest.mark.parametrize("path", SPACE_FILES, ids=lambda p: p.stem)
def test_space_solves_every_working_point(path, tmp_path_factory):
    space = load_space(path)
    assert space.name == path.stem and len(space.working_points) == 4
    from ranksearch.spaces._space import resolve

    model = resolve(space.model_factory)(**space.model_kwargs)  # random init: solving needs no data
    cache = tmp_path_factory.getbasetemp() / "spectra"  # the first solve computes, the others read
    for i, wp in enumerate(space.working_points):
        cfg = solve(model, space.working_point(f"WP{i + 1}"), exclude=space.exclude, cache_dir=cache,
                    rank_multiple=space.rank_multiple, min_rank=space.min_rank)
        assert wp - 0.005 <= cfg.achieved_ratio <= wp, (space.name, wp, cfg.achieved_ratio)
        assert cfg.original_params == count_params(model)


GOOD = """\
format: ranksearch.space
format_version: 1
name: t
model: {factory: "tinyspace:build_model"}
working_points: [0.5, 0.3, 0.2, 0.1]
"""


@pytest.mark.parametrize("text, words", [
    (GOOD.replace("model: {factory: \"tinyspace:build_model\"}\n", ""), ["missing field 'model'"]),
    (GOOD + "colour: blue\n", ["unknown fields ['colour']"]),
    (GOOD.replace("[0.5, 0.3, 0.2, 0.1]", "[0.5, 3]"), ["working_points"]),
    (GOOD.replace("format_version: 1", "format_version: 9"), ["format"]),
    (GOOD + "retrain: {epochs: -1}\n", ["'retrain'", "epochs"]),
    (GOOD + "retrain: {epoch: 3}\n", ["'retrain'", "epoch"]),
    (GOOD.replace("name: t", "name: [t]"), ["'name'"]),
    ("model: [unclosed\n", ["not valid YAML"]),
])
def test_malformed_space_names_file_and_field(tmp_path, text, words):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ValueError) as e:
        load_space(f)
    assert str(f) in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_bad_factory_and_working_point(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text(GOOD.replace("tinyspace:build_model", "nowhere.module:fn"))
    with pytest.raises(ValueError, match="nowhere.module:fn"):
        load_space(f).build_model(allow_random=True)
    f.write_text(GOOD)
    with pytest.raises(ValueError, match="WP7"):
        load_space(f).working_point("WP7")
    with pytest.raises(ValueError, match="no weights"):
        load_space(f).build_model()


def test_a_corrupt_cached_dense_model_is_trained_again(caplog):
    """A cache file a crash (or another version) left is not used: it is trained again and replaced."""
    import logging

    from ranksearch.core import load_state_dict

    space = load_space("tiny-digits")
    good = space.build_model().state_dict()
    path = space.pretrained_path()
    path.write_bytes(b"not safetensors")
    caplog.set_level(logging.WARNING, logger="ranksearch")
    again = space.build_model().state_dict()
    assert any("unusable" in r.getMessage() and "training them again" in r.getMessage() for r in caplog.records)
    assert all(torch.equal(good[k], again[k]) for k in good)  # the same seeded training
    assert set(load_state_dict(path)) == set(good)  # and the cache holds them again


@pytest.mark.parametrize("folder", ["with space", "tïny ünïcode"])
def test_a_space_file_under_any_path_is_found(tmp_path, folder):
    from ranksearch.cli import main

    where = tmp_path / folder
    where.mkdir()
    (where / "mine.yaml").write_text(load_space("tiny-digits").path.read_text())
    assert main(["solve", "--space", str(where / "mine.yaml"), "--ratio", "0.3", "--out", str(tmp_path / "c.json"), "-q"]) == 0
