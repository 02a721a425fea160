"""Stage 2 of RaVL: mitigation losses, objectives and the baselines' objectives.

Losses (:mod:`ravl.mitigation.losses`) are pure functions on tensors returning named
components; objectives (:mod:`ravl.mitigation.objectives`) join a model to them and plug into
:func:`ravl.training.finetune` as ``objective=``. Standard fine-tuning is
:class:`ravl.training.loop.ContrastiveObjective`. See ``docs/mitigation.md``.
"""

from ravl.mitigation.losses import (
    calibration_contrastive_loss,
    cfr_epoch_weight,
    group_dro_loss,
    group_mean_losses,
    region_aware_loss,
    similarity_pull_push,
    spurious_aware_loss,
    supervised_contrastive_loss,
    update_group_weights,
    vl_erm_loss,
    vl_erm_per_sample,
)
from ravl.mitigation.objectives import (
    CFRCalibrationObjective,
    CFRConfig,
    GroupDROConfig,
    GroupDROObjective,
    RegionAwareConfig,
    RegionAwareObjective,
    RegionLabels,
    SpuriousAwareConfig,
    SpuriousAwareObjective,
    VLERMConfig,
    VLERMObjective,
    class_feature_groups,
    class_prompt_embeddings,
    group_balanced_indices,
    group_uniform_indices,
    group_uniform_weights,
    prompt_template_embeddings,
)

from ravl.mitigation.api import MitigationOptions, MitigationResult, mitigate  # noqa: E402
from ravl.mitigation.labelling import RegionLabelling, label_regions  # noqa: E402

__all__ = [
    "mitigate",
    "MitigationOptions",
    "MitigationResult",
    "label_regions",
    "RegionLabelling",
    # losses
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
    # objectives and configs
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
    # groups and sampling
    "class_feature_groups",
    "group_balanced_indices",
    "group_uniform_weights",
    "group_uniform_indices",
]
