"""Acoustic scene classification in the style of the DCASE 2017 task 1 baseline, on log-mel input.

The model is a small VGG-like CNN (three blocks of two 3x3 convolutions with batch norm, max-pooling
and dropout, then a mean over time and two fully connected layers): 115,263 parameters for 15 classes,
1.3% below the 116,815 of the contribution it follows, with six convolutions and two FCs to factorize.

By default the data is a *synthetic* acoustic scene generator that ships in the package: 15 scene
classes, each a fixed recipe of coloured noise with a spectral bump and slow loudness modulation,
harmonic tonal events and impulsive clicks, all with random per-clip gains, pitches, timing and
rates so that the classes overlap. Clips are rendered as 16 kHz waveforms with numpy and go through
the same log-mel front end (40 mel bands, 64 frames of 512 samples, hop 250) as real recordings.
With ``data_dir`` the task reads a DCASE-style folder (``audio/*.wav`` and ``meta.txt``) instead:
recordings are split by recording and cut into 1 s segments of the same shape (see :func:`task`).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ranksearch.core._task import Task
from ranksearch.errors import SpaceError

__all__ = ["SCENES", "build_model", "log_mel", "mel_filterbank", "synthesize", "task"]

logger = logging.getLogger(__name__)

SCENES = (
    "beach", "bus", "cafe/restaurant", "car", "city_center", "forest_path", "grocery_store", "home",
    "library", "metro_station", "office", "park", "residential_area", "train", "tram",
)
SAMPLE_RATE = 16_000
N_FFT, HOP, N_MELS, N_FRAMES = 512, 250, 40, 64
CLIP_SAMPLES = N_FFT + (N_FRAMES - 1) * HOP  # 16,262 samples (~1 s) give exactly N_FRAMES frames
_GEN = 16_384  # noise and clicks are made circularly at this fast FFT length, then cropped
_CLASS_SEED = 2017  # the class recipes are fixed; ``seed`` only draws the clips
_CHUNK = 200  # clips rendered at once (bounds memory to ~100 MB)
_OVERLAP = 1.3  # scales every per-clip jitter: how much the classes overlap


def build_model(num_classes: int = 15, dropout: float = 0.1) -> nn.Module:
    """CNN for (B, 1, 40, T) log-mel input (T >= 8): 3 x [2 x (conv3x3, BN, ReLU), pool, dropout], FC, FC.

    Args:
        num_classes: Number of scene classes (logits out).
        dropout: Dropout probability after each block and the hidden FC.

    Returns:
        Module mapping (B, 1, 40, T) to (B, num_classes) logits.
    """

    def block(cin: int, cout: int) -> list[nn.Module]:
        layers: list[nn.Module] = []
        for c in (cin, cout):
            layers += [nn.Conv2d(c, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        return layers + [nn.MaxPool2d(2), nn.Dropout(dropout)]

    return nn.Sequential(
        *block(1, 16), *block(16, 32), *block(32, 64),
        _MeanOverTime(), nn.Flatten(),  # (B, 64 channels x 5 mel bands)
        nn.Linear(64 * (N_MELS // 8), 128), nn.ReLU(inplace=True), nn.Dropout(dropout),
        nn.Linear(128, num_classes),
    )


class _MeanOverTime(nn.Module):
    """Average a (B, C, F, T) map over its last (time) axis, so any clip length works."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=-1)


def mel_filterbank(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    """Triangular HTK-mel filters from 50 Hz to Nyquist, shape (n_mels, n_fft // 2 + 1), area-normalized."""
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    edges_mel = np.linspace(mel(50.0), mel(sample_rate / 2), n_mels + 2)
    edges = 700.0 * (10.0 ** (edges_mel / 2595.0) - 1.0)
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    tri = np.maximum(0.0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))
    return (tri * (2.0 / (hi - lo))).astype(np.float32)


def log_mel(wave: np.ndarray, fbank: np.ndarray | None = None) -> np.ndarray:
    """Log-mel spectrogram of (B, N) waveforms: Hann-windowed STFT power, mel filters, log -> (B, 40, T)."""
    if wave.ndim != 2 or wave.shape[1] < N_FFT:
        raise SpaceError(f"log_mel needs (batch, samples >= {N_FFT}) waveforms, got shape {wave.shape}.")
    fbank = mel_filterbank() if fbank is None else fbank
    frames = np.lib.stride_tricks.sliding_window_view(wave.astype(np.float32), N_FFT, axis=1)[:, ::HOP]
    power = np.abs(np.fft.rfft(frames * np.hanning(N_FFT).astype(np.float32), axis=-1)) ** 2
    return np.log(power.astype(np.float32) @ fbank.T + 1e-6).transpose(0, 2, 1)


