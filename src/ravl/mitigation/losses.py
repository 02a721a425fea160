"""Mitigation losses: pure functions on tensors returning named components (style.md lesson 9).

Every function takes embeddings (not a model) and returns a ``dict`` of scalar tensors whose
``"loss"`` entry is the one to optimise; the objectives in :mod:`ravl.mitigation.objectives`
join a model to these functions. Embeddings are L2-normalised inside every function, so callers
pass raw encoder outputs. Shape symbols: B images in the batch, M regions of the batch,
C classes, K prompt templates, D embedding dimension.

See ``docs/mitigation.md`` for the equations and which parts are reconstructed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ravl.training.losses import clip_loss
from ravl.utils.validation import check_choice, check_float, check_int

__all__ = [
    "LABEL_NEGATIVES",
    "CONTRASTIVE_FORMS",
    "region_aware_loss",
    "vl_erm_per_sample",
    "vl_erm_loss",
    "group_mean_losses",
    "update_group_weights",
    "group_dro_loss",
    "supervised_contrastive_loss",
    "similarity_pull_push",
    "spurious_aware_loss",
    "calibration_contrastive_loss",
    "cfr_epoch_weight",
]

#: How ``region_aware_loss`` sums over "j in B" in L_R: over the distinct labels in the batch
#: (default) or over batch rows (a label shared by n images counted n times).
LABEL_NEGATIVES = ("distinct", "rows")

#: Forms of the in-modal terms of the Spurious-Aware loss: the authors' cosine pull/push
#: (``"similarity"``) or a supervised contrastive loss (``"supcon"``).
CONTRASTIVE_FORMS = ("similarity", "supcon")

_NEG_INF = float("-inf")


def _float(x: torch.Tensor) -> torch.Tensor:
    """Half-precision encoder outputs are promoted to float32; float64 stays (for gradcheck)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _check_2d(x: torch.Tensor, name: str, caller: str, dim: int | None = None) -> None:
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        want = f"[n, {dim}]" if dim is not None else "[n, D]"
        raise ValueError(f"The '{name}' argument of {caller} must be a 2-d tensor {want}. "
                         f"Got shape {tuple(x.shape)} instead.")


def _check_index(x: torch.Tensor, name: str, caller: str, n: int, size: int) -> torch.Tensor:
    if x.ndim != 1 or x.shape[0] != n:
        raise ValueError(f"The '{name}' argument of {caller} must be a 1-d tensor of length {n}. "
                         f"Got shape {tuple(x.shape)} instead.")
    if x.dtype.is_floating_point or x.dtype == torch.bool:
        raise ValueError(f"The '{name}' argument of {caller} must hold integer ids. Got dtype {x.dtype}.")
    x = x.long()
    if n and (int(x.min()) < 0 or int(x.max()) >= size):
        raise ValueError(f"The '{name}' argument of {caller} must hold ids in [0, {size}). "
                         f"Got values in [{int(x.min())}, {int(x.max())}].")
    return x


def _zero(*tensors: torch.Tensor) -> torch.Tensor:
    """A scalar 0 still attached to the graph of ``tensors`` (so ``backward`` always works)."""
    out = None
    for t in tensors:
        term = t.sum() * 0.0
        out = term if out is None else out + term
    return out


# ---------------------------------------------------------------------------------------------
# RaVL region-aware loss (method.md §4)
# ---------------------------------------------------------------------------------------------

