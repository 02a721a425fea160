"""RaVL's region-aware mitigation (Stage 2): the loss, the objective and the registered method.

``ravl``: CLIP loss + λ·(L_R + L_A) on the training regions labelled from discovery: candidate
core regions are the positives for the image's class, spurious regions are extra negatives
(equations and their sources: docs/algorithm.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ravl.exceptions import InvalidParameterError
from ravl.mitigation.common import (
    NEG_INF,
    ConfigMixin,
    PromptObjective,
    check_2d,
    check_ids,
    promote_half,
    zero_on_graph,
)
from ravl.mitigation.labelling import RegionLabels
from ravl.mitigation.registry import MitigationContext, MitigationPlan, register_mitigation_method
from ravl.models.regions import DEFAULT_REGION_MODE, REGION_MODES, region_batch, region_pixels
from ravl.training.losses import clip_loss
from ravl.utils.validation import check_choice, check_float, check_int

__all__ = ["LABEL_NEGATIVES", "REGION_IMAGE_CHOICES", "RegionAwareConfig", "RegionAwareObjective", "region_aware_loss"]

#: How ``region_aware_loss`` sums over "j in B" in L_R: over the distinct labels in the batch
#: (default) or over batch rows (a label shared by n images counted n times).
LABEL_NEGATIVES = ("distinct", "rows")

#: Which images of a batch contribute regions when ``RegionAwareConfig.region_images`` caps them:
#: the first rows of the batch, or images with a spurious region first (then the first rows).
REGION_IMAGE_CHOICES = ("batch", "spurious")


def region_aware_loss(region_embeddings: torch.Tensor, region_image: torch.Tensor,
                      region_is_spurious: torch.Tensor, class_embeddings: torch.Tensor,
                      labels: torch.Tensor, *, tau: float = 0.07,
                      label_negatives: str = "distinct") -> dict[str, torch.Tensor]:
    """RaVL's region-aware loss L_R + L_A over one batch (docs/algorithm.md §4).

    With ``s(r, y) = cos(f(r), t_y) / tau`` and ``log sigma(R, y) = max_{r in R} s(r, y)``
    (so ``sigma(R, y) = exp(max_r cos / tau)``), for every image i of the batch that has at
    least one candidate-core region (``R_i^r`` non-empty)::

        L_R(i) = -log sigma(R_i^r, y_i)
                 + log( sum_{y in Y_B} sigma(R_i^r, y)
                        + sum_{r in R_B^s} max_{y in Y_B} exp(s(r, y)) )
        L_A(i) = -log sigma(R_i^r, y_i)
                 + log( sigma(R_i^r, y_i) + sum_{k in B, y_k != y_i} sigma(R_k^r, y_i)
                        + sum_{r in R_B^s} exp(s(r, y_i)) )

    ``Y_B`` is the set of distinct labels in the batch (``label_negatives="distinct"``) or
    the multiset of batch rows' labels (``"rows"``: a label shared by n images enters the
    sum n times, including the positive's own label). ``R_B^s`` is every spurious region
    of the batch, whichever image it belongs to. Both terms are computed in log space
    (``logsumexp``) with masks, without a loop over images.

    Images without a candidate-core region are not anchors (no term of their own) and, as
    ``sigma(empty, y) = 0``, add nothing to other images' L_A denominators; their labels
    still belong to ``Y_B`` and their spurious regions to ``R_B^s``.

    Args:
        region_embeddings: ``[M, D]`` region embeddings (normalised here).
        region_image: ``[M]`` batch row (``0 .. B-1``) of every region.
        region_is_spurious: ``[M]`` bool, ``True`` for regions in ``R^s`` (discovered
            spurious cluster), ``False`` for candidate-core regions ``R^r``.
        class_embeddings: ``[C, D]`` text embedding of every class (normalised here), e.g. the
            prompt-ensemble embedding of each class name.
        labels: ``[B]`` class id (row of ``class_embeddings``) of every image of the batch.
        tau: Temperature (0.07 in the paper; not the model's learned logit scale).
        label_negatives: ``"distinct"`` (default) or ``"rows"``; see above.

    Returns:
        ``{"loss": L_R + L_A, "region_loss": L_R, "alignment_loss": L_A}``, each the mean
        over images with a candidate-core region; all zero (and attached to the graph) when
        there is none. Also, detached, for diagnosis: ``"spurious_share_r"`` and
        ``"spurious_share_a"``, the mean over those images of the fraction of the L_R / L_A
        denominator that the spurious regions' terms hold (their softmax weight: how much of
        the gradient still pushes them; ``nan`` without an anchor).

    Raises:
        ValueError: For inconsistent shapes or ids out of range.
    """
    caller = "region_aware_loss"
    tau = check_float(tau, "tau", caller, low=0, closed="neither")
    check_choice(label_negatives, "label_negatives", caller, LABEL_NEGATIVES)
    check_2d(region_embeddings, "region_embeddings", caller)
    check_2d(class_embeddings, "class_embeddings", caller, region_embeddings.shape[1])
    n_classes = class_embeddings.shape[0]
    if labels.ndim != 1:
        raise InvalidParameterError(f"The 'labels' argument of {caller} must be a 1-d tensor [B]. "
                                    f"Got shape {tuple(labels.shape)} instead.")
    b, m = labels.shape[0], region_embeddings.shape[0]
    labels = check_ids(labels, "labels", caller, b, n_classes)
    region_image = check_ids(region_image, "region_image", caller, m, max(b, 1))
    if region_is_spurious.ndim != 1 or region_is_spurious.shape[0] != m:
        raise InvalidParameterError(f"The 'region_is_spurious' argument of {caller} must be a 1-d bool tensor of "
                                    f"length {m}. Got shape {tuple(region_is_spurious.shape)} instead.")
    dev = region_embeddings.device
    spur = region_is_spurious.to(device=dev, dtype=torch.bool)
    labels, region_image = labels.to(dev), region_image.to(dev)

    e = F.normalize(promote_half(region_embeddings), dim=-1)
    t = F.normalize(promote_half(class_embeddings), dim=-1).to(e.dtype)
    s = e @ t.T / tau                                                       # [M, C]
    core = ~spur

    # log sigma(R_i^r, c) = max over image i's core regions of s(r, c)        -> [B, C]
    core_img = region_image[core]
    log_sigma = torch.full((b, n_classes), NEG_INF, dtype=s.dtype, device=dev).scatter_reduce(
        0, core_img[:, None].expand(-1, n_classes), s[core], reduce="amax", include_self=False)
    valid = torch.bincount(core_img, minlength=b) > 0                        # [B]
    log_sigma = torch.where(valid[:, None], log_sigma, torch.zeros_like(log_sigma))  # finite placeholders

    counts = torch.bincount(labels, minlength=n_classes)                    # [C]
    present = counts > 0
    rows = torch.arange(b, device=dev)
    positive = log_sigma[rows, labels]                                      # [B]

    s_spur = s[spur]                                                        # [Ms, C]
    ms = s_spur.shape[0]
    neg_inf = torch.tensor(NEG_INF, dtype=s.dtype, device=dev)

    # L_R: classes of the batch, then spurious regions scored with their best batch class.
    class_logits = log_sigma
    if label_negatives == "rows":
        class_logits = log_sigma + counts.clamp(min=1).to(s.dtype).log()[None, :]
    class_logits = torch.where(present[None, :], class_logits, neg_inf)
    spur_best = torch.where(present[None, :], s_spur, neg_inf).amax(dim=1) if ms else s_spur.new_zeros(0)
    den_r = torch.logsumexp(torch.cat([class_logits, spur_best[None, :].expand(b, ms)], dim=1), dim=1)
    loss_r = den_r - positive

    # L_A: own term, other images' core regions with another label, spurious regions, all at y_i.
    other = log_sigma[:, labels].T                                          # [i, k] = log sigma(R_k^r, y_i)
    keep = torch.eye(b, dtype=torch.bool, device=dev) | (valid[None, :] & (labels[None, :] != labels[:, None]))
    other = torch.where(keep, other, neg_inf)
    spur_at_label = s_spur[:, labels].T                                     # [B, Ms]
    den_a = torch.logsumexp(torch.cat([other, spur_at_label], dim=1), dim=1)
    loss_a = den_a - positive

    w = valid.to(s.dtype)
    n_valid = w.sum().clamp(min=1.0)
    region_loss = (loss_r * w).sum() / n_valid
    alignment_loss = (loss_a * w).sum() / n_valid
    anchor = zero_on_graph(region_embeddings, class_embeddings)
    region_loss = region_loss + anchor
    alignment_loss = alignment_loss + anchor
    with torch.no_grad():
        if not bool(valid.any()):
            share_r = share_a = s.new_tensor(float("nan"))
        elif ms:
            share_r = torch.exp(torch.logsumexp(spur_best, dim=0) - den_r)[valid].mean()
            share_a = torch.exp(torch.logsumexp(spur_at_label, dim=1) - den_a)[valid].mean()
        else:
            share_r = share_a = s.new_zeros(())
    return {"loss": region_loss + alignment_loss, "region_loss": region_loss, "alignment_loss": alignment_loss,
            "spurious_share_r": share_r, "spurious_share_a": share_a}


@dataclass(frozen=True)
class RegionAwareConfig(ConfigMixin):
    """RaVL mitigation's own knobs (:class:`RegionAwareObjective`; equations in docs/algorithm.md).

    ``loss = clip_weight * L_clip + lam * (region_weight * L_R + alignment_weight * L_A)``.

    Attributes:
        lam: λ, weight of the region-aware terms (the paper's value is not public; 1.0 was used
            in our prototype).
        tau: Temperature of the region-aware terms.
        warmup_epochs: Epochs at the start with λ = 0 (the CLIP loss only), so that the region
            embeddings mean something before the region terms act on them; needed when training
            starts from a random initialisation (docs/mitigation.md), not from a fine-tuned or
            pretrained model. ``None``: 1 when mitigation starts from freshly initialised
            weights, 0 when it starts from pretrained weights or continues from the audited
            checkpoint; never more than ``epochs - 1``. Counted with
            :meth:`RegionAwareObjective.set_epoch`.
        clip_weight: Weight of the CLIP loss on the image-caption pairs.
        region_weight: Weight of L_R inside the λ term.
        alignment_weight: Weight of L_A inside the λ term.
        label_negatives: ``"distinct"`` or ``"rows"`` (see :func:`region_aware_loss`).
        train_region_mode: Region embedding mode of the training step's region terms; ``None``
            (default): the mode of the labelling / discovery / evaluation (``masked`` by default).
            ``"roi"`` pools the regions from the CLIP pass's own feature map
            (``encode_image_and_roi``: one backbone pass per image, about the cost of standard
            fine-tuning) while the regions stay labelled in the labelling's mode. Cheaper and
            measured worse than ``masked`` on the tiny CLIP (docs/mitigation.md, point 7 of "What
            makes the region-aware loss work").
        region_images: At most this many images of each batch (its first rows: a random subset
            under the shuffled data order) contribute regions to L_R and L_A; ``None`` (default):
            every image. Cuts the masked region pass (one encoder pass per region) proportionally.
            The loss is then the loss of a batch of those images (their labels, their regions).
        region_image_choice: Which images ``region_images`` keeps: ``"batch"`` (its first rows)
            or ``"spurious"`` (images with a spurious region first, in batch order, then the
            others).
        train_region_size: Side in pixels of the region inputs of the training step
            (``masked`` / ``crop``; :func:`ravl.models.regions.region_pixels`); ``None``
            (default): the model's input size. A crop of a 28-px cell at 28 px keeps the
            object's scale at a quarter of the pixels of a 56-px pass. Only for image towers that
            take other input sizes (the tiny CLIP: ``accepts_any_image_size``); ViTs with fixed
            position embeddings are refused.
    """

    lam: float = field(default=1.0, metadata={"cli": "--lam", "help": "weight λ of RaVL's region-aware terms"})
    tau: float = field(default=0.07, metadata={"cli": "--tau", "help": "temperature of RaVL's region-aware terms"})
    warmup_epochs: int | None = field(default=None, metadata={
        "cli": "--region-warmup-epochs",
        "help": "first epochs with the CLIP loss only (default: 1 from fresh random weights, 0 from pretrained "
                "weights or --start checkpoint)"})
    clip_weight: float = field(default=1.0, metadata={"help": "weight of the CLIP loss"})
    region_weight: float = field(default=1.0, metadata={"help": "weight of L_R inside the λ term"})
    alignment_weight: float = field(default=1.0, metadata={"help": "weight of L_A inside the λ term"})
    label_negatives: str = field(default="distinct", metadata={
        "choices": LABEL_NEGATIVES, "help": "L_R's sum over the batch's labels: distinct labels or batch rows"})
    train_region_mode: str | None = field(default=None, metadata={
        "cli": "--train-region-mode", "choices": REGION_MODES,
        "help": "region mode of RaVL's training step (default: the labelling's, i.e. --region-mode or the discovery's)"})
    region_images: int | None = field(default=None, metadata={
        "cli": "--region-images",
        "help": "at most this many images per batch contribute regions to RaVL's region terms (default: all)"})
    region_image_choice: str = field(default="batch", metadata={
        "cli": "--region-image-choice", "choices": REGION_IMAGE_CHOICES,
        "help": "with --region-images: the batch's first rows, or images with a spurious region first"})
    train_region_size: int | None = field(default=None, metadata={
        "cli": "--train-region-size",
        "help": "side in pixels of the region inputs of RaVL's training step (masked / crop modes; default: the "
                "model's input size); only for image towers that take other sizes (the tiny CLIP)"})

    def __post_init__(self) -> None:
        c = "RegionAwareConfig"
        check_float(self.lam, "lam", c, low=0)
        check_float(self.tau, "tau", c, low=0, closed="neither")
        if self.warmup_epochs is not None:
            check_int(self.warmup_epochs, "warmup_epochs", c, low=0)
        check_float(self.clip_weight, "clip_weight", c, low=0)
        check_float(self.region_weight, "region_weight", c, low=0)
        check_float(self.alignment_weight, "alignment_weight", c, low=0)
        check_choice(self.label_negatives, "label_negatives", c, LABEL_NEGATIVES)
        if self.train_region_mode is not None:
            check_choice(self.train_region_mode, "train_region_mode", c, REGION_MODES)
        if self.region_images is not None:
            check_int(self.region_images, "region_images", c, low=1)
        check_choice(self.region_image_choice, "region_image_choice", c, REGION_IMAGE_CHOICES)
        if self.train_region_size is not None:
            check_int(self.train_region_size, "train_region_size", c, low=8)
            if self.train_region_mode == "roi":
                raise InvalidParameterError("train_region_size sets the side of the region inputs of the masked and "
                                            "crop modes; 'roi' pools features instead. Drop one of them.")


class RegionAwareObjective(PromptObjective):
    """RaVL mitigation: CLIP loss on image-caption pairs plus the region-aware loss.

    ``loss = clip_weight * clip_loss(images, captions)
    + lam * (region_weight * L_R + alignment_weight * L_A)``, with L_R and L_A from
    :func:`~ravl.mitigation.losses.region_aware_loss` computed on the batch's labelled regions:
    region embeddings from :func:`ravl.models.regions.region_batch` (differentiable, mode
    ``region_mode``) and the class text ``t_y`` from the class prompts, encoded with
    gradients at every call.

    Args:
        region_labels: The labelled regions of the training images
            (:class:`~ravl.mitigation.labelling.RegionLabels`).
        labels_by_index: ``[N]`` class id of every training image.
        config: A :class:`RegionAwareConfig`, or give its fields as keyword arguments.
        class_names: The C class names, in label-id order.
        templates: Prompt templates of the class text ``t_y`` (``None``: zero-shot defaults).
        region_mode: How region embeddings are computed (``"masked"``, ``"roi"``, ``"crop"``);
            ``config.train_region_mode``, when set, takes precedence.
        region_embedder: Optional ``fn(model, pixels, boxes [M, 5], mode) -> [M, D]``
            replacing :func:`ravl.models.regions.region_batch` (for tests and custom models).

    Returned components: ``loss``, ``clip_loss``, ``region_loss`` (L_R), ``alignment_loss`` (L_A).
    """

    name = "ravl"
    config_cls = RegionAwareConfig

    def __init__(self, region_labels: RegionLabels, labels_by_index: Any,
                 config: RegionAwareConfig | None = None, *, class_names: Sequence[str],
                 templates: Sequence[str] | None = None, region_mode: str = DEFAULT_REGION_MODE,
                 region_embedder: Callable[..., torch.Tensor] | None = None, **kwargs: Any):
        super().__init__(labels_by_index, config, kwargs, class_names=class_names, templates=templates)
        caller = type(self).__name__
        check_choice(region_mode, "region_mode", caller, REGION_MODES)
        self.region_mode = self.config.train_region_mode or region_mode
        if self.config.train_region_size is not None and self.region_mode == "roi":
            raise InvalidParameterError("train_region_size sets the side of the region inputs of the masked and crop "
                                        "modes; the region mode here is 'roi' (pooled features). Drop "
                                        "--train-region-size or set --train-region-mode masked|crop.")
        if not isinstance(region_labels, RegionLabels):
            raise InvalidParameterError(f"The 'region_labels' parameter of {caller} must be a RegionLabels. "
                                        f"Got {type(region_labels).__name__} instead.")
        n = self.labels_by_index.shape[0]
        if len(region_labels) and region_labels.image_index.max() >= n:
            raise InvalidParameterError("region_labels.image_index refers to position "
                                        f"{int(region_labels.image_index.max())}"
                                        f" but labels_by_index has {n} training images; label the regions of the same "
                                        "training split.")
        self.region_labels = region_labels
        order = np.argsort(region_labels.image_index, kind="stable")
        self._order = order
        self._offsets = np.searchsorted(region_labels.image_index[order], np.arange(n + 1))
        self._boxes = torch.from_numpy(region_labels.boxes_norm[order].copy())
        self._spurious = torch.from_numpy(region_labels.is_spurious[order].copy())
        has_spurious = np.zeros(n, dtype=bool)
        has_spurious[region_labels.image_index[region_labels.is_spurious]] = True
        self._has_spurious = has_spurious
        self._region_embedder = region_embedder
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Set the 0-based epoch (the training loop calls it): λ is 0 before ``warmup_epochs``."""
        self.epoch = check_int(epoch, "epoch", "RegionAwareObjective.set_epoch", low=0)

    @property
    def current_lam(self) -> float:
        """λ at the current epoch (0 during the warm-up epochs)."""
        return 0.0 if self.epoch < (self.config.warmup_epochs or 0) else float(self.config.lam)

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

    def _region_rows(self, idx: np.ndarray) -> np.ndarray:
        """Batch rows whose regions enter the region terms (every row unless ``region_images`` caps them)."""
        cap = self.config.region_images
        if cap is None or cap >= len(idx):
            return np.arange(len(idx))
        if self.config.region_image_choice == "spurious":
            return np.argsort(~self._has_spurious[idx], kind="stable")[:cap]
        return np.arange(cap)

    def _embed(self, model, pixels: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        size = self.config.train_region_size
        if size is not None and self._region_embedder is None:
            if not getattr(model, "accepts_any_image_size", False):
                raise InvalidParameterError(f"train_region_size ({size}) needs an image tower that takes inputs of "
                                            f"other sizes (the tiny CLIP); {type(model).__name__} takes "
                                            "its own input size only. Drop --train-region-size.")
            return model.encode_image(region_pixels(model, pixels, boxes, self.region_mode, size=size))
        fn = self._region_embedder or region_batch
        return fn(model, pixels, boxes, mode=self.region_mode)

    def __call__(self, model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg = self.config
        pixels = batch["pixels"]
        idx = self._indices(batch)
        chosen = self._region_rows(idx)                  # batch rows whose regions enter the loss
        sel, rows = self._batch_regions(idx[chosen])
        lam = self.current_lam
        boxes = None
        if lam > 0 and len(sel):
            boxes = torch.cat([torch.from_numpy(chosen[rows]).to(self._boxes.dtype)[:, None], self._boxes[sel]],
                              dim=1)
            boxes = boxes.to(device=pixels.device, dtype=pixels.dtype)
        both = getattr(model, "encode_image_and_roi", None)
        if boxes is not None and self.region_mode == "roi" and self._region_embedder is None and callable(both):
            # One backbone pass gives the images and their regions (the real backbones' adapters).
            img, emb = both(pixels, boxes)
            txt = model.encode_text(batch["tokens"])
        else:
            # Images, texts, then regions: with BatchNorm in training mode the order of passes matters.
            img = model.encode_image(pixels)
            txt = model.encode_text(batch["tokens"])
            emb = None if boxes is None else self._embed(model, pixels, boxes)
        l_clip = clip_loss(img, txt, model.logit_scale())["loss"]
        labels = self._labels(batch, img.device)
        if emb is not None:
            ra = region_aware_loss(emb, torch.from_numpy(rows).to(img.device), self._spurious[sel].to(img.device),
                                   self._class_embeddings(model), labels[torch.from_numpy(chosen).to(img.device)],
                                   tau=cfg.tau, label_negatives=cfg.label_negatives)
            l_r, l_a = ra["region_loss"], ra["alignment_loss"]
        else:
            l_r = l_a = l_clip.new_zeros(())
        loss = cfg.clip_weight * l_clip + lam * (cfg.region_weight * l_r + cfg.alignment_weight * l_a)
        return {"loss": loss, "clip_loss": l_clip, "region_loss": l_r, "alignment_loss": l_a}


@register_mitigation_method("ravl", config=RegionAwareConfig,
                            description="RaVL: CLIP loss + λ·(L_R + L_A) on the regions labelled from discovery")
def ravl_method(ctx: MitigationContext, config: RegionAwareConfig) -> MitigationPlan:
    """RaVL mitigation; resolves the warm-up epochs (``None``: 1 from fresh random weights, 0 from
    pretrained weights or the audited checkpoint, at most ``epochs - 1``)."""
    labelling = ctx.require_labelling("ravl")
    warm = config.warmup_epochs
    warm = (1 if ctx.from_random_weights else 0) if warm is None else warm
    warm = min(warm, ctx.finetune.epochs - 1)
    objective = RegionAwareObjective(labelling.region_labels, ctx.labels, replace(config, warmup_epochs=warm),
                                     class_names=ctx.classes, templates=ctx.templates, region_mode=ctx.region_mode)
    return MitigationPlan(objective, info={"region_warmup_epochs": warm})
