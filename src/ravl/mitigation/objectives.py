"""Mitigation objectives: each joins a model to a loss of :mod:`ravl.mitigation.losses`.

An objective is called as ``objective(model, batch) -> dict`` of named scalar tensors, the
``"loss"`` entry being optimised by :func:`ravl.training.finetune`. ``batch`` holds
``pixels [B, 3, H, W]``, ``tokens [B, T]`` (captions) and ``indices [B]`` (positions in the
training split). Objectives that need class labels or groups take them per dataset position at
construction (``labels_by_index [N]``, ``groups_by_index [N]``) and look them up with
``indices``; a batch may instead carry ``labels`` / ``groups`` tensors, which then win.

Every objective has a ``name`` (recorded in checkpoints and resume states) and a frozen,
JSON-round-tripping ``config``; stateful ones (Group DRO weights, CFR epoch) have
``state_dict()`` / ``load_state_dict()`` so :func:`~ravl.training.finetune` resumes exactly.
Standard fine-tuning is :class:`ravl.training.loop.ContrastiveObjective`.

Class prompts are encoded *with gradients* at every call (the text tower is trained too):
``t_c = normalize(mean_k normalize(g(template_k(c))))``, the zero-shot classifier of
:func:`ravl.zeroshot.class_text_embeddings`.

The module also holds the sampling helpers of the upsampling and group-uniform baselines
(upsampling is a data order, not a loss).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ravl.mitigation.losses import (
    CONTRASTIVE_FORMS,
    LABEL_NEGATIVES,
    calibration_contrastive_loss,
    cfr_epoch_weight,
    group_dro_loss,
    group_mean_losses,
    region_aware_loss,
    spurious_aware_loss,
    supervised_contrastive_loss,
    update_group_weights,
    vl_erm_per_sample,
)
from ravl.training.losses import clip_loss
from ravl.utils.validation import check_choice, check_float, check_int, check_random_state

__all__ = [
    "REGION_MODES",
    "RegionLabels",
    "RegionAwareConfig",
    "RegionAwareObjective",
    "VLERMConfig",
    "VLERMObjective",
    "GroupDROConfig",
    "GroupDROObjective",
    "SpuriousAwareConfig",
    "SpuriousAwareObjective",
    "CFRConfig",
    "CFRCalibrationObjective",
    "prompt_template_embeddings",
    "class_prompt_embeddings",
    "class_feature_groups",
    "group_balanced_indices",
    "group_uniform_weights",
    "group_uniform_indices",
]

#: Region embedding modes accepted by :func:`ravl.models.regions.region_batch`.
REGION_MODES = ("masked", "roi", "crop")


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------

def _string_tuple(value: Any, name: str, caller: str, *, allow_empty: bool = False,
                  placeholder: bool = False) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(f"The '{name}' parameter of {caller} must be a list of strings. Got {value!r} instead.")
    out = tuple(value)
    if not out and not allow_empty:
        raise ValueError(f"The '{name}' parameter of {caller} must be a non-empty list of strings. "
                         "Got an empty list instead.")
    for v in out:
        if not isinstance(v, str) or not v:
            raise ValueError(f"The '{name}' parameter of {caller} must hold non-empty strings. Got {v!r}.")
        if placeholder and "{}" not in v:
            raise ValueError(f"Every entry of the '{name}' parameter of {caller} must contain '{{}}' where the "
                             f"name goes, e.g. 'a photo of a {{}}'. Got {v!r}.")
    return out


class _ConfigMixin:
    """``to_dict`` / ``from_dict`` for frozen config dataclasses (tuples become JSON lists)."""

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def _init_prompts(self, caller: str) -> None:
        from ravl.zeroshot import DEFAULT_TEMPLATES

        names = _string_tuple(self.class_names, "class_names", caller)
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"The 'class_names' parameter of {caller} must list distinct names. "
                             f"Got duplicates {dup}.")
        templates = DEFAULT_TEMPLATES if self.templates is None else self.templates
        object.__setattr__(self, "class_names", names)
        object.__setattr__(self, "templates", _string_tuple(templates, "templates", caller, placeholder=True))


@dataclass(frozen=True)
class VLERMConfig(_ConfigMixin):
    """Configuration of :class:`VLERMObjective`.

    Attributes:
        class_names: The C class names, in label-id order.
        templates: Prompt templates with a ``{}`` placeholder (``None``: the zero-shot
            defaults, :data:`ravl.zeroshot.DEFAULT_TEMPLATES`; stored resolved).
    """

    class_names: tuple[str, ...]
    templates: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        self._init_prompts("VLERMConfig")


@dataclass(frozen=True)
class GroupDROConfig(_ConfigMixin):
    """Configuration of :class:`GroupDROObjective`.

    Attributes:
        class_names: The C class names, in label-id order.
        templates: Prompt templates (``None``: zero-shot defaults).
        n_groups: G (``None``: one more than the largest id in ``groups_by_index``).
        eta: Step size of the group-weight update (0.01 in the RaVL comparison).
    """

    class_names: tuple[str, ...]
    templates: tuple[str, ...] | None = None
    n_groups: int | None = None
    eta: float = 0.01

    def __post_init__(self) -> None:
        self._init_prompts("GroupDROConfig")
        if self.n_groups is not None:
            check_int(self.n_groups, "n_groups", "GroupDROConfig", low=1)
        check_float(self.eta, "eta", "GroupDROConfig", low=0)


@dataclass(frozen=True)
class RegionAwareConfig(_ConfigMixin):
    """Configuration of :class:`RegionAwareObjective` (RaVL mitigation, method.md §4).

    ``loss = clip_weight * L_clip + lam * (region_weight * L_R + alignment_weight * L_A)``.

    Attributes:
        class_names: The C class names, in label-id order.
        templates: Prompt templates for the class text ``t_y`` (``None``: zero-shot defaults).
        lam: λ, weight of the region-aware terms (unknown in the paper; 0.2 is one reported
            choice; 1.0 was used in our prototype).
        tau: Temperature of the region-aware terms.
        region_mode: How region embeddings are computed (``"masked"``, ``"roi"``, ``"crop"``).
        clip_weight: Weight of the CLIP loss on the image-caption pairs.
        region_weight: Weight of L_R inside the λ term.
        alignment_weight: Weight of L_A inside the λ term.
        label_negatives: ``"distinct"`` or ``"rows"`` (see
            :func:`~ravl.mitigation.losses.region_aware_loss`).
        warmup_epochs: Epochs at the start with λ = 0 (the CLIP loss only), so that the region
            embeddings mean something before the region terms act on them; needed when training
            starts from a random initialisation (docs/mitigation.md), not from a fine-tuned or
            pretrained model. Counted with :meth:`RegionAwareObjective.set_epoch`.
    """

    class_names: tuple[str, ...]
    templates: tuple[str, ...] | None = None
    lam: float = 1.0
    tau: float = 0.07
    region_mode: str = "masked"
    clip_weight: float = 1.0
    region_weight: float = 1.0
    alignment_weight: float = 1.0
    label_negatives: str = "distinct"
    warmup_epochs: int = 0

    def __post_init__(self) -> None:
        c = "RegionAwareConfig"
        check_int(self.warmup_epochs, "warmup_epochs", c, low=0)
        self._init_prompts(c)
        check_float(self.lam, "lam", c, low=0)
        check_float(self.tau, "tau", c, low=0, closed="neither")
        check_choice(self.region_mode, "region_mode", c, REGION_MODES)
        check_float(self.clip_weight, "clip_weight", c, low=0)
        check_float(self.region_weight, "region_weight", c, low=0)
        check_float(self.alignment_weight, "alignment_weight", c, low=0)
        check_choice(self.label_negatives, "label_negatives", c, LABEL_NEGATIVES)


@dataclass(frozen=True)
class SpuriousAwareConfig(_ConfigMixin):
    """Configuration of :class:`SpuriousAwareObjective` (Yang et al., ICML 2023).

    Attributes:
        class_names: The C class names, in label-id order.
        templates: Prompt templates for classes and spurious attributes (``None``: defaults).
        spurious_names: Names of the spurious attribute(s), e.g. the discovered feature's
            description (``("red square",)``); each is put in every template. Empty: no L_ls.
        clip_weight: Weight of L_clip.
        vision_weight: Weight of L_vc.
        language_weight: Weight of L_lc.
        spurious_weight: Weight of L_ls.
        pos_weight: Pull weight of the similarity form.
        neg_weight: Push weight of the similarity form.
        contrastive_form: ``"similarity"`` (authors' code) or ``"supcon"`` for L_vc and L_lc.
        tau: Temperature of the ``"supcon"`` form.
    """

    class_names: tuple[str, ...]
    templates: tuple[str, ...] | None = None
    spurious_names: tuple[str, ...] = ()
    clip_weight: float = 1.0
    vision_weight: float = 1.0
    language_weight: float = 1.0
    spurious_weight: float = 1.0
    pos_weight: float = 1.0
    neg_weight: float = 1.0
    contrastive_form: str = "similarity"
    tau: float = 0.1

    def __post_init__(self) -> None:
        c = "SpuriousAwareConfig"
        self._init_prompts(c)
        object.__setattr__(self, "spurious_names",
                           _string_tuple(self.spurious_names, "spurious_names", c, allow_empty=True))
        for name in ("clip_weight", "vision_weight", "language_weight", "spurious_weight", "pos_weight",
                     "neg_weight"):
            check_float(getattr(self, name), name, c, low=0)
        check_choice(self.contrastive_form, "contrastive_form", c, CONTRASTIVE_FORMS)
        check_float(self.tau, "tau", c, low=0, closed="neither")


@dataclass(frozen=True)
class CFRConfig(_ConfigMixin):
    """Configuration of :class:`CFRCalibrationObjective` (You et al., CVPR 2024).

    ``loss = supcon_weight * L_supcon(batch)
    + lambda_e * (ce_weight * CE(calibration rows) + calibration_weight * L_cal)`` with
    ``lambda_e = 1 + 0.5 cos(2 pi e / n_epochs)``.

    Attributes:
        class_names: The C class names, in label-id order.
        templates: Prompt templates (``None``: zero-shot defaults).
        n_epochs: E, the number of calibration epochs (for ``lambda_e``).
        supcon_tau: Temperature of the supervised contrastive term on the batch.
        calibration_tau: Temperature of the calibration contrastive loss (1 in CFR).
        supcon_weight: Weight of the supervised contrastive term.
        ce_weight: Weight of the cross-entropy on calibration samples.
        calibration_weight: Weight of the calibration contrastive loss.
    """

    class_names: tuple[str, ...]
    templates: tuple[str, ...] | None = None
    n_epochs: int = 1
    supcon_tau: float = 0.1
    calibration_tau: float = 1.0
    supcon_weight: float = 1.0
    ce_weight: float = 1.0
    calibration_weight: float = 1.0

    def __post_init__(self) -> None:
        c = "CFRConfig"
        self._init_prompts(c)
        check_int(self.n_epochs, "n_epochs", c, low=1)
        check_float(self.supcon_tau, "supcon_tau", c, low=0, closed="neither")
        check_float(self.calibration_tau, "calibration_tau", c, low=0, closed="neither")
        for name in ("supcon_weight", "ce_weight", "calibration_weight"):
            check_float(getattr(self, name), name, c, low=0)


# ---------------------------------------------------------------------------------------------
# Region labels
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class RegionLabels:
    """Regions of the fine-tuning images and whether each is spurious (input of RaVL mitigation).

    Produced by region labelling (each region assigned to the nearest Stage-1 medoid); rows are
    in any order. Arrays are stored read-only.

    Attributes:
        image_index: ``[M]`` int64 position of the region's image in the training split (the
            positions :func:`~ravl.training.finetune` passes as ``batch["indices"]``).
        boxes_norm: ``[M, 4]`` float32 boxes ``x0, y0, x1, y1`` normalised to ``[0, 1]`` of
            the image.
        is_spurious: ``[M]`` bool, ``True`` for regions in the discovered spurious cluster(s)
            (``R^s``), ``False`` for candidate-core regions (``R^r``).
    """

    image_index: np.ndarray
    boxes_norm: np.ndarray
    is_spurious: np.ndarray

    def __post_init__(self) -> None:
        c = "RegionLabels"
        idx = np.asarray(self.image_index)
        boxes = np.asarray(self.boxes_norm, dtype=np.float64)
        spur = np.asarray(self.is_spurious)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise ValueError(f"The 'image_index' parameter of {c} must be a 1-d array of ints. "
                             f"Got shape {idx.shape}, dtype {idx.dtype}.")
        m = idx.shape[0]
        if boxes.shape != (m, 4):
            raise ValueError(f"The 'boxes_norm' parameter of {c} must have shape ({m}, 4) (one box per "
                             f"region). Got {boxes.shape}.")
        if spur.shape != (m,) or (spur.size and spur.dtype != np.bool_):
            raise ValueError(f"The 'is_spurious' parameter of {c} must be a bool array of shape ({m},). "
                             f"Got shape {spur.shape}, dtype {spur.dtype}.")
        if m and idx.min() < 0:
            row = int(np.argmin(idx))
            raise ValueError(f"The 'image_index' parameter of {c} must hold positions >= 0; row {row} has "
                             f"{int(idx[row])}.")
        bad = ~np.isfinite(boxes).all(axis=1) | (boxes[:, 0] >= boxes[:, 2]) | (boxes[:, 1] >= boxes[:, 3]) \
            | (boxes < 0).any(axis=1) | (boxes > 1).any(axis=1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(f"boxes_norm must be x0<x1, y0<y1 inside [0, 1] (pixel boxes divided by the image "
                             f"width and height); row {row} has {boxes[row].tolist()} "
                             f"({int(bad.sum())} bad row(s) in all).")
        for name, arr in (("image_index", idx.astype(np.int64)), ("boxes_norm", boxes.astype(np.float32)),
                          ("is_spurious", spur.astype(bool))):
            arr = np.array(arr, copy=True)
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    def __len__(self) -> int:
        return int(self.image_index.shape[0])

    @property
    def n_spurious(self) -> int:
        """Number of spurious regions."""
        return int(self.is_spurious.sum())

    def to_dict(self) -> dict[str, Any]:
        return {"image_index": self.image_index.tolist(), "boxes_norm": self.boxes_norm.tolist(),
                "is_spurious": self.is_spurious.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RegionLabels":
        m = len(d["image_index"])
        return cls(np.asarray(d["image_index"], dtype=np.int64).reshape(m),
                   np.asarray(d["boxes_norm"], dtype=np.float32).reshape(m, 4),
                   np.asarray(d["is_spurious"], dtype=bool).reshape(m))


# ---------------------------------------------------------------------------------------------
# Prompt embeddings (with gradients)
# ---------------------------------------------------------------------------------------------

def _encode_prompt_tokens(model, tokens: torch.Tensor, n_names: int, n_templates: int) -> torch.Tensor:
    emb = model.encode_text(tokens.to(model.device))
    emb = F.normalize(emb if emb.dtype in (torch.float32, torch.float64) else emb.float(), dim=-1)
    return emb.view(n_names, n_templates, -1)


def prompt_template_embeddings(model, names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """Normalised text embeddings of every ``template.format(name)``, with gradients.

    Args:
        model: A :class:`~ravl.models.VisionLanguageModel`.
        names: N names (classes or attributes).
        templates: K templates with a ``{}`` placeholder.

    Returns:
        ``[N, K, D]`` unit-norm embeddings on the model's device.
    """
    names = _string_tuple(names, "names", "prompt_template_embeddings")
    templates = _string_tuple(templates, "templates", "prompt_template_embeddings", placeholder=True)
    tokens = model.tokenize([t.format(n) for n in names for t in templates])
    return _encode_prompt_tokens(model, tokens, len(names), len(templates))


def class_prompt_embeddings(model, names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """Prompt-ensemble embeddings ``normalize(mean_k normalize(g(template_k(c))))``, with gradients.

    The same classifier as :func:`ravl.zeroshot.class_text_embeddings`, but differentiable.

    Returns:
        ``[N, D]`` unit-norm embeddings on the model's device.
    """
    return F.normalize(prompt_template_embeddings(model, names, templates).mean(dim=1), dim=-1)


# ---------------------------------------------------------------------------------------------
# Objectives
# ---------------------------------------------------------------------------------------------

def _as_id_array(values: Any, name: str, caller: str, *, low: int = 0, high: int | None = None) -> np.ndarray:
    arr = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"The '{name}' parameter of {caller} must be a 1-d array of ints (one per training "
                         f"image). Got shape {arr.shape}, dtype {arr.dtype}.")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < low or (high is not None and arr.max() >= high)):
        hi = "inf" if high is None else high
        row = int(np.flatnonzero((arr < low) | ((arr >= high) if high is not None else False))[0])
        raise ValueError(f"The '{name}' parameter of {caller} must hold ids in [{low}, {hi}); position {row} "
                         f"has {int(arr[row])}.")
    return arr


def _make_config(config_cls, config, kwargs: dict[str, Any], caller: str):
    if config is None:
        return config_cls(**kwargs)
    if kwargs:
        raise TypeError(f"{caller} takes either 'config' or keyword arguments for {config_cls.__name__}, "
                        f"not both (got config and {sorted(kwargs)}).")
    if not isinstance(config, config_cls):
        raise TypeError(f"The 'config' parameter of {caller} must be a {config_cls.__name__}. "
                        f"Got {type(config).__name__} instead.")
    return config


class _PromptObjective:
    """Shared machinery: labels per dataset position and cached prompt tokens."""

    name = "prompt"
    _config_cls: type = VLERMConfig

    def __init__(self, labels_by_index: Any, config: Any, kwargs: dict[str, Any]):
        caller = type(self).__name__
        self.config = _make_config(self._config_cls, config, kwargs, caller)
        self.labels_by_index = _as_id_array(labels_by_index, "labels_by_index", caller, low=-1,
                                            high=len(self.config.class_names))
        self._tokens: dict[tuple[int, str], torch.Tensor] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

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
                raise ValueError(f"{type(self).__name__} needs a class label on every training image; dataset "
                                 f"positions {pos} have none. Give every training row a 'label'.")
        return labels.to(device)

    def _prompt_embeddings(self, model, names: tuple[str, ...]) -> torch.Tensor:
        """``[len(names), K, D]`` normalised per-template embeddings (tokens cached)."""
        templates = self.config.templates
        key = (id(model), "\x00".join(names))
        tokens = self._tokens.get(key)
        if tokens is None:
            tokens = model.tokenize([t.format(n) for n in names for t in templates])
            self._tokens[key] = tokens
        return _encode_prompt_tokens(model, tokens, len(names), len(templates))

    def _class_embeddings(self, model) -> torch.Tensor:
        return F.normalize(self._prompt_embeddings(model, self.config.class_names).mean(dim=1), dim=-1)


class VLERMObjective(_PromptObjective):
    """VL-ERM: images classified against the class prompts of all classes.

    Per image, cross-entropy of ``logit_scale * cos(f(image), t_c)`` over the C classes with
    the image's label as target (``logit_scale`` is the model's learned one).

    Args:
        labels_by_index: ``[N]`` class id of every training image (``-1``: unlabelled, an
            error if such an image is drawn).
        config: A :class:`VLERMConfig`, or give its fields as keyword arguments.

    Example:
        >>> obj = VLERMObjective(train.label_indices, class_names=train.classes)  # doctest: +SKIP
        >>> finetune(model, dataset, "runs/vl_erm", objective=obj)                 # doctest: +SKIP
    """

    name = "vl_erm"
    _config_cls = VLERMConfig

    def __init__(self, labels_by_index: Any, config: VLERMConfig | None = None, **kwargs: Any):
        super().__init__(labels_by_index, config, kwargs)

    def __call__(self, model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        img = model.encode_image(batch["pixels"])
        labels = self._labels(batch, img.device)
        per = vl_erm_per_sample(img, self._class_embeddings(model), labels, model.logit_scale())
        return {"loss": per.mean()}


class GroupDROObjective(_PromptObjective):
    """VL-GDRO: the VL-ERM per-sample loss under Group DRO (Sagawa et al. 2020).

    At every training call: group means ``l_g`` of the batch, then
    ``q <- softmax(log q + eta * l)`` (detached), then ``loss = sum_g q_g l_g`` with the
    updated ``q``, as in Sagawa et al.'s code. ``q`` starts uniform over the groups that have
    training images (0 for empty groups, which then stay at 0, as in Yang et al.'s code) and is
    updated only when gradients are enabled, so validation passes (run under
    ``torch.no_grad``) leave it untouched. ``q`` is saved by :meth:`state_dict`, so a resumed
    run is exact.

    Groups are class × discovered-feature present/absent (:func:`class_feature_groups`) in
    the RaVL comparison; pair this objective with group-uniform sampling
    (:func:`group_uniform_indices`).

    Args:
        labels_by_index: ``[N]`` class id of every training image.
        groups_by_index: ``[N]`` group id of every training image.
        config: A :class:`GroupDROConfig`, or give its fields as keyword arguments.

    Attributes:
        group_weights: ``[G]`` float64 CPU tensor, the current ``q``.
    """

    name = "vl_gdro"
    _config_cls = GroupDROConfig

    def __init__(self, labels_by_index: Any, groups_by_index: Any, config: GroupDROConfig | None = None,
                 **kwargs: Any):
        super().__init__(labels_by_index, config, kwargs)
        caller = type(self).__name__
        groups = _as_id_array(groups_by_index, "groups_by_index", caller)
        if groups.shape[0] != self.labels_by_index.shape[0]:
            raise ValueError(f"The 'groups_by_index' parameter of {caller} must have one entry per training image "
                             f"({self.labels_by_index.shape[0]}). Got {groups.shape[0]}.")
        n_groups = self.config.n_groups
        if n_groups is None:
            n_groups = int(groups.max()) + 1 if groups.size else 1
            self.config = replace(self.config, n_groups=n_groups)
        elif groups.size and groups.max() >= n_groups:
            raise ValueError(f"The 'groups_by_index' parameter of {caller} must hold ids in [0, {n_groups}) "
                             f"(n_groups). Got {int(groups.max())}.")
        self.groups_by_index = groups
        seen = torch.zeros(n_groups, dtype=torch.float64)
        seen[torch.from_numpy(np.unique(groups))] = 1.0
        self.group_weights = seen / seen.sum()

    def _groups(self, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        if batch.get("groups") is not None:
            return torch.as_tensor(batch["groups"]).detach().long().to(device)
        return torch.from_numpy(self.groups_by_index[self._indices(batch)]).to(device)

    def __call__(self, model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        img = model.encode_image(batch["pixels"])
        labels = self._labels(batch, img.device)
        groups = self._groups(batch, img.device)
        per = vl_erm_per_sample(img, self._class_embeddings(model), labels, model.logit_scale())
        if torch.is_grad_enabled():
            means, _ = group_mean_losses(per.detach(), groups, self.config.n_groups)
            self.group_weights = update_group_weights(self.group_weights, means.cpu(), self.config.eta)
        return group_dro_loss(per, groups, self.group_weights)

    def state_dict(self) -> dict[str, Any]:
        return {"group_weights": self.group_weights.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        q = torch.as_tensor(state["group_weights"], dtype=torch.float64).clone()
        if q.shape != self.group_weights.shape:
            raise ValueError(f"Saved group weights have shape {tuple(q.shape)} but this objective has "
                             f"{self.config.n_groups} groups.")
        self.group_weights = q


class RegionAwareObjective(_PromptObjective):
    """RaVL mitigation: CLIP loss on image-caption pairs plus the region-aware loss.

    ``loss = clip_weight * clip_loss(images, captions)
    + lam * (region_weight * L_R + alignment_weight * L_A)``, with L_R and L_A from
    :func:`~ravl.mitigation.losses.region_aware_loss` computed on the batch's labelled regions:
    region embeddings from :func:`ravl.models.regions.region_batch` (differentiable, mode
    ``config.region_mode``) and the class text ``t_y`` from the class prompts, encoded with
    gradients at every call.

    Args:
        region_labels: The labelled regions of the training images (:class:`RegionLabels`).
        labels_by_index: ``[N]`` class id of every training image.
        config: A :class:`RegionAwareConfig`, or give its fields as keyword arguments.
        region_embedder: Optional ``fn(model, pixels, boxes [M, 5], mode) -> [M, D]``
            replacing :func:`ravl.models.regions.region_batch` (for tests and custom models).

    Returned components: ``loss``, ``clip_loss``, ``region_loss`` (L_R), ``alignment_loss`` (L_A).
    """

    name = "ravl"
    _config_cls = RegionAwareConfig

    def __init__(self, region_labels: RegionLabels, labels_by_index: Any,
                 config: RegionAwareConfig | None = None, *,
                 region_embedder: Callable[..., torch.Tensor] | None = None, **kwargs: Any):
        super().__init__(labels_by_index, config, kwargs)
        caller = type(self).__name__
        if not isinstance(region_labels, RegionLabels):
            raise TypeError(f"The 'region_labels' parameter of {caller} must be a RegionLabels. "
                            f"Got {type(region_labels).__name__} instead.")
        n = self.labels_by_index.shape[0]
        if len(region_labels) and region_labels.image_index.max() >= n:
            raise ValueError(f"region_labels.image_index refers to position {int(region_labels.image_index.max())}"
                             f" but labels_by_index has {n} training images; label the regions of the same "
                             "training split.")
        self.region_labels = region_labels
        order = np.argsort(region_labels.image_index, kind="stable")
        self._order = order
        self._offsets = np.searchsorted(region_labels.image_index[order], np.arange(n + 1))
        self._boxes = torch.from_numpy(region_labels.boxes_norm[order].copy())
        self._spurious = torch.from_numpy(region_labels.is_spurious[order].copy())
        self._region_embedder = region_embedder
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Set the 0-based epoch (the training loop calls it): λ is 0 before ``warmup_epochs``."""
        self.epoch = check_int(epoch, "epoch", "RegionAwareObjective.set_epoch", low=0)

    @property
    def current_lam(self) -> float:
        """λ at the current epoch (0 during the warm-up epochs)."""
        return 0.0 if self.epoch < self.config.warmup_epochs else float(self.config.lam)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.set_epoch(int(state.get("epoch", 0)))

    def _batch_regions(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows (in the sorted order) of the batch's regions and the batch row of each."""
        starts, ends = self._offsets[idx], self._offsets[idx + 1]
        counts = ends - starts
        total = int(counts.sum())
        rows = np.repeat(np.arange(len(idx)), counts)
        first = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
        return first + np.arange(total), rows

    def _embed(self, model, pixels: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        fn = self._region_embedder
        if fn is None:
            from ravl.models.regions import region_batch as fn
        return fn(model, pixels, boxes, mode=self.config.region_mode)

    def __call__(self, model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg = self.config
        pixels = batch["pixels"]
        img = model.encode_image(pixels)
        txt = model.encode_text(batch["tokens"])
        l_clip = clip_loss(img, txt, model.logit_scale())["loss"]
        labels = self._labels(batch, img.device)
        idx = self._indices(batch)
        sel, rows = self._batch_regions(idx)
        lam = self.current_lam
        if lam > 0 and len(sel):
            boxes = torch.cat([torch.from_numpy(rows).to(self._boxes.dtype)[:, None], self._boxes[sel]], dim=1)
            emb = self._embed(model, pixels, boxes.to(device=pixels.device, dtype=pixels.dtype))
            ra = region_aware_loss(emb, torch.from_numpy(rows).to(img.device), self._spurious[sel].to(img.device),
                                   self._class_embeddings(model), labels, tau=cfg.tau,
                                   label_negatives=cfg.label_negatives)
            l_r, l_a = ra["region_loss"], ra["alignment_loss"]
        else:
            l_r = l_a = l_clip.new_zeros(())
        loss = cfg.clip_weight * l_clip + lam * (cfg.region_weight * l_r + cfg.alignment_weight * l_a)
        return {"loss": loss, "clip_loss": l_clip, "region_loss": l_r, "alignment_loss": l_a}


class SpuriousAwareObjective(_PromptObjective):
    """Spurious-Aware fine-tuning (Yang, Nushi, Palangi, Mirzasoleiman, ICML 2023).

    ``L_clip + L_vc + L_lc + L_ls`` (each weighted, see
    :func:`~ravl.mitigation.losses.spurious_aware_loss`); class prompts and prompts naming the
    spurious attribute (``config.spurious_names`` in every template) are encoded with
    gradients at every call. The authors train only the projection layer with group-uniform
    sampling; which parameters train is the caller's choice (freeze the others).

    Args:
        labels_by_index: ``[N]`` class id of every training image.
        config: A :class:`SpuriousAwareConfig`, or give its fields as keyword arguments.

    Returned components: ``loss``, ``clip_loss``, ``vision_contrastive_loss``,
    ``language_contrastive_loss``, ``language_spurious_loss``.
    """

    name = "spurious_aware"
    _config_cls = SpuriousAwareConfig

    def __init__(self, labels_by_index: Any, config: SpuriousAwareConfig | None = None, **kwargs: Any):
        super().__init__(labels_by_index, config, kwargs)

    def __call__(self, model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg = self.config
        img = model.encode_image(batch["pixels"])
        labels = self._labels(batch, img.device)
        classes = self._prompt_embeddings(model, cfg.class_names)
        spur = self._prompt_embeddings(model, cfg.spurious_names) if cfg.spurious_names else None
        return spurious_aware_loss(img, labels, classes, spur, model.logit_scale(), clip_weight=cfg.clip_weight,
                                   vision_weight=cfg.vision_weight, language_weight=cfg.language_weight,
                                   spurious_weight=cfg.spurious_weight, pos_weight=cfg.pos_weight,
                                   neg_weight=cfg.neg_weight, contrastive_form=cfg.contrastive_form, tau=cfg.tau)


class CFRCalibrationObjective(_PromptObjective):
    """The calibration stage of CFR (You et al., CVPR 2024), given a precomputed calibration set.

    The stages before it (ERM fine-tuning, then the calibration set = training images the ERM
    model misclassifies, each with positives from correctly classified images of its class and
    negatives) are assembled by the caller. At every call:

    - ``L_supcon``: supervised contrastive loss over all images of the batch;
    - for the batch rows that are calibration samples (anchors): cross-entropy against the
      class prompts (as VL-ERM) and the calibration contrastive loss (``tau = 1``) against
      their precomputed positive and negative embeddings;
    - ``loss = supcon_weight * L_supcon + lambda_e * (ce_weight * CE + calibration_weight * L_cal)``
      with ``lambda_e = 1 + 0.5 cos(2 pi e / E)`` (:func:`~ravl.mitigation.losses.cfr_epoch_weight`).

    The training loop sets ``e`` with :meth:`set_epoch` at the start of each epoch. To give
    every step anchors as CFR does (a separate calibration sub-batch), append calibration
    samples to the batch: rows are matched to the calibration set by ``batch["indices"]``.

    Args:
        labels_by_index: ``[N]`` class id of every training image.
        calibration_indices: ``[A]`` distinct training positions of the calibration samples.
        positive_embeddings: ``[A, P, D]`` embeddings of each sample's positives (constants,
            e.g. from the ERM model).
        negative_embeddings: ``[A, Q, D]`` embeddings of each sample's negatives.
        config: A :class:`CFRConfig`, or give its fields as keyword arguments.
        calibration_weights: Optional ``[A]`` per-anchor weights of the contrastive loss.

    Returned components: ``loss``, ``supcon_loss``, ``calibration_ce_loss``,
    ``calibration_contrastive_loss``.
    """

    name = "cfr_calibration"
    _config_cls = CFRConfig

    def __init__(self, labels_by_index: Any, calibration_indices: Any, positive_embeddings: Any,
                 negative_embeddings: Any, config: CFRConfig | None = None, *,
                 calibration_weights: Any = None, **kwargs: Any):
        super().__init__(labels_by_index, config, kwargs)
        caller = type(self).__name__
        n = self.labels_by_index.shape[0]
        calib = _as_id_array(calibration_indices, "calibration_indices", caller, high=n)
        if len(np.unique(calib)) != len(calib):
            raise ValueError(f"The 'calibration_indices' parameter of {caller} must hold distinct positions.")
        pos = torch.as_tensor(np.asarray(positive_embeddings) if not isinstance(positive_embeddings, torch.Tensor)
                              else positive_embeddings).detach().float().cpu()
        neg = torch.as_tensor(np.asarray(negative_embeddings) if not isinstance(negative_embeddings, torch.Tensor)
                              else negative_embeddings).detach().float().cpu()
        a = len(calib)
        if pos.ndim != 3 or pos.shape[0] != a or pos.shape[1] == 0:
            raise ValueError(f"The 'positive_embeddings' parameter of {caller} must be [{a}, P, D] with P >= 1 "
                             f"(one row per calibration sample). Got {tuple(pos.shape)}.")
        if neg.ndim != 3 or neg.shape[0] != a or neg.shape[2] != pos.shape[2]:
            raise ValueError(f"The 'negative_embeddings' parameter of {caller} must be [{a}, Q, {pos.shape[2]}]. "
                             f"Got {tuple(neg.shape)}.")
        self.calibration_indices = calib
        self._row_of = np.full(n, -1, dtype=np.int64)
        self._row_of[calib] = np.arange(a)
        self._positives, self._negatives = pos, neg
        self._weights = None
        if calibration_weights is not None:
            w = torch.as_tensor(np.asarray(calibration_weights, dtype=np.float32))
            if w.shape != (a,):
                raise ValueError(f"The 'calibration_weights' parameter of {caller} must have shape ({a},). "
                                 f"Got {tuple(w.shape)}.")
            self._weights = w
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Set ``e`` (0-based) for the epoch weight ``lambda_e``."""
        self.epoch = check_int(epoch, "epoch", "CFRCalibrationObjective.set_epoch", low=0)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.set_epoch(int(state["epoch"]))

    def __call__(self, model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg = self.config
        img = model.encode_image(batch["pixels"])
        dev = img.device
        labels = self._labels(batch, dev)
        l_sup = supervised_contrastive_loss(img, labels, tau=cfg.supcon_tau)["loss"]
        crow = self._row_of[self._indices(batch)]
        sel = np.flatnonzero(crow >= 0)
        if len(sel):
            c = torch.from_numpy(crow[sel])
            r = torch.from_numpy(sel).to(dev)
            anchors = img[r]
            l_ce = vl_erm_per_sample(anchors, self._class_embeddings(model), labels[r], model.logit_scale()).mean()
            w = self._weights[c].to(dev) if self._weights is not None else None
            l_cal = calibration_contrastive_loss(anchors, self._positives[c].to(dev), self._negatives[c].to(dev),
                                                 tau=cfg.calibration_tau, weights=w)["loss"]
        else:
            l_ce = l_cal = img.sum() * 0.0
        lam = cfr_epoch_weight(self.epoch, cfg.n_epochs)
        loss = cfg.supcon_weight * l_sup + lam * (cfg.ce_weight * l_ce + cfg.calibration_weight * l_cal)
        return {"loss": loss, "supcon_loss": l_sup, "calibration_ce_loss": l_ce,
                "calibration_contrastive_loss": l_cal}


# ---------------------------------------------------------------------------------------------
# Groups and sampling (upsampled fine-tuning, group-uniform sampling)
# ---------------------------------------------------------------------------------------------

def _check_groups(groups: Any, caller: str) -> np.ndarray:
    arr = _as_id_array(groups, "groups", caller)
    if arr.size == 0:
        raise ValueError(f"The 'groups' parameter of {caller} must hold at least one group id. Got an empty array.")
    return arr


def class_feature_groups(labels: Any, feature_present: Any, n_classes: int | None = None
                         ) -> tuple[np.ndarray, int]:
    """Class × feature-present/absent groups: ``g = 2 * label + present``.

    Args:
        labels: ``[N]`` class ids (>= 0).
        feature_present: ``[N]`` bool, whether the (discovered) spurious feature is in the image.
        n_classes: C (default ``max(labels) + 1``).

    Returns:
        ``(groups [N] int64, n_groups = 2 * C)``.
    """
    caller = "class_feature_groups"
    labels = _as_id_array(labels, "labels", caller)
    present = np.asarray(feature_present)
    if present.shape != labels.shape or (present.size and present.dtype != np.bool_):
        raise ValueError(f"The 'feature_present' parameter of {caller} must be a bool array of shape "
                         f"{labels.shape}. Got shape {present.shape}, dtype {present.dtype}.")
    c = int(labels.max()) + 1 if labels.size else 1
    if n_classes is not None:
        n_classes = check_int(n_classes, "n_classes", caller, low=max(c, 1))
        c = n_classes
    return labels * 2 + present.astype(np.int64), 2 * c


def group_balanced_indices(groups: Any, random_state: int | np.random.Generator | None = None) -> np.ndarray:
    """Upsampling: every group resampled up to the size of the largest group, then shuffled.

    Each group keeps all its members once and draws the missing ``n_max - n_g`` with
    replacement, so no image is dropped; groups with no member stay empty. The result has
    ``n_groups_present * n_max`` positions.

    Args:
        groups: ``[N]`` group id of every training image (e.g. :func:`class_feature_groups`).
        random_state: Seed or ``numpy.random.Generator`` (no global seeding).

    Returns:
        int64 positions into ``groups`` (an epoch's data order).
    """
    groups = _check_groups(groups, "group_balanced_indices")
    rng = check_random_state(random_state)
    ids, counts = np.unique(groups, return_counts=True)
    n_max = int(counts.max())
    parts = []
    for g, n in zip(ids, counts):
        members = np.flatnonzero(groups == g)
        parts.append(members)
        if n < n_max:
            parts.append(rng.choice(members, size=n_max - int(n), replace=True))
    out = np.concatenate(parts)
    return out[rng.permutation(len(out))].astype(np.int64)


def group_uniform_weights(groups: Any) -> np.ndarray:
    """Sampling probabilities that draw every present group equally often.

    ``w_i = 1 / (G_present * n_{g_i})``; they sum to 1. Usable with
    :class:`torch.utils.data.WeightedRandomSampler` or :func:`group_uniform_indices`.

    Returns:
        ``[N]`` float64 weights.
    """
    groups = _check_groups(groups, "group_uniform_weights")
    ids, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    return 1.0 / (len(ids) * counts[inverse].astype(np.float64))


def group_uniform_indices(groups: Any, n_samples: int | None = None,
                          random_state: int | np.random.Generator | None = None) -> np.ndarray:
    """Draw positions with replacement so that every group is equally likely (group-uniform sampling).

    Args:
        groups: ``[N]`` group ids.
        n_samples: How many positions to draw (default N, one epoch).
        random_state: Seed or ``numpy.random.Generator``.

    Returns:
        ``[n_samples]`` int64 positions.
    """
    weights = group_uniform_weights(groups)
    n = len(weights) if n_samples is None else check_int(n_samples, "n_samples", "group_uniform_indices", low=1)
    rng = check_random_state(random_state)
    return rng.choice(len(weights), size=n, replace=True, p=weights).astype(np.int64)

