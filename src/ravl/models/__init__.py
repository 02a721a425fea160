"""Model adapters behind one protocol, and the registry (``load_model``, ``list_models``)."""

from ravl.models.base import ModelInfo, VisionLanguageModel, list_models, load_model, register_model

__all__ = ["ModelInfo", "VisionLanguageModel", "list_models", "load_model", "register_model"]
