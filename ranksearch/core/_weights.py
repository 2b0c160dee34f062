"""Reading and writing weights: safetensors (preferred) or PyTorch ``.pt``/``.pth`` state dicts."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import xxhash
from safetensors.torch import load_file, save_file

from ranksearch._io import atomic_path
from ranksearch.errors import ConfigError

__all__ = ["load_state_dict", "save_state_dict", "state_digest"]


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state dict from a local ``.safetensors`` or ``.pt``/``.pth`` file (never downloaded).

    Raises:
        ValueError: when the file is missing, corrupt or not a state dict.
    """
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"Weights file {str(p)!r} is a folder; pass the .safetensors or .pt file in it.")
    if not p.is_file():
        raise ConfigError(f"Weights file {str(p)!r} does not exist; pass a local .safetensors or .pt path.")
    try:
        if p.suffix == ".safetensors":
            return load_file(str(p))
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors, pickle, zip and I/O errors of a corrupt or foreign file
        first = (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise ConfigError(f"Weights file {str(p)!r} is corrupt or unreadable ({first}); pass a .safetensors or .pt state dict.") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConfigError(f"Weights file {str(p)!r} does not hold a state dict of tensors.")
    return sd


def save_state_dict(state: dict[str, torch.Tensor], path: str | os.PathLike[str], metadata: dict[str, str] | None = None) -> Path:
    """Write ``state`` as safetensors, atomically (a crash leaves the old file or none)."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in state.items()}, str(tmp), metadata=metadata)
    return Path(path)


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """XXH3-128 of a state dict (names, shapes, dtypes and bytes, in name order): the identity of a
    dense model's weights that a study records and every joining worker checks."""
    h = xxhash.xxh3_128()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return "x" + h.hexdigest()
