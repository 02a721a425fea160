"""Object manipulation of images and captions: remove a region's object, paste one from another image.

Used to build object-decorrelation query sets (ODmAP@k, :mod:`ravl.retrieval.odmap`) and
decorrelating training pairs. Pure numpy and PIL (no OpenCV):

* :func:`fill_region` fills a box from the pixels around it: ``"ring"`` paints the mean colour of a
  ring of pixels just outside the box; ``"diffuse"`` solves Laplace's equation inside the box with
  the surrounding pixels as the boundary (Jacobi iterations started from the ring mean), a smooth
  blend of the borders. Pixels outside the box are never changed.
* :func:`paste_object` copies a box of one image into a box of another (resized to fit).
* :func:`remove_mention` / :func:`add_mention` edit a caption to match.
* :func:`manipulate_dataset` writes a manipulated copy of a dataset split as a new dataset folder,
  recording in each row's ``manipulation`` what was removed or added and where it came from.

Boxes are ``[x0, y0, x1, y1]`` pixels, as in ``metadata.jsonl``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ravl.data.attributes import EMPTY_ATTRIBUTE
from ravl.data.dataset import RegionDataset, check_dataset, metadata_rows, write_metadata
from ravl.exceptions import DatasetError, InvalidParameterError
from ravl.utils.io import atomic_write_json
from ravl.utils.progress import progress as progress_bar
from ravl.utils.validation import check_choice, check_int, check_random_state

__all__ = [
    "FILL_METHODS",
    "OPERATIONS",
    "MANIPULATION_KEY",
    "RECORD_FILE",
    "ManipulatedSet",
    "object_words",
    "fill_region",
    "remove_object",
    "paste_object",
    "remove_mention",
    "add_mention",
    "manipulate_dataset",
]

#: Ways :func:`fill_region` fills a box.
FILL_METHODS = ("ring", "diffuse")
#: Operations of :func:`manipulate_dataset`.
OPERATIONS = ("remove", "paste")
#: Row key recording a manipulation in ``metadata.jsonl``.
MANIPULATION_KEY = "manipulation"
#: File of the new folder recording the whole :func:`manipulate_dataset` run.
RECORD_FILE = "manipulation.json"

_CONNECTORS = r"with|and|next\s+to|beside|near|plus|holding|on|in|of"
_DETERMINERS = r"a|an|the|one|two|three|four|some|several|many"


def _pixel_box(box: Sequence[float], width: int, height: int, caller: str) -> tuple[int, int, int, int]:
    if len(box) != 4:
        raise InvalidParameterError(f"The 'box' parameter of {caller} must be [x0, y0, x1, y1]. Got {list(box)!r}.")
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
    if x1 <= x0 or y1 <= y0:
        raise InvalidParameterError(f"The 'box' parameter of {caller} must cover pixels of the {width}x{height} "
                                    f"image (x0<x1, y0<y1). Got {list(box)!r}.")
    return x0, y0, x1, y1


def object_words(attribute: str) -> str:
    """The words a caption uses for a region attribute (``"red_square"`` -> ``"red square"``)."""
    return " ".join(str(attribute).replace("_", " ").split())


def fill_region(pixels: np.ndarray, box: Sequence[float], *, method: str = "ring", ring: int = 2,
                iterations: int = 300) -> np.ndarray:
    """A copy of ``pixels`` with ``box`` filled from the surrounding pixels.

    Args:
        pixels: ``[H, W, 3]`` (or ``[H, W]``) image array.
        box: ``[x0, y0, x1, y1]`` pixels (clipped to the image).
        method: ``"ring"`` (mean of the ring) or ``"diffuse"`` (Laplace fill).
        ring: Width in pixels of the ring outside the box whose pixels are the fill's source.
        iterations: Jacobi iterations of ``"diffuse"``.

    Returns:
        An array of the same shape and dtype; only pixels inside the box differ.

    Raises:
        InvalidParameterError: A bad box or parameter, or a box covering the whole image (nothing
            around it to fill from).
    """
    caller = "fill_region"
    check_choice(method, "method", caller, FILL_METHODS)
    ring = check_int(ring, "ring", caller, low=1)
    iterations = check_int(iterations, "iterations", caller, low=0)
    a = np.asarray(pixels)
    if a.ndim not in (2, 3):
        raise InvalidParameterError(f"The 'pixels' parameter of {caller} must be an [H, W, 3] or [H, W] array. Got "
                                    f"shape {a.shape}.")
    h, w = a.shape[:2]
    x0, y0, x1, y1 = _pixel_box(box, w, h, caller)
    work = a.astype(np.float64).reshape(h, w, -1)
    inside = np.zeros((h, w), dtype=bool)
    inside[y0:y1, x0:x1] = True
    around = np.zeros((h, w), dtype=bool)
    around[max(0, y0 - ring):y1 + ring, max(0, x0 - ring):x1 + ring] = True
    around &= ~inside
    if not around.any():
        raise InvalidParameterError(f"{caller}: the box {list(box)!r} covers the whole {w}x{h} image; there are no "
                                    "pixels around it to fill from.")
    fill = work[around].mean(axis=0)
    out = work.copy()
    out[inside] = fill
    if method == "diffuse" and iterations:
        # Jacobi iterations of Laplace's equation inside the box; outside pixels stay fixed
        ys, xs = slice(y0, y1), slice(x0, x1)
        padded = np.pad(out, ((1, 1), (1, 1), (0, 0)), mode="edge")
        inner = (slice(y0 + 1, y1 + 1), slice(x0 + 1, x1 + 1))
        for _ in range(iterations):
            avg = (padded[y0:y1, x0 + 1:x1 + 1] + padded[y0 + 2:y1 + 2, x0 + 1:x1 + 1]
                   + padded[y0 + 1:y1 + 1, x0:x1] + padded[y0 + 1:y1 + 1, x0 + 2:x1 + 2]) / 4.0
            padded[inner] = avg
        out[ys, xs] = padded[inner]
    out = out.reshape(a.shape)
    if np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    result = out.astype(a.dtype)
    result[~inside.reshape(h, w)] = a[~inside.reshape(h, w)]  # bit-identical outside the box
    return result


def remove_object(image: Image.Image, box: Sequence[float], *, method: str = "ring") -> Image.Image:
    """``image`` (RGB) with the object in ``box`` filled from its surroundings (:func:`fill_region`)."""
    return Image.fromarray(fill_region(np.asarray(image.convert("RGB")), box, method=method))


def paste_object(image: Image.Image, source: Image.Image, source_box: Sequence[float],
                 box: Sequence[float]) -> Image.Image:
    """``image`` (RGB) with ``source``'s ``source_box`` crop pasted into ``box`` (resized to fit).

    Pixels outside ``box`` are unchanged.
    """
    dst = image.convert("RGB").copy()
    sx0, sy0, sx1, sy1 = _pixel_box(source_box, source.width, source.height, "paste_object")
    x0, y0, x1, y1 = _pixel_box(box, dst.width, dst.height, "paste_object")
    crop = source.convert("RGB").crop((sx0, sy0, sx1, sy1))
    if crop.size != (x1 - x0, y1 - y0):
        crop = crop.resize((x1 - x0, y1 - y0), Image.BILINEAR)
    dst.paste(crop, (x0, y0))
    return dst


def _words_pattern(words: str | Sequence[str]) -> str:
    items = [words] if isinstance(words, str) else list(words)
    items = [object_words(w) for w in items if isinstance(w, str) and w.strip()]
    if not items:
        raise InvalidParameterError(f"An object name is needed to edit a caption; got {words!r}.")
    return "|".join(r"\s+".join(map(re.escape, w.split())) for w in sorted(items, key=len, reverse=True))


def remove_mention(caption: str, words: str | Sequence[str]) -> str:
    """``caption`` without its mention of the object ``words`` (a name, or a name and synonyms).

    A mention is the name (optionally plural) with a preceding connector ("with", "and", ...) and
    determiner ("a", "the", "two", ...) when present; dangling connectors and punctuation are
    tidied. A caption without a mention comes back unchanged.

    Example:
        >>> remove_mention("a dog with a frisbee on the grass", "frisbee")
        'a dog on the grass'
        >>> remove_mention("the number is a nine with a red square and a ring", "red_square")
        'the number is a nine with a ring'
    """
    names = _words_pattern(words)
    pat = re.compile(rf"(?:\b(?P<conn>{_CONNECTORS})\s+)?(?:\b(?:{_DETERMINERS})\s+)?\b(?:{names})(?:e?s)?\b"
                     rf"(?P<next>\s+and\b)?", re.I)
    if not pat.search(caption):
        return caption

    def _cut(m: re.Match) -> str:
        # "with a A and a B" without A is "with a B" (not "and a B"): keep the connector that
        # introduced the mention when an "and" continued the list after it
        if m.group("next") and m.group("conn"):
            return f" {m.group('conn')} "
        return " " + (m.group("next") or "") + " "

    text = pat.sub(_cut, caption)
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(rf"^(?:(?:{_CONNECTORS})\b[\s,]*)+", "", text, flags=re.I)
    # a connector left dangling at the end ("a dog playing with"); never a determiner: "a four" ends
    # in one ("the image shows a four with a frisbee" keeps its "a four")
    text = re.sub(rf"(?:[\s,]*\b(?:{_CONNECTORS}))+\s*([.!?]?)$", r"\1", text, flags=re.I)
    text = re.sub(r"^[\s,;:]+|[\s,;:]+$", "", text)
    return text


def add_mention(caption: str, words: str) -> str:
    """``caption`` that also names the object ``words`` ("... with a red square", or "and a" when
    the caption already has a "with")."""
    phrase = object_words(words)
    base = caption.rstrip().rstrip(".")
    joiner = "and" if re.search(r"\bwith\b", base, re.I) else "with"
    article = "an" if phrase[:1].lower() in "aeiou" else "a"
    return f"{base} {joiner} {article} {phrase}"


@dataclass(frozen=True)
class ManipulatedSet:
    """What :func:`manipulate_dataset` wrote.

    Attributes:
        out_dir: The new dataset folder.
        operation: ``"remove"`` or ``"paste"``.
        object: The region attribute removed or pasted.
        n_images: Rows written (one per manipulated image).
        n_skipped: Images of the split that could not be manipulated (no such object to remove, or
            no empty region / no donor to paste into).
    """

    out_dir: Path
    operation: str
    object: str
    n_images: int
    n_skipped: int

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "operation": self.operation, "object": self.object,
                "n_images": self.n_images, "n_skipped": self.n_skipped}


def _box_json(box: Sequence[float]) -> list[float | int]:
    return [int(v) if float(v).is_integer() else float(v) for v in box]




def manipulate_dataset(dataset: RegionDataset, out_dir: str | os.PathLike, *, object: str,
                       operation: str = "remove", split: str | None = None, method: str = "ring",
                       words: Sequence[str] | None = None, random_state=0, progress: bool = True) -> ManipulatedSet:
    """Write a manipulated copy of ``dataset``'s images as a new dataset folder.

    * ``operation="remove"``: every image showing ``object`` (a region attribute) gets each such
      region filled from its surroundings (:func:`fill_region`), the region's attribute becomes
      ``"empty"`` and the mention leaves every caption (:func:`remove_mention`).
    * ``operation="paste"``: every image without ``object`` and with an empty region gets a crop of
      ``object`` from a donor image (drawn with ``random_state``) pasted into one empty region
      (drawn too), the attribute set to ``object`` and the mention added (:func:`add_mention`).

    Each row keeps ``label``, ``split`` and ``boxes``, and records under ``manipulation``:
    ``op``, ``object``, ``words``, ``source_file`` (the original image, relative to its folder),
    ``source_dir``, ``boxes`` (where pixels changed), ``fill`` or ``donor_file`` / ``donor_box``,
    and ``caption_before``. ``out_dir/manipulation.json`` (:data:`RECORD_FILE`) records the run:
    the :class:`ManipulatedSet` fields, ``words``, ``source_dir``, ``splits`` (of the images written), ``fill``,
    ``random_state`` and, per written image, its ``source_file``, changed ``boxes`` (and
    ``donor_file``).

    Args:
        dataset: A :class:`~ravl.data.RegionDataset` with ``region_attributes``.
        out_dir: The new folder (``metadata.jsonl`` + ``images/``; must not hold a dataset yet).
        object: The region attribute to remove or paste.
        operation: ``"remove"`` or ``"paste"``.
        split: Only this split (``None``: every row).
        method: Fill of ``"remove"``: ``"ring"`` or ``"diffuse"``.
        words: The caption words of the object (default: the attribute, ``_`` as spaces).
        random_state: Seed of the donor and region draws of ``"paste"``.
        progress: Show a progress bar.

    Returns:
        A :class:`ManipulatedSet`.

    Raises:
        DatasetError: Rows without ``region_attributes``, no image to manipulate, or an
            ``out_dir`` that already holds a dataset.
    """
    caller = "manipulate_dataset"
    ds = check_dataset(dataset, caller)
    check_choice(operation, "operation", caller, OPERATIONS)
    check_choice(method, "method", caller, FILL_METHODS)
    if not isinstance(object, str) or not object:
        raise InvalidParameterError(f"The 'object' parameter of {caller} must be a region attribute name. Got "
                                    f"{object!r}.")
    rng = check_random_state(random_state)
    names = list(words) if words else [object_words(object)]
    if split is not None:
        ds = ds.subset(split)
    missing = [r for r in ds if r.region_attributes is None]
    if missing:
        raise DatasetError(f"{ds.metadata_path.name} line {missing[0].line} ({missing[0].file_name}) has no "
                           f"'region_attributes'; {caller} needs them to find the {object!r} regions. Add a "
                           "'region_attributes' list (one name per box) to every row.")
    out = Path(out_dir)
    if (out / "metadata.jsonl").exists():
        raise DatasetError(f"{out} already holds a dataset (metadata.jsonl); choose a new folder.")
    rows = metadata_rows(ds)
    with_obj = [r for r in ds if object in r.region_attributes]
    todo = with_obj if operation == "remove" else [
        r for r in ds if object not in r.region_attributes and EMPTY_ATTRIBUTE in r.region_attributes]
    if not todo or (operation == "paste" and not with_obj):
        what = "shows" if operation == "remove" else "lacks (with an empty region, and a donor that shows)"
        raise DatasetError(f"No image of {ds.root}{' split ' + repr(split) if split else ''} {what} {object!r}; "
                           f"nothing to {operation}.")
    (out / "images").mkdir(parents=True, exist_ok=True)
    meta = []
    width = max(5, len(str(len(todo) - 1)))
    bar = progress_bar(total=len(todo), desc=f"{operation} {object}", disable=None if progress else True)
    for n, r in enumerate(todo):
        row = rows[r.line]
        attrs = list(r.region_attributes)
        img = ds.load_image(r.index) if hasattr(ds, "load_image") else Image.open(r.path)
        caps = [r.caption] + [c for c in (row.get("captions") or []) if isinstance(c, str)]
        record: dict[str, Any] = {"op": operation, "object": object, "words": names, "source_file": r.file_name,
                                  "source_dir": str(ds.root), "caption_before": r.caption}
        if operation == "remove":
            changed = [_box_json(r.boxes[j]) for j, a in enumerate(attrs) if a == object]
            for box in changed:
                img = remove_object(img, box, method=method)
            attrs = [EMPTY_ATTRIBUTE if a == object else a for a in attrs]
            new_caps = [remove_mention(c, names) if c else c for c in caps]
            record.update(boxes=changed, fill=method)
        else:
            donor = with_obj[int(rng.integers(len(with_obj)))]
            d_box = donor.boxes[donor.region_attributes.index(object)]
            empties = [j for j, a in enumerate(attrs) if a == EMPTY_ATTRIBUTE]
            j = empties[int(rng.integers(len(empties)))]
            img = paste_object(img, Image.open(donor.path), d_box, r.boxes[j])
            attrs[j] = object
            new_caps = [add_mention(c, names[0]) if c else c for c in caps]
            record.update(boxes=[_box_json(r.boxes[j])], donor_file=donor.file_name, donor_box=_box_json(d_box))
        fn = f"images/{n:0{width}d}.png"
        img.save(out / fn)
        new = {"file_name": fn, "boxes": [_box_json(b) for b in r.boxes], "region_attributes": attrs,
               MANIPULATION_KEY: record}
        if new_caps and new_caps[0]:
            new["caption"] = new_caps[0]
        if len(new_caps) > 1:
            new["captions"] = new_caps[1:]
        for key in ("label", "split"):
            if getattr(r, key) is not None:
                new[key] = getattr(r, key)
        meta.append(new)
        bar.update(1)
    bar.close()
    write_metadata(out, meta)
    if (ds.root / "classes.txt").is_file():
        (out / "classes.txt").write_text((ds.root / "classes.txt").read_text(encoding="utf-8"), encoding="utf-8")
    res = ManipulatedSet(out_dir=out, operation=operation, object=object, n_images=len(meta),
                         n_skipped=len(ds) - len(meta))
    atomic_write_json(out / RECORD_FILE, {
        **res.to_dict(), "words": names, "source_dir": str(ds.root),
        "splits": sorted({str(r.split) for r in todo if r.split is not None}),
        "fill": method if operation == "remove" else None,
        "random_state": random_state if isinstance(random_state, (int, type(None))) else repr(random_state),
        "images": [{"file_name": m["file_name"], "source_file": m[MANIPULATION_KEY]["source_file"],
                    "boxes": m[MANIPULATION_KEY]["boxes"],
                    **({"donor_file": m[MANIPULATION_KEY]["donor_file"]} if operation == "paste" else {})}
                   for m in meta]})
    return res
