"""Reading backend weight files: plain state dicts and training checkpoints.

Used by the open_clip and Hugging Face adapters for ``checkpoint=FILE``; ravl's own checkpoint
folders are read by :mod:`ravl.models.checkpoint`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ravl.exceptions import CheckpointError

__all__ = ["read_state_dict", "state_mismatches"]


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` / ``.pt`` / ``.pth`` / ``.bin``.

    open_clip's training checkpoints (``{"epoch", "state_dict", "optimizer", ...}``) are
    unwrapped, and the ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) key prefixes removed.

    Raises:
        CheckpointError: When the file is missing, unreadable, or not a dict of tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"Weights file {p} does not exist. Pass a state dict file (.pt/.pth/.bin/.safetensors) "
                              "or a ravl checkpoint folder.")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(p))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"Cannot read {p} as safetensors ({exc}); the file is corrupt or not "
                                  "safetensors.") from None
    else:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle errors, TorchScript archives, truncated files
            raise CheckpointError(
                f"Cannot read {p} as a plain PyTorch state dict ({type(exc).__name__}: {str(exc)[:200]}). ravl loads "
                "weights-only files: a state dict or open_clip's training checkpoint. For OpenAI's TorchScript "
                "archives use pretrained='openai'.") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{p} does not hold a state dict (a non-empty dict of tensors, or a dict whose "
                              "'state_dict' is one).")
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def state_mismatches(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> list[str]:
    """Readable mismatches between a module's state dict ``own`` and a loaded ``state``.

    Returns:
        ``"key (missing)"``, ``"key (file shape vs model shape)"`` and ``"key (unexpected)"``
        lines, in that order; empty when ``state`` loads strictly.
    """
    out = []
    for k in own:
        if k not in state:
            out.append(f"{k} (missing)")
        elif tuple(state[k].shape) != tuple(own[k].shape):
            out.append(f"{k} (file {tuple(state[k].shape)} vs model {tuple(own[k].shape)})")
    out += [f"{k} (unexpected)" for k in state if k not in own]
    return out
