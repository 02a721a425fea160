"""Resize-and-crop image geometry shared by the open_clip and Hugging Face adapters.

Real CLIP backends do not squash an image to the model input: they resize it (usually the
shortest side to the input size, keeping the aspect ratio) and then cut out (or pad to) the
centre. :class:`ResizeCropGeometry` reproduces that with PIL, NumPy and torch only, so that

* ``preprocess`` gives the backend's own pixels (checked against open_clip's torchvision
  transform and Hugging Face's PIL image processor in the tests), and
* :meth:`ResizeCropGeometry.map_boxes` knows where a box of the *original* image ends up in
  the model input, which ``roi`` region embeddings need.

Coordinate convention (PIL's): pixel ``u`` covers ``[u, u + 1)``; a resize from ``w`` to
``rw`` pixels maps the continuous coordinate ``x`` to ``x * rw / w``; the crop then subtracts
its offset (a negative offset is padding).

No backend is imported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ravl.exceptions import InvalidParameterError

__all__ = ["ResizeCropGeometry", "BOX_STATUSES", "PIL_RESAMPLE"]

#: Values of the per-box status returned by :meth:`ResizeCropGeometry.map_boxes`.
BOX_STATUSES: tuple[str, ...] = ("inside", "clipped", "outside")

#: Interpolation names -> PIL resampling filters.
PIL_RESAMPLE: dict[str, int] = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "lanczos": Image.LANCZOS,
    "box": Image.BOX,
    "hamming": Image.HAMMING,
}

_RESIZE_MODES = ("shortest", "shortest-keep-ratio", "longest", "squash", "none")
_CROP_OFFSETS = ("round", "floor")
_EPS = 1e-6


@dataclass(frozen=True)
class ResizeCropGeometry:
    """How a backend turns an image of any size into its ``H x W`` input.

    Attributes:
        size: ``(H, W)`` of the model input.
        resize: ``"shortest"``: the shortest side becomes ``S`` and the other
            ``int(S * long / short)`` (torchvision's ``Resize(int)``, Hugging Face's
            ``shortest_edge``); ``"shortest-keep-ratio"`` / ``"longest"``: both sides divided
            by ``min`` / ``max`` of ``(h / H', w / W')`` and rounded (timm's ``ResizeKeepRatio``,
            which open_clip uses for non-square inputs and its ``longest`` mode); ``"squash"``:
            resized to ``W' x H'``, aspect ratio not kept; ``"none"``: not resized.
        resize_target: ``(H', W')`` of the resize step (``S = H'``, square for ``"shortest"``);
            ``None`` means ``size``.
        interpolation: PIL filter name (see :data:`PIL_RESAMPLE`).
        mean: Per-channel mean subtracted after scaling pixels to [0, 1].
        std: Per-channel standard deviation divided after that.
        center_crop: Cut out (or pad to) the centred ``H x W`` window after resizing.
        crop_offset: How the crop offset ``(resized - H) / 2`` is made an integer: ``"round"``
            (torchvision: Python's round when cropping, ``-((H - resized) // 2)`` when padding)
            or ``"floor"`` (Hugging Face: ``floor`` in both cases).
        fill: Grey value (0-255) of padding.
        convert_first: Convert to RGB before resizing (Hugging Face) instead of after the crop
            (open_clip). Only matters for non-RGB images.
    """

    size: tuple[int, int]
    resize: str = "shortest"
    resize_target: tuple[int, int] | None = None
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    center_crop: bool = True
    crop_offset: str = "round"
    fill: int = 0
    convert_first: bool = False

    def __post_init__(self) -> None:
        for name in ("size", "resize_target", "mean", "std"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        c = "ResizeCropGeometry"
        for name in ("size", "resize_target"):
            value = getattr(self, name)
            if value is None and name == "resize_target":
                continue
            if (not isinstance(value, tuple) or len(value) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
                raise InvalidParameterError(f"The '{name}' parameter of {c} must be (H, W), two positive ints. Got "
                                            f"{value!r}.")
        if self.resize not in _RESIZE_MODES:
            raise InvalidParameterError(f"The 'resize' parameter of {c} must be one of {_RESIZE_MODES}. Got "
                                        f"{self.resize!r}.")
        if self.resize == "shortest" and self.target[0] != self.target[1]:
            raise InvalidParameterError(f"{c}: resize='shortest' needs a square resize target; use "
                                        f"'shortest-keep-ratio' for {self.target}.")
        if not self.center_crop and self.resize == "squash" and self.target != self.size:
            raise InvalidParameterError(f"{c}: without a centre crop, resize='squash' must resize to the input size "
                                        f"{self.size}. Got resize_target {self.target}.")
        if self.interpolation not in PIL_RESAMPLE:
            raise InvalidParameterError(f"The 'interpolation' parameter of {c} must be one of {sorted(PIL_RESAMPLE)}. "
                                        f"Got {self.interpolation!r}.")
        if self.crop_offset not in _CROP_OFFSETS:
            raise InvalidParameterError(f"The 'crop_offset' parameter of {c} must be one of {_CROP_OFFSETS}. "
                                        f"Got {self.crop_offset!r}.")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or len(value) != 3 or not all(isinstance(v, (int, float)) for v in value):
                raise InvalidParameterError(f"The '{name}' parameter of {c} must be 3 floats (R, G, B). Got {value!r}.")
        if any(v <= 0 for v in self.std):
            raise InvalidParameterError(f"The 'std' parameter of {c} must be positive. Got {self.std!r}.")

    @property
    def target(self) -> tuple[int, int]:
        """``(H', W')`` of the resize step."""
        return self.resize_target or self.size

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ResizeCropGeometry":
        """Rebuild from :meth:`to_dict` output."""
        d = dict(d)
        for name in ("size", "resize_target"):
            if d.get(name) is not None:
                d[name] = tuple(int(s) for s in d[name])
        return cls(**d)

    # -- the plan for one image ------------------------------------------------------------------
    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """``(rw, rh)``: the size an image of ``width x height`` is resized to."""
        H, W = self.target
        if self.resize == "none":
            return width, height
        if self.resize == "squash":
            return W, H
        if self.resize == "shortest":
            s = H
            if width <= height:
                return s, int(s * height / width)
            return int(s * width / height), s
        rh, rw = height / H, width / W
        ratio = max(rh, rw) if self.resize == "longest" else min(rh, rw)
        return int(round(width / ratio)), int(round(height / ratio))

    def _offset(self, resized: int, out: int) -> int:
        """Crop offset along one axis (negative: padding before the image)."""
        if not self.center_crop:
            return 0
        if self.crop_offset == "floor":
            return (resized - out) // 2
        if resized < out:
            return -((out - resized) // 2)
        return int(round((resized - out) / 2.0))

    def plan(self, width: int, height: int) -> tuple[int, int, int, int]:
        """``(rw, rh, left, top)``: resized size and crop offset (negative = padding).

        The model input is the resized image's window ``[left, left + W) x [top, top + H)``.
        Without a centre crop the resized image must already be ``W x H``.
        """
        rw, rh = self.resized_size(width, height)
        return rw, rh, self._offset(rw, self.size[1]), self._offset(rh, self.size[0])

    # -- pixels --------------------------------------------------------------------------------
    def _array(self, image: Image.Image) -> np.ndarray:
        H, W = self.size
        if self.convert_first and image.mode != "RGB":
            image = image.convert("RGB")
        rw, rh, left, top = self.plan(*image.size)
        if (rw, rh) != image.size:
            image = image.resize((rw, rh), PIL_RESAMPLE[self.interpolation])
        if not self.center_crop:
            if (rw, rh) != (W, H):
                raise InvalidParameterError(f"ResizeCropGeometry without centre crop resized an image to {rw}x{rh}, "
                                            f"not the model input {W}x{H}; set center_crop=True or resize='squash'.")
        elif (left, top, rw, rh) != (0, 0, W, H):
            if left >= 0 and top >= 0 and left + W <= rw and top + H <= rh:
                image = image.crop((left, top, left + W, top + H))
            else:  # pad (with the fill value) where the window leaves the image
                rgb = image if image.mode == "RGB" else image.convert("RGB")
                src = np.asarray(rgb)
                canvas = np.full((H, W, 3), self.fill, dtype=np.uint8)
                x0, y0 = max(left, 0), max(top, 0)
                x1, y1 = min(left + W, rw), min(top + H, rh)
                canvas[y0 - top:y1 - top, x0 - left:x1 - left] = src[y0:y1, x0:x1]
                return canvas
        if image.mode != "RGB":
            image = image.convert("RGB")
        return np.asarray(image, dtype=np.uint8)

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images of any size and mode -> ``[N, 3, H, W]`` float32 (CPU), normalised."""
        if isinstance(images, Image.Image):
            images = [images]
        H, W = self.size
        arrays = []
        for k, im in enumerate(images):
            if not isinstance(im, Image.Image):
                raise InvalidParameterError(f"preprocess takes PIL images; item {k} is a {type(im).__name__}.")
            arrays.append(self._array(im))
        if not arrays:
            return torch.empty(0, 3, H, W)
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(255)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std).contiguous()

    # -- boxes -----------------------------------------------------------------------------------
    def map_boxes(self, boxes_px: np.ndarray, image_size_wh: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Map pixel boxes of the original image into the model input.

        Args:
            boxes_px: ``[R, 4]`` boxes ``x0, y0, x1, y1`` in pixels of the original image.
                They are clipped to the image first.
            image_size_wh: ``(width, height)`` of the original image.

        Returns:
            ``(boxes_norm, status)``: ``[R, 4]`` float64 boxes normalised to ``[0, 1]`` of the
            model input and clipped to it, and ``[R]`` status strings: ``"inside"`` (the whole
            box is in the input), ``"clipped"`` (the centre crop cuts part of it off; the box
            is the visible part) or ``"outside"`` (the crop removes all of it; the box is
            degenerate, a line on the input's border).
        """
        boxes = np.asarray(boxes_px, dtype=np.float64).reshape(-1, 4)
        w, h = (int(v) for v in image_size_wh)
        if w <= 0 or h <= 0:
            raise InvalidParameterError("map_boxes: the image size must be positive (width, height). Got "
                                        f"{image_size_wh!r}.")
        H, W = self.size
        rw, rh, left, top = self.plan(w, h)
        b = boxes.copy()
        b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, w)
        b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, h)
        out = np.empty_like(b)
        out[:, [0, 2]] = (b[:, [0, 2]] * (rw / w) - left) / W
        out[:, [1, 3]] = (b[:, [1, 3]] * (rh / h) - top) / H
        clipped = np.clip(out, 0.0, 1.0)
        cut = (np.abs(clipped - out) > _EPS).any(axis=1)
        empty = (clipped[:, 2] - clipped[:, 0] <= _EPS) | (clipped[:, 3] - clipped[:, 1] <= _EPS)
        status = np.where(empty & cut, "outside", np.where(cut, "clipped", "inside")).astype("<U7")
        return clipped, status

    def unmap_boxes(self, boxes_norm: np.ndarray, image_size_wh: tuple[int, int]) -> np.ndarray:
        """The inverse of :meth:`map_boxes`: boxes in ``[0, 1]`` of the model input -> pixel boxes of
        the original image (the part of the image the model sees)."""
        b = np.asarray(boxes_norm, dtype=np.float64).reshape(-1, 4)
        w, h = (int(v) for v in image_size_wh)
        H, W = self.size
        rw, rh, left, top = self.plan(w, h)
        out = np.empty_like(b)
        out[:, [0, 2]] = (b[:, [0, 2]] * W + left) * (w / rw)
        out[:, [1, 3]] = (b[:, [1, 3]] * H + top) * (h / rh)
        return out
