"""COCO import: an instances file (+ captions file) and its images become a ravl dataset folder.

:func:`convert_coco` reads a COCO ``instances_*.json`` (and optionally ``captions_*.json``),
validates it (every problem collected, each naming the file, the JSON path of the entry, its id
and the field, with the fix), and writes ravl's dataset format (docs/dataset-format.md):

- ``metadata.jsonl``: one row per kept image: ``file_name`` (``images/<COCO file_name>``),
  ``caption``, ``label``, ``split``, ``boxes`` (every annotation of the image, in annotation-id
  order, COCO ``[x, y, w, h]`` turned into ``[x0, y0, x1, y1]`` and clipped to the image),
  ``region_attributes`` (the category name of each box) and, as bookkeeping ravl never reads,
  ``coco_id`` (the COCO image id) and ``coco_captions`` (all of the image's captions, when it has
  more than one).
- ``classes.txt``: the ``label_categories``, in the order given.
- ``images/``: the images, **hard-linked** by default (no extra disk space; the folder is
  self-contained and survives deleting or moving the COCO folder), falling back to a copy when
  the two folders are on different file systems or links are not allowed (logged once);
  ``images="copy"`` always copies, ``images="symlink"`` writes absolute symbolic links (the COCO
  folder must then stay where it is).
- ``coco.json``: what was converted, from which files, and the counts of :class:`CocoConversion`.

Rules (decisions documented here and in docs/coco.md):

- **Label**: an image's label is the one ``label_categories`` category it contains. Images with
  none of them, or with several, are skipped and counted.
- **Captions**: ``metadata.jsonl`` has one caption per row, so each image gets one caption: the
  one with the lowest caption-annotation id (``caption="first"``, deterministic) or one drawn at
  random with the seed (``caption="random"``); the rest are kept in ``coco_captions``. Captions
  are stripped of surrounding white space and inner runs of white space.
- **Crowd annotations** (``iscrowd: 1``; their box covers a group of objects): ``crowd="keep"``
  (default) writes them like any box (the region does show the category) and they count for the
  label; ``"ignore"`` drops them entirely (boxes and label); ``"skip_image"`` skips every image
  that has one (counted).
- **Boxes**: a bbox must be 4 finite numbers with ``w >= 0`` and ``h >= 0`` that overlaps the
  image, else it is a problem. A box sticking out of the image is clipped (counted); a box
  narrower or lower than ``min_box_size`` pixels after clipping is dropped (counted; COCO has a
  few sub-pixel boxes). An image left without any box is skipped (counted).
- **Images**: only the images that are kept are looked for on disk: a missing file, an unreadable
  one, or one whose size differs from the JSON's ``width``/``height`` is a problem.

Example:
    >>> summary = convert_coco("annotations/instances_val2017.json", "val2017", "coco-val",
    ...                        captions_json="annotations/captions_val2017.json",
    ...                        label_categories=["cat", "dog"], split="test")  # doctest: +SKIP
    >>> print(summary.summary())  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import posixpath
import shutil
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ravl.data.dataset import (
    METADATA_FILE,
    SPLITS,
    _exc_text,
    _is_absolute,
    _list_names,
    _missing_file_hint,
    _q,
    _suggest,
    _type_name,
    write_classes,
    write_metadata,
)
from ravl.exceptions import DatasetError, DatasetValidationError, InvalidParameterError
from ravl.utils.io import atomic_write_json, atomic_write_text
from ravl.utils.outputs import locks_output
from ravl.utils.progress import progress as progress_bar
from ravl.utils.validation import check_choice, check_float, check_random_state

__all__ = ["CocoConversion", "convert_coco", "read_coco_instances", "IMAGE_MODES", "CONVERSION_FILE"]

logger = logging.getLogger(__name__)

#: How :func:`convert_coco` puts the images into the dataset folder.
IMAGE_MODES = ("hardlink", "copy", "symlink")
#: Record of a conversion, written next to ``metadata.jsonl``.
CONVERSION_FILE = "coco.json"
_MARKER = ".ravl-coco"
_CALLER = "convert_coco"
_MAX_SUGGESTIONS = 20


# --------------------------------------------------------------------------------------------
# Reading and validating COCO JSON
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Image:
    id: int
    file_name: str
    width: int
    height: int
    index: int


@dataclass(frozen=True)
class _Annotation:
    id: int
    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float]
    iscrowd: bool
    index: int


@dataclass(frozen=True)
class CocoInstances:
    """A validated COCO instances file.

    Attributes:
        path: The file.
        images: ``{image id: image}`` in file order.
        categories: ``{category id: name}`` in file order.
        annotations: Annotations sorted by id.
    """

    path: Path
    images: dict[int, _Image]
    categories: dict[int, str]
    annotations: tuple[_Annotation, ...]


class _JsonProblems:
    """Problem lines ``FILE PATH (id N), field 'F': what is wrong; fix``, in the order found."""

    def __init__(self, label: str):
        self.label = label
        self.items: list[str] = []

    def add(self, where: str | None, field: str | None, text: str) -> None:
        loc = self.label + (f" {where}" if where else "") + (f", field {field!r}" if field else "")
        self.items.append(f"{loc}: {text}")

    def __bool__(self) -> bool:
        return bool(self.items)


def _bad(v: Any, what: str) -> str:
    """The problem text for a value that is not ``what``: missing, or of the wrong type."""
    if v is None:
        return f"is missing; it must be {what}"
    return f"must be {what}, got {_type_name(v)} {_q(v)}"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _read_json_file(path: Path, what: str, problems: _JsonProblems) -> Any:
    if not path.exists():
        hint = ""
        if path.parent.is_dir():
            close = _suggest(path.name, sorted(p.name for p in path.parent.iterdir() if p.suffix == ".json"))
            hint = f" (did you mean {str(path.parent / close[0])!r}?)" if close else ""
        problems.add(None, None, f"not found{hint}; pass the path of the COCO {what} file")
        return None
    try:
        with open(path, "rb") as fh:
            return json.loads(fh.read().decode("utf-8-sig"))
    except json.JSONDecodeError as exc:
        problems.add(None, None, f"invalid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); it must be the "
                                 f"COCO {what} file as downloaded (one JSON object)")
    except (OSError, UnicodeDecodeError) as exc:
        problems.add(None, None, f"cannot be read ({_exc_text(exc)}); check the file")
    return None


def _entry_where(section: str, k: int, entry: Any) -> str:
    ident = entry.get("id") if isinstance(entry, dict) else None
    return f"{section}[{k}]" + (f" (id {ident})" if _is_int(ident) else "")


def _check_list(doc: dict, key: str, problems: _JsonProblems, hint: str) -> list:
    value = doc.get(key)
    if value is None:
        problems.add(None, key, f"missing; a COCO {hint}")
        return []
    if not isinstance(value, list):
        problems.add(None, key, f"must be a list, got {_type_name(value)}; a COCO {hint}")
        return []
    return value


def read_coco_instances(path: str | os.PathLike) -> CocoInstances:
    """Read and validate a COCO instances file (``instances_*.json``).

    Checked: the file is a JSON object with ``images``, ``annotations`` and ``categories`` lists;
    every image has an int ``id`` (unique), a relative ``file_name`` (unique) and positive int
    ``width`` and ``height``; every category an int ``id`` (unique) and a non-empty ``name``
    (unique); every annotation an int ``id`` (unique), an ``image_id`` and a ``category_id``
    that exist, a ``bbox`` of 4 finite numbers ``[x, y, w, h]`` with ``w, h >= 0`` overlapping the
    image, and ``iscrowd`` 0 or 1 when present.

    Args:
        path: The instances file.

    Returns:
        The validated contents.

    Raises:
        DatasetValidationError: With every problem found, each naming the file, the entry
            (JSON path and id) and the field.
    """
    path = Path(path).expanduser()
    problems = _JsonProblems(path.name)
    doc = _read_json_file(path, "instances (instances_*.json)", problems)
    if doc is not None and not isinstance(doc, dict):
        problems.add(None, None, f"must hold a JSON object {{\"images\": [...], \"annotations\": [...], "
                                 f"\"categories\": [...]}}, got {_type_name(doc)}")
        doc = None
    if doc is None:
        raise DatasetValidationError(problems.items, str(path))
    if "categories" not in doc and isinstance(doc.get("annotations"), list) and doc["annotations"] and \
            isinstance(doc["annotations"][0], dict) and "caption" in doc["annotations"][0]:
        problems.add(None, None, "looks like a COCO captions file (its annotations have 'caption'); pass it as "
                                 "captions_json and give the instances file (instances_*.json) as instances_json")
        raise DatasetValidationError(problems.items, str(path))
    raw_images = _check_list(doc, "images", problems, "instances file lists its images under \"images\"")
    raw_anns = _check_list(doc, "annotations", problems, "instances file lists its objects under \"annotations\"")
    raw_cats = _check_list(doc, "categories", problems, "instances file names its categories under \"categories\"")

    images: dict[int, _Image] = {}
    names: dict[str, int] = {}
    flawed_images: set[int] = set()  # ids of entries with problems: their annotations are not reported again
    flawed_categories: set[int] = set()
    for k, e in enumerate(raw_images):
        where = _entry_where("images", k, e)
        if not isinstance(e, dict):
            problems.add(where, None, _bad(e, "an object"))
            continue
        ok = True
        ident = e.get("id")
        if not _is_int(ident):
            problems.add(where, "id", _bad(ident, "an int"))
            ok = False
        elif ident in images:
            problems.add(where, "id", f"{ident} is also the id of images[{images[ident].index}]; image ids are unique")
            ok = False
        fn = e.get("file_name")
        if not isinstance(fn, str) or not fn.strip():
            problems.add(where, "file_name", _bad(fn, "a non-empty string"))
            ok = False
        elif _is_absolute(fn) or posixpath.normpath(fn.replace("\\", "/")).split("/")[0] == "..":
            problems.add(where, "file_name", f"{_q(fn)} must be relative to the images folder")
            ok = False
        elif posixpath.normpath(fn) in names:
            problems.add(where, "file_name", f"{_q(fn)} is also the file of images[{names[posixpath.normpath(fn)]}]")
            ok = False
        for dim in ("width", "height"):
            v = e.get(dim)
            if not _is_int(v) or v < 1:
                problems.add(where, dim, _bad(v, "a positive int (pixels)"))
                ok = False
        if ok:
            names[posixpath.normpath(fn)] = k
            images[ident] = _Image(ident, fn, e["width"], e["height"], k)
        elif _is_int(ident):
            flawed_images.add(ident)

    categories: dict[int, str] = {}
    cat_index: dict[int, int] = {}
    cat_names: dict[str, int] = {}
    for k, e in enumerate(raw_cats):
        where = _entry_where("categories", k, e)
        if not isinstance(e, dict):
            problems.add(where, None, _bad(e, "an object"))
            continue
        ident, name = e.get("id"), e.get("name")
        ok = True
        if not _is_int(ident):
            problems.add(where, "id", _bad(ident, "an int"))
            ok = False
        elif ident in categories:
            problems.add(where, "id", f"{ident} is also the id of categories[{cat_index[ident]}]; category ids are "
                                      "unique")
            ok = False
        if not isinstance(name, str) or not name.strip():
            problems.add(where, "name", _bad(name, "a non-empty string"))
            ok = False
        elif name.strip() in cat_names:
            problems.add(where, "name", f"{_q(name)} is also the name of categories[{cat_names[name.strip()]}]; "
                                        "category names are unique")
            ok = False
        elif name != name.strip() or "\n" in name:
            problems.add(where, "name", f"{_q(name)} has surrounding or line-break white space; category names "
                                        "become class names and region attributes")
            ok = False
        if ok:
            categories[ident] = name
            cat_index[ident] = k
            cat_names[name] = k
        elif _is_int(ident):
            flawed_categories.add(ident)

    annotations: list[_Annotation] = []
    ann_index: dict[int, int] = {}
    for k, e in enumerate(raw_anns):
        where = _entry_where("annotations", k, e)
        if not isinstance(e, dict):
            problems.add(where, None, _bad(e, "an object"))
            continue
        ok = True
        ident = e.get("id")
        if not _is_int(ident):
            problems.add(where, "id", _bad(ident, "an int"))
            ok = False
        elif ident in ann_index:
            problems.add(where, "id", f"{ident} is also the id of annotations[{ann_index[ident]}]; annotation ids "
                                      "are unique")
            ok = False
        image_id, cat_id = e.get("image_id"), e.get("category_id")
        image = None
        if not _is_int(image_id):
            problems.add(where, "image_id", _bad(image_id, "an int"))
            ok = False
        elif image_id not in images:
            if image_id not in flawed_images:
                problems.add(where, "image_id", f"{image_id} is not the id of any entry of \"images\"; fix the id or "
                                                "add the image")
            ok = False
        else:
            image = images[image_id]
        if not _is_int(cat_id):
            problems.add(where, "category_id", _bad(cat_id, "an int"))
            ok = False
        elif cat_id in flawed_categories:
            ok = False
        elif cat_id not in categories and raw_cats:
            known = ", ".join(str(c) for c in list(categories)[:10]) + (", ..." if len(categories) > 10 else "")
            problems.add(where, "category_id", f"{cat_id} is not the id of any entry of \"categories\" ({known}); "
                                               "fix the id or add the category")
            ok = False
        crowd = e.get("iscrowd", 0)
        if not (_is_int(crowd) and crowd in (0, 1)):
            problems.add(where, "iscrowd", f"must be 0 or 1, got {_q(crowd)}")
            ok = False
        box = e.get("bbox")
        bbox = None
        if not isinstance(box, list) or len(box) != 4:
            problems.add(where, "bbox", f"must be [x, y, width, height] (4 numbers, pixels), got {_type_name(box)} "
                                        f"{_q(box)}")
            ok = False
        elif not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box):
            bad = next(v for v in box if not (isinstance(v, (int, float)) and not isinstance(v, bool)
                                              and math.isfinite(v)))
            problems.add(where, "bbox", f"{_q(box)} has {_q(bad)}, which is not a finite number; write [x, y, width, "
                                        "height] in pixels")
            ok = False
        else:
            x, y, w, h = (float(v) for v in box)
            if w < 0 or h < 0:
                problems.add(where, "bbox", f"{_q(box)} has a negative {'width' if w < 0 else 'height'}; COCO boxes "
                                            "are [x, y, width, height] with width, height >= 0")
                ok = False
            elif image is not None and (x >= image.width or y >= image.height or x + w <= 0 or y + h <= 0):
                problems.add(where, "bbox", f"{_q(box)} lies outside its {image.width}x{image.height} image "
                                            f"(images[{image.index}], id {image.id}); fix the box or the image size")
                ok = False
            bbox = (x, y, w, h)
        if ok:
            ann_index[ident] = k
            annotations.append(_Annotation(ident, image_id, cat_id, bbox, bool(crowd), k))
    if problems:
        raise DatasetValidationError(problems.items, str(path))
    annotations.sort(key=lambda a: a.id)
    return CocoInstances(path=path, images=images, categories=categories, annotations=tuple(annotations))


def _read_captions(path: Path, images: dict[int, _Image], instances_name: str) -> dict[int, list[tuple[int, str]]]:
    """``{image id: [(caption id, caption), ...] sorted by id}`` from a COCO captions file."""
    problems = _JsonProblems(path.name)
    doc = _read_json_file(path, "captions (captions_*.json)", problems)
    if doc is not None and not isinstance(doc, dict):
        problems.add(None, None, f"must hold a JSON object {{\"annotations\": [...]}}, got {_type_name(doc)}")
        doc = None
    if doc is None:
        raise DatasetValidationError(problems.items, str(path))
    raw = _check_list(doc, "annotations", problems, "captions file lists its captions under \"annotations\"")
    if raw and isinstance(raw[0], dict) and "caption" not in raw[0] and "bbox" in raw[0]:
        problems.add(None, None, "looks like an instances file (its annotations have 'bbox', no 'caption'); pass the "
                                 "captions file (captions_*.json) as captions_json")
        raise DatasetValidationError(problems.items, str(path))
    out: dict[int, list[tuple[int, str]]] = defaultdict(list)
    seen: dict[int, int] = {}
    for k, e in enumerate(raw):
        where = _entry_where("annotations", k, e)
        if not isinstance(e, dict):
            problems.add(where, None, _bad(e, "an object"))
            continue
        ok = True
        ident = e.get("id", k)
        if not _is_int(ident):
            problems.add(where, "id", _bad(ident, "an int"))
            ok = False
        elif ident in seen:
            problems.add(where, "id", f"{ident} is also the id of annotations[{seen[ident]}]; caption ids are unique")
            ok = False
        image_id = e.get("image_id")
        if not _is_int(image_id):
            problems.add(where, "image_id", _bad(image_id, "an int"))
            ok = False
        elif image_id not in images:
            problems.add(where, "image_id", f"{image_id} is not the id of any image of {instances_name}; the captions "
                                            "and instances files must come from the same split (e.g. both val2017)")
            ok = False
        cap = e.get("caption")
        if not isinstance(cap, str) or not cap.strip():
            problems.add(where, "caption", _bad(cap, "a non-empty string"))
            ok = False
        if ok:
            seen[ident] = k
            out[image_id].append((ident, " ".join(cap.split())))
    if problems:
        raise DatasetValidationError(problems.items, str(path))
    for caps in out.values():
        caps.sort()
    return dict(out)


# --------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CocoConversion:
    """What :func:`convert_coco` wrote and skipped.

    Attributes:
        out_dir: The dataset folder written.
        instances_json: The instances file read.
        captions_json: The captions file read, or None.
        classes: The class names (``label_categories``), in order.
        split: The split written on every row, or None.
        n_images_in_json: Images listed in the instances file.
        n_written: Images written (rows of ``metadata.jsonl``).
        class_counts: ``{class: images written}``.
        skipped_no_label: Images with none of the label categories.
        skipped_several_labels: Images with more than one of them.
        skipped_crowd: Images skipped for a crowd annotation (``crowd="skip_image"``).
        skipped_no_boxes: Images left without any box after dropping tiny boxes.
        n_boxes: Boxes written.
        n_crowd_boxes: Of which crowd boxes.
        n_boxes_clipped: Boxes clipped to their image.
        n_boxes_dropped: Boxes dropped as smaller than ``min_box_size`` after clipping.
        n_without_caption: Written images without any caption (only with a captions file).
        images_mode: How images were placed: ``"hardlink"``, ``"copy"``, ``"symlink"``, or
            ``"hardlink+copy"`` when some links fell back to copies.
    """

    out_dir: Path
    instances_json: Path
    captions_json: Path | None
    classes: tuple[str, ...]
    split: str | None
    n_images_in_json: int
    n_written: int
    class_counts: dict[str, int]
    skipped_no_label: int
    skipped_several_labels: int
    skipped_crowd: int
    skipped_no_boxes: int
    n_boxes: int
    n_crowd_boxes: int
    n_boxes_clipped: int
    n_boxes_dropped: int
    n_without_caption: int
    images_mode: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (paths as strings)."""
        d = dataclasses.asdict(self)
        d["out_dir"] = str(self.out_dir)
        d["instances_json"] = str(self.instances_json)
        d["captions_json"] = str(self.captions_json) if self.captions_json else None
        d["classes"] = list(self.classes)
        return d

    def summary(self) -> str:
        """Human-readable multi-line summary."""
        lines = [f"converted {self.n_written} of {self.n_images_in_json} COCO image(s) into {self.out_dir}"
                 + (f" (split {self.split!r})" if self.split else ""),
                 "per class: " + ", ".join(f"{c} {self.class_counts.get(c, 0)}" for c in self.classes),
                 f"skipped: {self.skipped_no_label} with no label category, {self.skipped_several_labels} with several"
                 + (f", {self.skipped_crowd} with a crowd annotation" if self.skipped_crowd else "")
                 + (f", {self.skipped_no_boxes} without a usable box" if self.skipped_no_boxes else ""),
                 f"boxes: {self.n_boxes} ({self.n_crowd_boxes} crowd; {self.n_boxes_clipped} clipped, "
                 f"{self.n_boxes_dropped} tiny dropped); images {self.images_mode}"]
        if self.captions_json is not None:
            lines.append(f"captions: {self.n_written - self.n_without_caption} of {self.n_written} image(s)")
        return "\n".join(lines)


