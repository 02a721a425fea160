"""Model adapters behind one protocol, and the registry (``load_model``, ``list_models``).

Also re-exported here: checkpoints (:mod:`ravl.models.checkpoint`) and image, region and text
embeddings (:mod:`ravl.models.regions`). Importing this package registers the built-in
backends (:mod:`ravl.models.tiny`, :mod:`ravl.models.backends`); backends with optional
dependencies import them only inside their factories.
"""

# Registration order is the order `ravl models` lists: the built-in tiny CLIP first.
from ravl.models import tiny  # noqa: I001,F401  (registers 'tiny')
from ravl.models import backends  # noqa: I001,F401  (registers 'open_clip:' and 'hf:')
from ravl.models.base import (
    MODELS,
    ModelInfo,
    VisionLanguageModel,
    list_models,
    load_checkpoint,
    load_model,
    model_info,
    register_model,
)
from ravl.models.checkpoint import read_checkpoint_config, save_checkpoint
from ravl.models.regions import (
    DEFAULT_REGION_MODE,
    REGION_MODES,
    embed_images,
    embed_regions,
    embed_texts,
    region_batch,
)

__all__ = [
    "MODELS",
    "ModelInfo",
    "VisionLanguageModel",
    "list_models",
    "model_info",
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
