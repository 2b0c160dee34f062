"""An end-to-end learned image codec in miniature, on the real photos bundled with scikit-image and scikit-learn.

The model follows Ballé et al. (2017): an analysis transform of three 5x5 stride-2 convolutions with GDN
between them maps a (B, 3, H, W) image in [0, 1] to a (B, 21, H/8, W/8) latent; a synthesis transform
of three 5x5 stride-2 transposed convolutions with inverse GDN maps it back. With 28 channels it has
76,184 parameters (the reference has 76,179): six dense layers to factorize, GDN stays dense.
There is no entropy model: the bottleneck only simulates quantization, adding uniform noise in [-0.5, 0.5)
in training mode and rounding (with a straight-through gradient) in eval mode. H and W must be multiples of 8.

The data are crops of ten colour photos that load offline (no pooch download): eight from
``skimage.data`` and ``china``/``flower`` from ``sklearn.datasets.load_sample_images``. Four whole
photos are held out from training (random crops of the other six); their non-overlapping tiles are
split like a checkerboard, the "white" tiles for validation and the "black" ones for test, so that the
split the search selects on has the same content as the one it is scored on (two photos each for
validation and test picked allocations that suit one pair of photos and not the other: a grey cat
photo rewards cutting the colour layer that the colourful test photos need).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ranksearch.core._task import Task
from ranksearch.errors import SpaceError

__all__ = ["GDN", "HELD_OUT_PHOTOS", "TRAIN_PHOTOS", "build_model", "load_photos", "task"]

logger = logging.getLogger(__name__)

TRAIN_PHOTOS = ("astronaut", "rocket", "immunohistochemistry", "hubble_deep_field", "retina", "motorcycle")
HELD_OUT_PHOTOS = ("chelsea", "flower", "coffee", "china")


class GDN(nn.Module):
    """Generalized divisive normalization: ``y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2)``.

    ``beta`` and ``gamma`` are kept non-negative by Ballé's reparametrization: the stored tensors are
    ``sqrt(value + pedestal)``, clamped from below (``beta`` >= ``beta_min``) before squaring.
    With ``inverse=True`` it computes IGDN, ``y_i = x_i * sqrt(beta_i + sum_j gamma_ij x_j^2)``.

    Args:
        channels: Number of channels C of the (B, C, H, W) input.
        inverse: IGDN (multiply) instead of GDN (divide).
        beta_min: Lower bound of beta, keeping the denominator away from zero.
        gamma_init: Initial diagonal of gamma (off-diagonal entries start at zero).
    """

    pedestal = 2.0**-18

    def __init__(self, channels: int, inverse: bool = False, beta_min: float = 1e-6, gamma_init: float = 0.1) -> None:
        super().__init__()
        if channels < 1:
            raise SpaceError(f"GDN channels must be >= 1, got {channels}.")
        self.inverse = inverse
        self.beta_bound = (beta_min + self.pedestal) ** 0.5
        self.beta = nn.Parameter(torch.full((channels,), 1.0 + self.pedestal).sqrt())
        self.gamma = nn.Parameter((gamma_init * torch.eye(channels) + self.pedestal).sqrt())

    def effective(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The non-negative (beta (C,), gamma (C, C)) the layer computes with."""
        beta = self.beta.clamp_min(self.beta_bound) ** 2 - self.pedestal
        gamma = self.gamma.clamp_min(self.pedestal**0.5) ** 2 - self.pedestal
        return beta, gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize (or, inverse, de-normalize) a (B, C, H, W) tensor across its channels."""
        beta, gamma = self.effective()
        norm = torch.sqrt(F.conv2d(x * x, gamma[:, :, None, None], beta))
        return x * norm if self.inverse else x / norm

    def extra_repr(self) -> str:
        """Channels and direction, shown in the module's repr."""
        return f"{self.beta.numel()}, inverse={self.inverse}"


