"""Spurious-Aware fine-tuning (Yang, Nushi, Palangi, Mirzasoleiman, ICML 2023).

``spurious-aware``: L_clip + L_vc + L_lc (+ L_ls) with group-uniform sampling over class ×
discovered-feature groups; the authors' recipe trains the projection only, ravl's default trains
every parameter like the other methods (``--trainable image-projection`` for the authors').
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ravl.exceptions import InvalidParameterError
from ravl.mitigation.common import (
    ConfigMixin,
    PromptObjective,
    check_2d,
    check_ids,
    promote_half,
    string_tuple,
    supcon_per_anchor,
    supervised_contrastive_loss,
    zero_on_graph,
)
from ravl.mitigation.methods.vl import group_uniform_order
from ravl.mitigation.registry import MitigationContext, MitigationPlan, register_mitigation_method
from ravl.training.losses import clip_loss
from ravl.utils.validation import check_choice, check_float

__all__ = ["CONTRASTIVE_FORMS", "SpuriousAwareConfig", "SpuriousAwareObjective", "similarity_pull_push",
           "spurious_aware_loss"]

logger = logging.getLogger(__name__)

#: Forms of the in-modal terms of the Spurious-Aware loss: the authors' cosine pull/push
#: (``"similarity"``) or a supervised contrastive loss (``"supcon"``).
CONTRASTIVE_FORMS = ("similarity", "supcon")


def similarity_pull_push(embeddings_a: torch.Tensor, embeddings_b: torch.Tensor, labels_a: torch.Tensor,
                         labels_b: torch.Tensor, *, pos_weight: float = 1.0, neg_weight: float = 1.0
                         ) -> torch.Tensor:
    """Per-row cosine pull/push of Yang et al. (2023)'s in-modal losses.

    ``l_i = -pos_weight * mean_j cos(a_i, b_j) [y_i = y_j] + neg_weight * mean_j cos(a_i, b_j) [y_i != y_j]``
    where both means divide by the number of columns (all of ``b``), as the authors' code
    does.

    Returns:
        ``[len(a)]`` per-row losses.
    """
    a = F.normalize(promote_half(embeddings_a), dim=-1)
    b = F.normalize(promote_half(embeddings_b), dim=-1).to(a.dtype)
    cos = a @ b.T
    same = (labels_a[:, None].to(a.device) == labels_b[None, :].to(a.device)).to(a.dtype)
    return -pos_weight * (cos * same).mean(dim=1) + neg_weight * (cos * (1 - same)).mean(dim=1)


def _per_class_means(per_row: torch.Tensor, row_class: torch.Tensor, n_classes: int) -> torch.Tensor:
    sums = per_row.new_zeros(n_classes).index_add(0, row_class, per_row)
    counts = torch.bincount(row_class, minlength=n_classes).to(per_row.dtype).clamp(min=1)
    return sums / counts


def spurious_aware_loss(image_embeddings: torch.Tensor, labels: torch.Tensor,
                        class_template_embeddings: torch.Tensor,
                        spurious_template_embeddings: torch.Tensor | None,
                        logit_scale: torch.Tensor | float, *, clip_weight: float = 1.0,
                        vision_weight: float = 1.0, language_weight: float = 1.0,
                        spurious_weight: float = 1.0, pos_weight: float = 1.0, neg_weight: float = 1.0,
                        contrastive_form: str = "similarity", tau: float = 0.1) -> dict[str, torch.Tensor]:
    """Spurious-Aware fine-tuning loss (Yang, Nushi, Palangi, Mirzasoleiman, ICML 2023).

    ``loss = clip_weight * L_clip + vision_weight * L_vc + language_weight * L_lc
    + spurious_weight * L_ls`` with

    - ``L_clip``: symmetric InfoNCE between the images and the class-prompt embeddings of
      their labels (``t_{y_i}``, the prompt ensemble), as in the authors' code;
    - ``L_vc``: in-batch image similarity, pulling same-class images together and pushing
      different-class images apart (:func:`similarity_pull_push`, or a supervised
      contrastive loss with ``contrastive_form="supcon"``);
    - ``L_lc``: the same over the per-template class-prompt embeddings (``C*K`` rows labelled
      by class); the per-class value is averaged over the batch's labels;
    - ``L_ls``: mean ``|cos|`` between every class prompt and every prompt naming the
      spurious attribute, averaged over the batch's labels (0 without spurious prompts).

    Args:
        image_embeddings: ``[B, D]``.
        labels: ``[B]`` class ids.
        class_template_embeddings: ``[C, K, D]`` one embedding per class and template.
        spurious_template_embeddings: ``[S, K', D]`` prompts naming the spurious attribute(s),
            or ``None``.
        logit_scale: Inverse temperature of ``L_clip`` (e.g. ``model.logit_scale()``).
        clip_weight, vision_weight, language_weight, spurious_weight: Term weights.
        pos_weight, neg_weight: Weights of the pull and push parts of the similarity form.
        contrastive_form: ``"similarity"`` (authors' code) or ``"supcon"``.
        tau: Temperature of the ``"supcon"`` form.

    Returns:
        ``{"loss", "clip_loss", "vision_contrastive_loss", "language_contrastive_loss",
        "language_spurious_loss"}``.
    """
    caller = "spurious_aware_loss"
    check_choice(contrastive_form, "contrastive_form", caller, CONTRASTIVE_FORMS)
    tau = check_float(tau, "tau", caller, low=0, closed="neither")
    check_2d(image_embeddings, "image_embeddings", caller)
    if class_template_embeddings.ndim != 3 or class_template_embeddings.shape[2] != image_embeddings.shape[1]:
        raise InvalidParameterError(f"The 'class_template_embeddings' argument of {caller} must be [C, K, "
                                    f"{image_embeddings.shape[1]}]. Got shape "
                                    f"{tuple(class_template_embeddings.shape)}.")
    n_classes, n_templates, d = class_template_embeddings.shape
    labels = check_ids(labels, "labels", caller, image_embeddings.shape[0], n_classes)
    labels = labels.to(image_embeddings.device)

    per_template = F.normalize(promote_half(class_template_embeddings), dim=-1)      # [C, K, D]
    class_emb = F.normalize(per_template.mean(dim=1), dim=-1)                  # [C, D]
    l_clip = clip_loss(image_embeddings, class_emb[labels], logit_scale)["loss"]

    if contrastive_form == "similarity":
        l_vc = similarity_pull_push(image_embeddings, image_embeddings, labels, labels,
                                    pos_weight=pos_weight, neg_weight=neg_weight).mean()
    else:
        l_vc = supervised_contrastive_loss(image_embeddings, labels, tau=tau)["loss"]

    flat = per_template.reshape(n_classes * n_templates, d)
    row_class = torch.arange(n_classes, device=flat.device).repeat_interleave(n_templates)
    if contrastive_form == "similarity":
        per_row = similarity_pull_push(flat, flat, row_class, row_class, pos_weight=pos_weight,
                                       neg_weight=neg_weight)
    else:
        per_row, _ = supcon_per_anchor(flat, row_class, tau) if flat.shape[0] > 1 else (flat.sum(1) * 0, None)
    l_lc = _per_class_means(per_row, row_class, n_classes)[labels].mean()

    if spurious_template_embeddings is not None and spurious_template_embeddings.numel():
        if spurious_template_embeddings.ndim != 3 or spurious_template_embeddings.shape[2] != d:
            raise InvalidParameterError(f"The 'spurious_template_embeddings' argument of {caller} must be [S, K, {d}]. "
                                        f"Got shape {tuple(spurious_template_embeddings.shape)}.")
        sp = F.normalize(promote_half(spurious_template_embeddings), dim=-1).reshape(-1, d).to(flat.dtype)
        per_class = (flat @ sp.T).abs().mean(dim=1).view(n_classes, n_templates).mean(dim=1)   # [C]
        l_ls = per_class[labels].mean()
    else:
        l_ls = zero_on_graph(class_template_embeddings)

    total = clip_weight * l_clip + vision_weight * l_vc + language_weight * l_lc + spurious_weight * l_ls
    return {"loss": total, "clip_loss": l_clip, "vision_contrastive_loss": l_vc,
            "language_contrastive_loss": l_lc, "language_spurious_loss": l_ls}


@dataclass(frozen=True)
class SpuriousAwareConfig(ConfigMixin):
    """Configuration of :class:`SpuriousAwareObjective` (Yang et al., ICML 2023).

    Attributes:
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

    spurious_names: tuple[str, ...] = field(default=(), metadata={
        "cli": "--spurious-name", "help": "name of the spurious attribute for L_ls (repeatable)"})
    clip_weight: float = 1.0
    vision_weight: float = 1.0
    language_weight: float = 1.0
    spurious_weight: float = 1.0
    pos_weight: float = 1.0
    neg_weight: float = 1.0
    contrastive_form: str = field(default="similarity", metadata={"choices": CONTRASTIVE_FORMS})
    tau: float = 0.1

    def __post_init__(self) -> None:
        c = "SpuriousAwareConfig"
        object.__setattr__(self, "spurious_names",
                           string_tuple(self.spurious_names, "spurious_names", c, allow_empty=True))
        for name in ("clip_weight", "vision_weight", "language_weight", "spurious_weight", "pos_weight",
                     "neg_weight"):
            check_float(getattr(self, name), name, c, low=0)
        check_choice(self.contrastive_form, "contrastive_form", c, CONTRASTIVE_FORMS)
        check_float(self.tau, "tau", c, low=0, closed="neither")


class SpuriousAwareObjective(PromptObjective):
    """Spurious-Aware fine-tuning (Yang, Nushi, Palangi, Mirzasoleiman, ICML 2023).

    ``L_clip + L_vc + L_lc + L_ls`` (each weighted, see
    :func:`~ravl.mitigation.losses.spurious_aware_loss`); class prompts and prompts naming the
    spurious attribute (``config.spurious_names`` in every template) are encoded with
    gradients at every call. The authors train only the projection layer with group-uniform
    sampling; which parameters train is the caller's choice (freeze the others).

    Args:
        labels_by_index: ``[N]`` class id of every training image.
        config: A :class:`SpuriousAwareConfig`, or give its fields as keyword arguments.
        class_names: The C class names, in label-id order.
        templates: Prompt templates for classes and spurious attributes (``None``: defaults).

    Returned components: ``loss``, ``clip_loss``, ``vision_contrastive_loss``,
    ``language_contrastive_loss``, ``language_spurious_loss``.
    """

    name = "spurious_aware"
    config_cls = SpuriousAwareConfig

    def __init__(self, labels_by_index: Any, config: SpuriousAwareConfig | None = None, *,
                 class_names: Sequence[str], templates: Sequence[str] | None = None, **kwargs: Any):
        super().__init__(labels_by_index, config, kwargs, class_names=class_names, templates=templates)

    def __call__(self, model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg = self.config
        img = model.encode_image(batch["pixels"])
        labels = self._labels(batch, img.device)
        classes = self._prompt_embeddings(model, self.class_names)
        spur = self._prompt_embeddings(model, cfg.spurious_names) if cfg.spurious_names else None
        return spurious_aware_loss(img, labels, classes, spur, model.logit_scale(), clip_weight=cfg.clip_weight,
                                   vision_weight=cfg.vision_weight, language_weight=cfg.language_weight,
                                   spurious_weight=cfg.spurious_weight, pos_weight=cfg.pos_weight,
                                   neg_weight=cfg.neg_weight, contrastive_form=cfg.contrastive_form, tau=cfg.tau)


@register_mitigation_method("spurious-aware", config=SpuriousAwareConfig,
                            description="Spurious-Aware (Yang et al. 2023): L_clip + L_vc + L_lc (+ L_ls), "
                                        "group-uniform sampling")
def spurious_aware_method(ctx: MitigationContext, config: SpuriousAwareConfig) -> MitigationPlan:
    """Spurious-Aware with group-uniform sampling over the labelling's groups."""
    labelling = ctx.require_labelling("spurious-aware")
    if not config.spurious_names:
        logger.info("Spurious-Aware without spurious_names: L_ls is off (discovery names no attribute).")
    objective = SpuriousAwareObjective(ctx.labels, config, class_names=ctx.classes, templates=ctx.templates)
    return MitigationPlan(objective, epoch_order=group_uniform_order(ctx, labelling.groups))
