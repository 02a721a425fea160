"""ravl checkpoints: a folder with ``model.safetensors`` and ``config.json``.

``config.json`` holds ``{"model": NAME, "model_config": {...}, "ravl_version": ...,
"format": "ravl-checkpoint", "format_version": 1, "weights": {"file", "bytes", "sha256"}, **extra}``;
``model.safetensors`` holds the ``state_dict`` of the adapter's ``module``.

Both files are written to temporary names first and then renamed, weights first and
``config.json`` last, so the presence of ``config.json`` marks a complete checkpoint. The
config records the size and SHA-256 of the weights it belongs to; a weights file that does
not match (a save interrupted between the two renames, a truncated copy) is reported instead
of being loaded.

Load a checkpoint with ``load_model(name, checkpoint=DIR)``, ``load_model(None, checkpoint=DIR)``
or :func:`ravl.models.load_checkpoint` (both read the model name from ``config.json``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ravl._version import __version__
from ravl.exceptions import CheckpointError, InvalidParameterError

__all__ = [
    "WEIGHTS_FILE",
    "CONFIG_FILE",
    "save_checkpoint",
    "read_checkpoint_config",
    "read_checkpoint",
    "checkpoint_dir",
    "load_state_dict_checked",
    "is_checkpoint",
]

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "ravl-checkpoint"
FORMAT_VERSION = 1
_RESERVED = ("model", "model_config", "ravl_version", "format", "format_version", "weights")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(model, out_dir: str | os.PathLike, *, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to ``out_dir`` as ``model.safetensors`` + ``config.json``, atomically.

    Args:
        model: A :class:`~ravl.models.VisionLanguageModel`; its ``module.state_dict()``,
            ``name`` and ``config()`` are saved.
        out_dir: Folder to write (created if needed; an existing checkpoint is replaced).
        extra: JSON-serialisable entries added to ``config.json`` (e.g. training metadata).
            They may not use the reserved keys ``model``, ``model_config``, ``ravl_version``,
            ``format``, ``format_version``, ``weights``.

    Returns:
        The checkpoint folder.

    Raises:
        ValueError: When ``extra`` uses a reserved key or is not JSON-serialisable.
    """
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(_RESERVED))
    if clash:
        raise InvalidParameterError("The 'extra' parameter of save_checkpoint may not use the reserved key(s) "
                                    f"{clash}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.module.state_dict().items()}
    config: dict[str, Any] = {"model": model.name, "model_config": model.config(),
                              "ravl_version": __version__, "format": FORMAT,
                              "format_version": FORMAT_VERSION}
    try:
        text_extra = json.dumps(extra)
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"The 'extra' parameter of save_checkpoint must be JSON-serialisable ({exc}).") from None

    tmp_w = out / f".{WEIGHTS_FILE}.{os.getpid()}.tmp"
    tmp_c = out / f".{CONFIG_FILE}.{os.getpid()}.tmp"
    try:
        # One metadata key: safetensors stores the metadata in a hash map whose order varies from one
        # process to the next, so two keys would make the same weights give different files.
        save_file(state, str(tmp_w), metadata={"format": f"{FORMAT}; model {model.name}"})
        with open(tmp_w, "rb+") as fh:
            os.fsync(fh.fileno())
        config["weights"] = {"file": WEIGHTS_FILE, "bytes": tmp_w.stat().st_size, "sha256": _sha256(tmp_w)}
        config.update(json.loads(text_extra))
        with open(tmp_c, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(config, indent=2) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_w, out / WEIGHTS_FILE)
        os.replace(tmp_c, out / CONFIG_FILE)
        _fsync_dir(out)
    finally:
        for tmp in (tmp_w, tmp_c):
            if tmp.exists():
                tmp.unlink()
    logger.info("Saved checkpoint of %r to %s", model.name, out)
    return out


def checkpoint_dir(path: str | os.PathLike) -> Path:
    """The checkpoint folder of ``path`` (the folder itself, or the parent of its weights or config file)."""
    p = Path(path)
    if p.is_file() and p.name in (WEIGHTS_FILE, CONFIG_FILE):
        return p.parent
    return p


