"""VL-ERM and VL-GDRO: images classified against the class prompts, plainly or under Group DRO.

``vl-erm``: cross-entropy of every image against all class prompts. ``vl-gdro``: the same
per-image loss under Group DRO (Sagawa et al. 2020) over class × discovered-feature groups, with
group-uniform sampling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ravl.exceptions import InvalidParameterError
from ravl.mitigation.common import (
    NEG_INF,
    ConfigMixin,
    NoConfig,
    PromptObjective,
    as_id_array,
    check_2d,
    check_ids,
    promote_half,
)
from ravl.mitigation.groups import group_uniform_indices
from ravl.mitigation.registry import MitigationContext, MitigationPlan, register_mitigation_method
from ravl.utils.validation import check_float, check_int

__all__ = ["GroupDROConfig", "VLERMObjective", "GroupDROObjective", "vl_erm_per_sample", "vl_erm_loss",
           "group_mean_losses", "update_group_weights", "group_dro_loss", "group_uniform_order"]


def vl_erm_per_sample(image_embeddings: torch.Tensor, class_embeddings: torch.Tensor, labels: torch.Tensor,
                      logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Per-image cross-entropy of ``logit_scale * cos(image, class prompt)`` over all C classes.

    Args:
        image_embeddings: ``[B, D]`` (normalised here).
        class_embeddings: ``[C, D]`` (normalised here).
        labels: ``[B]`` class ids.
        logit_scale: Inverse temperature (already exponentiated), e.g. ``model.logit_scale()``.

    Returns:
        ``[B]`` losses.
    """
    caller = "vl_erm_loss"
    check_2d(image_embeddings, "image_embeddings", caller)
    check_2d(class_embeddings, "class_embeddings", caller, image_embeddings.shape[1])
    labels = check_ids(labels, "labels", caller, image_embeddings.shape[0], class_embeddings.shape[0])
    labels = labels.to(image_embeddings.device)
    img = F.normalize(promote_half(image_embeddings), dim=-1)
    txt = F.normalize(promote_half(class_embeddings), dim=-1).to(img.dtype)
    logits = logit_scale * img @ txt.T
    return F.cross_entropy(logits, labels, reduction="none")


def vl_erm_loss(image_embeddings: torch.Tensor, class_embeddings: torch.Tensor, labels: torch.Tensor,
                logit_scale: torch.Tensor | float) -> dict[str, torch.Tensor]:
    """VL-ERM: mean of :func:`vl_erm_per_sample` (images against every class prompt).

    Returns:
        ``{"loss"}``.
    """
    return {"loss": vl_erm_per_sample(image_embeddings, class_embeddings, labels, logit_scale).mean()}