class _Quantize(nn.Module):
    """Training: add uniform noise in [-0.5, 0.5); eval: round, passing gradients straight through."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """Simulate (training) or apply (eval) integer quantization of the latent ``y``."""
        if self.training:
            return y + torch.rand_like(y) - 0.5
        return y + (torch.round(y) - y).detach()


def build_model(channels: int = 28, latent: int = 21, quantize: bool = True) -> nn.Module:
    """Analysis (3 x conv5x5/2, GDN between), quantization proxy, synthesis (3 x deconv5x5/2, IGDN between).

    Args:
        channels: Hidden channels N of both transforms.
        latent: Latent channels M at 1/8 resolution.
        quantize: Insert the noise/rounding bottleneck (False: a plain auto-encoder).

    Returns:
        Module mapping (B, 3, H, W) to (B, 3, H, W) (H, W multiples of 8); the output is not clamped.
    """
    if channels < 1 or latent < 1:
        raise SpaceError(f"channels ({channels}) and latent ({latent}) must be >= 1.")
    n, m = channels, latent

    def down(cin: int, cout: int) -> nn.Conv2d:
        return nn.Conv2d(cin, cout, 5, stride=2, padding=2)

    def up(cin: int, cout: int) -> nn.ConvTranspose2d:
        return nn.ConvTranspose2d(cin, cout, 5, stride=2, padding=2, output_padding=1)

    return nn.Sequential(
        down(3, n), GDN(n), down(n, n), GDN(n), down(n, m),
        _Quantize() if quantize else nn.Identity(),
        up(m, n), GDN(n, inverse=True), up(n, n), GDN(n, inverse=True), up(n, 3),
    )


def load_photos(names: tuple[str, ...]) -> list[np.ndarray]:
    """The named bundled photos as (H, W, 3) uint8 arrays (no network: all ship with the packages).

    Raises:
        ValueError: For a name that is not one of the bundled colour photos.
    """
    from skimage import data as skd

    loaders = {name: getattr(skd, name) for name in
               ("astronaut", "rocket", "immunohistochemistry", "hubble_deep_field", "retina", "chelsea", "coffee")}
    loaders["motorcycle"] = lambda: skd.stereo_motorcycle()[0]
    out = []
    for name in names:
        if name in ("china", "flower"):
            from sklearn.datasets import load_sample_image

            out.append(load_sample_image(f"{name}.jpg"))
        elif name in loaders:
            out.append(loaders[name]())
        else:
            known = sorted([*loaders, "china", "flower"])
            raise SpaceError(f"Unknown photo {name!r}; use one of {known}.")
    return [np.ascontiguousarray(p[..., :3], dtype=np.uint8) for p in out]


class _Crops(Dataset):
    """(image, image) pairs of float32 (3, crop, crop) crops in [0, 1], stored as uint8."""

    def __init__(self, crops: np.ndarray) -> None:
        self.crops = torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous()

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.crops[i].float() / 255.0
        return x, x


def _random_crops(photos: list[np.ndarray], n: int, crop: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random crops, each from a photo drawn uniformly (not by area), half of them mirrored."""
    which = rng.integers(0, len(photos), size=n)
    out = np.empty((n, crop, crop, 3), np.uint8)
    for k, i in enumerate(which):
        h, w = photos[i].shape[:2]
        r, c = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
        patch = photos[i][r:r + crop, c:c + crop]
        out[k] = patch[:, ::-1] if rng.random() < 0.5 else patch
    return out


def _tiles(photos: list[np.ndarray], n: int | None, crop: int, rng: np.random.Generator, parity: int) -> np.ndarray:
    """``n`` distinct non-overlapping crop x crop tiles of the photos, from the squares of one colour
    (``parity`` 0 or 1) of the checkerboard the tile grid forms: an even random pick, all when ``n`` is None."""
    grid = [(i, r, c) for i, p in enumerate(photos)
            for r in range(0, p.shape[0] - crop + 1, crop) for c in range(0, p.shape[1] - crop + 1, crop)
            if (r // crop + c // crop) % 2 == parity]
    if n is None:
        return np.stack([photos[i][r:r + crop, c:c + crop] for i, r, c in grid])
    if n > len(grid):
        raise SpaceError(f"{n} held-out crops of {crop}px requested but the held-out photos only hold "
                         f"{len(grid)} non-overlapping tiles; lower n_val/n_test or the crop size.")
    pick = np.sort(rng.choice(len(grid), size=n, replace=False))
    return np.stack([photos[i][r:r + crop, c:c + crop] for i, r, c in (grid[k] for k in pick)])


def task(seed: int = 0, crop: int = 64, n_train: int = 2000, n_val: int | None = None, n_test: int | None = None) -> Task:
    """Random crops of six photos for training; checkerboard tiles of four other photos for val and test.

    Args:
        seed: Draws the training crops and which held-out tiles are used.
        crop: Side of the square crops in pixels (a multiple of 8).
        n_train: Number of random training crops (they may overlap).
        n_val: Number of validation tiles (the checkerboard's white tiles of ``HELD_OUT_PHOTOS``; None: all,
            101 at 64 px).
        n_test: Number of test tiles (its black tiles; None: all, 101 at 64 px).

    Returns:
        Task whose inputs and targets are the same (3, crop, crop) float32 images in [0, 1].

    Raises:
        ValueError: On a crop that is not a positive multiple of 8 or larger than the photos,
            non-positive sizes, or more held-out crops than the held-out photos hold.
    """
    if crop < 8 or crop % 8 or crop > 300:
        raise SpaceError(f"crop={crop} must be a multiple of 8 between 8 and 300 (the smallest photo is 300 px).")
    if min(n_train, n_val or 1, n_test or 1) < 1:
        raise SpaceError(f"n_train, n_val, n_test = {(n_train, n_val, n_test)} must all be at least 1.")
    rng = np.random.default_rng(seed)
    train = _Crops(_random_crops(load_photos(TRAIN_PHOTOS), n_train, crop, rng))
    held_out = load_photos(HELD_OUT_PHOTOS)
    val = _Crops(_tiles(held_out, n_val, crop, rng, parity=0))
    test = _Crops(_tiles(held_out, n_test, crop, rng, parity=1))
    logger.debug("codec task: %d train / %d val / %d test crops of %d px", n_train, len(val), len(test), crop)
    return Task(
        train=train, val=val, test=test, loss="mse", metric="psnr", synthetic=False,
        description=(f"real photos (skimage + sklearn samples), {crop}px crops: {n_train} train from "
                     f"{len(TRAIN_PHOTOS)} photos / {len(val)} val and {len(test)} test tiles (checkerboard) of 4 held-out photos"),
    )
