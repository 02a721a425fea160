"""What the adapters of pretrained CLIPs (open_clip, Hugging Face) share beyond the protocol.

:class:`PretrainedCLIPMixin` gives an adapter the optional attributes ravl's training and
zero-shot code look for (``docs/dev/interfaces.md``):

``finetune_defaults``
    The recipe of :meth:`FinetuneConfig.for_model <ravl.training.FinetuneConfig.for_model>`:
    a pretrained backbone is fine-tuned with a small learning rate (1e-5), a warm-up over the
    first 10 % of the steps and weight decay 0.1, as open_clip's fine-tuning recipes and the RaVL
    paper do (the tiny CLIP, trained from scratch, keeps ravl's own recipe).
``default_template_set``
    ``"auto"``: the reference's digit templates for digit classes, an ImageNet-style set
    otherwise (:func:`ravl.zeroshot.default_templates`).
``image_tower_prefixes`` / ``text_tower_prefixes``
    Parameter-name prefixes of each tower (``--freeze``), from the module's top-level children:
    the adapter names its image children (``IMAGE_CHILDREN``); everything else except the
    logit scale and bias belongs to the text tower.
``export(out)``
    The model in its backend's own format (``ravl export``, :func:`ravl.models.export_model`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from ravl.exceptions import InvalidParameterError
from ravl.models.pooling import split_roi_boxes

__all__ = ["PretrainedCLIPMixin", "PRETRAINED_FINETUNE_DEFAULTS"]

#: The fine-tuning recipe for pretrained backbones (see the module docstring).
PRETRAINED_FINETUNE_DEFAULTS: dict[str, Any] = {"lr": 1e-5, "warmup_fraction": 0.1, "weight_decay": 0.1}

_SHARED = ("logit_scale", "logit_bias")


class PretrainedCLIPMixin:
    """Optional adapter attributes for pretrained CLIPs (module docstring), and the protocol methods
    both backends share; needs ``self.module`` and ``self.geometry`` (a
    :class:`~ravl.models.geometry.ResizeCropGeometry`)."""

    #: Top-level children (or parameters) of ``self.module`` that belong to the image tower.
    IMAGE_CHILDREN: tuple[str, ...] = ()
    default_template_set = "auto"

    @property
    def finetune_defaults(self) -> dict[str, Any]:
        return dict(PRETRAINED_FINETUNE_DEFAULTS)

    def _top_level_names(self) -> list[str]:
        names = {n.split(".", 1)[0] for n, _ in self.module.named_parameters()}
        return sorted(names - set(_SHARED))

    def _prefixes(self, image: bool) -> tuple[str, ...]:
        # A bare top-level parameter (open_clip's positional_embedding) is matched by its full name.
        params = {n for n, _ in self.module.named_parameters(recurse=False)}
        return tuple(n if n in params else f"{n}." for n in self._top_level_names()
                     if (n in self.IMAGE_CHILDREN) == image)

    @property
    def image_tower_prefixes(self) -> tuple[str, ...]:
        return self._prefixes(image=True)

    @property
    def text_tower_prefixes(self) -> tuple[str, ...]:
        return self._prefixes(image=False)

    # -- shared protocol methods ----------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images of any size -> ``[N, 3, H, W]`` float32 (CPU), as the backend's own inference
        transform (resize, centre crop, normalise; :class:`~ravl.models.geometry.ResizeCropGeometry`)."""
        return self.geometry(images)

    def map_boxes(self, boxes_px: np.ndarray, image_size_wh: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Original-image pixel boxes -> ``(boxes [R, 4] in [0, 1] of the model input, status [R])``.

        See :meth:`ravl.models.geometry.ResizeCropGeometry.map_boxes`.
        """
        return self.geometry.map_boxes(boxes_px, image_size_wh)

    def unmap_boxes(self, boxes_norm: np.ndarray, image_size_wh: tuple[int, int]) -> np.ndarray:
        """Boxes in ``[0, 1]`` of the model input -> pixel boxes of the original image."""
        return self.geometry.unmap_boxes(boxes_norm, image_size_wh)

    def encode_roi(self, pixels: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Region embeddings ``[R, D]`` (not normalised) from one backbone pass per image.

        Args:
            pixels: Preprocessed images ``[N, 3, H, W]``.
            boxes: ``[R, 5]`` rows ``(image_index, x0, y0, x1, y1)`` normalised to ``[0, 1]`` of
                the model input (use :meth:`map_boxes` for boxes of the original image).

        Raises:
            RegionPoolingNotSupportedError: (a ``NotImplementedError``) for image towers the
                backend cannot pool regions from.
        """
        return self._regions(pixels, boxes, with_image=False)[1]

    def encode_image_and_roi(self, pixels: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(encode_image(pixels), encode_roi(pixels, boxes))`` from one backbone pass.

        For training objectives that need both (RaVL's CLIP loss on the images plus its
        region-aware loss): equal to the two calls to float rounding, at the cost of one.
        """
        return self._regions(pixels, boxes, with_image=True)

    def _regions(self, pixels: torch.Tensor, boxes: torch.Tensor, *, with_image: bool
                 ) -> tuple[torch.Tensor | None, torch.Tensor]:
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise InvalidParameterError("encode_roi: pixels must be preprocessed images [N, 3, H, W]. Got "
                                        f"{tuple(pixels.shape)}.")
        idx, xy = split_roi_boxes(boxes, pixels.shape[0], "encode_roi")
        if xy.shape[0] == 0:
            return (self.encode_image(pixels) if with_image else None), pixels.new_zeros(0, self.embed_dim)
        return self._pool_regions(pixels, idx, xy, with_image)

    @staticmethod
    def _texts(texts: Sequence[str] | str) -> list[str]:
        """``tokenize``'s input as a list of strings, checked."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        for k, t in enumerate(texts):
            if not isinstance(t, str):
                raise InvalidParameterError(f"tokenize takes strings; item {k} is a {type(t).__name__}.")
        return texts
