"""Contrastive losses as pure functions returning named components ."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["clip_loss"]


def clip_loss(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor,
              logit_scale: torch.Tensor | float) -> dict[str, torch.Tensor]:
    """Symmetric InfoNCE over N matched image-caption pairs.

    Args:
        image_embeddings: ``[N, D]`` (normalised here).
        text_embeddings: ``[N, D]`` (normalised here); row i is the caption of image i.
        logit_scale: Inverse temperature (already exponentiated).

    Returns:
        ``{"loss", "image_to_text", "text_to_image"}``; ``loss`` is the mean of the two.
    """
    img = F.normalize(image_embeddings, dim=-1)
    txt = F.normalize(text_embeddings, dim=-1)
    logits = logit_scale * img @ txt.T
    target = torch.arange(len(img), device=img.device)
    i2t = F.cross_entropy(logits, target)
    t2i = F.cross_entropy(logits.T, target)
    return {"loss": (i2t + t2i) / 2, "image_to_text": i2t, "text_to_image": t2i}