def _class_recipes(n: int = len(SCENES)) -> dict[str, np.ndarray]:
    """Per-class recipe parameters, fixed for every seed.

    Each parameter is a permutation of evenly spaced values, so every pair of classes differs in several
    cues but no single cue separates all classes.
    """
    rng = np.random.default_rng(_CLASS_SEED)
    spread = lambda lo, hi: rng.permutation(np.linspace(lo, hi, n))  # noqa: E731
    log_spread = lambda lo, hi: np.exp(spread(np.log(lo), np.log(hi)))  # noqa: E731
    return {
        "slope": spread(0.0, 2.0), "bump_hz": log_spread(150.0, 5000.0), "bump_db": spread(0.0, 15.0),
        "mod_depth": spread(0.0, 0.8), "tone_rate": spread(0.0, 3.0), "tone_f0": log_spread(80.0, 1200.0),
        "tone_rolloff": spread(0.2, 0.85), "tone_dur": log_spread(0.05, 0.6), "tone_db": spread(-14.0, -2.0),
        "glide": spread(-0.3, 0.3), "click_rate": spread(0.0, 12.0), "click_decay": log_spread(0.002, 0.04),
        "click_db": spread(-6.0, 8.0), "click_tilt": spread(-1.0, 1.0),
    }


def _click_spectra(rec: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Spectrum (class, rfft bins) of each class's click: decaying, tilted noise burst with RMS 1 over its decay."""
    t = np.arange(2048) / SAMPLE_RATE
    bursts = rng.standard_normal((len(rec["click_decay"]), t.size)) * np.exp(-t / rec["click_decay"][:, None])
    spec = np.fft.rfft(bursts, axis=1)
    spec *= (np.arange(spec.shape[1]) + 1.0) ** (0.5 * rec["click_tilt"][:, None])
    bursts = np.fft.irfft(spec, n=t.size, axis=1)
    bursts *= np.sqrt(rec["click_decay"][:, None] * SAMPLE_RATE / np.sum(bursts**2, axis=1, keepdims=True))
    return np.fft.rfft(bursts, n=_GEN, axis=1).astype(np.complex64)


def _noise_and_clicks(labels: np.ndarray, rec: dict[str, np.ndarray], clicks: np.ndarray,
                      rng: np.random.Generator) -> np.ndarray:
    """Coloured noise (RMS 1, jittered slope and bump) plus Poisson clicks, built in the rfft domain."""
    b, n = len(labels), _GEN
    f = np.maximum(np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE), 20.0)
    slope = rec["slope"][labels, None] + 0.3 * _OVERLAP * rng.standard_normal((b, 1))
    bump_hz = rec["bump_hz"][labels, None] * 2.0 ** (0.5 * _OVERLAP * rng.standard_normal((b, 1)))
    bump_db = rec["bump_db"][labels, None] + 3.0 * _OVERLAP * rng.standard_normal((b, 1))
    bump = 10.0 ** (bump_db / 20.0) * np.exp(-0.5 * (np.log2(f / bump_hz) / 0.7) ** 2)
    mag = (f / 1000.0) ** (-slope / 2.0) + bump
    mag /= np.sqrt(np.mean(mag**2, axis=1, keepdims=True))
    spec = (mag / np.sqrt(2.0)).astype(np.float32) * (rng.standard_normal(mag.shape, np.float32)
                                                      + 1j * rng.standard_normal(mag.shape, np.float32))
    train = np.zeros((b, n), np.float32)
    counts = rng.poisson(rec["click_rate"][labels] * n / SAMPLE_RATE)
    rows = np.repeat(np.arange(b), counts)
    gain_db = rec["click_db"][labels[rows]] + 4.0 * _OVERLAP * rng.standard_normal(rows.size)
    np.add.at(train, (rows, rng.integers(0, n, rows.size)), rng.choice([-1.0, 1.0], rows.size) * 10 ** (gain_db / 20))
    spec += np.fft.rfft(train, axis=1, norm="ortho") * clicks[labels]
    return np.fft.irfft(spec, n=n, axis=1, norm="ortho")[:, :CLIP_SAMPLES]


