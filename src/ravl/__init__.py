"""ravl: discover and mitigate spurious correlations in fine-tuned vision-language models.

Public API (everything else is internal)::

    import ravl
    model = ravl.load_model("tiny")
    setting = ravl.make_spurious_benchmark("runs/nine", spurious_class="nine", cramers_v=0.95)
    ds = ravl.load_dataset(setting.train_dir)

Names are imported lazily so ``import ravl`` stays fast and never imports optional backends.
"""

from __future__ import annotations

import importlib
from typing import Any

from ravl._version import __version__

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # models
    "load_model": "ravl.models.base",
    "list_models": "ravl.models.base",
    "load_checkpoint": "ravl.models.base",
    "register_model": "ravl.models.base",
    "VisionLanguageModel": "ravl.models.base",
    "save_checkpoint": "ravl.models.checkpoint",
    "embed_regions": "ravl.models.regions",
    "embed_images": "ravl.models.regions",
    # data
    "load_dataset": "ravl.data.dataset",
    "RegionDataset": "ravl.data.dataset",
    "ImageRecord": "ravl.data.dataset",
    "make_spurious_benchmark": "ravl.data.synthetic",
    "SpuriousSetting": "ravl.data.synthetic",
    "SyntheticLayout": "ravl.data.synthetic",
    # zero-shot, training, evaluation
    "zero_shot_classify": "ravl.zeroshot",
    "ZeroShotResult": "ravl.zeroshot",
    "finetune": "ravl.training.loop",
    "FinetuneConfig": "ravl.training.loop",
    "evaluate": "ravl.evaluation.metrics",
    "EvaluationResult": "ravl.evaluation.metrics",
    "check_setting_validity": "ravl.evaluation.metrics",
    # retrieval
    "evaluate_retrieval": "ravl.retrieval.evaluate",
    "RetrievalResult": "ravl.retrieval.evaluate",
    "evaluate_odmap": "ravl.retrieval.odmap",
    "manipulate_dataset": "ravl.data.manipulation",
    "make_cooccurrence_benchmark": "ravl.data.cooccurrence",
    # discovery
    "discover": "ravl.discovery",
    "discover_from_model": "ravl.discovery.pipeline",
    "DiscoveryResult": "ravl.discovery",
    "precision_at_k": "ravl.discovery",
    # mitigation
    "mitigate": "ravl.mitigation.api",
    "MitigationResult": "ravl.mitigation.api",
    # report
    "write_report": "ravl.report.html",
    # exceptions
    "RavlError": "ravl.exceptions",
    "DatasetError": "ravl.exceptions",
    "DatasetValidationError": "ravl.exceptions",
    "ModelNotFoundError": "ravl.exceptions",
    "InvalidParameterError": "ravl.exceptions",
    "UnknownNameError": "ravl.exceptions",
    "MissingDependencyError": "ravl.exceptions",
    "CheckpointError": "ravl.exceptions",
    "RavlWarning": "ravl.exceptions",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'ravl' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