def is_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a (complete-looking) ravl checkpoint folder."""
    p = checkpoint_dir(path)
    return (p / CONFIG_FILE).is_file() and (p / WEIGHTS_FILE).is_file()


def read_checkpoint_config(path: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a checkpoint folder.

    Args:
        path: The folder (or its ``config.json`` / ``model.safetensors``).

    Raises:
        CheckpointError: When the folder or ``config.json`` is missing or unreadable.
    """
    p = checkpoint_dir(path)
    if not p.exists():
        raise CheckpointError(f"Checkpoint folder {p} does not exist. Pass the folder written by "
                              "`ravl finetune --out` or save_checkpoint().")
    if not p.is_dir():
        raise CheckpointError(f"Checkpoint {p} is a file, not a folder. A ravl checkpoint is a folder holding "
                              f"{WEIGHTS_FILE} and {CONFIG_FILE}; pass the folder.")
    cfg_path = p / CONFIG_FILE
    if not cfg_path.is_file():
        has_w = (p / WEIGHTS_FILE).is_file()
        why = (f"it has {WEIGHTS_FILE} but no {CONFIG_FILE}, so the save did not finish" if has_w
               else f"it holds neither {WEIGHTS_FILE} nor {CONFIG_FILE}")
        raise CheckpointError(f"{p} is not a complete ravl checkpoint: {why}. Re-run the job that writes it "
                              "(fine-tuning resumes from its training_state.pt) or pass another folder.")
    try:
        with open(cfg_path, encoding="utf-8") as fh:
            config = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"Cannot read {cfg_path} ({exc}). The checkpoint is corrupt; re-save it.") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), str):
        raise CheckpointError(f"{cfg_path} has no \"model\" name; it was not written by ravl's save_checkpoint. "
                              "Re-save the checkpoint with ravl.")
    return config


def read_checkpoint(path: str | os.PathLike, *, expect_model: str | None = None
                    ) -> tuple[Path, dict[str, Any], dict[str, torch.Tensor]]:
    """Read and check a checkpoint folder: ``(folder, config, state_dict)``.

    For backend factories: the config's model name must equal ``expect_model`` (when given),
    and the weights file must match the size and SHA-256 recorded in ``config.json``.

    Raises:
        CheckpointError: Missing or incomplete folder, another model's checkpoint, or a
            corrupt / mismatched weights file. The message names the file and the fix.
    """
    p = checkpoint_dir(path)
    config = read_checkpoint_config(p)
    if expect_model is not None and config["model"] != expect_model:
        raise CheckpointError(
            f"{p / CONFIG_FILE} is a checkpoint of model {config['model']!r}, not {expect_model!r}. "
            f"Load it with load_model({config['model']!r}, checkpoint=...) or load_model(None, checkpoint=...) "
            "(the CLI reads the name from the checkpoint when --model is omitted).")
    w_path = p / WEIGHTS_FILE
    if not w_path.is_file():
        raise CheckpointError(f"{p} has {CONFIG_FILE} but no {WEIGHTS_FILE}; the checkpoint is incomplete. "
                              "Copy the weights file too, or re-save the checkpoint.")
    info = config.get("weights")
    if isinstance(info, dict):
        size = w_path.stat().st_size
        if "bytes" in info and size != info["bytes"]:
            raise CheckpointError(
                f"{w_path} has {size} bytes but {CONFIG_FILE} expects {info['bytes']}: the file is truncated or "
                "belongs to another save (an interrupted save or copy). Re-save or re-copy the checkpoint.")
        if "sha256" in info and _sha256(w_path) != info["sha256"]:
            raise CheckpointError(
                f"{w_path} does not match the SHA-256 recorded in {CONFIG_FILE}: the file is corrupt or belongs to "
                "another save. Re-save or re-copy the checkpoint.")
    try:
        state = load_file(str(w_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"Cannot read {w_path} ({exc}). The weights file is corrupt; re-save the "
                              "checkpoint.") from None
    return p, config, state


def load_state_dict_checked(module: torch.nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike
                            ) -> None:
    """Load ``state`` into ``module`` (strict), turning mismatches into a clear :class:`CheckpointError`.

    Raises:
        CheckpointError: Missing or unexpected keys, or tensors whose shapes differ from the
            architecture described by the checkpoint's ``config.json``.
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing tensors {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors {_short(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches {_short(shapes)}")
    if problems:
        raise CheckpointError(
            f"{Path(path) / WEIGHTS_FILE} does not fit the architecture in {Path(path) / CONFIG_FILE}: "
            f"{'; '.join(problems)}. The two files come from different models; re-save the checkpoint "
            "(save_checkpoint writes both).")
    with torch.no_grad():
        module.load_state_dict(state, strict=True)


def _short(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)})"