def _modulation(labels: np.ndarray, rec: dict[str, np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Slow random loudness envelope (B, N): 9 random knots, linearly interpolated, class depth."""
    knots = 1.0 + rec["mod_depth"][labels, None] * rng.uniform(-1.0, 1.0, (len(labels), 9))
    pos = np.linspace(0.0, 8.0, CLIP_SAMPLES)
    i = np.minimum(pos.astype(int), 7)
    return knots[:, i] * (1.0 - (pos - i)) + knots[:, i + 1] * (pos - i)


def _tones(labels: np.ndarray, rec: dict[str, np.ndarray], rng: np.random.Generator,
           max_events: int = 3) -> np.ndarray:
    """Harmonic tonal events (B, N): class pitch, rolloff, duration and glide, random onset and level."""
    b, n = len(labels), CLIP_SAMPLES
    t = (np.arange(n) / SAMPLE_RATE).astype(np.float32)
    out = np.zeros((b, n), np.float32)
    rolloff = rec["tone_rolloff"][labels, None] ** np.arange(1, 9)  # harmonic amplitudes (B, 8)
    table = np.sin(2 * np.pi * np.outer(np.arange(1, 9), np.arange(256) / 256)).T @ rolloff.T  # (256, B)
    table = (table / np.sqrt(np.mean(table**2, axis=0))).T.astype(np.float32)
    count = np.minimum(rng.poisson(rec["tone_rate"][labels] * n / SAMPLE_RATE), max_events)
    for k in range(max_events):
        rows = np.flatnonzero(count > k)
        lab = labels[rows, None]
        f0 = rec["tone_f0"][lab] * 2.0 ** (0.3 * _OVERLAP * rng.standard_normal((rows.size, 1)))
        dur = rec["tone_dur"][lab] * rng.uniform(0.6, 1.6, (rows.size, 1))
        onset = rng.uniform(-0.3, 1.0, (rows.size, 1)) * t[-1]
        u = np.clip((t - onset.astype(np.float32)) / dur.astype(np.float32), 0.0, 1.0)
        cycles = (f0 * t).astype(np.float32) + (f0 * rec["glide"][lab] / 2).astype(np.float32) * t * t
        level = 10 ** ((rec["tone_db"][lab] + 3.0 * _OVERLAP * rng.standard_normal((rows.size, 1))) / 20)
        wave = np.take_along_axis(table[rows], ((cycles % 1.0) * 256).astype(np.intp) % 256, axis=1)
        out[rows] += (16 * level).astype(np.float32) * (u * (1 - u)) ** 2 * wave  # (4u(1-u))^2 envelope
    return out


def synthesize(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Render one ~1 s, 16 kHz clip per label (indices into ``SCENES``): float32 waveforms (B, N)."""
    rec = _class_recipes()
    clicks = _click_spectra(rec, np.random.default_rng(_CLASS_SEED + 1))
    wave = _noise_and_clicks(labels, rec, clicks, rng) * _modulation(labels, rec, rng) + _tones(labels, rec, rng)
    gain = 0.05 * 10 ** (rng.uniform(-6.0, 6.0, (len(labels), 1)) / 20)
    return (gain * wave).astype(np.float32)


def _synthetic_features(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` class-balanced, shuffled clips as log-mel features (n, 40, 64) and labels (n,)."""
    labels = rng.permutation(np.arange(n) % len(SCENES))
    fbank = mel_filterbank()
    feats = [log_mel(synthesize(labels[i:i + _CHUNK], rng), fbank) for i in range(0, n, _CHUNK)]
    return np.concatenate(feats), labels


def _read_meta(root: Path) -> list[list[str]]:
    """Rows ``[filename, scene_label, *extra]`` of ``meta.txt`` (tab-separated) or ``meta.csv``."""
    meta = next((p for p in (root / "meta.txt", root / "meta.csv") if p.is_file()), None)
    if meta is None:
        raise SpaceError(f"No meta.txt or meta.csv in data_dir {str(root)!r}; add one with "
                         "'filename<TAB>scene_label' lines, as in the DCASE 2017 development set.")
    text = meta.read_text().splitlines()
    delim = "," if meta.suffix == ".csv" and "\t" not in (text[0] if text else "") else "\t"
    rows = [r for r in csv.reader(text, delimiter=delim) if r and not r[0].startswith("#")]
    if rows and rows[0][0].strip().lower() in ("filename", "file"):
        rows = rows[1:]
    bad = next((i for i, r in enumerate(rows) if len(r) < 2 or not r[0].strip() or not r[1].strip()), None)
    if not rows or bad is not None:
        raise SpaceError(f"Malformed {str(meta)!r}: row {bad} is {rows[bad] if rows and bad is not None else 'missing'}; "
                         "every line must be 'filename<TAB>scene_label'.")
    return [[c.strip() for c in r] for r in rows]


def _read_wave(root: Path, name: str) -> np.ndarray:
    """Mono float waveform at SAMPLE_RATE of ``name`` (relative to ``root`` or ``root/audio``)."""
    from math import gcd

    from scipy.io import wavfile
    from scipy.signal import resample_poly

    path = next((p for p in (root / name, root / "audio" / Path(name).name) if p.is_file()), None)
    if path is None:
        raise SpaceError(f"Audio file {name!r} listed in the meta of {str(root)!r} is missing; "
                         "put it under data_dir/audio/ or fix the meta file.")
    rate, data = wavfile.read(path)
    wave = data.astype(np.float64)
    if np.issubdtype(data.dtype, np.integer):
        wave = (wave - 128.0) / 128.0 if data.dtype == np.uint8 else wave / np.iinfo(data.dtype).max
    wave = wave.mean(axis=1) if wave.ndim == 2 else wave
    g = gcd(int(rate), SAMPLE_RATE)
    return resample_poly(wave, SAMPLE_RATE // g, int(rate) // g) if rate != SAMPLE_RATE else wave


def _folder_splits(root: Path, seed: int, sizes: tuple[int, int, int]) -> tuple[list, list[str]]:
    """Per-split (features, labels) of a DCASE folder, and the sorted scene names.

    Recordings (the 3rd meta column, else the file) are assigned to splits in proportion to ``sizes``
    within each scene, so no recording feeds two splits; clips are cut into non-overlapping 64-frame
    segments and each split is subsampled to at most its size.
    """
    if not root.is_dir():
        raise SpaceError(f"data_dir {str(root)!r} is not a directory; pass a DCASE-style folder or None.")
    rows = _read_meta(root)
    classes = sorted({r[1] for r in rows})
    groups: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        groups.setdefault((r[1], r[2] if len(r) > 2 else r[0]), []).append(r[0])
    rng = np.random.default_rng(seed)
    bounds = np.cumsum(sizes) / sum(sizes)
    splits: list[list[tuple[str, int]]] = [[], [], []]
    fbank = mel_filterbank()
    for c, label in enumerate(classes):
        keys = [k for k in sorted(groups) if k[0] == label]
        for i, j in enumerate(rng.permutation(len(keys))):
            at = int(np.searchsorted(bounds, (i + 0.5) / len(keys)))
            splits[at] += [(f, c) for f in groups[keys[j]]]
    out = []
    for split, size in zip(splits, sizes, strict=True):
        segs: list[np.ndarray] = []
        labs: list[int] = []
        for name, label_index in split:
            mel = log_mel(_read_wave(root, name)[None], fbank)[0]
            cut = [mel[:, s:s + N_FRAMES] for s in range(0, mel.shape[1] - N_FRAMES + 1, N_FRAMES)]
            segs += cut
            labs += [label_index] * len(cut)
        if not segs:
            raise SpaceError(f"data_dir {str(root)!r} leaves a split without 1 s segments; it needs more "
                             "(or longer) recordings per scene.")
        keep = np.sort(rng.permutation(len(segs))[:size])
        out.append((np.stack(segs)[keep], np.asarray(labs)[keep]))
    return out, classes


def task(seed: int = 0, n_train: int = 1500, n_val: int = 300, n_test: int = 600,
         data_dir: str | None = None) -> Task:
    """Synthetic 15-scene clips (``data_dir=None``) or a DCASE-style folder, as normalized log-mels.

    Args:
        seed: Draws the synthetic clips, or the recording split and segment subsets of a folder.
        n_train: Training clips (folder: split proportion and cap on 1 s segments).
        n_val: Validation clips, likewise.
        n_test: Test clips, likewise.
        data_dir: Folder with ``audio/*.wav`` and ``meta.txt`` (``filename<TAB>scene_label``[<TAB>source]).

    Returns:
        Task with (1, 40, 64) float32 inputs normalized per mel band on train, int64 labels.

    Raises:
        ValueError: On non-positive sizes, or a missing/malformed folder, meta file or audio file.
    """
    sizes = (n_train, n_val, n_test)
    if min(sizes) < 1:
        raise SpaceError(f"n_train, n_val, n_test = {sizes} must all be at least 1.")
    if data_dir is None:
        x, y = _synthetic_features(sum(sizes), np.random.default_rng(seed))
        cut = np.cumsum(sizes)[:-1]
        parts, names = list(zip(np.split(x, cut), np.split(y, cut), strict=True)), list(SCENES)
        what = f"synthetic acoustic scenes (procedural noise/tones/clicks, {len(SCENES)} classes, 16 kHz)"
    else:
        parts, names = _folder_splits(Path(data_dir), seed, sizes)
        what = f"DCASE-style recordings from {data_dir} ({len(names)} scenes, 1 s segments)"
    mean = parts[0][0].mean(axis=(0, 2), keepdims=True)
    std = parts[0][0].std(axis=(0, 2), keepdims=True) + 1e-5
    sets = [TensorDataset(torch.from_numpy(((x - mean) / std)[:, None].astype(np.float32)),
                          torch.from_numpy(y.astype(np.int64))) for x, y in parts]
    logger.debug("dcase task: %s, sizes %s", what, [len(s) for s in sets])
    return Task(
        train=sets[0], val=sets[1], test=sets[2], loss="cross_entropy", metric="accuracy",
        synthetic=data_dir is None,
        description=f"{what}: {len(sets[0])} train / {len(sets[1])} val / {len(sets[2])} test log-mel clips",
    )
