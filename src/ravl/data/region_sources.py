"""Region sources: where the regions of each image come from, chosen by a spec string.

RaVL looks at images region by region. A dataset's own regions are the ``boxes`` of
``metadata.jsonl`` (or an equal grid when a row has none). A *region source* replaces them, for
images that have no annotated boxes or to compare decompositions:

=========================  ===========================================================================
spec                       regions of each image
=========================  ===========================================================================
``boxes``                  the dataset's own regions: the row's ``boxes``, else the loader's grid
                           (today's behaviour).
``grid:RxC``               an equal ``R x C`` grid, row-major (:func:`ravl.data.dataset.grid_boxes`).
``multiscale[:S,...]``     several grids, coarse to fine, concatenated. Each scale is ``K`` (a
                           ``K x K`` grid) or ``RxC``. Default ``multiscale`` = ``1,2,3``: the whole
                           image, the 2x2 quadrants and the 3x3 cells (14 regions).
``slic:N[,k=v...]``        scikit-image SLIC superpixels (about ``N`` segments), each turned into its
                           bounding box.
``felzenszwalb[:k=v...]``  scikit-image Felzenszwalb-Huttenlocher segments, each turned into its
                           bounding box.
``file:PATH``              a proposals file the user made (e.g. with a detector): JSON Lines, one
                           ``{"file_name": ..., "boxes": [[x0, y0, x1, y1], ...]}`` per image,
                           validated like ``metadata.jsonl`` (:func:`read_proposals`).
=========================  ===========================================================================

Superpixel parameters (``slic:16,compactness=20``; every one optional except SLIC's ``N``):

- ``slic``: ``compactness`` (10, scikit-image's default), ``sigma`` (1.0: Gaussian smoothing
  first, which keeps JPEG noise from fragmenting segments), ``min_area``, ``max_regions``,
  ``max_side``.
- ``felzenszwalb``: ``scale`` (100), ``sigma`` (0.8), ``min_area`` (0.01), ``max_regions``,
  ``max_side``.

**Tiny segments** (the rule, in order): (1) scikit-image merges small segments into a neighbour:
SLIC with ``enforce_connectivity=True, min_size_factor=0.5`` (every connected segment smaller
than half the mean segment area ``H*W/N`` joins an adjacent segment), Felzenszwalb with
``min_size = ceil(min_area * H * W)`` pixels; (2) any segment still covering less than
``min_area`` of the image (default SLIC ``1/(4N)``, a quarter of the mean segment area;
Felzenszwalb 0.01) is dropped; (3) identical bounding boxes are kept once; (4) with
``max_regions=K`` only the K largest segments are kept (0, the default, keeps all); (5) if
nothing is left the image gets one region, the whole image. Boxes are pixel edges
``[min_x, min_y, max_x + 1, max_y + 1]`` of the segment, sorted top to bottom, then left to right
(by ``(y0, x0, y1, x1)``). Images whose longer side exceeds ``max_side`` (default 640 pixels) are
segmented on a copy resized to that side (PIL bilinear) and their boxes scaled back, which bounds
the time per image; COCO images (at most 640 pixels) are segmented at full size.

**Cache.** Superpixel boxes cost about 0.15-0.35 s per 640x480 image, so they are computed once
and cached on disk, per image, keyed by the *content*: the BLAKE2b hash of the image file's bytes
together with the canonical spec (every parameter spelled out) and a format version. Identical
images share an entry, an image whose pixels change is recomputed (and only that image), and
renaming or moving a dataset keeps its cache. Hashing reads every file (about 1 GB/s from the page
cache), still far cheaper than segmenting; ``cache_key="stat"`` keys by (absolute path, size,
modification time in ns, inode) instead, which skips the reads but misses an in-place rewrite of
the same size within the file system's timestamp granularity. The cache is one ``.npz`` file per
spec under ``cache_dir`` (default ``$RAVL_CACHE/regions``, else ``~/.cache/ravl/regions``), written
atomically; an unreadable cache file is ignored and rewritten. The grid, multiscale, boxes and
file sources are cheaper to recompute than to look up and are not cached.

**Workers.** Missing superpixel boxes are computed in worker processes
(:class:`concurrent.futures.ProcessPoolExecutor`, the platform's default start method). Each image
is segmented independently by a deterministic algorithm and the results are collected in dataset
order, so the boxes do not depend on the number of workers (tested).

**Ground truth.** When a dataset carries ``region_attributes`` for its own regions, each new
region inherits the attribute of the dataset region it overlaps most, if their IoU is at least
``iou_threshold`` (default 0.5; ties go to the first region), else :data:`EMPTY_ATTRIBUTE`
(:func:`inherit_attributes`). Precision@k and the group metrics can then be scored on any source.

Shape symbols: N images, P proposals (regions of the source) of one image, A annotated regions.

Example:
    >>> parse_region_source("grid:3x3").spec, parse_region_source("multiscale").spec
    ('grid:3x3', 'multiscale:1,2,3')
    >>> box_iou([[0, 0, 2, 2]], [[1, 0, 3, 2], [0, 0, 2, 2]]).round(3).tolist()
    [[0.333, 1.0]]
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import logging
import math
import os
import posixpath
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from ravl.data.attributes import EMPTY_ATTRIBUTE
from ravl.data.dataset import (
    DEFAULT_GRID,
    ImageRecord,
    RegionDataset,
    _exc_text,
    _finish_boxes,
    _is_absolute,
    _parse_boxes,
    _Problems,
    _q,
    _Row,
    _type_name,
    grid_boxes,
    parse_grid,
    to_rgb,
)
from ravl.data.digits import cache_dir
from ravl.exceptions import DatasetError, DatasetValidationError, InvalidParameterError
from ravl.utils.io import atomic_write
from ravl.utils.optional import require
from ravl.utils.progress import progress as progress_bar
from ravl.utils.validation import check_choice, check_float, check_int

__all__ = [
    "SOURCE_KINDS",
    "DEFAULT_SCALES",
    "DEFAULT_IOU_THRESHOLD",
    "RegionSource",
    "SourcedRegionDataset",
    "parse_region_source",
    "region_boxes",
    "with_region_source",
    "read_proposals",
    "box_iou",
    "inherit_attributes",
    "region_cache_dir",
]

logger = logging.getLogger(__name__)

#: The kinds of region source a spec may name.
SOURCE_KINDS = ("boxes", "grid", "multiscale", "slic", "felzenszwalb", "file")
#: Grids of ``multiscale`` without scales: whole image, 2x2, 3x3.
DEFAULT_SCALES: tuple[tuple[int, int], ...] = ((1, 1), (2, 2), (3, 3))
#: IoU a region needs with an annotated region to inherit its attribute.
DEFAULT_IOU_THRESHOLD = 0.5
#: Bumped whenever the same spec and image would give other cached boxes.
CACHE_VERSION = 1

Box = tuple[float, float, float, float]

_SPEC_HELP = ("boxes, grid:RxC (e.g. grid:3x3), multiscale or multiscale:1,2,3, slic:N (e.g. slic:16), "
              "felzenszwalb, file:PATH (a JSON Lines proposals file)")
_SUPERPIXEL_KINDS = ("slic", "felzenszwalb")
# parameter -> (default, type, low, closed lower bound); None default = depends on the spec
_PARAMS: dict[str, dict[str, tuple[Any, type, float]]] = {
    "slic": {"compactness": (10.0, float, 0.0), "sigma": (1.0, float, 0.0), "min_area": (None, float, 0.0),
             "max_regions": (0, int, 0), "max_side": (640, int, 8)},
    "felzenszwalb": {"scale": (100.0, float, 0.0), "sigma": (0.8, float, 0.0), "min_area": (0.01, float, 0.0),
                     "max_regions": (0, int, 0), "max_side": (640, int, 8)},
}
_KIND_ALIASES = {"superpixels": "slic", "superpixel": "slic", "felz": "felzenszwalb", "fh": "felzenszwalb",
                 "proposals": "file", "detections": "file", "detector": "file", "box": "boxes",
                 "annotations": "boxes", "metadata": "boxes", "grids": "grid", "multi-scale": "multiscale",
                 "multi_scale": "multiscale", "pyramid": "multiscale"}
_PROPOSAL_KEY_ALIASES = {"file_name": ("filename", "file", "image", "image_path", "path", "image_id"),
                         "boxes": ("box", "bbox", "bboxes", "proposals", "detections", "regions", "rois")}
_HASH_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RegionSource:
    """A parsed region-source spec (build it with :func:`parse_region_source`).

    Attributes:
        kind: One of :data:`SOURCE_KINDS`.
        grid: ``(rows, cols)`` for ``grid``.
        scales: ``(rows, cols)`` of each grid for ``multiscale``, coarse to fine.
        n_segments: Approximate number of SLIC segments.
        params: Superpixel parameters with every default filled in, sorted by name.
        path: Absolute path of the proposals file for ``file``.
    """

    kind: str
    grid: tuple[int, int] | None = None
    scales: tuple[tuple[int, int], ...] = ()
    n_segments: int | None = None
    params: tuple[tuple[str, float | int], ...] = ()
    path: Path | None = None

    @property
    def spec(self) -> str:
        """The canonical spec string (every parameter spelled out), e.g. ``'slic:16,compactness=10,...'``.

        It is what :attr:`SourcedRegionDataset.region_source` records (for ``discovery.json``) and
        what parses back to an equal source.
        """
        if self.kind == "boxes":
            return "boxes"
        if self.kind == "grid":
            return f"grid:{self.grid[0]}x{self.grid[1]}"
        if self.kind == "multiscale":
            return "multiscale:" + ",".join(str(r) if r == c else f"{r}x{c}" for r, c in self.scales)
        if self.kind == "file":
            return f"file:{self.path}"
        parts = [str(self.n_segments)] if self.kind == "slic" else []
        parts += [f"{k}={_fmt(v)}" for k, v in self.params]
        return f"{self.kind}:" + ",".join(parts)

    @property
    def is_superpixel(self) -> bool:
        """Whether boxes come from segmenting the pixels (``slic``, ``felzenszwalb``): slow, cached."""
        return self.kind in _SUPERPIXEL_KINDS

    def param(self, name: str) -> float | int:
        """The value of a superpixel parameter (defaults filled in)."""
        return dict(self.params)[name]

    def image_boxes(self, width: int, height: int, pixels: np.ndarray | None = None) -> list[Box]:
        """The regions of one ``width x height`` image for a ``grid``, ``multiscale`` or superpixel source.

        Args:
            width: Image width in pixels.
            height: Image height in pixels.
            pixels: ``[H, W, 3]`` uint8 RGB pixels; needed only by the superpixel kinds.

        Returns:
            ``(x0, y0, x1, y1)`` pixel boxes inside the image.

        Raises:
            ValueError: For ``boxes`` and ``file`` (they depend on the dataset, see
                :func:`region_boxes`) or missing pixels.
        """
        if self.kind == "grid":
            return grid_boxes(width, height, self.grid)
        if self.kind == "multiscale":
            return [b for g in self.scales for b in grid_boxes(width, height, g)]
        if self.is_superpixel:
            if pixels is None:
                raise InvalidParameterError(f"Region source {self.spec!r} needs the image pixels.")
            return [tuple(map(float, b)) for b in _superpixel_boxes(pixels, self)]
        raise InvalidParameterError(f"Region source {self.kind!r} depends on the dataset; use region_boxes(dataset, "
                                    "...).")

    def cache_token(self) -> str:
        """The string hashed into cache keys: kind, every parameter and :data:`CACHE_VERSION`."""
        return json.dumps({"kind": self.kind, "n_segments": self.n_segments, "params": [list(p) for p in self.params],
                           "version": CACHE_VERSION}, sort_keys=True)


def _fmt(v: float | int) -> str:
    return str(v) if isinstance(v, int) else f"{v:g}"


def parse_region_source(spec: str | RegionSource) -> RegionSource:
    """Parse a region-source spec (see the module docstring for the kinds and parameters).

    Args:
        spec: ``"boxes"``, ``"grid:RxC"``, ``"multiscale"`` / ``"multiscale:1,2,3"``,
            ``"slic:N"`` / ``"slic:N,key=value,..."``, ``"felzenszwalb"`` /
            ``"felzenszwalb:key=value,..."`` or ``"file:PATH"``; a :class:`RegionSource` is
            returned as is. The kind is case-insensitive; spaces around parts are ignored.

    Returns:
        The parsed source; :attr:`RegionSource.spec` is its canonical spelling.

    Raises:
        ValueError: For an unknown kind (with close matches), a missing or malformed parameter;
            the message quotes the spec and shows the right form.

    Example:
        >>> parse_region_source("slic:16").spec
        'slic:16,compactness=10,max_regions=0,max_side=640,min_area=0.015625,sigma=1'
    """
    if isinstance(spec, RegionSource):
        return spec
    if not isinstance(spec, str):
        raise InvalidParameterError(f"A region source must be a spec string like 'grid:3x3' ({_SPEC_HELP}). "
                         f"Got {spec!r} instead.")
    text = spec.strip()
    if not text:
        raise InvalidParameterError(f"Empty region source; use one of: {_SPEC_HELP}.")
    kind, sep, arg = text.partition(":")
    kind = kind.strip().lower()
    arg = arg.strip()
    if kind not in SOURCE_KINDS:
        guess = _KIND_ALIASES.get(kind) or next(iter(difflib.get_close_matches(kind, SOURCE_KINDS, n=1, cutoff=0.6)),
                                                 None)
        hint = f" (did you mean {guess!r}?)" if guess else ""
        raise InvalidParameterError(f"Unknown region source kind {kind!r} in {spec!r}{hint}; use one of: {_SPEC_HELP}.")
    if kind == "boxes":
        if sep:
            raise InvalidParameterError(f"Region source 'boxes' takes no parameter; got {spec!r}. Write 'boxes' (the "
                                        "dataset's "
                             "own boxes, or its grid for rows without boxes).")
        return RegionSource("boxes")
    if kind == "file":
        if not arg:
            raise InvalidParameterError("Region source 'file' needs a path: write file:PATH (a JSON Lines file with "
                                        "one "
                             f"{{\"file_name\": ..., \"boxes\": [[x0, y0, x1, y1], ...]}} per image); got {spec!r}.")
        return RegionSource("file", path=Path(arg).expanduser().absolute())
    if kind == "grid":
        if not arg:
            raise InvalidParameterError("Region source 'grid' needs a grid size: write grid:RxC, e.g. grid:3x3; got "
                                        f"{spec!r}.")
        return RegionSource("grid", grid=_parse_grid_arg(arg, spec, "the grid must be ROWSxCOLS with whole numbers "
                                                                   ">= 1, e.g. grid:3x3"))
    if kind == "multiscale":
        if not arg:
            return RegionSource("multiscale", scales=DEFAULT_SCALES)
        scales = []
        for item in arg.split(","):
            item = item.strip()
            what = ("each scale is K (a KxK grid) or RxC with whole numbers >= 1, e.g. multiscale:1,2,3 or "
                    "multiscale:1,2x3")
            if item.isdigit():
                k = _parse_grid_arg(f"{item}x{item}", spec, what, shown=item)
                scales.append(k)
            else:
                scales.append(_parse_grid_arg(item, spec, what))
        if len(set(scales)) != len(scales):
            dup = next(s for s in scales if scales.count(s) > 1)
            raise InvalidParameterError(f"Invalid region source {spec!r}: the scale {dup[0]}x{dup[1]} is repeated; "
                                        "list each grid "
                             "once.")
        return RegionSource("multiscale", scales=tuple(scales))
    # superpixels
    parts = [p.strip() for p in arg.split(",")] if arg else []
    n_segments = None
    if kind == "slic":
        if not parts or not parts[0] or "=" in parts[0]:
            raise InvalidParameterError("Region source 'slic' needs the number of segments: write slic:N, e.g. "
                                        "slic:16; "
                             f"got {spec!r}.")
        first = parts.pop(0)
        if not first.isdigit() or int(first) < 1:
            raise InvalidParameterError(f"Invalid region source {spec!r}: the number of segments must be a whole "
                                        "number >= 1, "
                             f"e.g. slic:16; got {first!r}.")
        n_segments = int(first)
    known = _PARAMS[kind]
    given: dict[str, float | int] = {}
    for p in parts:
        key, eq, value = p.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not eq or not key:
            form = "slic:N,key=value" if kind == "slic" else "felzenszwalb:key=value"
            raise InvalidParameterError(f"Invalid region source {spec!r}: {p!r} is not key=value; write {form}, with "
                                        "keys "
                             f"{', '.join(known)}.")
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InvalidParameterError(f"Invalid region source {spec!r}: unknown parameter {key!r}{hint}; {kind} "
                                        "takes "
                             f"{', '.join(known)}.")
        if key in given:
            raise InvalidParameterError(f"Invalid region source {spec!r}: parameter {key!r} is given twice.")
        _, typ, low = known[key]
        given[key] = _parse_number(value, typ, low, key, spec)
    params = {}
    for key, (default, _, _) in known.items():
        if key in given:
            params[key] = given[key]
        elif default is None:  # slic's min_area: a quarter of the mean segment area
            params[key] = 1.0 / (4 * n_segments)
        else:
            params[key] = default
    if params["min_area"] >= 1.0:
        raise InvalidParameterError(f"Invalid region source {spec!r}: min_area is a fraction of the image area and "
                                    "must be "
                         f"below 1; got {_fmt(params['min_area'])}.")
    return RegionSource(kind, n_segments=n_segments, params=tuple(sorted(params.items())))


def _parse_grid_arg(text: str, spec: str, what: str, shown: str | None = None) -> tuple[int, int]:
    try:
        return parse_grid(text)
    except ValueError:
        raise InvalidParameterError(f"Invalid region source {spec!r}: {what}; got {shown or text!r}.") from None


def _parse_number(value: str, typ: type, low: float, key: str, spec: str) -> float | int:
    try:
        v = typ(value)
        ok = math.isfinite(v) and v >= low
    except ValueError:
        ok = False
    if not ok:
        kind = "a whole number" if typ is int else "a number"
        raise InvalidParameterError(f"Invalid region source {spec!r}: {key} must be {kind} >= {_fmt(low)}; got "
                                    f"{value!r}.")
    return v


# --------------------------------------------------------------------------------------------
# Superpixels
# --------------------------------------------------------------------------------------------

def _superpixel_boxes(pixels: np.ndarray, source: RegionSource) -> np.ndarray:
    """``[P, 4]`` float64 boxes of the segments of one ``[H, W, 3]`` uint8 image (rule: module docstring)."""
    seg = require("skimage.segmentation", extra="superpixels", purpose=f"the region source {source.kind!r}")
    h, w = pixels.shape[:2]
    max_side = int(source.param("max_side"))
    work, factor = pixels, 1.0
    if max(h, w) > max_side:
        factor = max(h, w) / max_side
        size = (max(1, round(w / factor)), max(1, round(h / factor)))
        work = np.asarray(Image.fromarray(pixels).resize(size, Image.BILINEAR))
    wh, ww = work.shape[:2]
    min_area = float(source.param("min_area"))
    if source.kind == "slic":
        labels = seg.slic(work, n_segments=source.n_segments, compactness=float(source.param("compactness")),
                          sigma=float(source.param("sigma")), start_label=0, enforce_connectivity=True,
                          min_size_factor=0.5, channel_axis=-1)
    else:
        labels = seg.felzenszwalb(work, scale=float(source.param("scale")), sigma=float(source.param("sigma")),
                                  min_size=max(1, math.ceil(min_area * wh * ww)), channel_axis=-1)
    boxes = segments_to_boxes(labels, min_area=min_area, max_regions=int(source.param("max_regions")))
    if factor != 1.0:
        boxes = boxes * np.array([w / ww, h / wh, w / ww, h / wh])
        boxes = np.minimum(boxes, np.array([w, h, w, h], dtype=np.float64))
    return boxes


def segments_to_boxes(labels: np.ndarray, *, min_area: float = 0.0, max_regions: int = 0) -> np.ndarray:
    """Bounding boxes of the segments of a label image, with the tiny-segment rule.

    Args:
        labels: ``[H, W]`` integer segment label of each pixel (any values).
        min_area: Segments covering less than this fraction of the image are dropped.
        max_regions: Keep only this many of the largest segments (0 keeps all).

    Returns:
        ``[P, 4]`` float64 ``(x0, y0, x1, y1)`` pixel-edge boxes, distinct, sorted by
        ``(y0, x0, y1, x1)``; the whole image when no segment is left.

    Example:
        >>> segments_to_boxes(np.array([[0, 0, 1], [2, 2, 1]])).tolist()
        [[0.0, 0.0, 2.0, 1.0], [2.0, 0.0, 3.0, 2.0], [0.0, 1.0, 2.0, 2.0]]
    """
    h, w = labels.shape
    _, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(h, w)
    areas = np.bincount(inverse.ravel())
    slices = ndimage.find_objects(inverse + 1)
    keep = np.flatnonzero(areas >= min_area * h * w)
    if max_regions and keep.size > max_regions:
        order = np.lexsort((keep, -areas[keep]))  # largest first, ties by label
        keep = np.sort(keep[order[:max_regions]])
    boxes = np.array([(slices[k][1].start, slices[k][0].start, slices[k][1].stop, slices[k][0].stop) for k in keep],
                     dtype=np.float64).reshape(-1, 4)
    if boxes.shape[0] == 0:
        return np.array([[0.0, 0.0, float(w), float(h)]])
    boxes = np.unique(boxes, axis=0)  # distinct, sorted by (x0, ...)
    return boxes[np.lexsort((boxes[:, 2], boxes[:, 3], boxes[:, 0], boxes[:, 1]))]


def _load_rgb(path: Path) -> np.ndarray:
    """``[H, W, 3]`` uint8 pixels, converted as :meth:`RegionDataset.load_image` does (EXIF not applied)."""
    with Image.open(path) as im:
        im.load()
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")
        return np.asarray(to_rgb(im))


def _segment_file(job: tuple[str, str, RegionSource]) -> np.ndarray:
    """Worker: the superpixel boxes of one image file (``(path, where, source)``)."""
    path, where, source = job
    try:
        pixels = _load_rgb(Path(path))
    except Exception as exc:  # noqa: BLE001 - any decoder error is a data problem
        raise DatasetError(f"Cannot read image {path} ({where}): {_exc_text(exc)}. Re-export it as PNG or JPEG, "
                           "or remove the row.") from None
    return _superpixel_boxes(pixels, source)


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------

def region_cache_dir() -> Path:
    """Default folder of the superpixel box cache: ``$RAVL_CACHE/regions``, else ``~/.cache/ravl/regions``."""
    return cache_dir() / "regions"


def _image_key(record: ImageRecord, mode: str, where: str) -> str:
    try:
        if mode == "stat":
            st = os.stat(record.path)
            text = f"{Path(record.path).resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}"
            return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
        h = hashlib.blake2b(digest_size=16)
        with open(record.path, "rb") as fh:
            while chunk := fh.read(_HASH_CHUNK):
                h.update(chunk)
        return h.hexdigest()
    except OSError as exc:
        raise DatasetError(f"Cannot read image {record.path} ({where}): {_exc_text(exc)}; restore the file or remove "
                           "the row.") from None


class _BoxCache:
    """One ``.npz`` per source spec: ``{image key: [P, 4] boxes}``."""

    def __init__(self, folder: Path, source: RegionSource):
        token = hashlib.blake2b(source.cache_token().encode(), digest_size=10).hexdigest()
        self.path = folder / f"{source.kind}-{token}.npz"
        self.token = source.cache_token()

    def load(self) -> dict[str, np.ndarray]:
        if not self.path.is_file():
            return {}
        try:
            with np.load(self.path, allow_pickle=False) as z:
                if str(z["token"]) != self.token:
                    raise InvalidParameterError("written for another spec")
                keys, counts, boxes = z["keys"], z["counts"], z["boxes"]
            ends = np.cumsum(counts)
            return {str(k): boxes[e - c:e] for k, c, e in zip(keys, counts, ends)}
        except Exception as exc:  # noqa: BLE001 - a damaged cache is recomputed, never fatal
            logger.warning("Ignoring the region cache %s (%s); it will be rewritten.", self.path, _exc_text(exc))
            return {}

    def save(self, entries: dict[str, np.ndarray]) -> None:
        keys = sorted(entries)
        counts = np.array([entries[k].shape[0] for k in keys], dtype=np.int64)
        boxes = np.concatenate([entries[k] for k in keys]).reshape(-1, 4) if keys else np.zeros((0, 4))

        def w(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, token=np.array(self.token), keys=np.array(keys, dtype="U32"), counts=counts,
                         boxes=boxes.astype(np.float64))

        atomic_write(self.path, w)


# --------------------------------------------------------------------------------------------
# Boxes of a dataset
# --------------------------------------------------------------------------------------------

def region_boxes(dataset: RegionDataset, source: str | RegionSource, *, cache_dir: str | os.PathLike | None = None,
                 cache: bool = True, cache_key: str = "content", workers: int | None = None,
                 progress: bool = True) -> list[tuple[Box, ...]]:
    """The regions of every image of a dataset (or split) under a region source.

    Args:
        dataset: A :class:`~ravl.data.RegionDataset` (e.g. ``load_dataset(...)`` or one split).
        source: A spec string or :class:`RegionSource` (see :func:`parse_region_source`).
        cache_dir: Folder of the superpixel cache (default :func:`region_cache_dir`).
        cache: Read and write the cache (superpixel sources only).
        cache_key: ``"content"`` (hash of the image bytes, default) or ``"stat"`` (path, size,
            mtime, inode; no reads), see the module docstring.
        workers: Processes that segment missing images; None uses every CPU (``os.cpu_count()``),
            1 segments in this process. The result does not depend on it.
        progress: Show a progress bar while segmenting.

    Returns:
        ``[N]`` tuples of ``(x0, y0, x1, y1)`` pixel boxes, one tuple per image, in dataset order.

    Raises:
        ValueError: For a bad spec or parameter.
        DatasetValidationError: For a ``file:`` source whose file has problems (every one listed).
        DatasetError: When an image cannot be read.
        MissingDependencyError: When scikit-image is missing for a superpixel source.
    """
    caller = "region_boxes"
    src = parse_region_source(source)
    check_choice(cache_key, "cache_key", caller, ("content", "stat"))
    if workers is not None:
        workers = check_int(workers, "workers", caller, low=1)
    if not isinstance(dataset, RegionDataset):
        raise InvalidParameterError(f"{caller} takes a RegionDataset (from load_dataset). Got "
                                    f"{type(dataset).__name__}.")
    records = dataset.records
    if src.kind == "boxes":
        return [tuple(r.boxes) for r in records]
    if src.kind in ("grid", "multiscale"):
        return [tuple(src.image_boxes(r.width, r.height)) for r in records]
    if src.kind == "file":
        found = read_proposals(src.path, dataset)
        return [found[posixpath.normpath(r.file_name)] for r in records]
    return _superpixel_dataset_boxes(dataset, src, cache_dir=cache_dir, cache=cache, cache_key=cache_key,
                                     workers=workers, progress=progress)


def _superpixel_dataset_boxes(dataset: RegionDataset, src: RegionSource, *, cache_dir, cache: bool, cache_key: str,
                              workers: int | None, progress: bool) -> list[tuple[Box, ...]]:
    require("skimage.segmentation", extra="superpixels", purpose=f"the region source {src.kind!r}")
    records = dataset.records
    meta = dataset.metadata_path.name
    wheres = [f"{meta} line {r.line}" for r in records]
    t0 = time.perf_counter()
    keys = [_image_key(r, cache_key, w) for r, w in zip(progress_bar(
        records, desc="hashing images", total=len(records), disable=None if progress and len(records) >= 2000 else True),
        wheres)]
    store = _BoxCache(Path(cache_dir).expanduser() if cache_dir is not None else region_cache_dir(), src)
    entries = store.load() if cache else {}
    missing = [k for k, key in enumerate(keys) if key not in entries]
    first_of: dict[str, int] = {}
    for k in missing:  # identical images are segmented once
        first_of.setdefault(keys[k], k)
    todo = sorted(first_of.values())
    logger.info("Region source %s: %d of %d image(s) cached, %d to segment (%s).", src.spec,
                len(records) - len(missing), len(records), len(todo), store.path if cache else "cache off")
    if todo:
        jobs = [(str(records[k].path), wheres[k], src) for k in todo]
        n_workers = min(workers or os.cpu_count() or 1, len(jobs))
        bar = progress_bar(total=len(jobs), desc=f"regions {src.kind}", disable=None if progress else True)
        try:
            if n_workers <= 1:
                results = []
                for job in jobs:
                    results.append(_segment_file(job))
                    bar.update(1)
            else:
                chunk = max(1, min(16, len(jobs) // (4 * n_workers)))
                with ProcessPoolExecutor(max_workers=n_workers) as pool:
                    results = []
                    for boxes in pool.map(_segment_file, jobs, chunksize=chunk):
                        results.append(boxes)
                        bar.update(1)
        finally:
            bar.close()
        for k, boxes in zip(todo, results):
            entries[keys[k]] = boxes
        if cache:
            store.save(entries)
        dt = time.perf_counter() - t0
        logger.info("Segmented %d image(s) in %.1f s (%.3f s per image, %d worker(s)).", len(todo), dt,
                    dt / len(todo), n_workers)
    return [tuple(tuple(float(v) for v in b) for b in entries[key]) for key in keys]


# --------------------------------------------------------------------------------------------
# Proposals files
# --------------------------------------------------------------------------------------------

def read_proposals(path: str | os.PathLike, dataset: RegionDataset) -> dict[str, tuple[Box, ...]]:
    """Read and validate a proposals file for the images of ``dataset``.

    The file is JSON Lines: one object per image, ``{"file_name": "images/0001.jpg", "boxes":
    [[x0, y0, x1, y1], ...]}``, with ``file_name`` written as in the dataset's ``metadata.jsonl``
    and boxes in pixels of the stored image (the dataset format's convention; convert a detector's
    ``[x, y, w, h]`` first). Other keys (``scores``, ``labels``, ...) are ignored. Every image of
    ``dataset`` needs a row with at least one box; rows for images of the dataset folder that are
    not in ``dataset`` (another split) are ignored. A relative ``path`` that does not exist is
    also looked for in the dataset folder.

    Every problem is collected (the same checks and wording as ``ravl validate``: file, line, field,
    what is wrong and the fix) and raised at once. Boxes sticking out by at most
    :data:`~ravl.data.dataset.BOX_TOLERANCE` pixel are clipped.

    Args:
        path: The proposals file.
        dataset: The images the proposals are for.

    Returns:
        ``{normalised file_name: boxes}`` for every image of ``dataset``.

    Raises:
        DatasetValidationError: With every problem found.
    """
    p = Path(path).expanduser()
    if not p.exists() and not p.is_absolute() and (dataset.root / p).exists():
        p = dataset.root / p
    label = p.name
    problems = _Problems(label)
    where = str(p)
    if not p.is_file():
        what = "is a folder" if p.is_dir() else "not found"
        problems.file_level(f"{what}; give a JSON Lines file with one {{\"file_name\": ..., \"boxes\": [[x0, y0, x1, "
                            "y1], ...]} per image (region source file:PATH)", label=str(p))
        raise DatasetValidationError(problems.items, where)
    try:
        data = p.read_bytes()
    except OSError as exc:
        problems.file_level(f"cannot be read ({_exc_text(exc)}); check its permissions")
        raise DatasetValidationError(problems.items, where) from None

    by_name = {posixpath.normpath(r.file_name): r for r in dataset.records}
    other_names: set[str] | None = None  # file names of the whole dataset folder, read on demand
    example = '{"file_name": "images/0001.jpg", "boxes": [[0, 0, 28, 28], [10, 5, 40, 30]]}'
    seen: dict[str, int] = {}
    out: dict[str, tuple[Box, ...]] = {}
    n_suggested = 0
    guesses: dict[str, dict[str, str]] | None = None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for line_no, raw in enumerate(data.split(b"\n"), 1):
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            problems.row(line_no, None, f"is not UTF-8 text ({exc.reason} at byte {exc.start}); save the file as UTF-8")
            continue
        if not text:
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            problems.row(line_no, None, f"invalid JSON ({exc.msg} at column {exc.colno}); write one JSON object per "
                                        f"line, e.g. {example}")
            continue
        if not isinstance(obj, dict):
            problems.row(line_no, None, f"expected a JSON object {{...}}, got {_type_name(obj)} {_q(obj)}; write one "
                                        f"object per line, e.g. {example}")
            continue
        aliases = {k: f for f, names in _PROPOSAL_KEY_ALIASES.items() if f not in obj for k in obj if k in names}
        hint = {f: f" (the row has {k!r}: rename it to {f!r})" for k, f in aliases.items()}
        fn = obj.get("file_name")
        record = None
        if fn is None:
            problems.row(line_no, "'file_name'", f"missing{hint.get('file_name', '')}; add the image path as written "
                                                 f"in {dataset.metadata_path.name}, e.g. \"file_name\": "
                                                 f"\"{dataset.records[0].file_name if len(dataset) else 'images/0001.jpg'}\"")
        elif not isinstance(fn, str) or not fn.strip():
            problems.row(line_no, "'file_name'", f"must be a non-empty string, got {_type_name(fn)} {_q(fn)}; write "
                                                 f"the image path as in {dataset.metadata_path.name}")
        elif _is_absolute(fn):
            problems.row(line_no, "'file_name'", f"{_q(fn)} is an absolute path; write it relative to the dataset "
                                                 f"folder {dataset.root}, as in {dataset.metadata_path.name}")
        else:
            key = posixpath.normpath(fn)
            if key in seen:
                problems.row(line_no, "'file_name'", f"{_q(fn)} is also on line {seen[key]}; give each image one row "
                                                     "with all its boxes")
                continue
            seen[key] = line_no
            record = by_name.get(key)
            if record is None:
                if other_names is None:
                    other_names = _folder_file_names(dataset.metadata_path)
                if key in other_names:
                    continue  # an image of another split: not needed here
                close = ""
                if n_suggested < 20:
                    n_suggested += 1
                    if guesses is None:
                        guesses = _name_guesses(by_name)
                    guess = _guess_name(key, guesses)
                    close = f" (did you mean {guess!r}?)" if guess else ""
                problems.row(line_no, "'file_name'", f"{_q(fn)} is not an image of the dataset {dataset.root} "
                                                     f"({dataset.metadata_path.name}){close}; fix the path (relative "
                                                     "to the dataset folder, as in its metadata) or remove the row")
        raw_boxes = obj.get("boxes")
        if raw_boxes is None:
            problems.row(line_no, "'boxes'", f"missing{hint.get('boxes', '')}; add the image's regions as "
                                             "\"boxes\": [[x0, y0, x1, y1], ...] in pixels")
            continue
        if not isinstance(raw_boxes, list):
            problems.row(line_no, "'boxes'", f"must be a list of [x0, y0, x1, y1] pixel boxes, got "
                                             f"{_type_name(raw_boxes)} {_q(raw_boxes)}; write e.g. [[0, 0, 28, 28]]")
            continue
        if not raw_boxes:
            whole = f"[0, 0, {record.width}, {record.height}]" if record is not None else "[0, 0, W, H]"
            problems.row(line_no, "'boxes'", f"is an empty list, so the image would have no region; give at least one "
                                             f"box, e.g. the whole image {whole} if the detector found nothing")
            continue
        boxes, _ = _parse_boxes(raw_boxes, line_no, problems)
        if record is None or boxes is None:
            continue
        row = _Row(line=line_no, file_name=fn, path=record.path, boxes=boxes, present=frozenset({"boxes"}),
                   width=record.width, height=record.height)
        n_before = len(problems.items)
        _finish_boxes(row, DEFAULT_GRID, problems)
        if len(problems.items) == n_before and len(row.boxes) == len(raw_boxes):
            out[posixpath.normpath(fn)] = tuple(row.boxes)
    missing = [r for key, r in by_name.items() if key not in seen]
    for r in missing:
        problems.file_level(f"no row for image {_q(r.file_name)} ({dataset.metadata_path.name} line {r.line}); every "
                            f"image needs its regions: add {{\"file_name\": {_q(r.file_name)}, \"boxes\": [[0, 0, "
                            f"{r.width}, {r.height}]]}} (the whole image) if the detector found nothing")
    if problems:
        raise DatasetValidationError(problems.items, where)
    logger.debug("read proposals for %d image(s) from %s", len(out), p)
    return out


def _name_guesses(by_name: dict[str, ImageRecord]) -> dict[str, dict[str, str]]:
    """Lookup tables for confident file-name guesses (never "close" numbered names: 0009 is not 0004)."""
    tables: dict[str, dict[str, list[str]]] = {"lower": {}, "base": {}, "stem": {}}
    for key, r in by_name.items():
        base = posixpath.basename(key)
        tables["lower"].setdefault(key.lower(), []).append(r.file_name)
        tables["base"].setdefault(base.lower(), []).append(r.file_name)
        tables["stem"].setdefault(posixpath.splitext(key)[0].lower(), []).append(r.file_name)
    return {k: {n: v[0] for n, v in t.items() if len(v) == 1} for k, t in tables.items()}


def _guess_name(key: str, guesses: dict[str, dict[str, str]]) -> str | None:
    """The dataset name ``key`` most likely means: other letter case, other folder, or other extension."""
    low = key.lower()
    return (guesses["lower"].get(low) or guesses["base"].get(posixpath.basename(low))
            or guesses["stem"].get(posixpath.splitext(low)[0]))


def _folder_file_names(metadata_path: Path) -> set[str]:
    """Normalised ``file_name`` of every row of a ``metadata.jsonl`` (rows that do not parse are skipped)."""
    names = set()
    try:
        lines = metadata_path.read_bytes().split(b"\n")
    except OSError:
        return names
    for raw in lines:
        try:
            fn = json.loads(raw).get("file_name")
        except (ValueError, AttributeError):
            continue
        if isinstance(fn, str):
            names.add(posixpath.normpath(fn))
    return names


# --------------------------------------------------------------------------------------------
# Ground truth: IoU inheritance
# --------------------------------------------------------------------------------------------

def box_iou(a: Sequence[Sequence[float]] | np.ndarray, b: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Intersection over union of every pair of boxes.

    Args:
        a: ``[P, 4]`` ``(x0, y0, x1, y1)`` boxes.
        b: ``[A, 4]`` boxes.

    Returns:
        ``[P, A]`` float64 IoU in [0, 1] (0 where both boxes are empty).
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]).clip(0) * (a[:, 3] - a[:, 1]).clip(0)
    area_b = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def inherit_attributes(proposals: Sequence[Sequence[float]] | np.ndarray,
                       annotated: Sequence[Sequence[float]] | np.ndarray, attributes: Sequence[str], *,
                       iou_threshold: float = DEFAULT_IOU_THRESHOLD, empty: str = EMPTY_ATTRIBUTE) -> list[str]:
    """The ground-truth attribute of each proposal, from the annotated region it overlaps most.

    Args:
        proposals: ``[P, 4]`` boxes of the region source.
        annotated: ``[A, 4]`` annotated boxes.
        attributes: ``[A]`` attribute of each annotated box.
        iou_threshold: IoU a proposal needs with its best annotated box to inherit its attribute.
        empty: Attribute of a proposal that matches no annotated box.

    Returns:
        ``[P]`` attributes: the attribute of the annotated box with the highest IoU (the first
        one on ties) when that IoU is at least ``iou_threshold``, else ``empty``.

    Example:
        >>> inherit_attributes([[0, 0, 10, 10], [0, 0, 4, 4]], [[0, 0, 10, 8]], ["dog"])
        ['dog', 'empty']
    """
    iou_threshold = check_float(iou_threshold, "iou_threshold", "inherit_attributes", low=0.0, high=1.0,
                                closed="right")
    attributes = list(attributes)
    iou = box_iou(proposals, annotated)
    if iou.shape[1] != len(attributes):
        raise InvalidParameterError(f"inherit_attributes needs one attribute per annotated box: {iou.shape[1]} boxes, "
                         f"{len(attributes)} attributes.")
    if iou.shape[1] == 0:
        return [empty] * iou.shape[0]
    best = iou.argmax(axis=1)
    best_iou = iou[np.arange(iou.shape[0]), best]
    return [attributes[j] if v >= iou_threshold else empty for j, v in zip(best, best_iou)]


# --------------------------------------------------------------------------------------------
# Dataset views
# --------------------------------------------------------------------------------------------

class SourcedRegionDataset(RegionDataset):
    """A :class:`~ravl.data.RegionDataset` whose regions come from a region source.

    It is a plain ``RegionDataset`` for every consumer (``region_table()``, ``records``,
    ``embed_regions``, discovery); :attr:`region_source` records the canonical spec, for
    ``discovery.json``. :meth:`subset` (and slicing) keeps it.

    Args:
        root: The dataset folder.
        records: The images, with the source's boxes.
        classes: Class names, in order.
        grid: The loader's grid (kept for reloading).
        metadata_path: The metadata file the records came from.
        region_source: Canonical spec of the source.
    """

    __slots__ = ("_region_source",)

    def __init__(self, root: str | os.PathLike, records, classes: Sequence[str], grid: tuple[int, int] = DEFAULT_GRID,
                 *, metadata_path: str | os.PathLike | None = None, region_source: str = "boxes"):
        super().__init__(root, records, classes, grid, metadata_path=metadata_path)
        self._region_source = str(region_source)

    @property
    def region_source(self) -> str:
        """Canonical spec of the region source, e.g. ``'grid:3x3'``."""
        return self._region_source

    def _derive(self, records, classes: Sequence[str]) -> SourcedRegionDataset:
        """Subsets and re-indexed views keep the region source."""
        return SourcedRegionDataset(self.root, records, classes, self.grid, metadata_path=self.metadata_path,
                                    region_source=self._region_source)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", region_source={self._region_source!r})"


def with_region_source(dataset: RegionDataset, source: str | RegionSource, *,
                       iou_threshold: float = DEFAULT_IOU_THRESHOLD, cache_dir: str | os.PathLike | None = None,
                       cache: bool = True, cache_key: str = "content", workers: int | None = None,
                       progress: bool = True) -> SourcedRegionDataset:
    """A view of ``dataset`` whose regions come from ``source``, with inherited ground truth.

    Each image keeps everything but its regions: ``boxes`` become the source's boxes (see
    :func:`region_boxes`); ``region_attributes``, when the image has them, are inherited from the
    dataset's own regions by IoU (:func:`inherit_attributes`), else stay None. ``boxes_from_grid``
    is True only for the ``grid`` source (and for ``boxes`` where it was). The dataset is not
    changed and nothing is written but the superpixel cache. Apply it to a dataset from
    :func:`~ravl.data.load_dataset` (or a split of one), not to another view.

    Args:
        dataset: The dataset (or split) to decompose.
        source: A spec string or :class:`RegionSource`.
        iou_threshold: IoU needed to inherit an annotated region's attribute.
        cache_dir: See :func:`region_boxes`.
        cache: See :func:`region_boxes`.
        cache_key: See :func:`region_boxes`.
        workers: See :func:`region_boxes`.
        progress: See :func:`region_boxes`.

    Returns:
        A :class:`SourcedRegionDataset` with the same images, classes and order.

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> from ravl.data import load_dataset, write_metadata
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> Image.new("RGB", (60, 60)).save(root / "a.png")
        >>> _ = write_metadata(root, [{"file_name": "a.png", "label": "dog", "boxes": [[0, 0, 30, 30]],
        ...                            "region_attributes": ["dog"]}])
        >>> view = with_region_source(load_dataset(root), "grid:2x2")
        >>> view.region_source, view[0].region_attributes
        ('grid:2x2', ('dog', 'empty', 'empty', 'empty'))
    """
    src = parse_region_source(source)
    iou_threshold = check_float(iou_threshold, "iou_threshold", "with_region_source", low=0.0, high=1.0,
                                closed="right")
    if isinstance(dataset, SourcedRegionDataset) and dataset.region_source != "boxes":
        raise InvalidParameterError("with_region_source takes the dataset from load_dataset, not a view whose regions "
                                    "already "
                         f"come from {dataset.region_source!r}: its region_attributes would be inherited from those "
                         "regions instead of the annotated ones.")
    boxes = region_boxes(dataset, src, cache_dir=cache_dir, cache=cache, cache_key=cache_key, workers=workers,
                         progress=progress)
    records = []
    for r, b in zip(dataset.records, boxes):
        if src.kind == "boxes":
            records.append(r)
            continue
        attrs = None
        if r.region_attributes is not None:
            attrs = tuple(inherit_attributes(b, r.boxes, r.region_attributes, iou_threshold=iou_threshold))
        records.append(dataclasses.replace(r, boxes=tuple(b), boxes_from_grid=src.kind == "grid",
                                           region_attributes=attrs))
    view = SourcedRegionDataset(dataset.root, records, dataset.classes, dataset.grid,
                                metadata_path=dataset.metadata_path, region_source=src.spec)
    if src.kind != "boxes":
        n = sum(len(b) for b in boxes)
        logger.info("Region source %s: %d region(s) on %d image(s) (%.1f per image).", src.spec, n, len(records),
                    n / max(1, len(records)))
    return view
