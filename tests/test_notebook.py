"""notebooks/quickstart.ipynb runs top to bottom (it trains the default space's dense model if needed)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


@pytest.mark.slow
def test_quickstart_executes(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "dense parameters: 870634" in outputs
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors


@pytest.mark.slow
def test_working_points_notebook_prints_the_seeds_tables(tmp_path):
    """notebooks/working_points.ipynb: every Table 1 working point of the seed's five models, as the
    seed's per-layer tables, and the NNR sizes of the two small ones (when NNCodec is installed)."""
    pytest.importorskip("nncodec.nnc_core")
    from ranksearch import load_space, solve

    nb = nbformat.read(NOTEBOOK.with_name("working_points.ipynb"), as_version=4)
    NotebookClient(nb, timeout=1500, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    for name in ("vgg16", "resnet50", "mobilenet_v2", "dcase-audio", "image-compression"):
        assert f"== {name} ==" in text
    space = load_space("dcase-audio")  # one table row checked against the solver
    model = space.build_architecture()
    cfg = solve(model, space.working_points[-1], exclude=space.exclude, rank_multiple=space.rank_multiple, min_rank=space.min_rank)
    name, layer = next(iter(cfg.layers.items()))
    table = text.split("== dcase-audio ==")[1].split("==")[0]
    row = next(line for line in table.splitlines() if line.startswith(f"{name} "))
    assert row.split()[-2:] == [str(layer.rank), f"{layer.params_after:,}"]
    for name in ("dcase-audio", "image-compression"):
        part = text.split(f"{name}: dense")[1]
        assert "bytes at qp -38" in part and part.count(" bytes (") >= 4
