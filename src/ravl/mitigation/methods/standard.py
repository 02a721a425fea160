"""Standard and upsampled fine-tuning: the CLIP contrastive loss, with the recipe's data order or
with every class × discovered-feature group resampled up to the largest one."""

from __future__ import annotations

import torch

from ravl.mitigation.common import NoConfig
from ravl.mitigation.groups import group_balanced_indices
from ravl.mitigation.registry import MitigationContext, MitigationPlan, register_mitigation_method
from ravl.training.loop import ContrastiveObjective

__all__ = ["UpsampledContrastive"]


class UpsampledContrastive(ContrastiveObjective):
    """Standard CLIP loss under its own name, so upsampled runs are recorded and resumed as such."""

    name = "upsample"


@register_mitigation_method("standard", needs_feature=False,
                            description="standard fine-tuning: CLIP contrastive loss on image-caption pairs")
def standard_method(ctx: MitigationContext, config: NoConfig) -> MitigationPlan:
    """The original recipe, from the same start: the reference every method is compared with."""
    return MitigationPlan(ContrastiveObjective())


@register_mitigation_method("upsample",
                            description="upsampled fine-tuning: every class x discovered-feature group resampled "
                                        "to the largest")
def upsample_method(ctx: MitigationContext, config: NoConfig) -> MitigationPlan:
    """Standard loss; each epoch visits every group up to the size of the largest (resampled)."""
    groups = ctx.require_labelling("upsample").groups

    def epoch_order(epoch: int) -> torch.Tensor:
        return torch.from_numpy(group_balanced_indices(groups, random_state=ctx.epoch_rng(epoch, 1)))

    return MitigationPlan(UpsampledContrastive(), epoch_order=epoch_order)
