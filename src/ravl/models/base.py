"""The adapter protocol every vision-language model implements, and the model registry.

Glossary (shape symbols used in docstrings across ravl): N images, R regions, C classes,
D embedding dimension, K clusters, T tokens, H x W pixels.

An adapter wraps one backend (the built-in tiny CLIP, open_clip, Hugging Face CLIP) behind
:class:`VisionLanguageModel`. ravl never touches the backend directly: zero-shot scoring,
region embedding, fine-tuning and mitigation only call the methods below, so a new backend is
one adapter class plus a registry entry.

Boxes are always ``[x0, y0, x1, y1]`` in pixels of the *original* image (as stored in
``metadata.jsonl``); adapters receive them normalised to ``[0, 1]`` of their *input* by
:func:`ravl.models.regions.embed_regions` (through :func:`ravl.models.regions.map_boxes`, which
uses an adapter's optional ``map_boxes`` when its preprocessing crops), so any image size works.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from PIL import Image

from ravl.exceptions import InvalidParameterError, ModelNotFoundError
from ravl.models.checkpoint import checkpoint_dir, read_checkpoint_config
from ravl.utils.registry import Registry

__all__ = [
    "VisionLanguageModel",
    "register_model",
    "load_model",
    "load_checkpoint",
    "list_models",
    "model_info",
    "ModelInfo",
    "MODELS",
    "set_load_record",
    "check_model",
    "export_model",
]


@runtime_checkable
class VisionLanguageModel(Protocol):
    """What ravl needs from a CLIP-style model.

    Attributes:
        name: Registry name the model was loaded with (e.g. ``"tiny"``, ``"open_clip:RN50"``).
        embed_dim: D, the size of the joint embedding space.
        image_size: ``(H, W)`` of the tensors :meth:`preprocess` returns.
        module: The underlying ``torch.nn.Module``; its parameters are what fine-tuning trains.

    Optional: ``image_projection_prefixes``, a tuple of parameter-name prefixes (as in
    ``module.named_parameters()``) of the image tower's final projection, for methods that train
    only that layer (CFR's recipe; ``ravl mitigate --trainable image-projection``).

    Optional: ``map_boxes(boxes_px, image_size_wh) -> (boxes_norm, status)``, for adapters whose
    ``preprocess`` does more than resize the whole image to ``image_size`` (e.g. resize the
    shortest side and centre-crop): ``boxes_px`` is ``[R, 4]`` pixel boxes of an original image
    of ``(width, height)``; it returns ``[R, 4]`` boxes normalised to ``[0, 1]`` of the model
    input, clipped to it, and an ``[R]`` array of ``"inside"`` / ``"clipped"`` / ``"outside"``
    (see :func:`ravl.models.regions.map_boxes`). Without it, boxes are divided by the image size.

    Set by ravl: ``load_record``, the :func:`load_model` arguments that rebuild the current
    weights (``{"model": ..., "checkpoint": ..., **kwargs}``). :func:`ravl.finetune` records it
    in the checkpoint as the run's starting point (what ``ravl mitigate`` restarts from) and then
    points it at the checkpoint it wrote.
    """

    name: str
    embed_dim: int
    image_size: tuple[int, int]
    module: torch.nn.Module

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Turn PIL images of any size into a float tensor ``[N, 3, H, W]`` on CPU."""

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Turn any strings into a token tensor ``[N, T]`` (CPU) accepted by :meth:`encode_text`."""

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embed preprocessed images ``[N, 3, H, W]`` -> ``[N, D]`` (not normalised)."""

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Embed token tensors ``[N, T]`` -> ``[N, D]`` (not normalised)."""

    def encode_roi(self, pixels: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Embed regions with one backbone pass per image ("roi" mode).

        Args:
            pixels: Preprocessed images ``[N, 3, H, W]``.
            boxes: ``[R, 5]`` rows ``(image_index, x0, y0, x1, y1)`` with coordinates
                normalised to ``[0, 1]`` of the model input (``pixels``).

        Returns:
            ``[R, D]`` region embeddings (not normalised). Adapters that cannot pool regions
            from a feature map raise ``NotImplementedError``.
        """

    def logit_scale(self) -> torch.Tensor:
        """Learned inverse temperature (a scalar tensor, already exponentiated)."""

    def config(self) -> dict[str, Any]:
        """JSON-serialisable description sufficient to rebuild the architecture."""

    def to(self, device: str | torch.device) -> "VisionLanguageModel":
        """Move the model to ``device`` and return self."""

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""


@dataclass(frozen=True)
class ModelInfo:
    """A registry entry.

    Attributes:
        name: Registry name or prefix (a prefix ends with ``":"``, e.g. ``"open_clip:"``).
        description: One line shown by ``ravl models``.
        extra: The pip extra the backend needs (``None`` for the core).
        factory: ``factory(name, checkpoint=None, **kwargs) -> VisionLanguageModel``.
        test_instance: Optional zero-argument callable returning a *small* model of this
            backend (random weights, built in memory, no download), so the shared adapter
            contract tests cover prefix backends too. Exact names without one are tested
            through ``load_model(name)``.
    """

    name: str
    description: str = ""
    extra: str | None = None
    factory: Callable[..., VisionLanguageModel] | None = field(default=None, repr=False, compare=False)
    test_instance: Callable[[], VisionLanguageModel] | None = field(default=None, repr=False, compare=False)


#: Every registered model name and prefix.
MODELS: Registry[ModelInfo] = Registry(
    "model", error=ModelNotFoundError, prefixes=True,
    hint="Prefixes take an architecture or a path, e.g. 'open_clip:RN50' or 'hf:/path/to/dir'.")


def register_model(name: str, *, description: str = "", extra: str | None = None, override: bool = False,
                   test_instance: Callable[[], VisionLanguageModel] | None = None):
    """Decorator registering a factory ``fn(name, checkpoint=None, **kwargs) -> VisionLanguageModel``.

    ``name`` is an exact name (``"tiny"``) or a prefix ending in ``":"`` (``"open_clip:"``),
    in which case the factory receives the full requested name.

    Args:
        name: The name or prefix.
        description: One line for ``ravl models``.
        extra: The pip extra the backend needs.
        override: Replace an existing registration (otherwise an
            :class:`~ravl.exceptions.InvalidParameterError`).
        test_instance: See :class:`ModelInfo`.
    """

    def deco(fn: Callable[..., VisionLanguageModel]):
        MODELS.register(name, ModelInfo(name, description, extra, fn, test_instance), description=description,
                        override=override)
        return fn

    return deco


def list_models() -> list[str]:
    """All registered model names and prefixes, in registration order (``model_info`` for details)."""
    return MODELS.list()


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a name or prefix (``"open_clip:RN50"`` finds ``"open_clip:"``).

    Raises:
        ModelNotFoundError: For an unknown name, listing what exists and the closest matches.
    """
    return MODELS.get(name)


def load_model(name: str | None, checkpoint: str | Path | None = None, *,
               device: str | torch.device | None = None, **kwargs: Any) -> VisionLanguageModel:
    """Build a model by registry name, optionally loading weights from a checkpoint.

    Args:
        name: ``"tiny"``, ``"open_clip:ARCH"``, ``"hf:/path/to/dir"`` (see :func:`list_models`),
            or ``None`` to use the name stored in a ravl ``checkpoint`` folder's ``config.json``.
        checkpoint: A ravl checkpoint folder (``model.safetensors`` + ``config.json``) or a
            backend-specific weights file. ``None`` builds fresh (random or, for the tiny CLIP,
            seeded) weights.
        device: Where to put the model (default CPU).
        **kwargs: Passed to the backend factory (e.g. ``seed=`` for the tiny CLIP).

    Raises:
        ModelNotFoundError: For an unknown name; the message lists what exists and the
            closest matches.
    """
    if name is None:
        if checkpoint is None:
            raise InvalidParameterError("load_model needs a model name, or a ravl checkpoint folder to read it "
                                        "from. Got name=None and checkpoint=None.")
        name = read_checkpoint_config(checkpoint)["model"]
    info = model_info(name)
    model = info.factory(name, checkpoint=checkpoint, **kwargs)
    if device is not None:
        model.to(device)
    where = None if checkpoint is None else Path(checkpoint)
    where = None if where is None else str(where.resolve() if where.exists() else where)
    set_load_record(model, {"model": name, "checkpoint": where, **kwargs})
    return model


def load_checkpoint(path: str | os.PathLike, *, device: str | torch.device | None = None, **kwargs: Any
                    ) -> VisionLanguageModel:
    """Load a ravl checkpoint folder with the model named in its ``config.json``.

    Equivalent to ``load_model(None, checkpoint=path, device=device, **kwargs)``.

    Raises:
        CheckpointError: When the folder is missing, incomplete or inconsistent.
        ModelNotFoundError: When the checkpoint names a model that is not registered.
    """
    name = read_checkpoint_config(path)["model"]
    return load_model(name, checkpoint=checkpoint_dir(path), device=device, **kwargs)


def export_model(model_or_checkpoint: Any, out: str | os.PathLike, *, device: str | torch.device | None = None
                 ) -> dict[str, Any]:
    """Write a model (or a ravl checkpoint folder) in its backend's own format.

    An open_clip model becomes weights ``open_clip.create_model_and_transforms(ARCH,
    pretrained=FILE)`` loads (or an open_clip ``local-dir`` folder); a Hugging Face model a
    ``save_pretrained`` folder ``from_pretrained`` loads. Adapters offer this through an optional
    ``export(out)`` method returning ``{"path", ...}``.

    Raises:
        InvalidParameterError: For a model with no other format (the tiny CLIP, whose ravl
            checkpoint is its only format).
    """
    model = model_or_checkpoint
    if isinstance(model, (str, os.PathLike)):
        model = load_checkpoint(model, device=device)
    fn = getattr(model, "export", None)
    if not callable(fn):
        raise InvalidParameterError(
            f"The model {getattr(model, 'name', type(model).__name__)!r} has no other format to export to: its ravl "
            "checkpoint (model.safetensors + config.json) is what loads it. Export applies to open_clip: and hf: "
            "models.")
    return dict(fn(out))


def check_model(model: Any, caller: str, param: str = "model") -> Any:
    """``model`` when it implements :class:`VisionLanguageModel`, else a clear error.

    Raises:
        InvalidParameterError: (a ``TypeError``) naming the parameter, what was given and how to get
            a model.
    """
    needed = ("preprocess", "tokenize", "encode_image", "encode_text", "logit_scale")
    missing = [m for m in needed if not callable(getattr(model, m, None))]
    if missing or not isinstance(getattr(model, "module", None), torch.nn.Module):
        shown = f"{type(model).__name__} {model!r}"[:80]
        raise InvalidParameterError(
            f"The '{param}' parameter of {caller} must be a vision-language model (a VisionLanguageModel, e.g. "
            f"ravl.load_model('tiny') or ravl.load_model(None, checkpoint=FOLDER)). Got {shown}"
            + (f", which has no {', '.join(missing)}." if missing and model is not None else "."))
    return model


def set_load_record(model, record: dict[str, Any] | None) -> None:
    """Remember how to rebuild ``model``'s current weights (``model.load_record``).

    Only JSON-ready records are kept (``None`` otherwise): the record goes into checkpoints.
    Models that refuse new attributes are left alone.
    """
    if record is not None:
        try:
            json.dumps(record)
        except (TypeError, ValueError):
            record = None
    try:
        model.load_record = record
    except AttributeError:
        pass
