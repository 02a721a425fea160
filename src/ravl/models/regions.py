"""Image, region and text embeddings for any :class:`~ravl.models.VisionLanguageModel`.

Three ways to embed a region (a box ``[x0, y0, x1, y1]`` in pixels of the original image):

``"masked"`` (default)
    The whole image with every pixel outside the box set to black (pixel value 0 before the
    model's normalisation), encoded like any image. The region keeps its size and position,
    so it stays in the distribution the model was trained on.
``"roi"``
    One backbone pass per image; the adapter pools the box from its feature map
    (:meth:`~ravl.models.VisionLanguageModel.encode_roi`, boxes normalised to [0, 1] of the
    model input by :func:`map_boxes`). Cheapest per region, but features near the box border
    see outside context.
``"crop"``
    The box cut out of the original image and preprocessed (i.e. resized to the model's
    input), then encoded. Small regions get enlarged, which makes them out of distribution
    for a model trained on whole images.

The default is ``"masked"``: docs/algorithm.md §2 measured it best for recognising the region's
content (digit-region zero-shot accuracy 0.87 masked vs 0.77 roi vs 0.15 crop), and our own
measurement on the tiny CLIP agrees (``docs/models.md``). Every function states which mode
it used, so results can report it.

Pixel rule shared by ``masked`` and ``crop``: a pixel belongs to a box when its centre lies
inside it (``x0 <= u + 0.5 < x1``); a box thinner than one pixel keeps the pixel under its centre.

Box geometry: adapters whose ``preprocess`` does more than squash the image (open_clip and
Hugging Face CLIPs resize the shortest side and centre-crop) implement the optional
``map_boxes(boxes_px, image_size_wh)``; :func:`map_boxes` uses it, and falls back to dividing
by the image size. Every region gets a status: ``"inside"`` (the model sees all of the box),
``"clipped"`` (the crop cuts part of it off) or ``"outside"`` (the crop removes all of it).
``masked`` and ``roi`` can only embed what the model sees: a clipped box is embedded as its
visible part, an outside box gives an embedding without the box's content (a black image in
``masked`` mode, the nearest border patch or cell in ``roi`` mode). :func:`embed_regions`
warns (:class:`~ravl.exceptions.RavlWarning`) with the counts and returns the statuses on
request; ``crop`` cuts the box from the original image and is not affected.

Functions here only call the protocol (``preprocess``, ``encode_image``, ``encode_roi``,
``tokenize``, ``encode_text``), so every adapter works unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ravl.data.dataset import to_rgb
from ravl.exceptions import InvalidParameterError, RavlWarning
from ravl.utils.progress import progress as _progress
from ravl.utils.validation import check_choice, check_int

__all__ = [
    "REGION_MODES",
    "DEFAULT_REGION_MODE",
    "embed_images",
    "embed_regions",
    "embed_texts",
    "region_image",
    "region_pixels",
    "region_batch",
    "box_pixel_bounds",
    "map_boxes",
    "unmap_boxes",
    "BOX_STATUSES",
]

logger = logging.getLogger(__name__)

#: Per-region statuses reported by :func:`map_boxes` and :func:`embed_regions`.
BOX_STATUSES: tuple[str, ...] = ("inside", "clipped", "outside")

#: Ways to embed a region (see the module docstring).
REGION_MODES: tuple[str, ...] = ("masked", "roi", "crop")
#: Chosen by measurement (docs/algorithm.md §2 and docs/models.md): regions stay recognisable.
DEFAULT_REGION_MODE = "masked"


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _inference(model) -> Iterator[None]:
    """``torch.no_grad`` and eval mode, restoring the module's previous mode afterwards."""
    module = model.module
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


def _finish(chunks: list[torch.Tensor], n: int, dim: int, normalize: bool) -> np.ndarray:
    if not chunks:
        return np.zeros((n, dim), dtype=np.float32)
    emb = torch.cat(chunks).float()
    if normalize:
        emb = F.normalize(emb, dim=-1)
    return emb.numpy().astype(np.float32, copy=False)