def region_aware_loss(region_embeddings: torch.Tensor, region_image: torch.Tensor,
                      region_is_spurious: torch.Tensor, class_embeddings: torch.Tensor,
                      labels: torch.Tensor, *, tau: float = 0.07,
                      label_negatives: str = "distinct") -> dict[str, torch.Tensor]:
    """RaVL's region-aware loss L_R + L_A over one batch (method.md §4).

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
        there is none.

    Raises:
        ValueError: For inconsistent shapes or ids out of range.
    """
    caller = "region_aware_loss"
    tau = check_float(tau, "tau", caller, low=0, closed="neither")
    check_choice(label_negatives, "label_negatives", caller, LABEL_NEGATIVES)
    _check_2d(region_embeddings, "region_embeddings", caller)
    _check_2d(class_embeddings, "class_embeddings", caller, region_embeddings.shape[1])
    n_classes = class_embeddings.shape[0]
    if labels.ndim != 1:
        raise ValueError(f"The 'labels' argument of {caller} must be a 1-d tensor [B]. "
                         f"Got shape {tuple(labels.shape)} instead.")
    b, m = labels.shape[0], region_embeddings.shape[0]
    labels = _check_index(labels, "labels", caller, b, n_classes)
    region_image = _check_index(region_image, "region_image", caller, m, max(b, 1))
    if region_is_spurious.ndim != 1 or region_is_spurious.shape[0] != m:
        raise ValueError(f"The 'region_is_spurious' argument of {caller} must be a 1-d bool tensor of "
                         f"length {m}. Got shape {tuple(region_is_spurious.shape)} instead.")
    dev = region_embeddings.device
    spur = region_is_spurious.to(device=dev, dtype=torch.bool)
    labels, region_image = labels.to(dev), region_image.to(dev)

    e = F.normalize(_float(region_embeddings), dim=-1)
    t = F.normalize(_float(class_embeddings), dim=-1).to(e.dtype)
    s = e @ t.T / tau                                                       # [M, C]
    core = ~spur

    # log sigma(R_i^r, c) = max over image i's core regions of s(r, c)        -> [B, C]
    core_img = region_image[core]
    log_sigma = torch.full((b, n_classes), _NEG_INF, dtype=s.dtype, device=dev).scatter_reduce(
        0, core_img[:, None].expand(-1, n_classes), s[core], reduce="amax", include_self=False)
    valid = torch.bincount(core_img, minlength=b) > 0                        # [B]
    log_sigma = torch.where(valid[:, None], log_sigma, torch.zeros_like(log_sigma))  # finite placeholders

    counts = torch.bincount(labels, minlength=n_classes)                    # [C]
    present = counts > 0
    rows = torch.arange(b, device=dev)
    positive = log_sigma[rows, labels]                                      # [B]

    s_spur = s[spur]                                                        # [Ms, C]
    ms = s_spur.shape[0]
    neg_inf = torch.tensor(_NEG_INF, dtype=s.dtype, device=dev)

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
    anchor = _zero(region_embeddings, class_embeddings)
    region_loss = region_loss + anchor
    alignment_loss = alignment_loss + anchor
    return {"loss": region_loss + alignment_loss, "region_loss": region_loss, "alignment_loss": alignment_loss}


# ---------------------------------------------------------------------------------------------
# VL-ERM and Group DRO
# ---------------------------------------------------------------------------------------------

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
    _check_2d(image_embeddings, "image_embeddings", caller)
    _check_2d(class_embeddings, "class_embeddings", caller, image_embeddings.shape[1])
    labels = _check_index(labels, "labels", caller, image_embeddings.shape[0], class_embeddings.shape[0])
    labels = labels.to(image_embeddings.device)
    img = F.normalize(_float(image_embeddings), dim=-1)
    txt = F.normalize(_float(class_embeddings), dim=-1).to(img.dtype)
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
    groups = _check_index(groups, "groups", "group_mean_losses", per_sample.shape[0], n_groups)
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
    worst = torch.where(counts > 0, means, torch.full_like(means, _NEG_INF)).max()
    return {"loss": q @ means, "average_loss": per_sample.mean(), "worst_group_loss": worst}


# ---------------------------------------------------------------------------------------------
# In-modal contrastive terms (Spurious-Aware, CFR)
# ---------------------------------------------------------------------------------------------

