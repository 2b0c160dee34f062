"""torchvision classifiers (VGG16, ResNet50, MobileNetV2) on a local ImageNet-style folder.

Weights come from a local file (``--weights``), never from the network. The folder holds
``train/<class>/*.jpg`` and ``val/<class>/*.jpg`` (the usual ImageNet layout); the ``val`` images are
split in two halves, one scoring search trials and one for the reported figures.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.utils.data import Subset
from torchvision import transforms

from ranksearch.core._task import Task
from ranksearch.errors import SpaceError

__all__ = ["build_model", "task"]

_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def build_model(arch: str, num_classes: int = 1000) -> nn.Module:
    """A torchvision architecture by name (``vgg16``, ``resnet50``, ``mobilenet_v2``), random init."""
    if arch not in ("vgg16", "resnet50", "mobilenet_v2"):
        raise SpaceError(f"Architecture {arch!r} is not one of vgg16, resnet50, mobilenet_v2.")
    return getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)


def _subset(data: torchvision.datasets.ImageFolder, n: int | None, seed: int) -> torch.utils.data.Dataset:
    if n is None or n >= len(data):
        return data
    return Subset(data, torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n].tolist())


def task(data_dir: str | None = None, image_size: int = 224, n_train: int | None = None, seed: int = 0) -> Task:
    """Top-1 / top-5 classification on ``data_dir/train`` and ``data_dir/val`` (ImageFolder layout).

    Args:
        data_dir: The local folder (``--data`` on the command line).
        image_size: Crop size.
        n_train: Use a random subset of this many training images per retrain (None: all).
        seed: Seeds the subset and the val split.
    """
    if data_dir is None:
        raise SpaceError("This space needs a local ImageNet-style folder: pass --data DIR (DIR/train, DIR/val).")
    root = Path(data_dir)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise SpaceError(f"{str(root / split)!r} is missing: --data must hold train/<class>/ and val/<class>/ folders.")
    norm = transforms.Normalize(_MEAN, _STD)
    train_tf = transforms.Compose([transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), norm])
    eval_tf = transforms.Compose([transforms.Resize(int(image_size * 256 / 224)), transforms.CenterCrop(image_size),
                                  transforms.ToTensor(), norm])
    train = torchvision.datasets.ImageFolder(str(root / "train"), transform=train_tf)
    held = torchvision.datasets.ImageFolder(str(root / "val"), transform=eval_tf)
    order = torch.randperm(len(held), generator=torch.Generator().manual_seed(seed)).tolist()
    half = len(order) // 2
    return Task(
        train=_subset(train, n_train, seed),
        val=Subset(held, order[:half]),
        test=Subset(held, order[half:]),
        loss="cross_entropy",
        metric="top5",
        description=f"ImageNet-style folder {root}: {len(train)} train, {half} val / {len(order) - half} test images",
    )
