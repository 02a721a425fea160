"""Training options shared by fine-tuning and mitigation: precision, frozen towers, gradient
checkpointing and the per-model default recipe.

Every function here talks to the model through the adapter protocol and a few optional adapter
attributes (``docs/dev/interfaces.md``):

``image_tower_prefixes`` / ``text_tower_prefixes``
    Parameter-name prefixes of each tower, for ``freeze``. Without them the towers are found by
    which parameters a backward pass through ``encode_image`` (``encode_text``) reaches.
``set_grad_checkpointing(enable)``
    Turns activation checkpointing on or off in the backbone, for ``grad_checkpointing``.
``finetune_defaults``
    A dict of :class:`~ravl.training.FinetuneConfig` fields suited to the model (pretrained
    backbones want a small learning rate, e.g. ``{"lr": 1e-5, "warmup_fraction": 0.1}``); see
    :meth:`FinetuneConfig.for_model <ravl.training.FinetuneConfig.for_model>`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from ravl.exceptions import InvalidParameterError
from ravl.utils.validation import check_choice

__all__ = [
    "PRECISIONS",
    "FREEZE",
    "check_precision",
    "autocast",
    "grad_scaler",
    "tower_parameter_names",
    "freeze_tower",
    "set_grad_checkpointing",
    "model_defaults",
]

#: ``FinetuneConfig.precision`` values: float32 everywhere, or autocast to bfloat16 / float16.
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
#: ``FinetuneConfig.freeze`` values: which tower keeps its weights.
FREEZE: tuple[str, ...] = ("none", "text", "image")

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _model_name(model) -> str:
    return str(getattr(model, "name", type(model).__name__))


def check_precision(precision: str, device: str | torch.device) -> str:
    """``precision`` if the device runs it, else an :class:`~ravl.exceptions.InvalidParameterError`.

    ``fp16`` needs CUDA (float16 autocast on CPU is neither fast nor complete); ``bf16`` runs on
    CPU (autocast) and on GPUs that support it.
    """
    check_choice(precision, "precision", "FinetuneConfig", PRECISIONS)
    dev = torch.device(device)
    if precision == "fp16" and dev.type != "cuda":
        raise InvalidParameterError(f"--precision fp16 needs a CUDA device (this run is on {dev}); use bf16 or fp32 "
                                    "on the CPU.")
    if precision == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InvalidParameterError(f"--precision bf16: the GPU {torch.cuda.get_device_name(dev)} does not support "
                                    "bfloat16; use fp16 or fp32.")
    return precision


def autocast(precision: str, device: str | torch.device) -> contextlib.AbstractContextManager:
    """The autocast context of ``precision`` on ``device`` (a no-op for ``fp32``)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=_DTYPES[precision])


def grad_scaler(precision: str, device: str | torch.device) -> torch.amp.GradScaler | None:
    """A loss scaler for ``fp16`` on CUDA (float16 gradients underflow without one), else ``None``."""
    if precision == "fp16" and torch.device(device).type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


@contextlib.contextmanager
def _all_trainable(module: torch.nn.Module) -> Iterator[None]:
    saved = [(p, p.requires_grad) for p in module.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def _reached_by(model, tower: str) -> set[str]:
    """Names of the parameters a backward pass through the tower's encoder reaches."""
    named = list(model.module.named_parameters())
    dev = model.device
    with _all_trainable(model.module):
        if tower == "image":
            h, w = model.image_size
            out = model.encode_image(torch.zeros(1, 3, h, w, device=dev))
        else:
            out = model.encode_text(model.tokenize(["a"]).to(dev))
        grads = torch.autograd.grad(out.float().sum(), [p for _, p in named], allow_unused=True)
    return {n for (n, _), g in zip(named, grads) if g is not None}


def tower_parameter_names(model, tower: str) -> set[str]:
    """Names (as in ``model.module.named_parameters()``) of the parameters only ``tower`` uses.

    ``tower`` is ``"image"`` or ``"text"``. Uses the adapter's ``image_tower_prefixes`` /
    ``text_tower_prefixes`` when it has them; otherwise the parameters a backward pass through
    that tower's encoder reaches and the other's does not (shared parameters and the logit scale
    belong to neither).

    Example:
        >>> import ravl
        >>> names = tower_parameter_names(ravl.load_model("tiny"), "image")
        >>> "visual_proj.weight" in names, "text_proj.weight" in names, "logit_scale" in names
        (True, False, False)
    """
    check_choice(tower, "tower", "tower_parameter_names", ("image", "text"))
    prefixes = getattr(model, f"{tower}_tower_prefixes", None)
    if prefixes:
        return {n for n, _ in model.module.named_parameters() if n.startswith(tuple(prefixes))}
    other = "text" if tower == "image" else "image"
    return _reached_by(model, tower) - _reached_by(model, other)


def freeze_tower(model, freeze: str) -> int:
    """Stop training the ``freeze`` tower (``"image"``, ``"text"`` or ``"none"``); returns how many
    parameter tensors stay trainable.

    Only turns ``requires_grad`` off: parameters another setting froze stay frozen.

    Raises:
        InvalidParameterError: When nothing would be left to train.
    """
    check_choice(freeze, "freeze", "FinetuneConfig", FREEZE)
    if freeze != "none":
        names = tower_parameter_names(model, freeze)
        if not names:
            raise InvalidParameterError(f"--freeze {freeze}: no parameter of {_model_name(model)!r} belongs to its "
                                        f"{freeze} tower alone.")
        for n, p in model.module.named_parameters():
            if n in names:
                p.requires_grad_(False)
    left = sum(1 for p in model.module.parameters() if p.requires_grad)
    if left == 0:
        raise InvalidParameterError(f"Nothing of {_model_name(model)!r} is left to train (--freeze {freeze} together "
                                    "with --trainable); freeze less.")
    return left


def set_grad_checkpointing(model, enable: bool = True) -> None:
    """Turn activation (gradient) checkpointing on or off: less memory, about a third more time.

    Raises:
        InvalidParameterError: When the adapter offers no ``set_grad_checkpointing``.
    """
    fn = getattr(model, "set_grad_checkpointing", None)
    if fn is None:
        if not enable:
            return
        raise InvalidParameterError(f"The model {_model_name(model)!r} offers no gradient checkpointing (its adapter "
                                    "has no set_grad_checkpointing); drop --grad-checkpointing.")
    fn(bool(enable))


def model_defaults(model) -> dict[str, Any]:
    """The adapter's ``finetune_defaults`` (``{}`` when it has none)."""
    d = getattr(model, "finetune_defaults", None)
    return dict(d) if isinstance(d, dict) else {}