class _Images:
    """Uniform access to a dataset (``load_image``) or a sequence of PIL images."""

    def __init__(self, source: Any, caller: str):
        if hasattr(source, "load_image") and hasattr(source, "__len__"):
            self._load = source.load_image
            self.n = len(source)
        elif isinstance(source, Image.Image):
            self._load = [source].__getitem__
            self.n = 1
        elif isinstance(source, Sequence) and not isinstance(source, (str, bytes)):
            for k, im in enumerate(source):
                if not isinstance(im, Image.Image):
                    raise InvalidParameterError(f"{caller} takes a dataset or a list of PIL images; item {k} is a "
                                                f"{type(im).__name__}.")
            self._load = source.__getitem__
            self.n = len(source)
        else:
            raise InvalidParameterError(f"{caller} takes a dataset (with load_image) or a list of PIL images. "
                                        f"Got {type(source).__name__}.")

    def load(self, i: int) -> Image.Image:
        im = self._load(int(i))
        return im if im.mode == "RGB" else to_rgb(im)


def box_pixel_bounds(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """Integer pixel bounds ``(u0, v0, u1, v1)`` (end exclusive) of the pixels inside ``box``.

    A pixel belongs to the box when its centre lies inside it; the box is clipped to the
    image, and a box thinner than one pixel keeps the pixel under its centre.

    Example:
        >>> box_pixel_bounds([0, 0, 28, 28], 56, 56)
        (0, 0, 28, 28)
        >>> box_pixel_bounds([10.2, 3.7, 10.4, 20.0], 56, 56)
        (10, 4, 11, 20)
    """
    x0, y0, x1, y1 = (float(v) for v in box)

    def axis(a: float, b: float, size: int) -> tuple[int, int]:
        lo = min(max(math.ceil(a - 0.5), 0), size)
        hi = min(max(math.ceil(b - 0.5), 0), size)
        if hi <= lo:
            lo = min(max(int(math.floor((a + b) / 2)), 0), size - 1)
            hi = lo + 1
        return lo, hi

    u0, u1 = axis(x0, x1, width)
    v0, v1 = axis(y0, y1, height)
    return u0, v0, u1, v1


def _check_box(box: Sequence[float], width: int, height: int, where: str) -> tuple[float, float, float, float]:
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"{where}: a box must be 4 numbers [x0, y0, x1, y1]. Got {box!r}.") from None
    ok = all(math.isfinite(v) for v in (x0, y0, x1, y1))
    cx0, cy0 = max(x0, 0.0), max(y0, 0.0)
    cx1, cy1 = min(x1, float(width)), min(y1, float(height))
    if not ok or cx1 <= cx0 or cy1 <= cy0:
        raise InvalidParameterError(f"{where}: boxes must be x0<x1, y0<y1 and overlap the {width}x{height} image. "
                                    f"Got {[x0, y0, x1, y1]}.")
    return cx0, cy0, cx1, cy1


