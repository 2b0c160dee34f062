"""Several working points from Python: each its own study and folder, the sensitivity table measured once
and the best allocation carried to the next point as a warm start."""

from __future__ import annotations

from ranksearch import Method, RunOptions, SearchSettings, TrialRecord, search_points
from ranksearch.core import RetrainSettings

RECIPE = RetrainSettings(epochs=1, batch_size=32, lr_start=0.01, lr_end=0.001)


def test_points_share_the_sensitivity_table_and_warm_start_the_next(dense_and_task, tmp_path):
    model, task = dense_and_task
    results = search_points(model, [SearchSettings(0.3, retrain=RECIPE), SearchSettings(0.15, retrain=RECIPE)], task=task,
                            run=RunOptions(n_trials=5, out_dir=tmp_path, report=False))
    first, second = results
    assert [r.config.target_ratio for r in results] == [0.3, 0.15]
    assert first.sensitivity is not None and second.sensitivity == first.sensitivity  # measured once
    assert second.summary.fixed_cost["sensitivity_evaluations"] == 0  # type: ignore[index]
    warm = [t for t in second.study.trials if TrialRecord.of(t).method is Method.WARM_START]
    assert len(warm) == (first.best_log10w is not None)  # a best that was a baseline has no weights to warm-start from
    assert all(TrialRecord.of(t).log10w == first.best_log10w for t in warm)
    for r, folder in zip(results, ("ratio-0.3", "ratio-0.15")):
        assert (tmp_path / folder / "rank_config.json").is_file() and r.study.study_name.endswith(f"@{folder[6:]}")
    table = (tmp_path / "summary.md").read_text()
    assert "2 working points" in table and "| 0.3 |" in table and "| 0.15 |" in table

