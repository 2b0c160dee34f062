"""Tests of ranksearch.results._formats: ONNX files of factorized models run in onnxruntime as in PyTorch, each
low-rank pair as two nodes; ``ranksearch export --config`` end to end; errors leave no file behind."""

from __future__ import annotations

import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn

from ranksearch import RankConfig, apply, load_factorized, load_space, solve
from ranksearch.cli import main
from ranksearch.core._layers import LowRank
from ranksearch.core._surgery import count_params, factorize
from ranksearch.errors import RankSearchError
from ranksearch.results._formats import (
    FORMATS,
    LAYER_OPS,
    check_packages,
    get_format,
    onnx_op_counts,
    sample_input,
    shaped_input,
    write_model,
)
from ranksearch.spaces.zoo.codec import GDN


def _run(path: Path, x: torch.Tensor) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def _torch(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(x).numpy()


def _layer_nodes(path: Path) -> int:
    counts = onnx_op_counts(path)
    return sum(counts.get(op, 0) for op in LAYER_OPS)


def _initializer_shapes(path: Path) -> set[tuple[int, ...]]:
    return {tuple(t.dims) for t in onnx.load(str(path)).graph.initializer}


def _test_inputs(space_name: str, start: int, stop: int) -> torch.Tensor:
    task = load_space(space_name).build_task()
    return torch.stack([task.test[i][0] for i in range(start, stop)])


@pytest.fixture(scope="module")
def mnist(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The embedded default, mnist5k-cnn (random init: not trained here), dense and at WP2 by the CE1
    rule, both exported on its first two test digits."""
    space = load_space("mnist5k-cnn")
    dense = space.build_architecture().eval()
    cfg = solve(dense, space.working_point("WP2"), exclude=space.exclude)
    small = apply(dense, cfg).eval()
    root = tmp_path_factory.mktemp("mnist-onnx")
    sample = sample_input(space.build_task())
    lines = {k: write_model(m, root / f"{k}.onnx", "onnx", sample) for k, m in (("dense", dense), ("small", small))}
    return {"dense": dense, "small": small, "cfg": cfg, "root": root, "lines": lines, "sample": sample}


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_factorized_mnist_runs_in_onnxruntime_as_in_pytorch(mnist, batch):
    x = _test_inputs("mnist5k-cnn", 100, 100 + batch)  # other digits than the traced ones, other batch sizes
    ref, got = _torch(mnist["small"], x), _run(mnist["root"] / "small.onnx", x)
    assert got.shape == (batch, 10)
    assert np.abs(got - ref).max() <= 1e-4
    assert np.abs(ref).max() > 1e-3  # a real output, not zeros
    dense = _run(mnist["root"] / "dense.onnx", x)
    assert np.abs(dense - _torch(mnist["dense"], x)).max() <= 1e-4
    assert np.abs(dense - got).max() > 1e-3  # the factorized file is not the dense model


def test_each_pair_is_two_nodes_and_no_dense_weight(mnist):
    cfg, root = mnist["cfg"], mnist["root"]
    assert len(cfg.ranks) >= 3
    assert _layer_nodes(root / "small.onnx") - _layer_nodes(root / "dense.onnx") == len(cfg.ranks)
    shapes = _initializer_shapes(root / "small.onnx")
    for name, layer in cfg.layers.items():
        w = tuple(layer.weight_shape)
        assert w not in shapes and tuple(reversed(w)) not in shapes, name  # never recomposed into G @ H
        assert any(layer.rank in s for s in shapes), name
    pairs = [m for m in mnist["small"].modules() if isinstance(m, LowRank)]
    for pair in pairs:
        h = tuple(pair.h.weight.shape)
        assert h in shapes or tuple(reversed(h)) in shapes


def test_file_size_follows_the_parameters(mnist):
    root, cfg = mnist["root"], mnist["cfg"]
    ratio = (root / "small.onnx").stat().st_size / (root / "dense.onnx").stat().st_size
    assert abs(ratio - cfg.achieved_ratio) < 0.01, (ratio, cfg.achieved_ratio)


def test_report_line(mnist):
    line = mnist["lines"]["small"]
    assert line.startswith(str(mnist["root"] / "small.onnx") + ": ONNX opset ")
    assert "batch dynamic" in line and f"{count_params(mnist['small']):,} parameters" in line and "\n" not in line


def test_graph_has_named_io_and_a_dynamic_batch(mnist):
    graph = onnx.load(str(mnist["root"] / "small.onnx")).graph
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["output"]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 28, 28]


class _Up(nn.Module):
    """A transposed conv called with output_size (as a decoder matching an encoder's shape does)."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(6, 5, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x, output_size=[2 * x.shape[2], 2 * x.shape[3]])


class _Tokens(nn.Module):
    """Linear layers on (B, T, C) input: MatMul instead of Gemm."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(12, 16), nn.Linear(16, 10, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


LAYERS = [  # (id, model, input shape, ranks)
    ("conv1d", lambda: nn.Sequential(nn.Conv1d(4, 12, 3, stride=2, padding=1, dilation=2), nn.ReLU(), nn.Conv1d(12, 8, 5)),
     (2, 4, 40), {"0": 3, "2": 4}),
    ("conv2d-geometry", lambda: nn.Sequential(nn.Conv2d(3, 10, (3, 2), stride=(2, 1), padding=(1, 0)), nn.ReLU(),
                                              nn.Conv2d(10, 8, 3, padding=2, dilation=2, padding_mode="reflect", bias=False)),
     (2, 3, 12, 12), {"0": 4, "2": 5}),
    ("convtranspose-output-size", _Up, (2, 6, 5, 7), {"up": 3}),
    ("convtranspose-gdn", lambda: nn.Sequential(OrderedDict(
        up=nn.ConvTranspose2d(8, 6, 5, stride=2, padding=2, output_padding=1), igdn=GDN(6, inverse=True),
        down=nn.Conv2d(6, 8, 5, stride=2, padding=2), gdn=GDN(8))), (2, 8, 6, 6), {"up": 3, "down": 4}),
    ("linear-3d", _Tokens, (2, 7, 12), {"a": 4, "b": 3}),
    ("linear-2d", lambda: nn.Sequential(nn.Linear(30, 20), nn.Tanh(), nn.Linear(20, 6, bias=False)), (2, 30), {"0": 5, "2": 4}),
]


@pytest.mark.parametrize("build, shape, ranks", [c[1:] for c in LAYERS], ids=[c[0] for c in LAYERS])
def test_every_pair_type_exports_faithfully(tmp_path, build, shape, ranks):
    torch.manual_seed(0)
    dense = build().eval()
    small = factorize(dense, ranks).eval()
    with torch.no_grad():  # as if retrained: the pair no longer matches the SVD of the dense weight
        for p in small.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sample = torch.randn(shape)
    write_model(dense, tmp_path / "dense.onnx", "onnx", sample)
    write_model(small, tmp_path / "small.onnx", "onnx", sample)
    for batch in (1, 5):
        x = torch.randn(batch, *shape[1:])
        assert np.abs(_run(tmp_path / "small.onnx", x) - _torch(small, x)).max() <= 1e-4
    assert _layer_nodes(tmp_path / "small.onnx") - _layer_nodes(tmp_path / "dense.onnx") == len(ranks)


def test_codec_space_with_gdn_and_transposed_convs(tmp_path):
    space = load_space("image-compression")
    dense = space.build_architecture().eval()
    cfg = solve(dense, space.working_point("WP3"), exclude=space.exclude)
    small = apply(dense, cfg).eval()
    assert {lr.type for lr in cfg.layers.values()} == {"Conv2d", "ConvTranspose2d"}
    task = space.build_task()
    line = write_model(small, tmp_path / "codec.onnx", "onnx", sample_input(task))
    assert "batch dynamic" in line
    x = torch.stack([task.test[i][0] for i in range(10, 13)])
    ref, got = _torch(small, x), _run(tmp_path / "codec.onnx", x)
    assert got.shape == x.shape and np.abs(got - ref).max() <= 1e-4
    write_model(dense, tmp_path / "dense.onnx", "onnx", sample_input(task))
    assert _layer_nodes(tmp_path / "codec.onnx") - _layer_nodes(tmp_path / "dense.onnx") == len(cfg.ranks)
    counts = onnx_op_counts(tmp_path / "codec.onnx")
    assert counts["ConvTranspose"] == 3 and counts["Round"] == 1  # the eval-mode quantizer is kept


def test_sample_input_is_the_first_test_inputs():
    task = load_space("tiny-digits").build_task()
    x = sample_input(task, n=3)
    assert x.shape == (3, 1, 8, 8) and torch.equal(x[2], task.test[2][0])


def test_unknown_format():
    with pytest.raises(RankSearchError, match=r"'tflite'.*\['nnr', 'onnx'\]"):
        get_format("tflite")
    assert FORMATS["onnx"].suffix == ".onnx" and FORMATS["nnr"].suffix == ".nnr"


def test_missing_package_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript now raises ImportError
    with pytest.raises(RankSearchError, match=r"needs onnxscript, which is not installed: pip install 'ranksearch\[onnx\]'"):
        check_packages(get_format("onnx"))
    with pytest.raises(RankSearchError, match="ranksearch"):
        write_model(nn.Linear(3, 2), tmp_path / "m.onnx", "onnx", torch.randn(2, 3))
    assert list(tmp_path.iterdir()) == []


class _DataDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if float(x.sum()) > 0 else x  # a branch on the data: torch.export cannot trace it


def test_failed_export_leaves_the_old_file(tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old")
    with pytest.raises(RankSearchError, match="torch.onnx cannot export _DataDependent"):
        write_model(_DataDependent(), out, "onnx", torch.randn(2, 3))
    assert out.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_output_that_differs_is_refused(tmp_path, monkeypatch):
    import ranksearch.results._formats as formats

    monkeypatch.setattr(formats, "_max_difference", lambda path, model, x: 0.5)
    with pytest.raises(RankSearchError, match="differs from PyTorch's by 0.5"):
        write_model(nn.Linear(3, 2), tmp_path / "m.onnx", "onnx", torch.randn(2, 3))
    assert list(tmp_path.iterdir()) == []


def test_model_mode_is_restored(tmp_path):
    net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).train()
    write_model(net, tmp_path / "m.onnx", "onnx", torch.randn(2, 4))
    assert net.training and (tmp_path / "m.onnx").is_file()


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("search") / "run"
    assert main(["search", "--space", "tiny-digits", "--ratio", "0.2", "--trials", "3", "--epochs", "1", "--out", str(out), "-q"]) == 0
    return out


def test_cli_exports_a_searched_model(searched, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert main(["export", "--config", str(searched / "rank_config.json"), "--weights", str(searched / "factorized.safetensors"),
                 "--format", "onnx", "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{out}: ONNX opset") and "batch dynamic" in line
    space, cfg = load_space("tiny-digits"), RankConfig.load(searched / "rank_config.json")
    model = load_factorized(space.build_model(), cfg, searched / "factorized.safetensors")
    x = _test_inputs("tiny-digits", 0, 9)
    assert np.abs(_run(out, x) - _torch(model, x)).max() <= 1e-4
    svd = apply(space.build_model(), cfg, factors="plain")  # the retrained weights are the ones exported, not the SVD's
    assert np.abs(_run(out, x) - _torch(svd, x)).max() > 1e-3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_cli_exports_a_solved_config_untrained(tmp_path, capsys):
    rc, out = tmp_path / "rc.json", tmp_path / "sub" / "model.onnx"
    assert main(["solve", "--space", "tiny-digits", "--wp", "WP2", "--out", str(rc)]) == 0
    assert main(["export", "--config", str(rc), "--format", "onnx", "--out", str(out)]) == 0
    cfg = RankConfig.load(rc)
    model = apply(load_space("tiny-digits").build_model(), cfg)
    x = _test_inputs("tiny-digits", 20, 24)
    assert np.abs(_run(out, x) - _torch(model, x)).max() <= 1e-4
    assert str(out) in capsys.readouterr().out


def test_cli_without_onnx_is_one_line_and_writes_nothing(searched, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    out = tmp_path / "model.onnx"
    assert main(["export", "--config", str(searched / "rank_config.json"), "--format", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ranksearch export: error: Writing --format onnx needs onnx, which is not installed: pip install 'ranksearch[onnx]'."]
    assert list(tmp_path.iterdir()) == []


def _taskless_space(tmp_path: Path, input_shape: bool) -> Path:
    """tiny-digits without its task (an architecture only), with or without its input_shape."""
    lines = (Path(__file__).resolve().parents[1] / "data" / "tiny-digits.yaml").read_text().splitlines()
    keep, skip = [], False
    for line in lines:
        if line.startswith("task:"):
            skip = True
            continue
        if skip and line.startswith("  "):
            continue
        skip = False
        if line.startswith("input_shape") and not input_shape:
            continue
        keep.append(line.replace("name: tiny-digits", "name: tiny-notask"))
    path = tmp_path / "tiny-notask.yaml"
    path.write_text("\n".join(keep) + "\n")
    return path


def test_shaped_input_is_seeded_and_checks_the_shape():
    x = shaped_input((1, 8, 8), n=3)
    assert x.shape == (3, 1, 8, 8) and torch.equal(x, shaped_input([1, 8, 8], n=3)) and x.std() > 0.5
    with pytest.raises(RankSearchError, match=r"input_shape \[1, 0\] must list positive ints"):
        shaped_input((1, 0))


def test_cli_exports_a_space_without_data_on_inputs_of_its_shape(tmp_path, capsys):
    space_file = _taskless_space(tmp_path, input_shape=True)
    rc, out = tmp_path / "rc.json", tmp_path / "model.onnx"
    assert main(["solve", "--space", str(space_file), "--ratio", "0.3", "--out", str(rc)]) == 0
    assert main(["export", "--config", str(rc), "--format", "onnx", "--out", str(out)]) == 2  # a space file is code: named or trusted
    assert "--trust-space" in capsys.readouterr().err
    assert main(["export", "--config", str(rc), "--format", "onnx", "--trust-space", "--out", str(out)]) == 0
    assert "batch dynamic" in capsys.readouterr().out
    cfg = RankConfig.load(rc)
    model = apply(load_space(str(space_file)).build_model(allow_random=True), cfg)
    x = _test_inputs("tiny-digits", 0, 5)  # real digits: the graph traced on random inputs of the shape runs them too
    assert np.abs(_run(out, x) - _torch(model, x)).max() <= 1e-4


def test_cli_export_without_data_or_shape_is_one_line(tmp_path, capsys):
    space_file = _taskless_space(tmp_path, input_shape=False)
    rc, out = tmp_path / "rc.json", tmp_path / "model.onnx"
    assert main(["solve", "--space", str(space_file), "--ratio", "0.3", "--out", str(rc)]) == 0
    capsys.readouterr()
    assert main(["export", "--config", str(rc), "--format", "onnx", "--space", str(space_file), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no task and no input_shape" in err[0] and not out.exists()