def group_mean_losses(per_sample: torch.Tensor, groups: torch.Tensor, n_groups: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss of every group in the batch.

    Args:
        per_sample: ``[B]`` losses.
        groups: ``[B]`` group ids in ``[0, n_groups)``.
        n_groups: G.

    Returns:
        ``(means [G], counts [G])``; a group absent from the batch has mean 0 and count 0.
    """
    n_groups = check_int(n_groups, "n_groups", "group_mean_losses", low=1)
    groups = check_ids(groups, "groups", "group_mean_losses", per_sample.shape[0], n_groups)
    groups = groups.to(per_sample.device)
    counts = torch.bincount(groups, minlength=n_groups).to(per_sample.dtype)
    sums = per_sample.new_zeros(n_groups).index_add(0, groups, per_sample)
    return sums / counts.clamp(min=1), counts


def update_group_weights(group_weights: torch.Tensor, group_losses: torch.Tensor, eta: float) -> torch.Tensor:
    """One exponentiated-gradient step of Group DRO: ``q_g <- q_g exp(eta * l_g)``, renormalised.

    Computed in log space (``softmax(log q + eta * l)``); ``group_losses`` is detached.
    Groups absent from the batch have ``l_g = 0`` (:func:`group_mean_losses`), as in Sagawa et
    al.'s code, so they only change through the renormalisation.

    Args:
        group_weights: ``[G]`` current weights (a probability vector).
        group_losses: ``[G]`` mean loss of every group in the batch.
        eta: Step size (0.01 in the RaVL comparison).

    Returns:
        ``[G]`` new weights, same dtype and device as ``group_weights``.
    """
    eta = check_float(eta, "eta", "update_group_weights", low=0)
    q = group_weights.detach()
    step = eta * group_losses.detach().to(device=q.device, dtype=q.dtype)
    return torch.softmax(torch.log(q) + step, dim=0)


def group_dro_loss(per_sample: torch.Tensor, groups: torch.Tensor, group_weights: torch.Tensor
                   ) -> dict[str, torch.Tensor]:
    """Group DRO objective ``sum_g q_g * mean loss of group g`` for given weights ``q``.

    Args:
        per_sample: ``[B]`` losses.
        groups: ``[B]`` group ids in ``[0, G)``.
        group_weights: ``[G]`` weights (constants; see :func:`update_group_weights`).

    Returns:
        ``{"loss", "average_loss", "worst_group_loss"}``: the weighted loss, the plain mean,
        and the largest group mean among groups present in the batch.
    """
    means, counts = group_mean_losses(per_sample, groups, int(group_weights.shape[0]))
    q = group_weights.detach().to(device=means.device, dtype=means.dtype)
    worst = torch.where(counts > 0, means, torch.full_like(means, NEG_INF)).max()
    return {"loss": q @ means, "average_loss": per_sample.mean(), "worst_group_loss": worst}


@dataclass(frozen=True)
class GroupDROConfig(ConfigMixin):
    """VL-GDRO's own knobs (:class:`GroupDROObjective`).

    Attributes:
        eta: Step size of the group-weight update (0.01 in the RaVL comparison).
    """

    eta: float = field(default=0.01, metadata={"cli": "--eta", "help": "Group DRO step size"})

    def __post_init__(self) -> None:
        check_float(self.eta, "eta", "GroupDROConfig", low=0)


class VLERMObjective(PromptObjective):
    """VL-ERM: images classified against the class prompts of all classes.

    Per image, cross-entropy of ``logit_scale * cos(f(image), t_c)`` over the C classes with
    the image's label as target (``logit_scale`` is the model's learned one).

    Args:
        labels_by_index: ``[N]`` class id of every training image (``-1``: unlabelled, an
            error if such an image is drawn).
        config: Unused (VL-ERM has no knobs); accepted for a uniform signature.
        class_names: The C class names, in label-id order.
        templates: Prompt templates (``None``: zero-shot defaults).

    Example:
        >>> obj = VLERMObjective(train.label_indices, class_names=train.classes)  # doctest: +SKIP
        >>> finetune(model, dataset, "runs/vl_erm", objective=obj)                 # doctest: +SKIP
    """

    name = "vl_erm"
    config_cls = NoConfig

    def __init__(self, labels_by_index: Any, config: NoConfig | None = None, *, class_names: Sequence[str],
                 templates: Sequence[str] | None = None):
        super().__init__(labels_by_index, config, {}, class_names=class_names, templates=templates)

    def __call__(self, model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        img = model.encode_image(batch["pixels"])
        labels = self._labels(batch, img.device)
        per = vl_erm_per_sample(img, self._class_embeddings(model), labels, model.logit_scale())
        return {"loss": per.mean()}


class GroupDROObjective(PromptObjective):
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
        class_names: The C class names, in label-id order.
        templates: Prompt templates (``None``: zero-shot defaults).
        n_groups: G (``None``: one more than the largest id in ``groups_by_index``).

    Attributes:
        group_weights: ``[G]`` float64 CPU tensor, the current ``q``.
    """

    name = "vl_gdro"
    config_cls = GroupDROConfig

    def __init__(self, labels_by_index: Any, groups_by_index: Any, config: GroupDROConfig | None = None, *,
                 class_names: Sequence[str], templates: Sequence[str] | None = None, n_groups: int | None = None,
                 **kwargs: Any):
        super().__init__(labels_by_index, config, kwargs, class_names=class_names, templates=templates)
        caller = type(self).__name__
        groups = as_id_array(groups_by_index, "groups_by_index", caller)
        if groups.shape[0] != self.labels_by_index.shape[0]:
            raise InvalidParameterError(f"The 'groups_by_index' parameter of {caller} must have one entry per training "
                                        f"image ({self.labels_by_index.shape[0]}). Got {groups.shape[0]}.")
        if n_groups is None:
            n_groups = int(groups.max()) + 1 if groups.size else 1
        n_groups = check_int(n_groups, "n_groups", caller, low=1)
        if groups.size and groups.max() >= n_groups:
            raise InvalidParameterError(f"The 'groups_by_index' parameter of {caller} must hold ids in [0, {n_groups}) "
                             f"(n_groups). Got {int(groups.max())}.")
        self.groups_by_index = groups
        self.n_groups = n_groups
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
            means, _ = group_mean_losses(per.detach(), groups, self.n_groups)
            self.group_weights = update_group_weights(self.group_weights, means.cpu(), self.config.eta)
        return group_dro_loss(per, groups, self.group_weights)

    def state_dict(self) -> dict[str, Any]:
        return {"group_weights": self.group_weights.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        q = torch.as_tensor(state["group_weights"], dtype=torch.float64).clone()
        if q.shape != self.group_weights.shape:
            raise InvalidParameterError(f"Saved group weights have shape {tuple(q.shape)} but this objective has "
                                        f"{self.n_groups} groups.")
        self.group_weights = q


def group_uniform_order(ctx: MitigationContext, groups: np.ndarray, salt: int = 2):
    """``epoch_order(epoch)``: N group-uniform draws per epoch, seeded by ``(seed, epoch, salt)``."""
    n = len(ctx.train)

    def epoch_order(epoch: int) -> torch.Tensor:
        return torch.from_numpy(group_uniform_indices(groups, n, random_state=ctx.epoch_rng(epoch, salt)))

    return epoch_order


@register_mitigation_method("vl-erm", description="VL-ERM: images against the class prompts (cross-entropy)")
def vl_erm_method(ctx: MitigationContext, config: NoConfig) -> MitigationPlan:
    """VL-ERM: the recipe's data order, images against every class prompt."""
    ctx.require_labelling("vl-erm")
    return MitigationPlan(VLERMObjective(ctx.labels, class_names=ctx.classes, templates=ctx.templates))


@register_mitigation_method("vl-gdro", config=GroupDROConfig,
                            description="VL-GDRO: VL-ERM under Group DRO over class x discovered-feature groups")
def vl_gdro_method(ctx: MitigationContext, config: GroupDROConfig) -> MitigationPlan:
    """VL-GDRO with group-uniform sampling over the labelling's groups."""
    labelling = ctx.require_labelling("vl-gdro")
    objective = GroupDROObjective(ctx.labels, labelling.groups, config, class_names=ctx.classes,
                                  templates=ctx.templates, n_groups=labelling.n_groups)
    return MitigationPlan(objective, epoch_order=group_uniform_order(ctx, labelling.groups))
