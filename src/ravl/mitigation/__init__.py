"""Stage 2 of RaVL: mitigation, and the baselines it is compared with.

:func:`mitigate` labels the fine-tuning regions with discovery's features
(:mod:`ravl.mitigation.labelling`) and fine-tunes again with a registered method
(:mod:`ravl.mitigation.registry`). Each method lives in its own module of
:mod:`ravl.mitigation.methods` with its loss (a pure function on tensors returning named
components), its objective (which joins a model to the loss and plugs into
:func:`ravl.training.finetune`), its config dataclass and its registration. See
``docs/mitigation.md`` and ``docs/algorithm.md``.
"""

from ravl.mitigation import methods  # noqa: F401,I001  (registers the built-in methods)
from ravl.mitigation.api import MitigationOptions, MitigationResult, mitigate, set_trainable
from ravl.mitigation.common import ConfigMixin, NoConfig, PromptObjective, supervised_contrastive_loss
from ravl.mitigation.groups import (
    class_feature_groups,
    group_balanced_indices,
    group_uniform_indices,
    group_uniform_weights,
)
from ravl.mitigation.labelling import RegionLabelling, RegionLabels, label_regions
from ravl.mitigation.methods.cfr import (
    CFRCalibrationObjective,
    CFRConfig,
    calibration_contrastive_loss,
    cfr_epoch_weight,
)
from ravl.mitigation.methods.ravl import RegionAwareConfig, RegionAwareObjective, region_aware_loss
from ravl.mitigation.methods.spurious_aware import (
    SpuriousAwareConfig,
    SpuriousAwareObjective,
    similarity_pull_push,
    spurious_aware_loss,
)
from ravl.mitigation.methods.standard import UpsampledContrastive
from ravl.mitigation.methods.vl import (
    GroupDROConfig,
    GroupDROObjective,
    VLERMObjective,
    group_dro_loss,
    group_mean_losses,
    update_group_weights,
    vl_erm_loss,
    vl_erm_per_sample,
)
from ravl.mitigation.registry import (
    MITIGATION_METHODS,
    MitigationContext,
    MitigationMethod,
    MitigationPlan,
    UnknownMitigationMethodError,
    describe_mitigation_methods,
    get_mitigation_method,
    list_mitigation_methods,
    register_mitigation_method,
)

__all__ = [
    "mitigate",
    "MitigationOptions",
    "MitigationResult",
    "set_trainable",
    "label_regions",
    "RegionLabelling",
    "RegionLabels",
    # registry
    "MITIGATION_METHODS",
    "MitigationMethod",
    "MitigationContext",
    "MitigationPlan",
    "UnknownMitigationMethodError",
    "register_mitigation_method",
    "get_mitigation_method",
    "list_mitigation_methods",
    "describe_mitigation_methods",
    # building blocks for methods
    "ConfigMixin",
    "NoConfig",
    "PromptObjective",
    "supervised_contrastive_loss",
    # the built-in methods' losses, objectives and configs
    "region_aware_loss",
    "RegionAwareConfig",
    "RegionAwareObjective",
    "vl_erm_per_sample",
    "vl_erm_loss",
    "group_mean_losses",
    "update_group_weights",
    "group_dro_loss",
    "GroupDROConfig",
    "GroupDROObjective",
    "VLERMObjective",
    "similarity_pull_push",
    "spurious_aware_loss",
    "SpuriousAwareConfig",
    "SpuriousAwareObjective",
    "calibration_contrastive_loss",
    "cfr_epoch_weight",
    "CFRConfig",
    "CFRCalibrationObjective",
    "UpsampledContrastive",
    # groups and sampling
    "class_feature_groups",
    "group_balanced_indices",
    "group_uniform_weights",
    "group_uniform_indices",
]
