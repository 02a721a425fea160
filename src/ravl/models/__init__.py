"""Model adapters behind one protocol, and the registry (``load_model``, ``list_models``).

Also re-exported here: checkpoints (:mod:`ravl.models.checkpoint`) and image, region and text
embeddings (:mod:`ravl.models.regions`). Backends with optional dependencies are imported only
inside their registry factories.
"""

from ravl.models.base import ModelInfo, VisionLanguageModel, list_models, load_model, register_model
from ravl.models.checkpoint import load_checkpoint, read_checkpoint_config, save_checkpoint
from ravl.models.regions import (
    DEFAULT_REGION_MODE,
    REGION_MODES,
    embed_images,
    embed_regions,
    embed_texts,
    region_batch,
)

__all__ = [
    "ModelInfo",
    "VisionLanguageModel",
    "list_models",
    "load_model",
    "register_model",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint_config",
    "REGION_MODES",
    "DEFAULT_REGION_MODE",
    "embed_images",
    "embed_regions",
    "embed_texts",
    "region_batch",
]
