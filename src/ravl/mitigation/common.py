"""Pieces shared by the mitigation methods: argument checks for losses, the config mixin, the
supervised contrastive loss, and the base of the class-prompt objectives.

The methods themselves live in :mod:`ravl.mitigation.methods`, one module per method or family.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ravl.exceptions import InvalidParameterError
from ravl.utils.validation import check_float
from ravl.zeroshot import check_templates, class_text_embeddings, prompt_embeddings, prompt_tokens

__all__ = [
    "NEG_INF",
    "ConfigMixin",
    "NoConfig",
    "PromptObjective",
    "as_id_array",
    "check_2d",
    "check_ids",
    "make_config",
    "promote_half",
    "string_tuple",
    "supcon_per_anchor",
    "supervised_contrastive_loss",
    "zero_on_graph",
]

# ---------------------------------------------------------------------------------------------
# Argument checks shared by the losses
# ---------------------------------------------------------------------------------------------

NEG_INF = float("-inf")


def promote_half(x: torch.Tensor) -> torch.Tensor:
    """Half-precision encoder outputs are promoted to float32; float64 stays (for gradcheck)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def check_2d(x: torch.Tensor, name: str, caller: str, dim: int | None = None) -> None:
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        want = f"[n, {dim}]" if dim is not None else "[n, D]"
        raise InvalidParameterError(f"The '{name}' argument of {caller} must be a 2-d tensor {want}. "
                                    f"Got shape {tuple(x.shape)} instead.")


def check_ids(x: torch.Tensor, name: str, caller: str, n: int, size: int) -> torch.Tensor:
    if x.ndim != 1 or x.shape[0] != n:
        raise InvalidParameterError(f"The '{name}' argument of {caller} must be a 1-d tensor of length {n}. "
                                    f"Got shape {tuple(x.shape)} instead.")
    if x.dtype.is_floating_point or x.dtype == torch.bool:
        raise InvalidParameterError(f"The '{name}' argument of {caller} must hold integer ids. Got dtype {x.dtype}.")
    x = x.long()
    if n and (int(x.min()) < 0 or int(x.max()) >= size):
        raise InvalidParameterError(f"The '{name}' argument of {caller} must hold ids in [0, {size}). "
                         f"Got values in [{int(x.min())}, {int(x.max())}].")
    return x


def zero_on_graph(*tensors: torch.Tensor) -> torch.Tensor:
    """A scalar 0 still attached to the graph of ``tensors`` (so ``backward`` always works)."""
    out = None
    for t in tensors:
        term = t.sum() * 0.0
        out = term if out is None else out + term
    return out


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------

def string_tuple(value: Any, name: str, caller: str, *, allow_empty: bool = False,
                  placeholder: bool = False) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise InvalidParameterError(f"The '{name}' parameter of {caller} must be a list of strings. Got {value!r} "
                                    "instead.")
    out = tuple(value)
    if not out and not allow_empty:
        raise InvalidParameterError(f"The '{name}' parameter of {caller} must be a non-empty list of strings. "
                                    "Got an empty list instead.")
    for v in out:
        if not isinstance(v, str) or not v:
            raise InvalidParameterError(f"The '{name}' parameter of {caller} must hold non-empty strings. Got {v!r}.")
        if placeholder and "{}" not in v:
            raise InvalidParameterError(f"Every entry of the '{name}' parameter of {caller} must contain '{{}}' where "
                                        f"the name goes, e.g. 'a photo of a {{}}'. Got {v!r}.")
    return out


class ConfigMixin:
    """``to_dict`` / ``from_dict`` for frozen config dataclasses (tuples become JSON lists)."""

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class NoConfig(ConfigMixin):
    """The config of a method without knobs of its own (e.g. standard fine-tuning)."""


# ---------------------------------------------------------------------------------------------
# Supervised contrastive loss (Spurious-Aware's "supcon" form, CFR)
# ---------------------------------------------------------------------------------------------

def supcon_per_anchor(embeddings: torch.Tensor, labels: torch.Tensor, tau: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-anchor supervised contrastive losses ``[B]`` and whether each anchor has a positive ``[B]``."""
    z = F.normalize(promote_half(embeddings), dim=-1)
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = z @ z.T / tau
    denom = torch.logsumexp(logits.masked_fill(eye, NEG_INF), dim=1, keepdim=True)
    log_prob = logits - denom
    pos = (labels[:, None] == labels[None, :]) & ~eye
    n_pos = pos.sum(dim=1)
    per = -torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(dim=1) / n_pos.clamp(min=1)
    return per, n_pos > 0


def supervised_contrastive_loss(embeddings: torch.Tensor, labels: torch.Tensor, *, tau: float = 0.1,
                                weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Supervised contrastive loss (Khosla et al. 2020, the "L_out" form).

    For every anchor i with at least one other sample of its class (positives ``P(i)``)::

        l_i = -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p / tau) / sum_{a != i} exp(z_i.z_a / tau) )

    Anchors without a positive are skipped.

    Args:
        embeddings: ``[B, D]`` (normalised here).
        labels: ``[B]`` class ids.
        tau: Temperature.
        weights: Optional ``[B]`` per-anchor weights (CFR weights samples this way).

    Returns:
        ``{"loss"}``: ``sum_i w_i l_i`` over anchors with a positive, divided by their number
        (0 when there is none).
    """
    caller = "supervised_contrastive_loss"
    tau = check_float(tau, "tau", caller, low=0, closed="neither")
    check_2d(embeddings, "embeddings", caller)
    n = embeddings.shape[0]
    if labels.ndim != 1 or labels.shape[0] != n:
        raise InvalidParameterError(f"The 'labels' argument of {caller} must be a 1-d tensor of length {n}. "
                                    f"Got shape {tuple(labels.shape)} instead.")
    if n < 2:
        return {"loss": zero_on_graph(embeddings)}
    labels = labels.to(embeddings.device)
    per, valid = supcon_per_anchor(embeddings, labels, tau)
    w = valid.to(per.dtype)
    if weights is not None:
        w = w * weights.to(device=per.device, dtype=per.dtype)
    return {"loss": (per * w).sum() / valid.sum().clamp(min=1).to(per.dtype)}


# ---------------------------------------------------------------------------------------------
# Class-prompt objectives
# ---------------------------------------------------------------------------------------------

def as_id_array(values: Any, name: str, caller: str, *, low: int = 0, high: int | None = None) -> np.ndarray:
    """``values`` (one id per training image, numpy or torch) as int64, checked to lie in ``[low, high)``."""
    arr = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise InvalidParameterError(f"The '{name}' parameter of {caller} must be a 1-d array of ints (one per training "
                                    f"image). Got shape {arr.shape}, dtype {arr.dtype}.")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < low or (high is not None and arr.max() >= high)):
        hi = "inf" if high is None else high
        row = int(np.flatnonzero((arr < low) | ((arr >= high) if high is not None else False))[0])
        raise InvalidParameterError(f"The '{name}' parameter of {caller} must hold ids in [{low}, {hi}); position "
                                    f"{row} "
                         f"has {int(arr[row])}.")
    return arr