def map_boxes(model, boxes_px: Any, image_size_wh: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of an original image -> boxes normalised to ``[0, 1]`` of ``model``'s input.

    Uses the adapter's optional ``map_boxes`` (adapters that resize and centre-crop); other
    adapters squash the whole image into their input, so the box is divided by the image size.

    Args:
        model: A :class:`~ravl.models.VisionLanguageModel`.
        boxes_px: ``[R, 4]`` boxes ``x0, y0, x1, y1`` in pixels of the original image.
        image_size_wh: ``(width, height)`` of the original image.

    Returns:
        ``(boxes_norm [R, 4] float64, status [R])``, status in :data:`BOX_STATUSES`: ``"inside"``,
        ``"clipped"`` (partly cut off by the model's crop; the box is its visible part) or
        ``"outside"`` (entirely cut off; the box is a degenerate line on the input border).
        Boxes are clipped to the image first.

    Example:
        >>> import ravl
        >>> map_boxes(ravl.load_model("tiny"), [[0, 0, 28, 56]], (56, 56))[0].tolist()
        [[0.0, 0.0, 0.5, 1.0]]
    """
    boxes = np.asarray(boxes_px, dtype=np.float64).reshape(-1, 4)
    fn = getattr(model, "map_boxes", None)
    if fn is not None:
        norm, status = fn(boxes, tuple(image_size_wh))
        norm = np.asarray(norm, dtype=np.float64).reshape(-1, 4)
        status = np.asarray(status).astype("<U7")
        if norm.shape[0] != boxes.shape[0] or status.shape != (boxes.shape[0],) or not set(status) <= set(BOX_STATUSES):
            raise InvalidParameterError(f"{getattr(model, 'name', type(model).__name__)}.map_boxes must return ([R, 4] "
                                        f"boxes, [R] statuses in {BOX_STATUSES}) for R={boxes.shape[0]} boxes.")
        return norm, status
    w, h = (float(v) for v in image_size_wh)
    norm = boxes / np.array([w, h, w, h])
    return np.clip(norm, 0.0, 1.0), np.full(boxes.shape[0], "inside", dtype="<U7")


def unmap_boxes(model, boxes_norm: Any, image_size_wh: tuple[int, int]) -> np.ndarray:
    """The inverse of :func:`map_boxes`: boxes in ``[0, 1]`` of ``model``'s input -> pixel boxes of
    the original image (``[R, 4]`` float64; the part of the image the model sees).

    Example:
        >>> import ravl
        >>> unmap_boxes(ravl.load_model("tiny"), [[0.0, 0.0, 0.5, 1.0]], (56, 56)).tolist()
        [[0.0, 0.0, 28.0, 56.0]]
    """
    boxes = np.asarray(boxes_norm, dtype=np.float64).reshape(-1, 4)
    fn = getattr(model, "unmap_boxes", None)
    if fn is not None:
        return np.asarray(fn(boxes, tuple(image_size_wh)), dtype=np.float64).reshape(-1, 4)
    w, h = (float(v) for v in image_size_wh)
    return boxes * np.array([w, h, w, h])


def _report_status(model, mode: str, status: np.ndarray) -> None:
    """Warn once per call when ``masked`` / ``roi`` regions are cut off by the model's crop."""
    n_clip = int((status == "clipped").sum())
    n_out = int((status == "outside").sum())
    if mode == "crop" or not (n_clip or n_out):
        return
    name = getattr(model, "name", type(model).__name__)
    parts = []
    if n_clip:
        parts.append(f"{n_clip} are partly cut off by its centre crop (only the visible part is embedded)")
    if n_out:
        what = "a black image" if mode == "masked" else "the border patch or cell nearest to the box"
        parts.append(f"{n_out} lie entirely outside it (their embeddings show {what}, not the box)")
    msg = (f"embed_regions (mode {mode!r}): of {len(status)} regions, {' and '.join(parts)}, because {name} "
           "resizes and centre-crops images. Pass return_status=True for the per-region status; mode='crop' embeds "
           "whole boxes, or pad images to the model's aspect ratio.")
    logger.info(msg)
    warnings.warn(msg, RavlWarning, stacklevel=3)


def region_image(image: Image.Image, box: Sequence[float], mode: str = DEFAULT_REGION_MODE) -> Image.Image:
    """The PIL image a ``"masked"`` or ``"crop"`` region embedding encodes.

    Args:
        image: The original image.
        box: ``[x0, y0, x1, y1]`` in pixels of ``image``.
        mode: ``"masked"`` (same size, black outside the box) or ``"crop"`` (the box's pixels).
    """
    check_choice(mode, "mode", "region_image", ("masked", "crop"))
    if image.mode != "RGB":
        image = image.convert("RGB")
    u0, v0, u1, v1 = box_pixel_bounds(box, *image.size)
    if mode == "crop":
        return image.crop((u0, v0, u1, v1))
    arr = np.asarray(image)
    out = np.zeros_like(arr)
    out[v0:v1, u0:u1] = arr[v0:v1, u0:u1]
    return Image.fromarray(out)


# ---------------------------------------------------------------------------------------------
# Public embedding functions
# ---------------------------------------------------------------------------------------------

def embed_images(model, images: Any, *, batch_size: int = 128, normalize: bool = True,
                 progress: bool = True) -> np.ndarray:
    """Embed whole images.

    Args:
        model: A :class:`~ravl.models.VisionLanguageModel`.
        images: A dataset (anything with ``load_image(i)`` and ``len``, e.g.
            :class:`~ravl.data.RegionDataset`) or a list of PIL images of any size.
        batch_size: Images per forward pass.
        normalize: L2-normalise the embeddings.
        progress: Show a progress bar.

    Returns:
        ``[N, D]`` float32 embeddings, in input order.
    """
    batch_size = check_int(batch_size, "batch_size", "embed_images", low=1)
    src = _Images(images, "embed_images")
    dev = model.device
    chunks: list[torch.Tensor] = []
    bar = _progress(total=src.n, desc="embedding images", disable=None if progress else True)
    with _inference(model):
        for start in range(0, src.n, batch_size):
            stop = min(start + batch_size, src.n)
            px = model.preprocess([src.load(i) for i in range(start, stop)]).to(dev)
            chunks.append(model.encode_image(px).float().cpu())
            bar.update(stop - start)
    bar.close()
    return _finish(chunks, src.n, model.embed_dim, normalize)


def _region_rows(dataset: Any, boxes: Sequence[Sequence[Sequence[float]]] | None, n_images: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(image_index [R], boxes [R, 4])`` from a dataset's region table or explicit boxes."""
    if boxes is None:
        if not hasattr(dataset, "region_table"):
            raise InvalidParameterError("embed_regions needs a dataset with region_table(), or a list of images "
                                        "together with boxes=[[box, ...] per image].")
        table = dataset.region_table()
        return np.asarray(table.image_index, dtype=np.int64), np.asarray(table.boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) != n_images:
        raise InvalidParameterError(f"The 'boxes' parameter of embed_regions must hold one list of boxes per image "
                                    f"({n_images}). Got {len(boxes)} lists instead.")
    idx, flat = [], []
    for i, per_image in enumerate(boxes):
        for b in per_image:
            idx.append(i)
            flat.append(b)
    try:
        arr = np.asarray(flat, dtype=np.float64).reshape(-1, 4)
    except ValueError:
        raise InvalidParameterError("The 'boxes' parameter of embed_regions must hold boxes of 4 numbers "
                                    "[x0, y0, x1, y1].") from None
    return np.asarray(idx, dtype=np.int64), arr


def embed_regions(model, dataset: Any, *, mode: str = DEFAULT_REGION_MODE,
                  boxes: Sequence[Sequence[Sequence[float]]] | None = None, batch_size: int = 128,
                  normalize: bool = True, progress: bool = True, return_status: bool = False
                  ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Embed every region of a dataset.

    Args:
        model: A :class:`~ravl.models.VisionLanguageModel`.
        dataset: A :class:`~ravl.data.RegionDataset` (anything with ``load_image(i)``, ``len``
            and ``region_table()``), or a list of PIL images together with ``boxes``.
        mode: ``"masked"``, ``"roi"`` or ``"crop"`` (see the module docstring).
        boxes: Only with a list of images: one list of ``[x0, y0, x1, y1]`` pixel boxes per
            image (any number, including none).
        batch_size: Model inputs per forward pass: regions for ``"masked"`` and ``"crop"``,
            images (with all their boxes) for ``"roi"``.
        normalize: L2-normalise the embeddings.
        progress: Show a progress bar.
        return_status: Also return each region's status (see :func:`map_boxes`).

    Returns:
        ``[R, D]`` float32 embeddings in ``dataset.region_table()`` order (or image by image,
        box by box for explicit ``boxes``); with ``return_status``, ``(embeddings, status)``
        where ``status`` is an ``[R]`` array of ``"inside"`` / ``"clipped"`` / ``"outside"``.
        In ``masked`` and ``roi`` mode, clipped and outside regions are counted in a
        :class:`~ravl.exceptions.RavlWarning` (module docstring); every region keeps its row.

    Raises:
        ValueError: For an unknown mode or a box that does not overlap its image.
        NotImplementedError: For ``"roi"`` with an adapter that cannot pool regions.
    """
    check_choice(mode, "mode", "embed_regions", REGION_MODES)
    batch_size = check_int(batch_size, "batch_size", "embed_regions", low=1)
    src = _Images(dataset, "embed_regions")
    image_index, box_arr = _region_rows(dataset, boxes, src.n)
    n_regions = len(image_index)
    if n_regions and (image_index.min() < 0 or image_index.max() >= src.n):
        raise InvalidParameterError(f"Region image indices must lie in [0, {src.n}).")
    # Rows of each image, in order of first appearance (region_table order is image by image).
    order = np.argsort(image_index, kind="stable")
    images_in_order, starts = np.unique(image_index[order], return_index=True)
    groups = np.split(order, starts[1:]) if n_regions else []

    dev = model.device
    out = torch.zeros(n_regions, model.embed_dim)
    status = np.full(n_regions, "inside", dtype="<U7")
    bar = _progress(total=n_regions, desc=f"embedding regions ({mode})", disable=None if progress else True)
    with _inference(model):
        if mode == "roi":
            for g0 in range(0, len(groups), batch_size):
                pil, rows, rois = [], [], []
                for local, (img_i, grp) in enumerate(zip(images_in_order[g0:g0 + batch_size],
                                                         groups[g0:g0 + batch_size])):
                    im = src.load(img_i)
                    w, h = im.size
                    pil.append(im)
                    clipped = [_check_box(box_arr[r], w, h, f"image {int(img_i)}, region row {int(r)}") for r in grp]
                    norm, st = map_boxes(model, clipped, (w, h))
                    status[grp] = st
                    rois.extend((local, *b) for b in norm.tolist())
                    rows.extend(int(r) for r in grp)
                px = model.preprocess(pil).to(dev)
                rb = torch.tensor(rois, dtype=torch.float32, device=dev).reshape(-1, 5)
                out[rows] = model.encode_roi(px, rb).float().cpu()
                bar.update(len(rows))
        else:
            pending: list[Image.Image] = []
            pending_rows: list[int] = []

            def flush() -> None:
                if pending:
                    px = model.preprocess(pending).to(dev)
                    out[pending_rows] = model.encode_image(px).float().cpu()
                    bar.update(len(pending_rows))
                    pending.clear()
                    pending_rows.clear()

            for img_i, grp in zip(images_in_order, groups):
                im = src.load(img_i)
                w, h = im.size
                clipped = [_check_box(box_arr[r], w, h, f"image {int(img_i)}, region row {int(r)}") for r in grp]
                status[grp] = map_boxes(model, clipped, (w, h))[1]
                for r, box in zip(grp, clipped):
                    pending.append(region_image(im, box, mode))
                    pending_rows.append(int(r))
                    if len(pending) >= batch_size:
                        flush()
            flush()
    bar.close()
    _report_status(model, mode, status)
    if normalize and n_regions:
        out = F.normalize(out, dim=-1)
    emb = out.numpy().astype(np.float32, copy=False)
    return (emb, status) if return_status else emb


def embed_texts(model, texts: Sequence[str], *, normalize: bool = True, batch_size: int = 256) -> torch.Tensor:
    """Embed texts: ``[len(texts), D]`` float32 tensor on CPU.

    Args:
        model: A :class:`~ravl.models.VisionLanguageModel`.
        texts: Any strings.
        normalize: L2-normalise the embeddings.
        batch_size: Texts per forward pass.
    """
    if isinstance(texts, str):
        texts = [texts]
    batch_size = check_int(batch_size, "batch_size", "embed_texts", low=1)
    texts = list(texts)
    chunks = []
    with _inference(model):
        for start in range(0, len(texts), batch_size):
            tokens = model.tokenize(texts[start:start + batch_size]).to(model.device)
            chunks.append(model.encode_text(tokens).float().cpu())
    emb = torch.cat(chunks) if chunks else torch.zeros(0, model.embed_dim)
    return F.normalize(emb, dim=-1) if normalize and len(emb) else emb


# ---------------------------------------------------------------------------------------------
# Differentiable helpers for training code (mitigation losses)
# ---------------------------------------------------------------------------------------------

def _black_value(model, like: torch.Tensor) -> torch.Tensor:
    """Per-channel value of a black pixel after ``model.preprocess`` (``[1, 3, 1, 1]``)."""
    h, w = model.image_size
    black = model.preprocess([Image.new("RGB", (w, h))])
    return black.mean(dim=(2, 3), keepdim=True).to(device=like.device, dtype=like.dtype)


def _check_roi_boxes(pixels: torch.Tensor, boxes: torch.Tensor, caller: str) -> torch.Tensor:
    if pixels.ndim != 4:
        raise InvalidParameterError(f"{caller}: pixels must be preprocessed images [N, 3, H, W]. Got "
                                    f"{tuple(pixels.shape)}.")
    boxes = torch.as_tensor(boxes, dtype=pixels.dtype, device=pixels.device)
    if boxes.ndim != 2 or boxes.shape[1] != 5:
        raise InvalidParameterError(f"{caller}: boxes must be [R, 5] rows (image_index, x0, y0, x1, y1) normalised to "
                                    f"[0, 1]. Got shape {tuple(boxes.shape)}.")
    return boxes


def region_pixels(model, pixels: torch.Tensor, boxes: torch.Tensor, mode: str = DEFAULT_REGION_MODE,
                  size: int | None = None) -> torch.Tensor:
    """Region inputs ``[R, 3, H, W]`` built from preprocessed images, differentiably.

    Args:
        model: Supplies ``image_size`` and the black value of its ``preprocess``.
        pixels: Preprocessed images ``[N, 3, H, W]``.
        boxes: ``[R, 5]`` rows ``(image_index, x0, y0, x1, y1)`` normalised to [0, 1] of the
            model input (:func:`map_boxes` maps boxes of the original image).
        mode: ``"masked"``: pixels outside the box set to black (the pixel-centre rule of
            :func:`box_pixel_bounds` on the ``H x W`` grid, so for images stored at the model's
            input size this equals what :func:`embed_regions` encodes); ``"crop"``: the box
            resampled to ``H x W`` with bilinear :func:`~torch.nn.functional.grid_sample`.
        size: Side of the returned inputs (``[R, 3, size, size]``); ``None``: the images' own
            ``H x W``. A crop is resampled straight to it; a masked image is built at ``H x W``
            and then resized (bilinear, antialiased). For image towers that take smaller inputs
            (the tiny CLIP), a cheaper region pass.

    Raises:
        ValueError: For ``"roi"`` (it pools features, not pixels; use :func:`region_batch`).
    """
    check_choice(mode, "mode", "region_pixels", ("masked", "crop"))
    boxes = _check_roi_boxes(pixels, boxes, "region_pixels")
    idx = boxes[:, 0].long()
    src = pixels[idx]
    n, _, h, w = src.shape
    if n == 0:
        return src
    xy = boxes[:, 1:].detach()
    if mode == "masked":
        def axis_mask(a: torch.Tensor, b: torch.Tensor, size: int) -> torch.Tensor:
            centres = torch.arange(size, device=pixels.device, dtype=pixels.dtype) + 0.5
            lo, hi = (a * size)[:, None], (b * size)[:, None]
            m = (centres[None] >= lo) & (centres[None] < hi)
            # A box thinner than a pixel keeps the pixel under its centre.
            empty = ~m.any(dim=1)
            if empty.any():
                mid = ((a + b) / 2 * size).floor().clamp(0, size - 1).long()
                m[empty, mid[empty]] = True
            return m

        mx = axis_mask(xy[:, 0], xy[:, 2], w)
        my = axis_mask(xy[:, 1], xy[:, 3], h)
        mask = (my[:, :, None] & mx[:, None, :]).unsqueeze(1).to(pixels.dtype)  # [R, 1, H, W]
        out = src * mask + _black_value(model, pixels) * (1 - mask)
        if size is not None and (size, size) != (h, w):
            out = F.interpolate(out, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return out
    if size is not None:
        h = w = int(size)
    # crop: output pixel k samples x0 + (k + 0.5) / W * (x1 - x0) (align_corners=False).
    theta = torch.zeros(n, 2, 3, dtype=pixels.dtype, device=pixels.device)
    theta[:, 0, 0] = xy[:, 2] - xy[:, 0]
    theta[:, 0, 2] = xy[:, 0] + xy[:, 2] - 1
    theta[:, 1, 1] = xy[:, 3] - xy[:, 1]
    theta[:, 1, 2] = xy[:, 1] + xy[:, 3] - 1
    grid = F.affine_grid(theta, [n, 3, h, w], align_corners=False)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)


def region_batch(model, pixels: torch.Tensor, boxes: torch.Tensor, mode: str = DEFAULT_REGION_MODE
                 ) -> torch.Tensor:
    """Region embeddings ``[R, D]`` (not normalised) with gradients, for training code.

    No ``no_grad``, no mode switching: call it inside a training step so mitigation losses
    can backpropagate through the region embeddings.

    Args:
        model: A :class:`~ravl.models.VisionLanguageModel`.
        pixels: Preprocessed images ``[N, 3, H, W]`` on the model's device.
        boxes: ``[R, 5]`` rows ``(image_index, x0, y0, x1, y1)`` normalised to [0, 1] of the
            model input (:func:`map_boxes` maps boxes of the original image).
        mode: ``"masked"``, ``"roi"`` or ``"crop"``.
    """
    check_choice(mode, "mode", "region_batch", REGION_MODES)
    boxes = _check_roi_boxes(pixels, boxes, "region_batch")
    if boxes.shape[0] == 0:
        return pixels.new_zeros(0, model.embed_dim)
    if mode == "roi":
        return model.encode_roi(pixels, boxes)
    return model.encode_image(region_pixels(model, pixels, boxes, mode))
