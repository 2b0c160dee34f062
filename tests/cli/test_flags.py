"""The search flags are the settings' fields: one help text and one default each, a settings file for any
of them, flags winning over the file, and every value checked as the field checks it."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ranksearch._fields import spec
from ranksearch.cli import main
from ranksearch.cli._commands import _settings, _space
from ranksearch.cli._flags import read_settings_file
from ranksearch.cli._parser import RUN_FIELDS, parser
from ranksearch.core import RetrainSettings
from ranksearch.study import RunOptions, SearchSettings


def _flagged(cls):
    return [(f, spec(f)) for f in dataclasses.fields(cls) if spec(f) is not None and spec(f).group is not None]


def _help(capsys, *extra: str) -> str:
    with pytest.raises(SystemExit) as e:
        main(["search", *extra])
    assert e.value.code == 0
    return capsys.readouterr().out


def _options(text: str) -> set[str]:
    """The flags a help text describes (its option entries, not the words of its epilog)."""
    import re

    return {m for line in text.splitlines() for m in re.findall(r"^\s{2}(--[\w-]+)", line)}


def test_every_flagged_field_is_a_flag_with_its_own_help_and_default(capsys):
    full_text = _help(capsys, "--help-all")
    short_text = _help(capsys, "--help")
    full, short = " ".join(full_text.split()), " ".join(short_text.split())
    for cls in (SearchSettings, RetrainSettings, RunOptions):
        for f, s in _flagged(cls):
            if cls is RunOptions and f.name not in RUN_FIELDS:
                continue  # a worker's flag (--wait)
            flag = s.flag or "--" + f.name.replace("_", "-")
            name = "--no-" + f.name.replace("_", "-") if s.kind == "bool" and f.default is True else flag
            assert name in _options(full_text), name
            assert " ".join(s.help.split())[:40] in full, f.name  # the field's help, written once
            assert (name in _options(short_text)) != s.rare, name  # rarely used knobs: --help-all only
    assert "(default: local)" in full and "(default: 0.2)" in full  # the dataclass's defaults
    assert "--help-all describes them" in short and "--settings FILE" in short


def test_the_settings_file_sets_any_field_and_a_flag_wins(tmp_path):
    stored = SearchSettings(0.3, sampler="tpe", spread=2.0, step=0.3, seed=5, retrain=RetrainSettings(epochs=7)).to_dict()
    path = tmp_path / "run.json"
    path.write_text(json.dumps({**stored, "model": "elsewhere", "space": "other"}))
    args = parser().parse_args(["search", "--space", "tiny-digits", "--settings", str(path), "--seed", "9", "--out", str(tmp_path / "o")])
    space = _space(args)
    s = _settings(args, space, 0.2, read_settings_file(args.settings))  # as the search command reads it
    assert (s.sampler, s.spread, s.step, s.seed) == ("tpe", 2.0, 0.3, 9)  # from the file, and the flag over it
    assert s.retrain == RetrainSettings(epochs=7)  # the file's recipe (all its fields) over the space's
    assert (s.model, s.space, s.target_ratio) == ("tiny-digits", "tiny-digits", 0.2)  # identity comes from the run


def test_a_partial_yaml_settings_file_and_its_ratio(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("target_ratio: 0.3\nprior: sensitivity\nretrain: {epochs: 1}\n")
    out = tmp_path / "o"
    assert main(["search", "--space", "tiny-digits", "--settings", str(path), "--trials", "2", "--out", str(out), "-q"]) == 0
    from ranksearch import RankConfig

    stored = RankConfig.load(out / "rank_config.json").search["settings"]
    assert stored["target_ratio"] == 0.3 and stored["prior"] == "sensitivity" and stored["retrain"]["epochs"] == 1
    from ranksearch import load_space

    assert stored["retrain"]["batch_size"] == load_space("tiny-digits").retrain.batch_size  # the rest of the space's recipe


@pytest.mark.parametrize("content, words", [
    ("spread: -1\n", ["spread -1"]),
    ("- a\n- b\n", ["mapping"]),
    ("retrain: 3\n", ["retrain must be a mapping"]),
    ("a: [\n", ["not valid YAML"]),
])
def test_a_bad_settings_file_is_one_line(tmp_path, capsys, content, words):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    assert main(["search", "--space", "tiny-digits", "--ratio", "0.2", "--settings", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("ranksearch search: error:") and all(w in err for w in words), err
    assert not (tmp_path / "o").exists()


def test_an_old_spelling_on_the_command_line_is_taken():
    args = parser().parse_args(["search", "--space", "tiny-digits", "--ratio", "0.2", "--factors", "data-aware", "--out", "x"])
    assert args.factors == "data_aware"
