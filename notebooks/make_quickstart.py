"""Writes quickstart.ipynb from the cells below (run: python notebooks/make_quickstart.py)."""

from pathlib import Path

import nbformat

CELLS = [
    ("md", """# ranksearch quickstart

From Python: spectra, the CE1 rule (one MSE bound), a short Optuna search, export and re-apply, on the
embedded default space `mnist5k-cnn` (a VGG16 in miniature on 5,000 real MNIST digits; its dense weights
are trained on first use and cached)."""),
    ("code", """import ranksearch
from ranksearch.core import evaluate

space = ranksearch.load_space("mnist5k-cnn")
task = space.build_task()
dense = space.build_model(task)
print(task.description)
print("dense parameters:", ranksearch.count_params(dense), "test accuracy:", evaluate(dense, task.test, task.metric))"""),
    ("md", "## Spectra: the MSE-to-rank curve of every eligible layer"),
    ("code", """curves = ranksearch.spectra(dense)
for name, c in curves.items():
    print(f"{name:>3} {c.shape[0]:>4}x{c.shape[1]:<5} max useful rank {c.max_rank:>3}  "
          f"MSE at rank 1/8/32: {c.mse[1]:.2e} {c.mse[min(8, c.max_rank)]:.2e} {c.mse[min(32, c.max_rank)]:.2e}")"""),
    ("md", "## The CE1 rule: one MSE bound for all layers, found by bisection for a 10% working point"),
    ("code", """rule = ranksearch.solve(dense, target_ratio=0.10)
print("ratio", round(rule.achieved_ratio, 4), "ranks", rule.ranks)
print("accuracy before retrain:", evaluate(ranksearch.apply(dense, rule), task.test, task.metric))"""),
    ("md", "## Search: the rule is trial 0; each trial retrains briefly and is scored on the validation split"),
    ("code", """import dataclasses, tempfile
out = tempfile.mkdtemp()
recipe = dataclasses.replace(space.retrain, epochs=1)
settings = ranksearch.SearchSettings(target_ratio=0.10, retrain=recipe, seed=0)  # what the study searches
result = ranksearch.search(dense, settings, task=task, run=ranksearch.RunOptions(n_trials=3, out_dir=out))  # writes the results folder
from ranksearch.results import summary_table
print(summary_table(result.summary).markdown())"""),
    ("md", "## Export, reload, re-apply"),
    ("code", """config = ranksearch.RankConfig.load(f"{out}/rank_config.json")
small = ranksearch.load_factorized(dense, config, f"{out}/factorized.safetensors")
assert ranksearch.count_params(small) == config.compressed_params
print(config.achieved_ratio, config.ranks, evaluate(small, task.test, task.metric))"""),
]

nb = nbformat.v4.new_notebook()
nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src) for kind, src in CELLS]
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbformat.write(nb, Path(__file__).with_name("quickstart.ipynb"))
