"""Tests of the DCASE-style scene CNN, its log-mel front end, the synthetic scenes and the folder reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import wavfile
from torch import nn

from ranksearch.core._task import Task
from ranksearch.spaces.zoo import dcase

SMALL = {"n_train": 300, "n_val": 30, "n_test": 150}


@pytest.fixture(scope="module")
def small_task() -> Task:
    return dcase.task(seed=1, **SMALL)


def test_model_size_and_layers() -> None:
    model = dcase.build_model()
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 116_815) / 116_815 < 0.05
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) >= 6 and all(c.groups == 1 for c in convs)
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) >= 2


def test_model_output_shapes() -> None:
    model = dcase.build_model().eval()
    assert model(torch.randn(3, 1, 40, 64)).shape == (3, 15)
    assert model(torch.randn(2, 1, 40, 32)).shape == (2, 15)  # mean over time: any length >= 8
    assert dcase.build_model(num_classes=4)(torch.randn(2, 1, 40, 64)).shape == (2, 4)


def test_log_mel_puts_a_tone_in_the_right_band() -> None:
    fb = dcase.mel_filterbank()
    assert fb.shape == (40, 257) and (fb >= 0).all() and (fb.sum(axis=1) > 0).all()
    t = np.arange(dcase.CLIP_SAMPLES) / dcase.SAMPLE_RATE
    mel = dcase.log_mel(np.sin(2 * np.pi * 1000.0 * t)[None])
    assert mel.shape == (1, 40, 64)
    peak = int(mel[0].mean(axis=1).argmax())
    centers = (fb * np.linspace(0, 8000, 257)).sum(1) / fb.sum(1)
    assert abs(centers[peak] - 1000.0) < 150.0
    with pytest.raises(ValueError, match="samples"):
        dcase.log_mel(np.zeros((1, 100)))


def test_synthetic_task_contents(small_task: Task) -> None:
    t = small_task
    assert t.synthetic and "synthetic" in t.description.lower()
    assert (t.loss, t.metric) == ("cross_entropy", "accuracy")
    assert [len(s) for s in (t.train, t.val, t.test)] == [300, 30, 150]
    x, y = t.train[0]
    assert x.shape == (1, 40, 64) and x.dtype == torch.float32 and y.dtype == torch.int64
    xs, ys = t.train.tensors
    assert torch.bincount(ys, minlength=15).min() >= 10  # every class present, roughly balanced
    assert torch.isfinite(xs).all()
    assert xs.mean(dim=(0, 1, 3)).abs().max() < 1e-3  # normalized per band on train
    assert torch.allclose(xs.std(dim=(0, 1, 3)), torch.ones(40), atol=1e-2)


def test_synthetic_task_is_deterministic() -> None:
    tiny = {"n_train": 40, "n_val": 5, "n_test": 10}
    a, b, c = dcase.task(seed=3, **tiny), dcase.task(seed=3, **tiny), dcase.task(seed=4, **tiny)
    for split in ("train", "val", "test"):
        assert all(torch.equal(u, v) for u, v in zip(getattr(a, split).tensors, getattr(b, split).tensors, strict=True))
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0])


def test_classes_overlap_but_are_separable(small_task: Task) -> None:
    # Nearest centroid on the time-averaged log-mel: far above chance (1/15), far from perfect.
    (xt, yt), (xv, yv) = small_task.train.tensors, small_task.test.tensors
    ft, fv = xt[:, 0].mean(-1), xv[:, 0].mean(-1)
    centroids = torch.stack([ft[yt == c].mean(0) for c in range(15)])
    acc = (torch.cdist(fv, centroids).argmin(1) == yv).float().mean().item()
    assert 0.2 < acc < 0.9


def test_synthesize_waveforms() -> None:
    wave = dcase.synthesize(np.arange(15), np.random.default_rng(0))
    assert wave.shape == (15, dcase.CLIP_SAMPLES) and wave.dtype == np.float32
    assert np.isfinite(wave).all() and (np.abs(wave) < 10).all() and (wave.std(axis=1) > 1e-3).all()


def _write_folder(root: Path, scenes: int = 3, recordings: int = 4, seconds: float = 3.0) -> None:
    (root / "audio").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for c in range(scenes):
        for r in range(recordings):
            name = f"s{c}_r{r}.wav"
            noise = rng.standard_normal((int(44_100 * seconds), 2)) * (0.05 + 0.1 * c)
            wavfile.write(root / "audio" / name, 44_100, (noise * 8000).astype(np.int16))
            lines.append(f"audio/{name}\tscene{c}\tsrc{c}{r}")
    (root / "meta.txt").write_text("\n".join(lines) + "\n")


def test_dcase_folder(tmp_path: Path) -> None:
    _write_folder(tmp_path)
    # Sizes 2:1:1 split each scene's 4 recordings 2/1/1; a 3 s recording gives two 64-frame segments.
    t = dcase.task(seed=0, n_train=200, n_val=100, n_test=100, data_dir=str(tmp_path))
    assert not t.synthetic and str(tmp_path) in t.description
    assert [len(s) for s in (t.train, t.val, t.test)] == [12, 6, 6]
    x, _ = t.train[0]
    assert x.shape == (1, 40, 64)
    for split in (t.train, t.val, t.test):
        assert torch.bincount(split.tensors[1], minlength=3).tolist() == [len(split) // 3] * 3
    # Louder scenes have higher log-mel energy: the labels follow the files.
    energy = [t.train.tensors[0][t.train.tensors[1] == c].mean().item() for c in range(3)]
    assert energy == sorted(energy)
    capped = dcase.task(seed=0, n_train=10, n_val=5, n_test=5, data_dir=str(tmp_path))
    assert [len(s) for s in (capped.train, capped.val, capped.test)] == [10, 5, 5]


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        ("nothing", "not a directory"),
        ("no_meta", "No meta.txt"),
        ("one_column", "Malformed"),
        ("missing_audio", "missing"),
    ],
)
def test_bad_data_dir(tmp_path: Path, setup: str, match: str) -> None:
    root = tmp_path / "dcase"
    if setup != "nothing":
        _write_folder(root, scenes=2, recordings=3, seconds=1.2)
    if setup == "no_meta":
        (root / "meta.txt").unlink()
    elif setup == "one_column":
        (root / "meta.txt").write_text("audio/s0_r0.wav\n")
    elif setup == "missing_audio":
        (root / "audio" / "s1_r2.wav").unlink()
    with pytest.raises(ValueError, match=match) as err:
        dcase.task(data_dir=str(root), n_train=4, n_val=1, n_test=1)
    assert str(root) in str(err.value)


def test_bad_sizes() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        dcase.task(n_val=0)