def _place_file(src: Path, dst: Path, mode: str) -> str:
    """Put ``src`` at ``dst`` (atomically replacing it) as a hard link, copy or symlink; returns the mode used."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.tmp")
    used = mode
    try:
        if mode == "symlink":
            os.symlink(src.resolve(), tmp)
        elif mode == "hardlink":
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copyfile(src, tmp)
                used = "copy"
        else:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()
        raise
    return used


def _clip_box(bbox: tuple[float, float, float, float], width: int, height: int) -> tuple[list[float], bool]:
    x, y, w, h = bbox
    box = [x, y, x + w, y + h]
    clipped = [min(max(box[0], 0.0), width), min(max(box[1], 0.0), height),
               min(max(box[2], 0.0), width), min(max(box[3], 0.0), height)]
    return clipped, clipped != box


def _check_out_dir(out_dir: Path) -> None:
    if (out_dir / METADATA_FILE).exists() and not (out_dir / _MARKER).exists():
        raise DatasetError(f"{out_dir} already holds a {METADATA_FILE} not written by {_CALLER}; choose an empty or "
                           "new folder for the converted dataset.")


@locks_output("out_dir", "convert_coco")
def convert_coco(instances_json: str | os.PathLike, images_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                 label_categories: Sequence[str], captions_json: str | os.PathLike | None = None,
                 split: str | None = None, caption: str = "first", crowd: str = "keep", images: str = "hardlink",
                 min_box_size: float = 1.0, random_state: Any = 0, progress: bool = True) -> CocoConversion:
    """Convert a COCO instances (+ captions) file and its images into a ravl dataset folder.

    See the module docstring for what is written and the rules (label, captions, crowd, boxes).
    Re-running into the same folder replaces its ``metadata.jsonl`` and removes images of the
    previous conversion that are no longer listed.

    Args:
        instances_json: COCO ``instances_*.json``.
        images_dir: Folder holding the images named by the ``file_name`` of its ``images``.
        out_dir: Output dataset folder (created).
        label_categories: COCO category names that are the classes; each kept image contains
            exactly one of them, which becomes its ``label``.
        captions_json: COCO ``captions_*.json`` of the same images, or None (no captions).
        split: ``"train"``, ``"val"`` or ``"test"`` written on every row, or None.
        caption: ``"first"`` (lowest caption id) or ``"random"`` (seeded).
        crowd: ``"keep"``, ``"ignore"`` or ``"skip_image"`` (crowd annotations).
        images: ``"hardlink"`` (default, falls back to copying), ``"copy"`` or ``"symlink"``.
        min_box_size: Boxes narrower or lower than this (pixels, after clipping) are dropped.
        random_state: Seed or numpy Generator for ``caption="random"``.
        progress: Show a progress bar while placing images.

    Returns:
        A :class:`CocoConversion` (also written as ``out_dir/coco.json``).

    Raises:
        DatasetValidationError: With every problem of the JSON files and of the kept images.
        DatasetError: When ``out_dir`` holds a dataset not written by this function.
        ValueError: For an invalid parameter.
    """
    caption = check_choice(caption, "caption", _CALLER, ("first", "random"))
    crowd = check_choice(crowd, "crowd", _CALLER, ("keep", "ignore", "skip_image"))
    images = check_choice(images, "images", _CALLER, IMAGE_MODES)
    min_box_size = check_float(min_box_size, "min_box_size", _CALLER, low=0.0)
    if split is not None:
        check_choice(split, "split", _CALLER, SPLITS)
    if isinstance(label_categories, str) or not isinstance(label_categories, Sequence) or not label_categories:
        raise InvalidParameterError(f"The 'label_categories' parameter of {_CALLER} must be a non-empty list of COCO "
                                    "category "
                         f"names. Got {label_categories!r} instead.")
    labels = tuple(label_categories)
    dup = [c for c, n in Counter(labels).items() if n > 1]
    if dup:
        raise InvalidParameterError(f"The 'label_categories' parameter of {_CALLER} must not repeat a name. Got "
                                    f"{dup[0]!r} twice.")
    rng = check_random_state(random_state)
    images_dir = Path(images_dir).expanduser()
    out_dir = Path(out_dir).expanduser()

    coco = read_coco_instances(instances_json)
    problems = _JsonProblems(coco.path.name)
    by_name = {n: i for i, n in coco.categories.items()}
    for c in labels:
        if c not in by_name:
            close = _suggest(c, list(by_name))
            hint = f" (did you mean {' or '.join(repr(x) for x in close)}?)" if close else ""
            problems.add(None, None, f"label category {c!r} is not a category of this file{hint}; its categories: "
                                     f"{_list_names(list(by_name))}")
    if not images_dir.is_dir():
        problems.add(None, None, f"images folder {str(images_dir)!r} does not exist; pass the folder that holds the "
                                 f"images named in \"images\" (e.g. val2017/)")
    if problems:
        raise DatasetValidationError(problems.items, str(coco.path))
    caps = _read_captions(Path(captions_json).expanduser(), coco.images, coco.path.name) \
        if captions_json is not None else None
    label_ids = {by_name[c]: c for c in labels}

    per_image: dict[int, list[_Annotation]] = defaultdict(list)
    for a in coco.annotations:
        per_image[a.image_id].append(a)
    counts = Counter()
    rows: list[dict[str, Any]] = []
    kept_images: list[_Image] = []
    for image in coco.images.values():
        anns = per_image.get(image.id, [])
        if crowd == "skip_image" and any(a.iscrowd for a in anns):
            counts["skipped_crowd"] += 1
            continue
        if crowd == "ignore":
            anns = [a for a in anns if not a.iscrowd]
        present = {label_ids[a.category_id] for a in anns if a.category_id in label_ids}
        if not present:
            counts["skipped_no_label"] += 1
            continue
        if len(present) > 1:
            counts["skipped_several_labels"] += 1
            continue
        boxes, attrs = [], []
        n_crowd = n_clipped = n_dropped = 0
        for a in anns:
            box, clipped = _clip_box(a.bbox, image.width, image.height)
            if box[2] - box[0] < min_box_size or box[3] - box[1] < min_box_size or box[2] <= box[0] \
                    or box[3] <= box[1]:
                n_dropped += 1
                continue
            n_clipped += clipped
            n_crowd += a.iscrowd
            boxes.append([_round(v) for v in box])
            attrs.append(coco.categories[a.category_id])
        counts["n_boxes_dropped"] += n_dropped
        if not boxes:
            counts["skipped_no_boxes"] += 1
            continue
        counts["n_boxes"] += len(boxes)
        counts["n_crowd_boxes"] += n_crowd
        counts["n_boxes_clipped"] += n_clipped
        label = next(iter(present))
        row: dict[str, Any] = {"file_name": f"images/{posixpath.normpath(image.file_name)}"}
        texts = [t for _, t in caps.get(image.id, [])] if caps is not None else []
        if texts:
            row["caption"] = texts[0] if caption == "first" else texts[int(rng.integers(len(texts)))]
        elif caps is not None:
            counts["n_without_caption"] += 1
        row["label"] = label
        if split is not None:
            row["split"] = split
        row["boxes"] = boxes
        row["region_attributes"] = attrs
        row["coco_id"] = image.id
        if len(texts) > 1:
            row["coco_captions"] = texts
        rows.append(row)
        kept_images.append(image)
        counts[f"class:{label}"] += 1

    # the files of the kept images: present, readable, of the size the JSON says
    _check_image_files(kept_images, images_dir, coco.path.name, problems)
    if problems:
        raise DatasetValidationError(problems.items, str(coco.path))

    _check_out_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / _MARKER, f"Dataset folder written by ravl's {_CALLER}; metadata.jsonl and images/ are "
                                         "replaced when it is converted again.\n")
    modes = set()
    wanted = set()
    bar = progress_bar(total=len(kept_images), desc="placing images", disable=None if progress else True)
    try:
        for image, row in zip(kept_images, rows):
            dst = out_dir.joinpath(*row["file_name"].split("/"))
            wanted.add(dst)
            modes.add(_place_file(images_dir.joinpath(*posixpath.normpath(image.file_name).split("/")), dst, images))
            bar.update(1)
    finally:
        bar.close()
    if images == "hardlink" and "copy" in modes:
        logger.warning("Some images could not be hard-linked from %s (another file system?) and were copied.",
                       images_dir)
    stale = [p for p in (out_dir / "images").rglob("*") if (p.is_file() or p.is_symlink()) and p not in wanted]
    for p in stale:
        p.unlink()
    if stale:
        logger.info("Removed %d image(s) of the previous conversion from %s.", len(stale), out_dir / "images")
    write_classes(out_dir, labels)
    write_metadata(out_dir, rows)
    mode_used = "+".join(m for m in IMAGE_MODES if m in modes) or images
    result = CocoConversion(
        out_dir=out_dir.absolute(), instances_json=coco.path.absolute(),
        captions_json=Path(captions_json).expanduser().absolute() if captions_json is not None else None,
        classes=labels, split=split, n_images_in_json=len(coco.images), n_written=len(rows),
        class_counts={c: counts[f"class:{c}"] for c in labels}, skipped_no_label=counts["skipped_no_label"],
        skipped_several_labels=counts["skipped_several_labels"], skipped_crowd=counts["skipped_crowd"],
        skipped_no_boxes=counts["skipped_no_boxes"], n_boxes=counts["n_boxes"], n_crowd_boxes=counts["n_crowd_boxes"],
        n_boxes_clipped=counts["n_boxes_clipped"], n_boxes_dropped=counts["n_boxes_dropped"],
        n_without_caption=counts["n_without_caption"], images_mode=mode_used)
    atomic_write_json(out_dir / CONVERSION_FILE, result.to_dict())
    logger.info("%s", result.summary())
    return result


def _round(v: float) -> float | int:
    """Integers stay integers in the JSON; other coordinates keep 2 decimals (COCO's precision)."""
    r = round(v, 2)
    return int(r) if float(r).is_integer() else r


def _check_image_files(kept: list[_Image], images_dir: Path, label: str, problems: _JsonProblems) -> None:
    listings: dict[Path, list[str] | None] = {}
    n_hint = 0
    for image in kept:
        where = f"images[{image.index}] (id {image.id})"
        p = images_dir.joinpath(*posixpath.normpath(image.file_name).split("/"))
        try:
            with Image.open(p) as im:
                size = im.size
        except FileNotFoundError:
            hint = ""
            if n_hint < _MAX_SUGGESTIONS:
                n_hint += 1
                hint = _missing_file_hint(p, images_dir, listings)
            problems.add(where, "file_name", f"image file {_q(image.file_name)} not found in {images_dir}{hint}; pass "
                                             "the images folder of this annotation file or add the file")
            continue
        except Exception as exc:  # noqa: BLE001 - any decoder error is a data problem
            problems.add(where, "file_name", f"cannot read image {_q(image.file_name)} ({_exc_text(exc)}); the file "
                                             "is corrupt or not an image: download it again")
            continue
        if size != (image.width, image.height):
            problems.add(where, "width", f"the JSON says {image.width}x{image.height} but {_q(image.file_name)} is "
                                         f"{size[0]}x{size[1]}; boxes would not fit the pixels: use the images that "
                                         "belong to this annotation file")

