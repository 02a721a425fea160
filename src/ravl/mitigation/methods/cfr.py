"""CFR (You et al., CVPR 2024): calibrating the ERM model on its own mistakes, without group labels.

``cfr``: the calibration stage, with the audited checkpoint as the ERM model; the authors train
the image projection only on top of the frozen ERM model (the default here too: trained whole,
its objective, which has no image-text term, destroyed the zero-shot classifier).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ravl.exceptions import InvalidParameterError
from ravl.mitigation.common import (
    ConfigMixin,
    PromptObjective,
    as_id_array,
    check_2d,
    promote_half,
    supervised_contrastive_loss,
    zero_on_graph,
)
from ravl.mitigation.methods.vl import vl_erm_per_sample
from ravl.mitigation.registry import MitigationContext, MitigationPlan, register_mitigation_method
from ravl.models.regions import embed_images
from ravl.utils.validation import check_float, check_int
from ravl.zeroshot import class_text_embeddings

__all__ = ["CFRConfig", "CFRCalibrationObjective", "calibration_contrastive_loss", "cfr_epoch_weight",
           "calibration_set"]

logger = logging.getLogger(__name__)


def calibration_contrastive_loss(anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, *,
                                 tau: float = 1.0, weights: torch.Tensor | None = None
                                 ) -> dict[str, torch.Tensor]:
    """CFR's calibration contrastive loss.

    For anchor a with positives ``p_1..p_P`` and negatives ``n_1..n_Q`` (all normalised)::

        l_a = 1/P sum_p -log( exp(a.p / tau) / (exp(a.p / tau) + sum_q exp(a.n_q / tau)) )

    i.e. one cross-entropy per positive against all negatives, as in the authors' code.

    Args:
        anchors: ``[A, D]``.
        positives: ``[A, P, D]``.
        negatives: ``[A, Q, D]`` (``Q`` may be 0).
        tau: Temperature (1 in CFR).
        weights: Optional ``[A]`` per-anchor weights.

    Returns:
        ``{"loss"}``: mean over anchors of ``w_a l_a`` (0 without anchors).
    """
    caller = "calibration_contrastive_loss"
    tau = check_float(tau, "tau", caller, low=0, closed="neither")
    check_2d(anchors, "anchors", caller)
    n, d = anchors.shape
    for name, x in (("positives", positives), ("negatives", negatives)):
        if x.ndim != 3 or x.shape[0] != n or x.shape[2] != d:
            raise InvalidParameterError(f"The '{name}' argument of {caller} must be [{n}, n, {d}] (one row per "
                                        f"anchor). Got shape {tuple(x.shape)} instead.")
    if positives.shape[1] == 0:
        raise InvalidParameterError(f"The 'positives' argument of {caller} needs at least one positive per anchor.")
    if n == 0:
        return {"loss": zero_on_graph(anchors, positives, negatives)}
    a = F.normalize(promote_half(anchors), dim=-1)
    p = F.normalize(promote_half(positives), dim=-1).to(device=a.device, dtype=a.dtype)
    q = F.normalize(promote_half(negatives), dim=-1).to(device=a.device, dtype=a.dtype)
    sp = torch.einsum("ad,apd->ap", a, p) / tau                              # [A, P]
    sn = torch.einsum("ad,aqd->aq", a, q) / tau                              # [A, Q]
    if sn.shape[1]:
        den = torch.logaddexp(sp, torch.logsumexp(sn, dim=1, keepdim=True))
    else:
        den = sp
    per_anchor = (den - sp).mean(dim=1)
    if weights is not None:
        per_anchor = per_anchor * weights.to(device=a.device, dtype=a.dtype)
    return {"loss": per_anchor.mean()}


def cfr_epoch_weight(epoch: int, n_epochs: int) -> float:
    """CFR's epoch weight ``lambda_e = 1 + 0.5 * cos(2 pi e / E)`` (1.5 at e = 0, 0.5 at E/2).

    Args:
        epoch: 0-based epoch ``e``.
        n_epochs: ``E``, the number of calibration epochs.
    """
    n_epochs = check_int(n_epochs, "n_epochs", "cfr_epoch_weight", low=1)
    epoch = check_int(epoch, "epoch", "cfr_epoch_weight", low=0)
    return 1.0 + 0.5 * math.cos(2.0 * math.pi * epoch / n_epochs)


@dataclass(frozen=True)
class CFRConfig(ConfigMixin):
    """CFR's own knobs (:class:`CFRCalibrationObjective` and the calibration set).

    ``loss = supcon_weight * L_supcon(batch)
    + lambda_e * (ce_weight * CE(calibration rows) + calibration_weight * L_cal)`` with
    ``lambda_e = 1 + 0.5 cos(2 pi e / E)``, E the number of epochs.

    Attributes:
        positives: Positives per calibration anchor (16 in CFR).
        negatives: Negatives per calibration anchor (16 in CFR).
        supcon_tau: Temperature of the supervised contrastive term on the batch.
        calibration_tau: Temperature of the calibration contrastive loss (1 in CFR).
        supcon_weight: Weight of the supervised contrastive term.
        ce_weight: Weight of the cross-entropy on calibration samples.
        calibration_weight: Weight of the calibration contrastive loss.
    """

    positives: int = field(default=16, metadata={"cli": "--cfr-positives", "help": "positives per calibration anchor"})
    negatives: int = field(default=16, metadata={"cli": "--cfr-negatives", "help": "negatives per calibration anchor"})
    supcon_tau: float = 0.1
    calibration_tau: float = 1.0
    supcon_weight: float = 1.0
    ce_weight: float = 1.0
    calibration_weight: float = 1.0

    def __post_init__(self) -> None:
        c = "CFRConfig"
        check_int(self.positives, "positives", c, low=1)
        check_int(self.negatives, "negatives", c, low=1)
        check_float(self.supcon_tau, "supcon_tau", c, low=0, closed="neither")
        check_float(self.calibration_tau, "calibration_tau", c, low=0, closed="neither")
        for name in ("supcon_weight", "ce_weight", "calibration_weight"):
            check_float(getattr(self, name), name, c, low=0)


class CFRCalibrationObjective(PromptObjective):
    """The calibration stage of CFR (You et al., CVPR 2024), given a precomputed calibration set.

    The stages before it (ERM fine-tuning, then the calibration set = training images the ERM
    model misclassifies, each with positives from correctly classified images of its class and
    negatives) are assembled by the caller. At every call:

    - ``L_supcon``: supervised contrastive loss over all images of the batch;
    - for the batch rows that are calibration samples (anchors): cross-entropy against the
      class prompts (as VL-ERM) and the calibration contrastive loss (``tau = 1``) against
      their precomputed positive and negative embeddings;
    - ``loss = supcon_weight * L_supcon + lambda_e * (ce_weight * CE + calibration_weight * L_cal)``
      with ``lambda_e = 1 + 0.5 cos(2 pi e / E)`` (:func:`cfr_epoch_weight`).

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
        class_names: The C class names, in label-id order.
        templates: Prompt templates (``None``: zero-shot defaults).
        n_epochs: E, the number of calibration epochs (for ``lambda_e``).
        calibration_weights: Optional ``[A]`` per-anchor weights of the contrastive loss.

    Returned components: ``loss``, ``supcon_loss``, ``calibration_ce_loss``,
    ``calibration_contrastive_loss``.
    """

    name = "cfr_calibration"
    config_cls = CFRConfig

    def __init__(self, labels_by_index: Any, calibration_indices: Any, positive_embeddings: Any,
                 negative_embeddings: Any, config: CFRConfig | None = None, *, class_names: Sequence[str],
                 templates: Sequence[str] | None = None, n_epochs: int = 1, calibration_weights: Any = None,
                 **kwargs: Any):
        super().__init__(labels_by_index, config, kwargs, class_names=class_names, templates=templates)
        caller = type(self).__name__
        self.n_epochs = check_int(n_epochs, "n_epochs", caller, low=1)
        n = self.labels_by_index.shape[0]
        calib = as_id_array(calibration_indices, "calibration_indices", caller, high=n)
        if len(np.unique(calib)) != len(calib):
            raise InvalidParameterError(f"The 'calibration_indices' parameter of {caller} must hold distinct "
                                        "positions.")
        pos = torch.as_tensor(np.asarray(positive_embeddings) if not isinstance(positive_embeddings, torch.Tensor)
                              else positive_embeddings).detach().float().cpu()
        neg = torch.as_tensor(np.asarray(negative_embeddings) if not isinstance(negative_embeddings, torch.Tensor)
                              else negative_embeddings).detach().float().cpu()
        a = len(calib)
        if pos.ndim != 3 or pos.shape[0] != a or pos.shape[1] == 0:
            raise InvalidParameterError(f"The 'positive_embeddings' parameter of {caller} must be [{a}, P, D] with P "
                                        f">= 1 (one row per calibration sample). Got {tuple(pos.shape)}.")
        if neg.ndim != 3 or neg.shape[0] != a or neg.shape[2] != pos.shape[2]:
            raise InvalidParameterError(f"The 'negative_embeddings' parameter of {caller} must be [{a}, Q, "
                                        f"{pos.shape[2]}]. Got {tuple(neg.shape)}.")
        self.calibration_indices = calib
        self._row_of = np.full(n, -1, dtype=np.int64)
        self._row_of[calib] = np.arange(a)
        self._positives, self._negatives = pos, neg
        self._weights = None
        if calibration_weights is not None:
            w = torch.as_tensor(np.asarray(calibration_weights, dtype=np.float32))
            if w.shape != (a,):
                raise InvalidParameterError(f"The 'calibration_weights' parameter of {caller} must have shape ({a},). "
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
        lam = cfr_epoch_weight(self.epoch, self.n_epochs)
        loss = cfg.supcon_weight * l_sup + lam * (cfg.ce_weight * l_ce + cfg.calibration_weight * l_cal)
        return {"loss": loss, "supcon_loss": l_sup, "calibration_ce_loss": l_ce,
                "calibration_contrastive_loss": l_cal}


def calibration_set(model, train, labels: np.ndarray, templates: Sequence[str], config: CFRConfig, *, seed: int,
                    progress: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CFR's calibration set from the ERM model: ``(anchor positions [A], positives [A, P, D], negatives [A, Q, D])``.

    Anchors are the training images ``model`` misclassifies zero-shot; each gets P positives
    (correctly classified images of its class; any other image of its class when there is none)
    and Q negatives (images of other classes), drawn with a generator seeded by ``(seed, 7)``,
    embedded by ``model`` (constants).
    """
    emb = embed_images(model, train, progress=progress)
    text = class_text_embeddings(model, list(train.classes), templates=templates).float().cpu().numpy()
    pred = (emb @ text.T).argmax(1)
    wrong = np.flatnonzero(pred != labels)
    rng = np.random.default_rng([int(seed), 7])
    pos, neg = [], []
    for a in wrong:
        same = np.flatnonzero((labels == labels[a]) & (pred == labels) & (np.arange(len(labels)) != a))
        if not len(same):
            same = np.flatnonzero((labels == labels[a]) & (np.arange(len(labels)) != a))
        if not len(same):
            same = np.array([a])
        other = np.flatnonzero(labels != labels[a])
        if not len(other):
            other = np.array([a])
        pos.append(emb[rng.choice(same, config.positives, replace=len(same) < config.positives)])
        neg.append(emb[rng.choice(other, config.negatives, replace=len(other) < config.negatives)])
    d = emb.shape[1]
    pos_a = np.stack(pos) if pos else np.zeros((0, config.positives, d), np.float32)
    neg_a = np.stack(neg) if neg else np.zeros((0, config.negatives, d), np.float32)
    logger.info("CFR calibration set: %d of %d training images misclassified by the audited model.",
                len(wrong), len(labels))
    return wrong, pos_a, neg_a


@register_mitigation_method("cfr", config=CFRConfig, trainable="image-projection",
                            description="CFR (You et al. 2024): calibration of the audited ERM model, projection only")
def cfr_method(ctx: MitigationContext, config: CFRConfig) -> MitigationPlan:
    """CFR's calibration stage [design]: its first stage, ERM from the initialisation with the
    original recipe, *is* the audited fine-tuning, so calibration starts from the audited weights,
    with the calibration set drawn from the audited model's mistakes (:func:`calibration_set`)."""
    ctx.require_labelling("cfr")
    wrong, pos, neg = calibration_set(ctx.load_audited(), ctx.train, ctx.labels, ctx.templates, config,
                                      seed=ctx.finetune.seed, progress=ctx.progress)
    objective = CFRCalibrationObjective(ctx.labels, wrong, pos, neg, config, class_names=ctx.classes,
                                        templates=ctx.templates, n_epochs=ctx.finetune.epochs)
    return MitigationPlan(objective, info={"cfr_calibration_samples": int(len(wrong))}, from_audited=True)
