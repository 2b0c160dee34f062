"""Every command a search prints for the user to run next runs as printed."""

from __future__ import annotations

import re
import shlex

import ranksearch
from ranksearch.cli import main


def test_the_printed_next_steps_run_as_printed(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the hints' relative paths (small.safetensors) land here
    out = tmp_path / "run"
    assert main(["search", "--space", "tiny-digits", "--ratio", "0.2", "--trials", "3", "--epochs", "1", "--out", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    commands = re.findall(r"(ranksearch (?:apply|worker|search|export|report) [^\n]+)", printed)
    assert {c.split()[1] for c in commands} == {"apply", "worker"}, commands  # the apply line and the worker line
    for command in commands:
        argv = shlex.split(command)[1:]
        assert main([*argv, "-q"]) == 0, command
    assert (tmp_path / "small.safetensors").is_file()
    python = re.search(r"(ranksearch\.load_factorized\([^\n]+\))", printed)
    assert python is not None
    model = ranksearch.load_space("tiny-digits").build_model()
    small = eval(python.group(1), {"ranksearch": ranksearch, "model": model})  # the line printed above
    assert ranksearch.count_params(small) == ranksearch.RankConfig.load(out / "rank_config.json").compressed_params


def test_a_worker_after_the_cap_says_why_it_ran_nothing(tmp_path, caplog):
    import logging

    out = tmp_path / "run"
    assert main(["search", "--space", "tiny-digits", "--ratio", "0.2", "--trials", "2", "--epochs", "1", "--out", str(out), "-q"]) == 0
    caplog.set_level(logging.INFO, logger="ranksearch")
    assert main(["worker", "--storage", str(out / "study.journal"), "--study-name", "tiny-digits@0.2"]) == 0
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "already holds 2 finished trials, its cap of 2" in said and "--trials" in said