def make_config(config_cls, config, kwargs: dict[str, Any], caller: str):
    if config is None:
        return config_cls(**kwargs)
    if kwargs:
        raise InvalidParameterError(f"{caller} takes either 'config' or keyword arguments for {config_cls.__name__}, "
                                    f"not both (got config and {sorted(kwargs)}).")
    if not isinstance(config, config_cls):
        raise InvalidParameterError(f"The 'config' parameter of {caller} must be a {config_cls.__name__}. "
                                    f"Got {type(config).__name__} instead.")
    return config


class PromptObjective:
    """Base of the objectives that score images (or regions) against class prompts.

    Holds the class names and prompt templates (the zero-shot classifier discovery judged), the
    class label of every training position, the method's config, and a cache of prompt tokens.
    Subclasses set ``name`` and ``config_cls`` and implement ``__call__(model, batch)``.

    Args:
        labels_by_index: ``[N]`` class id of every training image (``-1``: unlabelled, an error
            if such an image is drawn).
        config: An instance of ``config_cls`` (``None``: built from ``kwargs``).
        kwargs: Fields of ``config_cls`` (only without ``config``).
        class_names: The C class names, in label-id order.
        templates: Prompt templates with a ``{}`` placeholder (``None``: the zero-shot defaults,
            :data:`ravl.zeroshot.DEFAULT_TEMPLATES`).
    """

    name = "prompt"
    config_cls: type = NoConfig

    def __init__(self, labels_by_index: Any, config: Any, kwargs: dict[str, Any], *,
                 class_names: Sequence[str], templates: Sequence[str] | None = None):
        caller = type(self).__name__
        self.config = make_config(self.config_cls, config, kwargs, caller)
        names = string_tuple(class_names, "class_names", caller)
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise InvalidParameterError(f"The 'class_names' parameter of {caller} must list distinct names. "
                                        f"Got duplicates {dup}.")
        self.class_names = names
        self.templates = check_templates(templates, caller)
        self.labels_by_index = as_id_array(labels_by_index, "labels_by_index", caller, low=-1,
                                            high=len(self.class_names))
        self._tokens: dict[tuple[int, tuple[str, ...]], torch.Tensor] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r}, classes={len(self.class_names)})"

    # -- batch helpers ------------------------------------------------------------------------
    def _indices(self, batch: dict[str, Any]) -> np.ndarray:
        if "indices" not in batch:
            raise KeyError(f"{type(self).__name__} needs batch['indices'] (positions in the training split).")
        idx = torch.as_tensor(batch["indices"]).detach().cpu().long().numpy()
        n = self.labels_by_index.shape[0]
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            bad = int(idx[(idx < 0) | (idx >= n)][0])
            raise IndexError(f"batch['indices'] holds position {bad} but {type(self).__name__} was built for "
                             f"{n} training images; build it from the same training split the batch comes "
                             "from.")
        return idx

    def _labels(self, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        if batch.get("labels") is not None:
            labels = torch.as_tensor(batch["labels"]).detach().long().cpu()
        else:
            idx = self._indices(batch)
            labels = torch.from_numpy(self.labels_by_index[idx])
            if (labels < 0).any():
                pos = idx[(labels < 0).numpy()][:5].tolist()
                raise InvalidParameterError(f"{type(self).__name__} needs a class label on every training image; "
                                            f"dataset positions {pos} have none. Give every training row a 'label'.")
        return labels.to(device)

    def _cached_tokens(self, model, names: tuple[str, ...]) -> torch.Tensor:
        key = (id(model), names)
        tokens = self._tokens.get(key)
        if tokens is None:
            tokens = self._tokens[key] = prompt_tokens(model, names, self.templates)
        return tokens

    def _prompt_embeddings(self, model, names: tuple[str, ...]) -> torch.Tensor:
        """``[len(names), K, D]`` normalised per-template embeddings, with gradients (tokens cached)."""
        return prompt_embeddings(model, names, self.templates, tokens=self._cached_tokens(model, names))

    def _class_embeddings(self, model) -> torch.Tensor:
        """``[C, D]`` the class text ``t_c``, with gradients."""
        return class_text_embeddings(model, self.class_names, self.templates, grad=True,
                                     tokens=self._cached_tokens(model, self.class_names))
