"""ranksearch report: a search's output folder as report.html and PNG figures, for one or several working points."""

from __future__ import annotations

import base64
import json
import re

import pytest

from ranksearch.cli import main
from ranksearch.core._config import RankConfig
from ranksearch.errors import RankSearchError
from ranksearch.results import load_runs, write_report

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def two_points(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "run"
    assert main(["search", "--space", "tiny-digits", "--ratio", "0.3,0.15", "--trials", "5", "--epochs", "1",
                 "--out", str(out), "--no-progress"]) == 0
    return out


def test_search_writes_the_report_with_its_figures(two_points):
    html = (two_points / "report.html").read_text()
    assert (two_points / "tradeoff.png").read_bytes().startswith(PNG)
    for sub in ("ratio-0.3", "ratio-0.15"):
        for fig in ("history.png", "kept.png", "errors.png"):
            assert (two_points / sub / fig).read_bytes().startswith(PNG), (sub, fig)
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 1 + 3 * 2 and all(base64.b64decode(i).startswith(PNG) for i in images)  # self-contained
    assert "src=\"http" not in html and "<script" not in html
    assert "<h2>ratio 0.15</h2>" in html and "<h2>ratio 0.3</h2>" in html


def test_the_report_tells_the_result_without_json(two_points):
    """The page holds the figures a reader needs: every factorized layer's rank and parameters as in the
    config, the best trial's and the seed rule's metrics, the trial counts and the fixed cost."""
    html = (two_points / "report.html").read_text()
    for ratio in ("0.3", "0.15"):
        folder = two_points / f"ratio-{ratio}"
        cfg = RankConfig.load(folder / "rank_config.json")
        seed = RankConfig.load(folder / "rank_config_seed_rule.json")
        section = html.split(f"<h2>ratio {ratio}</h2>")[1].split("<h2>")[0]
        for name, layer in cfg.layers.items():
            row = f"<tr><td>{name}</td><td>{layer.type}</td>"
            assert row in section, name
            cells = re.findall(r"<td>([^<]*)</td>", section.split(row)[1].split("</tr>")[0])
            assert cells[0] == "x".join(map(str, layer.matrix))
            assert cells[1] == (f"{seed.ranks[name]:,}" if name in seed.ranks else "dense") and cells[2] == f"{layer.rank:,}"
            assert cells[3] == f"{layer.params_before:,}" and cells[4] == f"{layer.params_after:,}"
        for name in cfg.dense:
            assert f"<tr><td>{name}</td><td colspan=" in section
        best = cfg.metric["searched"]
        assert f"<td>{best['val']:.4f}</td><td>{best['test']:.4f}</td>" in section
        assert f"<td>{cfg.metric['seed_rule']['val']:.4f}</td>" in section
        trials = json.loads((folder / "trials.json").read_text())["trials"]
        done = sum(t["state"] == "complete" for t in trials)
        assert f"trials: {done} complete" in section and "Fixed cost before the first trial" in section
        assert len(trials) == 5 and trials[0]["method"] == "seed_rule"


def test_curves_hold_each_layers_error_curve(two_points):
    curves = json.loads((two_points / "ratio-0.15" / "curves.json").read_text())
    cfg = RankConfig.load(two_points / "ratio-0.15" / "rank_config.json")
    assert set(cfg.layers) <= set(curves)
    for c in curves.values():
        assert c["rank"][0] == 0 and c["relative_mse"][0] == 1.0 and len(c["rank"]) <= 200
        assert all(a >= b for a, b in zip(c["relative_mse"], c["relative_mse"][1:]))  # less error with more rank
        assert c["relative_mse"][-1] == pytest.approx(0.0, abs=1e-6)  # exact at full rank


def test_report_command_rewrites_the_page(two_points, capsys):
    (two_points / "report.html").unlink()
    assert main(["report", str(two_points / "ratio-0.3")]) == 0
    assert capsys.readouterr().out.strip().endswith("report.html")
    assert (two_points / "ratio-0.3" / "report.html").is_file() and not (two_points / "report.html").exists()
    assert [r.label for r in load_runs(two_points)] == ["0.15", "0.3"]


def test_report_of_a_folder_without_results_says_what_to_give(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no search result" in err[0] and "--out folder" in err[0]
    with pytest.raises(RankSearchError, match="holds no search result"):
        write_report(tmp_path / "missing")
    assert not (tmp_path / "report.html").exists()