def _supcon_per_anchor(embeddings: torch.Tensor, labels: torch.Tensor, tau: float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    z = F.normalize(_float(embeddings), dim=-1)
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = z @ z.T / tau
    denom = torch.logsumexp(logits.masked_fill(eye, _NEG_INF), dim=1, keepdim=True)
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
    _check_2d(embeddings, "embeddings", caller)
    n = embeddings.shape[0]
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"The 'labels' argument of {caller} must be a 1-d tensor of length {n}. "
                         f"Got shape {tuple(labels.shape)} instead.")
    if n < 2:
        return {"loss": _zero(embeddings)}
    labels = labels.to(embeddings.device)
    per, valid = _supcon_per_anchor(embeddings, labels, tau)
    w = valid.to(per.dtype)
    if weights is not None:
        w = w * weights.to(device=per.device, dtype=per.dtype)
    return {"loss": (per * w).sum() / valid.sum().clamp(min=1).to(per.dtype)}


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
    a = F.normalize(_float(embeddings_a), dim=-1)
    b = F.normalize(_float(embeddings_b), dim=-1).to(a.dtype)
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
    _check_2d(image_embeddings, "image_embeddings", caller)
    if class_template_embeddings.ndim != 3 or class_template_embeddings.shape[2] != image_embeddings.shape[1]:
        raise ValueError(f"The 'class_template_embeddings' argument of {caller} must be [C, K, "
                         f"{image_embeddings.shape[1]}]. Got shape {tuple(class_template_embeddings.shape)}.")
    n_classes, n_templates, d = class_template_embeddings.shape
    labels = _check_index(labels, "labels", caller, image_embeddings.shape[0], n_classes)
    labels = labels.to(image_embeddings.device)

    per_template = F.normalize(_float(class_template_embeddings), dim=-1)      # [C, K, D]
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
        per_row, _ = _supcon_per_anchor(flat, row_class, tau) if flat.shape[0] > 1 else (flat.sum(1) * 0, None)
    l_lc = _per_class_means(per_row, row_class, n_classes)[labels].mean()

    if spurious_template_embeddings is not None and spurious_template_embeddings.numel():
        if spurious_template_embeddings.ndim != 3 or spurious_template_embeddings.shape[2] != d:
            raise ValueError(f"The 'spurious_template_embeddings' argument of {caller} must be [S, K, {d}]. "
                             f"Got shape {tuple(spurious_template_embeddings.shape)}.")
        sp = F.normalize(_float(spurious_template_embeddings), dim=-1).reshape(-1, d).to(flat.dtype)
        per_class = (flat @ sp.T).abs().mean(dim=1).view(n_classes, n_templates).mean(dim=1)   # [C]
        l_ls = per_class[labels].mean()
    else:
        l_ls = _zero(class_template_embeddings)

    total = clip_weight * l_clip + vision_weight * l_vc + language_weight * l_lc + spurious_weight * l_ls
    return {"loss": total, "clip_loss": l_clip, "vision_contrastive_loss": l_vc,
            "language_contrastive_loss": l_lc, "language_spurious_loss": l_ls}


# ---------------------------------------------------------------------------------------------
# CFR (You et al., CVPR 2024)
# ---------------------------------------------------------------------------------------------

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
    _check_2d(anchors, "anchors", caller)
    n, d = anchors.shape
    for name, x in (("positives", positives), ("negatives", negatives)):
        if x.ndim != 3 or x.shape[0] != n or x.shape[2] != d:
            raise ValueError(f"The '{name}' argument of {caller} must be [{n}, n, {d}] (one row per anchor). "
                             f"Got shape {tuple(x.shape)} instead.")
    if positives.shape[1] == 0:
        raise ValueError(f"The 'positives' argument of {caller} needs at least one positive per anchor.")
    if n == 0:
        return {"loss": _zero(anchors, positives, negatives)}
    a = F.normalize(_float(anchors), dim=-1)
    p = F.normalize(_float(positives), dim=-1).to(device=a.device, dtype=a.dtype)
    q = F.normalize(_float(negatives), dim=-1).to(device=a.device, dtype=a.dtype)
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
