"""Tests of the miniature learned image codec, its GDN layers and the bundled-photo task."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ranksearch.core._task import Task
from ranksearch.spaces.zoo import codec


@pytest.fixture(scope="module")
def small_task() -> Task:
    return codec.task(seed=0, crop=32, n_train=200, n_val=16, n_test=16)


def test_model_size_and_layers() -> None:
    model = codec.build_model()
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 76_179) / 76_179 < 0.05
    convs = [m for m in model.modules() if type(m) is nn.Conv2d]
    deconvs = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(convs) == 3 and len(deconvs) == 3
    assert all(m.groups == 1 and m.stride == (2, 2) for m in convs + deconvs)
    assert sum(isinstance(m, codec.GDN) for m in model.modules()) == 4


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 32, 48)])
def test_model_output_shape(shape: tuple[int, ...]) -> None:
    model = codec.build_model().eval()
    assert model(torch.rand(shape)).shape == shape


def test_gdn_matches_formula_and_stays_non_negative() -> None:
    torch.manual_seed(0)
    gdn = codec.GDN(5)
    with torch.no_grad():  # raw parameters anywhere, even negative: effective ones stay valid
        gdn.beta.normal_()
        gdn.gamma.normal_()
    beta, gamma = gdn.effective()
    assert (beta > 0).all() and (gamma >= 0).all()
    x = torch.randn(2, 5, 4, 3)
    y = gdn(x)
    assert y.shape == x.shape
    expected = x / torch.sqrt(beta[None, :, None, None] + torch.einsum("ij,bjhw->bihw", gamma, x * x))
    assert torch.allclose(y, expected, atol=1e-6)
    assert (gdn(x.abs()) >= 0).all() and torch.equal(torch.sign(y), torch.sign(x))
    igdn = codec.GDN(5, inverse=True)
    assert torch.allclose(igdn(x), x * torch.sqrt(1.0 + 0.1 * x * x), atol=1e-5)  # initial beta=1, gamma=0.1 I


def test_gdn_rejects_bad_channels() -> None:
    with pytest.raises(ValueError, match="channels"):
        codec.GDN(0)


def test_quantizer_noise_in_training_rounding_with_gradient_in_eval() -> None:
    torch.manual_seed(0)
    model = codec.build_model()
    x = torch.rand(2, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x), model(x))
    model(x).square().mean().backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0  # straight-through
    model.train()
    assert not torch.equal(model(x), model(x))
    plain = codec.build_model(quantize=False).train()
    assert not any(isinstance(m, codec._Quantize) for m in plain.modules())


def test_task_contents(small_task: Task) -> None:
    t = small_task
    assert (t.loss, t.metric, t.synthetic) == ("mse", "psnr", False)
    assert [len(s) for s in (t.train, t.val, t.test)] == [200, 16, 16]
    for split in (t.train, t.val, t.test):
        x, y = split[0]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and torch.equal(x, y)
        assert 0.0 <= x.min() and x.max() <= 1.0


def test_task_is_deterministic(small_task: Task) -> None:
    again = codec.task(seed=0, crop=32, n_train=200, n_val=16, n_test=16)
    other = codec.task(seed=1, crop=32, n_train=200, n_val=16, n_test=16)
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(small_task, split).crops, getattr(again, split).crops)
    assert not torch.equal(small_task.train.crops, other.train.crops)


def test_held_out_photos_are_disjoint_from_training(small_task: Task) -> None:
    assert not set(codec.TRAIN_PHOTOS) & set(codec.HELD_OUT_PHOTOS)
    every = sorted(set(codec.TRAIN_PHOTOS) | set(codec.HELD_OUT_PHOTOS))
    photos = dict(zip(every, codec.load_photos(tuple(every)), strict=True))
    assert len({p.tobytes() for p in photos.values()}) == len(photos)  # no photo twice (e.g. chelsea/cat)
    train_bytes = {c.numpy().tobytes() for c in small_task.train.crops}
    squares = {}
    for parity, split in enumerate((small_task.val, small_task.test)):
        assert not train_bytes & {c.numpy().tobytes() for c in split.crops}
        for crop in split.crops.permute(0, 2, 3, 1).numpy():  # every held-out tile is cut from a held-out photo
            where = [w for name in codec.HELD_OUT_PHOTOS for w in _positions(photos[name], crop)]
            assert where and all((r + c) % 2 == parity for r, c in where)  # val: white squares, test: black
            squares.setdefault(parity, set()).update(where)
    assert not squares[0] & squares[1]


def test_default_held_out_sets_are_every_tile():
    t = codec.task(seed=0, crop=64, n_train=8)
    assert (len(t.val), len(t.test)) == (101, 101)  # 202 tiles of chelsea, flower, coffee and china
    assert len({bytes(t.val[i][0].numpy()) for i in range(len(t.val))}) == 101


def _positions(photo: np.ndarray, tile: np.ndarray) -> list[tuple[int, int]]:
    """Grid squares (row, column) of ``photo`` equal to ``tile``."""
    k = tile.shape[0]
    return [(r // k, c // k) for r in range(0, photo.shape[0] - k + 1, k) for c in range(0, photo.shape[1] - k + 1, k)
            if np.array_equal(photo[r:r + k, c:c + k], tile)]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"crop": 60}, "multiple of 8"), ({"n_train": 0}, "at least 1"), ({"n_val": 10_000}, "non-overlapping")],
)
def test_bad_arguments(kwargs: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        codec.task(**kwargs)


def test_unknown_photo() -> None:
    with pytest.raises(ValueError, match="'lena'"):
        codec.load_photos(("lena",))

